"""Usage ingestion and the usage summary.

A batch is validated whole before anything is written; then its events and the
daily rollups they change are written in one transaction. Events already stored
(same tenant and id) are skipped by the database's unique constraint, so a
duplicate is counted once even across concurrent batches.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import partial
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BindParameter,
    CompoundSelect,
    Date,
    Integer,
    Label,
    ScalarSelect,
    Select,
    String,
    bindparam,
    case,
    func,
    literal,
    select,
    text,
    union_all,
)
from sqlalchemy import inspect as sa_inspect

from plans.alerts import EVALUATE_JOB as EVALUATE_ALERTS_JOB
from plans.metrics import METRIC_CODES, METRICS, PEAK, SERVICES
from plans.models import (
    UsageCompaction,
    UsageRollup,
    UsageRollupMonth,
    UsageRollupService,
    from_micro,
)
from plans.periods import Period
from portal import jobs
from portal.extensions import db
from portal.observability import count_ingestion
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped
from tenants.services import lock_tenant

MAX_BATCH = 10_000
MAX_QUANTITY = Decimal(10) ** 12
MAX_DECIMALS = 6
MAX_FUTURE = dt.timedelta(minutes=5)
MAX_PROPERTIES_BYTES = 4096
EVENT_FIELDS = {"id", "metric", "quantity", "timestamp", "service", "user", "properties"}


@dataclass(frozen=True)
class EventError:
    index: int
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


class BatchRejected(ValueError):
    """At least one event was invalid: nothing of the batch was written."""

    def __init__(self, errors: list[EventError]):
        self.errors = errors
        super().__init__(f"{len(errors)} invalid field(s); nothing was written")


class BatchTooLarge(ValueError):
    """More events than one batch may carry."""


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    accepted_ids: list[str] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, int]:
        return {"accepted": self.accepted, "duplicates": self.duplicates}


class CleanEvent(NamedTuple):
    event_id: str
    metric: str
    quantity_micro: int
    occurred_at: dt.datetime  # UTC
    day: dt.date  # in the tenant's time zone
    service: str
    user_ref: str
    properties: str | None


# A CleanEvent from a tuple of its fields: cheaper than its keyword-capable constructor.
_new_clean_event = partial(tuple.__new__, CleanEvent)


def parse_timestamp(value: Any) -> dt.datetime:
    """An aware datetime from an RFC 3339 string or an aware datetime."""
    if isinstance(value, dt.datetime):
        moment = value
    elif type(value) is str:
        try:
            moment = dt.datetime.fromisoformat(value)  # reads "Z" itself
        except ValueError:
            try:
                moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError("not an RFC 3339 timestamp") from exc
    else:
        raise ValueError("must be an RFC 3339 timestamp string")
    if moment.tzinfo is dt.UTC:
        return moment
    if moment.tzinfo is None:
        raise ValueError("needs a time zone offset, e.g. 2026-11-23T10:00:00Z")
    return moment.astimezone(dt.UTC)


MAX_WHOLE_QUANTITY = int(MAX_QUANTITY)
MAX_MICRO = MAX_WHOLE_QUANTITY * 1_000_000
MICRO_EXPONENT = -MAX_DECIMALS


def parse_quantity_micro(value: Any) -> int:
    """A quantity in exact millionths, from an int, a Decimal or a decimal string.
    Floats are refused: they cannot say 0.1 exactly."""
    kind = type(value)
    if kind is int:
        micro = value * 1_000_000
    elif kind is bool or kind is float:
        raise ValueError("must be an exact number (a JSON number parsed as decimal, or a string)")
    elif kind is str or isinstance(value, Decimal):
        try:
            number = Decimal(value.strip()) if kind is str else value
        except InvalidOperation as exc:
            raise ValueError("must be a number") from exc
        if not number.is_finite():
            raise ValueError("must be finite")
        if number.as_tuple().exponent < MICRO_EXPONENT and number != number.quantize(
            Decimal(1).scaleb(MICRO_EXPONENT)
        ):
            raise ValueError(f"at most {MAX_DECIMALS} decimal places")
        micro = int(number.scaleb(MAX_DECIMALS))
    else:
        raise ValueError("must be a number")
    if micro < 0:
        raise ValueError("cannot be negative")
    if micro > MAX_MICRO:
        raise ValueError(f"cannot exceed {MAX_QUANTITY:,}")
    return micro


def _encode_properties(properties: Mapping) -> str:
    """Properties as stored: compact JSON with sorted keys, values JSON cannot hold
    written as text, exactly as ``json.dumps(properties, sort_keys=True,
    separators=(",", ":"), default=str)``. The usual flat object of strings is joined
    here directly, a few times faster than json.dumps and to the same text."""
    if type(properties) is dict:
        for key, value in properties.items():
            if type(key) is not str or type(value) is not str:
                break
        else:
            return "{" + ",".join([
                encode_basestring_ascii(key) + ":" + encode_basestring_ascii(value)
                for key, value in sorted(properties.items())
            ]) + "}"
    return json.dumps(properties, sort_keys=True, separators=(",", ":"), default=str)


def _clean(index: int, raw: Any, zone: ZoneInfo, latest: dt.datetime,
           errors: list[EventError]) -> CleanEvent | None:
    """One event checked and normalised; its errors appended to ``errors``."""
    if not isinstance(raw, Mapping):
        errors.append(EventError(index, "event", "must be an object"))
        return None
    failed: list[tuple[str, str]] = []
    unknown = raw.keys() - EVENT_FIELDS
    if unknown:
        failed.extend((name, "unknown field") for name in sorted(unknown))
    event_id = raw.get("id")
    if type(event_id) is int:
        event_id = str(event_id)
    if type(event_id) is not str or not event_id.strip():
        failed.append(("id", "is required: a unique string per event (the idempotency key)"))
    elif len(event_id) > 128:
        failed.append(("id", "at most 128 characters"))
    else:
        event_id = event_id.strip()
    metric = raw.get("metric")
    definition = METRICS.get(metric) if type(metric) is str else None
    if definition is None:
        failed.append(("metric", f"must be one of: {', '.join(METRICS)}"))
    micro = None
    if "quantity" not in raw:
        failed.append(("quantity", "is required"))
    else:
        try:
            micro = parse_quantity_micro(raw["quantity"])
        except ValueError as exc:
            failed.append(("quantity", str(exc)))
    occurred_at = None
    if "timestamp" not in raw:
        failed.append(("timestamp", "is required"))
    else:
        try:
            occurred_at = parse_timestamp(raw["timestamp"])
        except ValueError as exc:
            failed.append(("timestamp", str(exc)))
        else:
            if occurred_at > latest:
                failed.append(("timestamp", "is in the future"))
    service = raw.get("service")
    if service is None:
        service = definition.service if definition is not None else ""
    elif service not in SERVICES:
        failed.append(("service", f"must be one of: {', '.join(SERVICES)}"))
    user_ref = raw.get("user")
    if user_ref is None:
        user_ref = ""
    elif type(user_ref) is int:
        user_ref = str(user_ref)
    elif type(user_ref) is not str or len(user_ref) > 128:
        failed.append(("user", "must be a string of at most 128 characters"))
    properties = raw.get("properties")
    encoded = None
    if properties is not None:
        if not isinstance(properties, Mapping):
            failed.append(("properties", "must be an object"))
        else:
            try:
                encoded = _encode_properties(properties)
            except (TypeError, ValueError):
                failed.append(("properties", "must be JSON"))
            else:
                # A character takes at most 4 bytes: encode only when it could matter.
                if len(encoded) * 4 > MAX_PROPERTIES_BYTES and (
                    len(encoded.encode()) > MAX_PROPERTIES_BYTES
                ):
                    failed.append(("properties", f"at most {MAX_PROPERTIES_BYTES} bytes"))
    if failed:
        errors.extend(EventError(index, name, message) for name, message in failed)
        return None
    return CleanEvent(event_id, metric, micro, occurred_at, occurred_at.astimezone(zone).date(),
                      service, user_ref, encoded)


def _clean_usual(raw: Any, zone: ZoneInfo, zone_offset: dt.timedelta | None,
                 latest: dt.datetime) -> CleanEvent | None:
    """The usual valid event normalised without ``_clean``'s error bookkeeping: a dict
    of known fields, string id, metric, service and user, a quantity and a timestamp
    that parse. Any other event, valid or not, gives None and is left to ``_clean``,
    which checks it in full and reports its errors; an event returned here is the one
    ``_clean`` returns. ``zone_offset`` is the zone's offset if it never changes."""
    if type(raw) is not dict or not raw.keys() <= EVENT_FIELDS:
        return None
    get = raw.get
    event_id, metric = get("id"), get("metric")
    if type(event_id) is not str or len(event_id) > 128 or type(metric) is not str:
        return None
    event_id = event_id.strip()
    definition = METRICS.get(metric)
    if not event_id or definition is None:
        return None
    quantity = get("quantity")
    if type(quantity) is int and 0 <= quantity <= MAX_WHOLE_QUANTITY:
        micro = quantity * 1_000_000  # parse_quantity_micro's result, without the call
    else:
        try:
            micro = parse_quantity_micro(quantity)
        except ValueError:
            return None
    try:
        occurred_at = parse_timestamp(get("timestamp"))
    except ValueError:
        return None
    if occurred_at > latest:
        return None
    service = get("service")
    if service is None:
        service = definition.service
    elif type(service) is not str or service not in SERVICES:
        return None
    user_ref = get("user")
    if user_ref is None:
        user_ref = ""
    elif type(user_ref) is not str or len(user_ref) > 128:
        return None
    encoded = get("properties")
    if encoded is not None:
        if type(encoded) is not dict:
            return None
        try:
            encoded = _encode_properties(encoded)
        except (TypeError, ValueError):
            return None
        if len(encoded) * 4 > MAX_PROPERTIES_BYTES and (
            len(encoded.encode()) > MAX_PROPERTIES_BYTES
        ):
            return None
    if zone_offset is not None:
        day = (occurred_at + zone_offset).date()
    else:
        day = occurred_at.astimezone(zone).date()
    return _new_clean_event(
        (event_id, metric, micro, occurred_at, day, service, user_ref, encoded))


