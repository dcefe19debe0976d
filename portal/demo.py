"""Demo data: three tenants and their logins. Idempotent: running it again adds
only what is missing. The password is for demonstrations only."""

from __future__ import annotations

from sqlalchemy import select

from permissions.matrix import BILLING_CONTACT, PLATFORM_ADMIN, TENANT_ADMIN
from portal.audit import Actor
from portal.extensions import db
from tenants import services
from tenants.models import BillfoldUser, Tenant
from tenants.scoping import unscoped

DEMO_PASSWORD = "billfold-demo"
DEMO_ACTOR = Actor.system("demo")

DEMO_TENANTS = (
    {"slug": "acme", "name": "Acme Corp", "currency": "USD", "timezone": "America/New_York",
     "billing_email": "billing@acme.example"},
    {"slug": "globex", "name": "Globex", "currency": "USD", "timezone": "Europe/London",
     "billing_email": "accounts@globex.example"},
    {"slug": "initech", "name": "Initech", "currency": "USD", "timezone": "America/Chicago",
     "billing_email": "finance@initech.example"},
)


def _ensure_user(username: str, tenant: Tenant | None, role: str, first: str, last: str,
                 email: str, lines: list[str]) -> None:
    if db.session.scalar(select(BillfoldUser.id).where(BillfoldUser.username == username)):
        return
    services.create_user(
        DEMO_ACTOR, tenant,
        {"username": username, "email": email, "first_name": first, "last_name": last,
         "role": role},
        DEMO_PASSWORD,
    )
    lines.append(f"user {username} ({role}{', ' + tenant.slug if tenant else ''})")


def load_demo() -> list[str]:
    """Create what is missing of the demo; returns a line per object created."""
    lines: list[str] = []
    with unscoped():
        _ensure_user("platform", None, PLATFORM_ADMIN, "Pat", "Operator",
                     "platform@billfold.example", lines)
        for spec in DEMO_TENANTS:
            tenant = db.session.scalar(select(Tenant).where(Tenant.slug == spec["slug"]))
            if tenant is None:
                tenant = services.create_tenant(DEMO_ACTOR, spec)
                lines.append(f"tenant {tenant.slug}")
            domain = spec["billing_email"].split("@")[1]
            _ensure_user(f"{tenant.slug}-admin", tenant, TENANT_ADMIN, "Alex",
                         f"{tenant.name} Admin", f"admin@{domain}", lines)
            _ensure_user(f"{tenant.slug}-billing", tenant, BILLING_CONTACT, "Bailey",
                         f"{tenant.name} Billing", f"billing-contact@{domain}", lines)
    return lines or ["demo data already present"]
