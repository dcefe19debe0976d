"""Reads behind the API (and the pages that show the same figures): usage buckets with
their cost, the cost breakdown of a period, revenue, and the tenants overview.
All read rollups, the ledger and invoices; none reads raw events."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func, select

from invoices import invoicing, ledger
from invoices.models import CreditPurchase, Invoice, InvoicePayment
from invoices.rating import rate_period
from plans.metrics import METRICS, PEAK
from plans.models import Subscription, UsageRollup, from_micro
from plans.periods import Period, period_containing, today_in
from plans.services import current_subscription
from plans.usage import usage_summary
from portal.extensions import db
from tenants.models import BillfoldUser, Tenant
from tenants.scoping import tenant_scope, unscoped

GRANULARITIES = ("day", "week", "month")
GROUPS = ("metric", "service", "user")
UNATTRIBUTED = "(unattributed)"


def anchor_day(tenant: Tenant) -> int:
    with tenant_scope(tenant):
        sub = db.session.scalar(select(Subscription).order_by(Subscription.starts_on.desc()))
    return sub.anchor_day if sub else 1


def bucket_bounds(start: dt.date, end: dt.date, granularity: str) -> list[tuple[dt.date, dt.date]]:
    """[start, end) cut into days, ISO weeks (Monday first) or calendar months; the
    first and last buckets are clipped to the range."""
    bounds = []
    day = start
    while day < end:
        if granularity == "day":
            nxt = day + dt.timedelta(days=1)
        elif granularity == "week":
            nxt = day + dt.timedelta(days=7 - day.weekday())
        else:
            nxt = (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
        bounds.append((day, min(nxt, end)))
        day = nxt
    return bounds


def component(service: str, metric: str | None) -> str:
    """The cost component of a (service, metric) line in the breakdown's shape."""
    if service == "ai_service":
        return "llm_cost" if metric == "llm_tokens" else "compute_cost"
    if service == "query_engine":
        return "storage_cost" if metric == "storage_gb" else "query_cost"
    if service == "ml_service":
        return "training_cost" if metric == "compute_hours" else "serving_cost"
    return "other_cost"


def _usage_cost_to(tenant: Tenant, period: Period, through: dt.date, group_by: str
                   ) -> dict[str, int]:
    """Usage cost (base fee excluded) of ``period`` up to ``through`` per group."""
    if through <= period.start:
        return {}
    costs: dict[str, int] = defaultdict(int)
    for line in rate_period(tenant, period, through=through).lines:
        if line.kind != "overage":
            continue
        if group_by == "user":
            for user, amount in line.by_user.items():
                costs[user] += amount
        else:
            costs[line.metric if group_by == "metric" else line.service] += line.amount_minor
    return costs


@dataclass(frozen=True)
class Bucket:
    start: dt.date
    end: dt.date
    group: str
    quantity: Decimal | None
    cost: int