def validate_batch(tenant: Tenant, events: Sequence[Any],
                   now: dt.datetime | None = None) -> list[CleanEvent]:
    """Every event checked; raises BatchRejected listing each bad field."""
    _check_size(events)
    return _validate(events, ZoneInfo(tenant.timezone), now)


def _check_size(events: Sequence[Any]) -> None:
    if len(events) > MAX_BATCH:
        raise BatchTooLarge(f"a batch carries at most {MAX_BATCH:,} events, not {len(events):,}")


def _validate(events: Sequence[Any], zone: ZoneInfo,
              now: dt.datetime | None) -> list[CleanEvent]:
    """The events checked and normalised, days in ``zone``: each through the fast path
    for the usual valid event, and any other through ``_clean``, which reports every
    error of the batch (BatchRejected)."""
    latest = (now or dt.datetime.now(dt.UTC)) + MAX_FUTURE
    # Only a zone whose offset never changes (UTC, Etc/GMT+5) has one for no moment.
    zone_offset = zone.utcoffset(None)
    clean = [_clean_usual(raw, zone, zone_offset, latest) for raw in events]
    errors: list[EventError] = []
    for index, event in enumerate(clean):
        if event is None:
            clean[index] = _clean(index, events[index], zone, latest, errors)
    if errors:
        raise BatchRejected(errors)
    return clean  # type: ignore[return-value]


