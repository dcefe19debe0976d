"""Security headers on every response: the Content-Security-Policy, framing, MIME
sniffing, the referrer, and HSTS over HTTPS.

Scripts run only from the portal itself (``'self'``) or inline with the response's
nonce: Flask-AppBuilder's templates write ``nonce="{{ baselib.get_nonce() }}"`` on
their inline scripts, and ``get_nonce`` calls the ``csp_nonce()`` template global
defined here. No page carries inline event handlers.

Styles come from the portal's stylesheets (``'self'``) and from ``<style>`` elements
carrying the same nonce (the API reference has one); there is no ``'unsafe-inline'``.
A ``style`` attribute, in the page's HTML or set by a script (``setAttribute``,
``innerHTML``), applies only if the hash of its exact text is listed, which
``'unsafe-hashes'`` allows for attributes. The list holds the attributes that
Flask-AppBuilder's templates and scripts write on the portal's pages
(``FAB_STYLE_ATTRIBUTES``); any other, such as one injected into a page, is refused.
The portal's own templates write none: they use the classes of
``portal/static/billfold/billfold.css``, and a width computed on the server (a usage
meter's bar) is a ``data-width`` attribute that ``portal/static/billfold/widths.js``
applies through the CSSOM (``element.style``), which the policy leaves alone, as it
does the styles that jQuery, Bootstrap, select2, Chart.js and Swagger UI set that way.

Forms post to the portal only; the Checkout buttons post here and are
redirected to Stripe's hosted page, and browsers hold such redirects to
``form-action`` too, so Stripe Checkout's origin (or, with ``STRIPE_API_BASE``, the
stand-in's) is allowed there.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, request

STRIPE_CHECKOUT_ORIGIN = "https://checkout.stripe.com"
HSTS_MAX_AGE = 365 * 24 * 3600

# The style attributes that Flask-AppBuilder writes on the portal's pages, each exactly
# as its template (under flask_appbuilder/templates/appbuilder/) or its script (under
# flask_appbuilder/static/appbuilder/) writes it, with what it is for. The portal's
# own templates carry none. Browsers check an empty attribute too.
FAB_STYLE_ATTRIBUTES = (
    # general/lib.html: the hidden form that posts a list's or a record's actions, or
    # its deletes when the view has no actions.
    "display: none",
    # general/model/show.html and edit.html: the tabs of the related views, hidden
    # ("display: none;") when the view has none and shown (an empty attribute) when it
    # has some, as the tenants and the roles have their users.
    "display: none;",
    "",
    # general/lib.html: the pager under a list longer than one page.
    "display:inherit;",
    # general/lib.html: the show/edit buttons of each row of a list.
    "display: flex;",
    # general/lib.html: the asterisk after the label of a required form field.
    "color: red",
    # general/widgets/show.html, show_block.html and roles/show.html: the values of a
    # record's page, keeping their line breaks.
    "white-space: pre-line",
    # static/appbuilder/js/ab_filters.js: the date input of a list's filter on a date
    # column (the audit log's Time), set by the script when the filter is added.
    "width: 100%",
)


def style_hash(value: str) -> str:
    """The CSP source that allows a style attribute whose text is ``value``."""
    digest = hashlib.sha256(value.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


STYLE_ATTRIBUTE_HASHES = tuple(style_hash(value) for value in FAB_STYLE_ATTRIBUTES)


def csp_nonce() -> str:
    """This response's nonce for inline scripts and ``<style>`` elements, made on
    first use."""
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
    nonces = [f"'nonce-{nonce}'"] if nonce else []
    directives = {
        "default-src": ["'self'"],
        "script-src": ["'self'", *nonces],
        "style-src": ["'self'", *nonces, "'unsafe-hashes'", *STYLE_ATTRIBUTE_HASHES],
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
