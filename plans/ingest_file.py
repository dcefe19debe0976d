"""Reading usage events from JSON-lines and CSV files for ``flask billfold ingest``."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from plans.metering import BatchRejected, EventError, ingest_events
from tenants.models import Tenant

CSV_COLUMNS = ("id", "metric", "quantity", "timestamp", "service", "user", "properties")


@dataclass
class FileReport:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (line, field, message)

    def error_lines(self, limit: int) -> list[str]:
        lines = [f"line {n}: {f}: {m}" for n, f, m in self.errors[:limit]]
        if len(self.errors) > limit:
            lines.append(f"... and {len(self.errors) - limit} more errors")
        return lines


def _rows_jsonl(stream) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            yield number, _Unparsable(f"not JSON: {exc.msg}")


def _rows_csv(stream) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(stream)
    missing = {"id", "metric", "quantity", "timestamp"} - set(reader.fieldnames or [])
    if missing:
        yield 1, _Unparsable(f"the CSV header lacks: {', '.join(sorted(missing))}")
        return
    for row in reader:
        event: dict[str, Any] = {k: v for k, v in row.items() if k and v not in (None, "")}
        if "properties" in event:
            try:
                event["properties"] = json.loads(event["properties"], parse_float=Decimal)
            except json.JSONDecodeError:
                pass  # left as a string: validation reports it
        yield reader.line_num, event


class _Unparsable:
    def __init__(self, message: str):
        self.message = message


def _open(path: str):
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - closed by the caller


def _count_lines(path: str) -> int | None:
    if path == "-":
        return None
    with open(path, "rb") as raw:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: raw.read(1 << 20), b""))


def ingest_file(tenant: Tenant, path: str, *, fmt: str = "auto",
                batch_size: int = 1000) -> FileReport:
    """Ingest ``path`` in batches of ``batch_size``, each all or nothing."""
    if fmt == "auto":
        fmt = "csv" if Path(path).suffix.lower() == ".csv" else "jsonl"
    report = FileReport()
    stream = _open(path)
    try:
        rows = _rows_csv(stream) if fmt == "csv" else _rows_jsonl(stream)
        total = _count_lines(path)
        with click.progressbar(length=total or 1, label="Ingesting", file=sys.stderr) as bar:
            batch: list[tuple[int, Any]] = []
            for number, row in rows:
                batch.append((number, row))
                if len(batch) >= batch_size:
                    _flush(tenant, batch, report)
                    bar.update(len(batch))
                    batch = []
            if batch:
                _flush(tenant, batch, report)
                bar.update(len(batch))
    finally:
        if path != "-":
            stream.close()
    return report


def _flush(tenant: Tenant, batch: list[tuple[int, Any]], report: FileReport) -> None:
    unparsable = [(n, r.message) for n, r in batch if isinstance(r, _Unparsable)]
    if unparsable:
        report.rejected += len(batch)
        report.errors.extend((n, "line", m) for n, m in unparsable)
        return
    try:
        result = ingest_events(tenant, [row for _, row in batch])
    except BatchRejected as exc:
        report.rejected += len(batch)
        report.errors.extend(_located(batch, exc.errors))
        return
    report.accepted += result.accepted
    report.duplicates += result.duplicates


def _located(batch, errors: list[EventError]) -> list[tuple[int, str, str]]:
    return [(batch[e.index][0], e.field, e.message) for e in errors]
