"""The dashboard (home page) and the audit log."""

from __future__ import annotations

from flask import abort, g, redirect
from flask_appbuilder import IndexView, expose
from flask_appbuilder.models.sqla.interface import SQLAInterface
from sqlalchemy import func, select

from permissions.matrix import CAN_READ, RESOURCE_AUDIT_LOG, RESOURCE_DASHBOARD
from plans.usage import usage_summary
from portal.audit import AuditEvent
from portal.extensions import db
from portal.modelviews import BillfoldModelView
from tenants.models import BillfoldUser, Tenant


class HomeView(IndexView):
    """The landing page: a Platform Admin sees the platform, a tenant user their tenant."""

    route_base = ""
    default_view = "index"
    class_permission_name = RESOURCE_DASHBOARD
    method_permission_name = {"index": "read"}
    base_permissions = [CAN_READ]

    @expose("/")
    def index(self):
        if not g.user or not g.user.is_authenticated:
            return redirect(self.appbuilder.get_url_for_login)
        if not self.appbuilder.sm.has_access(CAN_READ, RESOURCE_DASHBOARD):
            abort(403)
        recent = db.session.scalars(
            select(AuditEvent).order_by(AuditEvent.id.desc()).limit(10)
        ).all()
        tenant = g.user.tenant
        if tenant is None:
            counts = {status: count for status, count in db.session.execute(
                select(Tenant.status, func.count()).group_by(Tenant.status))}
            context = {
                "tenant": None,
                "active_tenants": counts.get("active", 0),
                "suspended_tenants": counts.get("suspended", 0),
                "user_count": db.session.scalar(select(func.count(BillfoldUser.id))),
            }
        else:
            context = {
                "tenant": tenant,
                "user_count": db.session.scalar(select(func.count(BillfoldUser.id))),
                "summary": usage_summary(tenant),
            }
        return self.render_template(
            "billfold/home.html", recent=recent, show_audit=self._can_see_audit(), **context
        )

    def _can_see_audit(self) -> bool:
        return self.appbuilder.sm.has_access(CAN_READ, RESOURCE_AUDIT_LOG)


class AuditLogView(BillfoldModelView):
    """Who changed what, when. Tenant Admins see their tenant's rows (the ORM scope
    filters them); Platform Admins see every row and the tenant column."""

    datamodel = SQLAInterface(AuditEvent)
    route_base = "/audit"
    class_permission_name = RESOURCE_AUDIT_LOG
    method_permission_name = {"list": "read", "show": "read"}
    base_permissions = [CAN_READ]
    list_title = "Audit log"
    show_title = "Audit event"
    list_columns = ["created_at", "tenant", "actor_label", "action", "object_type", "object_id",
                    "changes"]
    show_columns = ["created_at", "tenant", "actor_kind", "actor_label", "action", "object_type",
                    "object_id", "before", "after", "request_id"]
    search_columns = ["tenant", "action", "actor_label", "object_type", "created_at"]
    label_columns = {"created_at": "Time", "actor_label": "Actor", "object_type": "Object",
                     "object_id": "Object id", "request_id": "Request id"}
    base_order = ("id", "desc")
    page_size = 50
