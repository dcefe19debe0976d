"""Compacted rollups: a span read with the compacted months, and the days read per
service, give what the daily rollups give, whatever the order of batches, late
events and compactions; the job moves each tenant to its own today; one tenant's
compaction never touches another's."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from invoices.rating import _Usage
from plans.metering import (
    PEAK_METRICS,
    compact_rollups,
    compact_usage,
    day_service_rows,
    ingest_events,
)
from plans.models import (
    UsageCompaction,
    UsageEvent,
    UsageRollup,
    UsageRollupMonth,
    UsageRollupService,
)
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped
from tenants.services import lock_tenant
from tests.factories import TenantFactory

FIRST = dt.date(2026, 9, 20)
DAYS = 75  # to 3 December: three month boundaries
NOW = dt.datetime(2026, 12, 31, tzinfo=dt.UTC)
METRICS = ("llm_tokens", "api_requests", "compute_hours", "storage_gb")
SERVICES = ("ai_service", "ml_service")
USERS = ("", "u1", "u2")


def _day(n: int) -> dt.date:
    return FIRST + dt.timedelta(days=n)


def _event(key: int, day: int, metric: str, service: int, user: int, quantity: int) -> dict:
    return {"id": f"e{key}", "metric": metric, "quantity": quantity,
            "timestamp": dt.datetime.combine(_day(day), dt.time(12), dt.UTC),
            "service": SERVICES[service], "user": USERS[user]}


def _expected(events: list[dict], start: dt.date, end: dt.date):
    """(sums, peaks, seen) of the span as ``_Usage`` holds them, from the events."""
    sums: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    readings: dict[str, dict] = defaultdict(lambda: defaultdict(int))  # (day, cell) -> max
    seen = set()
    for e in events:
        day = e["timestamp"].date()
        if not start <= day < end:
            continue
        seen.add(e["metric"])
        cell = (e["service"], e["user"])
        micro = e["quantity"] * 1_000_000
        if e["metric"] in PEAK_METRICS:
            readings[e["metric"]][(day, cell)] = max(readings[e["metric"]][(day, cell)], micro)
        else:
            sums[e["metric"]][cell] += micro
    peaks = {}
    for metric, values in readings.items():
        by_day: dict[dt.date, dict] = defaultdict(dict)
        for (day, cell), micro in values.items():
            by_day[day][cell] = micro
        day = min(by_day, key=lambda d: (-sum(by_day[d].values()), d))
        peaks[metric] = (sum(by_day[day].values()), by_day[day])
    return {m: dict(c) for m, c in sums.items()}, peaks, seen


def _expected_by_service(events: list[dict], start: dt.date, end: dt.date):
    """{(day, metric, service): (micro, events)}: each day's users added up (a peak
    metric's user value being the day's highest reading)."""
    cells: dict[tuple, int] = defaultdict(int)
    counts: dict[tuple, int] = defaultdict(int)
    for e in events:
        day = e["timestamp"].date()
        if not start <= day < end:
            continue
        key = (day, e["metric"], e["service"], e["user"])
        micro = e["quantity"] * 1_000_000
        cells[key] = max(cells[key], micro) if e["metric"] in PEAK_METRICS else cells[key] + micro
        counts[key] += 1
    result: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for (day, metric, service, _), micro in cells.items():
        result[(day, metric, service)][0] += micro
        result[(day, metric, service)][1] += counts[(day, metric, service, _)]
    return {key: tuple(value) for key, value in result.items()}


def _by_service(tenant: Tenant, start: dt.date, end: dt.date):
    rows = day_service_rows(tenant, start, end)
    assert len(rows) == len({row[:3] for row in rows})  # no day read twice
    return {(day, metric, service): (micro, count) for day, metric, service, micro, count in rows}


def _read(tenant: Tenant, start: dt.date, end: dt.date):
    usage = _Usage.read(tenant, start, end)
    return ({m: dict(c) for m, c in usage.sums.items() if c}, usage.peaks, usage.seen)


def _reset(tenant_id: int) -> None:
    with tenant_scope(tenant_id):
        for model in (UsageCompaction, UsageRollupMonth, UsageRollupService, UsageRollup,
                      UsageEvent):
            db.session.execute(delete(model))
        db.session.commit()


def _compact(tenant_id: int, through: dt.date) -> None:
    with tenant_scope(tenant_id):
        lock_tenant(tenant_id)
        compact_rollups(tenant_id, through)
        db.session.commit()


event = st.tuples(st.integers(0, DAYS - 1), st.sampled_from(METRICS), st.integers(0, 1),
                  st.integers(0, 2), st.integers(0, 5_000))
# A step: a batch of events, or a compaction up to a day.
step = st.one_of(st.lists(event, min_size=1, max_size=8),
                 st.integers(0, DAYS).map(lambda n: ("compact", n)))
span = st.tuples(st.integers(0, DAYS), st.integers(1, 40))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=8),
       spans=st.lists(span, min_size=1, max_size=4))
def test_a_span_reads_the_same_usage_with_months_compacted(app, steps, spans):
    with app.app_context(), unscoped():
        tenant = db.session.scalar(select(Tenant).where(Tenant.slug == "compacted"))
        if tenant is None:
            tenant = TenantFactory(slug="compacted", timezone="UTC")
            db.session.commit()
        _reset(tenant.id)
        sent: list[dict] = []
        for item in steps:
            if isinstance(item, tuple) and item[0] == "compact":
                _compact(tenant.id, _day(item[1]))
                continue
            batch = [_event(len(sent) + n, *fields) for n, fields in enumerate(item)]
            ingest_events(tenant, batch, now=NOW)
            sent.extend(batch)
        # Month-to-date spans, spans from a month's first day, across months, mid-month.
        checks = [(_day(s), _day(s) + dt.timedelta(days=n)) for s, n in spans]
        checks += [(dt.date(2026, 10, 1), dt.date(2026, 10, 18)),
                   (dt.date(2026, 10, 1), dt.date(2026, 11, 1)),
                   (dt.date(2026, 11, 1), dt.date(2026, 12, 1)),
                   (dt.date(2026, 10, 12), dt.date(2026, 11, 25)),
                   (dt.date(2026, 11, 1), dt.date(2026, 12, 3))]
        for start, end in checks:
            assert _read(tenant, start, end) == _expected(sent, start, end), (start, end)
            assert _by_service(tenant, start, end) == _expected_by_service(sent, start, end)


def test_late_events_of_compacted_days_reach_the_month(app):
    with app.app_context(), unscoped():
        tenant = TenantFactory(slug="late", timezone="UTC")
        db.session.commit()
        ingest_events(tenant, [_event(1, 45, "llm_tokens", 0, 1, 700)], now=NOW)  # 4 Nov
        _compact(tenant.id, dt.date(2026, 11, 20))
        ingest_events(tenant, [_event(2, 45, "llm_tokens", 0, 1, 50),
                               _event(3, 60, "llm_tokens", 0, 1, 9)], now=NOW)  # 4, 19 Nov
        with tenant_scope(tenant):
            month = db.session.execute(select(UsageRollupMonth.quantity_micro,
                                              UsageRollupMonth.event_count)).one()
        assert tuple(month) == (759_000_000, 3)
        sums, _, _ = _read(tenant, dt.date(2026, 11, 1), dt.date(2026, 11, 21))
        assert sums == {"llm_tokens": {("ai_service", "u1"): 759_000_000}}
        # A span ending before the mark does not take the month's rows.
        sums, _, _ = _read(tenant, dt.date(2026, 11, 1), dt.date(2026, 11, 10))
        assert sums == {"llm_tokens": {("ai_service", "u1"): 750_000_000}}


def test_the_job_moves_each_tenant_to_its_own_today_once(app):
    with app.app_context(), unscoped():
        auckland = TenantFactory(slug="akl", timezone="Pacific/Auckland")
        honolulu = TenantFactory(slug="hnl", timezone="Pacific/Honolulu")
        db.session.commit()
        ingest_events(auckland, [_event(1, 40, "api_requests", 0, 0, 5)], now=NOW)
        ingest_events(honolulu, [_event(1, 40, "api_requests", 1, 2, 8)], now=NOW)
        now = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)  # 21 Nov in Auckland, 20 in Honolulu
        assert compact_usage(now) == 2
        assert compact_usage(now) == 0
        marks = dict(db.session.execute(select(UsageCompaction.tenant_id,
                                               UsageCompaction.through)).all())
        assert marks == {auckland.id: dt.date(2026, 11, 21), honolulu.id: dt.date(2026, 11, 20)}
        owners = db.session.execute(select(UsageRollupMonth.tenant_id, UsageRollupMonth.service,
                                           func.sum(UsageRollupMonth.quantity_micro))
                                    .group_by(UsageRollupMonth.tenant_id,
                                              UsageRollupMonth.service)).all()
        assert sorted(owners) == sorted([(auckland.id, "ai_service", 5_000_000),
                                         (honolulu.id, "ml_service", 8_000_000)])


def test_one_tenants_compaction_never_shows_in_anothers_reads(app):
    with app.app_context(), unscoped():
        compacted = TenantFactory(slug="comp", timezone="UTC")
        daily = TenantFactory(slug="daily", timezone="UTC")
        db.session.commit()
        for n, tenant in enumerate((compacted, daily)):
            ingest_events(tenant, [_event(1, 45, "llm_tokens", 0, 1, 100 + n),
                                   _event(2, 50, "llm_tokens", 0, 2, 10 + n)], now=NOW)
        _compact(compacted.id, dt.date(2026, 11, 20))
        span = (dt.date(2026, 11, 1), dt.date(2026, 11, 21))
        for n, tenant in enumerate((compacted, daily)):
            sums, _, _ = _read(tenant, *span)
            assert sums == {"llm_tokens": {("ai_service", "u1"): (100 + n) * 1_000_000,
                                           ("ai_service", "u2"): (10 + n) * 1_000_000}}


def test_the_cli_runs_the_compaction(app):
    with app.app_context(), unscoped():
        tenant = TenantFactory(slug="cli", timezone="UTC")
        db.session.commit()
        ingest_events(tenant, [_event(1, 40, "sql_queries", 0, 0, 3)], now=NOW)
    result = app.test_cli_runner().invoke(args=["billfold", "compact-usage"])
    assert result.exit_code == 0, result.output
    assert "1 tenant(s) compacted." in result.output
    with app.app_context(), unscoped():
        assert db.session.scalar(select(func.count()).select_from(UsageRollupMonth)) == 1
