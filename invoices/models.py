"""The prepaid-credit ledger, payment methods, credit purchases, Stripe events and
invoices."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import ClassVar

from flask_appbuilder import Model
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

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
    # Prepaid tenants have their usage charged to their credit every day (holds and
    # settlements); their invoices are then paid by those charges.
    prepaid: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False,
                                          server_default="0")
    usage_settled_until: Mapped[dt.date | None] = mapped_column(Date)  # exclusive
    # Sales tax or VAT added to the tenant's invoices, in percent (0 unless set).
    tax_rate_percent: Mapped[Decimal] = mapped_column(Numeric(7, 4), nullable=False, default=0,
                                                      server_default="0")


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
    fee_minor: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0,
                                           server_default="0")  # the processor's fee
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


INVOICE_STATUSES = ("draft", "pending", "paid", "overdue", "void")
PAYMENT_TERMS = ("card", "prepaid", "ach", "invoice", "wire", "none")
INVOICE_PAYMENT_METHODS = ("credit", "card", "ach", "wire", "invoice", "other")


class Invoice(TenantScoped, Model):
    """A tenant's bill for one billing period. Issued (pending) invoices are
    immutable: only their state, payments and stored PDF change afterwards."""

    __tablename__ = "invoice"
    __table_args__ = (
        CheckConstraint(f"status IN ({_in(INVOICE_STATUSES)})", name="ck_invoice_status"),
        CheckConstraint(f"payment_terms IN ({_in(PAYMENT_TERMS)})", name="ck_invoice_terms"),
        CheckConstraint("total_minor = subtotal_minor + tax_minor", name="ck_invoice_total"),
        # One invoice per tenant and period, however often the close runs.
        UniqueConstraint("tenant_id", "period_start", name="uq_invoice_period"),
        UniqueConstraint("number", name="uq_invoice_number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str | None] = mapped_column(String(32))
    period_start: Mapped[dt.date] = mapped_column(Date, nullable=False)
    period_end: Mapped[dt.date] = mapped_column(Date, nullable=False)  # exclusive
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="draft")
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    subtotal_minor: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    tax_rate: Mapped[Decimal] = mapped_column(Numeric(7, 4), nullable=False, default=0)
    tax_minor: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    total_minor: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    paid_minor: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    payment_terms: Mapped[str] = mapped_column(String(16), nullable=False, default="none")
    issued_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    due_date: Mapped[dt.date | None] = mapped_column(Date)
    paid_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    voided_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    void_reason: Mapped[str | None] = mapped_column(Text)
    # The customer, plan, lines and per-user summary as issued: the PDF's only source.
    snapshot: Mapped[str | None] = mapped_column(Text)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    pdf: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    pdf_sha256: Mapped[str | None] = mapped_column(String(64))
    pdf_rendered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    lines: Mapped[list[InvoiceLine]] = relationship(
        back_populates="invoice", order_by="InvoiceLine.position",
        cascade="all, delete-orphan")
    payments: Mapped[list[InvoicePayment]] = relationship(
        back_populates="invoice", order_by="InvoicePayment.id")

    @property
    def period_last_day(self) -> dt.date:
        return self.period_end - dt.timedelta(days=1)

    @property
    def due_minor(self) -> int:
        return self.total_minor - self.paid_minor

    @property
    def is_open(self) -> bool:
        return self.status in ("pending", "overdue")


class InvoiceLine(TenantScoped, Model):
    __tablename__ = "invoice_line"
    __tenant_index__: ClassVar[bool] = False

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoice.id", ondelete="CASCADE"),
                                            nullable=False, index=True)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # base_fee, overage
    description: Mapped[str] = mapped_column(Text, nullable=False)
    metric: Mapped[str | None] = mapped_column(String(32))
    service: Mapped[str] = mapped_column(String(64), nullable=False)
    quantity: Mapped[Decimal] = mapped_column(Numeric(24, 6), nullable=False)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(20, 10), nullable=False)
    amount_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)

    invoice: Mapped[Invoice] = relationship(back_populates="lines")


class InvoicePayment(TenantScoped, Model):
    """Money received against an invoice: prepaid credit, a card charge, or a bank
    payment recorded by a Platform Admin with its reference."""

    __tablename__ = "invoice_payment"
    __tenant_index__: ClassVar[bool] = False
    __table_args__ = (
        CheckConstraint(f"method IN ({_in(INVOICE_PAYMENT_METHODS)})",
                        name="ck_invoice_payment_method"),
        CheckConstraint("amount_minor > 0", name="ck_invoice_payment_amount"),
        UniqueConstraint("invoice_id", "method", "reference", name="uq_invoice_payment_ref"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoice.id"), nullable=False, index=True)
    method: Mapped[str] = mapped_column(String(16), nullable=False)
    amount_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    reference: Mapped[str] = mapped_column(String(255), nullable=False)
    recorded_by: Mapped[str] = mapped_column(String(256), nullable=False)
    received_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    invoice: Mapped[Invoice] = relationship(back_populates="payments")


class InvoiceNumberSequence(Model):
    """The last number used per issuer and year; read and advanced under a row lock."""

    __tablename__ = "invoice_number_sequence"

    prefix: Mapped[str] = mapped_column(String(16), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_value: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
