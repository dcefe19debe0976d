"""Card payments through Stripe: customers, Checkout (add a card, buy credit) and the
webhook that books what Stripe reports.

Configuration: ``STRIPE_SECRET_KEY``, ``STRIPE_WEBHOOK_SECRET`` and, for a local
stand-in of Stripe's API, ``STRIPE_API_BASE`` (all with the ``BILLFOLD_`` prefix in
the environment).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import stripe
from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from invoices import auto_recharge, ledger
from invoices.models import BillingAccount, CreditPurchase, PaymentMethod, StripeEvent
from portal import audit
from portal.audit import Actor
from portal.errors import NotFoundError, ValidationFailed
from portal.extensions import db
from portal.money import Money
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped
from tenants.services import lock_tenant

if TYPE_CHECKING:
    from stripe.params.checkout import SessionCreateParams

WEBHOOK_ACTOR = Actor.system("stripe_webhook")
MIN_PURCHASE_MINOR = 500
MAX_PURCHASE_MINOR = 10_000_000
STRIPE_TIMEOUT_SECONDS = 20  # per attempt; the library's own default is 80


class PaymentsNotConfigured(RuntimeError):
    """No Stripe secret key is configured."""


class WebhookRejected(ValueError):
    """The payload's signature is missing, forged or stale: nothing was booked."""


def client() -> stripe.StripeClient:
    """A Stripe client that gives up on an answer after ``STRIPE_TIMEOUT_SECONDS``
    (default 20) and retries twice; the library sends one idempotency key with a
    request and its retries, so a retried request is carried out once."""
    key = current_app.config.get("STRIPE_SECRET_KEY")
    if not key:
        raise PaymentsNotConfigured("set BILLFOLD_STRIPE_SECRET_KEY to take card payments")
    base = current_app.config.get("STRIPE_API_BASE")
    timeout = float(current_app.config.get("STRIPE_TIMEOUT_SECONDS") or STRIPE_TIMEOUT_SECONDS)
    options: dict[str, Any] = {"max_network_retries": 2,
                               "http_client": stripe.RequestsClient(timeout=timeout)}
    if base:
        options["base_addresses"] = {"api": base}
    return stripe.StripeClient(key, **options)


def _account(tenant: Tenant) -> BillingAccount:
    with tenant_scope(tenant):
        account = db.session.scalar(select(BillingAccount))
        if account is None:
            account = BillingAccount(tenant_id=tenant.id)
            db.session.add(account)
            db.session.flush()
        return account


def ensure_customer(tenant: Tenant) -> str:
    """The tenant's Stripe customer id, creating the customer on first use."""
    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        account = _account(tenant)
        if account.stripe_customer_id is None:
            customer = client().v1.customers.create(
                params={"email": tenant.billing_email, "name": tenant.name,
                        "metadata": {"tenant": tenant.slug}},
                options={"idempotency_key": f"billfold-customer-{tenant.slug}"},
            )
            account.stripe_customer_id = customer.id
        db.session.commit()
        return account.stripe_customer_id


@dataclass(frozen=True)
class CheckoutStart:
    session_id: str
    url: str


def start_checkout(tenant: Tenant, actor: Actor, *, mode: str, success_url: str,
                   cancel_url: str, amount_minor: int | None = None) -> CheckoutStart:
    """A Stripe Checkout session: ``setup`` adds a card, ``payment`` buys credit of
    ``amount_minor``. The session carries the tenant's customer and its slug as
    ``client_reference_id``."""
    if mode not in ("setup", "payment"):
        raise ValidationFailed({"mode": "choose setup or payment"})
    amount = _purchase_amount(amount_minor) if mode == "payment" else None
    customer = ensure_customer(tenant)
    params: SessionCreateParams = {
        "customer": customer, "client_reference_id": tenant.slug,
        "success_url": success_url, "cancel_url": cancel_url,
        "metadata": {"tenant": tenant.slug, "purpose": "credit" if mode == "payment" else "card"},
    }
    if amount is not None:
        params["mode"] = "payment"
        params["line_items"] = [{
            "quantity": 1,
            "price_data": {"currency": tenant.currency.lower(), "unit_amount": amount,
                           "product_data": {"name": f"Billfold credit for {tenant.name}"}},
        }]
        # Save the card on the customer so that it can be charged off-session later.
        params["payment_intent_data"] = {"metadata": {"tenant": tenant.slug},
                                         "setup_future_usage": "off_session"}
    else:
        params["mode"] = "setup"
        # Cards only: since API version 2026-09-30.endive Checkout takes the allowed
        # types as a filter (payment_method_types is refused).
        params["allowed_payment_method_types"] = ["card"]
        params["currency"] = tenant.currency.lower()
    session = client().v1.checkout.sessions.create(params=params)
    if session.url is None:  # only embedded Checkout sessions come without a page
        raise RuntimeError(f"Stripe answered checkout session {session.id} without a URL")
    with tenant_scope(tenant):
        audit.record("checkout.start", _account(tenant), actor, tenant_id=tenant.id,
                     after={"mode": mode, "amount_minor": amount_minor, "session": session.id})
        db.session.commit()
    return CheckoutStart(session.id, session.url)


