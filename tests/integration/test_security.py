"""Security of the portal's pages: CSRF on every form, the session cookie's flags,
the security headers and their Content-Security-Policy, hashed passwords, and the
audit log a Platform Admin filters.

The suite's app runs with CSRF off; the CSRF tests build an app with it on, on the
same database (as test_login_rate_limit does for rate limits)."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from flask import Flask
from jinja2 import ChoiceLoader, DictLoader
from sqlalchemy import select
from werkzeug.security import check_password_hash

from api import keys
from api.models import ApiKey
from plans.models import PlanChangeRequest
from portal import create_app
from portal.audit import Actor
from portal.config import Config, load_config
from portal.extensions import db
from portal.security_headers import FAB_STYLE_ATTRIBUTES, style_hash
from tenants.models import BillfoldUser, Tenant
from tenants.scoping import unscoped
from tests.conftest import PASSWORD, config_for
from tests.routes import view_routes

# Bearer API keys and Stripe's signatures authenticate these, never a cookie.
CSRF_EXEMPT_PREFIXES = ("/api/", "/webhooks/")
TOKEN_FIELD = re.compile(r'<input[^>]*name="csrf_token"[^>]*value="([^"]+)"')
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.IGNORECASE)
INLINE_HANDLER = re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.IGNORECASE)
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
# E-mails and the PDFs WeasyPrint renders are no pages: no policy applies to them.
NON_PAGE_TEMPLATES = ("mail", "pdf")
# GET routes the page sweeps leave out: logging out would end the sweep's session,
# Flask-AppBuilder's actions and deletes answer GET by writing, and its downloads
# send uploaded files (the portal has none).
NOT_PAGES = ("/logout/",)
NOT_PAGE_METHODS = ("action", "delete", "download")
SWEEP_USERS = ("operator", "alpha-admin", "alpha-billing")


def _dispose(app) -> None:
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture(scope="module")
def csrf_app(app):
    """The portal with CSRF protection on, as it runs outside the tests."""
    protected = create_app(config_for(app.config["DATABASE_URL"], WTF_CSRF_ENABLED=True))
    yield protected
    _dispose(protected)


@pytest.fixture(scope="module")
def https_app(app):
    """The portal configured as served over HTTPS."""
    secure = create_app(config_for(app.config["DATABASE_URL"], HTTPS=True))
    yield secure
    _dispose(secure)


def token_of(client, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    found = TOKEN_FIELD.search(response.get_data(as_text=True))
    assert found, f"no CSRF token on {path}"
    return found.group(1)


def csrf_login(app, username: str):
    """A test client logged in through the login form, with the form's token."""
    client = app.test_client()
    response = client.post("/login/", data={"csrf_token": token_of(client, "/login/"),
                                            "username": username, "password": PASSWORD})
    assert response.status_code == 302 and "/login" not in response.headers["Location"]
    return client


def fingerprint(app) -> dict[str, str]:
    """A digest of every table's rows: equal fingerprints, unchanged database."""
    digests = {}
    with app.app_context(), unscoped():
        for table in db.metadata.sorted_tables:
            rows = sorted(repr(tuple(row)) for row in db.session.execute(select(table)))
            digests[table.name] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
        db.session.remove()
    return digests


def post_routes(app) -> list[tuple[str, object]]:
    """(rule, its view route or None) of every route that takes a POST, read from the
    URL map; the API and the Stripe webhook are left out by design."""
    by_endpoint = {f"{type(r.view).__name__}.{r.method_name}": r for r in view_routes(app)}
    found = [(rule.rule, by_endpoint.get(rule.endpoint))
             for rule in app.url_map.iter_rules()
             if "POST" in (rule.methods or ()) and not rule.rule.startswith(CSRF_EXEMPT_PREFIXES)]
    return sorted(found, key=lambda pair: pair[0])


def concrete_url(app, rule: str, route, world) -> str:
    """``rule`` with real values: the lowest id of the route's model, an action the
    view has, the alpha tenant's slug; any other argument gets a plausible value."""
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name == "pk":
            model = route.model if route is not None else None
            if model is not None:
                with app.app_context(), unscoped():
                    pk = db.session.scalar(select(model.id).order_by(model.id).limit(1))
                    db.session.remove()
                if pk is not None:
                    return str(pk)
            return "1"
        if name == "name":
            actions = getattr(route.view, "actions", {}) if route is not None else {}
            return next(iter(actions), "none")
        if name == "number":
            return "BF-2026-000001"
        return "alpha"
    return re.sub(r"<(?:\w+:)?(\w+)>", value, rule)


