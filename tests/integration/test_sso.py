"""Single sign-on end to end against a real OpenID Connect provider
(``oidc-provider-mock``) that this module starts on 127.0.0.1: discovery, the
browser's round trip through the provider's authorize page, the code exchange and
ID token verification all run for real. A small proxy in front of the provider's
token endpoint alters the ID token on its way back, as a man in the middle would."""

from __future__ import annotations

import base64
import html
import json
import threading
import uuid
from contextlib import contextmanager
from urllib.parse import parse_qs, urlencode, urlsplit

import oidc_provider_mock
import pytest
import requests
import werkzeug.serving
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import func, select
from werkzeug.wrappers import Request, Response

from portal import create_app
from portal.audit import AuditEvent
from portal.extensions import db
from portal.sso import SsoConfigError, SsoRefused, merge_userinfo
from tenants import services as tenant_services
from tenants.models import BillfoldUser
from tenants.scoping import tenant_scope, unscoped
from tests.conftest import PASSWORD, config_for, page_text
from tests.factories import ACTOR

CLIENT_ID = "billfold-portal"
CLIENT_SECRET = "billfold-client-secret"
ROLE_MAP = {"billfold-operators": "Platform Admin", "billfold-admins": "Tenant Admin",
            "billfold-finance": "Billing Contact"}
TENANT_DOMAINS = {"alpha.example": "alpha", "bravo.example": "bravo"}


@contextmanager
def serve(wsgi_app):
    """Serve ``wsgi_app`` on 127.0.0.1 on a free port in a thread; stop it afterwards."""
    server = werkzeug.serving.make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Provider:
    """The OpenID Connect provider as the tests (and a person's browser) use it."""

    def __init__(self, url: str):
        self.url = url
        self.metadata = requests.get(url + "/.well-known/openid-configuration",
                                     timeout=5).json()

    def add_person(self, **claims) -> str:
        """Register a person with ``claims``; returns their subject."""
        sub = uuid.uuid4().hex
        response = requests.put(f"{self.url}/users/{sub}", json=claims, timeout=5)
        assert response.status_code == 204
        return sub

    def sign_in(self, authorize_url: str, sub: str) -> str:
        """Submit the provider's authorize page as ``sub``; returns the callback URL."""
        response = requests.post(authorize_url, data={"sub": sub}, allow_redirects=False,
                                 timeout=5)
        assert response.status_code == 302, response.text
        return response.headers["Location"]

    def id_token_for(self, sub: str, nonce: str, client_id: str = CLIENT_ID) -> str:
        """A genuine ID token issued to ``client_id`` for ``sub`` with ``nonce``."""
        redirect_uri = "http://elsewhere.test/callback"
        query = urlencode({"client_id": client_id, "response_type": "code",
                           "redirect_uri": redirect_uri, "scope": "openid email profile",
                           "nonce": nonce, "state": "s"})
        callback = self.sign_in(f"{self.metadata['authorization_endpoint']}?{query}", sub)
        code = parse_qs(urlsplit(callback).query)["code"][0]
        token = requests.post(self.metadata["token_endpoint"], timeout=5,
                              data={"grant_type": "authorization_code", "code": code,
                                    "redirect_uri": redirect_uri},
                              auth=(client_id, "any-secret")).json()
        return token["id_token"]


