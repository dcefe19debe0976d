"""Usage-summary latency for a tenant with 10 thousand and with 10 million events.

The usage summary must read rollups only, so the two latencies should be about equal.
Two tenants on the Professional plan, events spread over the last six months and
about 50 end users: the small one gets 10,000 events through ``ingest_events``; the
large one gets 10 million (1 million with --quick), bulk-loaded in SQL straight into
``usage_event``, and its ``usage_rollup`` rows are then built from those events with
one INSERT ... SELECT ... GROUP BY, as ingestion would have left them. After
(VACUUM) ANALYZE, ``usage_summary`` runs for each tenant alternately (one warm-up
each, then the median of 50 runs), each run in a fresh transaction as a request
would. The statements of one summary are also captured, to show whether it touched
``usage_event`` at all.

PostgreSQL always; SQLite as well (its 10 million rows load in a few minutes).

    python bench/usage_summary.py [--quick]
"""

from __future__ import annotations

import datetime as dt
import random
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    Measure,
    Row,
    Stopwatch,
    format_number,
    format_table,
    log,
    median,
    migrated_app,
    new_tenant,
    parse_args,
    postgres_database,
    report,
)

BENCHMARK = "usage_summary"
SMALL_EVENTS = 10_000
FULL_LARGE_EVENTS = 10_000_000
QUICK_LARGE_EVENTS = 1_000_000
LOAD_CHUNK = 1_000_000  # rows per bulk INSERT statement (and commit), for progress
RUNS = 50
HISTORY_DAYS = 182
USERS = 50
# "About equal": the large tenant's summary takes at most this many times as long.
EQUAL_WITHIN = 1.5

# Both tenants draw their events from the same mix: (metric, percent of events).
METRIC_MIX = (("api_requests", 40), ("llm_tokens", 30), ("sql_queries", 18),
              ("compute_hours", 9), ("storage_gb", 3))


def label(count: int) -> str:
    if count >= 1_000_000:
        return f"{count // 1_000_000}M events"
    return f"{count // 1_000}k events"


# -- the small tenant: through the service ---------------------------------------------

