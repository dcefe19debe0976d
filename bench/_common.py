"""Shared helpers for the benchmarks: throwaway databases, the app, output.

Each benchmark prints its own table and one ``BENCH_JSON {...}`` line, which
``run_all.py`` collects. A result row compares two measurements taken side by side
in the same run and carries a ratio and a verdict in words; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

# The server that holds the throwaway bench_* databases (any database on it that the
# user may connect to; the benchmark creates and drops its own next to it).
PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

JSON_PREFIX = "BENCH_JSON "


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smaller size, for a fast check")
    return parser.parse_args()


def log(message: str) -> None:
    print(f"  .. {message}", flush=True)


# -- databases -----------------------------------------------------------------------

def with_database(name: str) -> str:
    """The URL of database ``name`` on the benchmarks' PostgreSQL server."""
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def pg_admin():
    """An autocommit connection to the benchmarks' PostgreSQL server, or exit saying
    where it was looked for."""
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True)
    except psycopg.OperationalError as exc:
        raise SystemExit(f"PostgreSQL is not reachable at {PG_ADMIN_URL} "
                         f"(set BENCH_POSTGRES_URL): {exc}") from exc


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database named ``<prefix>_<random>``, dropped on exit
    (also after a failure). Yields its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        log(f"created PostgreSQL database {name}")
        try:
            yield with_database(name)
        finally:
            # FORCE ends connections a failed run may have left open.
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            log(f"dropped PostgreSQL database {name}")


@contextmanager
def migrated_app(url: str) -> Iterator:
    """The portal on ``url`` with every migration applied, inside an app context."""
    from flask_migrate import upgrade

    from portal import create_app
    from portal.extensions import db

    app = create_app({"DATABASE_URL": url, "TESTING": True})
    with app.app_context():
        upgrade()
        try:
            yield app
        finally:
            db.session.remove()
            db.engine.dispose()


def new_tenant(slug: str, timezone: str = "UTC"):
    from portal.audit import Actor
    from tenants.services import create_tenant

    return create_tenant(Actor.system("bench"), {
        "slug": slug, "name": slug.replace("-", " ").title(),
        "billing_email": f"billing@{slug}.example", "currency": "USD", "timezone": timezone,
    })


# -- timing --------------------------------------------------------------------------

class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- results -------------------------------------------------------------------------

@dataclass
class Measure:
    label: str  # what was measured, e.g. "service" or "10M events"
    value: float
    unit: str  # "events/s", "ms"

    def text(self) -> str:
        return f"{self.label}: {format_number(self.value)} {self.unit}"


@dataclass
class Row:
    case: str  # e.g. "sqlite"
    measured: Measure
    baseline: Measure
    ratio: float
    ratio_label: str  # e.g. "service/raw"
    verdict: str  # in words; never an assertion
    details: dict = field(default_factory=dict)


def format_number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
              for row in rows]
    return "\n".join(line.rstrip() for line in lines)


TABLE_HEADERS = ["benchmark", "case", "measured", "compared with", "ratio", "verdict"]


def table_rows(benchmark: str, rows: list[dict]) -> list[list[str]]:
    """Rows of the common table, from rows as they travel in the JSON line."""
    out = []
    for r in rows:
        measured, baseline = Measure(**r["measured"]), Measure(**r["baseline"])
        out.append([benchmark, r["case"], measured.text(), baseline.text(),
                    f"{r['ratio']:.2f} {r['ratio_label']}", r["verdict"]])
    return out


def report(benchmark: str, title: str, rows: list[Row], notes: list[str] | None = None,
           size: dict | None = None) -> None:
    """Print the benchmark's own table, then its JSON line for run_all.py."""
    plain = [asdict(r) for r in rows]
    print()
    print(title)
    print(format_table(TABLE_HEADERS, table_rows(benchmark, plain)))
    for note in notes or []:
        print(f"note: {note}")
    print(JSON_PREFIX + json.dumps({"benchmark": benchmark, "title": title, "size": size or {},
                                    "rows": plain, "notes": notes or []}), flush=True)
