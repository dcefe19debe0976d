"""The ``before`` cursor of paged pages: the id of the last row shown."""

from __future__ import annotations

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