def _purchase_amount(amount_minor: int | None) -> int:
    """The amount of a credit purchase, refused outside the allowed range."""
    if (not isinstance(amount_minor, int) or isinstance(amount_minor, bool)
            or not MIN_PURCHASE_MINOR <= amount_minor <= MAX_PURCHASE_MINOR):
        raise ValidationFailed({"amount": "buy between 5.00 and 100,000.00"})
    return amount_minor


# -- the webhook ----------------------------------------------------------------------

def handle_webhook(payload: bytes, signature: str | None) -> str:
    """Verify and book one webhook delivery; returns what was done.

    The event id is stored once: a replay answers "duplicate" and books nothing.
    Events may arrive in any order: each is booked on its own reference (session,
    refund, payment intent), so a refund seen before its payment still nets out.
    """
    secret = current_app.config.get("STRIPE_WEBHOOK_SECRET")
    if not secret:
        raise PaymentsNotConfigured("set BILLFOLD_STRIPE_WEBHOOK_SECRET to accept webhooks")
    try:
        event = stripe.Webhook.construct_event(payload, signature or "", secret)
    except (stripe.SignatureVerificationError, ValueError) as exc:
        raise WebhookRejected(str(exc)) from exc
    with unscoped():
        if db.session.get(StripeEvent, event.id) is not None:
            return "duplicate"
        data = json.loads(payload)["data"]["object"]
        tenant = _tenant_of(data)
        handler = HANDLERS.get(event.type)
        outcome = "ignored" if handler is None or tenant is None else handler(tenant, data)
        db.session.add(StripeEvent(id=event.id, type=event.type, outcome=outcome,
                                   tenant_id=tenant.id if tenant else None))
        try:
            db.session.commit()
        except IntegrityError:
            # The same event delivered twice at once: the other delivery booked it.
            db.session.rollback()
            return "duplicate"
    return outcome


def _tenant_of(obj: dict[str, Any]) -> Tenant | None:
    """By Stripe customer id, else by ``client_reference_id`` / metadata slug."""
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    if customer:
        tenant: Tenant | None = db.session.scalar(select(Tenant).join(
            BillingAccount, BillingAccount.tenant_id == Tenant.id
        ).where(BillingAccount.stripe_customer_id == customer))
        if tenant is not None:
            return tenant
    slug = obj.get("client_reference_id") or (obj.get("metadata") or {}).get("tenant")
    if slug:
        return db.session.scalar(select(Tenant).where(Tenant.slug == slug))
    return None


def _card_label(pm: dict[str, Any] | None) -> str | None:
    card = (pm or {}).get("card") or {}
    if not card:
        return None
    return f"{str(card.get('brand', 'card')).title()} •••• {card.get('last4')}"


def _mirror_card(tenant: Tenant, pm: dict[str, Any] | None) -> None:
    if pm is None or not pm.get("card"):
        return
    card = pm["card"]
    with tenant_scope(tenant):
        row = db.session.scalar(select(PaymentMethod).where(
            PaymentMethod.stripe_payment_method_id == pm["id"]))
        if row is None:
            has_default = db.session.scalar(select(PaymentMethod.id).where(
                PaymentMethod.is_default.is_(True)))
            row = PaymentMethod(tenant_id=tenant.id, kind="card",
                                stripe_payment_method_id=pm["id"], is_default=not has_default)
            db.session.add(row)
        row.brand, row.last4 = card.get("brand"), card.get("last4")
        row.exp_month, row.exp_year = card.get("exp_month"), card.get("exp_year")