# -- CSRF ----------------------------------------------------------------------------

def test_every_form_post_without_a_token_is_refused_and_changes_nothing(csrf_app, world):
    routes = post_routes(csrf_app)
    assert len(routes) > 40, "the URL map lost its forms"
    clients = {username: csrf_login(csrf_app, username) for username in ("operator", "alpha-admin")}
    before = fingerprint(csrf_app)  # after the logins, which record themselves
    refused = []
    for username, client in clients.items():
        for rule, route in routes:
            url = concrete_url(csrf_app, rule, route, world)
            response = client.post(url, data={"name": "csrf probe", "note": "csrf probe",
                                              "reason": "csrf probe", "amount": "100"})
            if response.status_code != 400 or "CSRF" not in response.get_data(as_text=True):
                refused.append(f"{username} POST {url}: {response.status_code}")
            # FAB's deletes and actions also answer GET; with CSRF on they refuse to write.
            if route is not None and route.method_name in ("delete", "action") \
                    and "GET" in route.http_methods:
                client.get(url)
    assert not refused, "POSTs without a CSRF token were not refused:\n" + "\n".join(refused)
    assert fingerprint(csrf_app) == before


def test_login_form_needs_its_token(csrf_app, world):
    client = csrf_app.test_client()
    response = client.post("/login/", data={"username": "alpha-admin", "password": PASSWORD})
    assert response.status_code == 400
    assert "/login" in client.get("/usage/").headers.get("Location", "")


def test_the_api_key_form_works_with_its_token(csrf_app, world):
    client = csrf_login(csrf_app, "alpha-admin")
    form = {"name": "metering-service", "scopes": ["usage:write"]}
    assert client.post("/account/api-keys/create", data=form).status_code == 400
    token = token_of(client, "/account/api-keys/")
    created = client.post("/account/api-keys/create", data={**form, "csrf_token": token})
    assert created.status_code == 200
    assert "bf_" in created.get_data(as_text=True)  # the secret, shown once
    with csrf_app.app_context(), unscoped():
        names = db.session.scalars(select(ApiKey.name).where(
            ApiKey.tenant_id == world.ids["a"]))
        assert list(names) == ["metering-service"]
        db.session.remove()


def test_a_platform_decision_works_with_its_token(csrf_app, world):
    client = csrf_login(csrf_app, "operator")
    url = f"/platform/plan-requests/{world.ids['b_request']}/decline"
    form = {"note": "not this quarter"}
    assert client.post(url, data=form).status_code == 400
    token = token_of(client, "/platform/plan-requests/")
    assert client.post(url, data={**form, "csrf_token": token}).status_code == 302
    with csrf_app.app_context(), unscoped():
        decided = db.session.get(PlanChangeRequest, world.ids["b_request"])
        assert decided is not None and decided.status == "declined"
        db.session.remove()


# -- cookies -------------------------------------------------------------------------

