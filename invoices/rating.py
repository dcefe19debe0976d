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
rounded lines. Reads rollups only.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import func, select

from plans.metrics import METRICS, PEAK
from plans.models import PlanVersion, UsageRollup, from_micro
from plans.periods import Period
from plans.services import BaseFeeSegment, base_fee_segments
from portal.extensions import db
from portal.money import Money, round_minor
from tenants.models import Tenant
from tenants.scoping import tenant_scope

PLATFORM_SERVICE = "platform"
MICRO = Decimal("0.000001")


def allocate(total: int, weights: dict) -> dict:
    """Split the integer ``total`` over ``weights`` in proportion, exactly: each share
    is rounded down and the remainder goes one unit at a time to the largest
    fractions (ties by key order). Zero weights get nothing."""
    positive = {k: w for k, w in weights.items() if w > 0}
    whole = sum(positive.values())
    if total == 0 or whole == 0:
        return {k: 0 for k in weights}
    shares, remainders = {}, []
    for key, weight in positive.items():
        share, rest = divmod(total * weight, whole)
        shares[key] = share
        remainders.append((-rest, str(key), key))
    for _, _, key in sorted(remainders)[: total - sum(shares.values())]:
        shares[key] += 1
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


def _rollups(tenant: Tenant, start: dt.date, end: dt.date):
    """(day, metric, service, user, micro) of the days [start, end)."""
    with tenant_scope(tenant):
        return db.session.execute(
            select(UsageRollup.day, UsageRollup.metric, UsageRollup.service,
                   UsageRollup.user_ref, func.sum(UsageRollup.quantity_micro))
            .where(UsageRollup.day >= start, UsageRollup.day < end)
            .group_by(UsageRollup.day, UsageRollup.metric, UsageRollup.service,
                      UsageRollup.user_ref)
        ).all()


def _span(start: dt.date, end: dt.date) -> str:
    last = end - dt.timedelta(days=1)
    return f"{start:%b} {start.day}–{last:%b} {last.day}, {last.year}"


def rate_period(tenant: Tenant, period: Period, through: dt.date | None = None) -> Rating:
    """The lines of ``period`` for ``tenant``; with ``through`` (exclusive), only the
    days before it (a month-to-date estimate: the base fee stays the period's)."""
    end = min(period.end, through) if through else period.end
    lines: list[RatedLine] = []
    usage_lines: list[MetricUsageLine] = []
    currency = tenant.currency
    segments = base_fee_segments(tenant, period)
    for segment in segments:
        version = segment.plan_version
        plan_name = version.plan.name
        base_minor = segment.amount.to_minor()
        if base_minor:
            prorated = segment.days != period.days
            lines.append(RatedLine(
                "base_fee",
                f"{plan_name} plan, {_span(segment.starts_on, segment.ends_on)}"
                + (f" (prorated {segment.days}/{period.days} days)" if prorated else ""),
                None, PLATFORM_SERVICE,
                (Decimal(segment.days) / Decimal(period.days)).quantize(MICRO),
                segment.monthly_price.amount, base_minor, segment.starts_on, segment.ends_on))
        seg_end = min(segment.ends_on, end)
        if seg_end <= segment.starts_on:
            continue
        lines.extend(_usage_lines(tenant, period, version, segment.starts_on, seg_end,
                                  segment.days, currency, usage_lines))
    return Rating(tenant, period, end, lines, usage_lines, segments)


def _usage_lines(tenant: Tenant, period: Period, version: PlanVersion, start: dt.date,
                 end: dt.date, segment_days: int, currency: str,
                 usage_lines: list[MetricUsageLine]) -> list[RatedLine]:
    per_metric: dict[str, dict[tuple[dt.date, str, str], int]] = defaultdict(dict)
    for day, metric, service, user, micro in _rollups(tenant, start, end):
        per_metric[metric][(day, service, user)] = int(micro)
    lines = []
    for code, metric in METRICS.items():
        cells = per_metric.get(code, {})
        price = version.price_for(code)
        included = price.included if price else None
        unit_price = price.unit_price if price else Decimal(0)
        if metric.aggregation == PEAK:
            daily: dict[dt.date, int] = defaultdict(int)
            for (day, _, _), micro in cells.items():
                daily[day] += micro
            peak_day = min(daily, key=lambda d: (-daily[d], d)) if daily else None
            weights = {(s, u): m for (d, s, u), m in cells.items() if d == peak_day}
            used = metric.to_billing_units(from_micro(daily[peak_day])) if peak_day else Decimal(0)
            allowance = included
        else:
            weights = defaultdict(int)
            for (_, service, user), micro in cells.items():
                weights[(service, user)] += micro
            used = metric.to_billing_units(from_micro(sum(weights.values())))
            allowance = (None if included is None
                         else included * segment_days / period.days)
        # No included amount means unlimited: nothing is billable.
        billable = (Decimal(0) if allowance is None
                    else max(Decimal(0), used - allowance)).quantize(MICRO)
        if cells:
            usage_lines.append(MetricUsageLine(code, start, end, used, included, billable,
                                               unit_price))
        if billable <= 0 or unit_price == 0:
            continue
        by_service_micro: dict[str, int] = defaultdict(int)
        for (service, _), micro in weights.items():
            by_service_micro[service] += micro
        shares = allocate(int(billable / MICRO), dict(sorted(by_service_micro.items())))
        for service, share_micro in shares.items():
            quantity = Decimal(share_micro) * MICRO
            amount = round_minor(quantity * unit_price, currency)
            if share_micro == 0:
                continue
            users = {u: m for (s, u), m in sorted(weights.items()) if s == service}
            lines.append(RatedLine(
                "overage",
                f"{metric.label} over the included amount, {_span(start, end)}",
                code, service, quantity, unit_price, amount, start, end,
                by_user={u or "(unattributed)": a for u, a in allocate(amount, users).items()
                         if a},
            ))
    return lines


def estimate_minor(rating: Rating) -> Money:
    return Money.from_minor(rating.subtotal_minor, rating.currency)