PEAK_METRICS = frozenset(code for code, m in METRICS.items() if m.aggregation == PEAK)
EVENT_COLUMNS = ("tenant_id", "event_id", "metric", "quantity_micro", "occurred_at", "day",
                 "service", "user_ref", "properties")
# PostgreSQL types of EVENT_COLUMNS, for binary COPY.
EVENT_COPY_TYPES = ("int4", "varchar", "varchar", "int8", "timestamptz", "date", "varchar",
                    "varchar", "text")


@count_ingestion(rejected_by=(BatchRejected, BatchTooLarge))
def ingest_events(tenant: Tenant, events: Sequence[Any], *,
                  now: dt.datetime | None = None) -> IngestResult:
    """Store a batch of usage events for ``tenant`` and update its daily rollups.

    All or nothing: an invalid event raises BatchRejected (every error listed) and
    writes nothing; a database failure rolls the whole batch back. An event whose id
    the tenant already sent, in this batch or before, counts as a duplicate.

    Batches of one tenant are serialised by a lock on the tenant's row, so the new
    events can be written in bulk (COPY on PostgreSQL) and the rollups updated from
    them; the unique constraint on (tenant, id) tells which were stored before.
    """
    _check_size(events)
    tenant_id, zone = _tenant_id_and_zone(tenant)
    clean = _validate(events, zone, now)
    result = IngestResult()
    seen: dict[str, CleanEvent] = {}
    for event in clean:
        if event.event_id in seen:
            result.duplicates += 1
        else:
            seen[event.event_id] = event
    if not seen:
        return result
    dialect = db.session.get_bind().dialect.name
    try:
        with tenant_scope(tenant_id):
            through = _lock_for_batch(tenant_id, dialect)
            new = _write_new_events(tenant_id, list(seen.values()), dialect)
            if new:
                _upsert_rollups(tenant_id, new, dialect)
                if through is not None:
                    late = [e for e in new if e.day < through]
                    if late:
                        _add_to_months(tenant_id, late, dialect)
                        _rewrite_service_days(tenant_id, late, dialect)
                jobs.defer(EVALUATE_ALERTS_JOB, tenant_id)
            db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    result.accepted = len(new)
    result.duplicates += len(seen) - len(new)
    result.accepted_ids = [e.event_id for e in new]
    return result