def _session_cookie(response) -> SimpleCookie:
    for header in response.headers.getlist("Set-Cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        if "session" in cookie:
            return cookie
    raise AssertionError("the login set no session cookie")


def test_session_cookie_is_http_only_and_same_site_lax(csrf_app, world):
    client = csrf_app.test_client()
    response = client.post("/login/", data={"csrf_token": token_of(client, "/login/"),
                                            "username": "alpha-admin", "password": PASSWORD})
    morsel = _session_cookie(response)["session"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert not morsel["secure"]  # plain http: a Secure cookie would never come back


def test_session_cookie_is_secure_over_https(https_app, world):
    client = https_app.test_client()
    response = client.post("/login/", base_url="https://billfold.test",
                           data={"username": "alpha-admin", "password": PASSWORD})
    assert response.status_code == 302
    morsel = _session_cookie(response)["session"]
    assert morsel["secure"] is True and morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert https_app.config["REMEMBER_COOKIE_SECURE"] is True
    assert https_app.config["REMEMBER_COOKIE_SAMESITE"] == "Lax"


@pytest.mark.parametrize(("settings", "secure"), [
    ({}, False),
    ({"HTTPS": True}, True),
    ({"HTTPS": "false"}, False),
    ({"PREFERRED_URL_SCHEME": "https"}, True),
])
def test_https_setting_makes_the_cookies_secure(settings, secure):
    bare = Flask(__name__)
    load_config(bare, {"DATABASE_URL": "sqlite://", **settings})
    assert bare.config["SESSION_COOKIE_SECURE"] is secure
    assert bare.config.get("REMEMBER_COOKIE_SECURE", False) is secure
    assert bare.config["SESSION_COOKIE_HTTPONLY"] is True
    assert bare.config["SESSION_COOKIE_SAMESITE"] == "Lax"


# -- headers -------------------------------------------------------------------------

def csp_directives(response) -> dict[str, list[str]]:
    policy = response.headers.get("Content-Security-Policy")
    assert policy, f"no Content-Security-Policy on {response.request.path}"
    directives = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


def assert_security_headers(response) -> dict[str, list[str]]:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.request.path, name)
    directives = csp_directives(response)
    assert directives["default-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["object-src"] == ["'none'"]
    assert "'unsafe-inline'" not in directives["script-src"]
    assert "'unsafe-eval'" not in directives["script-src"]
    assert "*" not in " ".join(sum(directives.values(), []))
    return directives


def test_headers_on_pages_api_and_error_pages(app, world, client, login):
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, world.ids["a"])
        _, secret = keys.create_key(Actor.system("tests"), tenant, "reader", ["usage:read"])
        db.session.remove()
    page = login("alpha-admin").get("/usage/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    responses = {
        "page": page,
        "login page": client.get("/login/"),
        "API answer": client.get("/api/v1/usage/summary",
                                 headers={"Authorization": f"Bearer {secret}"}),
        "API refusal": client.get("/api/v1/usage/summary"),
        "API not found": client.get("/api/v1/nothing-here"),
        "page not found": client.get("/nothing-here"),
        "forbidden page": login("alpha-billing").get("/platform/tenants/list/"),
    }
    assert responses["API answer"].status_code == 200
    assert responses["API answer"].mimetype == "application/json"
    assert responses["page not found"].status_code == 404
    assert responses["forbidden page"].status_code in (302, 403, 404)
    for what, response in responses.items():
        assert_security_headers(response)
        # HSTS only over HTTPS: these came over plain http to an app without HTTPS.
        assert "Strict-Transport-Security" not in response.headers, what


def test_hsts_over_https(https_app, app):
    direct = app.test_client().get("/login/", base_url="https://billfold.test")
    assert direct.headers["Strict-Transport-Security"].startswith("max-age=")
    declared = https_app.test_client().get("/login/")  # TLS ends at a proxy in front
    assert int(declared.headers["Strict-Transport-Security"].split("=")[1]) >= 31536000


def test_form_action_allows_stripe_checkout_only(app, stub, client):
    directives = csp_directives(client.get("/login/"))
    assert directives["form-action"] == ["'self'", "https://checkout.stripe.com", stub.url]


def pages_without_arguments(app) -> list[str]:
    """The rules of the GET routes without arguments, logging out left out."""
    return sorted({r.rule for r in view_routes(app)
                   if "GET" in r.http_methods and "<" not in r.rule and r.rule not in NOT_PAGES})


def test_pages_run_no_script_the_policy_would_block(app, world, login):
    """Every page without arguments, as a Platform Admin and a Tenant Admin: each
    <script> either loads from the portal or carries the response's nonce, and no
    element has an inline event handler."""
    pages = pages_without_arguments(app)
    problems = []
    for username in ("operator", "alpha-admin"):
        browser = login(username)
        for path in pages:
            response = browser.get(path)
            if response.status_code != 200 or response.mimetype != "text/html":
                response.close()  # a streamed CSV ends its request here
                continue
            directives = assert_security_headers(response)
            nonces = [s[len("'nonce-"):-1] for s in directives["script-src"]
                      if s.startswith("'nonce-")]
            html = response.get_data(as_text=True)
            for attributes in SCRIPT_TAG.findall(html):
                src = re.search(r'\ssrc="([^"]+)"', attributes)
                nonce = re.search(r'\snonce="([^"]*)"', attributes)
                if src is not None:
                    if not src.group(1).startswith("/"):
                        problems.append(f"{username} {path}: script from {src.group(1)}")
                elif nonce is None or nonce.group(1) not in nonces:
                    problems.append(f"{username} {path}: inline script without the nonce")
            if INLINE_HANDLER.search(html):
                problems.append(f"{username} {path}: inline event handler")
    assert not problems, "\n".join(problems)


class InlineStyles(HTMLParser):
    """The style attributes of a page, each value as a browser reads it (character
    references decoded, an attribute without a value as empty), and the nonce of
    each <style> element (None without one)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.attributes: list[tuple[str, str]] = []  # (tag, value)
        self.style_nonces: list[str | None] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name == "style":
                self.attributes.append((tag, value or ""))
        if tag == "style":
            self.style_nonces.append(dict(attrs).get("nonce"))


def swept_pages(app, world) -> list[str]:
    """Every page a GET can show: the routes without arguments, those with arguments
    filled in as ``concrete_url`` does, and each Flask-AppBuilder list one record per
    page, so that its pager shows too."""
    urls = set(pages_without_arguments(app))
    for route in view_routes(app):
        if "GET" not in route.http_methods or route.method_name in NOT_PAGE_METHODS:
            continue
        if "<" in route.rule:
            urls.add(concrete_url(app, route.rule, route, world))
        elif route.method_name == "list":
            urls.add(f"{route.rule}?psize_{type(route.view).__name__}=1")
    return sorted(urls)


def style_problems(response, where: str) -> tuple[list[str], list[str]]:
    """The texts of a page's style attributes, and the problems: a style attribute
    whose hash the page's policy lacks, or a <style> element without its nonce."""
    styles = assert_security_headers(response)["style-src"]
    assert "'unsafe-inline'" not in styles, where
    inline = InlineStyles(response.get_data(as_text=True))
    problems = [f"{where}: <{tag} style={value!r}> is not allowed"
                for tag, value in inline.attributes if style_hash(value) not in styles]
    problems += [f"{where}: <style> without the response's nonce"
                 for nonce in inline.style_nonces
                 if nonce is None or f"'nonce-{nonce}'" not in styles]
    return [value for _, value in inline.attributes], problems


def test_style_src_allows_no_inline_style_but_the_nonce_and_the_hashes(app, world, login):
    """style-src: the portal, the response's nonce (the one its scripts have) and the
    hashes of Flask-AppBuilder's style attributes; never 'unsafe-inline'."""
    page = login("alpha-admin").get("/api-docs/")
    html = page.get_data(as_text=True)
    nonce = re.search(r'<style nonce="([^"]+)"', html)
    assert nonce, "the API reference lost its <style> element"
    styles = csp_directives(page)["style-src"]
    assert "'unsafe-inline'" not in styles
    assert styles[:3] == ["'self'", f"'nonce-{nonce.group(1)}'", "'unsafe-hashes'"]
    assert f"'nonce-{nonce.group(1)}'" in csp_directives(page)["script-src"]
    hashes = styles[3:]
    assert all(re.fullmatch(r"'sha256-[A-Za-z0-9+/]{43}='", h) for h in hashes), hashes
    assert hashes == [style_hash(value) for value in FAB_STYLE_ATTRIBUTES]
    assert len(set(hashes)) == len(hashes)
    # base64(sha256(text)); these two as `openssl dgst -sha256 -binary | base64` gives.
    assert style_hash("display: none") == "'sha256-ZdHxw9eWtnxUb3mk6tBS+gIiVUPE3pGM470keHPDFlE='"
    assert style_hash("") == "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
    # A page without a nonce of its own gets none for its styles either.
    assert not any(s.startswith("'nonce-") for s in csp_directives(
        app.test_client().get("/nothing-here"))["style-src"])


def test_every_style_attribute_of_every_page_is_one_the_policy_allows(app, world, login):
    """Every page a Platform Admin, a Tenant Admin, a Billing Contact or a visitor
    can GET: each style attribute's text has its hash in the page's policy, and
    each <style> element carries the page's nonce. Each hashed text is found on some
    page, but for the one Flask-AppBuilder's filter script sets."""
    pages = swept_pages(app, world)
    browsers = [("anonymous", app.test_client(), ["/login/", "/invitation/no-such-token"])]
    browsers += [(username, login(username), pages) for username in SWEEP_USERS]
    rendered: set[str] = set()
    problems: list[str] = []
    shown = 0
    for username, browser, paths in browsers:
        for path in paths:
            response = browser.get(path)
            if response.status_code != 200 or response.mimetype != "text/html":
                response.close()  # a streamed CSV ends its request here
                continue
            shown += 1
            values, found = style_problems(response, f"{username} {path}")
            rendered.update(values)
            problems += found
    assert shown > 60, f"the sweep showed only {shown} pages"
    assert not problems, "\n".join(problems)
    set_by_script = {"width: 100%"}
    assert rendered == set(FAB_STYLE_ATTRIBUTES) - set_by_script, rendered
    filters = app.test_client().get("/static/appbuilder/js/ab_filters.js")
    assert """.attr('style', "width: 100%")""" in filters.get_data(as_text=True)
    filters.close()


def test_the_style_check_finds_a_style_attribute_the_policy_refuses(app, world, login):
    """The check itself: a page of ours given one style attribute fails it."""
    name = "billfold/notifications.html"
    original = app.jinja_loader.get_source(app.jinja_env, name)[0]
    injected = original.replace("{% block content %}",
                                '{% block content %}<p style="color: red;">', 1)
    assert injected != original
    loader = app.jinja_env.loader
    app.jinja_env.loader = ChoiceLoader([DictLoader({name: injected}), loader])
    app.jinja_env.cache.clear()
    try:
        response = login("alpha-billing").get("/notifications/")
    finally:
        app.jinja_env.loader = loader
        app.jinja_env.cache.clear()
    assert response.status_code == 200
    values, problems = style_problems(response, "/notifications/")
    assert "color: red;" in values
    assert problems == ["/notifications/: <p style='color: red;'> is not allowed"]


def test_our_page_templates_carry_no_style_attributes():
    """The portal's page templates style through billfold.css, in every branch,
    including those no sweep renders."""
    found = [f"{path.relative_to(TEMPLATES)}:{n}: {line.strip()}"
             for path in sorted(TEMPLATES.rglob("*.html"))
             if path.relative_to(TEMPLATES).parts[0] not in NON_PAGE_TEMPLATES
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\sstyle\s*=", line, re.IGNORECASE)]
    assert not found, "\n".join(found)


def test_api_reference_and_charts_load_their_scripts_from_the_portal(app, world, login):
    browser = login("alpha-admin")
    docs = browser.get("/api-docs/").get_data(as_text=True)
    assert 'src="/static/js/swagger-init.js"' in docs
    assert 'data-spec-url="/api/v1/openapi.json"' in docs
    assert browser.get("/static/js/swagger-init.js").status_code == 200
    charts = browser.get("/billing/analytics/").get_data(as_text=True)
    assert "vendor/chartjs/chart.umd.js" in charts


# -- passwords -----------------------------------------------------------------------

def test_passwords_are_stored_hashed(app, world):
    with app.app_context(), unscoped():
        stored = db.session.scalars(select(BillfoldUser.password)).all()
        db.session.remove()
    assert len(stored) == 5
    for value in stored:
        assert value != PASSWORD and PASSWORD not in value
        assert re.fullmatch(r"(pbkdf2:sha256:\d+|scrypt:\d+:\d+:\d+)\$[^$]+\$[0-9a-f]{64,}",
                            value), value
        assert check_password_hash(value, PASSWORD)
    # Outside the tests Flask-AppBuilder's default, scrypt, applies.
    assert "FAB_PASSWORD_HASH_METHOD" not in vars(Config)


# -- the audit log -------------------------------------------------------------------

def audit_rows(response) -> list[str]:
    """The text of each row of the audit list's table."""
    html = response.get_data(as_text=True)
    body = re.search(r"</thead>(.*?)</table>", html, re.S)  # the list, after the filters
    assert body, "no list on the audit page"
    rows = re.findall(r"<tr\b.*?</tr>", body.group(1), re.S)
    return [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row)).strip() for row in rows]


def test_platform_admin_sees_and_filters_the_audit_log(app, world, login):
    browser = login("operator")
    everything = audit_rows(browser.get("/audit/list/"))
    assert any("Alpha Ltd" in row for row in everything)
    assert any("Bravo GmbH" in row for row in everything)
    assert any("payment_method.add" in row for row in everything)
    assert any("plan_change_request.create" in row for row in everything)

    by_action = audit_rows(browser.get("/audit/list/?_flt_3_action=payment_method.add"))
    assert len(by_action) == 2
    assert all("payment_method.add" in row for row in by_action)

    by_tenant = audit_rows(browser.get(f"/audit/list/?_flt_0_tenant={world.ids['a']}"))
    assert by_tenant and all("Alpha Ltd" in row for row in by_tenant)
    assert len(by_tenant) < len(everything)

    both = audit_rows(browser.get(f"/audit/list/?_flt_0_tenant={world.ids['b']}"
                                  "&_flt_3_action=plan_change_request.create"))
    assert len(both) == 1 and "Bravo GmbH" in both[0]


def test_tenant_admin_sees_only_their_tenants_audit_rows(app, world, login):
    rows = audit_rows(login("alpha-admin").get("/audit/list/"))
    assert rows and not any("Bravo" in row for row in rows)
