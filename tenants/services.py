"""Tenant and tenant-user operations. Each validates, writes, audits and commits."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from babel.numbers import list_currencies
from email_validator import EmailNotValidError, validate_email
from flask import current_app
from flask_appbuilder.security.sqla.models import Role
from sqlalchemy import func, select
from sqlalchemy.orm import joinedload
from werkzeug.security import generate_password_hash

from permissions.matrix import PLATFORM_ADMIN, TENANT_ROLES
from portal import audit
from portal.audit import Actor
from portal.errors import NotFoundError, ValidationFailed
from portal.extensions import db
from tenants.models import BillfoldUser, Tenant, TenantStatus
from tenants.scoping import tenant_scope, unscoped

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
TENANT_FIELDS = ["name", "slug", "currency", "timezone", "billing_email", "status"]
USER_FIELDS = ["username", "email", "first_name", "last_name", "active", "tenant_id", "role_names"]
MIN_PASSWORD_LENGTH = 10


# -- validation rules, shared by forms, the CLI and the API ------------------------

def check_slug(slug: str) -> str:
    """A slug is 1-63 lowercase letters, digits and inner hyphens."""
    slug = (slug or "").strip()
    if not SLUG_RE.match(slug):
        raise ValueError("use 1-63 lowercase letters, digits and hyphens, not at either end")
    return slug


def check_currency(code: str) -> str:
    """An ISO 4217 currency code that Babel knows."""
    code = (code or "").strip().upper()
    if code not in list_currencies():
        raise ValueError(f"unknown ISO 4217 currency code {code!r}")
    return code


def check_timezone(name: str) -> str:
    """An IANA time zone name such as Europe/Berlin."""
    name = (name or "").strip()
    if name not in available_timezones():
        raise ValueError(f"unknown time zone {name!r}; use an IANA name like Europe/Berlin")
    try:
        ZoneInfo(name)
    except ZoneInfoNotFoundError as exc:  # pragma: no cover - listed but not loadable
        raise ValueError(f"unknown time zone {name!r}") from exc
    return name


def check_email(address: str) -> str:
    try:
        return validate_email((address or "").strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc


def _collect(checks: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """Run each ``field: (check, value)``; raise ValidationFailed listing every failure."""
    clean, errors = {}, {}
    for field, (check, value) in checks.items():
        try:
            clean[field] = check(value)
        except ValueError as exc:
            errors[field] = str(exc)
    if errors:
        raise ValidationFailed(errors)
    return clean


def _required(label: str):
    def check(value: Any) -> str:
        value = (value or "").strip()
        if not value:
            raise ValueError(f"{label} is required")
        return value

    return check


# -- tenants ---------------------------------------------------------------------

def create_tenant(actor: Actor, data: dict[str, Any]) -> Tenant:
    """Create a tenant. Refuses a malformed or taken slug, an unknown currency or
    time zone, and a malformed billing email."""
    clean = _collect(
        {
            "name": (_required("name"), data.get("name")),
            "slug": (check_slug, data.get("slug")),
            "currency": (check_currency, data.get("currency") or "USD"),
            "timezone": (check_timezone, data.get("timezone") or "UTC"),
            "billing_email": (check_email, data.get("billing_email")),
        }
    )
    with unscoped():
        if db.session.scalar(select(Tenant.id).where(Tenant.slug == clean["slug"])):
            raise ValidationFailed({"slug": f"the slug {clean['slug']!r} is taken"})
        tenant = Tenant(status=TenantStatus.ACTIVE.value, **clean)
        db.session.add(tenant)
        db.session.flush()
        audit.record("tenant.create", tenant, actor, tenant_id=tenant.id,
                     after=audit.snapshot(tenant, TENANT_FIELDS))
        with tenant_scope(tenant.id):
            from plans.alerts import add_default_rules

            add_default_rules(tenant.id)
            db.session.flush()
        db.session.commit()
    return tenant


def update_tenant(actor: Actor, tenant: Tenant, data: dict[str, Any]) -> Tenant:
    """Change a tenant's name, currency, time zone or billing email (the slug is fixed,
    since it names the tenant in URLs, API keys and Stripe)."""
    clean = _collect(
        {
            "name": (_required("name"), data.get("name", tenant.name)),
            "currency": (check_currency, data.get("currency", tenant.currency)),
            "timezone": (check_timezone, data.get("timezone", tenant.timezone)),
            "billing_email": (check_email, data.get("billing_email", tenant.billing_email)),
        }
    )
    if "slug" in data and data["slug"] != tenant.slug:
        raise ValidationFailed({"slug": "the slug of an existing tenant cannot change"})
    with unscoped():
        before = audit.snapshot(tenant, TENANT_FIELDS)
        for key, value in clean.items():
            setattr(tenant, key, value)
        audit.record("tenant.update", tenant, actor, tenant_id=tenant.id, before=before,
                     after=audit.snapshot(tenant, TENANT_FIELDS))
        db.session.commit()
    return tenant


def set_tenant_status(actor: Actor, tenant: Tenant, status: str) -> Tenant:
    """Suspend or reactivate a tenant. A suspended tenant's users cannot log in and
    their open sessions end at the next request."""
    if status not in {s.value for s in TenantStatus}:
        raise ValidationFailed({"status": f"unknown status {status!r}"})
    if tenant.status == status:
        return tenant
    with unscoped():
        before = audit.snapshot(tenant, TENANT_FIELDS)
        tenant.status = status
        tenant.suspended_at = (
            dt.datetime.now(dt.UTC) if status == TenantStatus.SUSPENDED.value else None
        )
        audit.record(f"tenant.{'suspend' if status == 'suspended' else 'reactivate'}",
                     tenant, actor, tenant_id=tenant.id, before=before,
                     after=audit.snapshot(tenant, TENANT_FIELDS))
        db.session.commit()
    return tenant


def lock_tenant(tenant_id: int) -> None:
    """Hold the tenant's row until the transaction ends, so writers of one tenant's
    balance or usage take turns (a row lock on PostgreSQL; SQLite has one writer at
    a time, and any write takes its lock)."""
    # A plain statement on the session's connection: it needs none of the ORM's tenant
    # criteria, and hot paths (a batch of usage events) take this lock every time.
    connection = db.session.connection()
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SELECT id FROM tenant WHERE id = %(id)s FOR UPDATE",
                                   {"id": tenant_id})
    else:
        connection.exec_driver_sql("UPDATE tenant SET status = status WHERE id = ?",
                                   (tenant_id,))


def get_tenant_by_slug(slug: str) -> Tenant:
    with unscoped():
        tenant = db.session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise NotFoundError(f"no tenant {slug!r}")
    return tenant


# -- users -------------------------------------------------------------------------

def _role(name: str) -> Role:
    role = db.session.scalar(select(Role).where(Role.name == name))
    if role is None:
        raise ValidationFailed({"role": f"role {name!r} does not exist; run flask billfold init"})
    return role


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _hash_password(password: str) -> str:
    return generate_password_hash(
        password, method=current_app.config.get("FAB_PASSWORD_HASH_METHOD", "scrypt")
    )


def _unusable_password() -> str:
    return _hash_password(secrets.token_urlsafe(32))


def invite_user(
    actor: Actor,
    tenant: Tenant | None,
    data: dict[str, Any],
    *,
    ttl_hours: int | None = None,
) -> tuple[BillfoldUser, str]:
    """Invite a user into ``tenant`` (or, with no tenant, a Platform Admin).

    Tenant users get Tenant Admin or Billing Contact, never Platform Admin; a user
    without a tenant must be a Platform Admin. Refuses a taken email or username.
    Returns the user and the one-time invitation token (only its hash is stored).
    """
    role_name = data.get("role") or ""
    allowed = TENANT_ROLES if tenant is not None else (PLATFORM_ADMIN,)
    clean = _collect(
        {
            "email": (check_email, data.get("email")),
            "first_name": (_required("first name"), data.get("first_name")),
            "last_name": (_required("last name"), data.get("last_name")),
            "role": (lambda v: _allowed_role(v, allowed), role_name),
        }
    )
    username = (data.get("username") or clean["email"]).strip()
    ttl_hours = ttl_hours or int(current_app.config.get("INVITATION_TTL_HOURS", 72))
    with unscoped():
        taken = db.session.scalar(
            select(func.count(BillfoldUser.id)).where(
                (func.lower(BillfoldUser.email) == clean["email"].lower())
                | (func.lower(BillfoldUser.username) == username.lower())
            )
        )
        if taken:
            raise ValidationFailed({"email": "a user with this email or username exists"})
        if tenant is not None:
            from plans.services import check_seat_available  # plans build on tenants

            check_seat_available(tenant)
        token = secrets.token_urlsafe(32)
        user = BillfoldUser(
            username=username,
            email=clean["email"],
            first_name=clean["first_name"],
            last_name=clean["last_name"],
            active=True,
            password=_unusable_password(),
            tenant_id=tenant.id if tenant is not None else None,
            invitation_token_hash=_hash_token(token),
            invitation_expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=ttl_hours),
        )
        user.roles = [_role(clean["role"])]
        db.session.add(user)
        db.session.flush()
        audit.record("user.invite", user, actor, tenant_id=user.tenant_id,
                     after=_user_snapshot(user))
        db.session.commit()
    return user, token


def _allowed_role(name: str, allowed: tuple[str, ...]) -> str:
    if name not in allowed:
        raise ValueError(f"choose one of: {', '.join(allowed)}")
    return name


def _user_snapshot(user: BillfoldUser) -> dict[str, Any]:
    return audit.snapshot(user, USER_FIELDS)


def create_user(actor: Actor, tenant: Tenant | None, data: dict[str, Any], password: str
                ) -> BillfoldUser:
    """Create a user who can log in at once (the CLI and demo data); same rules as
    ``invite_user``."""
    user, token = invite_user(actor, tenant, data)
    accept_invitation(token, password)
    return user


def find_invitation(token: str) -> BillfoldUser:
    """The user invited with ``token``; refuses an unknown, used or expired token."""
    with unscoped():
        user = db.session.scalar(
            select(BillfoldUser)
            .options(joinedload(BillfoldUser.tenant))  # shown on the public page
            .where(BillfoldUser.invitation_token_hash == _hash_token(token))
        )
    if user is None:
        raise NotFoundError("unknown or used invitation")
    expires = user.invitation_expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.UTC)
    if expires is not None and expires < dt.datetime.now(dt.UTC):
        raise ValidationFailed({"token": "this invitation has expired; ask for a new one"})
    return user


def accept_invitation(token: str, password: str) -> BillfoldUser:
    """Set the invited user's password and consume the invitation."""
    user = find_invitation(token)
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(
            {"password": f"use at least {MIN_PASSWORD_LENGTH} characters"}
        )
    with unscoped():
        user.password = _hash_password(password)
        user.invitation_token_hash = None
        user.invitation_expires_at = None
        audit.record("user.accept_invitation", user, Actor.for_user(user),
                     tenant_id=user.tenant_id)
        db.session.commit()
    return user