class TokenProxy:
    """Forwards token requests to the provider and passes each response's ID token
    through ``tamper`` on the way back (None leaves the ID token out)."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.tamper = lambda id_token: id_token
        self.calls = 0

    def __call__(self, environ, start_response):
        request = Request(environ)
        upstream = requests.post(
            self.upstream, data=request.get_data(), timeout=5,
            headers={k: v for k, v in request.headers.items()
                     if k in ("Authorization", "Content-Type", "Accept")},
        )
        body = upstream.json()
        if "id_token" in body:
            self.calls += 1
            body["id_token"] = self.tamper(body["id_token"])
            if body["id_token"] is None:
                del body["id_token"]
        return Response(json.dumps(body), status=upstream.status_code,
                        content_type="application/json")(environ, start_response)


@pytest.fixture(scope="module")
def provider():
    with serve(oidc_provider_mock.app(require_nonce=True)) as url:
        yield Provider(url)


def sso_config(provider_url: str, **extra) -> dict:
    return {
        "OIDC_ISSUER": provider_url,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_PROVIDER_NAME": "Acme ID",
        "OIDC_ROLE_CLAIM": "groups",
        "OIDC_ROLE_MAP": json.dumps(ROLE_MAP),
        "OIDC_TENANT_CLAIM": "billfold_tenant",
        "OIDC_TENANT_DOMAINS": json.dumps(TENANT_DOMAINS),
        **extra,
    }


@contextmanager
def portal(app, provider_url: str, **extra):
    """A portal on the suite's database, signing in through the provider at
    ``provider_url``."""
    sso_app = create_app(config_for(app.config["DATABASE_URL"],
                                    **sso_config(provider_url, **extra)))
    try:
        yield sso_app
    finally:
        with sso_app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture(scope="module")
def sso_app(app, provider):
    with portal(app, provider.url) as sso_app:
        yield sso_app


def start(sso_app, path="/login/oidc"):
    """A browser that opened the portal's sign-in with the provider; returns the
    browser and the provider's authorize URL it was sent to."""
    browser = sso_app.test_client()
    response = browser.get(path)
    assert response.status_code == 302
    return browser, response.headers["Location"]


def sign_in(sso_app, provider, claims: dict, path="/login/oidc"):
    """The whole round trip for a person with ``claims``; returns the browser and the
    portal's answer to the provider's callback."""
    sub = provider.add_person(**claims)
    browser, authorize_url = start(sso_app, path)
    callback = provider.sign_in(authorize_url, sub)
    return browser, browser.get(callback)


def person(email: str, *groups: str, tenant: str | None = None, verified=True, **more):
    claims = {"email": email, "email_verified": verified, "groups": list(groups),
              "given_name": "Sam", "family_name": "Sample", **more}
    if tenant is not None:
        claims["billfold_tenant"] = tenant
    return claims


def signed_in_user_id(browser) -> int | None:
    with browser.session_transaction() as session:
        value = session.get("_user_id")
    return int(value) if value is not None else None


def user_by_email(sso_app, email: str) -> BillfoldUser | None:
    with sso_app.app_context(), unscoped():
        user = db.session.scalar(select(BillfoldUser).where(BillfoldUser.email == email))
        if user is not None:
            user.role_names, user.tenant  # noqa: B018 - load them before the session ends
        return user


def counts(sso_app) -> tuple[int, int]:
    with sso_app.app_context(), unscoped():
        return (db.session.scalar(select(func.count(BillfoldUser.id))),
                db.session.scalar(select(func.count(AuditEvent.id))))


def assert_refused(browser, response, message: str, status: int = 403) -> None:
    text = html.unescape(page_text(response))
    assert response.status_code == status, text
    assert "refused" in text and "You are not signed in" in text
    assert message in text
    assert signed_in_user_id(browser) is None
    assert "/login" in browser.get("/").headers.get("Location", "")


# -- the sign-in page -----------------------------------------------------------------

def test_sign_in_page_offers_the_provider_and_the_password_form(sso_app):
    html = sso_app.test_client().get("/login/?next=/usage/").get_data(as_text=True)
    assert "Sign in with Acme ID" in html
    assert 'href="/login/oidc?next=/usage/"' in html
    assert 'name="password"' in html


def test_the_sign_in_button_leads_to_the_provider_with_a_nonce(sso_app, provider):
    _, authorize_url = start(sso_app)
    query = parse_qs(urlsplit(authorize_url).query)
    assert authorize_url.startswith(provider.metadata["authorization_endpoint"])
    assert query["client_id"] == [CLIENT_ID]
    assert query["redirect_uri"] == ["http://billfold.test/oauth-authorized/oidc"]
    assert query["nonce"][0] and query["state"][0]
    assert "openid" in query["scope"][0].split()


# -- users created and matched ----------------------------------------------------------