def usage_buckets(tenant: Tenant, start: dt.date, end: dt.date, granularity: str,
                  group_by: str) -> list[Bucket]:
    """Usage and its cost per bucket of [start, end) and per group. A bucket's cost is
    the growth of the rated usage cost of its billing period over the bucket's days
    (overage only: what the plan includes costs nothing), so the buckets of a period
    add up to its overage lines. Quantities are given for metric groups, in billing
    units (peak metrics: the highest day of the bucket)."""
    anchor = anchor_day(tenant)
    bounds = bucket_bounds(start, end, granularity)
    with tenant_scope(tenant):
        rows = db.session.execute(
            select(UsageRollup.day, UsageRollup.metric, UsageRollup.service,
                   UsageRollup.user_ref, func.sum(UsageRollup.quantity_micro))
            .where(UsageRollup.day >= start, UsageRollup.day < end)
            .group_by(UsageRollup.day, UsageRollup.metric, UsageRollup.service,
                      UsageRollup.user_ref)).all()
    cache: dict[tuple[dt.date, dt.date], dict[str, int]] = {}

    def cost_to(day: dt.date) -> tuple[Period, dict[str, int]]:
        period = period_containing(day - dt.timedelta(days=1), anchor)
        key = (period.start, day)
        if key not in cache:
            cache[key] = _usage_cost_to(tenant, period, day, group_by)
        return period, cache[key]

    result = []
    for first, last in bounds:
        costs: dict[str, int] = defaultdict(int)
        cursor = first
        while cursor < last:  # a bucket may cross a period boundary
            period = period_containing(cursor, anchor)
            upto = min(last, period.end)
            _, after = cost_to(upto)
            before = cost_to(cursor)[1] if cursor > period.start else {}
            for group in set(after) | set(before):
                costs[group] += after.get(group, 0) - before.get(group, 0)
            cursor = upto
        quantities: dict[str, Decimal] = {}
        if group_by == "metric":
            daily: dict[tuple[str, dt.date], int] = defaultdict(int)
            for day, metric, _service, _user, micro in rows:
                if first <= day < last:
                    daily[(metric, day)] += int(micro)
            for code, metric in METRICS.items():
                values = [v for (m, _), v in daily.items() if m == code]
                if values:
                    micro = max(values) if metric.aggregation == PEAK else sum(values)
                    quantities[code] = metric.to_billing_units(from_micro(micro))
        else:
            for _day, _metric, service, user, _micro in (r for r in rows if first <= r[0] < last):
                costs.setdefault(service if group_by == "service" else (user or UNATTRIBUTED), 0)
        for group in sorted(set(costs) | set(quantities)):
            result.append(Bucket(first, last, group, quantities.get(group)
                                 if group_by == "metric" else None, costs.get(group, 0)))
    return result


@dataclass(frozen=True)
class Breakdown:
    period: Period
    currency: str
    total: int
    platform_fee: int
    by_service: dict[str, dict[str, int]]
    by_user: list[dict]
    invoice_number: str | None


def user_names(tenant: Tenant, refs: list[str]) -> dict[str, str]:
    """Display names for the tenant's user references that are portal logins."""
    if not refs:
        return {}
    with tenant_scope(tenant):
        users = db.session.scalars(select(BillfoldUser).where(
            (BillfoldUser.username.in_(refs)) | (BillfoldUser.email.in_(refs)))).all()
    names = {}
    for user in users:
        full = f"{user.first_name} {user.last_name}".strip()
        names[user.username] = names[user.email] = full
    return names


def cost_breakdown(tenant: Tenant, period: Period | None = None,
                   today: dt.date | None = None) -> Breakdown:
    """The period's cost by service and component and by user. A period with an
    invoice is read from the invoice's snapshot, so it reconciles with the invoice
    to the cent; the open period is rated up to today (month to date)."""
    today = today or today_in(tenant.timezone)
    anchor = anchor_day(tenant)
    period = period or period_containing(today, anchor)
    invoice = invoicing.find_invoice(tenant, period)
    if invoice is not None and invoice.snapshot:
        snap = invoicing.snapshot_of(invoice)
        lines = [(ln["service"], ln["metric"], ln["amount"]) for ln in snap["lines"]]
        per_user = {row["user"]: row["amount"] for row in snap["by_user"]}
        total, platform_fee, number = snap["subtotal"], snap["platform_fee"], invoice.number
    else:
        rating = rate_period(tenant, period, through=min(period.end, today + dt.timedelta(days=1)))
        lines = [(ln.service, ln.metric, ln.amount_minor) for ln in rating.lines]
        per_user = rating.by_user()
        total = rating.subtotal_minor
        platform_fee = sum(ln.amount_minor for ln in rating.lines if ln.kind == "base_fee")
        number = None
    by_service = {"ai_service": {"llm_cost": 0, "compute_cost": 0},
                  "query_engine": {"query_cost": 0, "storage_cost": 0},
                  "ml_service": {"training_cost": 0, "serving_cost": 0}}
    for service, metric, amount in lines:
        if metric is None:
            continue
        by_service.setdefault(service, {}).setdefault(component(service, metric), 0)
        by_service[service][component(service, metric)] += amount
    names = user_names(tenant, [u for u in per_user if u != UNATTRIBUTED])
    by_user = [{"user_id": "" if user == UNATTRIBUTED else user,
                "name": "Unattributed" if user == UNATTRIBUTED else names.get(user, user),
                "cost": amount}
               for user, amount in sorted(per_user.items(), key=lambda kv: (-kv[1], kv[0]))]
    return Breakdown(period, tenant.currency, total, platform_fee, by_service, by_user, number)