def _lock_for_batch(tenant_id: int, dialect: str) -> dt.date | None:
    """Take the tenant's lock (``lock_tenant``'s) and return its compaction mark; on
    PostgreSQL in one statement, as it runs with every batch."""
    if dialect != "postgresql":
        lock_tenant(tenant_id)
        return compacted_through(tenant_id)
    return db.session.connection().exec_driver_sql(
        "SELECT c.through FROM tenant t LEFT JOIN usage_compaction c ON c.tenant_id = t.id "
        "WHERE t.id = %(id)s FOR UPDATE OF t", {"id": tenant_id}).scalar()


def _tenant_id_and_zone(tenant: Tenant) -> tuple[int, ZoneInfo]:
    """The tenant's id and time zone, as its attributes give them.

    Each batch's commit expires the instance, and refreshing it through the ORM costs
    about as much as validating a hundred events; so when the time zone is expired
    on an instance of this session, that one column is read on the session's
    connection instead, which is what the refresh would load. Otherwise the instance
    answers as before: values as they stand in it, and an error for a detached
    instance or a tenant deleted meanwhile."""
    state = sa_inspect(tenant)
    if (state.persistent and state.session is db.session()
            and "timezone" in state.expired_attributes):
        tenant_id = state.identity[0]
        name = db.session.connection().scalar(_TENANT_ZONE, {"tenant_id": tenant_id})
        if name is not None:
            return tenant_id, ZoneInfo(name)
    return tenant.id, ZoneInfo(tenant.timezone)


_TENANT_ZONE = (select(Tenant.__table__.c.timezone)
                .where(Tenant.__table__.c.id == bindparam("tenant_id")))


def _write_new_events(tenant_id: int, events: list[CleanEvent], dialect: str
                      ) -> list[CleanEvent]:
    """Write those of ``events`` (distinct ids) that the tenant has not stored yet,
    and return them.

    A batch is nearly always new: a client sends events again only when it could not
    tell whether a batch was stored. So the events are written straight away under a
    savepoint, which costs far less than looking their ids up first (on PostgreSQL
    the lookup costs more than the COPY). If the unique constraint on (tenant, id)
    refuses one, the write is rolled back to the savepoint, the stored ids are looked
    up and only the others written. The caller holds the tenant's lock, whose
    statement began the transaction on either database, so the savepoint nests in
    it, and no other batch of the tenant stores an id meanwhile.
    """
    integrity_error = db.session.get_bind().dialect.loaded_dbapi.IntegrityError
    cursor = db.session.connection().connection.driver_connection.cursor()
    try:
        cursor.execute("SAVEPOINT usage_batch")
        try:
            _write_events(tenant_id, events, dialect)
        except integrity_error as exc:
            if not _is_unique_violation(exc):
                raise
            cursor.execute("ROLLBACK TO SAVEPOINT usage_batch")
            stored = _find_stored(tenant_id, [e.event_id for e in events], dialect)
            events = [e for e in events if e.event_id not in stored]
            if events:
                _write_events(tenant_id, events, dialect)
        cursor.execute("RELEASE SAVEPOINT usage_batch")
    finally:
        cursor.close()
    return events


def _is_unique_violation(exc: Exception) -> bool:
    """Whether the driver's IntegrityError is a unique constraint's (psycopg gives the
    SQLSTATE, Python's sqlite3 the extended result code)."""
    return (getattr(exc, "sqlstate", None) == "23505"
            or getattr(exc, "sqlite_errorname", None) == "SQLITE_CONSTRAINT_UNIQUE")


def _find_stored(tenant_id: int, ids: list[str], dialect: str) -> set[str]:
    """Which of ``ids`` the tenant already stored. One parameter carries the whole
    list (an array on PostgreSQL, a JSON array on SQLite), so the statement is the
    same for every batch instead of an IN list with a thousand parameters."""
    cursor = db.session.connection().connection.driver_connection.cursor()
    try:
        if dialect == "postgresql":
            # Never as a prepared statement: PostgreSQL would soon switch to a generic
            # plan that cannot see how selective the id list is, and scan the tenant.
            cursor.execute("SELECT event_id FROM usage_event WHERE tenant_id = %s "
                           "AND event_id = ANY(%s::varchar[])", (tenant_id, ids), prepare=False)
        else:
            cursor.execute("SELECT event_id FROM usage_event WHERE tenant_id = ? "
                           "AND event_id IN (SELECT value FROM json_each(?))",
                           (tenant_id, json.dumps(ids)))
        return {row[0] for row in cursor.fetchall()}
    finally:
        cursor.close()