def test_first_sign_in_creates_a_tenant_admin_in_the_tenant_the_claim_names(
        sso_app, provider, world):
    browser, response = sign_in(sso_app, provider,
                                person("ann@corp.example", "billfold-admins", tenant="alpha"),
                                path="/login/oidc?next=/usage/")
    assert response.status_code == 302 and response.headers["Location"] == "/usage/"
    user = user_by_email(sso_app, "ann@corp.example")
    assert (user.tenant_id, user.role_names) == (world.ids["a"], ["Tenant Admin"])
    assert (user.first_name, user.last_name, user.username) == ("Sam", "Sample",
                                                                "ann@corp.example")
    assert signed_in_user_id(browser) == user.id
    assert "Alpha Ltd" in page_text(browser.get("/"))
    with sso_app.app_context(), unscoped():
        event = db.session.scalar(select(AuditEvent).where(
            AuditEvent.action == "user.sso_provision", AuditEvent.object_id == str(user.id)))
        assert event.tenant_id == world.ids["a"] and event.actor_label == "single sign-on"


def test_first_sign_in_places_a_billing_contact_by_email_domain(sso_app, provider, world):
    browser, response = sign_in(sso_app, provider,
                                person("dan@bravo.example", "billfold-finance", "other-app"))
    assert response.status_code == 302
    user = user_by_email(sso_app, "dan@bravo.example")
    assert (user.tenant_id, user.role_names) == (world.ids["b"], ["Billing Contact"])
    assert "Bravo GmbH" in page_text(browser.get("/"))


def test_several_mapped_groups_give_the_most_privileged_tenant_role(sso_app, provider, world):
    _, response = sign_in(sso_app, provider, person(
        "eve@alpha.example", "billfold-finance", "billfold-admins"))
    assert response.status_code == 302
    assert user_by_email(sso_app, "eve@alpha.example").role_names == ["Tenant Admin"]


def test_platform_admin_comes_only_from_the_mapped_group(sso_app, provider, world):
    browser, response = sign_in(sso_app, provider,
                                person("ops@platform.example", "billfold-operators"))
    assert response.status_code == 302
    user = user_by_email(sso_app, "ops@platform.example")
    assert (user.tenant_id, user.role_names) == (None, ["Platform Admin"])
    assert browser.get("/platform/tenants/list/").status_code == 200

    before = counts(sso_app)
    browser, response = sign_in(sso_app, provider, person(
        "mallory@platform.example", "Platform Admin", "admins", "billfold-platform"))
    assert_refused(browser, response, "none of the groups that give access")
    assert counts(sso_app) == before


def test_an_existing_user_is_matched_by_verified_email_and_follows_the_groups(
        sso_app, provider, world):
    before_users, _ = counts(sso_app)
    browser, response = sign_in(sso_app, provider, person(
        "Alpha-Billing@Example.com", "billfold-admins", tenant="alpha"))
    assert response.status_code == 302
    assert signed_in_user_id(browser) == world.ids["a_billing"]
    user = user_by_email(sso_app, "alpha-billing@example.com")
    assert (user.tenant_id, user.role_names) == (world.ids["a"], ["Tenant Admin"])
    assert counts(sso_app)[0] == before_users
    with sso_app.app_context(), unscoped():
        event = db.session.scalar(select(AuditEvent).where(
            AuditEvent.action == "user.sso_role_sync",
            AuditEvent.object_id == str(world.ids["a_billing"])))
        assert '"Billing Contact"' in event.before and '"Tenant Admin"' in event.after


def test_groups_never_take_the_role_of_a_tenants_last_admin(sso_app, provider, world):
    """Alpha's only Tenant Admin signs in with only the Billing Contact group: the role
    stays (a tenant keeps one, as in user management), the page says why, and the
    audit log records what the provider asked for. Once the tenant has a second
    Tenant Admin, the same sign-in takes the role."""
    admin = user_by_email(sso_app, "alpha-admin@example.com")
    assert admin.role_names == ["Tenant Admin"]
    browser, response = sign_in(sso_app, provider, person(
        "alpha-admin@example.com", "billfold-finance", tenant="alpha"))
    assert response.status_code == 302 and signed_in_user_id(browser) == admin.id
    assert user_by_email(sso_app, "alpha-admin@example.com").role_names == ["Tenant Admin"]
    page = html.unescape(page_text(browser.get(response.headers["Location"],
                                               follow_redirects=True)))
    assert "you are the last active Tenant Admin of Alpha" in page
    with sso_app.app_context(), unscoped():
        kept = db.session.scalar(select(AuditEvent).where(
            AuditEvent.action == "user.sso_role_sync_kept",
            AuditEvent.object_id == str(admin.id)))
        assert '"provider_role": "Billing Contact"' in kept.after

    sign_in(sso_app, provider, person("alpha-billing@example.com", "billfold-admins",
                                      tenant="alpha"))  # a second Tenant Admin
    sign_in(sso_app, provider, person("alpha-admin@example.com", "billfold-finance",
                                      tenant="alpha"))
    assert user_by_email(sso_app, "alpha-admin@example.com").role_names == ["Billing Contact"]