@dataclass(frozen=True)
class RevenueBucket:
    start: dt.date
    gross: int
    refunds: int
    fees: int

    @property
    def net(self) -> int:
        return self.gross - self.refunds - self.fees


def revenue(start: dt.date, end: dt.date, granularity: str, currency: str
            ) -> list[RevenueBucket]:
    """Money received from tenants billing in ``currency``, per bucket of [start, end)
    in UTC: card purchases of credit and invoice payments other than from credit
    (gross), refunds to cards, and the processor's fees."""
    bounds = bucket_bounds(start, end, granularity)
    low = dt.datetime.combine(start, dt.time(), dt.UTC)
    high = dt.datetime.combine(end, dt.time(), dt.UTC)
    with unscoped():
        purchases = db.session.execute(
            select(CreditPurchase.created_at, CreditPurchase.kind, CreditPurchase.amount_minor,
                   CreditPurchase.fee_minor)
            .where(CreditPurchase.status == "succeeded", CreditPurchase.currency == currency,
                   CreditPurchase.created_at >= low, CreditPurchase.created_at < high)).all()
        payments = db.session.execute(
            select(InvoicePayment.received_at, InvoicePayment.amount_minor)
            .join(Invoice, Invoice.id == InvoicePayment.invoice_id)
            .where(InvoicePayment.method != "credit", Invoice.currency == currency,
                   InvoicePayment.received_at >= low, InvoicePayment.received_at < high)).all()

    def index(moment: dt.datetime) -> int | None:
        day = (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).astimezone(
            dt.UTC).date()
        for n, (first, last) in enumerate(bounds):
            if first <= day < last:
                return n
        return None

    sums = [[0, 0, 0] for _ in bounds]
    for created, kind, amount, fee in purchases:
        n = index(created)
        if n is None:
            continue
        if kind == "purchase":
            sums[n][0] += amount
            sums[n][2] += fee or 0
        else:
            sums[n][1] += amount
    for received, amount in payments:
        n = index(received)
        if n is not None:
            sums[n][0] += amount
    return [RevenueBucket(first, g, r, f) for (first, _), (g, r, f) in zip(bounds, sums,
                                                                           strict=True)]


@dataclass(frozen=True)
class TenantOverview:
    tenant: Tenant
    plan: str | None
    balance: int
    month_to_date: int
    overdue: int


def tenants_overview(before: int | None = None, limit: int = 50
                     ) -> tuple[list[TenantOverview], bool]:
    """Tenants (newest first, by id cursor) with plan, balance, the current period's
    cost so far and what is overdue."""
    with unscoped():
        stmt = select(Tenant).order_by(Tenant.id.desc())
        if before is not None:
            stmt = stmt.where(Tenant.id < before)
        tenants = list(db.session.scalars(stmt.limit(limit + 1)))
    rows = []
    for tenant in tenants[:limit]:
        sub = current_subscription(tenant)
        with tenant_scope(tenant):
            overdue = int(db.session.scalar(
                select(func.coalesce(func.sum(Invoice.total_minor - Invoice.paid_minor), 0))
                .where(Invoice.status == "overdue")) or 0)
        rows.append(TenantOverview(
            tenant, sub.plan_version.plan.name if sub else None, ledger.balance_minor(tenant),
            usage_summary(tenant).cost_so_far.to_minor() if sub else 0, overdue))
    return rows, len(tenants) > limit