def _write_events(tenant_id: int, events: list[CleanEvent], dialect: str) -> None:
    """Bulk-write new events on the session's connection: COPY on PostgreSQL, one
    executemany on SQLite (values in the storage format SQLAlchemy reads back)."""
    raw = db.session.connection().connection.driver_connection
    if dialect == "postgresql":
        # Binary COPY: the values go as they are, with no text to format and parse.
        with raw.cursor() as cursor, cursor.copy(
            f"COPY usage_event ({', '.join(EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(EVENT_COPY_TYPES)
            for e in events:
                copy.write_row((tenant_id, *e))
        return
    # SQLAlchemy's storage formats: dates as ISO text, timestamps as the UTC wall time
    # "YYYY-MM-DD HH:MM:SS.ffffff". A batch spans a few dates, so each date is formatted
    # once; formatting the time of day alone is also far cheaper than an aware datetime.
    dates = _IsoDates()
    raw.cursor().executemany(
        f"INSERT INTO usage_event ({', '.join(EVENT_COLUMNS)}, ingested_at) "
        f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))}, CURRENT_TIMESTAMP)",
        [(tenant_id, event_id, metric, micro,
          dates[occurred_at.date()] + " " + occurred_at.time().isoformat("microseconds"),
          dates[day], service, user_ref, properties)
         for event_id, metric, micro, occurred_at, day, service, user_ref, properties in events],
    )


class _IsoDates(dict):
    """ISO text of dates, each formatted on first use."""

    def __missing__(self, date: dt.date) -> str:
        text = self[date] = date.isoformat()
        return text


ROLLUP_COLUMNS = ("tenant_id", "day", "metric", "service", "user_ref", "quantity_micro",
                  "event_count")


def _upsert_rollups(tenant_id: int, events: list[CleanEvent], dialect: str) -> None:
    """Add the batch to its daily rollups: sums for summed metrics, the maximum for
    peak metrics. The caller holds the tenant's lock, and rollup rows belong to one
    tenant, so no other batch writes these rows meanwhile."""
    deltas: dict[tuple, list[int]] = {}
    for e in events:
        key = (e.day, e.metric, e.service, e.user_ref)
        qty_count = deltas.get(key)
        if qty_count is None:
            deltas[key] = [e.quantity_micro, 1]
        elif e.metric in PEAK_METRICS:
            qty_count[0] = max(qty_count[0], e.quantity_micro)
            qty_count[1] += 1
        else:
            qty_count[0] += e.quantity_micro
            qty_count[1] += 1
    peak_list = ", ".join(f"'{m}'" for m in sorted(PEAK_METRICS))
    keys = list(deltas.items())
    conflict = (
        "ON CONFLICT (tenant_id, day, metric, service, user_ref) DO UPDATE SET "
        f"quantity_micro = CASE WHEN usage_rollup.metric IN ({peak_list}) "
        "THEN {greatest}(usage_rollup.quantity_micro, excluded.quantity_micro) "
        "ELSE usage_rollup.quantity_micro + excluded.quantity_micro END, "
        "event_count = usage_rollup.event_count + excluded.event_count"
    )
    cursor = db.session.connection().connection.driver_connection.cursor()
    try:
        if dialect == "postgresql":
            # One statement for the whole batch: the rows travel as arrays.
            columns = list(zip(*[(day, metric, service, user_ref, q, n)
                                 for (day, metric, service, user_ref), (q, n) in keys],
                               strict=True))
            cursor.execute(
                f"INSERT INTO usage_rollup ({', '.join(ROLLUP_COLUMNS)}) "
                "SELECT %s, * FROM unnest(%s::date[], %s::varchar[], %s::varchar[], "
                "%s::varchar[], %s::bigint[], %s::bigint[]) "
                + conflict.format(greatest="GREATEST"),
                (tenant_id, *[list(c) for c in columns]), prepare=False,
            )
        else:
            cursor.executemany(
                f"INSERT INTO usage_rollup ({', '.join(ROLLUP_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(ROLLUP_COLUMNS))}) "
                + conflict.format(greatest="MAX"),
                [(tenant_id, day.isoformat(), metric, service, user_ref, q, n)
                 for (day, metric, service, user_ref), (q, n) in keys],
            )
    finally:
        cursor.close()


def _month_of(day: dt.date) -> dt.date:
    return day.replace(day=1)


def _next_month(month: dt.date) -> dt.date:
    return (month + dt.timedelta(days=32)).replace(day=1)


_MONTH_CONFLICT = (
    "ON CONFLICT (tenant_id, metric, month, service, user_ref) DO UPDATE SET "
    "quantity_micro = usage_rollup_month.quantity_micro + excluded.quantity_micro, "
    "event_count = usage_rollup_month.event_count + excluded.event_count"
)
_MONTH_COLUMNS = "tenant_id, metric, month, service, user_ref, quantity_micro, event_count"


