"""Closing a period for 10,000 tenants, and the cost of our PDF path over WeasyPrint's.

Close: for PostgreSQL and for SQLite, each on a fresh database, N tenants (10,000;
500 with --quick) are bulk-loaded in SQL (COPY on PostgreSQL, executemany on SQLite):
the tenant rows, a subscription each (Starter or Professional, started before last
month), a billing account with a sales-tax rate for every fourth tenant, and about
ten ``usage_rollup`` rows each in last month (three metrics on three days, over one
to three end users, half of the metrics beyond the plan's included amount so that
overage lines exist). No users and no audit rows are made. After ANALYZE, the clock
times ``close_due(period_label=<last month>, render=False)``: every tenant's
invoice rated, numbered, snapshotted and committed, one transaction per tenant, the
PDF left to its job (the deferred jobs are dropped after each tenant, never run).
The rate of every tenth of the tenants is logged, and the second and the last are
printed side by side, to show whether a close slows down as it goes (the first
tenth also holds close_due's look-up of every tenant's period).
Afterwards, untimed: exactly N invoices, numbered 1 to N without a gap, the lines of
every invoice adding up to its subtotal, and for a sample the snapshot's per-user
amounts and platform fee adding up to it too.

PDF: then, on the same database, for a sample of the issued invoices (50; 10 with
--quick), each invoice is rendered by our path, ``render_invoice(id, force=True)``
(the snapshot read, the template rendered, WeasyPrint, SHA-256, the bytes stored and
committed), and by a bare ``weasyprint.HTML(string=html, base_url=...).write_pdf()``
of the same HTML. That HTML is made beforehand, untimed, by running
``render_invoice_pdf`` with WeasyPrint's ``HTML`` stubbed out, so it is exactly the
string and base URL that ``portal.pdf.render_pdf`` hands over. One untimed render
of each kind warms WeasyPrint up; then the two take turns (which goes first
alternates per invoice, and a garbage collection precedes each) and their median
wall times are compared; this process's CPU time is shown beside them, since the
wall time also counts waiting for the database and for other processes. Target:
our overhead, ours / bare - 1, under 15%.

    python bench/close_period.py [--quick]
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import random
import re
import sys
import tempfile
import time
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from unittest import mock

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
    parse_args,
    postgres_database,
    report,
)

BENCHMARK = "close_period"
FULL_TENANTS = 10_000
QUICK_TENANTS = 500
FULL_PDFS = 50
QUICK_PDFS = 10
SNAPSHOT_SAMPLE = 200
TARGET = 0.15  # our PDF path may take at most 15% longer than the bare render
PATHS = ("ours", "bare")
PLAN_MIX = (("starter", 7), ("professional", 3))
TAX_RATE = Decimal("8.2500")  # every fourth tenant
USERS = [f"user-{n:02d}" for n in range(1, 11)]
METRIC_DAYS = 3
METRICS_PER_TENANT = 3
# The services each metric's usage is recorded under (the first is its default).
METRIC_SERVICES = {"llm_tokens": ("ai_service",), "sql_queries": ("query_engine",),
                   "storage_gb": ("query_engine",), "api_requests": ("ai_service", "ml_service"),
                   "compute_hours": ("ai_service", "ml_service")}
NUMBER_RE = re.compile(r"^BF-(\d{4})-(\d{6})$")


def last_month():
    """Last month's billing period (anchor day 1)."""
    from plans.periods import period_containing

    return period_containing(dt.datetime.now(dt.UTC).date()).previous()


# -- set-up: bulk rows -----------------------------------------------------------------

