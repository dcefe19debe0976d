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
from invoices.rating import Rating, rate_period, rate_prefixes, rollup_rows
from plans.metrics import METRICS, PEAK
from plans.models import Subscription, from_micro
from plans.periods import Period, period_containing, today_in
from plans.services import SubscriptionHistory, current_subscription
from plans.usage import usage_summary
from portal.extensions import db
from tenants.models import BillfoldUser, Tenant
from tenants.scoping import tenant_scope, unscoped

GRANULARITIES = ("day", "week", "month")
GROUPS = ("metric", "service", "user")
UNATTRIBUTED = "(unattributed)"


def anchor_day(tenant: Tenant) -> int:
    with tenant_scope(tenant):
        sub = db.session.scalar(select(Subscription).order_by(Subscription.starts_on.desc(),
                                                               Subscription.id.desc()))
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


def _usage_costs(rating: Rating, group_by: str) -> dict[str, int]:
    """Usage cost (base fee excluded) of a rating per group."""
    costs: dict[str, int] = defaultdict(int)
    for line in rating.lines:
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
                  group_by: str, rows: list[tuple[dt.date, str, str, str, int]] | None = None,
                  history: SubscriptionHistory | None = None) -> list[Bucket]:
    """Usage and its cost per bucket of [start, end) and per group. A bucket's cost is
    the growth of the rated usage cost of its billing period over the bucket's days
    (overage only: what the plan includes costs nothing), so the buckets of a period
    add up to its overage lines. Quantities are given for metric groups, in billing
    units (peak metrics: the highest day of the bucket).

    The rollups are read once, from the start of the first billing period to ``end``
    (users summed unless grouping by user), and each period is rated at every bucket
    edge within it from those rows (``rate_prefixes``). ``rows``: such rows when
    already read, in ``rollup_rows``' form (rows of other days are left out);
    ``history``: the tenant's subscriptions when already read."""
    history = history or SubscriptionHistory.of(tenant)
    anchor = history.anchor_day
    bounds = bucket_bounds(start, end, granularity)
    # Each bucket as its parts within one billing period: (period, from, to).
    parts: list[list[tuple[Period, dt.date, dt.date]]] = []
    edges: dict[Period, set[dt.date]] = defaultdict(set)
    for first, last in bounds:
        cursor, pieces = first, []
        while cursor < last:  # a bucket may cross a period boundary
            period = period_containing(cursor, anchor)
            upto = min(last, period.end)
            pieces.append((period, cursor, upto))
            edges[period].add(upto)
            if cursor > period.start:
                edges[period].add(cursor)
            cursor = upto
        parts.append(pieces)
    if rows is None:
        first_day = min((p.start for p in edges), default=start)
        rows = rollup_rows(tenant, first_day, end, users=group_by == "user")
    period_rows: dict[Period, list[tuple[dt.date, str, str, str, int]]] = defaultdict(list)
    period_of: dict[dt.date, Period] = {}
    for row in rows:
        day = row[0]
        if day not in period_of:
            period_of[day] = period_containing(day, anchor)
        period_rows[period_of[day]].append(row)
    costs_to: dict[tuple[Period, dt.date], dict[str, int]] = {}
    for period, days in edges.items():
        ratings = rate_prefixes(tenant, period, sorted(days), rows=period_rows[period],
                                history=history)
        for day, rating in ratings.items():
            costs_to[(period, day)] = _usage_costs(rating, group_by)

    index = {day: n for n, (first, last) in enumerate(bounds)
             for day in (first + dt.timedelta(days=d) for d in range((last - first).days))}
    daily: dict[tuple[int, str, dt.date], int] = defaultdict(int)
    seen: list[set[str]] = [set() for _ in bounds]
    for day, metric, service, user, micro in rows:
        n = index.get(day)
        if n is None:
            continue
        if group_by == "metric":
            daily[(n, metric, day)] += micro
        else:
            seen[n].add(service if group_by == "service" else (user or UNATTRIBUTED))
    per_bucket: list[dict[str, list[int]]] = [defaultdict(list) for _ in bounds]
    for (n, metric, _day), micro in daily.items():
        per_bucket[n][metric].append(micro)

    result = []
    for n, (first, last) in enumerate(bounds):
        costs: dict[str, int] = defaultdict(int)
        for period, cursor, upto in parts[n]:
            after = costs_to[(period, upto)]
            before = costs_to[(period, cursor)] if cursor > period.start else {}
            for group in set(after) | set(before):
                costs[group] += after.get(group, 0) - before.get(group, 0)
        quantities: dict[str, Decimal] = {}
        if group_by == "metric":
            for code, metric in METRICS.items():
                values = per_bucket[n].get(code)
                if values:
                    micro = max(values) if metric.aggregation == PEAK else sum(values)
                    quantities[code] = metric.to_billing_units(from_micro(micro))
        else:
            for group in seen[n]:
                costs.setdefault(group, 0)
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