def _add_to_months(tenant_id: int, events: list[CleanEvent], dialect: str) -> None:
    """Add events of days already compacted to their monthly rollups (peak metrics
    have none), as the compaction would have had they come before it."""
    deltas: dict[tuple, list[int]] = {}
    for e in events:
        if e.metric in PEAK_METRICS:
            continue
        key = (e.metric, _month_of(e.day), e.service, e.user_ref)
        qty_count = deltas.setdefault(key, [0, 0])
        qty_count[0] += e.quantity_micro
        qty_count[1] += 1
    if not deltas:
        return
    cursor = db.session.connection().connection.driver_connection.cursor()
    try:
        if dialect == "postgresql":
            # One statement, the rows as arrays, as the daily upsert does.
            columns = list(zip(*[(*key, q, n) for key, (q, n) in deltas.items()], strict=True))
            cursor.execute(
                f"INSERT INTO usage_rollup_month ({_MONTH_COLUMNS}) "
                "SELECT %s, * FROM unnest(%s::varchar[], %s::date[], %s::varchar[], "
                "%s::varchar[], %s::bigint[], %s::bigint[]) " + _MONTH_CONFLICT,
                (tenant_id, *[list(c) for c in columns]), prepare=False,
            )
        else:
            cursor.executemany(
                f"INSERT INTO usage_rollup_month ({_MONTH_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) " + _MONTH_CONFLICT,
                [(tenant_id, metric, month.isoformat(), service, user_ref, q, n)
                 for (metric, month, service, user_ref), (q, n) in deltas.items()],
            )
    finally:
        cursor.close()


_SERVICE_COLUMNS = "tenant_id, metric, day, service, quantity_micro, event_count"
_SERVICE_SELECT = ("SELECT tenant_id, metric, day, service, sum(quantity_micro), sum(event_count) "
                   "FROM usage_rollup WHERE tenant_id = {p} ")
_SERVICE_UPSERT = (
    "GROUP BY tenant_id, metric, day, service "
    "ON CONFLICT (tenant_id, metric, day, service) DO UPDATE SET "
    "quantity_micro = excluded.quantity_micro, event_count = excluded.event_count"
)


def _rewrite_service_days(tenant_id: int, events: list[CleanEvent], dialect: str) -> None:
    """Write the per-service rows of the compacted days that ``events`` changed again
    from their daily rollups (a peak metric's day total is a sum of maxima, so it is
    recomputed rather than added to)."""
    keys = sorted({(e.metric, e.day, e.service) for e in events})
    p = "%s" if dialect == "postgresql" else "?"
    cursor = db.session.connection().connection.driver_connection.cursor()
    try:
        cursor.executemany(
            f"INSERT INTO usage_rollup_service ({_SERVICE_COLUMNS}) "
            + _SERVICE_SELECT.format(p=p)
            + f"AND metric = {p} AND day = {p} AND service = {p} " + _SERVICE_UPSERT,
            # SQLite stores dates as ISO text.
            [(tenant_id, metric, day if dialect == "postgresql" else day.isoformat(), service)
             for metric, day, service in keys],
        )
    finally:
        cursor.close()


def compacted_through(tenant_id: int) -> dt.date | None:
    """The day before which the tenant's daily rollups are compacted."""
    return db.session.connection().scalar(_COMPACTED_THROUGH, {"tenant_id": tenant_id})


_COMPACTED_THROUGH = (select(UsageCompaction.__table__.c.through)
                      .where(UsageCompaction.__table__.c.tenant_id == bindparam("tenant_id")))


_DATES = (bindparam("since", type_=Date), bindparam("through", type_=Date))


