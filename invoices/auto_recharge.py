"""Auto-recharge: when a debit takes a tenant's balance under its threshold, the
default card is charged off-session, once per dip.

The decision is made inside the ledger write that crossed the threshold, under the
tenant's row lock: the first such debit finds the account armed, disarms it and
records a pending charge in the same transaction. Concurrent debits are serialised
by the lock, so later ones find it disarmed. The account is armed again when a
credit brings the balance back to the threshold or over it.

The card is charged by a job after the commit, with an idempotency key derived
from the charge's row, so a retried job never charges twice. The credit itself is
booked by the ``payment_intent.succeeded`` webhook; a decline (answered at once or
by webhook) marks the charge failed and notifies the tenant by email and on the
payments page.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import stripe
from flask import current_app, render_template
from sqlalchemy import select

from invoices.models import AutoRecharge, BillingAccount, LedgerEntry, PaymentMethod
from portal import audit, jobs
from portal.audit import Actor
from portal.errors import ValidationFailed
from portal.extensions import db
from portal.money import Money
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped
from tenants.services import lock_tenant

log = logging.getLogger(__name__)
PURPOSE = "auto_recharge"
JOB = "auto_recharge.charge"
SETTINGS = ["auto_recharge_enabled", "auto_recharge_threshold_minor",
            "auto_recharge_amount_minor"]


def settings(tenant: Tenant) -> BillingAccount | None:
    with tenant_scope(tenant):
        return db.session.scalar(select(BillingAccount))


def configure(actor: Actor, tenant: Tenant, *, enabled: bool, threshold_minor: int | None,
              amount_minor: int | None) -> BillingAccount:
    """Turn auto-recharge on (threshold and amount required, and a default card to
    charge) or off; audited."""
    from invoices.payments import MAX_PURCHASE_MINOR, MIN_PURCHASE_MINOR, _account

    errors = {}
    if enabled:
        if threshold_minor is None or threshold_minor < 0:
            errors["threshold"] = "enter the balance under which to recharge, e.g. 50.00"
        elif threshold_minor > MAX_PURCHASE_MINOR:
            errors["threshold"] = "the threshold is implausibly large"
        if amount_minor is None or not MIN_PURCHASE_MINOR <= amount_minor <= MAX_PURCHASE_MINOR:
            errors["amount"] = "recharge between 5.00 and 100,000.00"
    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        if enabled and _default_card(tenant) is None:
            errors["enabled"] = "add a card and make it the default first"
        if errors:
            db.session.rollback()
            raise ValidationFailed(errors)
        account = _account(tenant)
        before = audit.snapshot(account, SETTINGS)
        account.auto_recharge_enabled = enabled
        if enabled:
            account.auto_recharge_threshold_minor = threshold_minor
            account.auto_recharge_amount_minor = amount_minor
        account.auto_recharge_armed = True
        audit.record("auto_recharge.configure", account, actor, tenant_id=tenant.id,
                     before=before, after=audit.snapshot(account, SETTINGS))
        db.session.commit()
        return account


def _default_card(tenant: Tenant) -> PaymentMethod | None:
    with tenant_scope(tenant):
        return db.session.scalar(select(PaymentMethod).where(
            PaymentMethod.is_default.is_(True), PaymentMethod.kind == "card",
            PaymentMethod.stripe_payment_method_id.is_not(None)))


def after_entry(tenant: Tenant, entry: LedgerEntry) -> None:
    """Called by the ledger for every new entry, under the tenant's lock and in its
    transaction: queue a charge when a debit crosses under the threshold of an armed
    account; re-arm once the balance is back at the threshold."""
    account = db.session.scalar(select(BillingAccount))
    if account is None or not account.auto_recharge_enabled:
        return
    threshold = account.auto_recharge_threshold_minor or 0
    balance = entry.balance_after_minor
    if entry.amount_minor < 0:
        if account.auto_recharge_armed and balance < threshold:
            account.auto_recharge_armed = False
            recharge = AutoRecharge(
                tenant_id=tenant.id, trigger_entry_id=entry.id,
                balance_at_trigger_minor=balance, amount_minor=account.auto_recharge_amount_minor,
                currency=tenant.currency, status="pending")
            db.session.add(recharge)
            db.session.flush()
            jobs.defer(JOB, recharge.id)
    elif not account.auto_recharge_armed and balance >= threshold:
        account.auto_recharge_armed = True


def _load(recharge_id: int) -> tuple[AutoRecharge, Tenant] | None:
    with unscoped():
        recharge = db.session.get(AutoRecharge, recharge_id)
        if recharge is None:
            return None
        tenant = db.session.get(Tenant, recharge.tenant_id)
        return None if tenant is None else (recharge, tenant)


@jobs.task(JOB)
def charge(recharge_id: int) -> str:
    """Charge the default card for a pending auto-recharge. Safe to run again: only a
    pending row is charged, and Stripe sees the same idempotency key each time."""
    from invoices.payments import client, ensure_customer

    loaded = _load(recharge_id)
    if loaded is None or loaded[0].status != "pending":
        return "nothing to do"
    recharge, tenant = loaded
    card = _default_card(tenant)
    if card is None or card.stripe_payment_method_id is None:
        return _fail(tenant, recharge_id, "there is no default card to charge")
    customer = ensure_customer(tenant)
    try:
        intent = client().v1.payment_intents.create(
            params={
                "amount": recharge.amount_minor, "currency": recharge.currency.lower(),
                "customer": customer, "payment_method": card.stripe_payment_method_id,
                "off_session": True, "confirm": True,
                "description": f"Billfold auto-recharge for {tenant.name}",
                "metadata": {"tenant": tenant.slug, "purpose": PURPOSE,
                             "auto_recharge": str(recharge.id)},
            },
            options={"idempotency_key": f"billfold-auto-recharge-{tenant.slug}-{recharge.id}"},
        )
    except stripe.CardError as exc:
        error = exc.error
        intent_id = getattr(getattr(error, "payment_intent", None), "id", None)
        return _fail(tenant, recharge_id, exc.user_message or "the card was declined",
                     intent_id=intent_id, label=card.label)
    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        row = db.session.get_one(AutoRecharge, recharge_id)
        if row.status == "pending":
            row.status = "submitted"
            row.stripe_payment_intent_id = intent.id
        db.session.commit()
    return "submitted"


def _fail(tenant: Tenant, recharge_id: int, message: str, *, intent_id: str | None = None,
          label: str | None = None) -> str:
    from invoices.payments import _purchase_row

    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        row = db.session.get_one(AutoRecharge, recharge_id)
        if row.status in ("pending", "submitted"):
            row.status = "failed"
            row.failure_message = message
            if intent_id and row.stripe_payment_intent_id is None:
                row.stripe_payment_intent_id = intent_id
            _purchase_row(tenant, "purchase", "failed", row.amount_minor,
                          intent_id or f"auto-recharge-{row.id}", label=label, failure=message)
            audit.record("auto_recharge.failed", row, Actor.system("auto_recharge"),
                         tenant_id=tenant.id, after={"message": message})
        db.session.commit()
    notify_failure(recharge_id)
    return "failed"


def notify_failure(recharge_id: int) -> bool:
    """Email the tenant's billing address about a failed auto-recharge, once. A mail
    failure is logged and left for the next sweep (``flask billfold auto-recharge``)."""
    from portal.mail import send_mail

    loaded = _load(recharge_id)
    if loaded is None:
        return False
    recharge, tenant = loaded
    if recharge.status != "failed" or recharge.notified_at is not None:
        return False
    context = {"tenant": tenant, "recharge": recharge,
               "amount": Money.from_minor(recharge.amount_minor, recharge.currency),
               "balance": Money.from_minor(recharge.balance_at_trigger_minor, recharge.currency)}
    try:
        send_mail([tenant.billing_email], f"Auto-recharge failed for {tenant.name}",
                  render_template("mail/auto_recharge_failed.txt", **context),
                  render_template("mail/auto_recharge_failed.html", **context))
    except Exception as exc:  # noqa: BLE001 - any mail failure is retried later
        log.warning("auto-recharge %s: notification not sent: %s", recharge_id, exc)
        return False
    with tenant_scope(tenant):
        row = db.session.get_one(AutoRecharge, recharge_id)
        row.notified_at = dt.datetime.now(dt.UTC)
        db.session.commit()
    return True


def on_intent_succeeded(tenant: Tenant, intent: dict[str, Any]) -> str:
    """Webhook: book the credit of a succeeded auto-recharge charge (once)."""
    from invoices import ledger
    from invoices.payments import WEBHOOK_ACTOR, _card_label, _purchase_row, client

    amount = int(intent.get("amount_received") or intent.get("amount") or 0)
    if amount <= 0:
        return "nothing received"
    charge = None
    if intent.get("latest_charge"):
        charge_id = intent["latest_charge"]
        if isinstance(charge_id, dict):
            charge = charge_id
        else:
            charge = client().v1.charges.retrieve(
                charge_id, params={"expand": ["balance_transaction"]}).to_dict()
    ledger.post_entry(tenant, WEBHOOK_ACTOR, "auto_recharge", amount,
                      f"Auto-recharge, Stripe payment {intent['id']}",
                      source="stripe_webhook", ref_id=intent["id"], commit=False)
    _purchase_row(tenant, "purchase", "succeeded", amount, intent["id"], charge=charge,
                  label=_card_label({"card": ((charge or {}).get("payment_method_details")
                                              or {}).get("card")}))
    with tenant_scope(tenant):
        row = _row_for(intent)
        if row is not None:
            row.status = "succeeded"
            row.stripe_payment_intent_id = intent["id"]
            row.failure_message = None
    return "auto-recharge booked"


def on_intent_failed(tenant: Tenant, intent: dict[str, Any], message: str) -> None:
    """Webhook: a declined auto-recharge charge (the caller records the purchase row)."""
    with tenant_scope(tenant):
        row = _row_for(intent)
        if row is None or row.status not in ("pending", "submitted"):
            return
        row.status = "failed"
        row.failure_message = message
        row.stripe_payment_intent_id = row.stripe_payment_intent_id or intent["id"]
        audit.record("auto_recharge.failed", row, Actor.system("stripe_webhook"),
                     tenant_id=tenant.id, after={"message": message})
        jobs.defer("auto_recharge.notify", row.id)


jobs.task("auto_recharge.notify")(notify_failure)


def _row_for(intent: dict[str, Any]) -> AutoRecharge | None:
    row = db.session.scalar(select(AutoRecharge).where(
        AutoRecharge.stripe_payment_intent_id == intent["id"]))
    if row is None:
        ref = (intent.get("metadata") or {}).get("auto_recharge", "")
        if ref.isdigit():
            row = db.session.get(AutoRecharge, int(ref))
    return row


def last_failure(tenant: Tenant) -> AutoRecharge | None:
    """The latest auto-recharge if it failed (none after it succeeded)."""
    with tenant_scope(tenant):
        latest = db.session.scalar(select(AutoRecharge).order_by(AutoRecharge.id.desc()).limit(1))
    return latest if latest is not None and latest.status == "failed" else None


def sweep(max_age: dt.timedelta = dt.timedelta(minutes=1)) -> dict[str, int]:
    """Charge what is still pending (a job that died, or Stripe unreachable) and send
    notifications that failed; the periodic form of the jobs above. A charge that
    fails for a reason other than the card (Stripe down, a timeout) is logged and
    counted as failed; the recharge stays pending for the next sweep, and the other
    tenants' recharges go on."""
    cutoff = dt.datetime.now(dt.UTC) - max_age
    with unscoped():
        pending = list(db.session.scalars(select(AutoRecharge.id).where(
            AutoRecharge.status == "pending", AutoRecharge.created_at <= cutoff)))
        unnotified = list(db.session.scalars(select(AutoRecharge.id).where(
            AutoRecharge.status == "failed", AutoRecharge.notified_at.is_(None))))
    charged = failed = 0
    for rid in pending:
        try:
            charged += charge(rid) == "submitted"
        except Exception:
            db.session.rollback()
            failed += 1
            current_app.logger.exception("auto-recharge %s: the charge did not go through; "
                                         "the next sweep tries again", rid)
    notified = sum(1 for rid in unnotified if notify_failure(rid))
    current_app.logger.info("auto-recharge sweep: %s charged, %s failed, %s notified",
                            charged, failed, notified)
    return {"pending": len(pending), "charged": charged, "failed": failed,
            "notified": notified}
