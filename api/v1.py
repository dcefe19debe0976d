"""REST API v1: the endpoints of DESIGN.md's table, behind bearer API keys.

Every request names its key (``Authorization: Bearer bf_...``). A tenant key runs in
its tenant's scope, so it can only ever read and write that tenant; a platform key
runs in the all-tenants scope and alone may hold ``platform:read``. Errors are JSON
``{"error": {"code", "message", "details"}}``; money is integer minor units with a
currency; lists are newest first, paged by ``before`` with ``has_more``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from decimal import Decimal
from functools import wraps
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context
from werkzeug.exceptions import HTTPException

from api import keys, queries
from api.models import ApiKey
from api.openapi import PERIOD_PATTERN
from invoices import invoicing, ledger
from invoices.csv_export import stream_csv
from invoices.models import ENTRY_SIGNS, INVOICE_STATUSES
from plans.metering import MAX_BATCH, BatchRejected, BatchTooLarge, ingest_events
from plans.periods import Period, period_containing, period_from_label, today_in
from plans.usage import usage_summary
from portal.errors import NotFoundError
from portal.formatting import local_datetime
from portal.money import Money
from portal.paging import INT32_MAX, INT64_MAX
from tenants.models import Tenant
from tenants.scoping import (
    ALL_TENANTS,
    Scope,
    TenantScopeError,
    reset_scope,
    set_scope,
    unscoped,
)

bp = Blueprint("api_v1", __name__, url_prefix="/api/v1")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
PERIOD_RE = re.compile(PERIOD_PATTERN)
PUBLIC_ENDPOINTS = {"api_v1.openapi"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers or {}


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def bad_parameters(details: dict[str, str]) -> ApiError:
    return ApiError(400, "invalid_parameters",
                    "; ".join(f"{k}: {v}" for k, v in details.items()), details)


# -- authentication, scope and errors ---------------------------------------------------

@bp.before_request
def _authenticate():
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    header = request.headers.get("Authorization", "")
    secret = header[7:].strip() if header.lower().startswith("bearer ") else None
    try:
        key = keys.authenticate(secret)
    except keys.KeyRejected as exc:
        return error_response(401, "unauthenticated", str(exc),
                              headers={"WWW-Authenticate": 'Bearer realm="billfold"'})
    g.api_key = key
    g._api_scope_token = set_scope(ALL_TENANTS if key.is_platform
                                   else Scope("tenant", key.tenant_id))
    return None


@bp.teardown_request
def _leave(exc):
    token = g.pop("_api_scope_token", None)
    if token is not None:
        reset_scope(token)


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


@bp.errorhandler(NotFoundError)
@bp.errorhandler(TenantScopeError)
def _not_found(exc):
    return error_response(404, "not_found", "no such object")


CODES = {400: "invalid_parameters", 401: "unauthenticated", 403: "insufficient_scope",
         404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
         422: "invalid_batch", 429: "rate_limited"}


def http_error(exc: HTTPException) -> Response:
    """Any HTTP error under /api/ as the API's JSON error (429 keeps its headers)."""
    status = exc.code or 500
    headers = {}
    if status == 429:
        headers["Retry-After"] = str(_retry_after())
    message = "too many requests: slow down and retry after the given seconds" \
        if status == 429 else (exc.description or exc.name)
    return error_response(status, CODES.get(status, "error"), message, None, headers)


def _retry_after() -> int:
    """Seconds until the breached limit's window resets (at least 1)."""
    import math
    import time

    limit = current_app.appbuilder.sm.limiter.current_limit
    if limit is None:
        # The breached limit is not known here: a whole window of the longest API
        # limit, so that the client never comes back too early.
        from limits import parse

        return max(parse(current_app.config[key]).get_expiry()
                   for key in ("API_RATE_LIMIT", "API_INGEST_RATE_LIMIT"))
    # reset_at is in whole seconds, rounded down: the window may end up to a second later.
    return max(1, math.ceil(limit.reset_at + 1 - time.time()))


def requires(scope: str) -> Callable:
    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def checked(*args, **kwargs):
            key: ApiKey = g.api_key
            if scope not in key.scope_list:
                raise ApiError(403, "insufficient_scope",
                               f"this API key lacks the {scope} scope", {"required": scope})
            if scope != "platform:read" and key.is_platform:
                raise ApiError(403, "insufficient_scope",
                               "a platform key reads platform endpoints; use a tenant key")
            return view(*args, **kwargs)
        checked.required_scope = scope
        return checked
    return decorate


