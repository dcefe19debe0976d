"""Usage analytics of a tenant over a date range: spend (usage charges and the plan's
base fee), credit bought and the balance, usage per metric, a per-day table, and
the comparison with the previous range of the same length.

Ranges are days in the tenant's time zone. Usage and its cost come from rollups,
read once per page for the range and the previous one (``read_rollups``) and rated
through ``api.queries.usage_buckets``; credit and balance from the ledger. Money is
in integer minor units throughout."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import select

from api.queries import Bucket, anchor_day, bucket_bounds, usage_buckets
from invoices.models import LedgerEntry
from invoices.rating import allocate
from plans.metering import day_service_rows
from plans.metrics import METRICS, PEAK
from plans.periods import period_containing
from plans.services import SubscriptionHistory
from portal.errors import ValidationFailed
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped

VIEWS = ("week", "month", "year", "custom")
VIEW_LABELS = {"week": "Last 7 days", "month": "Last 30 days", "year": "Last 12 months",
               "custom": "Custom range"}
GRANULARITIES = ("day", "week", "month")
MAX_DAYS = 3 * 366  # a custom range covers at most about three years
MAX_DAILY_DAYS = 400  # day buckets beyond this are refused: each day rates its period
DAILY_TABLE_DAYS = 92  # longer ranges show the per-day table for their last 31 days
DAILY_TABLE_TAIL = 31
PURCHASE_TYPES = ("topup", "auto_recharge")


@dataclass(frozen=True)
class DateRange:
    """Days ``start`` (inclusive) to ``end`` (exclusive) in the tenant's time zone,
    charted in buckets of ``granularity``."""

    view: str
    start: dt.date
    end: dt.date
    granularity: str

    @property
    def last_day(self) -> dt.date:
        return self.end - dt.timedelta(days=1)

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    def previous(self) -> DateRange:
        """The range of the same length that ends where this one starts."""
        return DateRange(self.view, self.start - dt.timedelta(days=self.days), self.start,
                         self.granularity)

    def utc_bounds(self, timezone: str) -> tuple[dt.datetime, dt.datetime]:
        zone = ZoneInfo(timezone)
        return (dt.datetime.combine(self.start, dt.time(), zone).astimezone(dt.UTC),
                dt.datetime.combine(self.end, dt.time(), zone).astimezone(dt.UTC))


def _default_granularity(days: int) -> str:
    if days <= 62:
        return "day"
    return "week" if days <= 190 else "month"


def date_range(view: str, first: dt.date | None, last: dt.date | None, today: dt.date,
               granularity: str | None = None) -> DateRange:
    """The range a page asks for: the last 7 or 30 days or 12 months up to ``today``
    (the tenant's today), or ``first`` to ``last`` inclusive for a custom view.
    Refuses unknown views and granularities, a custom range without both ends, one
    that ends before it starts or is longer than ``MAX_DAYS``, and day buckets over
    more than ``MAX_DAILY_DAYS``."""
    if view not in VIEWS:
        raise ValidationFailed({"view": f"one of {', '.join(VIEWS)}"})
    if granularity is not None and granularity not in GRANULARITIES:
        raise ValidationFailed({"granularity": f"one of {', '.join(GRANULARITIES)}"})
    end = today + dt.timedelta(days=1)
    if view == "week":
        start, default = today - dt.timedelta(days=6), "day"
    elif view == "month":
        start, default = today - dt.timedelta(days=29), "day"
    elif view == "year":
        month = today.year * 12 + today.month - 1 - 11
        start, default = dt.date(month // 12, month % 12 + 1, 1), "month"
    else:
        if first is None or last is None:
            raise ValidationFailed({"from": "a custom range needs both dates"})
        if last < first:
            raise ValidationFailed({"to": "the range ends before it starts"})
        start, end = first, last + dt.timedelta(days=1)
        if (end - start).days > MAX_DAYS:
            raise ValidationFailed({"to": f"a range covers at most {MAX_DAYS} days"})
        default = _default_granularity((end - start).days)
    chosen = granularity or default
    if chosen == "day" and (end - start).days > MAX_DAILY_DAYS:
        raise ValidationFailed({"granularity": f"day buckets cover at most {MAX_DAILY_DAYS} "
                                               "days; choose week or month"})
    return DateRange(view, start, end, chosen)


# -- spend -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpendPoint:
    start: dt.date
    end: dt.date
    usage: int  # usage charges beyond what the plan includes
    plan_fee: int  # the plan's base fee, spread evenly over its period's days
    cumulative: int  # spend from the range's start to this bucket's end

    @property
    def total(self) -> int:
        return self.usage + self.plan_fee


def plan_fee_by_day(tenant: Tenant, start: dt.date, end: dt.date,
                    history: SubscriptionHistory | None = None) -> dict[dt.date, int]:
    """The base fee of each billing period that overlaps [start, end), each plan
    segment's rounded fee shared evenly and exactly over its days; days of the range
    only. ``history``: the tenant's subscriptions when already read."""
    history = history or SubscriptionHistory.of(tenant)
    fees: dict[dt.date, int] = {}
    period = period_containing(start, history.anchor_day)
    while period.start < end:
        for segment in history.base_fee_segments(period):
            days = [segment.starts_on + dt.timedelta(days=n) for n in range(segment.days)]
            shares = allocate(segment.amount.to_minor(), dict.fromkeys(days, 1))
            for day, amount in shares.items():
                if start <= day < end:
                    fees[day] = fees.get(day, 0) + amount
        period = period.next()
    return fees


def spend_series(tenant: Tenant, rng: DateRange, buckets: list[Bucket],
                 history: SubscriptionHistory | None = None) -> list[SpendPoint]:
    """Spend per bucket of ``rng`` from the metric buckets of ``usage_buckets`` and
    the plan fee; over a whole billing period it adds up to the period's subtotal."""
    usage: dict[dt.date, int] = defaultdict(int)
    for bucket in buckets:
        usage[bucket.start] += bucket.cost
    fees = plan_fee_by_day(tenant, rng.start, rng.end, history)
    points, running = [], 0
    for first, last in bucket_bounds(rng.start, rng.end, rng.granularity):
        fee = sum(amount for day, amount in fees.items() if first <= day < last)
        running += usage[first] + fee
        points.append(SpendPoint(first, last, usage[first], fee, running))
    return points


# -- credit and balance ------------------------------------------------------------------

@dataclass(frozen=True)
class CreditPoint:
    start: dt.date
    end: dt.date
    purchased: int  # top-ups and auto-recharges booked in the bucket
    cumulative: int  # purchased from the range's start to this bucket's end
    balance: int  # the balance at the bucket's end (the last entry's balance_after)


def credit_series(tenant: Tenant, rng: DateRange) -> list[CreditPoint]:
    """Credit bought per bucket, its running sum, and the balance at each bucket's
    end; a bucket without entries carries the balance forward."""
    low, high = rng.utc_bounds(tenant.timezone)
    zone = ZoneInfo(tenant.timezone)
    with tenant_scope(tenant):
        opening = db.session.scalar(
            select(LedgerEntry.balance_after_minor).where(LedgerEntry.created_at < low)
            .order_by(LedgerEntry.id.desc()).limit(1))
        entries = db.session.execute(
            select(LedgerEntry.created_at, LedgerEntry.type, LedgerEntry.amount_minor,
                   LedgerEntry.balance_after_minor)
            .where(LedgerEntry.created_at >= low, LedgerEntry.created_at < high)
            .order_by(LedgerEntry.id)).all()
    balance = opening or 0
    by_day: list[tuple[dt.date, str, int, int]] = []
    for created, kind, amount, after in entries:
        moment = created if created.tzinfo else created.replace(tzinfo=dt.UTC)
        by_day.append((moment.astimezone(zone).date(), kind, amount, after))
    points, running, index = [], 0, 0
    for first, last in bucket_bounds(rng.start, rng.end, rng.granularity):
        bought = 0
        while index < len(by_day) and by_day[index][0] < last:
            _day, kind, amount, after = by_day[index]
            if kind in PURCHASE_TYPES:
                bought += amount
            balance = after
            index += 1
        running += bought
        points.append(CreditPoint(first, last, bought, running, balance))
    return points


# -- usage per metric and per day ---------------------------------------------------------

@dataclass(frozen=True)
class DailyUsage:
    day: dt.date
    metric: str
    services: tuple[str, ...]
    calls: int  # events of the day, from the rollups' event counts
    quantity: Decimal  # in billing units (peak metrics: the day's value)
    cost: int


@dataclass(frozen=True)
class Rollups:
    """A tenant's rollups of a span of days per day, metric and service, read once for
    every series of a page: ``rows`` in the form ``rollup_rows`` gives them with users
    summed (what ``usage_buckets`` rates by metric), and ``calls``, the event count per
    (day, metric, service)."""

    rows: list[tuple[dt.date, str, str, str, int]]
    calls: dict[tuple[dt.date, str, str], int]

    def total_calls(self, start: dt.date, end: dt.date) -> int:
        return sum(n for (day, _, _), n in self.calls.items() if start <= day < end)


def read_rollups(tenant: Tenant, start: dt.date, end: dt.date) -> Rollups:
    """The rollups of the days [start, end) per day, metric and service, the users
    added up (``plans.metering.day_service_rows``)."""
    result = day_service_rows(tenant, start, end)
    return Rollups([(day, metric, service, "", micro)
                    for day, metric, service, micro, _ in result],
                   {(day, metric, service): count
                    for day, metric, service, _, count in result})


def _rollups_for(tenant: Tenant, start: dt.date, end: dt.date,
                 history: SubscriptionHistory | None = None) -> Rollups:
    """The rollups that rating [start, end) needs: from the start of its first billing
    period."""
    anchor = history.anchor_day if history is not None else anchor_day(tenant)
    return read_rollups(tenant, period_containing(start, anchor).start, end)


def daily_usage(tenant: Tenant, start: dt.date, end: dt.date,
                buckets: list[Bucket] | None = None, rollups: Rollups | None = None,
                history: SubscriptionHistory | None = None) -> list[DailyUsage]:
    """One row per day and metric with usage or cost in [start, end): the services
    that used it, the event count, the quantity and the day's cost, oldest first.
    ``buckets``: the range's day buckets by metric when already computed; ``rollups``:
    rollups already read from the start of the billing period of ``start`` to ``end``
    at least; ``history``: the tenant's subscriptions when already read."""
    if rollups is None:
        rollups = _rollups_for(tenant, start, end, history)
    if buckets is None:
        buckets = usage_buckets(tenant, start, end, "day", "metric", rows=rollups.rows,
                                history=history)
    calls: dict[tuple[dt.date, str], int] = defaultdict(int)
    services: dict[tuple[dt.date, str], set[str]] = defaultdict(set)
    for (day, metric, service), count in rollups.calls.items():
        if start <= day < end:
            calls[(day, metric)] += count
            services[(day, metric)].add(service)
    order = {code: n for n, code in enumerate(METRICS)}
    rows = [DailyUsage(b.start, b.group, tuple(sorted(services[(b.start, b.group)])),
                       calls[(b.start, b.group)], b.quantity or Decimal(0), b.cost)
            for b in buckets
            if b.group in METRICS and ((b.start, b.group) in services or b.cost)]
    return sorted(rows, key=lambda r: (r.day, order[r.metric]))


def daily_of(tenant: Tenant, result: Analytics) -> tuple[DateRange, list[DailyUsage]]:
    """The per-day table of an analytics result: its days and rows, reusing the
    result's buckets when they are already by day."""
    table = daily_table_range(result.range)
    reuse = table == result.range and result.range.granularity == "day"
    return table, daily_usage(tenant, table.start, table.end,
                              result.usage if reuse else None, result.rollups,
                              result.history)


def daily_table_range(rng: DateRange) -> DateRange:
    """The days the per-day table shows: the whole range, or its last 31 days when
    the range is long."""
    if rng.days <= DAILY_TABLE_DAYS:
        return rng
    return DateRange(rng.view, rng.end - dt.timedelta(days=DAILY_TABLE_TAIL), rng.end, "day")


# -- totals and the comparison --------------------------------------------------------------

@dataclass(frozen=True)
class Totals:
    spend: int
    usage: int
    plan_fee: int
    purchased: int
    calls: int
    quantities: dict[str, Decimal]


def _quantities(buckets: list[Bucket]) -> dict[str, Decimal]:
    result: dict[str, Decimal] = {}
    for bucket in buckets:
        if bucket.group not in METRICS or bucket.quantity is None:
            continue
        if METRICS[bucket.group].aggregation == PEAK:
            result[bucket.group] = max(result.get(bucket.group, Decimal(0)), bucket.quantity)
        else:
            result[bucket.group] = result.get(bucket.group, Decimal(0)) + bucket.quantity
    return result


def totals(tenant: Tenant, rng: DateRange, buckets: list[Bucket] | None = None,
           spend: list[SpendPoint] | None = None, credit: list[CreditPoint] | None = None,
           rollups: Rollups | None = None, history: SubscriptionHistory | None = None
           ) -> Totals:
    """The range's totals; series already computed for it are reused, and rollups
    already read from the start of the billing period of its first day to its end,
    and the tenant's subscriptions."""
    history = history or SubscriptionHistory.of(tenant)
    if rollups is None:
        rollups = _rollups_for(tenant, rng.start, rng.end, history)
    if buckets is None:
        # One bucket per billing month keeps the rating to a few prefixes.
        buckets = usage_buckets(tenant, rng.start, rng.end, "month", "metric",
                                rows=rollups.rows, history=history)
    usage = sum(b.cost for b in buckets)
    if spend is None:
        plan_fee = sum(plan_fee_by_day(tenant, rng.start, rng.end, history).values())
    else:
        plan_fee = sum(p.plan_fee for p in spend)
    if credit is None:
        purchased = credit_series(tenant, DateRange(rng.view, rng.start, rng.end, "month"))
        bought = sum(p.purchased for p in purchased)
    else:
        bought = sum(p.purchased for p in credit)
    return Totals(usage + plan_fee, usage, plan_fee, bought,
                  rollups.total_calls(rng.start, rng.end), _quantities(buckets))


@dataclass(frozen=True)
class Change:
    key: str
    label: str
    kind: str  # "money" (minor units) or "quantity"
    current: int | Decimal
    previous: int | Decimal
    unit: str = ""

    @property
    def percent(self) -> Decimal | None:
        """The change in percent, one decimal; None when the previous value is zero."""
        if not self.previous:
            return None
        change = (Decimal(self.current) - Decimal(self.previous)) * 100 / Decimal(self.previous)
        return change.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def compare(current: Totals, previous: Totals) -> list[Change]:
    """Each total beside the previous range's."""
    changes = [Change("spend", "Total spend", "money", current.spend, previous.spend),
               Change("usage", "Usage charges", "money", current.usage, previous.usage),
               Change("plan_fee", "Plan fee", "money", current.plan_fee, previous.plan_fee),
               Change("purchased", "Credit purchased", "money", current.purchased,
                      previous.purchased),
               Change("calls", "Calls (events)", "quantity", current.calls, previous.calls,
                      "events")]
    for code, metric in METRICS.items():
        now, then = current.quantities.get(code), previous.quantities.get(code)
        if now is None and then is None:
            continue
        changes.append(Change(code, metric.label, "quantity", now or Decimal(0),
                              then or Decimal(0), metric.unit))
    return changes


@dataclass(frozen=True)
class Analytics:
    tenant: Tenant
    range: DateRange
    previous: DateRange
    usage: list[Bucket]  # per bucket and metric: quantity and cost
    spend: list[SpendPoint]
    credit: list[CreditPoint]
    totals: Totals
    previous_totals: Totals
    changes: list[Change]
    rollups: Rollups  # what the series were computed from, for the per-day table
    history: SubscriptionHistory  # the subscriptions they were rated with


def analytics(tenant: Tenant, rng: DateRange) -> Analytics:
    """Every chart's series for ``rng`` and the comparison with the range before it,
    from one read of the rollups of both ranges."""
    previous_range = rng.previous()
    history = SubscriptionHistory.of(tenant)
    rollups = _rollups_for(tenant, previous_range.start, rng.end, history)
    buckets = usage_buckets(tenant, rng.start, rng.end, rng.granularity, "metric",
                            rows=rollups.rows, history=history)
    spend = spend_series(tenant, rng, buckets, history)
    credit = credit_series(tenant, rng)
    current = totals(tenant, rng, buckets, spend, credit, rollups, history)
    previous = totals(tenant, previous_range, rollups=rollups, history=history)
    return Analytics(tenant, rng, previous_range, buckets, spend, credit, current, previous,
                     compare(current, previous), rollups, history)


def quantity_of(value: Decimal | None) -> Decimal | None:
    """A quantity for JSON and CSV: exact, without trailing zeros of the micro unit."""
    if value is None:
        return None
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()



def tenant_currencies() -> list[str]:
    """The currencies tenants bill in, for the revenue view's choice (all tenants)."""
    with unscoped():
        return sorted(db.session.scalars(select(Tenant.currency).distinct()))
