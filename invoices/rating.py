"""Rating: a billing period's rollups priced against the plan versions in force.

For each plan segment of the period (a plan change mid-period makes two):
* the base fee, prorated by day (``plans.services.base_fee_segments``);
* per summed metric, the usage of the segment's days beyond the included amount,
  itself prorated by the segment's share of the period, at the plan's unit price;
* storage, billed on its peak: the highest daily total of the segment beyond the
  included gigabytes (capacity is not prorated).

A metric's billable quantity is shared among the services that used it in
proportion to their usage, exactly to the millionth (largest remainder), and each
(segment, metric, service) is one line, rounded once to the minor unit
(``portal.money``). Line amounts are shared among end users the same way, in minor
units, so the per-user summary adds up to the lines to the cent. Totals are sums of
rounded lines. Reads rollups only: ``rate_period`` has the database sum a segment's
days, and ``rate_prefixes`` rates several prefixes of a period (month to date at
each day, for charts) from one read of its rollups by day.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import CompoundSelect, Select, func, select

from plans.metering import (
    SpanShape,
    by_metric,
    day_service_rows,
    metric_label,
    span_bind,
    span_params,
    span_shape,
    summed_by_user,
)
from plans.metrics import METRICS, PEAK
from plans.models import PlanVersion, UsageRollup, from_micro
from plans.periods import Period
from plans.services import BaseFeeSegment, SubscriptionHistory, base_fee_segments
from portal.extensions import db
from portal.money import Money, round_minor
from tenants.models import Tenant
from tenants.scoping import tenant_scope

PLATFORM_SERVICE = "platform"
UNATTRIBUTED = "(unattributed)"
MICRO = Decimal("0.000001")
PEAK_METRICS = tuple(code for code, metric in METRICS.items() if metric.aggregation == PEAK)


def allocate(total: int, weights: dict) -> dict:
    """Split the integer ``total`` over ``weights`` in proportion, exactly: each share
    is rounded down and the remainder goes one unit at a time to the largest
    fractions (ties by key order). Zero weights get nothing."""
    if len(weights) == 1:
        ((key, weight),) = weights.items()
        return {key: total if weight > 0 else 0}
    positive = {k: w for k, w in weights.items() if w > 0}
    whole = sum(positive.values())
    if total == 0 or whole == 0:
        return dict.fromkeys(weights, 0)
    shares, remainders = {}, []
    for key, weight in positive.items():
        share, rest = divmod(total * weight, whole)
        shares[key] = share
        if rest:  # a share without a fraction never gets a unit of the remainder
            remainders.append((-rest, str(key), key))
    left = total - sum(shares.values())
    if left:
        for _, _, key in sorted(remainders)[:left]:
            shares[key] += 1
    if len(shares) == len(weights):
        return shares
    return {k: shares.get(k, 0) for k in weights}


@dataclass
class RatedLine:
    kind: str  # base_fee or overage
    description: str
    metric: str | None
    service: str
    quantity: Decimal
    unit_price: Decimal
    amount_minor: int
    segment_start: dt.date
    segment_end: dt.date
    by_user: dict[str, int] = field(default_factory=dict)  # minor units per end user


@dataclass
class MetricUsageLine:
    metric: str
    segment_start: dt.date
    segment_end: dt.date
    used: Decimal
    included: Decimal | None
    billable: Decimal
    unit_price: Decimal


@dataclass
class Rating:
    tenant: Tenant
    period: Period
    through: dt.date  # exclusive end of the days rated
    lines: list[RatedLine]
    usage: list[MetricUsageLine]
    segments: list[BaseFeeSegment]

    @property
    def versions(self) -> list[PlanVersion]:
        return [segment.plan_version for segment in self.segments]

    @property
    def currency(self) -> str:
        return self.tenant.currency

    @property
    def subtotal_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)

    def by_service(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for line in self.lines:
            totals[line.service] += line.amount_minor
        return dict(totals)

    def by_user(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for line in self.lines:
            for user, amount in line.by_user.items():
                totals[user] += amount
        return dict(totals)


def rollup_rows(tenant: Tenant, start: dt.date, end: dt.date, users: bool = True
                ) -> list[tuple[dt.date, str, str, str, int]]:
    """(day, metric, service, user, micro) of the days [start, end). Without ``users``
    the day's users are summed into one row per service, with user ``""``: rated, such
    rows give the same lines, only without their share per user."""
    if not users:
        return [(day, metric, service, "", micro)
                for day, metric, service, micro, _ in day_service_rows(tenant, start, end)]

    def of_metric(metric: str) -> Select:
        return (select(UsageRollup.day, metric_label(metric), UsageRollup.service,
                       UsageRollup.user_ref, UsageRollup.quantity_micro)
                .where(UsageRollup.metric == metric, UsageRollup.day >= start,
                       UsageRollup.day < end))

    with tenant_scope(tenant):
        rows = db.session.execute(by_metric(of_metric)).all()
    # int(): PostgreSQL sums bigints as numeric.
    return [(day, metric, service, ref, int(micro)) for day, metric, service, ref, micro in rows]


def _span(start: dt.date, end: dt.date) -> str:
    last = end - dt.timedelta(days=1)
    return f"{start:%b} {start.day}–{last:%b} {last.day}, {last.year}"


@functools.cache
def _usage_statement(shape: SpanShape) -> Select | CompoundSelect:
    """``_Usage.read``'s statement for spans of ``shape``, built once: per summed metric
    its total per (service, user), per peak metric its peak day's values."""
    start, end = span_bind("start"), span_bind("end")

    def of_metric(metric: str) -> Select:
        if metric not in PEAK_METRICS:
            return summed_by_user(metric, shape)
        peak_day = (select(UsageRollup.day)
                    .where(UsageRollup.metric == metric, UsageRollup.day >= start,
                           UsageRollup.day < end)
                    .group_by(UsageRollup.day)
                    .order_by(func.sum(UsageRollup.quantity_micro).desc(), UsageRollup.day)
                    .limit(1).scalar_subquery())
        return (select(metric_label(metric), UsageRollup.service, UsageRollup.user_ref,
                       UsageRollup.quantity_micro)
                .where(UsageRollup.metric == metric, UsageRollup.day == peak_day))

    return by_metric(of_metric)