def small_events(count: int, now: dt.datetime, seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    metrics = [m for m, _ in METRIC_MIX]
    weights = [w for _, w in METRIC_MIX]
    events = []
    for i in range(count):
        metric = rng.choices(metrics, weights)[0]
        quantity = {"llm_tokens": rng.randint(50, 8_000), "sql_queries": rng.randint(1, 20),
                    "api_requests": rng.randint(1, 100),
                    "compute_hours": rng.randint(1, 60),
                    "storage_gb": rng.randint(1, 500)}[metric]
        event = {"id": f"small-{i:09d}", "metric": metric, "quantity": quantity,
                 "timestamp": now - dt.timedelta(seconds=rng.uniform(60, HISTORY_DAYS * 86_400))}
        if metric in ("api_requests", "compute_hours") and rng.random() < 0.15:
            event["service"] = "ml_service"
        if rng.random() < 0.9:
            event["user"] = f"user-{rng.randint(1, USERS):02d}"
        events.append(event)
    return events


def load_small(tenant, count: int, now: dt.datetime) -> None:
    from plans.metering import ingest_events

    events = small_events(count, now)
    for start in range(0, len(events), 1_000):
        ingest_events(tenant, events[start:start + 1_000])


# -- the large tenant: bulk SQL --------------------------------------------------------

def _metric_case(bucket: str) -> str:
    """SQL choosing a metric from a 0-99 bucket, following METRIC_MIX."""
    parts, edge = [], 0
    for metric, percent in METRIC_MIX[:-1]:
        edge += percent
        parts.append(f"WHEN {bucket} < {edge} THEN '{metric}'")
    return f"CASE {' '.join(parts)} ELSE '{METRIC_MIX[-1][0]}' END"


# Columns computed from the series number i and a hash h of it (the same integer hash
# on both databases, so both hold the same events). The outer SELECT turns them into
# a usage_event row: quantity in millionths, default service per metric with some
# traffic on ml_service, one of 50 users, a tenth of events without a user.
ROW_SELECT = """
SELECT :tenant_id, {event_id}, metric,
       CASE metric
         WHEN 'llm_tokens' THEN (50 + h % 7950) * 1000000
         WHEN 'sql_queries' THEN (1 + h % 20) * 1000000
         WHEN 'api_requests' THEN (1 + h % 100) * 1000000
         WHEN 'compute_hours' THEN (1 + h % 6000) * 10000
         ELSE (1000 + h % 499000) * 1000
       END,
       {occurred_at}, {day},
       CASE WHEN metric IN ('api_requests', 'compute_hours') AND (h / 100) % 100 < 15
              THEN 'ml_service'
            WHEN metric IN ('sql_queries', 'storage_gb') THEN 'query_engine'
            ELSE 'ai_service' END,
       CASE WHEN (h / 1000000) % 10 = 0 THEN ''
            ELSE {user_ref} END,
       NULL, {now}
FROM (SELECT i, h, {metric} AS metric, :start_s + i * :step_s AS secs
      FROM (SELECT i, (i * 2654435761) % 4294967296 AS h FROM {series}) AS hashed) AS g
"""

INSERT_EVENTS = """
INSERT INTO usage_event (tenant_id, event_id, metric, quantity_micro, occurred_at, day,
                         service, user_ref, properties, ingested_at)
"""

POSTGRES_PARTS = {
    "event_id": "'bulk-' || lpad(i::text, 9, '0')",
    "occurred_at": "to_timestamp(secs)",
    "day": "(to_timestamp(secs) AT TIME ZONE 'UTC')::date",
    "user_ref": "'user-' || lpad((1 + (h / 10000) % 50)::text, 2, '0')",
    "now": "now()",
    "series": "generate_series(:lo, :hi) AS i",
}

# SQLite has no series function here: a recursive CTE counts instead. Timestamps and
# days are written as text in the layout SQLAlchemy uses for SQLite (UTC tenant).
SQLITE_PARTS = {
    "event_id": "'bulk-' || printf('%09d', i)",
    "occurred_at": "strftime('%Y-%m-%d %H:%M:%S', CAST(secs AS INTEGER), 'unixepoch')"
                   " || printf('.%06d', CAST((secs - CAST(secs AS INTEGER)) * 1000000 AS INTEGER))",
    "day": "strftime('%Y-%m-%d', CAST(secs AS INTEGER), 'unixepoch')",
    "user_ref": "'user-' || printf('%02d', 1 + (h / 10000) % 50)",
    "now": "strftime('%Y-%m-%d %H:%M:%f', 'now')",
    "series": "series",
}
SQLITE_SERIES = ("WITH RECURSIVE series(i) AS "
                 "(SELECT :lo UNION ALL SELECT i + 1 FROM series WHERE i < :hi) ")


def bulk_load_events(tenant, count: int, now: dt.datetime, dialect: str) -> None:
    """``count`` events for ``tenant`` spread evenly over the last HISTORY_DAYS days,
    inserted by the database itself in chunks of LOAD_CHUNK rows."""
    from sqlalchemy import text

    from portal.extensions import db

    parts = POSTGRES_PARTS if dialect == "postgresql" else SQLITE_PARTS
    select_rows = ROW_SELECT.format(metric=_metric_case("h % 100"), **parts)
    if dialect == "postgresql":
        sql = INSERT_EVENTS + select_rows
    else:
        sql = SQLITE_SERIES + INSERT_EVENTS + select_rows
    end = now - dt.timedelta(minutes=1)
    start = end - dt.timedelta(days=HISTORY_DAYS)
    step = (end - start).total_seconds() / count
    for lo in range(1, count + 1, LOAD_CHUNK):
        hi = min(count, lo + LOAD_CHUNK - 1)
        db.session.execute(text(sql), {"tenant_id": tenant.id, "lo": lo, "hi": hi,
                                        "start_s": start.timestamp(), "step_s": step})
        db.session.commit()
        log(f"{dialect}: {hi:,} of {count:,} events loaded")


def build_rollups(tenant) -> None:
    """The tenant's usage_rollup rows from its events: one per day, metric, service and
    user, the sum of quantities (the maximum for peak metrics) and the event count."""
    from sqlalchemy import text

    from plans.metrics import METRICS, PEAK
    from portal.extensions import db

    peaks = ", ".join(f"'{code}'" for code, m in METRICS.items() if m.aggregation == PEAK)
    db.session.execute(text(f"""
        INSERT INTO usage_rollup (tenant_id, day, metric, service, user_ref,
                                  quantity_micro, event_count)
        SELECT tenant_id, day, metric, service, user_ref,
               CAST(CASE WHEN metric IN ({peaks}) THEN max(quantity_micro)
                         ELSE sum(quantity_micro) END AS BIGINT),
               count(*)
        FROM usage_event
        WHERE tenant_id = :tenant_id
        GROUP BY tenant_id, day, metric, service, user_ref
    """), {"tenant_id": tenant.id})
    db.session.commit()


def analyze(dialect: str) -> None:
    from portal.extensions import db

    if dialect == "postgresql":
        # VACUUM as well: it leaves the tables as autovacuum would soon after a bulk
        # load (visibility map set), and autovacuum then has no reason to start on
        # the 10 million new rows while the summaries are being timed. It cannot run
        # inside a transaction.
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE) usage_event, usage_rollup")
    else:
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


