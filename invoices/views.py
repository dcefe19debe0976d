"""The transactions page and its CSV export; ledger corrections and grants; payment
methods, buying credit and the purchase history."""

from __future__ import annotations

import datetime as dt
import secrets
from decimal import Decimal, InvalidOperation

import stripe
from flask import (
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    request,
    stream_with_context,
    url_for,
)
from flask_appbuilder import BaseView, expose
from flask_appbuilder.security.decorators import has_access
from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length

from invoices import auto_recharge, ledger, payment_methods
from invoices.csv_export import stream_csv
from invoices.models import ENTRY_SIGNS, CreditPurchase, PaymentMethod
from permissions.matrix import RESOURCE_LEDGER_ADMIN, RESOURCE_PAYMENTS, RESOURCE_TRANSACTIONS
from plans.periods import local_range
from portal.audit import Actor
from portal.errors import ValidationFailed, attach_errors
from portal.extensions import db
from portal.formatting import local_datetime
from portal.money import Money
from portal.paging import cursor_arg, date_args
from portal.tenancy import page_tenant, tenant_picker


def _filters(tenant) -> tuple[ledger.EntryFilter, dict, list[str]]:
    """The type and date-range filters of the query string, dates in the tenant's zone."""
    errors = []
    types = tuple(t for t in request.args.getlist("type") if t)
    unknown = [t for t in types if t not in ENTRY_SIGNS]
    if unknown:
        errors.append(f"unknown type: {', '.join(unknown)}")
        types = tuple(t for t in types if t in ENTRY_SIGNS)
    days = date_args(errors)
    if "from" in days and "to" in days and days["from"] > days["to"]:
        errors.append("the range ends before it starts")
        days = {}
    start, end = local_range(days.get("from"), days.get("to"), tenant.timezone)
    shown = {"type": list(types), "from": request.args.get("from", ""),
             "to": request.args.get("to", "")}
    return ledger.EntryFilter(types, start, end), shown, errors


