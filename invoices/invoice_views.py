"""The invoices pages: the list, one invoice with its lines and payments, its PDF;
for a Platform Admin also closing a period, recording a bank payment, voiding,
re-rendering the PDF and the tenant's tax rate."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation

from flask import Response, current_app, flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, expose
from flask_appbuilder.security.decorators import has_access
from flask_wtf import FlaskForm
from werkzeug.exceptions import HTTPException
from wtforms import BooleanField, SelectField, StringField
from wtforms.validators import DataRequired, Length

from invoices import auto_recharge, invoicing, usage_charges
from invoices.invoice_pdf import SERVICE_LABELS
from invoices.models import INVOICE_STATUSES, Invoice
from invoices.views import parse_amount
from permissions.matrix import RESOURCE_INVOICES
from plans.metrics import METRICS
from portal.audit import Actor
from portal.errors import NotFoundError, ValidationFailed, attach_errors
from portal.paging import date_args
from portal.tenancy import page_tenant, tenant_picker


class ClosePeriodForm(FlaskForm):
    period = StringField("Period", validators=[DataRequired(), Length(max=7)],
                         description="YYYY-MM: the month the billing period starts in")


class MarkPaidForm(FlaskForm):
    method = SelectField("Received by", choices=[("wire", "Wire transfer"), ("ach", "ACH"),
                                                 ("invoice", "Net-30 bank transfer"),
                                                 ("other", "Other")])
    reference = StringField("Bank reference", validators=[DataRequired(), Length(max=255)])
    amount = StringField("Amount", description="Leave empty for all that is due")


class VoidForm(FlaskForm):
    reason = StringField("Reason", validators=[DataRequired(), Length(max=500)])


class PrepaidForm(FlaskForm):
    prepaid = BooleanField("Charge usage to prepaid credit every day")


class TaxRateForm(FlaskForm):
    tax_rate = StringField("Tax rate (%)", validators=[DataRequired()],
                           description="Added to this tenant's next invoices, e.g. 8.25")


def _tenant_arg(tenant) -> dict:
    return {"tenant": tenant.slug} if g.user.tenant_id is None else {}


class InvoicesView(BaseView):
    route_base = "/billing/invoices"
    default_view = "index"
    class_permission_name = RESOURCE_INVOICES
    object_model = Invoice
    object_key = "number"  # invoice URLs name the invoice by its number
    method_permission_name = {"index": "read", "show": "read", "pdf": "read",
                              "close": "write", "paid": "write", "void": "write",
                              "render": "write", "tax": "write", "prepaid": "write"}

    def _is_platform(self) -> bool:
        return g.user.tenant_id is None

    @expose("/")
    @has_access
    def index(self, close_form=None, tax_form=None, status=200):
        tenant = page_tenant()
        if tenant is None:
            return tenant_picker(self, "Invoices")
        errors, statuses = [], tuple(s for s in request.args.getlist("status") if s)
        if any(s not in INVOICE_STATUSES for s in statuses):
            errors.append("unknown status")
            statuses = tuple(s for s in statuses if s in INVOICE_STATUSES)
        days = date_args(errors)
        where = invoicing.InvoiceFilter(
            statuses, days.get("from"),
            days["to"] + dt.timedelta(days=1) if "to" in days else None)
        for message in errors:
            flash(message, "danger")
        invoices, has_more = invoicing.list_invoices(tenant, where, limit=100)
        tax_form = tax_form or TaxRateForm(formdata=None, tax_rate=invoicing.tax_rate(tenant))
        account = auto_recharge.settings(tenant)
        prepaid_form = PrepaidForm(formdata=None, prepaid=bool(account and account.prepaid))
        return self.render_template(
            "invoices/invoices.html", tenant=tenant, invoices=invoices, has_more=has_more,
            statuses=INVOICE_STATUSES, shown={"status": list(statuses),
                                              "from": request.args.get("from", ""),
                                              "to": request.args.get("to", "")},
            is_platform=self._is_platform(), tenant_arg=_tenant_arg(tenant),
            close_form=close_form or ClosePeriodForm(formdata=None), tax_form=tax_form,
            prepaid_form=prepaid_form, prepaid=bool(account and account.prepaid),
        ), 400 if errors else status

    @expose("/<number>")
    @has_access
    def show(self, number, paid_form=None, void_form=None, status=200):
        tenant = page_tenant(required=True)
        invoice = invoicing.get_invoice(tenant, number)
        snapshot = invoicing.snapshot_of(invoice)
        groups: dict[str, list] = {}
        for line in invoice.lines:
            groups.setdefault(line.service, []).append(line)
        return self.render_template(
            "invoices/invoice.html", tenant=tenant, invoice=invoice, snapshot=snapshot,
            groups=groups, service_labels=SERVICE_LABELS, metrics=METRICS,
            is_platform=self._is_platform(), tenant_arg=_tenant_arg(tenant),
            paid_form=paid_form or MarkPaidForm(formdata=None),
            void_form=void_form or VoidForm(formdata=None),
        ), status

    @expose("/<number>.pdf")
    @has_access
    def pdf(self, number):
        tenant = page_tenant(required=True)
        try:
            data, filename = invoicing.invoice_pdf(tenant, number)
        except (NotFoundError, HTTPException):
            raise
        except Exception:  # noqa: BLE001 - the renderer failed: say so, keep the page
            current_app.logger.exception("PDF of invoice %s could not be rendered", number)
            flash(f"The PDF of invoice {number} could not be made just now; the failure is "
                  "logged and the PDF is made on the next try.", "danger")
            return redirect(url_for("InvoicesView.show", number=number,
                                    **_tenant_arg(tenant)))
        return Response(data, mimetype="application/pdf",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @expose("/close", methods=["POST"])
    @has_access
    def close(self):
        tenant = page_tenant(required=True)
        form = ClosePeriodForm()
        if form.validate():
            try:
                results = invoicing.close_due(period_label=form.period.data.strip(),
                                              tenant_slug=tenant.slug)
            except ValidationFailed as exc:
                attach_errors(form, exc)
            else:
                (result,) = results
                flash(f"Invoice {result.number} for {result.period} is {result.status}.",
                      "success")
                return redirect(url_for("InvoicesView.show", number=result.number,
                                        **_tenant_arg(tenant)))
        return self.index(close_form=form, status=400)

    @expose("/<number>/paid", methods=["POST"])
    @has_access
    def paid(self, number):
        tenant = page_tenant(required=True)
        invoice = invoicing.get_invoice(tenant, number)
        form = MarkPaidForm()
        if form.validate():
            try:
                amount = parse_amount(form.amount.data, invoice.currency)
            except ValueError:
                form.amount.errors = ["enter an amount such as 1200.00"]
            else:
                try:
                    invoicing.mark_paid(Actor.for_user(g.user), tenant, number,
                                        form.method.data, form.reference.data, amount)
                except ValidationFailed as exc:
                    attach_errors(form, exc, {"invoice": "reference"})
                else:
                    flash("Payment recorded.", "success")
                    return redirect(url_for("InvoicesView.show", number=number,
                                            **_tenant_arg(tenant)))
        return self.show(number, paid_form=form, status=400)

    @expose("/<number>/void", methods=["POST"])
    @has_access
    def void(self, number):
        tenant = page_tenant(required=True)
        form = VoidForm()
        if form.validate():
            try:
                invoicing.void_invoice(Actor.for_user(g.user), tenant, number, form.reason.data)
            except ValidationFailed as exc:
                attach_errors(form, exc, {"invoice": "reason"})
            else:
                flash(f"Invoice {number} is void.", "success")
                return redirect(url_for("InvoicesView.show", number=number,
                                        **_tenant_arg(tenant)))
        return self.show(number, void_form=form, status=400)

    @expose("/<number>/render", methods=["POST"])
    @has_access
    def render(self, number):
        tenant = page_tenant(required=True)
        invoice = invoicing.get_invoice(tenant, number)
        digest = invoicing.render_invoice(invoice.id, force=True)
        flash(f"PDF rendered again (SHA-256 {digest[:16]}…).", "success")
        return redirect(url_for("InvoicesView.show", number=number, **_tenant_arg(tenant)))

    @expose("/prepaid", methods=["POST"])
    @has_access
    def prepaid(self):
        tenant = page_tenant(required=True)
        form = PrepaidForm()
        if form.validate():
            usage_charges.set_prepaid(Actor.for_user(g.user), tenant, bool(form.prepaid.data))
            flash("Usage is now charged to prepaid credit every day." if form.prepaid.data
                  else "Usage is now billed on the period's invoice.", "success")
        return redirect(url_for("InvoicesView.index", **_tenant_arg(tenant)))

    @expose("/tax", methods=["POST"])
    @has_access
    def tax(self):
        tenant = page_tenant(required=True)
        form = TaxRateForm()
        if form.validate():
            try:
                rate = Decimal(form.tax_rate.data.strip().rstrip("%"))
                invoicing.set_tax_rate(Actor.for_user(g.user), tenant, rate)
            except InvalidOperation:
                form.tax_rate.errors = ["enter a percentage such as 8.25"]
            except ValidationFailed as exc:
                attach_errors(form, exc)
            else:
                flash(f"Tax rate of {tenant.name} set to {rate}%.", "success")
                return redirect(url_for("InvoicesView.index", **_tenant_arg(tenant)))
        return self.index(tax_form=form, status=400)