def compact_rollups(tenant_id: int, through: dt.date) -> bool:
    """Add the tenant's summed daily rollups of the days before ``through`` that are
    not yet in its monthly rollups to them, write its per-service rows of those
    days, and move its compaction mark to ``through``; False when the mark already
    stands there or later. The caller holds the tenant's lock (as ingestion does), so
    no batch adds to the same days meanwhile; a batch afterwards with events of those
    days adds them itself."""
    current = compacted_through(tenant_id)
    if current is not None and current >= through:
        return False
    connection = db.session.connection()
    postgresql = connection.dialect.name == "postgresql"
    month = "date_trunc('month', day)::date" if postgresql else "date(day, 'start of month')"
    summed = ", ".join(f"'{code}'" for code in METRIC_CODES if code not in PEAK_METRICS)
    since = "AND day >= :since " if current is not None else ""
    binds = _DATES if since else _DATES[1:]
    params = {"tenant_id": tenant_id, "through": through, "since": current}
    connection.execute(text(
        f"INSERT INTO usage_rollup_month ({_MONTH_COLUMNS}) "
        f"SELECT tenant_id, metric, {month}, service, user_ref, sum(quantity_micro), "
        "sum(event_count) FROM usage_rollup "
        f"WHERE tenant_id = :tenant_id AND metric IN ({summed}) {since}AND day < :through "
        f"GROUP BY tenant_id, metric, {month}, service, user_ref " + _MONTH_CONFLICT
    ).bindparams(*binds), params)
    connection.execute(text(
        f"INSERT INTO usage_rollup_service ({_SERVICE_COLUMNS}) "
        + _SERVICE_SELECT.format(p=":tenant_id") + f"{since}AND day < :through "
        + _SERVICE_UPSERT
    ).bindparams(*binds), params)
    connection.execute(text(
        "INSERT INTO usage_compaction (tenant_id, through) VALUES (:tenant_id, :through) "
        "ON CONFLICT (tenant_id) DO UPDATE SET through = excluded.through"
    ).bindparams(_DATES[1]), params)
    return True


def compact_usage(now: dt.datetime | None = None) -> int:
    """Compact every tenant's rollups up to its today (in its time zone), each tenant
    in a transaction of its own under its lock; returns how many moved."""
    now = now or dt.datetime.now(dt.UTC)
    with unscoped():
        tenants = db.session.execute(select(Tenant.id, Tenant.timezone)
                                     .order_by(Tenant.id)).all()
    db.session.rollback()
    moved = 0
    for tenant_id, timezone in tenants:
        try:
            with tenant_scope(tenant_id):
                lock_tenant(tenant_id)
                moved += compact_rollups(tenant_id, now.astimezone(ZoneInfo(timezone)).date())
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
    return moved


# -- reading usage ----------------------------------------------------------------

def by_metric(select_for: Callable[[str], Select], metrics: tuple[str, ...] = METRIC_CODES
              ) -> Select | CompoundSelect:
    """``select_for(metric)`` for each of ``metrics``, as one statement (UNION ALL).
    Each part reads one metric's rows of a span of days from the rollups' key
    (tenant, metric, day, service, user), which holds the quantities, in that order:
    grouped by day, the database sums them as it reads them; grouped otherwise, it
    sorts or hashes one metric's rows at a time."""
    parts = [select_for(metric) for metric in metrics]
    return parts[0] if len(parts) == 1 else union_all(*parts)


class SpanShape(NamedTuple):
    """Which parts ``summed_by_user`` reads for a span of days."""

    month: bool  # the month of the last day, from its monthly rollups where they apply
    before: bool  # days before that month, from the daily rollups
    whole_month: bool  # the month ends within the span


def span_shape(start: dt.date, end: dt.date) -> SpanShape:
    """The shape of the days [start, end): the month of its last day can come from
    the monthly rollups when the span starts on or before its first day."""
    month = _month_of(end - dt.timedelta(days=1))
    if start >= end or month < start:
        return SpanShape(False, False, False)
    return SpanShape(True, start < month, _next_month(month) <= end)


def span_params(tenant_id: int, start: dt.date, end: dt.date) -> dict[str, Any]:
    """The values of the bind parameters of ``summed_by_user`` (and ``span_bind``)."""
    month = _month_of(end - dt.timedelta(days=1))
    return {"tenant_id": tenant_id, "start": start, "end": end, "month": month,
            "month_end": _next_month(month)}


def span_bind(name: str) -> BindParameter:
    return bindparam(name, type_=Integer if name == "tenant_id" else Date)


def _compaction_mark() -> ScalarSelect[dt.date]:
    """The tenant's compaction mark (``tenant_id`` bound), as a scalar subquery: NULL
    when it has none, so that every comparison with it is false."""
    return (select(UsageCompaction.through)
            .where(UsageCompaction.tenant_id == span_bind("tenant_id")).scalar_subquery())


