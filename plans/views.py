"""Usage dashboard, plan page and plan-change requests, plan catalog and the
Platform Admin's request queue."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from flask import flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, expose
from flask_appbuilder.security.decorators import has_access

from permissions.matrix import (
    RESOURCE_PLAN,
    RESOURCE_PLAN_CATALOG,
    RESOURCE_PLAN_REQUESTS,
    RESOURCE_USAGE,
)
from plans import services
from plans.forms import ChangePlanForm, DecideRequestForm, RequestPlanChangeForm, plan_terms_form
from plans.metrics import METRICS
from plans.models import Plan, PlanChangeRequest
from plans.periods import period_from_label
from plans.usage import usage_summary
from portal.audit import Actor
from portal.errors import ValidationFailed, attach_errors
from portal.money import Money
from portal.tenancy import page_tenant, tenant_picker


def _actor() -> Actor:
    return Actor.for_user(g.user)


def _custom_price_minor(text: str | None, currency: str = "USD") -> int | None:
    if not (text or "").strip():
        return None
    try:
        return Money(Decimal(text.strip().replace(",", "")), currency).to_minor()
    except (InvalidOperation, ValueError) as exc:
        raise ValidationFailed({"custom_price": "enter an amount such as 2500.00"}) from exc


class UsageView(BaseView):
    route_base = "/usage"
    default_view = "index"
    class_permission_name = RESOURCE_USAGE
    method_permission_name = {"index": "read"}

    @expose("/")
    @has_access
    def index(self):
        tenant = page_tenant()
        if tenant is None:
            return tenant_picker(self, "Usage")
        period = None
        if request.args.get("period"):
            try:
                sub = services.current_subscription(tenant)
                period = period_from_label(request.args["period"], sub.anchor_day if sub else 1)
            except ValueError as exc:
                flash(str(exc), "danger")
        summary = usage_summary(tenant, period)
        return self.render_template("plans/usage.html", summary=summary, tenant=tenant,
                                    metrics=METRICS)


class PlanView(BaseView):
    """The tenant's plan. Tenant Admins file change requests; Platform Admins change
    the plan directly; Billing Contacts have no access (DESIGN.md's matrix)."""

    route_base = "/plan"
    default_view = "index"
    class_permission_name = RESOURCE_PLAN
    method_permission_name = {"index": "read", "request_change": "request",
                              "cancel_request": "request", "change": "change"}
    object_model = PlanChangeRequest

    def _render(self, tenant, request_form=None, change_form=None, status=200):
        plans = services.list_plans()
        request_form = request_form or RequestPlanChangeForm(formdata=None)
        change_form = change_form or ChangePlanForm(formdata=None)
        request_form.set_plans(plans)
        change_form.set_plans(plans)
        sm = self.appbuilder.sm
        return self.render_template(
            "plans/plan.html", tenant=tenant, current=services.current_subscription(tenant),
            history=services.subscription_history(tenant),
            requests=services.list_requests(tenant), plans=plans, metrics=METRICS,
            request_form=request_form, change_form=change_form,
            can_request=sm.has_access("can_request", RESOURCE_PLAN) and g.user.tenant_id,
            can_change=sm.has_access("can_change", RESOURCE_PLAN),
            period=services.current_period(tenant),
        ), status

    @expose("/")
    @has_access
    def index(self):
        tenant = page_tenant()
        if tenant is None:
            return tenant_picker(self, "Plan")
        return self._render(tenant)

    @expose("/request", methods=["POST"])
    @has_access
    def request_change(self):
        tenant = page_tenant(required=True)
        form = RequestPlanChangeForm()
        form.set_plans(services.list_plans())
        if form.validate():
            try:
                services.request_plan_change(
                    _actor(), tenant, services.get_plan(int(form.plan.data)),
                    form.timing.data, form.reason.data)
            except ValidationFailed as exc:
                attach_errors(form, exc)
            else:
                flash("Your request was sent to the platform team.", "success")
                return redirect(url_for("PlanView.index"))
        return self._render(tenant, request_form=form, status=400)

    @expose("/request/<pk>/cancel", methods=["POST"])
    @has_access
    def cancel_request(self, pk):
        tenant = page_tenant(required=True)
        try:
            services.cancel_plan_change(_actor(), tenant, int(pk))
        except ValidationFailed as exc:
            flash(str(exc), "danger")
        else:
            flash("The request was withdrawn.", "info")
        return redirect(url_for("PlanView.index"))

    @expose("/change", methods=["POST"])
    @has_access
    def change(self):
        tenant = page_tenant(required=True)
        form = ChangePlanForm()
        form.set_plans(services.list_plans())
        if form.validate():
            try:
                services.change_plan(
                    _actor(), tenant, services.get_plan(int(form.plan.data)), form.timing.data,
                    custom_base_price_minor=_custom_price_minor(form.custom_price.data,
                                                                tenant.currency))
            except ValidationFailed as exc:
                attach_errors(form, exc)
            else:
                flash(f"{tenant.name}'s plan was changed.", "success")
                return redirect(url_for("PlanView.index", tenant=tenant.slug))
        return self._render(tenant, change_form=form, status=400)


class PlanRequestQueueView(BaseView):
    route_base = "/platform/plan-requests"
    default_view = "index"
    class_permission_name = RESOURCE_PLAN_REQUESTS
    method_permission_name = {"index": "read", "approve": "write", "decline": "write"}
    object_model = PlanChangeRequest

    @expose("/")
    @has_access
    def index(self):
        status = request.args.get("status", "pending")
        requests = services.list_requests(status=None if status == "all" else status)
        return self.render_template("plans/request_queue.html", requests=requests,
                                    status=status, form=DecideRequestForm(formdata=None))

    @expose("/<pk>/approve", methods=["POST"])
    @has_access
    def approve(self, pk):
        form = DecideRequestForm()
        try:
            req = services.approve_plan_change(
                _actor(), int(pk), note=form.note.data or "",
                custom_base_price_minor=_custom_price_minor(form.custom_price.data))
        except ValidationFailed as exc:
            flash("; ".join(exc.errors.values()), "danger")
        else:
            flash(f"Approved: {req.tenant.name} moves to {req.requested_plan.name}.", "success")
        return redirect(url_for("PlanRequestQueueView.index"))

    @expose("/<pk>/decline", methods=["POST"])
    @has_access
    def decline(self, pk):
        form = DecideRequestForm()
        try:
            req = services.decline_plan_change(_actor(), int(pk), form.note.data or "")
        except ValidationFailed as exc:
            flash("; ".join(exc.errors.values()), "danger")
        else:
            flash(f"Declined the request of {req.tenant.name}.", "info")
        return redirect(url_for("PlanRequestQueueView.index"))


class PlanCatalogView(BaseView):
    route_base = "/platform/plans"
    default_view = "index"
    class_permission_name = RESOURCE_PLAN_CATALOG
    method_permission_name = {"index": "read", "edit": "write"}
    object_model = Plan

    @expose("/")
    @has_access
    def index(self):
        return self.render_template("plans/catalog.html",
                                    plans=services.list_plans(active_only=False),
                                    metrics=METRICS)

    @expose("/<pk>/edit", methods=["GET", "POST"])
    @has_access
    def edit(self, pk):
        plan = services.get_plan(int(pk))
        form_class = plan_terms_form(plan.custom_priced)
        if request.method == "POST":
            form = form_class()
            if form.validate():
                try:
                    version = services.update_plan_terms(_actor(), plan, form.data)
                except ValidationFailed as exc:
                    attach_errors(form, exc)
                else:
                    flash(f"{plan.name} saved as version {version.version}.", "success")
                    return redirect(url_for("PlanCatalogView.index"))
            status = 400
        else:
            terms = services.version_terms(plan.current_version)
            form = form_class(formdata=None, data={k: "" if v is None else str(v)
                                                   for k, v in terms.items()})
            status = 200
        return self.render_template("plans/plan_edit.html", plan=plan, form=form,
                                    metrics=METRICS), status