def _on_checkout_completed(tenant: Tenant, session: dict[str, Any]) -> str:
    stripe_client = client()
    if session.get("mode") == "setup":
        setup = stripe_client.v1.setup_intents.retrieve(
            session["setup_intent"], params={"expand": ["payment_method"]})
        _mirror_card(tenant, setup.to_dict().get("payment_method"))
        return "card saved"
    if session.get("payment_status") != "paid":
        return "not paid"
    amount = int(session["amount_total"])
    pm = charge = None
    if session.get("payment_intent"):
        intent = stripe_client.v1.payment_intents.retrieve(
            session["payment_intent"],
            params={"expand": ["payment_method", "latest_charge.balance_transaction"]}
        ).to_dict()
        pm, charge = intent.get("payment_method"), intent.get("latest_charge")
        _mirror_card(tenant, pm)
    ledger.post_entry(tenant, WEBHOOK_ACTOR, "topup", amount,
                      f"Credit purchase, Stripe Checkout {session['id']}",
                      source="stripe_webhook", ref_id=session["id"], commit=False)
    _purchase_row(tenant, "purchase", "succeeded", amount, session["id"],
                  charge=charge, label=_card_label(pm))
    return "topup booked"


def _on_charge_refunded(tenant: Tenant, charge: dict[str, Any]) -> str:
    """Book each refund of the charge by its own id. Current API versions leave the
    ``refunds`` list out of the charge: then the charge's refunds are listed."""
    refunds = (charge.get("refunds") or {}).get("data")
    if refunds is None:
        refunds = [r.to_dict() for r in client().v1.refunds.list(
            params={"charge": charge["id"], "limit": 100}).auto_paging_iter()]
    booked = 0
    for refund in refunds:
        if refund.get("status") in ("failed", "canceled"):
            continue
        amount = int(refund.get("amount") or 0)
        if amount <= 0:
            continue
        _book_refund(tenant, WEBHOOK_ACTOR, charge, refund["id"], amount, "stripe_webhook")
        booked += 1
    return f"{booked} refund(s) booked"


def _book_refund(tenant: Tenant, actor: Actor, charge: dict[str, Any], refund_id: str,
                 amount: int, source: str) -> None:
    """The refunded credit leaves the ledger and the refund joins the purchase
    history, each once per Stripe refund id (the webhook and the Platform Admin's
    refund both arrive here)."""
    ledger.post_entry(tenant, actor, "refund", -amount,
                      f"Refund of Stripe charge {charge['id']}", source=source,
                      ref_id=refund_id, commit=False)
    _purchase_row(tenant, "refund", "succeeded", amount, refund_id, charge=charge,
                  label=_card_label({"card": (charge.get("payment_method_details") or {})
                                     .get("card")}))


def refundable_minor(tenant: Tenant, purchase: CreditPurchase) -> int:
    """What is left to refund of a succeeded card purchase."""
    if purchase.kind != "purchase" or purchase.status != "succeeded" \
            or not purchase.stripe_charge_id:
        return 0
    with tenant_scope(tenant):
        refunded = sum(db.session.scalars(select(CreditPurchase.amount_minor).where(
            CreditPurchase.kind == "refund",
            CreditPurchase.stripe_charge_id == purchase.stripe_charge_id)))
    return max(0, purchase.amount_minor - refunded)


def get_purchase(tenant: Tenant, purchase_id: int) -> CreditPurchase:
    with tenant_scope(tenant):
        purchase = db.session.get(CreditPurchase, purchase_id)
    if purchase is None or purchase.tenant_id != tenant.id:
        raise NotFoundError("no such purchase")
    return purchase


