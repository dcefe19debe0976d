"""Creating, listing, revoking and checking API keys.

A secret is ``bf_`` and 40 random URL-safe characters. It is shown once, when the
key is made; the database keeps its SHA-256 (a fast hash is right for a random
secret of this length) and its first characters for display. Each request looks
the key up by hash, so a revoked or expired key fails on its next request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy import select

from api.models import PLATFORM_SCOPES, SCOPES, TENANT_SCOPES, ApiKey
from portal import audit
from portal.audit import Actor
from portal.errors import NotFoundError, ValidationFailed
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped

SECRET_PREFIX = "bf_"
SHOWN_CHARS = 10  # "bf_" and 7 characters identify a key in lists
LAST_USED_GRANULARITY = dt.timedelta(minutes=1)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(raw: str | list[str] | tuple[str, ...], platform: bool) -> list[str]:
    """Scopes from a comma/space separated string or a list; checked against what a
    tenant key or a platform key may hold."""
    items = raw.replace(",", " ").split() if isinstance(raw, str) else list(raw)
    allowed = PLATFORM_SCOPES if platform else TENANT_SCOPES
    unknown = sorted({s for s in items if s not in SCOPES})
    scopes = [s for s in SCOPES if s in items]
    if unknown:
        raise ValidationFailed({"scopes": f"unknown scope(s): {', '.join(unknown)}; "
                                          f"choose from {', '.join(allowed)}"})
    refused = [s for s in scopes if s not in allowed]
    if refused:
        raise ValidationFailed({"scopes": "platform:read is for platform keys only"})
    if not scopes:
        raise ValidationFailed({"scopes": "choose at least one scope"})
    return scopes


def create_key(actor: Actor, tenant: Tenant | None, name: str, scopes, *,
               expires_at: dt.datetime | None = None) -> tuple[ApiKey, str]:
    """A new key for ``tenant`` (None: a platform key). Returns the key and its
    secret, which is not stored and cannot be shown again."""
    name = (name or "").strip()
    errors = {}
    if not name or len(name) > 100:
        errors["name"] = "name the key (at most 100 characters), e.g. the service using it"
    try:
        scope_list = parse_scopes(scopes, platform=tenant is None)
    except ValidationFailed as exc:
        errors.update(exc.errors)
        scope_list = []
    if expires_at is not None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=dt.UTC)
        if expires_at <= dt.datetime.now(dt.UTC):
            errors["expires_at"] = "the expiry must be in the future"
    if errors:
        raise ValidationFailed(errors)
    secret = SECRET_PREFIX + secrets.token_urlsafe(30)
    with _scope(tenant):
        key = ApiKey(tenant_id=tenant.id if tenant else None, name=name,
                     prefix=secret[:SHOWN_CHARS], secret_hash=hash_secret(secret),
                     scopes=" ".join(scope_list), created_by=actor.label,
                     expires_at=expires_at)
        db.session.add(key)
        db.session.flush()
        audit.record("api_key.create", key, actor, tenant_id=key.tenant_id,
                     after={"name": name, "scopes": scope_list, "prefix": key.prefix,
                            "expires_at": expires_at.isoformat() if expires_at else None})
        db.session.commit()
    return key, secret


def _scope(tenant: Tenant | None):
    """A tenant's keys are written in its scope; platform keys in the platform's."""
    return tenant_scope(tenant) if tenant is not None else unscoped()


def list_keys(tenant: Tenant | None) -> list[ApiKey]:
    """The tenant's keys, or the platform keys; newest first."""
    with unscoped():
        stmt = select(ApiKey).order_by(ApiKey.id.desc())
        stmt = stmt.where(ApiKey.tenant_id == tenant.id) if tenant else stmt.where(
            ApiKey.tenant_id.is_(None))
        return list(db.session.scalars(stmt))


def get_key(tenant: Tenant | None, key_id: int) -> ApiKey:
    with unscoped():
        key = db.session.get(ApiKey, key_id)
    if key is None or key.tenant_id != (tenant.id if tenant else None):
        raise NotFoundError("no such API key")
    return key


def revoke_key(actor: Actor, tenant: Tenant | None, key_id: int) -> ApiKey:
    key = get_key(tenant, key_id)
    if key.revoked_at is None:
        with _scope(tenant):
            key.revoked_at = dt.datetime.now(dt.UTC)
            audit.record("api_key.revoke", key, actor, tenant_id=key.tenant_id,
                         after={"prefix": key.prefix})
            db.session.commit()
    return key


class KeyRejected(Exception):
    """The bearer secret is missing, unknown, revoked or expired."""


def authenticate(secret: str | None, now: dt.datetime | None = None) -> ApiKey:
    """The active key whose secret this is; records when it was last used (at most
    once a minute, to keep reads cheap)."""
    if not secret or not secret.startswith(SECRET_PREFIX):
        raise KeyRejected("send an API key: Authorization: Bearer bf_...")
    now = now or dt.datetime.now(dt.UTC)
    with unscoped():
        key = db.session.scalar(select(ApiKey).where(ApiKey.secret_hash == hash_secret(secret)))
        if key is None:
            raise KeyRejected("unknown API key")
        status = key.status(now)
        if status != "active":
            raise KeyRejected(f"this API key is {status}")
        last = key.last_used_at
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=dt.UTC)
        if last is None or now - last >= LAST_USED_GRANULARITY:
            key.last_used_at = now
            db.session.commit()
    return key
