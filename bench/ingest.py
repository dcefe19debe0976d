"""Ingestion through the service in batches of 1,000, against a raw bulk insert.

Target: at least half of the raw rate. For SQLite and for PostgreSQL, each on a fresh
database, ``ingest_events`` stores N events in batches of 1,000 (validation, the
event insert, the rollup upserts and one commit per batch). The baseline then writes
the same rows, column for column, into ``usage_event`` for a second tenant as fast as
the database takes them, with the same transaction boundaries (a batch of 1,000 is
all or nothing, so each is committed): an ``executemany`` of a plain INSERT per batch
on SQLite, ``COPY`` per batch on PostgreSQL. The baseline's rows are prepared before its clock
starts, so it measures the database's bulk-write ceiling; it writes no rollups. The two
are timed batch by batch in turn, service then raw, so both see the same machine.

    python bench/ingest.py [--quick]
"""

from __future__ import annotations

import datetime as dt
import random
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    Measure,
    Row,
    log,
    migrated_app,
    new_tenant,
    parse_args,
    postgres_database,
    report,
)

BENCHMARK = "ingest"
BATCH = 1_000
FULL_EVENTS = 100_000
QUICK_EVENTS = 20_000
TARGET = 0.5

COLUMNS = ("tenant_id", "event_id", "metric", "quantity_micro", "occurred_at", "day",
           "service", "user_ref", "properties", "ingested_at")
USERS = [f"user-{n:02d}" for n in range(1, 21)]
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
MODELS = ("small", "medium", "large")
# (metric, relative frequency): requests and tokens dominate, storage readings are rare.
METRIC_MIX = (("api_requests", 40), ("llm_tokens", 30), ("sql_queries", 18),
              ("compute_hours", 9), ("storage_gb", 3))


def generate_events(count: int, seed: int = 7) -> list[dict]:
    """``count`` valid events as an API client would send them: five metrics, some on
    a non-default service, about 20 end users, timestamps over the last 30 days in
    arrival order (a metering client sends what happened since its last batch, so a
    batch covers hours, not the whole month), half as RFC 3339 strings and half as
    aware datetimes, some with properties."""
    rng = random.Random(seed)
    metrics = [m for m, _ in METRIC_MIX]
    weights = [w for _, w in METRIC_MIX]
    now = dt.datetime.now(dt.UTC)
    events = []
    for i in range(count):
        metric = rng.choices(metrics, weights)[0]
        if metric == "llm_tokens":
            quantity: int | str = rng.randint(50, 8_000)
        elif metric == "sql_queries":
            quantity = rng.randint(1, 20)
        elif metric == "api_requests":
            quantity = rng.randint(1, 100)
        elif metric == "compute_hours":  # minutes, to the hundredth
            quantity = str(Decimal(rng.randint(1, 6_000)) / 100)
        else:  # storage_gb, to the MB
            quantity = str(Decimal(rng.randint(1_000, 500_000)) / 1000)
        elapsed = 30 * 86_400 * (count - i) / count
        moment = now - dt.timedelta(seconds=elapsed + rng.uniform(0, 60))
        event = {"id": f"evt-{i:09d}-{rng.getrandbits(32):08x}", "metric": metric,
                 "quantity": quantity,
                 "timestamp": moment if i % 2 else moment.isoformat().replace("+00:00", "Z")}
        if metric in ("api_requests", "compute_hours") and rng.random() < 0.15:
            event["service"] = "ml_service"
        if rng.random() < 0.9:
            event["user"] = rng.choice(USERS)
        if rng.random() < 0.3:
            event["properties"] = {"region": rng.choice(REGIONS), "model": rng.choice(MODELS)}
        events.append(event)
    return events


def batches(events: list[dict]):
    for start in range(0, len(events), BATCH):
        yield events[start:start + BATCH]


def raw_rows(tenant, events: list[dict]) -> list[tuple]:
    """The rows the service would write for ``tenant``, in COLUMNS order, as Python
    values. The service's own validator computes them, so both sides store the same
    quantity_micro, UTC timestamp, local day, service, user and properties."""
    from plans.metering import validate_batch

    ingested_at = dt.datetime.now(dt.UTC)
    rows = []
    for batch in batches(events):
        for e in validate_batch(tenant, batch):
            rows.append((tenant.id, e.event_id, e.metric, e.quantity_micro, e.occurred_at,
                         e.day, e.service, e.user_ref, e.properties, ingested_at))
    return rows


