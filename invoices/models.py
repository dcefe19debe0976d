"""The prepaid-credit ledger."""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

from flask_appbuilder import Model
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from tenants.scoping import TenantScoped

# Entry types and the sign their amount must have: +1 credit, -1 debit, 0 either.
ENTRY_SIGNS: dict[str, int] = {
    "topup": 1,
    "auto_recharge": 1,
    "usage": -1,
    "storage_billing": -1,
    "refund": 1,
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
