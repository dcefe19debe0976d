"""Invoices: period close, numbering, settlement, states and the stored PDF.

``close_period`` rates a tenant's ended period and issues its invoice in one
transaction: lines, a number taken under a lock, the snapshot of customer and plan,
and the prepaid credit applied (a ledger debit). Running it again finds the invoice
(one per tenant and period, backed by a unique constraint) and only finishes what a
killed run left undone: the card charge and the PDF, each an idempotent job.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from flask import current_app
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, UOWTransaction

from invoices import ledger, usage_charges
from invoices.models import (
    BillingAccount,
    Invoice,
    InvoiceLine,
    InvoiceNumberSequence,
    InvoicePayment,
    PaymentMethod,
)
from invoices.rating import Rating, rate_period
from plans.metrics import METRICS
from plans.models import Subscription
from plans.periods import Period, local_day, period_containing, period_from_label
from plans.services import lock_plan_version
from portal import audit, jobs, observability
from portal.audit import Actor
from portal.errors import NotFoundError, ValidationFailed
from portal.extensions import db
from portal.pdf import sha256_hex
from tenants.models import Tenant, TenantStatus
from tenants.scoping import tenant_scope, unscoped
from tenants.services import lock_tenant

NUMBER_PREFIX = "BF"
NET_DAYS = {"invoice": 30, "wire": 30}
SYSTEM = Actor.system("period_close")
PAYMENT_PURPOSE = "invoice"
# Columns that never change once an invoice is issued.
FROZEN = ("number", "period_start", "period_end", "currency", "subtotal_minor", "tax_rate",
          "tax_minor", "total_minor", "payment_terms", "issued_at", "due_date", "snapshot")
TRANSITIONS = {"draft": {"pending", "void"}, "pending": {"paid", "overdue", "void"},
               "overdue": {"paid", "void"}, "paid": set(), "void": set()}


class InvoiceImmutable(RuntimeError):
    """Something tried to change an issued invoice or its lines."""


@event.listens_for(Session, "before_flush")
def _guard_issued(session: Session, flush_context: UOWTransaction,
                  instances: object) -> None:
    for obj in list(session.dirty) + list(session.deleted):
        if isinstance(obj, InvoiceLine) and obj.invoice is not None \
                and obj.invoice.status != "draft" and session.is_modified(obj):
            raise InvoiceImmutable("the lines of an issued invoice cannot change")
        if not isinstance(obj, Invoice):
            continue
        state = db.inspect(obj)
        issued_before = state.attrs.status.history.deleted or [obj.status]
        if issued_before[0] == "draft":
            continue
        if obj in session.deleted:
            raise InvoiceImmutable("an issued invoice cannot be deleted")
        for name in FROZEN:
            if state.attrs[name].history.has_changes():
                raise InvoiceImmutable(f"{name} of issued invoice {obj.number} cannot change")
        old = issued_before[0]
        if obj.status != old and obj.status not in TRANSITIONS[old]:
            raise InvoiceImmutable(f"an invoice cannot go from {old} to {obj.status}")


# -- numbers ------------------------------------------------------------------------

def next_number(year: int, prefix: str = NUMBER_PREFIX) -> str:
    """The next number of ``year`` (``BF-2026-000123``), taken under a row lock in the
    caller's transaction: two issuers wait for each other, and a number is never
    used twice (the invoice's unique constraint backs this)."""
    dialect = db.session.get_bind().dialect.name
    stmt = select(InvoiceNumberSequence).where(InvoiceNumberSequence.prefix == prefix,
                                               InvoiceNumberSequence.year == year)
    if dialect == "postgresql":
        # The year's row exists before it is locked, so two first issuers of a year
        # queue on one row instead of both inserting it.
        from sqlalchemy.dialects.postgresql import insert

        db.session.execute(insert(InvoiceNumberSequence)
                           .values(prefix=prefix, year=year, last_value=0)
                           .on_conflict_do_nothing())
        stmt = stmt.with_for_update()
    row = db.session.scalar(stmt)
    if row is None:
        row = InvoiceNumberSequence(prefix=prefix, year=year, last_value=0)
        db.session.add(row)
    row.last_value += 1
    db.session.flush()
    return f"{prefix}-{year}-{row.last_value:06d}"


# -- closing a period ---------------------------------------------------------------

def _account(tenant: Tenant) -> BillingAccount | None:
    return db.session.scalar(select(BillingAccount))


def _terms(tenant: Tenant) -> str:
    method = db.session.scalar(select(PaymentMethod).where(PaymentMethod.is_default.is_(True)))
    return method.kind if method is not None else "none"


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _issuer() -> dict[str, str]:
    config = current_app.config
    return {"name": config.get("ISSUER_NAME") or "Billfold",
            "address": config.get("ISSUER_ADDRESS") or "",
            "email": config.get("ISSUER_EMAIL") or "",
            "tax_id": config.get("ISSUER_TAX_ID") or ""}


def _instructions() -> dict[str, str] | None:
    config = current_app.config
    fields = {"bank_name": "BANK_NAME", "account_name": "BANK_ACCOUNT_NAME",
              "account_number": "BANK_ACCOUNT_NUMBER", "routing_number": "BANK_ROUTING_NUMBER",
              "swift": "BANK_SWIFT"}
    values = {key: config.get(name) or "" for key, name in fields.items()}
    return values if values["account_number"] else None


def _snapshot(tenant: Tenant, invoice: Invoice, rating: Rating,
              issue_date: dt.date) -> dict[str, Any]:
    issued_at, due_date = invoice.issued_at, invoice.due_date
    if issued_at is None or due_date is None:
        raise ValueError(f"invoice {invoice.number} has no issue or due date to snapshot")
    period = rating.period
    plans = [{"name": s.plan_version.plan.name, "version": s.plan_version.version,
              "start": s.starts_on.isoformat(),
              "end": (s.ends_on - dt.timedelta(days=1)).isoformat()}
             for s in rating.segments]
    by_user = rating.by_user()
    platform_fee = sum(line.amount_minor for line in rating.lines if line.kind == "base_fee")
    return {
        "number": invoice.number,
        "issued_at": issued_at.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "issue_date": issue_date.isoformat(),
        "due_date": due_date.isoformat(),
        "terms": invoice.payment_terms,
        "currency": invoice.currency,
        "period": {"start": period.start.isoformat(), "end": period.last_day.isoformat(),
                   "label": period.label},
        "issuer": _issuer(),
        "payment_instructions": _instructions() if invoice.payment_terms in ("invoice", "wire")
        else None,
        "customer": {"name": tenant.name, "slug": tenant.slug,
                     "billing_email": tenant.billing_email, "timezone": tenant.timezone},
        "plans": plans,
        "lines": [{"description": line.description, "metric": line.metric,
                   "service": line.service, "quantity": _decimal_text(line.quantity),
                   "unit_price": _decimal_text(line.unit_price), "amount": line.amount_minor}
                  for line in rating.lines],
        "usage": [{"metric": u.metric, "label": METRICS[u.metric].label,
                   "unit": METRICS[u.metric].unit, "used": _decimal_text(u.used.normalize()),
                   "included": _decimal_text(u.included.normalize() if u.included is not None
                                             else None),
                   "billable": _decimal_text(u.billable),
                   "start": u.segment_start.isoformat(),
                   "end": (u.segment_end - dt.timedelta(days=1)).isoformat()}
                  for u in rating.usage],
        "by_user": [{"user": user, "amount": amount}
                    for user, amount in sorted(by_user.items(), key=lambda kv: (-kv[1], kv[0]))],
        "platform_fee": platform_fee,
        "subtotal": invoice.subtotal_minor,
        "tax_rate": _decimal_text(invoice.tax_rate.quantize(Decimal("0.0001"))),
        "tax": invoice.tax_minor,
        "total": invoice.total_minor,
        "credit_applied": invoice.paid_minor,
        "amount_due": invoice.due_minor,
    }


def find_invoice(tenant: Tenant, period: Period) -> Invoice | None:
    with tenant_scope(tenant):
        return db.session.scalar(select(Invoice).where(Invoice.period_start == period.start))


def close_period(tenant: Tenant, period: Period, *, actor: Actor = SYSTEM,
                 now: dt.datetime | None = None, render: bool = True) -> Invoice:
    """Issue ``tenant``'s invoice for ``period`` (which must have ended), or finish the
    one already issued. Returns the invoice. With ``render=False`` the PDF is left
    to its job (queued at issue)."""
    now = now or dt.datetime.now(dt.UTC)
    today = local_day(now, tenant.timezone)
    if period.end > today:
        raise ValidationFailed({"period": f"{period.label} has not ended for {tenant.slug}"})
    existing = find_invoice(tenant, period)
    if existing is None:
        try:
            existing = _issue(tenant, period, actor, now, today)
        except IntegrityError:
            db.session.rollback()  # a concurrent close issued it first
            existing = find_invoice(tenant, period)
            if existing is None:  # it was not that: the error stands
                raise
    _finish(tenant, existing, render)
    return existing


def _issue(tenant: Tenant, period: Period, actor: Actor, now: dt.datetime,
           today: dt.date) -> Invoice:
    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        if (found := find_invoice(tenant, period)) is not None:
            db.session.commit()
            return found
        rating = rate_period(tenant, period)
        account = _account(tenant)
        rate = account.tax_rate_percent if account is not None else Decimal(0)
        subtotal = rating.subtotal_minor
        tax = int((Decimal(subtotal) * rate / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        terms = _terms(tenant)
        invoice = Invoice(
            tenant_id=tenant.id, period_start=period.start, period_end=period.end,
            status="draft", currency=tenant.currency, subtotal_minor=subtotal, tax_rate=rate,
            tax_minor=tax, total_minor=subtotal + tax, paid_minor=0)
        for position, line in enumerate(rating.lines, start=1):
            invoice.lines.append(InvoiceLine(
                tenant_id=tenant.id, position=position, kind=line.kind,
                description=line.description, metric=line.metric, service=line.service,
                quantity=line.quantity, unit_price=line.unit_price,
                amount_minor=line.amount_minor))
        db.session.add(invoice)
        db.session.flush()
        invoice.number = next_number(today.year)
        invoice.issued_at = now
        # A prepaid tenant's days were charged as they passed: those charges pay the
        # invoice first (they add up to its subtotal once every day is settled).
        charged = 0
        if account is not None and account.prepaid:
            usage_charges.settle_through(tenant, period.end)
            charged = usage_charges.charged_for_period(tenant, period)
        if charged > 0:
            db.session.add(InvoicePayment(
                tenant_id=tenant.id, invoice_id=invoice.id, method="credit",
                amount_minor=min(charged, invoice.total_minor),
                reference=usage_charges.ref_prefix(period).rstrip(":"),
                recorded_by=actor.label))
            invoice.paid_minor = min(charged, invoice.total_minor)
            if charged > invoice.total_minor:
                ledger.post_entry(tenant, actor, "refund", charged - invoice.total_minor,
                                  f"Invoice {invoice.number}: daily charges above its total",
                                  ref_id=f"invoice:{invoice.number}:excess", commit=False)
        # Prepaid credit pays what is left, as far as it goes.
        credit = min(max(ledger.balance_minor(tenant), 0), invoice.due_minor)
        if credit:
            ledger.post_entry(tenant, actor, "usage", -credit,
                              f"Invoice {invoice.number} ({period.label}) paid from credit",
                              ref_id=f"invoice:{invoice.number}", commit=False)
            db.session.add(InvoicePayment(tenant_id=tenant.id, invoice_id=invoice.id,
                                          method="credit", amount_minor=credit,
                                          reference=f"invoice:{invoice.number}",
                                          recorded_by=actor.label))
            invoice.paid_minor += credit
        if invoice.total_minor and invoice.due_minor == 0:
            terms = "prepaid"
        invoice.payment_terms = terms
        invoice.due_date = today + dt.timedelta(days=NET_DAYS.get(terms, 0))
        invoice.snapshot = json.dumps(_snapshot(tenant, invoice, rating, today), sort_keys=True)
        invoice.status = "pending"
        if invoice.due_minor == 0:
            invoice.status = "paid"
            invoice.paid_at = now
        for version in rating.versions:
            lock_plan_version(version)
        audit.record("invoice.issue", invoice, actor, tenant_id=tenant.id,
                     after={"number": invoice.number, "total_minor": invoice.total_minor,
                            "period": period.label,
                            "credit_minor": invoice.paid_minor})
        jobs.defer(RENDER_JOB, invoice.id)
        if invoice.status == "pending" and terms == "card":
            jobs.defer(CHARGE_JOB, invoice.id)
        db.session.commit()
        return invoice


def _finish(tenant: Tenant, invoice: Invoice, render: bool = True) -> None:
    """What a killed close may have left undone, done now (both jobs are idempotent).
    A PDF that fails to render is logged and counted as a failed render job; the
    invoice stays issued without a PDF, which its job, the next close or its first
    download renders, and the card charge and the other tenants' closes go on."""
    if render and invoice.pdf_sha256 is None:
        number = invoice.number
        try:
            observability.run_observed(RENDER_JOB, render_invoice, invoice.id)
        except Exception:
            db.session.rollback()
            current_app.logger.exception("invoice %s: the PDF was not rendered; it is "
                                         "rendered again later", number)
    if invoice.status in ("pending", "overdue") and invoice.payment_terms == "card" \
            and invoice.stripe_payment_intent_id is None:
        charge_invoice(invoice.id)


def periods_to_close(tenant: Tenant, today: dt.date) -> list[Period]:
    """Ended periods of the tenant's subscriptions that have no invoice yet."""
    with tenant_scope(tenant):
        subs = db.session.scalars(select(Subscription).order_by(Subscription.starts_on)).all()
        issued = set(db.session.scalars(select(Invoice.period_start)))
    if not subs:
        return []
    anchor = subs[-1].anchor_day
    period = period_containing(subs[0].starts_on, anchor)
    result = []
    while period.end <= today:
        if period.start not in issued:
            result.append(period)
        period = period.next()
    return result[-12:]


@dataclass
class CloseResult:
    tenant: str
    period: str
    number: str | None
    total_minor: int
    status: str


def close_due(*, period_label: str | None = None, tenant_slug: str | None = None,
              now: dt.datetime | None = None, render: bool = True,
              progress: Callable[[int, int], None] | None = None) -> list[CloseResult]:
    """Close every ended period still without an invoice (or ``period_label`` only),
    for every active tenant (or ``tenant_slug`` only). ``progress(done, total)`` is
    told after each tenant."""
    now = now or dt.datetime.now(dt.UTC)
    with unscoped():
        stmt = select(Tenant).where(Tenant.status == TenantStatus.ACTIVE).order_by(Tenant.slug)
        if tenant_slug:
            stmt = select(Tenant).where(Tenant.slug == tenant_slug)
        tenants = list(db.session.scalars(stmt))
    if tenant_slug and not tenants:
        raise NotFoundError(f"no tenant {tenant_slug!r}")
    # Every period is worked out, and checked, before anything is written.
    planned: list[tuple[Tenant, list[Period]]] = []
    for tenant in tenants:
        today = local_day(now, tenant.timezone)
        if period_label:
            try:
                period = period_from_label(period_label, _anchor(tenant))
            except ValueError as exc:
                raise ValidationFailed({"period": str(exc)}) from exc
            if period.end > today:
                raise ValidationFailed({"period": f"{period_label} has not ended yet"})
            planned.append((tenant, [period]))
        else:
            planned.append((tenant, periods_to_close(tenant, today)))
    # Only ids are kept from here: holding every tenant would keep them all in the
    # session, and each tenant's commit would expire (and each flush visit) all of
    # them, so the cost per tenant would grow with the number of tenants.
    plan = [(tenant.id, periods) for tenant, periods in planned]
    del tenants, planned
    results = []
    for done, (tenant_id, periods) in enumerate(plan, start=1):
        with unscoped():
            tenant = db.session.get_one(Tenant, tenant_id)
        for period in periods:
            invoice = close_period(tenant, period, now=now, render=render)
            results.append(CloseResult(tenant.slug, period.label, invoice.number,
                                       invoice.total_minor, invoice.status))
            del invoice
        del tenant
        if progress:
            progress(done, len(plan))
    return results


def _anchor(tenant: Tenant) -> int:
    with tenant_scope(tenant):
        sub = db.session.scalar(select(Subscription).order_by(Subscription.starts_on.desc()))
    return sub.anchor_day if sub else 1


# -- jobs: PDF and card charge --------------------------------------------------------

RENDER_JOB = "invoice.render_pdf"
CHARGE_JOB = "invoice.charge"


def _load(invoice_id: int) -> tuple[Invoice, Tenant] | None:
    with unscoped():
        invoice = db.session.get(Invoice, invoice_id)
        if invoice is None:
            return None
        tenant = db.session.get(Tenant, invoice.tenant_id)
        return None if tenant is None else (invoice, tenant)


@jobs.task(RENDER_JOB)
def render_invoice(invoice_id: int, force: bool = False) -> str | None:
    """Render and store the invoice's PDF from its snapshot, once (again only with
    ``force``, a Platform Admin's explicit request). Returns the SHA-256."""
    from invoices.invoice_pdf import render_invoice_pdf

    loaded = _load(invoice_id)
    if loaded is None:
        return None
    invoice, tenant = loaded
    if invoice.snapshot is None:
        return None
    if invoice.pdf_sha256 is not None and not force:
        return invoice.pdf_sha256
    data = render_invoice_pdf(json.loads(invoice.snapshot))
    with tenant_scope(tenant):
        row = db.session.get_one(Invoice, invoice_id)
        row.pdf = data
        row.pdf_sha256 = sha256_hex(data)
        row.pdf_rendered_at = dt.datetime.now(dt.UTC)
        db.session.commit()
        return row.pdf_sha256


@jobs.task(CHARGE_JOB)
def charge_invoice(invoice_id: int) -> str:
    """Charge what is due on a card-terms invoice to the default card, off-session.
    The webhook settles it; a decline leaves it pending (and then overdue)."""
    import stripe

    from invoices.payments import client, ensure_customer

    loaded = _load(invoice_id)
    if loaded is None:
        return "no invoice"
    if not current_app.config.get("STRIPE_SECRET_KEY"):
        return "card payments are not configured"
    invoice, tenant = loaded
    number = invoice.number
    if invoice.status not in ("pending", "overdue") or invoice.due_minor <= 0 \
            or invoice.stripe_payment_intent_id or number is None:
        return "nothing to charge"
    with tenant_scope(tenant):
        card = db.session.scalar(select(PaymentMethod).where(
            PaymentMethod.is_default.is_(True), PaymentMethod.kind == "card",
            PaymentMethod.stripe_payment_method_id.is_not(None)))
        card_id = card.stripe_payment_method_id if card else None
    if card_id is None:
        return "no card"
    customer = ensure_customer(tenant)
    try:
        intent = client().v1.payment_intents.create(
            params={"amount": invoice.due_minor, "currency": invoice.currency.lower(),
                    "customer": customer, "payment_method": card_id, "off_session": True,
                    "confirm": True, "description": f"Billfold invoice {number}",
                    "metadata": {"tenant": tenant.slug, "purpose": PAYMENT_PURPOSE,
                                 "invoice": number}},
            options={"idempotency_key": f"billfold-invoice-{number}"})
        intent_id: str | None = intent.id
        outcome = "submitted"
    except stripe.CardError as exc:
        intent_id = getattr(getattr(exc.error, "payment_intent", None), "id", None)
        outcome = f"declined: {exc.user_message}"
    except stripe.StripeError as exc:
        # Not a decline: Stripe refused the request, failed or did not answer in time
        # (then it may have charged). The invoice stays open without a payment intent;
        # the next run asks again with the same idempotency key, which Stripe answers
        # with the charge it made, if any, instead of charging again.
        intent_id, outcome = None, f"not confirmed by Stripe: {exc.user_message or exc}"
    with tenant_scope(tenant):
        row = db.session.get_one(Invoice, invoice_id)
        if row.stripe_payment_intent_id is None and intent_id:
            row.stripe_payment_intent_id = intent_id
        audit.record("invoice.charge", row, Actor.system("invoice_charge"), tenant_id=tenant.id,
                     after={"payment_intent": intent_id, "outcome": outcome})
        db.session.commit()
    return outcome


def on_intent_succeeded(tenant: Tenant, intent: dict[str, Any]) -> str:
    """Webhook: a card charge for an invoice succeeded."""
    number = (intent.get("metadata") or {}).get("invoice")
    with tenant_scope(tenant):
        invoice = db.session.scalar(select(Invoice).where(Invoice.number == number))
        if invoice is None:
            return "unknown invoice"
        amount = int(intent.get("amount_received") or intent.get("amount") or 0)
        _record_payment(invoice, "card", amount, intent["id"], Actor.system("stripe_webhook"))
    return "invoice paid"


def _record_payment(invoice: Invoice, method: str, amount: int, reference: str,
                    actor: Actor) -> InvoicePayment | None:
    exists = db.session.scalar(select(InvoicePayment).where(
        InvoicePayment.invoice_id == invoice.id, InvoicePayment.method == method,
        InvoicePayment.reference == reference))
    if exists is not None:
        return None
    payment = InvoicePayment(tenant_id=invoice.tenant_id, invoice_id=invoice.id, method=method,
                             amount_minor=amount, reference=reference, recorded_by=actor.label)
    db.session.add(payment)
    invoice.paid_minor += amount
    if invoice.paid_minor >= invoice.total_minor and invoice.status in ("pending", "overdue"):
        invoice.status = "paid"
        invoice.paid_at = dt.datetime.now(dt.UTC)
    audit.record("invoice.payment", invoice, actor, tenant_id=invoice.tenant_id,
                 after={"method": method, "amount_minor": amount, "reference": reference,
                        "status": invoice.status})
    return payment


# -- Platform Admin actions and the daily overdue job -----------------------------------

def get_invoice(tenant: Tenant, number: str) -> Invoice:
    with tenant_scope(tenant):
        invoice: Invoice | None = db.session.scalar(
            select(Invoice).where(Invoice.number == number))
    if invoice is None or invoice.tenant_id != tenant.id:
        raise NotFoundError("no such invoice")
    return invoice


def mark_paid(actor: Actor, tenant: Tenant, number: str, method: str, reference: str,
              amount_minor: int | None = None) -> Invoice:
    """Record a bank payment (ACH, wire, net-30) with its reference; audited."""
    reference = (reference or "").strip()
    errors = {}
    if method not in ("ach", "wire", "invoice", "other"):
        errors["method"] = "choose ACH, wire, invoice (net-30) or other"
    if len(reference) < 3:
        errors["reference"] = "enter the bank's reference for the payment"
    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        invoice = get_invoice(tenant, number)
        if invoice.status not in ("pending", "overdue"):
            errors["invoice"] = f"invoice {number} is {invoice.status}, not open"
        due = invoice.due_minor
        amount = due if amount_minor is None else amount_minor
        if not errors and not 0 < amount <= due:
            errors["amount"] = "the amount must be more than zero and at most what is due"
        if errors:
            db.session.rollback()
            raise ValidationFailed(errors)
        if _record_payment(invoice, method, amount, reference, actor) is None:
            db.session.rollback()
            raise ValidationFailed({"reference": "this reference is already recorded"})
        db.session.commit()
        return invoice


def void_invoice(actor: Actor, tenant: Tenant, number: str, reason: str) -> Invoice:
    """Void an open invoice; prepaid credit it took goes back to the balance."""
    reason = (reason or "").strip()
    if len(reason) < 5:
        raise ValidationFailed({"reason": "say why the invoice is void"})
    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        invoice = get_invoice(tenant, number)
        if invoice.status not in ("draft", "pending", "overdue"):
            db.session.rollback()
            raise ValidationFailed({"invoice": f"a {invoice.status} invoice cannot be voided"})
        credit = sum(p.amount_minor for p in invoice.payments if p.method == "credit")
        if credit:
            ledger.post_entry(tenant, actor, "refund", credit,
                              f"Credit returned: invoice {number} void",
                              source="admin_correction", ref_id=f"void:{number}", commit=False)
        invoice.status = "void"
        invoice.voided_at = dt.datetime.now(dt.UTC)
        invoice.void_reason = reason
        audit.record("invoice.void", invoice, actor, tenant_id=tenant.id,
                     after={"reason": reason, "credit_returned_minor": credit})
        db.session.commit()
        return invoice


def mark_overdue(now: dt.datetime | None = None) -> int:
    """Pending invoices past their due date (in the tenant's time zone) become overdue."""
    now = now or dt.datetime.now(dt.UTC)
    changed = 0
    with unscoped():
        rows = db.session.execute(
            select(Invoice, Tenant).join(Tenant, Tenant.id == Invoice.tenant_id)
            .where(Invoice.status == "pending")).all()
        for invoice, tenant in rows:
            if invoice.due_date is not None and invoice.due_date < local_day(now, tenant.timezone):
                invoice.status = "overdue"
                audit.record("invoice.overdue", invoice, Actor.system("overdue"),
                             tenant_id=tenant.id, after={"due_date": invoice.due_date.isoformat()})
                changed += 1
        db.session.commit()
    return changed


def set_tax_rate(actor: Actor, tenant: Tenant, rate: Decimal) -> BillingAccount:
    from invoices.payments import _account as billing_account

    if not Decimal(0) <= rate < Decimal(100):
        raise ValidationFailed({"tax_rate": "a percentage from 0 to 99.9999"})
    if rate != rate.quantize(Decimal("0.0001")):
        raise ValidationFailed({"tax_rate": "at most 4 decimal places"})
    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        account = billing_account(tenant)
        before = {"tax_rate_percent": str(account.tax_rate_percent)}
        account.tax_rate_percent = rate
        audit.record("billing.tax_rate", account, actor, tenant_id=tenant.id, before=before,
                     after={"tax_rate_percent": str(rate)})
        db.session.commit()
        return account


def tax_rate(tenant: Tenant) -> Decimal:
    with tenant_scope(tenant):
        account = _account(tenant)
    return account.tax_rate_percent if account is not None else Decimal(0)


@dataclass(frozen=True)
class InvoiceFilter:
    statuses: tuple[str, ...] = ()
    start: dt.date | None = None  # period starts on or after
    end: dt.date | None = None  # period starts before


def list_invoices(tenant: Tenant, where: InvoiceFilter = InvoiceFilter(), *,
                  before: int | None = None, limit: int = 50) -> tuple[list[Invoice], bool]:
    """Issued and draft invoices newest first; ``before`` is an invoice id cursor."""
    stmt = select(Invoice).order_by(Invoice.period_start.desc(), Invoice.id.desc())
    if where.statuses:
        stmt = stmt.where(Invoice.status.in_(where.statuses))
    if where.start:
        stmt = stmt.where(Invoice.period_start >= where.start)
    if where.end:
        stmt = stmt.where(Invoice.period_start < where.end)
    if before is not None:
        stmt = stmt.where(Invoice.id < before)
    with tenant_scope(tenant):
        rows = list(db.session.scalars(stmt.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def invoice_pdf(tenant: Tenant, number: str) -> tuple[bytes, str]:
    """The stored PDF (rendered now if it never was) and its file name."""
    invoice = get_invoice(tenant, number)
    if invoice.pdf_sha256 is None:
        render_invoice(invoice.id)
    with tenant_scope(tenant):
        data = db.session.scalar(select(Invoice.pdf).where(Invoice.id == invoice.id))
    if data is None:  # a draft has no snapshot to render
        raise NotFoundError(f"invoice {number} has no PDF")
    return data, f"{number}.pdf"


def snapshot_of(invoice: Invoice) -> dict[str, Any]:
    return json.loads(invoice.snapshot) if invoice.snapshot else {}

