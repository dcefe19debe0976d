"""Usage ingestion and the usage summary.

A batch is validated whole before anything is written; then its events and the
daily rollups they change are written in one transaction. Events already stored
(same tenant and id) are skipped by the database's unique constraint, so a
duplicate is counted once even across concurrent batches.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from plans.metrics import METRICS, PEAK, SERVICES
from plans.models import UsageEvent, UsageRollup, from_micro, to_micro
from plans.periods import Period, local_day
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import tenant_scope

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


@dataclass(frozen=True)
class CleanEvent:
    event_id: str
    metric: str
    quantity_micro: int
    occurred_at: dt.datetime
    day: dt.date
    service: str
    user_ref: str
    properties: str | None


def parse_timestamp(value: Any) -> dt.datetime:
    """An aware datetime from an RFC 3339 string or an aware datetime."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError("not an RFC 3339 timestamp") from exc
    else:
        raise ValueError("must be an RFC 3339 timestamp string")
    if moment.tzinfo is None:
        raise ValueError("needs a time zone offset, e.g. 2026-11-23T10:00:00Z")
    return moment.astimezone(dt.UTC)


def parse_quantity(value: Any) -> Decimal:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("must be an exact number (a JSON number parsed as decimal, or a string)")
    if not isinstance(value, int | Decimal | str):
        raise ValueError("must be a number")
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation as exc:
        raise ValueError("must be a number") from exc
    if not number.is_finite():
        raise ValueError("must be finite")
    if number < 0:
        raise ValueError("cannot be negative")
    if number > MAX_QUANTITY:
        raise ValueError(f"cannot exceed {MAX_QUANTITY:,}")
    if number != number.quantize(Decimal(1).scaleb(-MAX_DECIMALS)):
        raise ValueError(f"at most {MAX_DECIMALS} decimal places")
    return number


def _clean(index: int, raw: Any, timezone: str, now: dt.datetime,
           errors: list[EventError]) -> CleanEvent | None:
    if not isinstance(raw, Mapping):
        errors.append(EventError(index, "event", "must be an object"))
        return None
    before = len(errors)

    def err(name: str, message: str) -> None:
        errors.append(EventError(index, name, message))

    for unknown in sorted(set(raw) - EVENT_FIELDS):
        err(unknown, "unknown field")
    event_id = raw.get("id")
    if isinstance(event_id, int) and not isinstance(event_id, bool):
        event_id = str(event_id)
    if not isinstance(event_id, str) or not event_id.strip():
        err("id", "is required: a unique string per event (the idempotency key)")
    elif len(event_id) > 128:
        err("id", "at most 128 characters")
    metric = raw.get("metric")
    if metric not in METRICS:
        err("metric", f"must be one of: {', '.join(METRICS)}")
    quantity = None
    if "quantity" not in raw:
        err("quantity", "is required")
    else:
        try:
            quantity = parse_quantity(raw["quantity"])
        except ValueError as exc:
            err("quantity", str(exc))
    occurred_at = None
    if "timestamp" not in raw:
        err("timestamp", "is required")
    else:
        try:
            occurred_at = parse_timestamp(raw["timestamp"])
            if occurred_at > now + MAX_FUTURE:
                err("timestamp", "is in the future")
        except ValueError as exc:
            err("timestamp", str(exc))
    service = raw.get("service")
    if service is None and metric in METRICS:
        service = METRICS[metric].service
    elif service is not None and service not in SERVICES:
        err("service", f"must be one of: {', '.join(SERVICES)}")
    user_ref = raw.get("user")
    if user_ref is None:
        user_ref = ""
    elif isinstance(user_ref, int) and not isinstance(user_ref, bool):
        user_ref = str(user_ref)
    elif not isinstance(user_ref, str) or len(user_ref) > 128:
        err("user", "must be a string of at most 128 characters")
    properties = raw.get("properties")
    encoded = None
    if properties is not None:
        if not isinstance(properties, Mapping):
            err("properties", "must be an object")
        else:
            try:
                encoded = json.dumps(properties, sort_keys=True, default=str)
            except (TypeError, ValueError):
                err("properties", "must be JSON")
            else:
                if len(encoded.encode()) > MAX_PROPERTIES_BYTES:
                    err("properties", f"at most {MAX_PROPERTIES_BYTES} bytes")
    if len(errors) > before:
        return None
    return CleanEvent(event_id.strip(), metric, to_micro(quantity), occurred_at,
                      local_day(occurred_at, timezone), service, user_ref, encoded)


def validate_batch(tenant: Tenant, events: Sequence[Any],
                   now: dt.datetime | None = None) -> list[CleanEvent]:
    """Every event checked; raises BatchRejected listing each bad field."""
    if len(events) > MAX_BATCH:
        raise BatchTooLarge(f"a batch carries at most {MAX_BATCH:,} events, not {len(events):,}")
    now = now or dt.datetime.now(dt.UTC)
    errors: list[EventError] = []
    clean = [_clean(i, raw, tenant.timezone, now, errors) for i, raw in enumerate(events)]
    if errors:
        raise BatchRejected(errors)
    return clean  # type: ignore[return-value]


