"""The cost breakdown, usage analytics and the Platform Admin's overview: pages, the
JSON their charts load and a CSV of every table and chart.

Tenant users see their own tenant; a Platform Admin names one with ``?tenant=``.
Dates are days in the tenant's time zone (the overview's revenue: UTC), amounts are
integer minor units in JSON and decimal amounts beside their currency in CSV."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from decimal import Decimal

from flask import Response, flash, g, jsonify, request, stream_with_context, url_for
from flask_appbuilder import BaseView, expose
from flask_appbuilder.security.decorators import has_access

from api import queries
from api.openapi import PERIOD_PATTERN
from invoices import analytics
from invoices.csv_export import stream_csv
from invoices.invoice_pdf import SERVICE_LABELS
from permissions.matrix import RESOURCE_ANALYTICS, RESOURCE_COSTS, RESOURCE_PLATFORM_OVERVIEW
from plans.metrics import METRICS, SERVICES
from plans.periods import Period, period_containing, period_from_label, today_in
from portal.errors import ValidationFailed
from portal.money import Money, minor_digits
from portal.paging import INT32_MAX, cursor_arg
from portal.tenancy import page_tenant, tenant_picker

PERIOD_RE = re.compile(PERIOD_PATTERN)
COMPONENT_LABELS = {"llm_cost": "LLM tokens", "compute_cost": "Compute and API requests",
                    "query_cost": "SQL queries", "storage_cost": "Storage",
                    "training_cost": "Training", "serving_cost": "Serving",
                    "other_cost": "Other"}
USER_SORTS = ("cost", "user_id", "name")
DEFAULT_USER_SORT = "-cost"
CHARTS = {
    "spend": "Spend over time",
    "cumulative-spend": "Cumulative spend",
    "credit-purchases": "Cumulative credit purchases",
    "balance": "Account balance over time",
    "usage": "Usage per metric",
    "daily": "Daily usage",
    "comparison": "Comparison with the previous period",
}


def _is_platform() -> bool:
    return g.user.tenant_id is None


def _tenant_arg(tenant) -> dict:
    return {"tenant": tenant.slug} if _is_platform() else {}


def _amount(minor: int, currency: str) -> Decimal:
    return Money.from_minor(minor, currency).amount


def _csv_response(what: str, slug: str, header: list[str], rows: Iterable,
                  preamble: list[str]) -> Response:
    filename = f"{what}-{slug}-{dt.date.today():%Y%m%d}.csv"
    return Response(stream_with_context(stream_csv(header, rows, preamble)),
                    mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _tenant_preamble(tenant, title: str, scope: str) -> list[str]:
    return [f"Billfold {title} of {tenant.name} ({tenant.slug})",
            f"Dates are days in {tenant.timezone}; amounts in {tenant.currency}",
            scope]


def _errors_text(exc: ValidationFailed) -> str:
    return "; ".join(f"{k}: {v}" for k, v in exc.errors.items())


# -- cost breakdown ------------------------------------------------------------------------

def _period(tenant) -> Period:
    """The ``period`` of the query string (YYYY-MM), default the current one."""
    anchor = queries.anchor_day(tenant)
    raw = request.args.get("period", "").strip()
    if not raw:
        return period_containing(today_in(tenant.timezone), anchor)
    if not PERIOD_RE.match(raw):
        raise ValidationFailed({"period": "YYYY-MM, the month the billing period starts in"})
    try:
        return period_from_label(raw, anchor)
    except ValueError as exc:
        raise ValidationFailed({"period": str(exc)}) from exc


def _user_sort() -> str:
    raw = request.args.get("sort", DEFAULT_USER_SORT)
    return raw if raw.lstrip("-") in USER_SORTS else DEFAULT_USER_SORT


def sorted_users(rows: list[dict], sort: str) -> list[dict]:
    """The by-user rows ordered by ``sort``: a column name, ``-`` first for descending."""
    column = sort.lstrip("-")
    if column == "cost":
        key = lambda r: (r["cost"], r["user_id"])  # noqa: E731
    elif column == "name":
        key = lambda r: (r["name"].casefold(), r["user_id"])  # noqa: E731
    else:
        key = lambda r: r["user_id"]  # noqa: E731
    return sorted(rows, key=key, reverse=sort.startswith("-"))


def _service_rows(breakdown) -> list[tuple[str, str, int]]:
    """(service, component, amount) in the breakdown's order, services of
    ``SERVICES`` first."""
    order = list(SERVICES) + sorted(set(breakdown.by_service) - set(SERVICES))
    return [(service, part, amount) for service in order
            for part, amount in breakdown.by_service.get(service, {}).items()]


def _reconciliation(tenant, breakdown) -> dict:
    """How the page's total relates to the invoice: equal to an issued invoice's
    subtotal, or an estimate (the open period month to date, or an ended period not
    yet invoiced)."""
    today = today_in(tenant.timezone)
    period = breakdown.period
    components = sum(a for parts in breakdown.by_service.values() for a in parts.values())
    users = sum(u["cost"] for u in breakdown.by_user)
    state = ("invoiced" if breakdown.invoice_number else
             "open" if period.contains(today) else
             "future" if period.start > today else "not_invoiced")
    return {"state": state, "invoice": breakdown.invoice_number,
            "through": min(today, period.last_day),
            "services_add_up": components + breakdown.platform_fee == breakdown.total,
            "users_add_up": users + breakdown.platform_fee == breakdown.total}


class CostBreakdownView(BaseView):
    """A billing period's cost by service and component and by user, reconciled with
    the period's invoice."""

    route_base = "/billing/costs"
    default_view = "index"
    class_permission_name = RESOURCE_COSTS
    method_permission_name = {"index": "read", "services_csv": "read", "users_csv": "read"}

    @expose("/")
    @has_access
    def index(self):
        tenant = page_tenant()
        if tenant is None:
            return tenant_picker(self, "Cost breakdown")
        status = 200
        try:
            period = _period(tenant)
        except ValidationFailed as exc:
            flash(_errors_text(exc), "danger")
            period, status = None, 400
        breakdown = queries.cost_breakdown(tenant, period)
        sort = _user_sort()
        return self.render_template(
            "analytics/costs.html", tenant=tenant, breakdown=breakdown,
            services=_service_rows(breakdown), users=sorted_users(breakdown.by_user, sort),
            sort=sort, check=_reconciliation(tenant, breakdown), tenant_arg=_tenant_arg(tenant),
            service_labels=SERVICE_LABELS, component_labels=COMPONENT_LABELS,
            is_platform=_is_platform()), status

    def _csv(self, what: str, header: list[str], rows: Callable) -> Response:
        tenant = page_tenant(required=True)
        try:
            period = _period(tenant)
        except ValidationFailed as exc:
            return Response(_errors_text(exc) + "\n", status=400, mimetype="text/plain")
        breakdown = queries.cost_breakdown(tenant, period)
        source = (f"equals the subtotal of invoice {breakdown.invoice_number}"
                  if breakdown.invoice_number else "an estimate: no invoice issued yet")
        total = _amount(breakdown.total, tenant.currency)
        preamble = _tenant_preamble(
            tenant, f"cost breakdown by {what}",
            f"Billing period {breakdown.period.start:%Y-%m-%d} to "
            f"{breakdown.period.last_day:%Y-%m-%d}; total {total} {tenant.currency} ({source})")
        return _csv_response(f"costs-by-{what}", tenant.slug, header, rows(tenant, breakdown),
                             preamble)

    @expose("/services.csv")
    @has_access
    def services_csv(self):
        def rows(tenant, breakdown):
            for service, part, amount in _service_rows(breakdown):
                yield [breakdown.period.label, service, part,
                       _amount(amount, tenant.currency), tenant.currency]
            yield [breakdown.period.label, "platform", "platform_fee",
                   _amount(breakdown.platform_fee, tenant.currency), tenant.currency]

        return self._csv("service", ["period", "service", "component", "cost", "currency"],
                         rows)

    @expose("/users.csv")
    @has_access
    def users_csv(self):
        def rows(tenant, breakdown):
            for user in sorted_users(breakdown.by_user, _user_sort()):
                yield [breakdown.period.label, user["user_id"], user["name"],
                       _amount(user["cost"], tenant.currency), tenant.currency]

        return self._csv("user", ["period", "user_id", "name", "cost", "currency"], rows)


