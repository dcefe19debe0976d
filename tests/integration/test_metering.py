"""Usage ingestion: aggregation rules, time zones, idempotency, atomic batches."""

from __future__ import annotations

import datetime as dt
import threading
import time
from decimal import Decimal

import pytest
from sqlalchemy import func, select, update

from plans import metering
from plans.metering import BatchRejected, BatchTooLarge, ingest_events, usage_totals
from plans.models import UsageEvent, UsageRollup
from plans.periods import period_containing, period_from_label
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped
from tenants.services import lock_tenant
from tests.factories import TenantFactory

NOW = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)


def ev(event_id, metric, quantity, ts, **extra):
    return {"id": event_id, "metric": metric, "quantity": quantity, "timestamp": ts, **extra}


@pytest.fixture
def ny(app):
    """A tenant in New York: UTC-4 until 1 Nov 2026 02:00, UTC-5 after."""
    with app.app_context(), unscoped():
        yield TenantFactory(slug="nyc", timezone="America/New_York")


def _events(app, tenant):
    with app.app_context(), unscoped():
        return db.session.scalar(select(func.count(UsageEvent.id))
                                 .where(UsageEvent.tenant_id == tenant.id))


def test_days_are_counted_in_the_tenant_zone_across_the_dst_change(app, ny):
    with app.app_context():
        ingest_events(ny, [
            ev("a", "llm_tokens", 100, "2026-11-01T03:59:00Z"),  # 31 Oct 23:59 EDT
            ev("b", "llm_tokens", 200, "2026-11-01T04:30:00Z"),  # 1 Nov 00:30 EDT
            ev("c", "llm_tokens", 400, "2026-11-02T04:30:00Z"),  # 1 Nov 23:30 EST
            ev("d", "llm_tokens", 800, "2026-11-02T05:00:00Z"),  # 2 Nov 00:00 EST
        ], now=NOW)
        with unscoped():
            days = dict(db.session.execute(
                select(UsageRollup.day, func.sum(UsageRollup.quantity_micro))
                .where(UsageRollup.tenant_id == ny.id).group_by(UsageRollup.day)).all())
        assert {d: v // 1_000_000 for d, v in days.items()} == {
            dt.date(2026, 10, 31): 100, dt.date(2026, 11, 1): 600, dt.date(2026, 11, 2): 800}
        october, november = period_from_label("2026-10"), period_from_label("2026-11")
        assert usage_totals(ny, october.start, october.end)["llm_tokens"] == 100
        assert usage_totals(ny, november.start, november.end)["llm_tokens"] == 1400


def test_aggregation_rule_of_each_metric(app, ny):
    with app.app_context():
        ingest_events(ny, [
            ev("t1", "llm_tokens", 1500, "2026-11-03T15:00:00Z"),
            ev("t2", "llm_tokens", "2500", "2026-11-04T15:00:00Z"),
            ev("q1", "sql_queries", 7, "2026-11-03T15:00:00Z"),
            ev("q2", "sql_queries", 5, "2026-11-05T15:00:00Z"),
            ev("r1", "api_requests", 1000, "2026-11-03T15:00:00Z"),
            # compute is metered per minute and billed in hours
            ev("c1", "compute_hours", 90, "2026-11-03T15:00:00Z"),
            ev("c2", "compute_hours", 30, "2026-11-04T15:00:00Z"),
            # storage: the highest reading of a day, summed over services; the period
            # is billed on its peak day
            ev("s1", "storage_gb", "10.5", "2026-11-03T12:00:00Z"),
            ev("s2", "storage_gb", "12.25", "2026-11-03T18:00:00Z"),
            ev("s3", "storage_gb", 3, "2026-11-03T18:00:00Z", service="ml_service"),
            ev("s4", "storage_gb", 14, "2026-11-04T18:00:00Z"),
            ev("s5", "storage_gb", "11", "2026-11-05T18:00:00Z"),
        ], now=NOW)
        period = period_from_label("2026-11")
        totals = usage_totals(ny, period.start, period.end)
    assert totals["llm_tokens"] == 4000
    assert totals["sql_queries"] == 12
    assert totals["api_requests"] == 1000
    assert totals["compute_hours"] == 2
    assert totals["storage_gb"] == Decimal("15.25")  # 3 Nov: 12.25 + 3