def _tenant() -> Tenant:
    """The key's own tenant. It is read by primary key outside the tenant scope, as
    the key itself was: the id comes from the authenticated key, and in the tenant
    scope every query carries the isolation criteria of each tenant-owned model,
    which costs more than this one-row read (an eighth of an ingestion request's
    CPU)."""
    from portal.extensions import db

    with unscoped():
        tenant = db.session.get(Tenant, g.api_key.tenant_id)
    if tenant is None:
        raise ApiError(404, "not_found", "the key's tenant no longer exists")
    return tenant


# -- parameters -------------------------------------------------------------------------

def _limit() -> int:
    raw = request.args.get("limit", "")
    if not raw:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise bad_parameters({"limit": f"an integer from 1 to {MAX_LIMIT}"})
    return int(raw)


def _before(largest_id: int = INT64_MAX) -> int | None:
    """The ``before`` cursor. A cursor above any id the table can hold means "from the
    newest", like no cursor (the database would refuse it as out of range)."""
    raw = request.args.get("before", "")
    if not raw:
        return None
    if not raw.isdigit():
        raise bad_parameters({"before": "the next_before value of the previous page"})
    value = int(raw)
    return None if value > largest_id else value


def _moment(name: str, timezone: str, errors: dict[str, str]) -> tuple[dt.date | None,
                                                                       dt.datetime | None]:
    """A date (in the tenant's zone) or an RFC 3339 instant from the query string."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return None, None
    try:
        if len(raw) == 10:
            return dt.date.fromisoformat(raw), None
        moment = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError
        return None, moment.astimezone(dt.UTC)
    except ValueError:
        errors[name] = "a date (2026-11-01) or an RFC 3339 time (2026-11-01T00:00:00Z)"
        return None, None


def _range(timezone: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``from`` (inclusive) and ``to`` as UTC instants; a ``to`` date includes its day."""
    from zoneinfo import ZoneInfo

    errors: dict[str, str] = {}
    zone = ZoneInfo(timezone)
    bounds = []
    for name in ("from", "to"):
        day, moment = _moment(name, timezone, errors)
        if day is not None:
            if name == "to":
                day += dt.timedelta(days=1)
            moment = dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC)
        bounds.append(moment)
    if not errors and bounds[0] and bounds[1] and bounds[0] >= bounds[1]:
        errors["to"] = "the range ends before it starts"
    if errors:
        raise bad_parameters(errors)
    return bounds[0], bounds[1]


def _day_range(tenant: Tenant, default_days: int = 30) -> tuple[dt.date, dt.date]:
    """``from``/``to`` as local days [start, end) (a ``to`` date is included)."""
    start, end = _range(tenant.timezone)
    today = today_in(tenant.timezone)
    first = start.astimezone(_zone(tenant)).date() if start else today - dt.timedelta(
        days=default_days - 1)
    last = end.astimezone(_zone(tenant)).date() if end else today + dt.timedelta(days=1)
    if (last - first).days > 3660:
        raise bad_parameters({"from": "at most ten years at a time"})
    return first, last


def _zone(tenant: Tenant):
    from zoneinfo import ZoneInfo

    return ZoneInfo(tenant.timezone)


def _choice(name: str, choices: tuple[str, ...], default: str) -> str:
    value = request.args.get(name, default)
    if value not in choices:
        raise bad_parameters({name: f"one of {', '.join(choices)}"})
    return value


def _period(tenant: Tenant) -> Period:
    raw = request.args.get("period", "").strip()
    anchor = queries.anchor_day(tenant)
    if not raw:
        return period_containing(today_in(tenant.timezone), anchor)
    if not PERIOD_RE.match(raw):
        raise bad_parameters({"period": "YYYY-MM, the month the billing period starts in"})
    try:
        return period_from_label(raw, anchor)
    except ValueError as exc:
        raise bad_parameters({"period": str(exc)}) from exc


def _number(value: Decimal | None) -> int | float | str | None:
    """Decimals as JSON numbers without float rounding: integral values as int,
    others as Decimal (written exactly by the app's JSON provider)."""
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else value