# -- usage analytics -----------------------------------------------------------------------

def _day(params, name: str) -> dt.date | None:
    raw = params.get(name, "").strip()
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError as exc:
        raise ValidationFailed({name: "a date such as 2026-11-01"}) from exc


def _range(tenant) -> analytics.DateRange:
    """The range of the query string: ``view`` (week, month, year or custom with
    ``from`` and ``to``) and an optional ``granularity``, in the tenant's zone."""
    first, last = _day(request.args, "from"), _day(request.args, "to")
    view = request.args.get("view", "").strip() or ("custom" if first or last else "month")
    granularity = request.args.get("granularity", "").strip() or None
    return analytics.date_range(view, first, last, today_in(tenant.timezone), granularity)


def _range_args(rng: analytics.DateRange) -> dict:
    args = {"view": rng.view, "granularity": rng.granularity}
    if rng.view == "custom":
        args.update({"from": rng.start.isoformat(), "to": rng.last_day.isoformat()})
    return args


def _quantity(value):
    return analytics.quantity_of(value) if isinstance(value, Decimal) else value


def analytics_json(tenant, result: analytics.Analytics) -> dict:
    """The charts' data: every series per bucket, money in minor units."""
    rng = result.range

    def bounds(rng_):
        return {"from": rng_.start.isoformat(), "to": rng_.last_day.isoformat()}

    return {
        "tenant": tenant.slug, "currency": tenant.currency,
        "minor_digits": minor_digits(tenant.currency), "timezone": tenant.timezone,
        "view": rng.view, "granularity": rng.granularity, **bounds(rng),
        "previous": bounds(result.previous),
        "spend": [{"start": p.start.isoformat(), "usage": p.usage, "plan_fee": p.plan_fee,
                   "total": p.total, "cumulative": p.cumulative} for p in result.spend],
        "credit": [{"start": p.start.isoformat(), "purchased": p.purchased,
                    "cumulative": p.cumulative, "balance": p.balance} for p in result.credit],
        "metrics": {code: {"label": m.label, "unit": m.unit} for code, m in METRICS.items()},
        "usage": [{"start": b.start.isoformat(), "metric": b.group,
                   "quantity": analytics.quantity_of(b.quantity), "cost": b.cost}
                  for b in result.usage],
        "comparison": [{"key": c.key, "label": c.label, "kind": c.kind,
                        "current": _quantity(c.current), "previous": _quantity(c.previous),
                        "change_percent": c.percent} for c in result.changes],
    }


