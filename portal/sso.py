"""Single sign-on over OpenID Connect.

Any OpenID Connect provider, named by its issuer URL, signs people in: its settings
are discovered at ``<issuer>/.well-known/openid-configuration`` and the ID token it
returns is verified (signature against the provider's published keys, issuer,
audience, expiry and the nonce of this sign-in) before any of its claims is read.
The verified email finds the Billfold user; a role claim mapped to Billfold roles and
a tenant claim or the email's domain place a first-time user. An account never moves
between tenants, and a claim that contradicts the account refuses the sign-in.

The settings are described in docs/sso.md.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.common.security import is_secure_transport
from authlib.integrations.base_client import MismatchingStateError, OAuthError
from flask import current_app
from flask_appbuilder.security.sqla.models import Role
from joserfc.errors import JoseError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload, selectinload
from werkzeug.security import generate_password_hash

from permissions.matrix import BILLING_CONTACT, PLATFORM_ADMIN, ROLES, TENANT_ADMIN
from portal import audit
from portal.audit import Actor
from portal.errors import ValidationFailed
from portal.extensions import db
from tenants.models import BillfoldUser, Tenant
from tenants.scoping import tenant_scope, unscoped
from tenants.services import USER_FIELDS, check_email, check_slug

log = logging.getLogger(__name__)

PROVIDER = "oidc"  # the provider's name in /login/oidc and /oauth-authorized/oidc
DISCOVERY_PATH = "/.well-known/openid-configuration"
# ID tokens are accepted only when signed with a key the provider publishes: never
# unsigned ("none") and never with the client secret as an HMAC key.
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                      "ES256", "ES384", "ES512", "EdDSA")
# When the groups of a person map to several roles, the most privileged one applies.
ROLE_PRECEDENCE = (PLATFORM_ADMIN, TENANT_ADMIN, BILLING_CONTACT)
USERNAME_MAX = 128  # ab_user.username
NAME_MAX = 64  # ab_user.first_name and last_name
ACTOR = Actor.system("single sign-on")
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


class SsoConfigError(RuntimeError):
    """The single sign-on settings are wrong; the portal does not start with them."""


class SsoRefused(Exception):
    """A sign-in is refused; ``message`` is shown to the person, nothing was written."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class SsoSettings:
    issuer: str
    client_id: str
    client_secret: str
    provider_name: str
    scopes: tuple[str, ...]
    role_claim: str | None
    role_map: Mapping[str, str] = field(default_factory=dict)
    tenant_claim: str | None = None
    tenant_domains: Mapping[str, str] = field(default_factory=dict)
    redirect_uri: str | None = None
    timeout: float = 10.0

    @property
    def metadata_url(self) -> str:
        return self.issuer.rstrip("/") + DISCOVERY_PATH


# -- settings ----------------------------------------------------------------------

def flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    """A yes/no setting given as a boolean or as a word (``BILLFOLD_X=false``)."""
    value = config.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SsoConfigError(f"BILLFOLD_{key} must be true or false, not {value!r}")


def db_login_enabled(config: Mapping[str, Any]) -> bool:
    return flag(config, "AUTH_DB_LOGIN_ENABLED", True)


