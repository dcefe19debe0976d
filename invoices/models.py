"""The prepaid-credit ledger, payment methods, credit purchases and Stripe events."""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

from flask_appbuilder import Model
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from tenants.scoping import TenantScoped

# Entry types and the sign their amount must have: +1 credit, -1 debit, 0 either.
# A refund is either way: credit returned to the wallet (a hold released) is
# positive; a card purchase refunded to the card takes the bought credit back out.
ENTRY_SIGNS: dict[str, int] = {
    "topup": 1,
    "auto_recharge": 1,
    "usage": -1,
    "storage_billing": -1,
    "refund": 0,
    "bonus": 1,
    "admin_correction": 0,
    "contract_grant": 1,
    "bonus_grant": 1,
}
SOURCES = ("stripe_webhook", "admin_correction", "system", "user")


def _in(values) -> str:
    return ", ".join(f"'{v}'" for v in values)


SIGN_CHECK = (
    f"(type IN ({_in(t for t, s in ENTRY_SIGNS.items() if s > 0)}) AND amount_minor > 0) OR "
    f"(type IN ({_in(t for t, s in ENTRY_SIGNS.items() if s < 0)}) AND amount_minor < 0) OR "
    f"(type IN ({_in(t for t, s in ENTRY_SIGNS.items() if s == 0)}) AND amount_minor <> 0)"
)


class LedgerEntry(TenantScoped, Model):
    """One movement of a tenant's prepaid credit. Append-only: rows are never updated
    or deleted; a mistake is put right by an ``admin_correction`` row."""

    __tablename__ = "ledger_entry"
    __tenant_index__: ClassVar[bool] = False
    __table_args__ = (
        CheckConstraint(f"type IN ({_in(ENTRY_SIGNS)})", name="ck_ledger_entry_type"),
        CheckConstraint(f"source IN ({_in(SOURCES)})", name="ck_ledger_entry_source"),
        CheckConstraint(SIGN_CHECK, name="ck_ledger_entry_sign"),
        Index("ix_ledger_entry_tenant_id_id", "tenant_id", "id"),
        # The same external event (a Checkout session, a refund) books once.
        Index("uq_ledger_entry_ref", "tenant_id", "type", "ref_id", unique=True,
              sqlite_where=text("ref_id IS NOT NULL"),
              postgresql_where=text("ref_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    amount_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    balance_after_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    source: Mapped[str] = mapped_column(String(32), nullable=False)
    ref_id: Mapped[str | None] = mapped_column(String(255))
    actor_label: Mapped[str] = mapped_column(String(256), nullable=False)


class BillingAccount(TenantScoped, Model):
    """A tenant's payment-provider account: its Stripe customer."""

    __tablename__ = "billing_account"
    __tenant_index__: ClassVar[bool] = False
    __table_args__ = (UniqueConstraint("tenant_id", name="uq_billing_account_tenant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    # Auto-recharge: when a debit takes the balance under the threshold, the default
    # card is charged the amount, once per dip: ``auto_recharge_armed`` is cleared by
    # the charge and set again once the balance is back at or over the threshold.
    auto_recharge_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False,
                                                        default=False, server_default="0")
    auto_recharge_threshold_minor: Mapped[int | None] = mapped_column(BigInteger)
    auto_recharge_amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    auto_recharge_armed: Mapped[bool] = mapped_column(Boolean, nullable=False,
                                                      default=True, server_default="1")


class PaymentMethod(TenantScoped, Model):
    """A way the tenant pays. Cards mirror Stripe (brand, last 4, expiry); bank
    details are kept masked."""

    __tablename__ = "payment_method"
    __table_args__ = (
        CheckConstraint("kind IN ('card', 'ach', 'invoice', 'wire')",
                        name="ck_payment_method_kind"),
        UniqueConstraint("tenant_id", "stripe_payment_method_id",
                         name="uq_payment_method_stripe"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    stripe_payment_method_id: Mapped[str | None] = mapped_column(String(255))
    brand: Mapped[str | None] = mapped_column(String(32))
    last4: Mapped[str | None] = mapped_column(String(4))
    exp_month: Mapped[int | None] = mapped_column(Integer)
    exp_year: Mapped[int | None] = mapped_column(Integer)
    is_default: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    @property
    def label(self) -> str:
        if self.kind == "card":
            return f"{(self.brand or 'card').title()} •••• {self.last4} " \
                   f"(expires {self.exp_month:02d}/{self.exp_year})"
        return {"ach": "ACH bank account", "invoice": "Net-30 invoice",
                "wire": "Wire transfer"}[self.kind] + (f" •••• {self.last4}" if self.last4 else "")


class CreditPurchase(TenantScoped, Model):
    """A card payment for credit, or its refund: the Stripe transactions table."""

    __tablename__ = "credit_purchase"
    __table_args__ = (
        CheckConstraint("kind IN ('purchase', 'refund')", name="ck_credit_purchase_kind"),
        CheckConstraint("status IN ('succeeded', 'failed')", name="ck_credit_purchase_status"),
        UniqueConstraint("tenant_id", "kind", "stripe_ref", name="uq_credit_purchase_ref"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    amount_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    # The Checkout session, refund or payment intent this row stands for.
    stripe_ref: Mapped[str] = mapped_column(String(255), nullable=False)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(255))
    payment_method_label: Mapped[str | None] = mapped_column(String(128))
    receipt_url: Mapped[str | None] = mapped_column(Text)
    failure_message: Mapped[str | None] = mapped_column(Text)


class AutoRecharge(TenantScoped, Model):
    """One off-session charge of the default card, made because a debit took the
    balance under the tenant's threshold. ``pending`` until the job submits it to
    Stripe, ``submitted`` until the webhook books the credit, then ``succeeded``;
    ``failed`` when the card was declined or no card could be charged."""

    __tablename__ = "auto_recharge"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'submitted', 'succeeded', 'failed')",
                        name="ck_auto_recharge_status"),
        CheckConstraint("amount_minor > 0", name="ck_auto_recharge_amount"),
        # The ledger entry whose debit crossed the threshold triggers one charge.
        UniqueConstraint("tenant_id", "trigger_entry_id", name="uq_auto_recharge_trigger"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    trigger_entry_id: Mapped[int] = mapped_column(ForeignKey("ledger_entry.id"), nullable=False)
    balance_at_trigger_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    amount_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    failure_message: Mapped[str | None] = mapped_column(Text)
    notified_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()
    )


class StripeEvent(Model):
    """Every webhook event received, once (replays find their row and change nothing).
    Platform-level: read only by the webhook handler and Platform Admins."""

    __tablename__ = "stripe_event"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(128), nullable=False)
    received_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenant.id"))
    outcome: Mapped[str] = mapped_column(String(255), nullable=False)