def _bucket_label(start: dt.date, granularity: str) -> str:
    return f"{start:%Y-%m}" if granularity == "month" else start.isoformat()


class UsageAnalyticsView(BaseView):
    """Charts of spend, credit, balance and usage over a range, the per-day table and
    the comparison with the previous range."""

    route_base = "/billing/analytics"
    default_view = "index"
    class_permission_name = RESOURCE_ANALYTICS
    method_permission_name = {"index": "read", "data_json": "read", "data_csv": "read"}

    @expose("/")
    @has_access
    def index(self):
        tenant = page_tenant()
        if tenant is None:
            return tenant_picker(self, "Usage analytics")
        status = 200
        try:
            rng = _range(tenant)
        except ValidationFailed as exc:
            flash(_errors_text(exc), "danger")
            rng = analytics.date_range("month", None, None, today_in(tenant.timezone))
            status = 400
        result = analytics.analytics(tenant, rng)
        table_range, daily = analytics.daily_of(tenant, result)
        args = {**_tenant_arg(tenant), **_range_args(rng)}
        return self.render_template(
            "analytics/analytics.html", tenant=tenant, result=result, rng=rng,
            daily=daily,
            table_range=table_range, metrics=METRICS, charts=CHARTS, args=args,
            views=analytics.VIEW_LABELS, granularities=analytics.GRANULARITIES,
            shown={"from": request.args.get("from", "") or rng.start.isoformat(),
                   "to": request.args.get("to", "") or rng.last_day.isoformat()},
            data_url=url_for("UsageAnalyticsView.data_json", **args),
            is_platform=_is_platform()), status

    @expose("/data.json")
    @has_access
    def data_json(self):
        tenant = page_tenant(required=True)
        try:
            rng = _range(tenant)
        except ValidationFailed as exc:
            return jsonify({"error": {"code": "invalid_parameters", "message": str(exc),
                                      "details": exc.errors}}), 400
        return jsonify(analytics_json(tenant, analytics.analytics(tenant, rng)))

    @expose("/data.csv")
    @has_access
    def data_csv(self):
        tenant = page_tenant(required=True)
        chart = request.args.get("chart", "")
        try:
            if chart not in CHARTS:
                raise ValidationFailed({"chart": f"one of {', '.join(CHARTS)}"})
            rng = _range(tenant)
        except ValidationFailed as exc:
            return Response(_errors_text(exc) + "\n", status=400, mimetype="text/plain")
        currency = tenant.currency
        if chart == "daily":
            table = analytics.daily_table_range(rng)
            header = ["date", "metric", "type", "calls", "quantity", "unit", "cost", "currency"]
            rows = ([r.day.isoformat(), r.metric, " ".join(r.services), r.calls,
                     analytics.quantity_of(r.quantity), METRICS[r.metric].unit,
                     _amount(r.cost, currency), currency]
                    for r in analytics.daily_usage(tenant, table.start, table.end))
            scope = f"Days {table.start} to {table.last_day}"
        else:
            result = analytics.analytics(tenant, rng)
            header, rows = self._chart_rows(chart, result, currency)
            scope = (f"Range {rng.start} to {rng.last_day} by {rng.granularity}"
                     + (f"; previous period {result.previous.start} to "
                        f"{result.previous.last_day}" if chart == "comparison" else ""))
        preamble = _tenant_preamble(tenant, CHARTS[chart].lower(), scope)
        return _csv_response(chart, tenant.slug, header, rows, preamble)

    @staticmethod
    def _chart_rows(chart: str, result: analytics.Analytics, currency: str):
        granularity = result.range.granularity
        if chart == "spend":
            return (["period", "usage", "plan_fee", "total", "currency"],
                    ([_bucket_label(p.start, granularity), _amount(p.usage, currency),
                      _amount(p.plan_fee, currency), _amount(p.total, currency), currency]
                     for p in result.spend))
        if chart == "cumulative-spend":
            return (["period", "spend", "cumulative_spend", "currency"],
                    ([_bucket_label(p.start, granularity), _amount(p.total, currency),
                      _amount(p.cumulative, currency), currency] for p in result.spend))
        if chart == "credit-purchases":
            return (["period", "purchased", "cumulative_purchased", "currency"],
                    ([_bucket_label(p.start, granularity), _amount(p.purchased, currency),
                      _amount(p.cumulative, currency), currency] for p in result.credit))
        if chart == "balance":
            return (["period", "balance_at_end", "currency"],
                    ([_bucket_label(p.start, granularity), _amount(p.balance, currency),
                      currency] for p in result.credit))
        if chart == "usage":
            return (["period", "metric", "quantity", "unit", "cost", "currency"],
                    ([_bucket_label(b.start, granularity), b.group,
                      analytics.quantity_of(b.quantity), METRICS[b.group].unit,
                      _amount(b.cost, currency), currency]
                     for b in result.usage if b.group in METRICS))

        def value(change, amount):
            return _amount(amount, currency) if change.kind == "money" else _quantity(amount)

        return (["measure", "current", "previous", "change_percent", "unit"],
                ([c.key, value(c, c.current), value(c, c.previous),
                  "" if c.percent is None else c.percent,
                  currency if c.kind == "money" else c.unit] for c in result.changes))


