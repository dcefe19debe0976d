"""The prepaid-credit ledger: posting entries, the balance, paging and corrections.

Every entry is written under the tenant's row lock: the last ``balance_after`` is
read, the new one computed, and the row appended in the same transaction, so
concurrent writers never lose an update.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Select, select

from invoices import auto_recharge
from invoices.models import ENTRY_SIGNS, SOURCES, LedgerEntry
from portal import audit
from portal.audit import Actor
from portal.errors import ValidationFailed
from portal.extensions import db
from portal.money import Money
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tenants.services import lock_tenant

PAGE_SIZE = 50
MAX_PAGE = 1000
GRANT_TYPES = ("contract_grant", "bonus_grant", "bonus")
MAX_AMOUNT_MINOR = 10**13  # a hundred billion in major units: larger is a typo


def _check(entry_type: str, amount_minor: int, source: str) -> None:
    errors = {}
    if entry_type not in ENTRY_SIGNS:
        errors["type"] = f"unknown entry type {entry_type!r}"
    if not isinstance(amount_minor, int) or isinstance(amount_minor, bool):
        errors["amount"] = "amounts are integers in minor units"
    elif amount_minor == 0:
        errors["amount"] = "the amount cannot be zero"
    elif abs(amount_minor) > MAX_AMOUNT_MINOR:
        errors["amount"] = "the amount is implausibly large"
    elif entry_type in ENTRY_SIGNS and ENTRY_SIGNS[entry_type] * amount_minor < 0:
        sign = "positive" if ENTRY_SIGNS[entry_type] > 0 else "negative"
        errors["amount"] = f"a {entry_type} entry is {sign}"
    if source not in SOURCES:
        errors["source"] = f"unknown source {source!r}"
    if errors:
        raise ValidationFailed(errors)


def balance_minor(tenant: Tenant) -> int:
    """The tenant's credit balance: the last entry's ``balance_after`` (0 if none)."""
    with tenant_scope(tenant):
        return db.session.scalar(
            select(LedgerEntry.balance_after_minor).order_by(LedgerEntry.id.desc()).limit(1)
        ) or 0


def balance(tenant: Tenant) -> Money:
    return Money.from_minor(balance_minor(tenant), tenant.currency)


def post_entry(tenant: Tenant, actor: Actor, entry_type: str, amount_minor: int,
               description: str, *, source: str = "system", ref_id: str | None = None,
               at: dt.datetime | None = None, commit: bool = True) -> LedgerEntry:
    """Append an entry and return it. With a ``ref_id`` the call is idempotent: the
    entry already booked for (tenant, type, ref_id) is returned unchanged. ``at``
    back-dates an entry that is loaded in order (history imports, demo data).
    Refuses an unknown type or source, a zero amount and a sign the type forbids."""
    _check(entry_type, amount_minor, source)
    description = (description or "").strip() or entry_type.replace("_", " ")
    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        if ref_id is not None:
            existing: LedgerEntry | None = db.session.scalar(select(LedgerEntry).where(
                LedgerEntry.type == entry_type, LedgerEntry.ref_id == ref_id))
            if existing is not None:
                if commit:
                    db.session.commit()
                return existing
        previous = db.session.scalar(
            select(LedgerEntry.balance_after_minor).order_by(LedgerEntry.id.desc()).limit(1)
        ) or 0
        entry = LedgerEntry(
            tenant_id=tenant.id, type=entry_type, amount_minor=amount_minor,
            currency=tenant.currency, balance_after_minor=previous + amount_minor,
            description=description, source=source, ref_id=ref_id, actor_label=actor.label,
        )
        if at is not None:
            entry.created_at = at
        db.session.add(entry)
        db.session.flush()
        auto_recharge.after_entry(tenant, entry)
        if commit:
            db.session.commit()
        return entry


def correct_balance(actor: Actor, tenant: Tenant, amount_minor: int, reason: str,
                    ) -> LedgerEntry:
    """A Platform Admin's correction (positive or negative); the reason is required
    and becomes the description; audited."""
    reason = (reason or "").strip()
    if len(reason) < 5:
        raise ValidationFailed({"reason": "explain the correction in a few words"})
    entry = post_entry(tenant, actor, "admin_correction", amount_minor, reason,
                       source="admin_correction", commit=False)
    audit.record("ledger.correction", entry, actor, tenant_id=tenant.id,
                 after={"amount_minor": amount_minor, "reason": reason,
                        "balance_after_minor": entry.balance_after_minor})
    db.session.commit()
    return entry


def grant_credit(actor: Actor, tenant: Tenant, entry_type: str, amount_minor: int,
                 description: str) -> LedgerEntry:
    """A contract grant, a bonus grant or a one-off bonus (positive); audited."""
    if entry_type not in GRANT_TYPES:
        raise ValidationFailed({"type": f"choose one of: {', '.join(GRANT_TYPES)}"})
    if not (description or "").strip():
        raise ValidationFailed({"description": "name the contract or the reason"})
    entry = post_entry(tenant, actor, entry_type, amount_minor, description,
                       source="admin_correction", commit=False)
    audit.record(f"ledger.{entry_type}", entry, actor, tenant_id=tenant.id,
                 after={"amount_minor": amount_minor, "description": description})
    db.session.commit()
    return entry


@dataclass(frozen=True)
class EntryFilter:
    types: tuple[str, ...] = ()
    start: dt.datetime | None = None  # inclusive, aware
    end: dt.datetime | None = None  # exclusive, aware

    def apply(self, stmt: Select[LedgerEntry]) -> Select[LedgerEntry]:
        if self.types:
            stmt = stmt.where(LedgerEntry.type.in_(self.types))
        if self.start is not None:
            stmt = stmt.where(LedgerEntry.created_at >= self.start)
        if self.end is not None:
            stmt = stmt.where(LedgerEntry.created_at < self.end)
        return stmt


@dataclass(frozen=True)
class EntryPage:
    entries: list[LedgerEntry]
    has_more: bool
    next_before: int | None


def list_entries(tenant: Tenant, *, before: int | None = None, limit: int = PAGE_SIZE,
                 where: EntryFilter = EntryFilter()) -> EntryPage:
    """Entries newest first, ``limit`` at a time; ``before`` is the cursor (an entry
    id) from the previous page. Paging by id has no depth limit and never skips or
    repeats a row when new entries arrive meanwhile."""
    limit = max(1, min(limit, MAX_PAGE))
    with tenant_scope(tenant):
        stmt = where.apply(select(LedgerEntry))
        if before is not None:
            stmt = stmt.where(LedgerEntry.id < before)
        rows = list(db.session.scalars(stmt.order_by(LedgerEntry.id.desc()).limit(limit + 1)))
    has_more = len(rows) > limit
    rows = rows[:limit]
    return EntryPage(rows, has_more, rows[-1].id if has_more and rows else None)


def iter_entries(tenant: Tenant, where: EntryFilter = EntryFilter(),
                 chunk: int = 1000) -> Iterator[LedgerEntry]:
    """Every matching entry, newest first, read a chunk at a time (for exports)."""
    before = None
    while True:
        page = list_entries(tenant, before=before, limit=chunk, where=where)
        yield from page.entries
        if not page.has_more:
            return
        before = page.next_before
