"""Security headers on every response: the Content-Security-Policy, framing, MIME
sniffing, the referrer, and HSTS over HTTPS.

Scripts run only from the portal itself (``'self'``) or inline with the response's
nonce: Flask-AppBuilder's templates write ``nonce="{{ baselib.get_nonce() }}"`` on
their inline scripts, and ``get_nonce`` calls the ``csp_nonce()`` template global
defined here. No page carries inline event handlers. Styles allow ``'unsafe-inline'``
because the templates (FAB's and ours) and the libraries they load set ``style=``
attributes. Forms post to the portal only; the Checkout buttons post here and are
redirected to Stripe's hosted page, and browsers hold such redirects to
``form-action`` too, so Stripe Checkout's origin (or, with ``STRIPE_API_BASE``, the
stand-in's) is allowed there.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, request

STRIPE_CHECKOUT_ORIGIN = "https://checkout.stripe.com"
HSTS_MAX_AGE = 365 * 24 * 3600


def csp_nonce() -> str:
    """This response's nonce for inline scripts, made on first use."""
    nonce: str | None = g.get("_csp_nonce")
    if nonce is None:
        nonce = secrets.token_urlsafe(16)
        g._csp_nonce = nonce
    return nonce


def _origin(url: str | None) -> str | None:
    parts = urlsplit(url or "")
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return None


def form_action_sources(config: Mapping[str, Any]) -> list[str]:
    """Where a form may send the browser: the portal, and Stripe Checkout's page."""
    sources = ["'self'", STRIPE_CHECKOUT_ORIGIN]
    stand_in = _origin(config.get("STRIPE_API_BASE"))
    if stand_in is not None and stand_in not in sources:
        sources.append(stand_in)
    return sources


def content_security_policy(config: Mapping[str, Any], nonce: str | None) -> str:
    scripts = ["'self'"] + ([f"'nonce-{nonce}'"] if nonce else [])
    directives = {
        "default-src": ["'self'"],
        "script-src": scripts,
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": form_action_sources(config),
    }
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


def is_https(config: Mapping[str, Any]) -> bool:
    """Whether this request reached the portal over HTTPS: directly, through a proxy
    that ProxyFix trusts, or as the ``HTTPS`` setting declares for every request."""
    return request.is_secure or bool(config.get("HTTPS"))


def init_security_headers(app: Flask) -> None:
    app.add_template_global(csp_nonce, "csp_nonce")

    @app.after_request
    def _security_headers(response: Response) -> Response:
        config = current_app.config
        headers = response.headers
        headers.setdefault("Content-Security-Policy",
                           content_security_policy(config, g.get("_csp_nonce")))
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        if is_https(config):
            headers.setdefault("Strict-Transport-Security", f"max-age={HSTS_MAX_AGE}")
        return response