def update_tenant_user(actor: Actor, user: BillfoldUser, data: dict[str, Any]) -> BillfoldUser:
    """Change a tenant user's name, role (Tenant Admin or Billing Contact) or active
    flag. Refuses to leave a tenant without an active Tenant Admin."""
    if user.tenant_id is None:
        raise NotFoundError("not a tenant user")
    clean = _collect(
        {
            "first_name": (_required("first name"), data.get("first_name", user.first_name)),
            "last_name": (_required("last name"), data.get("last_name", user.last_name)),
            "role": (lambda v: _allowed_role(v, TENANT_ROLES),
                     data.get("role", (user.role_names or [""])[0])),
        }
    )
    active = bool(data.get("active", user.active))
    before = _user_snapshot(user)
    losing_admin = "Tenant Admin" in user.role_names and (
        clean["role"] != "Tenant Admin" or not active
    )
    if losing_admin and active_admin_count(user.tenant_id) <= 1:
        raise ValidationFailed({"role": "a tenant keeps at least one active Tenant Admin"})
    user.first_name = clean["first_name"]
    user.last_name = clean["last_name"]
    user.active = active
    user.roles = [_role(clean["role"])]
    audit.record("user.update", user, actor, tenant_id=user.tenant_id, before=before,
                 after=_user_snapshot(user))
    db.session.commit()
    return user


def active_admin_count(tenant_id: int) -> int:
    """How many active Tenant Admins the tenant has."""
    return db.session.scalar(
        select(func.count(BillfoldUser.id))
        .join(BillfoldUser.roles)
        .where(BillfoldUser.tenant_id == tenant_id, BillfoldUser.active.is_(True),
               Role.name == "Tenant Admin")
    ) or 0