# -- measuring ---------------------------------------------------------------------------

def counts(tenant) -> dict[str, int]:
    from sqlalchemy import func, select

    from plans.models import UsageEvent, UsageRollup
    from plans.services import current_period
    from portal.extensions import db
    from tenants.scoping import tenant_scope

    period = current_period(tenant)
    with tenant_scope(tenant):
        result = {
            "events": db.session.scalar(select(func.count()).select_from(UsageEvent)),
            "rollup_rows": db.session.scalar(select(func.count()).select_from(UsageRollup)),
            "rollup_rows_in_period": db.session.scalar(
                select(func.count()).select_from(UsageRollup)
                .where(UsageRollup.day >= period.start, UsageRollup.day < period.end)),
        }
    db.session.rollback()
    return result


def fresh(tenant_id: int):
    """The tenant as a new request would find it: new transaction, row read again."""
    from portal.extensions import db
    from tenants.models import Tenant
    from tenants.scoping import unscoped

    db.session.rollback()
    db.session.expire_all()
    with unscoped():
        return db.session.get(Tenant, tenant_id)


def tables_read(tenant_id: int) -> set[str]:
    """The usage tables named by the statements one summary sends."""
    from sqlalchemy import event

    from plans.usage import usage_summary
    from portal.extensions import db

    statements: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    tenant = fresh(tenant_id)
    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        usage_summary(tenant)
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    return {name for s in statements for name in re.findall(r"\busage_(?:event|rollup)\b", s)}


def time_summaries(tenant_ids: dict[str, int]) -> dict[str, list[float]]:
    """Milliseconds per usage_summary call, the tenants taking turns."""
    from plans.usage import usage_summary

    for tenant_id in tenant_ids.values():  # warm-up
        usage_summary(fresh(tenant_id))
    timings: dict[str, list[float]] = {name: [] for name in tenant_ids}
    for _ in range(RUNS):
        for name, tenant_id in tenant_ids.items():
            tenant = fresh(tenant_id)
            with Stopwatch() as clock:
                usage_summary(tenant)
            timings[name].append(clock.seconds * 1000)
    return timings


