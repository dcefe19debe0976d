"""Report reads from a PostgreSQL read replica.

With ``DATABASE_REPLICA_URL`` set, the GET requests of the report pages and API
endpoints (``REPLICA_READ_PATHS``: cost breakdown, usage analytics, the platform
overview, the API's usage, costs and revenue) read from the replica, so that the
heaviest reads of the portal stay off the primary. Within those requests only a
SELECT whose every table is a reporting table (rollups, events, the ledger,
invoices, subscriptions, the plan catalogue) goes to the replica; everything else
(a write, a ``SELECT ... FOR UPDATE``, and any read of users, roles, API keys or
tenants, where a revocation must take effect at once) stays on the primary. Every
other request reads and writes the primary only, so a page always sees what its own
form has just written.

The replica lags the primary by its replication delay (milliseconds on a streaming
replica): a report may miss the last moments of usage, never another tenant's data,
since tenant isolation is applied to the statement before it is sent anywhere.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Flask, g, has_request_context, request
from flask_sqlalchemy.session import Session
from sqlalchemy.sql.util import find_tables

BIND_KEY = "replica"
_FLAG = "billfold_replica_reads"

REPORTING_TABLES = frozenset({
    "usage_rollup", "usage_event", "ledger_entry", "invoice", "invoice_line",
    "invoice_payment", "credit_purchase", "auto_recharge", "subscription", "plan",
    "plan_version", "plan_metric_price", "billing_account", "usage_rollup_month",
    "usage_rollup_service", "usage_compaction",
})


def init_replica(app: Flask) -> None:
    """Register the replica's engine (before the database extension is bound) and
    mark the report requests that read from it."""
    from portal.config import normalise_database_url

    url = app.config.get("DATABASE_REPLICA_URL")
    if not url:
        return
    binds = dict(app.config.get("SQLALCHEMY_BINDS") or {})
    binds[BIND_KEY] = normalise_database_url(str(url))
    app.config["SQLALCHEMY_BINDS"] = binds
    prefixes = tuple(app.config.get("REPLICA_READ_PATHS") or ())

    @app.before_request
    def _mark_report_reads() -> None:
        if request.method in ("GET", "HEAD") and request.path.startswith(prefixes):
            g.setdefault(_FLAG, True)


def _wanted() -> bool:
    return has_request_context() and bool(g.get(_FLAG))


def _reporting(mapper: Any, clause: Any) -> bool:
    """Whether the statement only reads reporting tables."""
    if clause is None:  # Session.get(): one mapped class
        table = getattr(mapper, "local_table", None) if mapper is not None else None
        return table is not None and getattr(table, "name", None) in REPORTING_TABLES
    if not isinstance(clause, (sa.Select, sa.CompoundSelect)) \
            or getattr(clause, "_for_update_arg", None) is not None:
        return False
    names = {t.name for t in find_tables(clause) if isinstance(t, sa.Table)}
    return bool(names) and names <= REPORTING_TABLES


def _with_clause(statement: Any, bind_arguments: Any) -> Any:
    """SQLAlchemy names the statement to ``get_bind`` for a plain SELECT but not for a
    UNION: name it for that too."""
    if isinstance(statement, sa.CompoundSelect) and not (bind_arguments or {}).get("clause"):
        return {**(bind_arguments or {}), "clause": statement}
    return bind_arguments


class RoutingSession(Session):
    """Flask-SQLAlchemy's session, sending report reads to the replica (see above)."""

    def execute(self, statement: Any, params: Any = None, *args: Any,
                bind_arguments: Any = None, **kwargs: Any) -> Any:
        return super().execute(statement, params, *args,
                               bind_arguments=_with_clause(statement, bind_arguments),
                               **kwargs)

    def scalars(self, statement: Any, params: Any = None, *args: Any,
                bind_arguments: Any = None, **kwargs: Any) -> Any:
        return super().scalars(statement, params, *args,
                               bind_arguments=_with_clause(statement, bind_arguments),
                               **kwargs)

    def scalar(self, statement: Any, params: Any = None, *args: Any,
               bind_arguments: Any = None, **kwargs: Any) -> Any:
        return super().scalar(statement, params, *args,
                              bind_arguments=_with_clause(statement, bind_arguments),
                              **kwargs)

    def get_bind(self, mapper: Any = None, clause: Any = None, bind: Any = None,
                 **kwargs: Any) -> Any:
        if bind is None and not self._flushing and _wanted() and _reporting(mapper, clause):
            engine = self._db.engines.get(BIND_KEY)
            if engine is not None:
                return engine
        return super().get_bind(mapper=mapper, clause=clause, bind=bind, **kwargs)
