"""CSV exports, streamed, with spreadsheet formula injection neutralised."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """A text cell that a spreadsheet would read as a formula gets a leading quote.
    Numbers stay numbers (a negative amount is not a formula)."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def stream_csv(header: list[str], rows: Iterable[Iterable[Any]],
               preamble: list[str] | None = None) -> Iterator[str]:
    """Yield a CSV document a line at a time: optional ``# ...`` preamble lines, the
    header, then each row with text cells neutralised."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def flush() -> str:
        data = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate(0)
        return data

    for line in preamble or []:
        writer.writerow([f"# {line}"])
    writer.writerow(header)
    yield flush()
    for row in rows:
        writer.writerow([neutralise(cell) for cell in row])
        yield flush()