def test_an_existing_user_without_tenant_claim_keeps_its_tenant(sso_app, provider, world):
    browser, response = sign_in(sso_app, provider,
                                person("bravo-admin@example.com", "billfold-admins"))
    assert response.status_code == 302
    assert signed_in_user_id(browser) == world.ids["b_admin"]
    assert user_by_email(sso_app, "bravo-admin@example.com").tenant_id == world.ids["b"]


# -- refusals ---------------------------------------------------------------------------

def _deactivate_alpha_billing(world):
    with tenant_scope(world.ids["a"]):
        user = db.session.get(BillfoldUser, world.ids["a_billing"])
        user.active = False
        db.session.commit()


def _suspend_bravo(world):
    tenant_services.set_tenant_status(ACTOR, tenant_services.get_tenant_by_slug("bravo"),
                                      "suspended")


REFUSALS = {
    "no tenant matches": (
        person("nora@nowhere.example", "billfold-admins"), None,
        "No Billfold tenant matches your account"),
    "the tenant claim names no tenant": (
        person("zed@corp.example", "billfold-finance", tenant="zulu"), None,
        "names the tenant 'zulu', which does not exist"),
    "the tenant claim and the email domain disagree": (
        person("kim@alpha.example", "billfold-finance", tenant="bravo"), None,
        "belongs to the tenant 'alpha'"),
    "a claim names another tenant than the account's": (
        person("alpha-admin@example.com", "billfold-admins", tenant="bravo"), None,
        "An account never moves between tenants"),
    "a tenant user in the Platform Admin group": (
        person("alpha-admin@example.com", "billfold-operators"), None,
        "Platform Admins belong to no tenant"),
    "a Platform Admin in a tenant group": (
        person("operator@example.com", "billfold-admins", tenant="alpha"), None,
        "platform account without a tenant"),
    "the email is not verified": (
        person("alpha-admin@example.com", "billfold-admins", verified=False), None,
        "has not verified the email address"),
    "no email is sent": (
        {"groups": ["billfold-admins"], "billfold_tenant": "alpha"}, None,
        "did not send your email address"),
    "no mapped group": (
        person("alpha-admin@example.com", "everyone"), None,
        "none of the groups that give access"),
    "a deactivated user": (
        person("alpha-billing@example.com", "billfold-finance"), _deactivate_alpha_billing,
        "is deactivated"),
    "a suspended tenant": (
        person("bravo-billing@example.com", "billfold-finance"), _suspend_bravo,
        "is suspended"),
    "a new user of a suspended tenant": (
        person("new@bravo.example", "billfold-finance"), _suspend_bravo, "is suspended"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_sign_in_is_refused_with_a_clear_page_and_nothing_changes(sso_app, provider, world,
                                                                   case):
    claims, arrange, message = REFUSALS[case]
    if arrange is not None:
        with sso_app.app_context(), unscoped():
            arrange(world)
    before = counts(sso_app)
    with sso_app.app_context(), unscoped():
        accounts_before = {u.email: (u.tenant_id, u.role_names, u.login_count)
                           for u in db.session.scalars(select(BillfoldUser))}
    browser, response = sign_in(sso_app, provider, claims)
    assert_refused(browser, response, message)
    assert counts(sso_app) == before
    with sso_app.app_context(), unscoped():
        accounts_after = {u.email: (u.tenant_id, u.role_names, u.login_count)
                          for u in db.session.scalars(select(BillfoldUser))}
    assert accounts_after == accounts_before


# -- ID token verification ----------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def changed_claims(id_token: str) -> str:
    """The provider's signature over claims that now name another, existing person."""
    header, payload, signature = id_token.split(".")
    claims = _unb64(payload)
    claims.update(email="alpha-admin@example.com", groups=["billfold-operators"])
    return ".".join([header, _b64(json.dumps(claims).encode()), signature])


def signed_with_another_key(id_token: str) -> str:
    header, payload, _ = id_token.split(".")
    claims = {**_unb64(payload), "email": "alpha-admin@example.com"}
    forged_header = {"alg": "RS256"}
    if "kid" in _unb64(header):
        forged_header["kid"] = _unb64(header)["kid"]  # claim to be the provider's key
    return jwt.encode(forged_header, claims, RSAKey.generate_key(2048))


def unsigned(id_token: str) -> str:
    _, payload, _ = id_token.split(".")
    claims = {**_unb64(payload), "email": "alpha-admin@example.com"}
    return ".".join([_b64(b'{"alg":"none","typ":"JWT"}'), _b64(json.dumps(claims).encode()),
                     ""])


@pytest.fixture
def token_proxy(sso_app, provider, monkeypatch):
    """Put the proxy between the portal and the provider's token endpoint."""
    proxy = TokenProxy(provider.metadata["token_endpoint"])
    with serve(proxy) as url:
        client = sso_app.appbuilder.sm.oauth_remotes["oidc"]
        with sso_app.app_context():
            metadata = client.load_server_metadata()
        monkeypatch.setitem(metadata, "token_endpoint", url)
        yield proxy


def verification_failure(caplog) -> str:
    """Why the portal's ID token check failed, as it logged it."""
    found = [r.getMessage() for r in caplog.records if "failed verification" in r.getMessage()]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("tamper,reason", [
    (changed_claims, "bad_signature"),
    (signed_with_another_key, "bad_signature"),
    (unsigned, "'none' is not allowed"),
])
def test_a_tampered_id_token_is_refused(sso_app, provider, world, token_proxy, caplog,
                                        tamper, reason):
    token_proxy.tamper = tamper
    before = counts(sso_app)
    browser, response = sign_in(sso_app, provider,
                                person("tess@alpha.example", "billfold-finance"))
    assert token_proxy.calls == 1
    assert_refused(browser, response, "could not be verified")
    assert reason in verification_failure(caplog)
    assert counts(sso_app) == before
    assert user_by_email(sso_app, "tess@alpha.example") is None


def test_the_same_sign_in_through_the_proxy_untouched_succeeds(sso_app, provider, world,
                                                                token_proxy):
    browser, response = sign_in(sso_app, provider,
                                person("tess@alpha.example", "billfold-finance"))
    assert token_proxy.calls == 1
    assert response.status_code == 302
    assert signed_in_user_id(browser) == user_by_email(sso_app, "tess@alpha.example").id


def test_a_genuine_id_token_for_another_client_is_refused(sso_app, provider, world,
                                                          token_proxy, caplog):
    sub = provider.add_person(**person("alpha-admin@example.com", "billfold-admins"))
    browser, authorize_url = start(sso_app)
    nonce = parse_qs(urlsplit(authorize_url).query)["nonce"][0]
    foreign = provider.id_token_for(sub, nonce, client_id="another-application")
    token_proxy.tamper = lambda _: foreign
    response = browser.get(provider.sign_in(authorize_url, sub))
    assert_refused(browser, response, "could not be verified")
    assert "Invalid claim: 'aud'" in verification_failure(caplog)


def test_a_genuine_id_token_of_an_earlier_sign_in_is_refused(sso_app, provider, world,
                                                             token_proxy, caplog):
    sub = provider.add_person(**person("alpha-admin@example.com", "billfold-admins"))
    earlier = provider.id_token_for(sub, nonce="an-earlier-sign-in")
    token_proxy.tamper = lambda _: earlier
    browser, response = sign_in(sso_app, provider,
                                person("alpha-admin@example.com", "billfold-admins"))
    assert_refused(browser, response, "could not be verified")
    assert "Invalid claim: 'nonce'" in verification_failure(caplog)


def test_a_token_response_without_id_token_is_refused(sso_app, provider, world,
                                                      token_proxy):
    token_proxy.tamper = lambda _: None
    browser, response = sign_in(sso_app, provider,
                                person("alpha-admin@example.com", "billfold-admins"))
    assert token_proxy.calls == 1
    assert_refused(browser, response, "sent no identity token")


def test_a_replayed_callback_is_refused(sso_app, provider, world):
    sub = provider.add_person(**person("alpha-admin@example.com", "billfold-admins"))
    browser, authorize_url = start(sso_app)
    callback = provider.sign_in(authorize_url, sub)
    assert browser.get(callback).status_code == 302
    browser.get("/logout/")
    assert_refused(browser, browser.get(callback), "expired or was already used",
                   status=400)


def test_a_sign_in_denied_at_the_provider_is_refused(sso_app, provider, world):
    browser, authorize_url = start(sso_app)
    response = requests.post(authorize_url, data={"action": "deny"}, allow_redirects=False,
                             timeout=5)
    assert_refused(browser, browser.get(response.headers["Location"]), "cancelled")


def test_an_unreachable_provider_gives_a_clear_page(app):
    with serve(Response("down", status=503)) as url:
        pass  # the port is free again: nothing answers there now
    with portal(app, url) as sso_app:
        browser = sso_app.test_client()
        response = browser.get("/login/oidc")
        assert_refused(browser, response, "could not be reached", status=502)


def test_a_provider_answering_as_another_issuer_is_not_trusted(app, provider):
    with portal(app, provider.url + "/") as sso_app:
        browser = sso_app.test_client()
        response = browser.get("/login/oidc")
        assert_refused(browser, response, "its issuer differs", status=502)


# -- settings ---------------------------------------------------------------------------

def test_password_sign_in_can_be_turned_off(app, provider, world):
    with portal(app, provider.url, AUTH_DB_LOGIN_ENABLED=False) as sso_app:
        browser = sso_app.test_client()
        html = browser.get("/login/").get_data(as_text=True)
        assert "Sign in with Acme ID" in html and 'name="password"' not in html
        response = browser.post("/login/", data={"username": "alpha-admin",
                                                 "password": PASSWORD})
        assert response.status_code == 403
        assert "Password sign-in is turned off" in page_text(response)
        assert signed_in_user_id(browser) is None
        _, response = sign_in(sso_app, provider,
                              person("alpha-admin@example.com", "billfold-admins"))
        assert response.status_code == 302


def test_password_sign_in_stays_on_by_default(sso_app, world):
    browser = sso_app.test_client()
    response = browser.post("/login/", data={"username": "alpha-admin",
                                             "password": PASSWORD})
    assert response.status_code == 302
    assert signed_in_user_id(browser) == world.ids["a_admin"]


@pytest.mark.parametrize("settings,message", [
    ({"OIDC_ROLE_MAP": '{"admins": "Admin"}'}, "'Admin', which is not a role"),
    ({"OIDC_ROLE_MAP": "{not json"}, "OIDC_ROLE_MAP is not valid JSON"),
    ({"OIDC_TENANT_DOMAINS": '{"alpha.example": "Not A Slug"}'}, "not a tenant slug"),
    ({"OIDC_ISSUER": "http://idp.example.com"}, "must use https"),
    ({"OIDC_CLIENT_SECRET": ""}, "OIDC_CLIENT_SECRET is required"),
    ({"OIDC_SCOPES": "email profile"}, "must include openid"),
    ({"AUTH_DB_LOGIN_ENABLED": "maybe"}, "must be true or false"),
])
def test_wrong_settings_stop_the_portal_with_the_reason(app, provider, settings, message):
    with pytest.raises(SsoConfigError, match=message):
        create_app(config_for(app.config["DATABASE_URL"],
                              **{**sso_config(provider.url), **settings}))


def test_turning_password_sign_in_off_needs_a_provider(app):
    with pytest.raises(SsoConfigError, match="nobody could sign in"):
        create_app(config_for(app.config["DATABASE_URL"], AUTH_DB_LOGIN_ENABLED=False))


def test_userinfo_completes_the_id_token_only_about_the_same_person():
    merged = merge_userinfo({"sub": "a", "email": "a@alpha.example"},
                            {"sub": "a", "email": "b@bravo.example", "groups": ["x"]})
    assert merged == {"sub": "a", "email": "a@alpha.example", "groups": ["x"]}
    with pytest.raises(SsoRefused, match="another person"):
        merge_userinfo({"sub": "a"}, {"sub": "b", "email": "b@bravo.example"})
