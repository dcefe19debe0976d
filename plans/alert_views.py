"""Budget alert rules and the alert history with each delivery's fate."""

from __future__ import annotations

from contextlib import nullcontext

from flask import flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, expose
from flask_appbuilder.security.decorators import has_access

from permissions.matrix import RESOURCE_ALERTS
from plans import alerts
from plans.forms import AlertRuleForm
from plans.metrics import METRICS
from plans.models import AlertRule
from plans.periods import local_range
from portal.audit import Actor
from portal.errors import NotFoundError, ValidationFailed, attach_errors
from portal.extensions import db
from portal.money import Money
from portal.notifications import Delivery, retry_now
from portal.paging import INT32_MAX, cursor_arg, date_args
from portal.tenancy import page_tenant, tenant_picker
from tenants.scoping import tenant_scope


def _tenant_arg(tenant) -> dict:
    return {"tenant": tenant.slug} if g.user.tenant_id is None else {}


def _owned(model, pk):
    """The row ``pk`` of ``model`` and its tenant: the page's tenant for tenant users
    (another tenant's row is not found); a Platform Admin may leave the tenant out."""
    tenant = page_tenant()
    with tenant_scope(tenant) if tenant is not None else nullcontext():
        row = db.session.get(model, int(pk))
    if row is None or (tenant is not None and row.tenant_id != tenant.id):
        raise NotFoundError(f"{model.__name__} {pk}")
    return row, tenant or row.tenant


def _form_from_rule(rule: AlertRule, currency: str) -> AlertRuleForm:
    form = AlertRuleForm(formdata=None, prefix="rule")
    form.name.data = rule.name
    form.kind.data = rule.kind
    form.metric.data = rule.metric or ""
    if rule.threshold is not None:
        form.threshold.data = f"{rule.threshold.normalize():f}"
    if rule.amount_minor is not None:
        form.amount.data = str(Money.from_minor(rule.amount_minor, currency).amount)
    form.channels.data = rule.channel_list
    form.email_to.data = rule.email_to
    form.sms_to.data = rule.sms_to
    form.enabled.data = rule.enabled
    return form


class AlertsView(BaseView):
    """Every role may set its tenant's alerts (DESIGN.md's matrix); a Platform Admin
    chooses the tenant and sees the history of all."""

    route_base = "/billing/alerts"
    default_view = "index"
    class_permission_name = RESOURCE_ALERTS
    method_permission_name = {"index": "read", "history": "read", "add": "write",
                              "edit": "write", "toggle": "write", "delete": "write",
                              "retry": "write"}
    object_model = AlertRule
    object_models = {"retry": Delivery}

    def _render(self, tenant, form=None, status=200):
        rules = alerts.list_rules(tenant)
        last = alerts.last_fired(tenant)
        return self.render_template(
            "plans/alerts.html", tenant=tenant, rules=rules, last=last,
            form=form or AlertRuleForm(formdata=None, prefix="rule"),
            describe=alerts.describe, kinds=alerts.KIND_LABELS,
            channel_labels=alerts.CHANNEL_LABELS, tenant_arg=_tenant_arg(tenant),
            title=f"Budget alerts · {tenant.name}"), status

    @expose("/")
    @has_access
    def index(self):
        tenant = page_tenant()
        if tenant is None:
            return tenant_picker(self, "Budget alerts")
        return self._render(tenant)

    @expose("/add", methods=["POST"])
    @has_access
    def add(self):
        tenant = page_tenant(required=True)
        form = AlertRuleForm(prefix="rule")
        if form.validate():
            try:
                rule = alerts.create_rule(Actor.for_user(g.user), tenant,
                                          form.data_for_service())
            except ValidationFailed as exc:
                attach_errors(form, exc)
            else:
                flash(f"Alert rule “{rule.name}” added.", "success")
                return redirect(url_for("AlertsView.index", **_tenant_arg(tenant)))
        return self._render(tenant, form, 400)

    @expose("/<pk>/edit", methods=["GET", "POST"])
    @has_access
    def edit(self, pk):
        rule, tenant = _owned(AlertRule, pk)
        if request.method == "GET":
            form = _form_from_rule(rule, tenant.currency)
            return self._render_edit(tenant, rule, form)
        form = AlertRuleForm(prefix="rule")
        if rule.system_key:
            form.kind.data = rule.kind
        if form.validate():
            try:
                alerts.update_rule(Actor.for_user(g.user), tenant, rule.id,
                                   form.data_for_service())
            except ValidationFailed as exc:
                attach_errors(form, exc)
            else:
                flash(f"Alert rule “{form.name.data}” saved.", "success")
                return redirect(url_for("AlertsView.index", **_tenant_arg(tenant)))
        return self._render_edit(tenant, rule, form, 400)

    def _render_edit(self, tenant, rule, form, status=200):
        return self.render_template(
            "plans/alert_edit.html", tenant=tenant, rule=rule, form=form,
            tenant_arg=_tenant_arg(tenant),
            title=f"Edit alert rule · {tenant.name}"), status

    @expose("/<pk>/toggle", methods=["POST"])
    @has_access
    def toggle(self, pk):
        rule, tenant = _owned(AlertRule, pk)
        rule = alerts.set_enabled(Actor.for_user(g.user), tenant, rule.id, not rule.enabled)
        flash(f"Alert rule “{rule.name}” {'on' if rule.enabled else 'off'}.", "success")
        return redirect(url_for("AlertsView.index", **_tenant_arg(tenant)))

    @expose("/<pk>/delete", methods=["POST"])
    @has_access
    def delete(self, pk):
        rule, tenant = _owned(AlertRule, pk)
        try:
            alerts.delete_rule(Actor.for_user(g.user), tenant, rule.id)
        except ValidationFailed as exc:
            for message in exc.errors.values():
                flash(message, "danger")
            return self._render(tenant, status=400)
        flash("Alert rule deleted.", "success")
        return redirect(url_for("AlertsView.index", **_tenant_arg(tenant)))

    @expose("/history")
    @has_access
    def history(self):
        tenant = page_tenant()
        zone = tenant.timezone if tenant else "UTC"
        errors: list[str] = []
        days = date_args(errors)
        for message in errors:
            flash(message, "danger")
        start, end = local_range(days.get("from"), days.get("to"), zone)
        before = cursor_arg(INT32_MAX)
        rows = alerts.list_alerts(tenant, start=start, end=end, before=before, limit=101)
        has_more = len(rows) > 100
        rows = rows[:100]
        return self.render_template(
            "plans/alert_history.html", tenant=tenant, alerts=rows, has_more=has_more,
            next_before=rows[-1].id if has_more else None, days=days, zone=zone,
            page_args={**(_tenant_arg(tenant) if tenant else {}),
                       **{k: v.isoformat() for k, v in days.items()}},
            metrics=METRICS, title="Alert history" + (f" · {tenant.name}" if tenant else "")
        ), 400 if errors else 200

    @expose("/deliveries/<pk>/retry", methods=["POST"])
    @has_access
    def retry(self, pk):
        row, tenant = _owned(Delivery, pk)
        if row.status not in ("failed", "retrying", "pending"):
            flash(f"That {row.channel} was {row.status}; nothing to retry.", "info")
            return redirect(url_for("AlertsView.history", **_tenant_arg(tenant)))
        status = retry_now(int(pk))
        level = "success" if status == "sent" else "warning"
        flash(f"Retried the {row.channel} to {row.recipient}: {status}.", level)
        return redirect(url_for("AlertsView.history", **_tenant_arg(tenant)))
