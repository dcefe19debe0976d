"""Daily usage charges for prepaid tenants: holds and settlements.

For each day of a prepaid tenant (days in its time zone):
* when the day starts, a **hold** of the usage it is expected to cost: the mean of
  the last seven days' usage charges (``usage``, ref ``...:<day>:hold``);
* once the day is over, its **settlement**: the period rated up to and including
  the day, less what the period has been charged so far. Usage beyond the hold is
  charged (``usage``), what the hold did not use comes back (``refund``), both with
  ref ``...:<day>:settle``; storage is charged on its own (``storage_billing``,
  ``...:<day>:storage``) and so is the plan's base fee (``usage``,
  ``...:<day>:base``, on the period's first day or when a plan change alters it).

Every ref starts with ``usage:<period start>:``. Because each settlement charges the
difference between the period's rating so far and what was already charged, late
events are picked up by the next settlement, and once a period's last day is
settled its charges add up to the period's rating exactly, which is the invoice's
subtotal: the period close then takes only the tax from the credit. Refs make every
entry idempotent, and days are settled under the tenant's lock.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from invoices import ledger
from invoices.models import BillingAccount, LedgerEntry
from invoices.rating import rate_period
from plans.models import Subscription
from plans.periods import Period, period_containing, today_in
from portal.audit import Actor
from portal.extensions import db
from tenants.models import Tenant, TenantStatus
from tenants.scoping import tenant_scope, unscoped
from tenants.services import lock_tenant

ACTOR = Actor.system("usage_charges")
HOLD_DAYS = 7
PARTS = ("base", "storage", "other")


def ref_prefix(period: Period) -> str:
    return f"usage:{period.start.isoformat()}:"


def _ref(period: Period, day: dt.date, part: str) -> str:
    return f"{ref_prefix(period)}{day.isoformat()}:{part}"


def _account(tenant: Tenant) -> BillingAccount | None:
    return db.session.scalar(select(BillingAccount))


def _anchor(tenant: Tenant) -> tuple[int, dt.date | None]:
    first = db.session.scalar(select(Subscription).order_by(Subscription.starts_on))
    last = db.session.scalar(select(Subscription).order_by(Subscription.starts_on.desc()))
    return (last.anchor_day if last else 1), (first.starts_on if first else None)


def _rated_parts(tenant: Tenant, period: Period, through: dt.date) -> dict[str, int]:
    rating = rate_period(tenant, period, through=through)
    parts = dict.fromkeys(PARTS, 0)
    for line in rating.lines:
        if line.kind == "base_fee":
            parts["base"] += line.amount_minor
        elif line.metric == "storage_gb":
            parts["storage"] += line.amount_minor
        else:
            parts["other"] += line.amount_minor
    return parts


def _charged(period: Period, suffixes: tuple[str, ...]) -> int:
    """What the period's entries with these ref suffixes took from the credit."""
    prefix = ref_prefix(period)
    total = 0
    for suffix in suffixes:
        # int(): PostgreSQL sums bigints as numeric.
        total -= int(db.session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0))
            .where(LedgerEntry.ref_id.like(f"{prefix}%:{suffix}"))) or 0)
    return total


def charged_for_period(tenant: Tenant, period: Period) -> int:
    """All the daily charges of ``period`` (holds, settlements, storage, base fee)."""
    with tenant_scope(tenant):
        return _charged(period, ("hold", "settle", "storage", "base"))


def _post(tenant: Tenant, amount_due: int, debit_type: str, ref: str, what: str) -> None:
    """Charge ``amount_due`` (negative: give back) with the given ref."""
    if amount_due > 0:
        ledger.post_entry(tenant, ACTOR, debit_type, -amount_due, what, ref_id=ref,
                          commit=False)
    elif amount_due < 0:
        ledger.post_entry(tenant, ACTOR, "refund", -amount_due, f"{what} (returned)",
                          ref_id=ref, commit=False)