# -- the Platform Admin's overview -----------------------------------------------------------

REVENUE_DEFAULT_DAYS = {"day": 30, "week": 7 * 26}
MAX_REVENUE_DAYS = 3660
MAX_REVENUE_DAILY_DAYS = 400


def _revenue_query(params) -> dict:
    """Granularity, UTC days [start, end) and currency of the revenue view, from the
    query string ``params``."""
    granularity = params.get("granularity", "").strip() or "month"
    if granularity not in queries.GRANULARITIES:
        raise ValidationFailed({"granularity": f"one of {', '.join(queries.GRANULARITIES)}"})
    currencies = analytics.tenant_currencies() or ["USD"]
    currency = params.get("currency", "").strip().upper() or (
        "USD" if "USD" in currencies else currencies[0])
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise ValidationFailed({"currency": "an ISO 4217 code such as USD"})
    today = dt.datetime.now(dt.UTC).date()
    first, last = _day(params, "from"), _day(params, "to")
    end = (last or today) + dt.timedelta(days=1)
    if first is None:
        if granularity == "month":
            month = end.year * 12 + end.month - 1 - 11
            first = dt.date(month // 12, month % 12 + 1, 1)
        else:
            first = end - dt.timedelta(days=REVENUE_DEFAULT_DAYS[granularity])
    if end <= first:
        raise ValidationFailed({"to": "the range ends before it starts"})
    if (end - first).days > MAX_REVENUE_DAYS:
        raise ValidationFailed({"from": "at most ten years at a time"})
    if granularity == "day" and (end - first).days > MAX_REVENUE_DAILY_DAYS:
        raise ValidationFailed({"granularity": f"day buckets cover at most "
                                               f"{MAX_REVENUE_DAILY_DAYS} days"})
    return {"granularity": granularity, "currency": currency, "start": first, "end": end,
            "currencies": currencies}


class PlatformOverviewView(BaseView):
    """Every tenant with plan, balance, month-to-date spend and what is overdue, and
    the platform's revenue over time."""

    route_base = "/platform/overview"
    default_view = "index"
    class_permission_name = RESOURCE_PLATFORM_OVERVIEW
    method_permission_name = {"index": "read", "revenue_json": "read", "revenue_csv": "read",
                              "tenants_csv": "read"}

    @expose("/")
    @has_access
    def index(self):
        status = 200
        try:
            query = _revenue_query(request.args)
        except ValidationFailed as exc:
            flash(_errors_text(exc), "danger")
            query, status = _revenue_query({}), 400
        rows, has_more = queries.tenants_overview(cursor_arg(INT32_MAX))
        data = queries.revenue(query["start"], query["end"], query["granularity"],
                               query["currency"])
        args = {"granularity": query["granularity"], "currency": query["currency"],
                "from": query["start"].isoformat(),
                "to": (query["end"] - dt.timedelta(days=1)).isoformat()}
        return self.render_template(
            "analytics/overview.html", rows=rows, has_more=has_more,
            next_before=rows[-1].tenant.id if has_more and rows else None,
            first_page=request.args.get("before") is None, revenue=data, query=query,
            args=args, granularities=queries.GRANULARITIES,
            data_url=url_for("PlatformOverviewView.revenue_json", **args)), status

    @expose("/revenue.json")
    @has_access
    def revenue_json(self):
        try:
            query = _revenue_query(request.args)
        except ValidationFailed as exc:
            return jsonify({"error": {"code": "invalid_parameters", "message": str(exc),
                                      "details": exc.errors}}), 400
        data = queries.revenue(query["start"], query["end"], query["granularity"],
                               query["currency"])
        return jsonify({"currency": query["currency"],
                        "minor_digits": minor_digits(query["currency"]),
                        "timezone": "UTC", "granularity": query["granularity"],
                        "from": query["start"].isoformat(),
                        "to": (query["end"] - dt.timedelta(days=1)).isoformat(),
                        "data": [{"start": b.start.isoformat(), "gross": b.gross,
                                  "refunds": b.refunds, "fees": b.fees, "net": b.net}
                                 for b in data]})

    @expose("/revenue.csv")
    @has_access
    def revenue_csv(self):
        try:
            query = _revenue_query(request.args)
        except ValidationFailed as exc:
            return Response(_errors_text(exc) + "\n", status=400, mimetype="text/plain")
        currency, granularity = query["currency"], query["granularity"]
        data = queries.revenue(query["start"], query["end"], granularity, currency)
        preamble = ["Billfold platform revenue, all tenants billing in " + currency,
                    f"Dates are days in UTC; amounts in {currency}",
                    f"Range {query['start']} to {query['end'] - dt.timedelta(days=1)} "
                    f"by {granularity}"]
        rows = ([_bucket_label(b.start, granularity), _amount(b.gross, currency),
                 _amount(b.refunds, currency), _amount(b.fees, currency),
                 _amount(b.net, currency), currency] for b in data)
        return _csv_response("revenue", "platform", ["period", "gross", "refunds", "fees",
                                                     "net", "currency"], rows, preamble)

    @expose("/tenants.csv")
    @has_access
    def tenants_csv(self):
        def rows():
            before = None
            while True:
                page, more = queries.tenants_overview(before)
                for r in page:
                    currency = r.tenant.currency
                    yield [r.tenant.slug, r.tenant.name, r.tenant.status, r.plan or "",
                           _amount(r.balance, currency), _amount(r.month_to_date, currency),
                           _amount(r.overdue, currency), currency, r.tenant.timezone]
                if not more or not page:
                    return
                before = page[-1].tenant.id

        preamble = ["Billfold tenants overview, all tenants",
                    "Amounts in each tenant's own currency; month to date in each "
                    "tenant's time zone",
                    f"As of {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"]
        return _csv_response("tenants", "platform",
                             ["slug", "name", "status", "plan", "balance",
                              "month_to_date_spend", "overdue", "currency", "timezone"],
                             rows(), preamble)