def _iso(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


# -- usage ------------------------------------------------------------------------------

@bp.post("/usage/events")
@requires("usage:write")
def ingest():
    limit = current_app.config.get("API_MAX_BATCH_BYTES", 16 * 1024 * 1024)
    if (request.content_length or 0) > limit:
        raise ApiError(413, "payload_too_large", f"a request body carries at most {limit:,} "
                                                 "bytes")
    raw = request.get_data(cache=False)
    try:
        body = json.loads(raw, parse_float=Decimal)
    except ValueError as exc:
        raise bad_parameters({"body": f"not JSON: {exc}"}) from exc
    events = body.get("events") if isinstance(body, dict) else body
    if not isinstance(events, list):
        raise bad_parameters({"events": "send {\"events\": [...]}, a list of usage events"})
    if len(events) > MAX_BATCH:
        raise ApiError(413, "payload_too_large",
                       f"a batch carries at most {MAX_BATCH:,} events, not {len(events):,}")
    if not events:
        raise bad_parameters({"events": "the batch is empty"})
    try:
        result = ingest_events(_tenant(), events)
    except BatchTooLarge as exc:
        raise ApiError(413, "payload_too_large", str(exc)) from exc
    except BatchRejected as exc:
        raise ApiError(422, "invalid_batch", str(exc),
                       [e.as_dict() for e in exc.errors]) from exc
    return jsonify(result.as_dict())


@bp.get("/usage/summary")
@requires("usage:read")
def summary():
    tenant = _tenant()
    return jsonify(usage_summary(tenant, _period(tenant)).as_api())


@bp.get("/usage")
@requires("usage:read")
def usage():
    tenant = _tenant()
    granularity = _choice("granularity", queries.GRANULARITIES, "day")
    group_by = _choice("group_by", queries.GROUPS, "metric")
    start, end = _day_range(tenant)
    buckets = queries.usage_buckets(tenant, start, end, granularity, group_by)
    return jsonify({
        "from": start.isoformat(), "to": (end - dt.timedelta(days=1)).isoformat(),
        "granularity": granularity, "group_by": group_by, "timezone": tenant.timezone,
        "currency": tenant.currency,
        "data": [{"start": b.start.isoformat(), "end": b.end.isoformat(), "group": b.group,
                  "quantity": _number(b.quantity), "cost": b.cost} for b in buckets],
    })


# -- costs, transactions, invoices ------------------------------------------------------

@bp.get("/costs/breakdown")
@requires("billing:read")
def breakdown():
    tenant = _tenant()
    result = queries.cost_breakdown(tenant, _period(tenant))
    return jsonify({"period": result.period.label, "currency": result.currency,
                    "total": result.total, "platform_fee": result.platform_fee,
                    "by_service": result.by_service, "by_user": result.by_user,
                    "invoice": result.invoice_number})


def _entry_filter(tenant: Tenant) -> ledger.EntryFilter:
    types = tuple(t for t in request.args.getlist("type") if t)
    unknown = [t for t in types if t not in ENTRY_SIGNS]
    if unknown:
        raise bad_parameters({"type": f"unknown type {', '.join(unknown)}; one of "
                                      f"{', '.join(ENTRY_SIGNS)}"})
    start, end = _range(tenant.timezone)
    return ledger.EntryFilter(types, start, end)


def _entry(e) -> dict[str, Any]:
    return {"id": e.id, "created_at": _iso(e.created_at), "type": e.type,
            "amount": e.amount_minor, "currency": e.currency,
            "balance_after": e.balance_after_minor, "description": e.description,
            "source": e.source, "ref_id": e.ref_id}


@bp.get("/transactions")
@requires("billing:read")
def transactions():
    tenant = _tenant()
    where = _entry_filter(tenant)
    page = ledger.list_entries(tenant, before=_before(), limit=_limit(), where=where)
    return jsonify({"data": [_entry(e) for e in page.entries], "has_more": page.has_more,
                    "next_before": page.next_before})


@bp.get("/transactions.csv")
@requires("billing:read")
def transactions_csv():
    tenant = _tenant()
    where = _entry_filter(tenant)
    rows = ([e.id, local_datetime(e.created_at, tenant.timezone), e.type,
             Money.from_minor(e.amount_minor, e.currency).amount, e.currency,
             Money.from_minor(e.balance_after_minor, e.currency).amount, e.description,
             e.source, e.ref_id or ""] for e in ledger.iter_entries(tenant, where))
    preamble = [f"Billfold transactions of {tenant.name} ({tenant.slug})",
                f"Times and the date range are in {tenant.timezone}; amounts in "
                f"{tenant.currency}"]
    return Response(stream_with_context(stream_csv(
        ["id", "date", "type", "amount", "currency", "balance_after", "description",
         "source", "ref_id"], rows, preamble)), mimetype="text/csv",
        headers={"Content-Disposition":
                 f'attachment; filename="transactions-{tenant.slug}.csv"'})


def _invoice(inv) -> dict[str, Any]:
    return {"number": inv.number, "period_start": inv.period_start.isoformat(),
            "period_end": inv.period_last_day.isoformat(), "status": inv.status,
            "issued_at": _iso(inv.issued_at),
            "due_date": inv.due_date.isoformat() if inv.due_date else None,
            "amount": inv.total_minor, "currency": inv.currency}


@bp.get("/invoices")
@requires("billing:read")
def invoices():
    tenant = _tenant()
    statuses = tuple(s for s in request.args.getlist("status") if s)
    if any(s not in INVOICE_STATUSES for s in statuses):
        raise bad_parameters({"status": f"one of {', '.join(INVOICE_STATUSES)}"})
    start, end = _range(tenant.timezone)
    zone = _zone(tenant)
    where = invoicing.InvoiceFilter(
        statuses, start.astimezone(zone).date() if start else None,
        end.astimezone(zone).date() if end else None)
    rows, has_more = invoicing.list_invoices(tenant, where, before=_before(INT32_MAX),
                                             limit=_limit())
    return jsonify({"data": [_invoice(i) for i in rows], "has_more": has_more,
                    "next_before": rows[-1].id if has_more and rows else None})


@bp.get("/invoices/<number>")
@requires("billing:read")
def invoice(number):
    inv = invoicing.get_invoice(_tenant(), number)
    body = _invoice(inv)
    body.update({
        "subtotal": inv.subtotal_minor, "tax": inv.tax_minor, "paid": inv.paid_minor,
        "amount_due": inv.due_minor if inv.is_open else 0,
        "lines": [{"description": ln.description, "metric": ln.metric, "service": ln.service,
                   "quantity": format(ln.quantity, "f"), "unit_price": format(ln.unit_price, "f"),
                   "amount": ln.amount_minor} for ln in inv.lines],
        "payments": [{"method": p.method, "amount": p.amount_minor, "reference": p.reference,
                      "received_at": _iso(p.received_at)} for p in inv.payments],
    })
    return jsonify(body)


@bp.get("/invoices/<number>/pdf")
@requires("billing:read")
def invoice_pdf(number):
    data, filename = invoicing.invoice_pdf(_tenant(), number)
    return Response(data, mimetype="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# -- platform ---------------------------------------------------------------------------

@bp.get("/platform/revenue")
@requires("platform:read")
def platform_revenue():
    granularity = _choice("granularity", queries.GRANULARITIES, "month")
    currency = request.args.get("currency", "USD").upper()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise bad_parameters({"currency": "an ISO 4217 code such as USD"})
    start, end = _range("UTC")
    today = dt.datetime.now(dt.UTC).date()
    first = start.date() if start else today.replace(day=1) - dt.timedelta(days=365)
    last = end.date() if end else today + dt.timedelta(days=1)
    if (last - first).days > 3660:
        raise bad_parameters({"from": "at most ten years at a time"})
    data = queries.revenue(first, last, granularity, currency)
    return jsonify({"currency": currency, "granularity": granularity,
                    "data": [{"start": b.start.isoformat(), "gross": b.gross,
                              "refunds": b.refunds, "fees": b.fees, "net": b.net}
                             for b in data]})


@bp.get("/platform/tenants")
@requires("platform:read")
def platform_tenants():
    rows, has_more = queries.tenants_overview(_before(INT32_MAX), _limit())
    return jsonify({
        "data": [{"slug": r.tenant.slug, "name": r.tenant.name, "status": r.tenant.status,
                  "currency": r.tenant.currency, "plan": r.plan, "balance": r.balance,
                  "month_to_date_spend": r.month_to_date, "overdue": r.overdue}
                 for r in rows],
        "has_more": has_more, "next_before": rows[-1].tenant.id if has_more and rows else None,
    })


@bp.get("/openapi.json")
def openapi():
    from api.openapi import openapi_document

    return jsonify(openapi_document(request.host_url.rstrip("/") + "/"))


def init_api(app) -> None:
    """Register the API with its rate limits: one per key for reads, a higher one for
    ingestion (``API_RATE_LIMIT``, ``API_INGEST_RATE_LIMIT``), counted in the limiter's
    storage (``RATELIMIT_STORAGE_URI``)."""
    app.register_blueprint(bp)
    limiter = app.appbuilder.sm.limiter

    def key_of() -> str:
        key = g.get("api_key")
        return f"api-key:{key.id}" if key is not None else f"ip:{request.remote_addr}"

    # One budget per key across the API, and a separate one for ingestion.
    reads = limiter.shared_limit(lambda: app.config["API_RATE_LIMIT"], scope="api",
                                 key_func=key_of)
    ingestion = limiter.shared_limit(lambda: app.config["API_INGEST_RATE_LIMIT"],
                                     scope="api-ingest", key_func=key_of)
    for endpoint, view in list(app.view_functions.items()):
        if not endpoint.startswith("api_v1.") or endpoint in PUBLIC_ENDPOINTS:
            continue
        app.view_functions[endpoint] = (ingestion if endpoint == "api_v1.ingest"
                                        else reads)(view)
