"""Cost breakdown and usage analytics latency for a tenant with 10 million events and
one with 10 thousand.

Both read rollups and the ledger only, so their cost follows the number of rollup
rows they read, not the number of events: the compacted months and days keep that to
about one row per month, service and user and one per day and service. Two tenants on
the Professional plan with six months of history and the same ledger (a monthly
top-up, a daily usage charge): the small one gets 10,000 events through
``ingest_events``; the large one gets the ``usage_rollup`` rows that 10 million
events (1 million with --quick) of the usage_summary benchmark's mix over 50 users
leave, inserted in bulk (``event_count`` adds up to the event total; no
``usage_event`` rows, which these reads never touch: the statements are captured
to show it). Both are then compacted up to today, as the hourly ``compact-usage`` job
leaves a tenant: the days before today added up per month and user, and per day and
service (``plans.metering.compact_rollups``). After (VACUUM) ANALYZE, three reads
run for each tenant alternately, one warm-up each, then the median of RUNS, each in
a fresh transaction:

* breakdown: ``cost_breakdown`` of the open period (rated month to date);
* analytics, 30 days: what the analytics page computes for its default view (the
  series by day, the previous 30 days, the per-day table);
* analytics, 12 months: the same for the annual view (by month).

PostgreSQL (databases named billfold_bench_analytics_*) and SQLite. With --keep the
seeded databases are kept (PostgreSQL database billfold_bench_analytics_kept, SQLite
file billfold_bench_analytics_kept.db in the temporary directory) and a later run
with --keep times against them without seeding again, as long as they were seeded
today with the same number of events; --only runs one of the two databases.

    python bench/analytics.py [--quick] [--keep] [--only postgresql|sqlite]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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
    pg_admin,
    postgres_database,
    report,
    with_database,
)
from bench.usage_summary import (
    HISTORY_DAYS,
    METRIC_MIX,
    USERS,
    analyze,
    fresh,
    label,
    load_small,
)

BENCHMARK = "analytics"
SMALL_EVENTS = 10_000
FULL_LARGE_EVENTS = 10_000_000
QUICK_LARGE_EVENTS = 1_000_000
RUNS = 15
EQUAL_WITHIN = 1.5
INSERT_CHUNK = 20_000
DIALECTS = ("postgresql", "sqlite")
KEPT = "billfold_bench_analytics_kept"
# Mean event quantity per metric, in millionths of the event unit (as the usage
# summary benchmark draws them), and the peak metric's daily value.
MEAN_MICRO = {"llm_tokens": 4_025_000_000, "sql_queries": 10_500_000,
              "api_requests": 50_500_000, "compute_hours": 30_000_000}


def _services(metric: str) -> tuple[tuple[str, int], ...]:
    """(service, percent of the metric's events), as the event generator splits them."""
    if metric in ("api_requests", "compute_hours"):
        return (("ai_service", 85), ("ml_service", 15))
    if metric in ("sql_queries", "storage_gb"):
        return (("query_engine", 100),)
    return (("ai_service", 100),)


def _split(total: int, weights: list[int]) -> list[int]:
    """``total`` shared in proportion to ``weights``, exactly."""
    whole = sum(weights)
    shares = [total * w // whole for w in weights]
    for n in range(total - sum(shares)):
        shares[n % len(shares)] += 1
    return shares


def large_rollups(tenant_id: int, events: int, today: dt.date, seed: int = 7):
    """The rollup rows that ``events`` events over HISTORY_DAYS days leave: one row
    per day, metric, service and user (a tenth of events without a user)."""
    rng = random.Random(seed)
    users = [""] + [f"user-{n:02d}" for n in range(1, USERS + 1)]
    user_weights = [USERS // 9 or 1] + [1] * USERS  # about a tenth unattributed
    days = [today - dt.timedelta(days=d) for d in range(HISTORY_DAYS, 0, -1)]
    per_day = _split(events, [1] * len(days))
    for day, day_events in zip(days, per_day, strict=True):
        per_metric = _split(day_events, [w for _, w in METRIC_MIX])
        for (metric, _), metric_events in zip(METRIC_MIX, per_metric, strict=True):
            services = _services(metric)
            per_service = _split(metric_events, [w for _, w in services])
            for (service, _), service_events in zip(services, per_service, strict=True):
                for user, count in zip(users, _split(service_events, user_weights),
                                       strict=True):
                    if count == 0:
                        continue
                    if metric == "storage_gb":
                        micro = rng.randint(1_000, 500_000) * 1_000
                    else:
                        micro = count * MEAN_MICRO[metric]
                    yield {"tenant_id": tenant_id, "day": day, "metric": metric,
                           "service": service, "user_ref": user, "quantity_micro": micro,
                           "event_count": count}


def load_large(tenant, events: int, today: dt.date) -> int:
    from sqlalchemy import insert

    from plans.models import UsageRollup
    from portal.extensions import db

    rows, written = [], 0
    for row in large_rollups(tenant.id, events, today):
        rows.append(row)
        if len(rows) == INSERT_CHUNK:
            db.session.execute(insert(UsageRollup), rows)
            written += len(rows)
            rows = []
    if rows:
        db.session.execute(insert(UsageRollup), rows)
        written += len(rows)
    db.session.commit()
    return written


def load_ledger(tenant, today: dt.date) -> None:
    """The same credit history for both tenants: a top-up on the first of each month
    and a usage charge every day."""
    from invoices import ledger
    from portal.audit import Actor

    actor = Actor.system("bench")
    for n in range(HISTORY_DAYS, 0, -1):
        day = today - dt.timedelta(days=n)
        at = dt.datetime.combine(day, dt.time(9), dt.UTC)
        if day.day == 1 or n == HISTORY_DAYS:
            ledger.post_entry(tenant, actor, "topup", 500_000, "monthly top-up",
                              source="stripe_webhook", at=at, commit=False)
        ledger.post_entry(tenant, actor, "usage", -1_500, "daily usage",
                          at=at + dt.timedelta(hours=8), commit=False)
    from portal.extensions import db

    db.session.commit()


# -- the reads -------------------------------------------------------------------------

def breakdown(tenant) -> None:
    from api.queries import cost_breakdown

    cost_breakdown(tenant)


def analytics_view(tenant, view: str) -> None:
    from invoices import analytics
    from plans.periods import today_in

    rng = analytics.date_range(view, None, None, today_in(tenant.timezone))
    analytics.daily_of(tenant, analytics.analytics(tenant, rng))


READS = {
    "breakdown": breakdown,
    "analytics, 30 days": lambda t: analytics_view(t, "month"),
    "analytics, 12 months": lambda t: analytics_view(t, "year"),
}


def counts(tenant) -> dict[str, int]:
    from sqlalchemy import func, select

    from plans.models import UsageEvent, UsageRollup, UsageRollupMonth
    from portal.extensions import db
    from tenants.scoping import tenant_scope

    with tenant_scope(tenant):
        result = {
            "events": int(db.session.scalar(
                select(func.coalesce(func.sum(UsageRollup.event_count), 0)))),
            "event_rows": db.session.scalar(select(func.count()).select_from(UsageEvent)),
            "rollup_rows": db.session.scalar(select(func.count()).select_from(UsageRollup)),
            "month_rows": db.session.scalar(select(func.count()).select_from(UsageRollupMonth)),
        }
    db.session.rollback()
    return result


def tables_read(tenant_id: int) -> set[str]:
    from sqlalchemy import event

    from portal.extensions import db

    statements: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        for read in READS.values():
            read(fresh(tenant_id))
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    tables = re.compile(r"\b(?:usage_event|usage_rollup(?:_month|_service)?|ledger_entry)\b")
    return {name for s in statements for name in tables.findall(s)}


def time_reads(tenant_ids: dict[str, int]) -> dict[str, dict[str, list[float]]]:
    timings = {read: {name: [] for name in tenant_ids} for read in READS}
    for read, call in READS.items():
        for tenant_id in tenant_ids.values():  # warm-up
            call(fresh(tenant_id))
        for _ in range(RUNS):
            for name, tenant_id in tenant_ids.items():
                tenant = fresh(tenant_id)
                with Stopwatch() as clock:
                    call(tenant)
                timings[read][name].append(clock.seconds * 1000)
    return timings


def seed(dialect: str, large_count: int, today: dt.date, now: dt.datetime) -> dict[str, int]:
    """Both tenants and their history; returns their ids by name."""
    from plans.metering import compact_usage
    from plans.services import ensure_default_catalog, list_plans, subscribe
    from portal.audit import Actor

    ensure_default_catalog()
    professional = next(p for p in list_plans() if p.code == "professional")
    starts_on = today - dt.timedelta(days=HISTORY_DAYS + 7)
    tenants = {}
    for name in ("small", "large"):
        tenant = new_tenant(f"bench-{name}")
        subscribe(Actor.system("bench"), tenant, professional, starts_on=starts_on)
        load_ledger(tenant, today)
        tenants[name] = tenant
    log(f"{dialect}: {SMALL_EVENTS:,} events through the service for the small tenant")
    load_small(tenants["small"], SMALL_EVENTS, now)
    with Stopwatch() as load:
        rollups = load_large(tenants["large"], large_count, today)
    log(f"{dialect}: {rollups:,} rollup rows for {large_count:,} events in "
        f"{load.seconds:.0f} s; compacting and analyzing")
    # As the hourly compaction job leaves them: the days before today added up by month.
    compact_usage(now)
    analyze(dialect)
    return {name: t.id for name, t in tenants.items()}


def seeded(large_count: int, today: dt.date) -> dict[str, int] | None:
    """The ids of the tenants a kept database holds, if it was seeded today for
    ``large_count`` events."""
    from sqlalchemy import func, select

    from plans.models import UsageRollup
    from portal.extensions import db
    from tenants.models import Tenant
    from tenants.scoping import unscoped

    with unscoped():
        ids = dict(db.session.execute(
            select(Tenant.slug, Tenant.id).where(Tenant.slug.in_(("bench-small", "bench-large")))
        ).all())
        if len(ids) != 2:
            return None
        events, last = db.session.execute(
            select(func.coalesce(func.sum(UsageRollup.event_count), 0), func.max(UsageRollup.day))
            .where(UsageRollup.tenant_id == ids["bench-large"])).one()
    db.session.rollback()
    if int(events) != large_count or last != today - dt.timedelta(days=1):
        return None
    return {"small": ids["bench-small"], "large": ids["bench-large"]}


def run_case(dialect: str, url: str, large_count: int, reuse: bool
             ) -> tuple[list[Row], list[list[str]]]:
    now = dt.datetime.now(dt.UTC)
    today = now.date()
    ids = None
    if reuse:
        with migrated_app(url):
            ids = seeded(large_count, today)
        if ids is None:
            reset(dialect, url)
    with migrated_app(url):
        if ids is None:
            ids = seed(dialect, large_count, today, now)
        else:
            log(f"{dialect}: reusing the tenants seeded earlier today")
            from plans.metering import compact_usage

            if compact_usage(now):
                analyze(dialect)
        sizes = {name: counts(fresh(tenant_id)) for name, tenant_id in ids.items()}
        read = {name: tables_read(tenant_id) for name, tenant_id in ids.items()}
        log(f"{dialect}: timing {len(READS)} reads, {RUNS} runs per tenant")
        timings = time_reads(ids)
    rows, detail_rows = [], []
    touched_events = any("usage_event" in names for names in read.values())
    for name_of_read, per_tenant in timings.items():
        ms = {name: median(values) for name, values in per_tenant.items()}
        ratio = ms["large"] / ms["small"]
        verdict = (("about equal" if ratio <= EQUAL_WITHIN else "grows with rollup rows")
                   + f" (<= {EQUAL_WITHIN:.1f}x); "
                   + ("reads usage_event" if touched_events else "reads rollups and ledger"))
        rows.append(Row(
            case=f"{dialect}: {name_of_read}",
            measured=Measure(label(sizes["large"]["events"]), ms["large"], "ms"),
            baseline=Measure(label(sizes["small"]["events"]), ms["small"], "ms"),
            ratio=ratio, ratio_label="large/small", verdict=verdict,
            details={name: {**sizes[name], "median_ms": round(ms[name], 3),
                            "min_ms": round(min(per_tenant[name]), 3),
                            "tables_read": sorted(read[name])} for name in ids}))
        for name in ids:
            detail_rows.append([dialect, name_of_read, name, f"{sizes[name]['events']:,}",
                                f"{sizes[name]['rollup_rows']:,}",
                                f"{sizes[name]['month_rows']:,}", format_number(ms[name]),
                                format_number(min(per_tenant[name]))])
    return rows, detail_rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller size, for a fast check")
    parser.add_argument("--keep", action="store_true",
                        help=f"seed into databases named {KEPT} that are kept, and reuse "
                             "them when they were seeded today with the same size")
    parser.add_argument("--only", choices=DIALECTS, help="run on this database only")
    return parser.parse_args()


@contextmanager
def kept_postgres_database() -> Iterator[str]:
    """The PostgreSQL database ``KEPT``, created when missing and never dropped."""
    with pg_admin() as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (KEPT,)).fetchone():
            log(f"reusing PostgreSQL database {KEPT}")
        else:
            admin.execute(f'CREATE DATABASE "{KEPT}"')
            log(f"created PostgreSQL database {KEPT} (kept)")
    yield with_database(KEPT)


@contextmanager
def kept_sqlite_database() -> Iterator[str]:
    yield f"sqlite:///{Path(tempfile.gettempdir()) / KEPT}.db"


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="billfold_bench_analytics_") as tmp:
        yield f"sqlite:///{tmp}/bench.db"


def reset(dialect: str, url: str) -> None:
    """Empty a kept database without today's seed, so that it is seeded afresh."""
    log(f"{dialect}: the kept database holds no seed of today; seeding it afresh")
    if dialect == "sqlite":
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
        return
    with pg_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{KEPT}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{KEPT}"')


def main() -> None:
    args = parse_args()
    large = QUICK_LARGE_EVENTS if args.quick else FULL_LARGE_EVENTS
    databases = {"postgresql": kept_postgres_database if args.keep
                 else lambda: postgres_database("billfold_bench_analytics"),
                 "sqlite": kept_sqlite_database if args.keep else sqlite_database}
    rows, details = [], []
    for dialect in DIALECTS:
        if args.only and dialect != args.only:
            continue
        with databases[dialect]() as url:
            case_rows, detail = run_case(dialect, url, large, args.keep)
        rows += case_rows
        details += detail
    print()
    print(f"Per tenant (median and fastest of {RUNS} runs):")
    print(format_table(["database", "read", "tenant", "events", "rollup rows", "month rows",
                        "median ms",
                        "min ms"], details))
    report(BENCHMARK,
           f"cost breakdown and analytics latency: {label(large)} vs {label(SMALL_EVENTS)}",
           rows,
           notes=[f"median of {RUNS} runs after one warm-up, tenants alternating, each run "
                  "in a new transaction",
                  "the large tenant's rollups were inserted in bulk as its events would "
                  "have left them (usage_event stays empty: these reads never touch it)"],
           size={"small_events": SMALL_EVENTS, "large_events": large, "runs": RUNS})


if __name__ == "__main__":
    main()