class _Usage:
    """The usage of a segment's days as rating needs it: per summed metric the total
    per (service, user); per peak metric the total of the day with the highest one
    (the earliest of equal days) and that day's values per (service, user). ``seen``:
    the metrics with rollup rows on those days."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.sums: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
        self.peaks: dict[str, tuple[int, dict[tuple[str, str], int]]] = {}

    def add_day(self, rows: list[tuple[str, str, str, int]]) -> None:
        """One more day's (metric, service, user, micro); days come in ascending order."""
        day_cells: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
        for metric, service, user, micro in rows:
            self.seen.add(metric)
            if metric in PEAK_METRICS:
                day_cells[metric][(service, user)] = micro
            else:
                cells = self.sums[metric]
                cells[(service, user)] = cells.get((service, user), 0) + micro
        for metric, cells in day_cells.items():
            total = sum(cells.values())
            if metric not in self.peaks or total > self.peaks[metric][0]:
                self.peaks[metric] = (total, cells)

    @classmethod
    def read(cls, tenant: Tenant, start: dt.date, end: dt.date) -> _Usage:
        """The usage of the days [start, end), summed by the database in one statement:
        per summed metric the total per (service, user) over the days; per peak metric
        the values per (service, user) of its peak day, the day with the highest total
        (the earliest of equal days)."""
        with tenant_scope(tenant):
            rows = db.session.execute(_usage_statement(span_shape(start, end)),
                                      span_params(tenant.id, start, end)).all()
        usage = cls()
        peak_cells: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
        # int(): PostgreSQL sums bigints as numeric.
        for metric, service, user, micro in rows:
            usage.seen.add(metric)
            if metric in PEAK_METRICS:
                peak_cells[metric][(service, user)] = int(micro)
            else:
                usage.sums[metric][(service, user)] = int(micro)
        for metric, values in peak_cells.items():
            usage.peaks[metric] = (sum(values.values()), values)
        return usage


def rate_period(tenant: Tenant, period: Period, through: dt.date | None = None) -> Rating:
    """The lines of ``period`` for ``tenant``; with ``through`` (exclusive), only the
    days before it (a month-to-date estimate: the base fee stays the period's). The
    database sums each plan segment's rollups, so the rows read do not grow with the
    days rated."""
    end = min(period.end, through) if through else period.end
    segments = base_fee_segments(tenant, period)
    rated = []
    for segment in segments:
        seg_end = min(segment.ends_on, end)
        rated.append(None if seg_end <= segment.starts_on else _usage_lines(
            period, segment.plan_version, segment.starts_on, seg_end, segment.days,
            tenant.currency, _Usage.read(tenant, segment.starts_on, seg_end)))
    return _rating(tenant, period, end, segments, rated)