def _csv_export(what: str, header: list[str], rows) -> Response:
    """A streamed CSV of the page's tenant, filtered by the query string's type and
    date range; its preamble names the tenant, the time zone and the filters."""
    tenant = page_tenant(required=g.user.tenant_id is None)
    if tenant is None:
        abort(404)
    where, shown, errors = _filters(tenant)
    if errors:
        return Response("; ".join(errors) + "\n", status=400, mimetype="text/plain")
    preamble = [f"Billfold {what} of {tenant.name} ({tenant.slug})",
                f"Times and the date range are in {tenant.timezone}; "
                f"amounts in {tenant.currency}",
                f"Range: {shown['from'] or 'start'} to {shown['to'] or 'now'}; "
                f"types: {', '.join(shown['type']) or 'all'}"]
    filename = f"{what.replace(' ', '-')}-{tenant.slug}-{dt.date.today():%Y%m%d}.csv"
    return Response(stream_with_context(stream_csv(header, rows(tenant, where), preamble)),
                    mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


class TransactionsView(BaseView):
    """Every movement of the tenant's credit, newest first, 50 at a time."""

    route_base = "/billing"
    default_view = "index"
    class_permission_name = RESOURCE_TRANSACTIONS
    method_permission_name = {"index": "read", "export": "read"}

    @expose("/transactions/")
    @has_access
    def index(self):
        tenant = page_tenant()
        if tenant is None:
            return tenant_picker(self, "Transactions")
        where, shown, errors = _filters(tenant)
        for message in errors:
            flash(message, "danger")
        page = ledger.list_entries(tenant, before=cursor_arg(), where=where)
        return self.render_template(
            "invoices/transactions.html", tenant=tenant, page=page, shown=shown,
            types=list(ENTRY_SIGNS), balance=ledger.balance(tenant),
            is_platform=g.user.tenant_id is None, first_page=request.args.get("before") is None,
        ), 400 if errors else 200

    @expose("/transactions.csv")
    @has_access
    def export(self):
        def rows(tenant, where):
            for e in ledger.iter_entries(tenant, where):
                # Amounts stay Decimal: a negative number is data, not a formula.
                yield [e.id, local_datetime(e.created_at, tenant.timezone), e.type,
                       Money.from_minor(e.amount_minor, e.currency).amount, e.currency,
                       Money.from_minor(e.balance_after_minor, e.currency).amount,
                       e.description, e.source, e.ref_id or ""]

        return _csv_export("transactions", ["id", "date", "type", "amount", "currency",
                                            "balance_after", "description", "source", "ref_id"],
                           rows)


class LedgerForm(FlaskForm):
    kind = SelectField("Kind", choices=[
        ("admin_correction", "Correction (positive or negative)"),
        ("contract_grant", "Contract grant"), ("bonus_grant", "Bonus grant (contract extra)"),
        ("bonus", "Bonus (one-off promotion)")])
    amount = StringField("Amount", validators=[DataRequired()],
                         description="In the tenant's currency, e.g. 250.00 or -12.50")
    reason = TextAreaField("Reason / description", validators=[DataRequired(), Length(max=500)],
                           description="Shown to the tenant as the entry's description")


class LedgerAdminView(BaseView):
    """Platform Admin: corrections and grants to a tenant's credit."""

    route_base = "/platform/ledger"
    default_view = "index"
    class_permission_name = RESOURCE_LEDGER_ADMIN
    method_permission_name = {"index": "write"}

    @expose("/", methods=["GET", "POST"])
    @has_access
    def index(self):
        tenant = page_tenant()
        if tenant is None:
            return tenant_picker(self, "Ledger correction")
        form = LedgerForm()
        status = 200
        if request.method == "POST":
            status = 400
            if form.validate():
                try:
                    amount = Money(Decimal(form.amount.data.strip().replace(",", "")),
                                   tenant.currency).to_minor()
                except (InvalidOperation, ValueError):
                    form.amount.errors = ["enter an amount such as 250.00"]
                else:
                    try:
                        actor = Actor.for_user(g.user)
                        if form.kind.data == "admin_correction":
                            ledger.correct_balance(actor, tenant, amount, form.reason.data)
                        else:
                            ledger.grant_credit(actor, tenant, form.kind.data, amount,
                                                form.reason.data)
                    except ValidationFailed as exc:
                        attach_errors(form, exc, {"type": "kind", "description": "reason"})
                    else:
                        flash(f"Booked for {tenant.name}.", "success")
                        return redirect(url_for("TransactionsView.index", tenant=tenant.slug))
        return self.render_template("invoices/ledger_admin.html", tenant=tenant, form=form,
                                    balance=ledger.balance(tenant)), status


class BuyCreditForm(FlaskForm):
    amount = StringField("Amount", validators=[DataRequired()],
                         description="Between 5.00 and 100,000.00, paid by card through Stripe")


class BankMethodForm(FlaskForm):
    kind = SelectField("Method", choices=[("ach", "ACH bank account"),
                                          ("invoice", "Net-30 invoice (Enterprise)"),
                                          ("wire", "Wire transfer (Enterprise)")])
    routing_number = StringField("Routing number (ACH)",
                                 description="9 digits; not stored")
    account_number = StringField("Account number (ACH)",
                                 description="Only the last 4 digits are kept")


class AutoRechargeForm(FlaskForm):
    enabled = BooleanField("Recharge automatically")
    threshold = StringField("When the balance drops under",
                            description="e.g. 50.00, in the tenant's currency")
    amount = StringField("Add this much", description="Between 5.00 and 100,000.00")


class RefundForm(FlaskForm):
    amount = StringField("Amount", description="Leave empty to refund all that is left")
    reason = StringField("Reason", validators=[DataRequired(), Length(max=500)])
    request_key = HiddenField()


def parse_amount(raw: str | None, currency: str) -> int | None:
    """Minor units of a typed amount; None when empty; ValueError when unreadable."""
    text = (raw or "").strip().replace(",", "")
    if not text:
        return None
    try:
        return Money(Decimal(text), currency).to_minor()
    except (InvalidOperation, ArithmeticError) as exc:
        raise ValueError("enter an amount such as 50.00") from exc


class PaymentsView(BaseView):
    """Payment methods (cards mirrored from Stripe), adding a card and buying credit
    through Stripe Checkout, and the credit purchase history."""

    route_base = "/billing/payments"
    default_view = "index"
    class_permission_name = RESOURCE_PAYMENTS
    method_permission_name = {"index": "read", "add_card": "write", "buy_credit": "write",
                              "returned": "read", "add_bank": "write", "make_default": "write",
                              "remove_method": "write", "purchases_csv": "read",
                              "auto_recharge": "write", "refund": "refund", "receipt": "read"}
    object_model = PaymentMethod
    object_models = {"receipt": CreditPurchase, "refund": CreditPurchase}

    def _render(self, tenant, form=None, status=200, bank_form=None, recharge_form=None,
                refund_forms=None):
        from invoices import payments

        where, shown, errors = _filters(tenant)
        for message in errors:
            flash(message, "danger")
        account = auto_recharge.settings(tenant)
        if recharge_form is None:
            recharge_form = AutoRechargeForm(formdata=None, prefix="recharge")
            if account is not None and account.auto_recharge_enabled:
                recharge_form.enabled.data = True
                recharge_form.threshold.data = Money.from_minor(
                    account.auto_recharge_threshold_minor, tenant.currency).amount
                recharge_form.amount.data = Money.from_minor(
                    account.auto_recharge_amount_minor, tenant.currency).amount
        purchases = payments.list_purchases(tenant, where.start, where.end)
        refundable, refund_forms = {}, refund_forms or {}
        if self.appbuilder.sm.has_access("can_refund", self.class_permission_name):
            for p in purchases:
                left = payments.refundable_minor(tenant, p)
                if left:
                    refundable[p.id] = left
                    if p.id not in refund_forms:
                        refund_forms[p.id] = RefundForm(formdata=None, prefix=f"r{p.id}",
                                                        request_key=secrets.token_urlsafe(16))
        return self.render_template(
            "invoices/payments.html", tenant=tenant, methods=payments.list_payment_methods(tenant),
            purchases=purchases, shown=shown,
            form=form or BuyCreditForm(formdata=None),
            bank_form=bank_form or BankMethodForm(formdata=None),
            recharge_form=recharge_form, recharge_account=account,
            recharge_failure=auto_recharge.last_failure(tenant),
            refundable=refundable, refund_forms=refund_forms,
            balance=ledger.balance(tenant), is_platform=g.user.tenant_id is None,
            configured=bool(current_app.config.get("STRIPE_SECRET_KEY")),
        ), status

    @expose("/")
    @has_access
    def index(self):
        tenant = page_tenant()
        if tenant is None:
            return tenant_picker(self, "Payments")
        return self._render(tenant)

    def _checkout(self, tenant, mode, amount_minor=None):
        from invoices import payments

        back = url_for("PaymentsView.returned", _external=True,
                       tenant=tenant.slug if g.user.tenant_id is None else None)
        try:
            start = payments.start_checkout(
                tenant, Actor.for_user(g.user), mode=mode, amount_minor=amount_minor,
                success_url=back + ("&" if "?" in back else "?") + "session={CHECKOUT_SESSION_ID}",
                cancel_url=back + ("&" if "?" in back else "?") + "cancelled=1")
        except payments.PaymentsNotConfigured as exc:
            flash(str(exc), "danger")
            return redirect(url_for("PaymentsView.index"))
        except stripe.StripeError as exc:
            # Stripe failed or did not answer, after the client's own retries: no
            # checkout page reached the user, so nothing can have been paid.
            current_app.logger.warning("checkout (%s) for %s not started: %r", mode,
                                       tenant.slug, exc)
            db.session.rollback()
            what = ("did not answer in time" if isinstance(exc, stripe.APIConnectionError)
                    else "answered with an error")
            flash(f"Stripe {what}, so the checkout did not start and nothing was charged. "
                  "Please try again in a few minutes.", "danger")
            return self._back(tenant)
        return redirect(start.url, code=303)

    @expose("/add-card", methods=["POST"])
    @has_access
    def add_card(self):
        return self._checkout(page_tenant(required=True), "setup")

    @expose("/buy-credit", methods=["POST"])
    @has_access
    def buy_credit(self):
        tenant = page_tenant(required=True)
        form = BuyCreditForm()
        if form.validate():
            try:
                amount = Money(Decimal(form.amount.data.strip().replace(",", "")),
                               tenant.currency).to_minor()
                return self._checkout(tenant, "payment", amount)
            except ValidationFailed as exc:  # before ValueError, which it extends
                form.amount.errors = list(exc.errors.values())
            except (InvalidOperation, ValueError):
                form.amount.errors = ["enter an amount such as 100.00"]
        return self._render(tenant, form, 400)

    @expose("/purchases.csv")
    @has_access
    def purchases_csv(self):
        from invoices import payments

        def rows(tenant, where):
            for p in payments.list_purchases(tenant, where.start, where.end):
                yield [p.id, local_datetime(p.created_at, tenant.timezone), p.kind,
                       p.payment_method_label or "",
                       Money.from_minor(p.amount_minor, p.currency).amount, p.currency,
                       p.status, p.receipt_url or "", p.failure_message or ""]

        return _csv_export("credit purchases", ["id", "date", "type", "payment_method",
                                                "amount", "currency", "status", "receipt_url",
                                                "failure"], rows)

    @expose("/auto-recharge", methods=["POST"])
    @has_access
    def auto_recharge(self):
        tenant = page_tenant(required=True)
        form = AutoRechargeForm(prefix="recharge")
        if form.validate():
            try:
                threshold = parse_amount(form.threshold.data, tenant.currency)
                amount = parse_amount(form.amount.data, tenant.currency)
            except ValueError as exc:
                form.threshold.errors = [str(exc)]
            else:
                try:
                    auto_recharge.configure(Actor.for_user(g.user), tenant,
                                            enabled=bool(form.enabled.data),
                                            threshold_minor=threshold, amount_minor=amount)
                except ValidationFailed as exc:
                    attach_errors(form, exc)
                else:
                    flash("Auto-recharge " + ("on." if form.enabled.data else "off."), "success")
                    return self._back(tenant)
        return self._render(tenant, recharge_form=form, status=400)

    @expose("/purchases/<pk>/refund", methods=["POST"])
    @has_access
    def refund(self, pk):
        from invoices import payments

        tenant = page_tenant(required=True)
        purchase = payments.get_purchase(tenant, int(pk))
        form = RefundForm(prefix=f"r{purchase.id}")
        if form.validate():
            try:
                amount = parse_amount(form.amount.data, tenant.currency)
                payments.refund_purchase(Actor.for_user(g.user), tenant, purchase.id, amount,
                                         form.reason.data, form.request_key.data or "")
            except ValueError as exc:
                if isinstance(exc, ValidationFailed):
                    attach_errors(form, exc, {"purchase": "amount"})
                else:
                    form.amount.errors = [str(exc)]
            except stripe.StripeError as exc:
                form.amount.errors = [f"Stripe refused the refund: {exc.user_message or exc}"]
            else:
                flash("Refund issued through Stripe.", "success")
                return self._back(tenant)
        return self._render(tenant, refund_forms={purchase.id: form}, status=400)

    @expose("/purchases/<pk>/receipt.pdf")
    @has_access
    def receipt(self, pk):
        from invoices import payments
        from invoices.receipts import receipt_filename, receipt_pdf

        tenant = page_tenant(required=True)
        purchase = payments.get_purchase(tenant, int(pk))
        return Response(receipt_pdf(tenant, purchase), mimetype="application/pdf", headers={
            "Content-Disposition": f'attachment; filename="{receipt_filename(tenant, purchase)}"'})

    def _back(self, tenant):
        return redirect(url_for("PaymentsView.index",
                                tenant=tenant.slug if g.user.tenant_id is None else None))

    @expose("/methods/add", methods=["POST"])
    @has_access
    def add_bank(self):
        tenant = page_tenant(required=True)
        form = BankMethodForm()
        if form.validate():
            try:
                payment_methods.add_bank_method(Actor.for_user(g.user), tenant, form.kind.data,
                                                form.data)
            except ValidationFailed as exc:
                attach_errors(form, exc)
            else:
                flash("Payment method added.", "success")
                return self._back(tenant)
        return self._render(tenant, bank_form=form, status=400)

    @expose("/methods/<pk>/default", methods=["POST"])
    @has_access
    def make_default(self, pk):
        tenant = page_tenant(required=True)
        payment_methods.set_default(Actor.for_user(g.user), tenant, int(pk))
        flash("Default payment method changed.", "success")
        return self._back(tenant)

    @expose("/methods/<pk>/remove", methods=["POST"])
    @has_access
    def remove_method(self, pk):
        tenant = page_tenant(required=True)
        try:
            payment_methods.remove(Actor.for_user(g.user), tenant, int(pk))
        except ValidationFailed as exc:
            flash("; ".join(exc.errors.values()), "danger")
        else:
            flash("Payment method removed.", "success")
        return self._back(tenant)

    @expose("/returned")
    @has_access
    def returned(self):
        if request.args.get("cancelled"):
            flash("Checkout was cancelled; nothing was charged.", "info")
        else:
            flash("Thank you. Stripe confirms the payment to Billfold in a moment; "
                  "the credit and card appear here once it has.", "success")
        return redirect(url_for("PaymentsView.index", tenant=request.args.get("tenant")))