def test_a_replayed_batch_is_all_duplicates_and_counts_once(app, ny):
    batch = [ev(f"e{i}", "sql_queries", 1, "2026-11-03T15:00:00Z") for i in range(50)]
    with app.app_context():
        first = ingest_events(ny, batch + [batch[0]], now=NOW)
        second = ingest_events(ny, batch, now=NOW)
        period = period_from_label("2026-11")
        total = usage_totals(ny, period.start, period.end)["sql_queries"]
    assert (first.accepted, first.duplicates) == (50, 1)
    assert (second.accepted, second.duplicates) == (0, 50)
    assert total == 50
    assert _events(app, ny) == 50


def test_a_batch_overlapping_stored_events_stores_only_the_new_ones(app, ny):
    first = [ev(f"e{i}", "llm_tokens", 1, "2026-11-03T15:00:00Z") for i in range(50)]
    second = [ev(f"e{i}", "llm_tokens", 1, "2026-11-03T15:00:00Z") for i in range(25, 75)]
    with app.app_context():
        ingest_events(ny, first, now=NOW)
        result = ingest_events(ny, second, now=NOW)
        period = period_from_label("2026-11")
        total = usage_totals(ny, period.start, period.end)["llm_tokens"]
    assert (result.accepted, result.duplicates) == (25, 25)
    assert sorted(result.accepted_ids) == sorted(f"e{i}" for i in range(50, 75))
    assert total == 75
    assert _events(app, ny) == 75


def test_only_a_duplicate_id_is_taken_for_a_replay(app, ny, monkeypatch):
    """Any other integrity error of the write fails the batch, which writes nothing."""
    batch = [ev(f"e{i}", "llm_tokens", 1, "2026-11-03T15:00:00Z") for i in range(10)]
    with app.app_context():
        ingest_events(ny, batch, now=NOW)
        monkeypatch.setattr(metering, "_is_unique_violation", lambda exc: False)
        dbapi = db.engine.dialect.loaded_dbapi
        with pytest.raises(dbapi.IntegrityError):
            ingest_events(ny, batch + [ev("new", "llm_tokens", 1, "2026-11-03T15:00:00Z")],
                          now=NOW)
        period = period_from_label("2026-11")
        assert usage_totals(ny, period.start, period.end)["llm_tokens"] == 10
    assert _events(app, ny) == 10


def _utc(moment: dt.datetime) -> dt.datetime:
    # SQLite gives back the stored UTC wall time without a zone.
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def test_events_are_stored_as_sent(app, ny):
    with app.app_context():
        ingest_events(ny, [
            ev("a", "llm_tokens", 5, "2026-11-03T15:00:00Z"),
            ev("b", "storage_gb", "10.25", "2026-11-01T05:30:00.123456+01:00",
               service="ml_service", user="u1", properties={"b": "2", "a": "\u00e9"}),
            ev("c", "compute_hours", Decimal("1.5"),
               dt.datetime(2026, 11, 2, 4, 59, 59, 999999, tzinfo=dt.UTC),
               user=42, properties={"n": 1, "d": Decimal("0.10")}),
        ], now=NOW)
        with unscoped():
            rows = {e.event_id: e for e in db.session.scalars(
                select(UsageEvent).where(UsageEvent.tenant_id == ny.id))}
        stored = {key: (_utc(e.occurred_at), e.day, e.quantity_micro, e.service, e.user_ref,
                        e.properties) for key, e in rows.items()}
        if db.engine.dialect.name == "sqlite":
            # Stored as text: exactly as SQLAlchemy writes dates and timestamps, so that
            # comparisons in SQL see the same values whichever path wrote a row.
            dialect = db.engine.dialect
            columns = UsageEvent.__table__.c
            as_text = {name: columns[name].type.dialect_impl(dialect).bind_processor(dialect)
                       for name in ("occurred_at", "day")}
            texts = db.session.connection().exec_driver_sql(
                "SELECT event_id, occurred_at, day FROM usage_event").all()
            for key, occurred_at, day in texts:
                assert occurred_at == as_text["occurred_at"](stored[key][0])
                assert day == as_text["day"](stored[key][1])
        db.session.rollback()
    assert stored == {
        "a": (dt.datetime(2026, 11, 3, 15, tzinfo=dt.UTC), dt.date(2026, 11, 3), 5_000_000,
              "ai_service", "", None),
        "b": (dt.datetime(2026, 11, 1, 4, 30, 0, 123456, tzinfo=dt.UTC), dt.date(2026, 11, 1),
              10_250_000, "ml_service", "u1", '{"a":"\\u00e9","b":"2"}'),
        "c": (dt.datetime(2026, 11, 2, 4, 59, 59, 999999, tzinfo=dt.UTC),
              dt.date(2026, 11, 1), 1_500_000, "ai_service", "42", '{"d":"0.10","n":1}'),
    }