def _text(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    return str(value).strip() or None


def _mapping(config: Mapping[str, Any], key: str, problems: list[str]) -> dict[str, str]:
    """A mapping setting given as a dict or as a JSON object of strings."""
    raw = config.get(key)
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            problems.append(f"BILLFOLD_{key} is not valid JSON ({exc})")
            return {}
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        problems.append(f"BILLFOLD_{key} must be a JSON object whose keys and values "
                        "are strings")
        return {}
    return {k.strip(): v.strip() for k, v in raw.items()}


def load_settings(config: Mapping[str, Any]) -> SsoSettings | None:
    """The single sign-on settings, or None when no provider is configured. Raises
    SsoConfigError naming every wrong setting."""
    issuer = _text(config, "OIDC_ISSUER")
    if issuer is None:
        return None
    problems: list[str] = []
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"BILLFOLD_OIDC_ISSUER must be the provider's URL, not {issuer!r}")
    elif not is_secure_transport(issuer):
        problems.append("BILLFOLD_OIDC_ISSUER must use https (plain http only on this "
                        "machine's loopback address)")
    client_id = _text(config, "OIDC_CLIENT_ID")
    client_secret = _text(config, "OIDC_CLIENT_SECRET")
    if client_id is None:
        problems.append("BILLFOLD_OIDC_CLIENT_ID is required with BILLFOLD_OIDC_ISSUER")
    if client_secret is None:
        problems.append("BILLFOLD_OIDC_CLIENT_SECRET is required with BILLFOLD_OIDC_ISSUER")
    scopes = tuple((_text(config, "OIDC_SCOPES") or "openid email profile").split())
    if "openid" not in scopes:
        problems.append("BILLFOLD_OIDC_SCOPES must include openid")
    role_claim = _text(config, "OIDC_ROLE_CLAIM")
    role_map = _mapping(config, "OIDC_ROLE_MAP", problems)
    for group, role in role_map.items():
        if role not in ROLES:
            problems.append(f"BILLFOLD_OIDC_ROLE_MAP maps {group!r} to {role!r}, which is "
                            f"not a role; use one of {', '.join(ROLES)}")
    if role_map and role_claim is None:
        problems.append("BILLFOLD_OIDC_ROLE_MAP needs BILLFOLD_OIDC_ROLE_CLAIM, the claim "
                        "that holds the groups")
    tenant_domains = {}
    for domain, slug in _mapping(config, "OIDC_TENANT_DOMAINS", problems).items():
        try:
            tenant_domains[domain.lower().lstrip("@")] = check_slug(slug)
        except ValueError as exc:
            problems.append(f"BILLFOLD_OIDC_TENANT_DOMAINS maps {domain!r} to {slug!r}, "
                            f"which is not a tenant slug: {exc}")
    redirect_uri = _text(config, "OIDC_REDIRECT_URI")
    if redirect_uri is not None and urlsplit(redirect_uri).scheme not in ("http", "https"):
        problems.append("BILLFOLD_OIDC_REDIRECT_URI must be an absolute http(s) URL")
    try:
        timeout = float(config.get("OIDC_TIMEOUT_SECONDS") or 10)
    except (TypeError, ValueError):
        problems.append("BILLFOLD_OIDC_TIMEOUT_SECONDS must be a number of seconds")
        timeout = 10.0
    if problems or client_id is None or client_secret is None:
        raise SsoConfigError("single sign-on is misconfigured: " + "; ".join(problems))
    return SsoSettings(
        issuer=issuer,
        client_id=client_id,
        client_secret=client_secret,
        provider_name=_text(config, "OIDC_PROVIDER_NAME") or "SSO",
        scopes=scopes,
        role_claim=role_claim,
        role_map=role_map,
        tenant_claim=_text(config, "OIDC_TENANT_CLAIM"),
        tenant_domains=tenant_domains,
        redirect_uri=redirect_uri,
        timeout=timeout,
    )


def register_client(oauth, settings: SsoSettings):
    """Register the provider with Authlib's Flask integration (``oauth``); endpoints
    and keys come from the provider's discovery document on first use."""
    return oauth.register(
        PROVIDER,
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        server_metadata_url=settings.metadata_url,
        client_kwargs={"scope": " ".join(settings.scopes), "timeout": settings.timeout},
    )


# -- talking to the provider -----------------------------------------------------