def settle_day(tenant: Tenant, period: Period, day: dt.date) -> None:
    """Settle one ended day (caller holds the tenant's lock and commits)."""
    target = _rated_parts(tenant, period, day + dt.timedelta(days=1))
    label = f"{day:%b} {day.day}, {day.year}"
    _post(tenant, target["base"] - _charged(period, ("base",)), "usage",
          _ref(period, day, "base"), f"Plan base fee, period {period.label}")
    _post(tenant, target["storage"] - _charged(period, ("storage",)), "storage_billing",
          _ref(period, day, "storage"), f"Storage charge, {label}")
    _post(tenant, target["other"] - _charged(period, ("hold", "settle")), "usage",
          _ref(period, day, "settle"), f"Usage settlement for {label} against its hold")


def _hold_estimate(period: Period, day: dt.date) -> int:
    """Mean daily usage charge (holds plus settlements) of the last settled days."""
    first = max(period.start, day - dt.timedelta(days=HOLD_DAYS))
    days = (day - first).days
    if days <= 0:
        return 0
    refs = [_ref(period, first + dt.timedelta(days=n), part)
            for n in range(days) for part in ("hold", "settle")]
    spent = -int(db.session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0))
                                   .where(LedgerEntry.ref_id.in_(refs))) or 0)
    return max(0, spent // days)


def place_hold(tenant: Tenant, period: Period, day: dt.date) -> int:
    """Hold the expected usage cost of ``day`` (caller holds the lock and commits)."""
    estimate = _hold_estimate(period, day)
    if estimate > 0:
        ledger.post_entry(tenant, ACTOR, "usage", -estimate,
                          f"Usage hold for {day:%b} {day.day}, {day.year} "
                          f"(mean of the last {HOLD_DAYS} days)",
                          ref_id=_ref(period, day, "hold"), commit=False)
    return estimate


def settle_through(tenant: Tenant, until: dt.date) -> int:
    """Settle every unsettled day before ``until`` (caller holds the lock and
    commits). Returns the number of days settled."""
    account = _account(tenant)
    anchor, first = _anchor(tenant)
    if account is None or first is None:
        return 0
    day = account.usage_settled_until or first
    settled = 0
    while day < until:
        settle_day(tenant, period_containing(day, anchor), day)
        day += dt.timedelta(days=1)
        settled += 1
    if settled:
        account.usage_settled_until = day
    return settled


def run_for_tenant(tenant: Tenant, today: dt.date | None = None) -> dict[str, int]:
    """Settle the prepaid tenant's ended days and hold today's usage."""
    today = today or today_in(tenant.timezone)
    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        account = _account(tenant)
        if account is None or not account.prepaid:
            db.session.commit()
            return {"settled": 0, "held": 0}
        settled = settle_through(tenant, today)
        anchor, _ = _anchor(tenant)
        held = place_hold(tenant, period_containing(today, anchor), today)
        db.session.commit()
        return {"settled": settled, "held": held}


def run_all(now: dt.datetime | None = None) -> dict[str, dict[str, int]]:
    """The daily job: every active prepaid tenant."""
    with unscoped():
        tenants = list(db.session.scalars(
            select(Tenant).join(BillingAccount, BillingAccount.tenant_id == Tenant.id)
            .where(BillingAccount.prepaid.is_(True), Tenant.status == TenantStatus.ACTIVE)
            .order_by(Tenant.slug)))
    results = {}
    for tenant in tenants:
        today = today_in(tenant.timezone, now) if now else None
        results[tenant.slug] = run_for_tenant(tenant, today)
    return results


def set_prepaid(actor: Actor, tenant: Tenant, prepaid: bool,
                today: dt.date | None = None) -> BillingAccount:
    """Turn daily charging on or off; settling starts with the current period."""
    from invoices.payments import _account as billing_account
    from portal import audit

    today = today or today_in(tenant.timezone)
    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        account = billing_account(tenant)
        before = {"prepaid": account.prepaid}
        if prepaid and not account.prepaid:
            anchor, _ = _anchor(tenant)
            account.usage_settled_until = period_containing(today, anchor).start
        account.prepaid = prepaid
        audit.record("billing.prepaid", account, actor, tenant_id=tenant.id, before=before,
                     after={"prepaid": prepaid})
        db.session.commit()
        return account
