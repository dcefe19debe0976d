"""Query-string arguments of paged pages: the ``before`` cursor (the id of the last
row shown) and the ``from``/``to`` dates of a range."""

from __future__ import annotations

import datetime as dt

from flask import abort, request

INT32_MAX = 2**31 - 1  # Integer primary keys
INT64_MAX = 2**63 - 1  # BigInteger primary keys


def cursor_arg(largest_id: int = INT64_MAX) -> int | None:
    """``?before=`` as an id; 400 when it is not a number. A cursor above any id the
    table can hold means "from the newest", like no cursor (the database would refuse
    the value as out of range)."""
    raw = request.args.get("before", "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        abort(400)
    value = int(raw)
    return None if value > largest_id else value


def date_args(errors: list[str]) -> dict[str, dt.date]:
    """The query string's ``from`` and ``to`` dates; a malformed one adds to
    ``errors`` and is left out."""
    days = {}
    for key in ("from", "to"):
        raw = request.args.get(key, "").strip()
        if raw:
            try:
                days[key] = dt.date.fromisoformat(raw)
            except ValueError:
                errors.append(f"{key} must be a date such as 2026-11-01")
    return days