def rate_prefixes(tenant: Tenant, period: Period, throughs: list[dt.date | None],
                  rows: list[tuple[dt.date, str, str, str, int]] | None = None,
                  history: SubscriptionHistory | None = None
                  ) -> dict[dt.date | None, Rating]:
    """``rate_period`` of ``period`` through each of ``throughs``, by through, from one
    read of the period's rollups by day (``rows`` as ``rollup_rows`` gives them, when
    already read): each plan segment's days are added in order to running totals, and
    each prefix is rated from them when it is reached. ``history``: the tenant's
    subscriptions when already read."""
    ends = {through: min(period.end, through) if through else period.end
            for through in throughs}
    segments = (history.base_fee_segments(period) if history is not None
                else base_fee_segments(tenant, period))
    last = max(ends.values(), default=period.start)
    if rows is None:
        rated = any(min(s.ends_on, last) > s.starts_on for s in segments)
        rows = rollup_rows(tenant, period.start, last) if rated else []
    by_day: dict[dt.date, list[tuple[str, str, str, int]]] = defaultdict(list)
    for day, metric, service, user, micro in rows:
        by_day[day].append((metric, service, user, micro))
    per_segment: list[dict[dt.date, tuple[list[RatedLine], list[MetricUsageLine]]]] = []
    for segment in segments:
        rated_to: dict[dt.date, tuple[list[RatedLine], list[MetricUsageLine]]] = {}
        usage, day = _Usage(), segment.starts_on
        for end in sorted(set(ends.values())):
            seg_end = min(segment.ends_on, end)
            if seg_end <= segment.starts_on or seg_end in rated_to:
                continue
            while day < seg_end:
                usage.add_day(by_day.get(day, []))
                day += dt.timedelta(days=1)
            rated_to[seg_end] = _usage_lines(period, segment.plan_version, segment.starts_on,
                                             seg_end, segment.days, tenant.currency, usage)
        per_segment.append(rated_to)
    return {through: _rating(tenant, period, end, segments,
                             [rated_to.get(min(segment.ends_on, end)) for segment, rated_to
                              in zip(segments, per_segment, strict=True)])
            for through, end in ends.items()}


def _rating(tenant: Tenant, period: Period, end: dt.date, segments: list[BaseFeeSegment],
            rated: list[tuple[list[RatedLine], list[MetricUsageLine]] | None]) -> Rating:
    """The rating through ``end`` from each segment's usage lines (None: no day of the
    segment rated), after the segment's base fee."""
    lines: list[RatedLine] = []
    usage_lines: list[MetricUsageLine] = []
    for segment, segment_rated in zip(segments, rated, strict=True):
        base = _base_fee_line(period, segment)
        if base is not None:
            lines.append(base)
        if segment_rated is not None:
            lines.extend(segment_rated[0])
            usage_lines.extend(segment_rated[1])
    return Rating(tenant, period, end, lines, usage_lines, segments)


def _base_fee_line(period: Period, segment: BaseFeeSegment) -> RatedLine | None:
    base_minor = segment.amount.to_minor()
    if not base_minor:
        return None
    prorated = segment.days != period.days
    return RatedLine(
        "base_fee",
        f"{segment.plan_version.plan.name} plan, {_span(segment.starts_on, segment.ends_on)}"
        + (f" (prorated {segment.days}/{period.days} days)" if prorated else ""),
        None, PLATFORM_SERVICE,
        (Decimal(segment.days) / Decimal(period.days)).quantize(MICRO),
        segment.monthly_price.amount, base_minor, segment.starts_on, segment.ends_on)


def _usage_lines(period: Period, version: PlanVersion, start: dt.date, end: dt.date,
                 segment_days: int, currency: str, usage: _Usage
                 ) -> tuple[list[RatedLine], list[MetricUsageLine]]:
    """The overage lines of a segment's days [start, end) and its usage per metric."""
    lines: list[RatedLine] = []
    usage_lines: list[MetricUsageLine] = []
    span = _span(start, end)
    for code, metric in METRICS.items():
        price = version.price_for(code)
        included = price.included if price else None
        unit_price = price.unit_price if price else Decimal(0)
        if metric.aggregation == PEAK:
            peak = usage.peaks.get(code)
            weights = peak[1] if peak else {}
            used = metric.to_billing_units(from_micro(peak[0])) if peak else Decimal(0)
            allowance = included
        else:
            weights = usage.sums.get(code, {})
            used = metric.to_billing_units(from_micro(sum(weights.values())))
            allowance = (None if included is None
                         else included * segment_days / period.days)
        # No included amount means unlimited: nothing is billable.
        billable = (Decimal(0) if allowance is None
                    else max(Decimal(0), used - allowance)).quantize(MICRO)
        if code in usage.seen:
            usage_lines.append(MetricUsageLine(code, start, end, used, included, billable,
                                               unit_price))
        if billable <= 0 or unit_price == 0:
            continue
        # In order of service, then user.
        by_service_micro: dict[str, int] = defaultdict(int)
        by_service_user: dict[str, dict[str, int]] = defaultdict(dict)
        for (service, user), micro in sorted(weights.items()):
            by_service_micro[service] += micro
            by_service_user[service][user] = micro
        shares = allocate(int(billable / MICRO), by_service_micro)
        description = f"{metric.label} over the included amount, {span}"
        for service, share_micro in shares.items():
            if share_micro == 0:
                continue
            quantity = Decimal(share_micro) * MICRO
            amount = round_minor(quantity * unit_price, currency)
            users = by_service_user[service]
            if len(users) == 1:
                # The service's only user used all of its share (rows without users).
                by_user = {(next(iter(users)) or UNATTRIBUTED): amount} if amount else {}
            else:
                by_user = {u or UNATTRIBUTED: a for u, a in allocate(amount, users).items() if a}
            lines.append(RatedLine("overage", description, code, service, quantity, unit_price,
                                   amount, start, end, by_user=by_user))
    return lines, usage_lines


def estimate_minor(rating: Rating) -> Money:
    return Money.from_minor(rating.subtotal_minor, rating.currency)