def refund_purchase(actor: Actor, tenant: Tenant, purchase_id: int, amount_minor: int | None,
                    reason: str, request_key: str) -> CreditPurchase:
    """A Platform Admin refunds (part of) a card purchase through Stripe. The refund
    is booked at once (ledger ``refund`` row and purchase history); the webhook that
    follows finds it booked. ``request_key`` is the form's one-time key: a form
    submitted twice refunds once. Refuses more than is left to refund, and more than
    the tenant's balance (credit already spent cannot be handed back)."""
    purchase = get_purchase(tenant, purchase_id)
    left = refundable_minor(tenant, purchase)
    errors = {}
    reason = (reason or "").strip()
    amount = left if amount_minor is None else amount_minor
    if left == 0:
        errors["purchase"] = "this purchase has nothing left to refund"
    elif not 0 < amount <= left:
        errors["amount"] = f"refund between 0.01 and {Money.from_minor(left, purchase.currency)}"
    if len(reason) < 5:
        errors["reason"] = "say why, in a few words"
    if not errors and amount > ledger.balance_minor(tenant):
        errors["amount"] = ("the tenant's balance is smaller than the refund: the credit has "
                            "been spent; correct the ledger instead")
    charge_id = purchase.stripe_charge_id  # a purchase without one has nothing to refund
    if errors or charge_id is None:
        raise ValidationFailed(errors or {"purchase": "this purchase has nothing left to refund"})
    refund = client().v1.refunds.create(
        params={"charge": charge_id, "amount": amount,
                "reason": "requested_by_customer",
                "metadata": {"tenant": tenant.slug, "reason": reason[:500],
                             "refunded_by": actor.label}},
        options={"idempotency_key": f"billfold-refund-{tenant.slug}-{purchase.id}-{request_key}"},
    )
    charge = client().v1.charges.retrieve(charge_id).to_dict()
    with tenant_scope(tenant):
        _book_refund(tenant, actor, charge, refund.id, int(refund.amount), "admin_correction")
        audit.record("payment.refund", purchase, actor, tenant_id=tenant.id,
                     after={"refund": refund.id, "amount_minor": int(refund.amount),
                            "reason": reason})
        db.session.commit()
    return purchase


def _on_payment_failed(tenant: Tenant, intent: dict[str, Any]) -> str:
    error = intent.get("last_payment_error") or {}
    message = error.get("message") or "the payment failed"
    _purchase_row(tenant, "purchase", "failed", int(intent.get("amount") or 0), intent["id"],
                  label=_card_label(error.get("payment_method")), failure=message)
    if (intent.get("metadata") or {}).get("purpose") == auto_recharge.PURPOSE:
        auto_recharge.on_intent_failed(tenant, intent, message)
    return "failed purchase recorded"


def _on_intent_succeeded(tenant: Tenant, intent: dict[str, Any]) -> str:
    """Auto-recharge and invoice charges are booked here; Checkout payments are
    booked by their ``checkout.session.completed`` event."""
    purpose = (intent.get("metadata") or {}).get("purpose")
    if purpose == auto_recharge.PURPOSE:
        return auto_recharge.on_intent_succeeded(tenant, intent)
    if purpose == "invoice":
        from invoices.invoicing import on_intent_succeeded

        return on_intent_succeeded(tenant, intent)
    return "ignored"


def _purchase_row(tenant: Tenant, kind: str, status: str, amount: int, ref: str, *,
                  charge: dict[str, Any] | None = None, label: str | None = None,
                  failure: str | None = None) -> None:
    with tenant_scope(tenant):
        exists = db.session.scalar(select(CreditPurchase.id).where(
            CreditPurchase.kind == kind, CreditPurchase.stripe_ref == ref))
        if exists:
            return
        txn = (charge or {}).get("balance_transaction")
        fee = int(txn.get("fee") or 0) if isinstance(txn, dict) and kind == "purchase" else 0
        db.session.add(CreditPurchase(
            fee_minor=fee, tenant_id=tenant.id, kind=kind, status=status, amount_minor=amount,
            currency=tenant.currency, stripe_ref=ref,
            stripe_charge_id=(charge or {}).get("id"),
            receipt_url=(charge or {}).get("receipt_url"), payment_method_label=label,
            failure_message=failure,
        ))


HANDLERS = {
    "checkout.session.completed": _on_checkout_completed,
    "charge.refunded": _on_charge_refunded,
    "payment_intent.payment_failed": _on_payment_failed,
    "payment_intent.succeeded": _on_intent_succeeded,
}


def list_payment_methods(tenant: Tenant) -> list[PaymentMethod]:
    with tenant_scope(tenant):
        return list(db.session.scalars(select(PaymentMethod).order_by(
            PaymentMethod.is_default.desc(), PaymentMethod.id)))


def list_purchases(tenant: Tenant, start: dt.datetime | None = None,
                   end: dt.datetime | None = None) -> list[CreditPurchase]:
    """Credit purchases and refunds newest first, optionally within [start, end)."""
    stmt = select(CreditPurchase).order_by(CreditPurchase.id.desc())
    if start is not None:
        stmt = stmt.where(CreditPurchase.created_at >= start)
    if end is not None:
        stmt = stmt.where(CreditPurchase.created_at < end)
    with tenant_scope(tenant):
        return list(db.session.scalars(stmt))
