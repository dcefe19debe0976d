"""Which tenant a page is about. Tenant users always get their own tenant (from
their login, never from the URL); a Platform Admin names one with ``?tenant=slug``."""

from __future__ import annotations

from flask import abort, g, request
from sqlalchemy import select

from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import current_scope


def page_tenant(required: bool = False) -> Tenant | None:
    """The tenant the current page shows. For a Platform Admin without ``?tenant=``
    it is None (the page offers a choice) unless ``required``; an unknown slug is 404."""
    user = g.user
    if user.tenant_id is not None:
        return user.tenant
    if not current_scope().is_all:
        abort(404)
    slug = request.values.get("tenant", "").strip()
    if not slug:
        if required:
            abort(404)
        return None
    tenant = db.session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        abort(404)
    return tenant


def all_tenants() -> list[Tenant]:
    """Every tenant, for a Platform Admin's tenant picker."""
    return list(db.session.scalars(select(Tenant).order_by(Tenant.name)))


def tenant_picker(view, title: str):
    """The page a Platform Admin sees before choosing which tenant ``view`` shows."""
    return view.render_template("plans/pick_tenant.html", tenants=all_tenants(), title=title)