def run_case(dialect: str, url: str, large_count: int) -> tuple[Row, list[list[str]]]:
    from plans.services import ensure_default_catalog, list_plans, subscribe
    from portal.audit import Actor

    now = dt.datetime.now(dt.UTC)
    with migrated_app(url):
        ensure_default_catalog()
        professional = next(p for p in list_plans() if p.code == "professional")
        starts_on = (now - dt.timedelta(days=HISTORY_DAYS + 7)).date()
        tenants = {}
        for name in ("small", "large"):
            tenant = new_tenant(f"bench-{name}")
            subscribe(Actor.system("bench"), tenant, professional, starts_on=starts_on)
            tenants[name] = tenant
        log(f"{dialect}: {SMALL_EVENTS:,} events through the service for the small tenant")
        load_small(tenants["small"], SMALL_EVENTS, now)
        with Stopwatch() as load:
            bulk_load_events(tenants["large"], large_count, now, dialect)
        log(f"{dialect}: events loaded in {load.seconds:.0f} s; building the rollups")
        with Stopwatch() as roll:
            build_rollups(tenants["large"])
        log(f"{dialect}: rollups built in {roll.seconds:.0f} s; analyzing")
        analyze(dialect)
        ids = {name: t.id for name, t in tenants.items()}
        sizes = {name: counts(fresh(tenant_id)) for name, tenant_id in ids.items()}
        read = {name: tables_read(tenant_id) for name, tenant_id in ids.items()}
        log(f"{dialect}: timing usage_summary, {RUNS} runs per tenant")
        timings = time_summaries(ids)
    ms = {name: median(values) for name, values in timings.items()}
    ratio = ms["large"] / ms["small"]
    rollups_only = all(names <= {"usage_rollup"} for names in read.values())
    verdict = (("about equal" if ratio <= EQUAL_WITHIN else "grows with events")
               + f" (<= {EQUAL_WITHIN:.1f}x); "
               + ("reads rollups only" if rollups_only else "reads usage_event"))
    row = Row(case=dialect,
              measured=Measure(label(sizes["large"]["events"]), ms["large"], "ms"),
              baseline=Measure(label(sizes["small"]["events"]), ms["small"], "ms"),
              ratio=ratio, ratio_label="large/small", verdict=verdict,
              details={name: {**sizes[name], "median_ms": round(ms[name], 3),
                              "min_ms": round(min(timings[name]), 3),
                              "max_ms": round(max(timings[name]), 3),
                              "tables_read": sorted(read[name])}
                       for name in ids}
              | {"load_seconds": round(load.seconds, 1), "rollup_seconds": round(roll.seconds, 1)})
    detail_rows = [[dialect, name, f"{sizes[name]['events']:,}",
                    f"{sizes[name]['rollup_rows']:,}", f"{sizes[name]['rollup_rows_in_period']:,}",
                    format_number(ms[name]), format_number(min(timings[name])),
                    ", ".join(sorted(read[name])) or "-"]
                   for name in ids]
    return row, detail_rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    large = QUICK_LARGE_EVENTS if args.quick else FULL_LARGE_EVENTS
    rows, details = [], []
    with postgres_database("bench_summary") as url:
        row, detail = run_case("postgresql", url, large)
        rows.append(row)
        details += detail
    with tempfile.TemporaryDirectory(prefix="bench_summary_") as tmp:
        row, detail = run_case("sqlite", f"sqlite:///{tmp}/bench.db", large)
        rows.append(row)
        details += detail
    print()
    print(f"Per tenant (median and fastest of {RUNS} runs):")
    print(format_table(["database", "tenant", "events", "rollup rows", "in current period",
                        "median ms", "min ms", "usage tables read"], details))
    report(BENCHMARK,
           f"usage_summary latency: {label(large)} vs {label(SMALL_EVENTS)} per tenant",
           rows,
           notes=[f"median of {RUNS} runs after one warm-up, tenants alternating, "
                  "each run in a new transaction",
                  "the large tenant's events were bulk-loaded in SQL and its rollups "
                  "built with one INSERT ... SELECT ... GROUP BY"],
           size={"small_events": SMALL_EVENTS, "large_events": large, "runs": RUNS})


if __name__ == "__main__":
    main()