def provider_metadata(client, settings: SsoSettings) -> dict[str, Any]:
    """The provider's discovery document, checked to be the configured issuer's.

    The signing algorithms it lists are narrowed to SIGNING_ALGORITHMS in place:
    Authlib verifies ID tokens against this same document."""
    name = settings.provider_name
    try:
        metadata = client.load_server_metadata()
    except (requests.RequestException, ValueError) as exc:
        log.error("OpenID Connect discovery at %s failed: %s", settings.metadata_url, exc)
        raise SsoRefused(f"{name} could not be reached to sign you in. Try again in a "
                         "moment; if it keeps failing, tell your administrator.",
                         status=502) from exc
    if metadata.get("issuer") != settings.issuer:
        log.error("OpenID Connect discovery at %s names the issuer %r, not the configured "
                  "%r", settings.metadata_url, metadata.get("issuer"), settings.issuer)
        raise SsoRefused(f"{name} is not set up correctly for Billfold (its issuer "
                         "differs from the configured one). Tell your administrator.",
                         status=502)
    offered = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
    accepted = [alg for alg in offered if alg in SIGNING_ALGORITHMS]
    if not accepted:
        log.error("%s signs ID tokens only with %s", settings.issuer, offered)
        raise SsoRefused(f"{name} signs identity tokens in a way Billfold does not accept. "
                         "Tell your administrator.", status=502)
    metadata["id_token_signing_alg_values_supported"] = accepted
    return metadata


def verified_token(client, settings: SsoSettings) -> dict[str, Any]:
    """Finish the authorization-code exchange of the current callback request and
    return the provider's token response with the verified ID token's claims under
    ``userinfo``. Refuses a stale or replayed callback, a denied sign-in, and an ID
    token whose signature, issuer, audience, expiry or nonce does not check out."""
    name = settings.provider_name
    provider_metadata(client, settings)
    try:
        token = client.authorize_access_token(claims_options={
            "iss": {"essential": True, "value": settings.issuer},
            "aud": {"essential": True, "value": settings.client_id},
            "sub": {"essential": True},
        })
    except MismatchingStateError as exc:
        raise SsoRefused("This sign-in link has expired or was already used. Start again "
                         "from the sign-in page.", status=400) from exc
    except OAuthError as exc:
        log.warning("%s refused the sign-in: %s %s", settings.issuer, exc.error,
                    exc.description)
        if exc.error == "access_denied":
            raise SsoRefused(f"The sign-in was cancelled at {name}.") from exc
        raise SsoRefused(f"{name} did not complete the sign-in ({exc.error}). Start again "
                         "from the sign-in page.") from exc
    except requests.RequestException as exc:
        log.error("token request to %s failed: %s", settings.issuer, exc)
        raise SsoRefused(f"{name} could not be reached to finish signing you in. Try "
                         "again in a moment.", status=502) from exc
    except (JoseError, AuthlibBaseError, ValueError) as exc:
        log.warning("ID token from %s failed verification: %r", settings.issuer, exc)
        raise SsoRefused(f"The identity token from {name} could not be verified, so "
                         "nobody was signed in.") from exc
    if not token.get("userinfo"):
        raise SsoRefused(f"{name} sent no identity token, so nobody was signed in.")
    return token


def claims_of(client, settings: SsoSettings, token: Mapping[str, Any]) -> dict[str, Any]:
    """The person's claims: the verified ID token's, completed from the provider's
    userinfo endpoint when the ID token lacks a claim Billfold reads (providers may
    return profile and email claims from that endpoint only)."""
    claims = dict(token["userinfo"])
    wanted = ["email", "email_verified"]
    if settings.role_map and settings.role_claim:
        wanted.append(settings.role_claim)
    if settings.tenant_claim:
        wanted.append(settings.tenant_claim)
    missing = [name for name in wanted if claim(claims, name) is None]
    endpoint = client.load_server_metadata().get("userinfo_endpoint")
    if not missing or not endpoint:
        return claims
    try:
        extra = client.userinfo(token=dict(token))
    except (requests.RequestException, ValueError, AuthlibBaseError) as exc:
        log.error("userinfo request to %s failed: %s", settings.issuer, exc)
        raise SsoRefused(f"{settings.provider_name} could not be reached to finish "
                         "signing you in. Try again in a moment.", status=502) from exc
    return merge_userinfo(claims, extra)