def sqlite_writer(rows: list[tuple]):
    """A function writing rows[start:end] with an executemany of a plain INSERT on the
    DBAPI connection, then committing, as the service commits each batch. Values are
    first converted as SQLAlchemy would bind them (dates and timestamps as text),
    before any clock starts."""
    from plans.models import UsageEvent
    from portal.extensions import db

    dialect = db.engine.dialect
    table = UsageEvent.__table__
    processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                  for name in COLUMNS]
    bound = [tuple(p(v) if p else v for p, v in zip(processors, row, strict=True))
             for row in rows]
    sql = "INSERT INTO usage_event ({}) VALUES ({})".format(
        ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS)))
    pooled = db.engine.raw_connection()
    conn = pooled.driver_connection

    def write(start: int, end: int) -> None:
        conn.executemany(sql, bound[start:end])
        conn.commit()

    return write, pooled.close


def postgres_writer(rows: list[tuple]):
    """A function that COPYs rows[start:end] into usage_event (binary COPY, as the
    service writes) and commits."""
    from plans.metering import EVENT_COPY_TYPES
    from portal.extensions import db

    sql = "COPY usage_event ({}) FROM STDIN (FORMAT BINARY)".format(", ".join(COLUMNS))
    pooled = db.engine.raw_connection()
    conn = pooled.driver_connection

    def write(start: int, end: int) -> None:
        with conn.cursor() as cur, cur.copy(sql) as copy:
            copy.set_types([*EVENT_COPY_TYPES, "timestamptz"])  # and ingested_at
            for row in rows[start:end]:
                copy.write_row(row)
        conn.commit()

    return write, pooled.close


def side_by_side(case: str, service_tenant, raw_tenant, events: list[dict]
                 ) -> tuple[float, float]:
    """Seconds for the service and for the raw bulk write, timed batch by batch in
    turn (service batch k, then raw batch k), so that both sides see the same machine:
    anything else running slows both alike instead of one."""
    from plans.metering import ingest_events

    rows = raw_rows(raw_tenant, events)
    write, close = sqlite_writer(rows) if case == "sqlite" else postgres_writer(rows)
    service_s = raw_s = 0.0
    accepted = 0
    clock = time.perf_counter
    try:
        for start in range(0, len(events), BATCH):
            batch = events[start:start + BATCH]
            began = clock()
            accepted += ingest_events(service_tenant, batch).accepted
            service_s += clock() - began
            began = clock()
            write(start, start + len(batch))
            raw_s += clock() - began
    finally:
        close()
    if accepted != len(events):
        raise RuntimeError(f"the service accepted {accepted} of {len(events)} events")
    return service_s, raw_s


def count_rows(tenant) -> tuple[int, int]:
    from sqlalchemy import func, select

    from plans.models import UsageEvent, UsageRollup
    from portal.extensions import db
    from tenants.scoping import tenant_scope

    with tenant_scope(tenant):
        events = db.session.scalar(select(func.count()).select_from(UsageEvent))
        rollups = db.session.scalar(select(func.count()).select_from(UsageRollup))
    db.session.rollback()
    return events, rollups


def run_case(case: str, url: str, events: list[dict]) -> Row:
    with migrated_app(url):
        service_tenant = new_tenant("bench-service")
        raw_tenant = new_tenant("bench-raw")
        log(f"{case}: {len(events):,} events through the service and the same rows "
            "written raw, batch by batch in turn")
        service_s, raw_s = side_by_side(case, service_tenant, raw_tenant, events)
        stored, rollups = count_rows(service_tenant)
        raw_stored, _ = count_rows(raw_tenant)
    rows = events
    if stored != len(events) or raw_stored != len(rows):
        raise RuntimeError(f"{case}: stored {stored} and {raw_stored} of {len(events)} rows")
    service_rate, raw_rate = len(events) / service_s, len(rows) / raw_s
    ratio = service_rate / raw_rate
    verdict = ("meets target" if ratio >= TARGET else "below target") + f" (>= {TARGET:.2f})"
    return Row(case=case,
               measured=Measure("service", service_rate, "events/s"),
               baseline=Measure("COPY" if case == "postgresql" else "raw INSERT",
                                raw_rate, "events/s"),
               ratio=ratio, ratio_label="service/raw", verdict=verdict,
               details={"events": len(events), "batch": BATCH, "rollup_rows": rollups,
                        "service_seconds": round(service_s, 3), "raw_seconds": round(raw_s, 3)})


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count = QUICK_EVENTS if args.quick else FULL_EVENTS
    log(f"generating {count:,} events")
    events = generate_events(count)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        results.append(run_case("sqlite", f"sqlite:///{tmp}/bench.db", events))
    with postgres_database("bench_ingest") as url:
        results.append(run_case("postgresql", url, events))
    report(BENCHMARK,
           f"Ingestion of {count:,} events in batches of {BATCH:,}: service vs raw bulk insert",
           results,
           notes=["the service also validates every event and upserts the daily rollups; "
                  "the raw insert writes usage_event only, from rows prepared in advance",
                  "rollup rows written by the service: " + ", ".join(
                      f"{r.case} {r.details['rollup_rows']:,}" for r in results)],
           size={"events": count, "batch": BATCH})


if __name__ == "__main__":
    main()