def _insert(dialect: str):
    return pg_insert if dialect == "postgresql" else sqlite_insert


def ingest_events(tenant: Tenant, events: Sequence[Any], *,
                  now: dt.datetime | None = None) -> IngestResult:
    """Store a batch of usage events for ``tenant`` and update its daily rollups.

    All or nothing: an invalid event raises BatchRejected (every error listed) and
    writes nothing; a database failure rolls the whole batch back. An event whose id
    the tenant already sent, in this batch or before, counts as a duplicate.
    """
    clean = validate_batch(tenant, events, now)
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
    insert = _insert(dialect)
    # A fixed order keeps concurrent batches from deadlocking on the unique index.
    ordered = [seen[k] for k in sorted(seen)]
    try:
        with tenant_scope(tenant):
            events = UsageEvent.__table__
            # One compiled statement run over all rows (executemany; SQLAlchemy's
            # insertmanyvalues batches it and still returns the ids actually inserted).
            stmt = (
                insert(events)
                .on_conflict_do_nothing(index_elements=["tenant_id", "event_id"])
                .returning(events.c.event_id)
            )
            new_ids = set(db.session.scalars(stmt, [_event_row(tenant.id, e) for e in ordered]))
            inserted = [e for e in ordered if e.event_id in new_ids]
            _upsert_rollups(tenant.id, inserted, insert, dialect)
            db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    result.accepted = len(inserted)
    result.duplicates += len(ordered) - len(inserted)
    result.accepted_ids = [e.event_id for e in inserted]
    return result


def _event_row(tenant_id: int, e: CleanEvent) -> dict[str, Any]:
    return {"tenant_id": tenant_id, "event_id": e.event_id, "metric": e.metric,
            "quantity_micro": e.quantity_micro, "occurred_at": e.occurred_at, "day": e.day,
            "service": e.service, "user_ref": e.user_ref, "properties": e.properties}


def _upsert_rollups(tenant_id: int, events: list[CleanEvent], insert, dialect: str) -> None:
    deltas: dict[tuple, list[int]] = {}
    for e in events:
        key = (e.day, e.metric, e.service, e.user_ref)
        qty_count = deltas.setdefault(key, [0, 0])
        if METRICS[e.metric].aggregation == PEAK:
            qty_count[0] = max(qty_count[0], e.quantity_micro)
        else:
            qty_count[0] += e.quantity_micro
        qty_count[1] += 1
    greatest = func.greatest if dialect == "postgresql" else func.max
    table = UsageRollup.__table__
    for peak in (False, True):
        rows = [
            {"tenant_id": tenant_id, "day": day, "metric": metric, "service": service,
             "user_ref": user_ref, "quantity_micro": q, "event_count": n}
            for (day, metric, service, user_ref), (q, n) in sorted(deltas.items())
            if (METRICS[metric].aggregation == PEAK) == peak
        ]
        if not rows:
            continue
        stmt = insert(table)
        excluded = stmt.excluded
        quantity = (greatest(table.c.quantity_micro, excluded.quantity_micro) if peak
                    else table.c.quantity_micro + excluded.quantity_micro)
        db.session.execute(stmt.on_conflict_do_update(
            index_elements=["tenant_id", "day", "metric", "service", "user_ref"],
            set_={"quantity_micro": quantity,
                  "event_count": table.c.event_count + excluded.event_count},
        ), rows)


# -- reading usage ----------------------------------------------------------------

def usage_totals(tenant: Tenant, start: dt.date, end: dt.date) -> dict[str, Decimal]:
    """Usage per metric over the days ``start`` (inclusive) to ``end`` (exclusive), in
    billing units: sums for summed metrics, the highest daily total for peak metrics.
    Reads rollups only."""
    totals = {code: Decimal(0) for code in METRICS}
    with tenant_scope(tenant):
        daily = (
            select(UsageRollup.metric, UsageRollup.day,
                   func.sum(UsageRollup.quantity_micro).label("q"))
            .where(UsageRollup.day >= start, UsageRollup.day < end)
            .group_by(UsageRollup.metric, UsageRollup.day)
            .subquery()
        )
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


def daily_usage(tenant: Tenant, start: dt.date, end: dt.date) -> dict[dt.date, dict[str, Decimal]]:
    """Per day and metric, in billing units (daily totals across services and users)."""
    with tenant_scope(tenant):
        rows = db.session.execute(
            select(UsageRollup.day, UsageRollup.metric, func.sum(UsageRollup.quantity_micro))
            .where(UsageRollup.day >= start, UsageRollup.day < end)
            .group_by(UsageRollup.day, UsageRollup.metric)
        ).all()
    result: dict[dt.date, dict[str, Decimal]] = {}
    for day, metric, micro in rows:
        result.setdefault(day, {})[metric] = METRICS[metric].to_billing_units(
            from_micro(int(micro)))
    return result