def merge_userinfo(id_claims: Mapping[str, Any], userinfo: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """Add userinfo claims the ID token lacks. The userinfo response must be about the
    ID token's subject; the ID token's own claims always win."""
    if userinfo.get("sub") != id_claims.get("sub"):
        raise SsoRefused("The identity provider answered about another person than the "
                         "one who signed in, so nobody was signed in.")
    return {**userinfo, **id_claims}


# -- claims to an identity ----------------------------------------------------------

def claim(claims: Mapping[str, Any], name: str | None) -> Any:
    """A claim by name; a dotted name (``realm_access.roles``) reaches into nested
    objects when no claim carries the dotted name itself."""
    if not name:
        return None
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


@dataclass(frozen=True)
class Identity:
    """What the claims say about the person signing in."""

    email: str
    first_name: str
    last_name: str
    role: str | None  # None: no role mapping is configured
    tenant_slug: str | None  # the tenant the claims name, if any
    tenant_source: str | None  # where the tenant came from, for messages

    @property
    def domain(self) -> str:
        return self.email.rsplit("@", 1)[1].lower()


def identity_from_claims(claims: Mapping[str, Any], settings: SsoSettings) -> Identity:
    """The identity the claims describe. Refuses a missing, unverified or malformed
    email, no mapped group (when groups are mapped), and contradicting tenants."""
    raw_email = claims.get("email")
    if not isinstance(raw_email, str) or not raw_email.strip():
        raise SsoRefused("Your identity provider did not send your email address, which "
                         "Billfold needs to find your account. Ask your administrator.")
    if claims.get("email_verified") not in (True, "true"):
        raise SsoRefused(f"Your identity provider has not verified the email address "
                         f"{raw_email}. Billfold signs people in by verified email only.")
    try:
        email = check_email(raw_email)
    except ValueError as exc:
        raise SsoRefused(f"{raw_email!r} is not a usable email address.") from exc
    first, last = _names(claims, email)
    slug, source = _tenant_named(claims, email, settings)
    return Identity(email=email, first_name=first, last_name=last,
                    role=_mapped_role(claims, settings), tenant_slug=slug,
                    tenant_source=source)


def _claim_text(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    return value if isinstance(value, str) else ""


def _names(claims: Mapping[str, Any], email: str) -> tuple[str, str]:
    first, last, full = (_claim_text(claims, name)
                         for name in ("given_name", "family_name", "name"))
    if not first and not last and full.strip():
        first, _, last = full.strip().partition(" ")
    if not first.strip():
        first = email.split("@", 1)[0]
    return first.strip()[:NAME_MAX], last.strip()[:NAME_MAX]


def _mapped_role(claims: Mapping[str, Any], settings: SsoSettings) -> str | None:
    if not settings.role_map:
        return None
    groups = _strings(claim(claims, settings.role_claim))
    granted = {settings.role_map[g] for g in groups if g in settings.role_map}
    if not granted:
        raise SsoRefused("Your account is in none of the groups that give access to "
                         "Billfold. Ask your administrator for access.")
    return next(role for role in ROLE_PRECEDENCE if role in granted)


def _tenant_named(claims: Mapping[str, Any], email: str, settings: SsoSettings
                  ) -> tuple[str | None, str | None]:
    named = None
    if settings.tenant_claim:
        values = {v.strip().lower() for v in _strings(claim(claims, settings.tenant_claim))
                  if v.strip()}
        if len(values) > 1:
            raise SsoRefused("Your identity provider names several tenants for you, but a "
                             "Billfold account belongs to one tenant. Ask your "
                             "administrator.")
        named = values.pop() if values else None
    domain = email.rsplit("@", 1)[1].lower()
    mapped = settings.tenant_domains.get(domain)
    if named and mapped and named != mapped:
        raise SsoRefused(f"Your identity provider names the tenant '{named}', but your "
                         f"email domain {domain} belongs to the tenant '{mapped}'. Ask your "
                         "administrator to correct one of them.")
    if named:
        return named, "your identity provider"
    if mapped:
        return mapped, f"your email domain {domain}"
    return None, None


# -- an identity to a Billfold user ---------------------------------------------------

def sign_in(identity: Identity) -> BillfoldUser:
    """The Billfold user for ``identity``: the user with its email, whose role follows
    the mapped groups, or a new user in the tenant the claims name. Refuses with a
    message (and writes nothing) whenever the account and the claims disagree."""
    user = _user_by_email(identity.email)
    if user is None:
        try:
            return _provision(identity)
        except IntegrityError:
            # A parallel first sign-in of the same person created the user first.
            db.session.rollback()
            user = _user_by_email(identity.email)
            if user is None:
                raise
    return _admit(user, identity)


def _user_by_email(email: str) -> BillfoldUser | None:
    with unscoped():
        users = db.session.scalars(
            select(BillfoldUser)
            .options(joinedload(BillfoldUser.tenant), selectinload(BillfoldUser.roles))
            .where(func.lower(BillfoldUser.email) == email.lower())
            .limit(2)
        ).all()
    if len(users) > 1:
        raise SsoRefused(f"Several Billfold accounts use {email}. Ask your administrator.")
    return users[0] if users else None


def _admit(user: BillfoldUser, identity: Identity) -> BillfoldUser:
    tenant = user.tenant
    if not user.active:
        raise SsoRefused(f"Your Billfold account ({user.email}) is deactivated. Ask your "
                         "administrator to reactivate it.")
    if tenant is not None and not tenant.is_active:
        raise SsoRefused(f"{tenant.name}'s Billfold account is suspended, so its users "
                         "cannot sign in.")
    if tenant is None:
        if identity.role is not None and identity.role != PLATFORM_ADMIN:
            raise SsoRefused(f"Your Billfold account ({user.email}) is a platform account "
                             f"without a tenant, but your groups give you the "
                             f"{identity.role} role, which belongs to a tenant. Ask your "
                             "administrator.")
    else:
        if identity.role == PLATFORM_ADMIN:
            raise SsoRefused(f"Your Billfold account belongs to {tenant.name}, and Platform "
                             "Admins belong to no tenant, so your Platform Admin group "
                             "cannot apply to it. Ask your administrator.")
        if identity.tenant_slug is not None and identity.tenant_slug != tenant.slug:
            raise SsoRefused(f"Your Billfold account belongs to {tenant.name}, but "
                             f"{identity.tenant_source} names the tenant "
                             f"'{identity.tenant_slug}'. An account never moves between "
                             "tenants; ask your administrator.")
    if identity.role is not None and user.role_names != [identity.role]:
        if tenant is not None and _last_admin(user) and identity.role != TENANT_ADMIN:
            _keep_last_admin(user, tenant, identity.role)
        else:
            _set_role(user, identity.role)
    return user


def _last_admin(user: BillfoldUser) -> bool:
    from permissions.security import own_scope
    from tenants.services import active_admin_count

    if TENANT_ADMIN not in user.role_names or user.tenant_id is None:
        return False
    with own_scope(user):
        return active_admin_count(user.tenant_id) <= 1


def _keep_last_admin(user: BillfoldUser, tenant: Tenant, role_name: str) -> None:
    """The groups would take the Tenant Admin role from the tenant's last active one: a
    tenant keeps at least one, as in user management. The role stays, the person is
    told why, and the audit log records what the provider asked for."""
    from flask import flash, has_request_context

    from permissions.security import own_scope

    with own_scope(user):
        audit.record("user.sso_role_sync_kept", user, ACTOR, tenant_id=user.tenant_id,
                     before={"roles": user.role_names},
                     after={"roles": user.role_names, "provider_role": role_name,
                            "reason": "last active Tenant Admin"})
        db.session.commit()
    if has_request_context():
        flash(f"Your groups at the sign-in provider give you the {role_name} role, but you "
              f"are the last active Tenant Admin of {tenant.name}, so you stay Tenant "
              "Admin until another user of the tenant is one.", "warning")


def _set_role(user: BillfoldUser, role_name: str) -> None:
    # The security manager imports this module, so its scope helper is imported here.
    from permissions.security import own_scope

    role = _role(role_name)
    with own_scope(user):
        before = audit.snapshot(user, USER_FIELDS)
        user.roles = [role]
        audit.record("user.sso_role_sync", user, ACTOR, tenant_id=user.tenant_id,
                     before=before, after=audit.snapshot(user, USER_FIELDS))
        db.session.commit()


def _provision(identity: Identity) -> BillfoldUser:
    email = identity.email
    if identity.role is None:
        raise SsoRefused(f"There is no Billfold account for {email}. Ask your administrator "
                         "to invite you.")
    tenant = None
    if identity.role != PLATFORM_ADMIN:
        tenant = _tenant_for_new_user(identity)
    if len(email) > USERNAME_MAX:
        raise SsoRefused(f"The email address {email} is too long for a Billfold user name.")
    with unscoped():
        taken = db.session.scalar(
            select(BillfoldUser.id).where(func.lower(BillfoldUser.username) == email.lower())
        )
    if taken:
        raise SsoRefused(f"Another Billfold account already uses the user name {email}. "
                         "Ask your administrator.")
    role = _role(identity.role)
    if tenant is not None:
        from plans.services import check_seat_available  # plans build on tenants

        try:
            with unscoped():
                check_seat_available(tenant)
        except ValidationFailed as exc:
            raise SsoRefused(f"{tenant.name} has no seat left for you: "
                             f"{'; '.join(exc.errors.values())}.") from exc
    with tenant_scope(tenant) if tenant is not None else unscoped():
        user = BillfoldUser(
            username=email,
            email=email,
            first_name=identity.first_name,
            last_name=identity.last_name,
            active=True,
            password=_unusable_password(),
            tenant_id=tenant.id if tenant is not None else None,
        )
        user.roles = [role]
        db.session.add(user)
        db.session.flush()
        audit.record("user.sso_provision", user, ACTOR, tenant_id=user.tenant_id,
                     after=audit.snapshot(user, USER_FIELDS))
        db.session.commit()
    log.info("single sign-on created %s as %s in tenant %s", email, identity.role,
             tenant.slug if tenant is not None else "-")
    return user


def _tenant_for_new_user(identity: Identity) -> Tenant:
    if identity.tenant_slug is None:
        raise SsoRefused(f"No Billfold tenant matches your account ({identity.email}): "
                         "neither your identity provider nor your email domain names one. "
                         "Ask your administrator to add you to your organisation's tenant.")
    with unscoped():
        tenant = db.session.scalar(select(Tenant).where(Tenant.slug == identity.tenant_slug))
    if tenant is None:
        raise SsoRefused(f"No Billfold tenant matches your account: "
                         f"{identity.tenant_source} names the tenant "
                         f"'{identity.tenant_slug}', which does not exist. Ask your "
                         "administrator.")
    if not tenant.is_active:
        raise SsoRefused(f"{tenant.name}'s Billfold account is suspended, so its users "
                         "cannot sign in.")
    return tenant


def _role(name: str) -> Role:
    role = db.session.scalar(select(Role).where(Role.name == name))
    if role is None:
        log.error("role %r is missing; run flask billfold sync-roles", name)
        raise SsoRefused("Billfold's roles are not set up yet. Tell your administrator.",
                         status=503)
    return role


def _unusable_password() -> str:
    # Nobody knows this password: the user signs in through the provider.
    return generate_password_hash(
        secrets.token_urlsafe(32),
        method=current_app.config.get("FAB_PASSWORD_HASH_METHOD", "scrypt"),
    )