def summed_by_user(metric: str, shape: SpanShape) -> Select:
    """A summed metric's total per (service, user) over the days [start, end), as
    (metric, service, user_ref, quantity_micro) rows, for ``by_metric``; built from
    bind parameters (``span_params`` gives their values), so a statement of a shape
    can be built once.

    When the span starts on or before the first of the month of its last day, that
    month's compacted days come from its monthly rollups (one row per service and
    user), provided they all lie in the span; the other days come from the daily
    rollups. The compaction mark is read in the same statement as both, so the
    parts agree even while a compaction commits."""
    daily = UsageRollup
    start, end = span_bind("start"), span_bind("end")
    if not shape.month:
        return (select(metric_label(metric), daily.service, daily.user_ref,
                       func.sum(daily.quantity_micro))
                .where(daily.metric == metric, daily.day >= start, daily.day < end)
                .group_by(daily.user_ref, daily.service))
    month, month_end = span_bind("month"), span_bind("month_end")
    through = _compaction_mark()
    # The month's rows stand for its days before the mark, which must all be in the span.
    used = (through > month) if shape.whole_month else (through > month) & (through <= end)
    after = case((used, case((through < month_end, through), else_=month_end)), else_=month)
    parts = [
        select(UsageRollupMonth.service, UsageRollupMonth.user_ref,
               UsageRollupMonth.quantity_micro.label("q"))
        .where(UsageRollupMonth.metric == metric, UsageRollupMonth.month == month, used),
        select(daily.service, daily.user_ref, daily.quantity_micro.label("q"))
        .where(daily.metric == metric, daily.day >= after, daily.day < end),
    ]
    if shape.before:
        parts.append(select(daily.service, daily.user_ref, daily.quantity_micro.label("q"))
                     .where(daily.metric == metric, daily.day >= start, daily.day < month))
    cells = union_all(*parts).subquery()
    return (select(metric_label(metric), cells.c.service, cells.c.user_ref,
                   func.sum(cells.c.q))
            .group_by(cells.c.user_ref, cells.c.service))


@functools.cache
def by_day_and_service() -> CompoundSelect:
    """Every metric's (day, metric, service, quantity_micro, event_count) over the
    days [start, end) (bind parameters, with ``tenant_id``: ``span_params``), the
    users added up: the compacted days from the per-service rows, the days from the
    compaction mark on from the daily rollups, the mark read in the same statement."""
    start, end = span_bind("start"), span_bind("end")
    through = _compaction_mark()
    live_from = case((through > start, through), else_=start)
    parts: list[Select] = []
    for metric in METRIC_CODES:
        parts.append(
            select(UsageRollupService.day, metric_label(metric), UsageRollupService.service,
                   UsageRollupService.quantity_micro, UsageRollupService.event_count)
            .where(UsageRollupService.metric == metric, UsageRollupService.day >= start,
                   UsageRollupService.day < end, UsageRollupService.day < through))
        parts.append(
            select(UsageRollup.day, metric_label(metric), UsageRollup.service,
                   func.sum(UsageRollup.quantity_micro), func.sum(UsageRollup.event_count))
            .where(UsageRollup.metric == metric, UsageRollup.day >= live_from,
                   UsageRollup.day < end)
            .group_by(UsageRollup.day, UsageRollup.service))
    return union_all(*parts)


def day_service_rows(tenant: Tenant, start: dt.date, end: dt.date
                     ) -> list[tuple[dt.date, str, str, int, int]]:
    """(day, metric, service, micro, events) of the days [start, end), the users
    added up (``by_day_and_service``)."""
    with tenant_scope(tenant):
        rows = db.session.execute(by_day_and_service(),
                                  span_params(tenant.id, start, end)).all()
    # int(): PostgreSQL sums bigints as numeric.
    return [(day, metric, service, int(micro), int(count or 0))
            for day, metric, service, micro, count in rows]


def metric_label(metric: str) -> Label[str]:
    """The metric of a ``by_metric`` part, as a value rather than the column: the part
    then groups by its other columns only, which the databases compare faster."""
    return literal(metric, String).label("metric")


def usage_totals(tenant: Tenant, start: dt.date, end: dt.date) -> dict[str, Decimal]:
    """Usage per metric over the days ``start`` (inclusive) to ``end`` (exclusive), in
    billing units: sums for summed metrics, the highest daily total for peak metrics.
    Reads rollups only: each metric's days from the rollups' key, in day order."""
    def of_metric(metric: str) -> Select:
        return (select(metric_label(metric), func.sum(UsageRollup.quantity_micro).label("q"))
                .where(UsageRollup.metric == metric, UsageRollup.day >= start,
                       UsageRollup.day < end)
                .group_by(UsageRollup.day))

    totals = {code: Decimal(0) for code in METRICS}
    daily = by_metric(of_metric).subquery()
    with tenant_scope(tenant):
        rows = db.session.execute(
            select(daily.c.metric, func.sum(daily.c.q), func.max(daily.c.q))
            .group_by(daily.c.metric)
        ).all()
    for metric, total, peak in rows:
        value = peak if METRICS[metric].aggregation == PEAK else total
        totals[metric] = METRICS[metric].to_billing_units(from_micro(int(value or 0)))
    return totals


def period_usage(tenant: Tenant, period: Period) -> dict[str, Decimal]:
    return usage_totals(tenant, period.start, period.end)
