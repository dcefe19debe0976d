"""Rating properties (hypothesis): a period split in two by a plan change onto the same
terms costs what the whole period costs, up to the rounding of its lines.

Each example writes a month of daily rollups for one tenant and rates the period
twice: once on one subscription, once on two subscriptions of identical terms that
meet on the split day (what a plan change mid-period makes). Included amounts are
prorated by the days of each segment, so when each segment's usage is on the same
side of its prorated allowance (both over, or both within), the unrounded amounts are
equal and only rounding differs: at most half a minor unit per rounded line on each
side. When one segment is within its allowance and the other over, the unused part of
the first segment's allowance is not carried over: the split never costs less.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete

from invoices.rating import rate_period
from plans.metrics import METRICS, PEAK
from plans.models import Plan, PlanMetricPrice, PlanVersion, Subscription, UsageRollup
from plans.periods import Period
from portal.extensions import db
from tenants.scoping import tenant_scope, unscoped
from tests.factories import TenantFactory

PERIOD = Period(dt.date(2026, 3, 1), dt.date(2026, 4, 1))  # 31 days
SUMMED = [code for code, m in METRICS.items() if m.aggregation != PEAK]
TERMS = {  # included per period (billing units) and overage price per unit
    "llm_tokens": (Decimal(500_000), Decimal("0.00002")),
    "sql_queries": (Decimal(10_000), Decimal("0.0013")),
    "api_requests": (Decimal(200_000), Decimal("0.00007")),
    "compute_hours": (Decimal(40), Decimal("0.37")),
    "storage_gb": (Decimal(10), Decimal("0.23")),
}
SERVICES = ("ai_service", "ml_service")
USERS = ("", "u1", "u2")


def _version(code: str) -> PlanVersion:
    plan = Plan(code=code, name=code.title(), description="")
    version = PlanVersion(plan=plan, version=1, currency="USD", base_price_minor=9_900)
    for metric, (included, price) in TERMS.items():
        version.prices.append(PlanMetricPrice(metric=metric, included=included,
                                              unit_price=price))
    db.session.add(plan)
    db.session.flush()
    return version


def _setup(app):
    with app.app_context(), unscoped():
        tenant = TenantFactory(slug="splitco")
        first, second = _version("same-a"), _version("same-b")
        db.session.commit()
        return tenant.id, first.id, second.id


def _subscribe(tenant_id: int, spans: list[tuple[int, dt.date, dt.date | None]]) -> None:
    with tenant_scope(tenant_id):
        db.session.execute(delete(Subscription))
        for version_id, start, end in spans:
            db.session.add(Subscription(tenant_id=tenant_id, plan_version_id=version_id,
                                        starts_on=start, ends_on=end, anchor_day=1))
        db.session.commit()


def _write_usage(tenant_id: int, days: dict[dt.date, dict[str, list[int]]]) -> None:
    with tenant_scope(tenant_id):
        db.session.execute(delete(UsageRollup))
        for day, metrics in days.items():
            for metric, parts in metrics.items():
                for i, micro in enumerate(parts):
                    if micro:
                        db.session.add(UsageRollup(
                            tenant_id=tenant_id, day=day, metric=metric,
                            service=SERVICES[i % 2], user_ref=USERS[i % 3],
                            quantity_micro=micro))
        db.session.commit()


def _rate(app, tenant_id, versions, split):
    from tenants.models import Tenant

    first, second = versions
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, tenant_id)
        _subscribe(tenant_id, [(first, PERIOD.start, None)])
        whole = rate_period(tenant, PERIOD)
        _subscribe(tenant_id, [(first, PERIOD.start, split), (second, split, None)])
        parts = rate_period(tenant, PERIOD)
        return whole, parts


def _side(days, split, metric, included) -> tuple[Decimal, Decimal]:
    """Usage of ``metric`` before and from the split, beyond each side's allowance
    (negative: within it)."""
    unit = METRICS[metric].per_billing_unit * 1_000_000
    before = sum(sum(d.get(metric, [])) for day, d in days.items() if day < split) / unit
    after = sum(sum(d.get(metric, [])) for day, d in days.items() if day >= split) / unit
    share = Decimal((split - PERIOD.start).days) / PERIOD.days
    return before - included * share, after - included * (1 - share)


daily_parts = st.lists(st.integers(0, 2_000_000_000_000), min_size=1, max_size=4)
usage = st.dictionaries(
    st.integers(0, PERIOD.days - 1),
    st.dictionaries(st.sampled_from(SUMMED), daily_parts, max_size=4),
    max_size=12,
)


def test_splitting_a_period_changes_the_total_by_no_more_than_rounding(app):
    tenant_id, *versions = _setup(app)

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(usage=usage, split_day=st.integers(1, PERIOD.days - 1))
    def check(usage, split_day):
        split = PERIOD.start + dt.timedelta(days=split_day)
        days = {PERIOD.start + dt.timedelta(days=d): m for d, m in usage.items()}
        with app.app_context(), unscoped():
            _write_usage(tenant_id, days)
        whole, parts = _rate(app, tenant_id, versions, split)
        rounding = Decimal(len(whole.lines) + len(parts.lines)) / 2
        same_side = all(
            (a >= 0) == (b >= 0)
            for a, b in (_side(days, split, m, TERMS[m][0]) for m in SUMMED))
        difference = parts.subtotal_minor - whole.subtotal_minor
        if same_side:
            assert abs(difference) <= rounding, (difference, whole.lines, parts.lines)
        else:
            assert difference >= -rounding, (difference, whole.lines, parts.lines)
        # Each rating adds up: the lines to the subtotal, the end users to the lines.
        for rating in (whole, parts):
            assert sum(rating.by_service().values()) == rating.subtotal_minor
            overage = sum(line.amount_minor for line in rating.lines
                          if line.kind == "overage")
            assert sum(rating.by_user().values()) == overage

    check()


def test_a_split_bills_each_segment_on_its_own_storage_peak(app):
    tenant_id, *versions = _setup(app)
    split = PERIOD.start + dt.timedelta(days=10)
    peak = METRICS["storage_gb"].per_billing_unit * 1_000_000
    days = {PERIOD.start + dt.timedelta(days=2): {"storage_gb": [int(14 * peak)]},
            PERIOD.start + dt.timedelta(days=20): {"storage_gb": [int(16 * peak)]}}
    with app.app_context(), unscoped():
        _write_usage(tenant_id, days)
    whole, parts = _rate(app, tenant_id, versions, split)
    storage = [line for line in parts.lines if line.metric == "storage_gb"]
    # 4 GB over 10 in the first segment, 6 GB in the second: capacity is not prorated.
    assert [line.quantity for line in storage] == [Decimal(4), Decimal(6)]
    assert [line.quantity for line in whole.lines if line.metric == "storage_gb"] == [
        Decimal(6)]