def bulk_insert(table, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """Append ``rows`` (values in ``columns`` order) to ``table`` and commit: one COPY
    on PostgreSQL, one executemany on SQLite."""
    from portal.extensions import db

    db.session.commit()
    if db.engine.dialect.name == "postgresql":
        pooled = db.engine.raw_connection()
        try:
            conn = pooled.driver_connection
            sql = "COPY {} ({}) FROM STDIN".format(table.name, ", ".join(columns))
            with conn.cursor() as cur, cur.copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
            conn.commit()
        finally:
            pooled.close()
    else:
        db.session.execute(table.insert(), [dict(zip(columns, row, strict=True))
                                            for row in rows])
        db.session.commit()


def plan_versions() -> dict[str, object]:
    """The current version of each catalog plan, prices loaded, by plan code."""
    from plans.services import ensure_default_catalog, list_plans

    ensure_default_catalog()
    return {plan.code: plan.current_version for plan in list_plans()}


def usage_rows(rng: random.Random, tenant_id: int, version, period) -> list[tuple]:
    """About ten rollup rows: METRICS_PER_TENANT metrics on METRIC_DAYS days of
    ``period``, a row per day and metric plus a second end user now and then. Each
    metric ends up at 20-90% or at 110-300% of what the plan includes."""
    from plans.metrics import METRICS, PEAK

    users = rng.sample(USERS, rng.randint(1, 3))
    rows = []
    for code in rng.sample(sorted(METRIC_SERVICES), METRICS_PER_TENANT):
        price = version.price_for(code)
        per_unit = METRICS[code].per_billing_unit
        included_micro = int(price.included * per_unit * 1_000_000)
        percent = rng.randint(110, 300) if rng.random() < 0.5 else rng.randint(20, 90)
        days = sorted(rng.sample(range(period.days), METRIC_DAYS))
        if METRICS[code].aggregation == PEAK:
            # A daily reading each day; the peak day holds the chosen level.
            levels = [percent - rng.randint(1, 15) for _ in days]
            levels[rng.randrange(len(days))] = percent
        else:
            levels = [percent // len(days)] * len(days)
        for day, level in zip(days, levels, strict=True):
            cells = [(rng.choice(METRIC_SERVICES[code]), users[0])]
            if len(users) > 1 and rng.random() < 0.3:
                cells.append((rng.choice(METRIC_SERVICES[code]), users[1]))
            for service, user in dict.fromkeys(cells):
                micro = included_micro * level // 100 // len(cells)
                rows.append((tenant_id, period.start + dt.timedelta(days=day), code, service,
                             user, micro, rng.randint(1, 500)))
    return rows


def load_tenants(count: int, period) -> dict[str, int]:
    """``count`` active tenants with their subscriptions, billing accounts and last
    month's rollups, in bulk. Returns the row counts."""
    from sqlalchemy import select

    from invoices.models import BillingAccount
    from plans.models import Subscription, UsageRollup
    from portal.extensions import db
    from tenants.models import Tenant
    from tenants.scoping import unscoped

    rng = random.Random(17)
    versions = plan_versions()
    bulk_insert(Tenant.__table__,
                ("name", "slug", "currency", "timezone", "billing_email", "status"),
                [(f"Bench Tenant {n:05d}", f"bench-{n:05d}", "USD", "UTC",
                  f"billing@bench-{n:05d}.example", "active") for n in range(1, count + 1)])
    with unscoped():
        ids = list(db.session.scalars(select(Tenant.id).order_by(Tenant.slug)))
    db.session.commit()
    codes = [code for code, _ in PLAN_MIX]
    weights = [weight for _, weight in PLAN_MIX]
    plans = {tenant_id: versions[rng.choices(codes, weights)[0]] for tenant_id in ids}
    bulk_insert(Subscription.__table__,
                ("tenant_id", "plan_version_id", "starts_on", "anchor_day", "created_by"),
                [(tenant_id, version.id, period.start - dt.timedelta(days=rng.randint(1, 400)),
                  1, "bench") for tenant_id, version in plans.items()])
    bulk_insert(BillingAccount.__table__, ("tenant_id", "tax_rate_percent"),
                [(tenant_id, TAX_RATE) for tenant_id in ids[::4]])
    rollups = [row for tenant_id, version in plans.items()
               for row in usage_rows(rng, tenant_id, version, period)]
    bulk_insert(UsageRollup.__table__,
                ("tenant_id", "day", "metric", "service", "user_ref", "quantity_micro",
                 "event_count"),
                rollups)
    return {"tenants": len(ids), "rollup_rows": len(rollups)}


def analyze() -> None:
    from portal.extensions import db

    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)")
    else:
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


# -- the close ---------------------------------------------------------------------------

def close_all(period, count: int, case: str) -> dict:
    """Seconds for ``close_due`` over every tenant, the SQL statements it sent, and
    its rate in each tenth of the tenants (the first tenth includes working out
    every tenant's period, which close_due does before closing any)."""
    from sqlalchemy import event

    from invoices.invoicing import close_due
    from portal import jobs
    from portal.extensions import db

    statements = 0
    tenth = max(1, count // 10)
    marks: list[float] = []

    def count_statement(*args) -> None:
        nonlocal statements
        statements += 1

    def after_tenant(done: int, total: int) -> None:
        jobs._pending().clear()
        if done % tenth == 0:
            marks.append(time.perf_counter())
            log(f"{case}: {done:,} of {total:,} tenants closed "
                f"({tenth / (marks[-1] - marks[-2]):.1f} invoices/s in the last {tenth:,})")

    db.session.remove()
    jobs._pending().clear()
    event.listen(db.engine, "before_cursor_execute", count_statement)
    try:
        with Stopwatch() as clock:
            marks.append(clock.start)
            results = close_due(period_label=period.label, render=False, progress=after_tenant)
    finally:
        event.remove(db.engine, "before_cursor_execute", count_statement)
    jobs._pending().clear()
    if len(results) != count:
        raise RuntimeError(f"{case}: close_due issued {len(results)} invoices, not {count}")
    return {"close_seconds": clock.seconds, "statements": statements,
            "tenth_rates": [round(tenth / (b - a), 1) for a, b in pairwise(marks)]}


def verify(count: int, case: str) -> dict[str, int]:
    """Raise unless there are ``count`` invoices numbered 1 to ``count`` in one year,
    each with lines adding up to its subtotal, and a sample's snapshots adding up
    too. Returns line counts."""
    from sqlalchemy import func, select

    from invoices.models import Invoice, InvoiceLine
    from portal.extensions import db
    from tenants.scoping import unscoped

    with unscoped():
        numbers = list(db.session.scalars(select(Invoice.number)))
        tenants = db.session.scalar(select(func.count(func.distinct(Invoice.tenant_id))))
        sums = db.session.execute(
            select(Invoice.id, Invoice.subtotal_minor, func.sum(InvoiceLine.amount_minor),
                   func.count(InvoiceLine.id))
            .outerjoin(InvoiceLine, InvoiceLine.invoice_id == Invoice.id)
            .group_by(Invoice.id, Invoice.subtotal_minor)).all()
        overage = db.session.scalar(select(func.count(InvoiceLine.id))
                                    .where(InvoiceLine.kind == "overage"))
        sample = random.Random(3).sample([row[0] for row in sums], min(SNAPSHOT_SAMPLE, count))
        snapshots = list(db.session.execute(
            select(Invoice.subtotal_minor, Invoice.snapshot).where(Invoice.id.in_(sample))))
    db.session.rollback()
    parsed = [NUMBER_RE.match(number or "") for number in numbers]
    if len(numbers) != count or tenants != count or not all(parsed):
        raise RuntimeError(f"{case}: {len(numbers)} invoices for {tenants} tenants, "
                           f"not {count} numbered ones")
    if len({m.group(1) for m in parsed}) != 1 \
            or sorted(int(m.group(2)) for m in parsed) != list(range(1, count + 1)):
        raise RuntimeError(f"{case}: invoice numbers are not 1 to {count} in one year")
    wrong = [row[0] for row in sums if row[2] is None or row[1] != row[2]]
    if wrong:
        raise RuntimeError(f"{case}: lines do not add up to the subtotal of {len(wrong)} "
                           f"invoices, e.g. id {wrong[0]}")
    for subtotal, text in snapshots:
        snap = json.loads(text)
        lines = sum(line["amount"] for line in snap["lines"])
        users = sum(row["amount"] for row in snap["by_user"]) + snap["platform_fee"]
        if not subtotal == snap["subtotal"] == lines == users:
            raise RuntimeError(f"{case}: snapshot of {snap['number']} does not add up")
    if not overage:
        raise RuntimeError(f"{case}: no overage lines: the usage never exceeded a plan")
    return {"lines": sum(row[3] for row in sums), "overage_lines": overage}


def run_case(case: str, url: str, count: int, period, pdfs: int) -> dict:
    """Set up, close and verify on one database, then time ``pdfs`` PDFs there.
    Returns the figures."""
    with migrated_app(url):
        log(f"{case}: loading {count:,} tenants with subscriptions and rollups")
        with Stopwatch() as setup:
            sizes = load_tenants(count, period)
            analyze()
        log(f"{case}: set up in {setup.seconds:.1f} s ({sizes['rollup_rows']:,} rollup rows); "
            f"closing {period.label}")
        close = close_all(period, count, case)
        log(f"{case}: {count:,} invoices in {close['close_seconds']:.1f} s; verifying")
        sizes |= verify(count, case)
        result = {"case": case, **sizes, "setup_seconds": setup.seconds, **close}
        result["pdf"] = time_pdfs(pdfs, case)
    return result


# -- the PDFs ------------------------------------------------------------------------------

def pdf_sample(size: int) -> list[int]:
    """Invoice ids spread evenly over all issued invoices."""
    from sqlalchemy import select

    from invoices.models import Invoice
    from portal.extensions import db
    from tenants.scoping import unscoped

    with unscoped():
        ids = list(db.session.scalars(select(Invoice.id).order_by(Invoice.id)))
    db.session.rollback()
    step = len(ids) / size
    return [ids[int(i * step)] for i in range(size)]


def handed_to_weasyprint(invoice_id: int) -> tuple[str, str]:
    """The HTML string and base URL that our path passes to ``weasyprint.HTML`` for
    the invoice: ``render_invoice_pdf`` runs with ``HTML`` replaced by a recorder."""
    from invoices.invoice_pdf import render_invoice_pdf
    from invoices.invoicing import snapshot_of
    from invoices.models import Invoice
    from portal.extensions import db
    from tenants.scoping import unscoped

    handed: list[tuple[str, str]] = []

    class Recorder:
        def __init__(self, *, string, base_url, **options):
            handed.append((string, base_url))

        def write_pdf(self, **options) -> bytes:
            return b""

    with unscoped():
        snapshot = snapshot_of(db.session.get(Invoice, invoice_id))
    db.session.rollback()
    with mock.patch("weasyprint.HTML", Recorder):
        render_invoice_pdf(snapshot)
    [(html, base_url)] = handed
    return html, base_url


def ours(invoice_id: int) -> tuple[float, float, int]:
    """Wall and CPU seconds for ``render_invoice(id, force=True)`` from a fresh
    session, and the size of the PDF it stored."""
    from sqlalchemy import func, select

    from invoices.invoicing import render_invoice
    from invoices.models import Invoice
    from portal.extensions import db
    from tenants.scoping import unscoped

    db.session.rollback()
    db.session.expunge_all()
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    digest = render_invoice(invoice_id, force=True)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    with unscoped():
        stored, size = db.session.execute(
            select(Invoice.pdf_sha256, func.length(Invoice.pdf))
            .where(Invoice.id == invoice_id)).one()
    db.session.rollback()
    if digest is None or stored != digest:
        raise RuntimeError(f"invoice {invoice_id}: no PDF stored")
    return seconds, cpu_seconds, size


def bare(html: str, base_url: str) -> tuple[float, float, int]:
    """Wall and CPU seconds for WeasyPrint alone to turn ``html`` into a PDF, and
    the PDF's size."""
    import weasyprint

    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    data = weasyprint.HTML(string=html, base_url=base_url).write_pdf()
    return time.perf_counter() - started, time.process_time() - cpu, len(data)


def time_pdfs(size: int, case: str) -> dict:
    """Milliseconds per PDF (wall and CPU), ours and bare, taking turns over a sample
    of invoices."""
    ids = pdf_sample(size)
    handed = {invoice_id: handed_to_weasyprint(invoice_id) for invoice_id in ids}
    log(f"{case}: warming WeasyPrint up, then {size} invoices rendered both ways")
    ours(ids[0])
    bare(*handed[ids[0]])
    figures: dict[str, list[float]] = {f"{name}_{kind}": [] for name in PATHS
                                       for kind in ("ms", "cpu_ms", "kb")}
    for turn, invoice_id in enumerate(ids):
        for name in PATHS if turn % 2 == 0 else PATHS[::-1]:
            seconds, cpu_seconds, pdf_bytes = (ours(invoice_id) if name == "ours"
                                               else bare(*handed[invoice_id]))
            figures[f"{name}_ms"].append(seconds * 1000)
            figures[f"{name}_cpu_ms"].append(cpu_seconds * 1000)
            figures[f"{name}_kb"].append(pdf_bytes / 1024)
    html_kb = median([len(html.encode()) / 1024 for html, _ in handed.values()])
    return {"invoices": size, "html_kb": html_kb, **figures}


# -- report ----------------------------------------------------------------------------------

def close_row(result: dict) -> Row:
    rate = result["tenants"] / result["close_seconds"]
    pdf_rate = 1000 / median(result["pdf"]["bare_ms"])
    return Row(case=result["case"],
               measured=Measure("close, no PDF", rate, "invoices/s"),
               baseline=Measure("bare WeasyPrint", pdf_rate, "PDFs/s"),
               ratio=rate / pdf_rate, ratio_label="close/PDF",
               verdict="no target: the close's rate without PDFs",
               details={key: value for key, value in result.items() if key != "pdf"}
               | {"invoices_per_second": round(rate, 1),
                  "ms_per_invoice": round(1000 / rate, 3),
                  "statements_per_invoice": round(result["statements"] / result["tenants"], 1)})


def pdf_row(result: dict) -> Row:
    pdf = result["pdf"]
    ours_ms, bare_ms = median(pdf["ours_ms"]), median(pdf["bare_ms"])
    ratio = ours_ms / bare_ms
    overhead = ratio - 1
    verdict = (("PASS" if overhead < TARGET else "MISS")
               + f": overhead {overhead:+.1%} (target < {TARGET:.0%})")
    return Row(case=f"{result['case']}, PDF",
               measured=Measure("render_invoice", ours_ms, "ms"),
               baseline=Measure("bare WeasyPrint", bare_ms, "ms"),
               ratio=ratio, ratio_label="ours/bare", verdict=verdict,
               details={"invoices": pdf["invoices"], "overhead": round(overhead, 4),
                        "html_kb": round(pdf["html_kb"], 1)}
               | {f"{name}_cpu_ms_median": round(median(pdf[f"{name}_cpu_ms"]), 2)
                  for name in PATHS}
               | {f"{name}_pdf_kb_median": round(median(pdf[f"{name}_kb"]), 1)
                  for name in PATHS}
               | {f"{name}_ms": [round(v, 2) for v in pdf[f"{name}_ms"]] for name in PATHS})


def print_details(results: list[dict], period, count: int) -> None:
    print()
    print(f"Closing {period.label} for {count:,} tenants:")
    print(format_table(
        ["database", "tenants", "rollup rows", "lines", "overage lines", "set-up s", "close s",
         "invoices/s", "ms/invoice", "2nd/last tenth invoices/s", "statements/invoice"],
        [[r["case"], f"{r['tenants']:,}", f"{r['rollup_rows']:,}", f"{r['lines']:,}",
          f"{r['overage_lines']:,}", f"{r['setup_seconds']:.1f}", f"{r['close_seconds']:.1f}",
          format_number(r["tenants"] / r["close_seconds"]),
          format_number(1000 * r["close_seconds"] / r["tenants"]),
          f"{format_number(r['tenth_rates'][1])} / {format_number(r['tenth_rates'][-1])}",
          f"{r['statements'] / r['tenants']:.1f}"] for r in results]))
    pdf = results[0]["pdf"]
    print()
    print(f"PDF per invoice, {pdf['invoices']} invoices each (ms; HTML about "
          f"{pdf['html_kb']:.0f} KB; CPU is this process's):")
    print(format_table(
        ["database", "path", "median", "min", "max", "median CPU", "PDF KB"],
        [[r["case"], name, format_number(median(r["pdf"][f"{name}_ms"])),
          format_number(min(r["pdf"][f"{name}_ms"])), format_number(max(r["pdf"][f"{name}_ms"])),
          format_number(median(r["pdf"][f"{name}_cpu_ms"])),
          format_number(median(r["pdf"][f"{name}_kb"]))]
         for r in results for name in PATHS]))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count = QUICK_TENANTS if args.quick else FULL_TENANTS
    pdfs = QUICK_PDFS if args.quick else FULL_PDFS
    period = last_month()
    started = time.perf_counter()
    results = []
    with postgres_database("billfold_bench_close") as url:
        results.append(run_case("postgresql", url, count, period, pdfs))
    with tempfile.TemporaryDirectory(prefix="bench_close_") as tmp:
        results.append(run_case("sqlite", f"sqlite:///{tmp}/bench.db", count, period, pdfs))
    print_details(results, period, count)
    report(BENCHMARK,
           f"Period close for {count:,} tenants; PDF per invoice, ours vs bare WeasyPrint",
           [close_row(r) for r in results] + [pdf_row(r) for r in results],
           notes=[f"close: close_due(period_label={period.label!r}, render=False), one "
                  "transaction per tenant, deferred jobs dropped; set-up (bulk SQL) untimed: "
                  + ", ".join(f"{r['case']} {r['setup_seconds']:.1f} s" for r in results),
                  f"PDF: median wall time over {pdfs} invoices after one warm-up each, the "
                  "two paths alternating; ours = render_invoice(id, force=True) with the "
                  "snapshot read, the bytes stored and the commit; bare = "
                  "weasyprint.HTML(string=html, base_url=...).write_pdf() of the same HTML",
                  f"total run time {time.perf_counter() - started:.0f} s"],
           size={"tenants": count, "pdf_invoices": pdfs})


if __name__ == "__main__":
    main()
