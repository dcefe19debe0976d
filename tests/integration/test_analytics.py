"""Cost breakdown, usage analytics and the platform overview: reconciliation with
the invoice, date ranges in the tenant's time zone, chart JSON, CSV exports, and who
may see what."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from decimal import Decimal

import pytest
from sqlalchemy import event, select

from api.queries import usage_buckets
from invoices import analytics, invoicing, ledger
from invoices.models import CreditPurchase
from invoices.rating import _Usage, rate_period, rate_prefixes, rollup_rows
from plans import services as plan_services
from plans.metering import ingest_events
from plans.models import UsageRollup
from plans.periods import period_containing, today_in
from portal.audit import Actor
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped
from tests.conftest import page_text

ACTOR = Actor.system("tests")


def _tenant(world, key="a"):
    with unscoped():
        return db.session.get(Tenant, world.ids[key])


def _last_period(timezone="UTC"):
    return period_containing(today_in(timezone)).previous()


def _at(day: dt.date, hour: int = 12, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=dt.UTC)


def _csv(response) -> tuple[list[str], list[list[str]]]:
    """The preamble lines and the rows (header first) of a CSV response."""
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    preamble = [r[0] for r in rows if r and r[0].startswith("#")]
    return preamble, [r for r in rows if r and not r[0].startswith("#")]


@pytest.fixture
def alpha_closed(app, world):
    """Alpha's last period: 6M tokens on its first day (4M by alice, 2M by a user
    whose reference looks like a formula), 10 queries on its second day, closed into
    an invoice. Professional: $499 + 1M tokens over at $0.000003 = $502.00."""
    with app.app_context():
        tenant = _tenant(world)
        period = _last_period()
        ingest_events(tenant, [
            {"id": "t1", "metric": "llm_tokens", "quantity": 4_000_000,
             "timestamp": _at(period.start), "user": "alice"},
            {"id": "t2", "metric": "llm_tokens", "quantity": 2_000_000,
             "timestamp": _at(period.start, 13), "user": "=cmd"},
            {"id": "q1", "metric": "sql_queries", "quantity": 10,
             "timestamp": _at(period.start + dt.timedelta(days=1)), "user": "alice"},
        ])
        invoice = invoicing.close_period(tenant, period, render=False)
        result = {"period": period, "number": invoice.number,
                  "subtotal": invoice.subtotal_minor}
        db.session.remove()
    return result


@pytest.fixture
def alpha_busy(app, world):
    """Alpha's last period with a plan change on its 11th day (Professional, then
    Starter) and usage over and under both plans' allowances: tokens of three users
    on two services, queries, compute, and storage whose peak is tied on two days
    before the change and falls on a later day after it. Returns the period."""
    with app.app_context(), unscoped():
        tenant = _tenant(world)
        period = _last_period()
        plans = {p.code: p for p in plan_services.list_plans()}
        change = period.start + dt.timedelta(days=10)
        with tenant_scope(tenant):
            plan_services.current_subscription(tenant, period.start).ends_on = change
            db.session.commit()
        plan_services.subscribe(ACTOR, tenant, plans["starter"], starts_on=change)
        events = []
        for day in range(0, period.days, 2):
            at = _at(period.start + dt.timedelta(days=day))
            for n, user in enumerate(("alice", "bob", "")):
                events.append({"id": f"t-{day}-{n}", "metric": "llm_tokens",
                               "quantity": 150_000 + 70_001 * n + 9_000 * day,
                               "timestamp": at, "user": user})
            events += [
                {"id": f"r-{day}", "metric": "api_requests", "quantity": 80_000 + 777 * day,
                 "timestamp": at, "user": "bob", "service": "ml_service"},
                {"id": f"q-{day}", "metric": "sql_queries", "quantity": 900 + 13 * day,
                 "timestamp": at, "user": "alice"},
                {"id": f"c-{day}", "metric": "compute_hours", "quantity": 37 + day,
                 "timestamp": at, "user": "alice"}]
        for day, parts in ((1, (70, 50)), (4, (20, 100)), (12, (30, 35)), (15, (40, 41))):
            at = _at(period.start + dt.timedelta(days=day))
            events += [{"id": f"s-{day}-{n}", "metric": "storage_gb", "quantity": gb,
                        "timestamp": at, "user": user}
                       for n, (user, gb) in enumerate(zip(("alice", "bob"), parts, strict=True))]
        ingest_events(tenant, events)
        db.session.remove()
    return period


def _lines(rating) -> list[tuple]:
    return [(line.kind, line.description, line.metric, line.service, line.quantity,
             line.unit_price, line.amount_minor, line.segment_start, line.segment_end,
             list(line.by_user.items())) for line in rating.lines]


def test_rating_every_day_from_one_read_equals_rating_each_prefix_apart(app, world, ctx,
                                                                          alpha_busy):
    """``rate_prefixes`` (one read of the rollups by day, each prefix rated from running
    totals) gives what ``rate_period`` (the database sums the days of each prefix)
    gives, line by line and user by user."""
    tenant, period = _tenant(world), alpha_busy
    throughs = [None, *(period.start + dt.timedelta(days=n) for n in range(period.days + 1))]
    prefixes = rate_prefixes(tenant, period, throughs)
    summed = rollup_rows(tenant, period.start, period.end, users=False)
    assert {row[3] for row in summed} == {""}
    without_users = rate_prefixes(tenant, period, throughs, rows=summed)
    for through in throughs:
        apart = rate_period(tenant, period, through=through)
        assert _lines(prefixes[through]) == _lines(apart), through
        assert [vars(u) for u in prefixes[through].usage] == [vars(u) for u in apart.usage]
        assert prefixes[through].through == apart.through
        # Users summed: the same lines, every amount unattributed.
        assert [line[:9] for line in _lines(without_users[through])] \
            == [line[:9] for line in _lines(apart)]
        assert without_users[through].by_user() in ({}, {
            "(unattributed)": sum(ln.amount_minor for ln in apart.lines if ln.kind == "overage")})
    whole = prefixes[None]
    overage = {(ln.segment_start, ln.metric, ln.service) for ln in whole.lines
               if ln.kind == "overage"}
    change = period.start + dt.timedelta(days=10)
    assert {(period.start, "storage_gb", "query_engine"), (change, "storage_gb", "query_engine"),
            (period.start, "api_requests", "ml_service"),
            (change, "llm_tokens", "ai_service")} <= overage
    storage = [u for u in whole.usage if u.metric == "storage_gb"]
    assert [(u.segment_start, u.used) for u in storage] == [(period.start, 120),
                                                            (change, 81)]
    # The first of the two 120 GB days (alice 70, bob 50) shares the 20 GB over.
    first_storage = next(ln for ln in whole.lines if ln.metric == "storage_gb")
    assert first_storage.amount_minor == 400
    assert first_storage.by_user == {"alice": 233, "bob": 167}
    assert len(set(whole.by_user())) == 3


def test_the_databases_sums_per_metric_equal_the_rollups_summed_one_by_one(app, world, ctx,
                                                                          alpha_busy):
    """What the database sums per metric (``rollup_rows``, ``read_rollups``, the usage
    a segment is rated on) equals the tenant's rollup rows added up here, one by one:
    per day, service and user; per day and service; per service and user over the
    days; and for storage, the values of its peak day, the first of two equal ones."""
    tenant, period = _tenant(world), alpha_busy
    start, end = period.start, period.start + dt.timedelta(days=10)
    with tenant_scope(tenant):
        raw = db.session.execute(
            select(UsageRollup.day, UsageRollup.metric, UsageRollup.service,
                   UsageRollup.user_ref, UsageRollup.quantity_micro, UsageRollup.event_count)
            .where(UsageRollup.day >= start, UsageRollup.day < end)).all()
    by_user: dict[tuple, int] = defaultdict(int)
    by_service: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    sums: dict[str, dict[tuple, int]] = defaultdict(lambda: defaultdict(int))
    storage: dict[dt.date, dict[tuple, int]] = defaultdict(dict)
    for day, metric, service, user, micro, count in raw:
        by_user[(day, metric, service, user)] += micro
        by_service[(day, metric, service)][0] += micro
        by_service[(day, metric, service)][1] += count
        if metric == "storage_gb":
            storage[day][(service, user)] = micro
        else:
            sums[metric][(service, user)] += micro
    assert len({m for _, m, *_ in raw}) == 5 and len({u for *_, u, _, _ in raw}) == 3

    assert sorted(rollup_rows(tenant, start, end)) == sorted(
        (day, metric, service, user, micro)
        for (day, metric, service, user), micro in by_user.items())
    assert sorted(rollup_rows(tenant, start, end, users=False)) == sorted(
        (day, metric, service, "", micro)
        for (day, metric, service), (micro, _) in by_service.items())
    read = analytics.read_rollups(tenant, start, end)
    assert sorted(read.rows) == sorted(
        (day, metric, service, "", micro)
        for (day, metric, service), (micro, _) in by_service.items())
    assert read.calls == {key: count for key, (_, count) in by_service.items()}

    usage = _Usage.read(tenant, start, end)
    assert usage.seen == {m for _, m, *_ in raw}
    assert usage.sums == sums
    peak = max(sum(cells.values()) for cells in storage.values())
    first = min(day for day, cells in storage.items() if sum(cells.values()) == peak)
    assert [day for day, cells in storage.items() if sum(cells.values()) == peak] \
        == [period.start + dt.timedelta(days=1), period.start + dt.timedelta(days=4)]
    assert usage.peaks == {"storage_gb": (peak, storage[first])}


def test_analytics_reads_the_rollups_once_and_equals_separate_reads(app, world, ctx,
                                                                      alpha_busy):
    """The page's series, totals of both ranges and per-day table come from one read of
    the rollups and equal what each function gives reading on its own."""
    tenant, period = _tenant(world), alpha_busy
    rng = analytics.date_range("custom", period.start + dt.timedelta(days=5),
                               period.last_day + dt.timedelta(days=3), today_in("UTC"))
    statements: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        result = analytics.analytics(tenant, rng)
        table, daily = analytics.daily_of(tenant, result)
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    assert sum("usage_rollup" in s for s in statements) == 1
    assert result.usage == usage_buckets(tenant, rng.start, rng.end, "day", "metric")
    assert result.previous_totals == analytics.totals(tenant, rng.previous())
    assert result.totals.usage == analytics.totals(tenant, rng).usage > 0
    assert result.totals.calls == analytics.totals(tenant, rng).calls > 0
    assert daily == analytics.daily_usage(tenant, table.start, table.end)
    for group_by in ("metric", "service", "user"):
        rows = rollup_rows(tenant, period.start - dt.timedelta(days=40), rng.end,
                           users=group_by == "user")
        assert usage_buckets(tenant, rng.start, rng.end, "week", group_by, rows=rows) \
            == usage_buckets(tenant, rng.start, rng.end, "week", group_by)


# -- cost breakdown ------------------------------------------------------------------------

def test_breakdown_of_a_closed_period_reconciles_with_the_invoice(alpha_closed, login):
    period, number = alpha_closed["period"], alpha_closed["number"]
    assert alpha_closed["subtotal"] == 50_200
    billing = login("alpha-billing")
    page = billing.get(f"/billing/costs/?period={period.label}")
    assert page.status_code == 200
    text = page_text(page)
    assert f"Equals invoice {number} subtotal ($502.00 before tax)" in text
    assert "each add up to the total" in text

    _, services = _csv(billing.get(f"/billing/costs/services.csv?period={period.label}"))
    assert services[0] == ["period", "service", "component", "cost", "currency"]
    costs = {(r[1], r[2]): Decimal(r[3]) for r in services[1:]}
    assert costs[("ai_service", "llm_cost")] == Decimal("3.00")
    assert costs[("platform", "platform_fee")] == Decimal("499.00")
    assert sum(costs.values()) == Decimal("502.00")

    preamble, users = _csv(billing.get(f"/billing/costs/users.csv?period={period.label}"))
    assert [(r[1], r[3]) for r in users[1:]] == [("alice", "2.00"), ("'=cmd", "1.00")]
    assert sum(Decimal(r[3]) for r in users[1:]) + costs[("platform", "platform_fee")] \
        == Decimal("502.00")
    assert any("Dates are days in UTC; amounts in USD" in line for line in preamble)
    assert any(f"equals the subtotal of invoice {number}" in line for line in preamble)


def test_the_open_period_is_a_month_to_date_estimate(world, login):
    text = page_text(login("alpha-admin").get("/billing/costs/"))
    assert "Month-to-date estimate through" in text and "Equals invoice" not in text


def test_users_sort_on_the_server_and_say_so(alpha_closed, login):
    billing = login("alpha-billing")
    label = alpha_closed["period"].label
    html = billing.get(f"/billing/costs/?period={label}&sort=user_id").get_data(as_text=True)
    assert html.index('data-user="=cmd"') < html.index('data-user="alice"')
    assert 'aria-sort="ascending"' in html
    html = billing.get(f"/billing/costs/?period={label}").get_data(as_text=True)
    assert html.index('data-user="alice"') < html.index('data-user="=cmd"')
    assert 'aria-sort="descending"' in html
    _, rows = _csv(billing.get(f"/billing/costs/users.csv?period={label}&sort=cost"))
    assert [r[1] for r in rows[1:]] == ["'=cmd", "alice"]


def test_a_malformed_period_is_refused(world, login):
    admin = login("alpha-admin")
    assert admin.get("/billing/costs/?period=2026-13").status_code == 400
    assert admin.get("/billing/costs/services.csv?period=last").status_code == 400


def test_another_tenants_breakdown_is_never_shown(alpha_closed, login):
    bravo = login("bravo-admin")
    label, number = alpha_closed["period"].label, alpha_closed["number"]
    for url in (f"/billing/costs/?period={label}&tenant=alpha",
                "/billing/analytics/?tenant=alpha"):
        text = page_text(bravo.get(url))
        assert "Bravo GmbH" in text and "Alpha Ltd" not in text and number not in text
    csv_text = bravo.get(f"/billing/costs/users.csv?period={label}&tenant=alpha").get_data(
        as_text=True)
    assert "alice" not in csv_text and "Bravo GmbH" in csv_text
    body = bravo.get(f"/billing/analytics/data.json?tenant=alpha&view=custom"
                     f"&from={alpha_closed['period'].start}&to={alpha_closed['period'].last_day}"
                     ).get_json()
    assert body["tenant"] == "bravo" and body["currency"] == "EUR"
    assert bravo.get(f"/billing/invoices/{number}").status_code == 404
    platform = login("operator")
    assert platform.get("/billing/costs/?tenant=nobody").status_code == 404
    assert platform.get("/billing/costs/services.csv").status_code == 404
    assert platform.get("/billing/analytics/data.json").status_code == 404
    text = page_text(platform.get(f"/billing/costs/?tenant=alpha&period={label}"))
    assert f"Equals invoice {number}" in text


# -- analytics ----------------------------------------------------------------------------

def test_chart_json_for_seeded_data(app, world, alpha_closed, login):
    period = alpha_closed["period"]
    with app.app_context():
        tenant = _tenant(world)
        before = period.start - dt.timedelta(days=3)
        ledger.post_entry(tenant, ACTOR, "bonus", 1_000, "welcome", at=_at(before))
        ledger.post_entry(tenant, ACTOR, "topup", 10_000, "card", source="stripe_webhook",
                          at=_at(period.start + dt.timedelta(days=2)))
        ledger.post_entry(tenant, ACTOR, "bonus", 500, "promo",
                          at=_at(period.start + dt.timedelta(days=5)))
        ledger.post_entry(tenant, ACTOR, "usage", -300, "usage",
                          at=_at(period.start + dt.timedelta(days=10)))
        db.session.remove()
    billing = login("alpha-billing")
    query = f"view=custom&from={period.start}&to={period.last_day}"
    body = billing.get(f"/billing/analytics/data.json?{query}&granularity=month").get_json()
    assert (body["currency"], body["minor_digits"], body["timezone"]) == ("USD", 2, "UTC")
    assert (body["from"], body["to"]) == (period.start.isoformat(), period.last_day.isoformat())
    assert body["spend"] == [{"start": period.start.isoformat(), "usage": 300,
                              "plan_fee": 49_900, "total": 50_200, "cumulative": 50_200}]
    assert body["credit"] == [{"start": period.start.isoformat(), "purchased": 10_000,
                               "cumulative": 10_000, "balance": 11_200}]
    usage = {b["metric"]: (b["quantity"], b["cost"]) for b in body["usage"]}
    assert usage == {"llm_tokens": (6_000_000, 300), "sql_queries": (10, 0)}
    comparison = {c["key"]: c for c in body["comparison"]}
    assert comparison["llm_tokens"]["current"] == 6_000_000
    assert comparison["llm_tokens"]["previous"] == 0
    assert comparison["llm_tokens"]["change_percent"] is None
    assert comparison["usage"]["current"] == 300 and comparison["calls"]["current"] == 3
    assert comparison["purchased"]["current"] == 10_000

    daily = billing.get(f"/billing/analytics/data.json?{query}").get_json()
    assert daily["granularity"] == "day" and len(daily["spend"]) == period.days
    assert sum(p["plan_fee"] for p in daily["spend"]) == 49_900
    assert daily["spend"][0]["usage"] == 300 and daily["spend"][-1]["cumulative"] == 50_200
    balances = [p["balance"] for p in daily["credit"]]
    assert balances[:3] == [1_000, 1_000, 11_000] and balances[-1] == 11_200

    previous = billing.get(
        f"/billing/analytics/data.json?view=custom&from={daily['previous']['from']}"
        f"&to={daily['previous']['to']}&granularity=month").get_json()
    assert comparison["spend"]["previous"] == sum(p["total"] for p in previous["spend"])


def test_every_chart_has_a_csv_naming_zone_and_currency(alpha_closed, login):
    period = alpha_closed["period"]
    billing = login("alpha-billing")
    query = f"view=custom&from={period.start}&to={period.last_day}&granularity=month"
    page = billing.get(f"/billing/analytics/?{query}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "vendor/chartjs/chart.umd.js" in html and "cdn" not in html.lower()
    for chart in ("spend", "cumulative-spend", "credit-purchases", "balance", "usage",
                  "daily", "comparison"):
        assert f"chart={chart}" in html, chart
        preamble, rows = _csv(billing.get(f"/billing/analytics/data.csv?chart={chart}&{query}"))
        assert any("Dates are days in UTC; amounts in USD" in line for line in preamble), chart
        assert len(rows) > 1, chart
    _, spend = _csv(billing.get(f"/billing/analytics/data.csv?chart=spend&{query}"))
    assert spend == [["period", "usage", "plan_fee", "total", "currency"],
                     [period.label, "3.00", "499.00", "502.00", "USD"]]
    _, daily = _csv(billing.get(f"/billing/analytics/data.csv?chart=daily&{query}"))
    assert daily[1:] == [
        [period.start.isoformat(), "llm_tokens", "ai_service", "2", "6000000", "tokens",
         "3.00", "USD"],
        [(period.start + dt.timedelta(days=1)).isoformat(), "sql_queries", "query_engine",
         "1", "10", "queries", "0.00", "USD"]]
    text = page_text(page)
    assert "6,000,000 tokens" in text and "$502.00" in text
    assert billing.get(f"/billing/analytics/data.csv?chart=pie&{query}").status_code == 400


def test_day_boundaries_follow_the_tenants_time_zone(app, world, login):
    """Bravo is in Europe/Berlin: 23:30 UTC on a period's last day is already the
    first day of the next period there."""
    period = _last_period("Europe/Berlin")
    with app.app_context():
        ingest_events(_tenant(world, "b"), [
            {"id": "late", "metric": "llm_tokens", "quantity": 600_000,
             "timestamp": _at(period.last_day, 23, 30), "user": "=HYPERLINK(1)"}])
        db.session.remove()
    bravo = login("bravo-billing")
    next_day = period.end.isoformat()

    def usage(day):
        body = bravo.get(f"/billing/analytics/data.json?view=custom&from={day}&to={day}")
        return [(b["start"], b["metric"], b["quantity"]) for b in body.get_json()["usage"]]

    assert usage(period.last_day.isoformat()) == []
    assert usage(next_day) == [(next_day, "llm_tokens", 600_000)]
    preamble, rows = _csv(bravo.get(f"/billing/analytics/data.csv?chart=daily&view=custom"
                                    f"&from={period.start}&to={next_day}"))
    assert [r[:4] for r in rows[1:]] == [[next_day, "llm_tokens", "ai_service", "1"]]
    assert any("Dates are days in Europe/Berlin; amounts in EUR" in line for line in preamble)
    body = bravo.get(f"/billing/analytics/data.json?view=custom&from={period.start}"
                     f"&to={period.last_day}&granularity=month").get_json()
    assert body["comparison"][0]["key"] == "spend" and not [
        b for b in body["usage"] if b["quantity"]]
    _, users = _csv(bravo.get(f"/billing/costs/users.csv?period={period.next().label}"))
    assert [r[1] for r in users[1:]] == ["'=HYPERLINK(1)"]


@pytest.mark.parametrize("query", ["view=custom", "view=custom&from=2026-03-10&to=2026-03-01",
                                   "view=decade", "view=month&granularity=hour",
                                   "view=custom&from=2020-01-01&to=2026-01-01",
                                   "view=custom&from=2025-01-01&to=2026-06-01&granularity=day",
                                   "from=yesterday"])
def test_bad_ranges_are_refused(world, login, query):
    admin = login("alpha-admin")
    response = admin.get(f"/billing/analytics/data.json?{query}")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_parameters"
    assert admin.get(f"/billing/analytics/?{query}").status_code == 400


def test_views_of_a_week_a_month_and_a_year(world, login):
    admin = login("alpha-admin")
    today = dt.datetime.now(dt.UTC).date()
    week = admin.get("/billing/analytics/data.json?view=week").get_json()
    assert week["granularity"] == "day" and len(week["spend"]) == 7
    assert week["to"] == today.isoformat()
    month = admin.get("/billing/analytics/data.json?view=month").get_json()
    assert len(month["spend"]) == 30
    year = admin.get("/billing/analytics/data.json?view=year").get_json()
    assert year["granularity"] == "month" and len(year["spend"]) == 12
    assert year["from"].endswith("-01")


def test_chart_js_is_served_by_the_portal(client):
    response = client.get("/static/vendor/chartjs/chart.umd.js")
    assert response.status_code == 200 and b"Chart.js v4" in response.data[:200]
    assert client.get("/static/billfold/charts.js").status_code == 200


# -- platform overview ---------------------------------------------------------------------

@pytest.mark.parametrize("who", ["alpha-admin", "alpha-billing", "bravo-billing"])
def test_platform_overview_is_refused_to_tenant_roles(world, login, who):
    user = login(who)
    for url in ("/platform/overview/", "/platform/overview/revenue.json",
                "/platform/overview/revenue.csv", "/platform/overview/tenants.csv"):
        assert user.get(url).status_code == 403, url


def test_platform_overview_lists_tenants_and_revenue(app, world, alpha_closed, login):
    with app.app_context(), unscoped():
        tenant = _tenant(world)
        for kind, ref, amount, fee in (("purchase", "cs_1", 5_000, 175),
                                       ("refund", "re_1", 1_000, 0)):
            db.session.add(CreditPurchase(tenant_id=tenant.id, kind=kind, status="succeeded",
                                          amount_minor=amount, fee_minor=fee, currency="USD",
                                          stripe_ref=ref))
        db.session.commit()
        invoicing.mark_overdue(now=dt.datetime.now(dt.UTC) + dt.timedelta(days=90))
        db.session.remove()
    platform = login("operator")
    page = platform.get("/platform/overview/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    row = page_text(html[html.index('data-tenant="alpha"'):html.index("</tr>",
                                                                       html.index('data-tenant="alpha"'))])
    assert "Professional" in row and "$502.00" in row
    assert 'data-tenant="bravo"' in html and "Starter" in html
    today = dt.datetime.now(dt.UTC).date().isoformat()
    body = platform.get(f"/platform/overview/revenue.json?granularity=day&from={today}"
                        f"&to={today}&currency=USD").get_json()
    assert body["data"] == [{"start": today, "gross": 5_000, "refunds": 1_000, "fees": 175,
                             "net": 3_825}]
    preamble, rows = _csv(platform.get(f"/platform/overview/revenue.csv?granularity=day"
                                       f"&from={today}&to={today}"))
    assert rows == [["period", "gross", "refunds", "fees", "net", "currency"],
                    [today, "50.00", "10.00", "1.75", "38.25", "USD"]]
    assert any("Dates are days in UTC; amounts in USD" in line for line in preamble)
    _, tenants = _csv(platform.get("/platform/overview/tenants.csv"))
    alpha = next(r for r in tenants if r[0] == "alpha")
    assert alpha[3] == "Professional" and alpha[6] == "502.00" and alpha[7] == "USD"
    assert platform.get("/platform/overview/revenue.json?granularity=hour").status_code == 400