def _days(app, tenant):
    with app.app_context(), unscoped():
        return sorted(db.session.scalars(
            select(UsageEvent.day).where(UsageEvent.tenant_id == tenant.id)))


def test_each_batch_reads_the_tenant_zone_afresh(app, ny):
    with app.app_context():
        with unscoped():
            tenant = db.session.get(Tenant, ny.id)
        ingest_events(tenant, [ev("a", "llm_tokens", 1, "2026-11-01T03:59:00Z")], now=NOW)
        # Another transaction moves the tenant to UTC after the first batch.
        with db.engine.begin() as connection:
            connection.execute(update(Tenant).where(Tenant.id == ny.id).values(timezone="UTC"))
        ingest_events(tenant, [ev("b", "llm_tokens", 1, "2026-11-01T03:59:00Z")], now=NOW)
        assert tenant.timezone == "UTC"
    assert _days(app, ny) == [dt.date(2026, 10, 31), dt.date(2026, 11, 1)]


def test_a_zone_set_on_the_tenant_and_not_saved_yet_is_the_one_used(app, ny):
    with app.app_context():
        with unscoped():
            tenant = db.session.get(Tenant, ny.id)
        tenant.timezone = "UTC"
        ingest_events(tenant, [ev("a", "llm_tokens", 1, "2026-11-01T03:59:00Z")], now=NOW)
    assert _days(app, ny) == [dt.date(2026, 11, 1)]


def test_a_batch_waits_for_the_tenant_lock_of_another_writer(app, ny):
    """Ingestion takes the lock the tenant's other writers take (``lock_tenant``), also
    for a replayed batch, which writes no row that would wait for the lock anyway."""
    batch = [ev("a", "llm_tokens", 1, "2026-11-03T15:00:00Z")]
    with app.app_context():
        ingest_events(ny, batch, now=NOW)
    locked, order, errors = threading.Event(), [], []

    def other_writer():
        try:
            with app.app_context():
                with tenant_scope(ny.id):
                    lock_tenant(ny.id)
                locked.set()
                time.sleep(0.3)
                order.append("other writer commits")
                db.session.commit()
        except Exception as exc:  # surfaced below
            errors.append(exc)
            locked.set()

    thread = threading.Thread(target=other_writer, daemon=True)
    thread.start()
    assert locked.wait(30)
    with app.app_context():
        result = ingest_events(ny, batch, now=NOW)
        order.append("batch done")
    thread.join(30)
    assert not errors, errors
    assert order == ["other writer commits", "batch done"]
    assert (result.accepted, result.duplicates) == (0, 1)


def test_concurrent_overlapping_batches_count_each_event_once(app, ny):
    """Two writers send overlapping batches at the same moment; the unique index
    decides which one stores each shared event, the other counts it as a duplicate."""
    shared = [ev(f"s{i}", "llm_tokens", 10, "2026-11-03T15:00:00Z") for i in range(300)]
    own = {n: [ev(f"{n}{i}", "llm_tokens", 1, "2026-11-03T15:00:00Z") for i in range(100)]
           for n in ("x", "y")}
    barrier = threading.Barrier(2, timeout=30)
    results, errors = {}, []
    tenant_id = ny.id

    def writer(name):
        try:
            with app.app_context():
                with unscoped():
                    tenant = db.session.get(Tenant, tenant_id)
                barrier.wait()
                results[name] = ingest_events(tenant, shared + own[name], now=NOW)
                db.session.remove()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert results["x"].accepted + results["y"].accepted == 500
    assert results["x"].duplicates + results["y"].duplicates == 300
    with app.app_context():
        period = period_from_label("2026-11")
        assert usage_totals(ny, period.start, period.end)["llm_tokens"] == 300 * 10 + 200
    assert _events(app, ny) == 500


