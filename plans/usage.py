"""The usage summary and dashboard figures: used, limit and percentage per metric,
the period's cost so far and its projection. Reads rollups only."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from plans.metering import period_usage
from plans.metrics import METRICS, PEAK
from plans.models import PlanVersion
from plans.periods import Period, period_containing, today_in
from plans.services import base_fee_segments, current_subscription
from portal.money import Money
from tenants.models import Tenant

WARNING_AT = Decimal(80)
CRITICAL_AT = Decimal(95)


@dataclass(frozen=True)
class MetricUsage:
    metric: str
    used: Decimal
    limit: Decimal | None  # None: unlimited
    percentage: Decimal | None
    unit_price: Decimal
    projected: Decimal

    @property
    def level(self) -> str:
        """ok, warning (80 %), critical (95 %) or over (past 100 %)."""
        if self.percentage is None:
            return "ok"
        if self.percentage > 100:
            return "over"
        if self.percentage >= CRITICAL_AT:
            return "critical"
        if self.percentage >= WARNING_AT:
            return "warning"
        return "ok"

    @property
    def label(self) -> str:
        return METRICS[self.metric].label

    @property
    def unit(self) -> str:
        return METRICS[self.metric].unit

    @property
    def digits(self) -> int:
        return METRICS[self.metric].digits

    def overage(self, quantity: Decimal | None = None) -> Decimal:
        quantity = self.used if quantity is None else quantity
        if self.limit is None:
            return Decimal(0)
        return max(Decimal(0), quantity - self.limit)


@dataclass(frozen=True)
class UsageSummary:
    tenant: Tenant
    period: Period
    plan_version: PlanVersion | None
    metrics: dict[str, MetricUsage]
    base_fee: Money
    overage_cost: Money
    projected_overage_cost: Money
    days_left: int
    days_elapsed: int

    @property
    def cost_so_far(self) -> Money:
        return self.base_fee + self.overage_cost

    @property
    def projected_cost(self) -> Money:
        return self.base_fee + self.projected_overage_cost

    def as_api(self) -> dict:
        """The API shape: used, limit and percentage per metric."""
        return {
            "period": self.period.label,
            "metrics": {
                code: {"used": _number(m.used), "limit": _number(m.limit),
                       "percentage": _number(m.percentage)}
                for code, m in self.metrics.items()
            },
        }


def _number(value: Decimal | None) -> int | Decimal | None:
    """Whole numbers as int; fractions stay Decimal (the JSON layer writes them as
    exact JSON numbers)."""
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else value


def _percentage(used: Decimal, limit: Decimal | None) -> Decimal | None:
    if limit is None:
        return None
    if limit == 0:
        return Decimal(100) if used == 0 else Decimal(100) + used
    return (used * 100 / limit).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def usage_summary(tenant: Tenant, period: Period | None = None,
                  today: dt.date | None = None) -> UsageSummary:
    """Usage of ``period`` (default: the current one) against the plan in force at its
    end (or today, for the open period), with cost so far and a projection from the
    burn rate of the days elapsed."""
    today = today or today_in(tenant.timezone)
    if period is None:
        sub = current_subscription(tenant, today)
        period = period_containing(today, sub.anchor_day if sub else 1)
    as_of = min(today, period.end - dt.timedelta(days=1))
    sub = current_subscription(tenant, as_of)
    version = sub.plan_version if sub else None
    used = period_usage(tenant, period)
    elapsed = max(1, min(period.days, (today - period.start).days + 1))
    days_left = max(0, (period.end - today).days - 1) if today < period.end else 0
    currency = tenant.currency
    metrics, overage, projected_overage = {}, Money.zero(currency), Money.zero(currency)
    for code, quantity in used.items():
        price = version.price_for(code) if version else None
        limit = price.included if price else None
        unit_price = price.unit_price if price else Decimal(0)
        if METRICS[code].aggregation == PEAK or elapsed >= period.days:
            projected = quantity
        else:
            projected = quantity * period.days / elapsed
        usage = MetricUsage(code, quantity, limit, _percentage(quantity, limit), unit_price,
                            projected)
        metrics[code] = usage
        overage += Money(usage.overage() * unit_price, currency)
        projected_overage += Money(usage.overage(projected) * unit_price, currency)
    base = Money.zero(currency)
    for segment in base_fee_segments(tenant, period):
        base += segment.amount
    return UsageSummary(tenant, period, version, metrics, base, overage, projected_overage,
                        days_left, elapsed)