def test_one_bad_event_rejects_the_batch_with_every_error(app, ny):
    batch = [
        ev("ok1", "llm_tokens", 10, "2026-11-03T15:00:00Z"),
        ev("bad1", "gpu_hours", 1, "2026-11-03T15:00:00Z"),
        ev("bad2", "llm_tokens", -5, "2026-11-03T15:00:00Z"),
        ev("bad3", "llm_tokens", 1.5, "2026-11-03T15:00:00"),
        {"metric": "llm_tokens", "quantity": "1e3x", "timestamp": "yesterday", "colour": "red"},
        ev("bad5", "llm_tokens", "0.0000001", "2026-11-03T15:00:00Z", service="nope"),
        ev("bad6", "llm_tokens", 1, "2027-01-01T00:00:00Z"),
        "not an object",
    ]
    with app.app_context(), pytest.raises(BatchRejected) as info:
        ingest_events(ny, batch, now=NOW)
    found = {(e.index, e.field) for e in info.value.errors}
    assert found == {
        (1, "metric"), (2, "quantity"), (3, "quantity"), (3, "timestamp"),
        (4, "id"), (4, "quantity"), (4, "timestamp"), (4, "colour"),
        (5, "quantity"), (5, "service"), (6, "timestamp"), (7, "event"),
    }
    assert all(e.message for e in info.value.errors)
    assert _events(app, ny) == 0


def test_a_failure_half_way_writes_nothing(app, ny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full while updating rollups")

    monkeypatch.setattr(metering, "_upsert_rollups", broken)
    with app.app_context(), pytest.raises(RuntimeError):
        ingest_events(ny, [ev("x1", "llm_tokens", 10, "2026-11-03T15:00:00Z")], now=NOW)
    assert _events(app, ny) == 0
    monkeypatch.undo()
    with app.app_context():
        result = ingest_events(ny, [ev("x1", "llm_tokens", 10, "2026-11-03T15:00:00Z")], now=NOW)
    assert result.accepted == 1  # nothing half-written blocks the retry


def test_oversized_batch_is_refused(app, ny):
    batch = [ev(f"e{i}", "sql_queries", 1, "2026-11-03T15:00:00Z")
             for i in range(metering.MAX_BATCH + 1)]
    with app.app_context(), pytest.raises(BatchTooLarge):
        ingest_events(ny, batch, now=NOW)


def test_events_of_one_tenant_never_land_in_another(app, ny, world):
    with app.app_context(), unscoped():
        other = db.session.get(Tenant, world.ids["a"])
    with app.app_context():
        ingest_events(ny, [ev("same-id", "llm_tokens", 10, "2026-11-03T15:00:00Z")], now=NOW)
        result = ingest_events(other, [ev("same-id", "llm_tokens", 99, "2026-11-03T15:00:00Z")],
                               now=NOW)
        assert result.accepted == 1  # idempotency keys are per tenant
        period = period_from_label("2026-11")
        assert usage_totals(ny, period.start, period.end)["llm_tokens"] == 10
        assert usage_totals(other, period.start, period.end)["llm_tokens"] == 99


def test_periods_follow_the_anchor_day():
    period = period_containing(dt.date(2026, 3, 14), anchor_day=15)
    assert (period.start, period.end, period.days) == (dt.date(2026, 2, 15),
                                                       dt.date(2026, 3, 15), 28)
    assert period.next().start == dt.date(2026, 3, 15)
    with pytest.raises(ValueError):
        period_from_label("2026-13")
    with pytest.raises(ValueError):
        period_from_label("26-1")
