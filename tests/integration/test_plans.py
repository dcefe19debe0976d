"""Plans, subscriptions, plan-change requests, the usage page and the ingest command."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from plans import services
from plans.metering import ingest_events
from plans.models import PlanChangeRequest, Subscription, UsageEvent
from plans.periods import Period, today_in
from portal.audit import Actor
from portal.errors import ValidationFailed
from portal.extensions import db
from portal.money import Money
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped
from tests.conftest import page_text
from tests.factories import TenantFactory

ACTOR = Actor.system("tests")


def _plans():
    return {p.code: p for p in services.list_plans()}


@pytest.fixture
def fresh(app):
    """A tenant without a plan, and the default catalog."""
    with app.app_context(), unscoped():
        services.ensure_default_catalog()
        yield TenantFactory(slug="fresh", timezone="Europe/Berlin")


def test_base_fee_is_prorated_by_day_across_a_change(app, fresh):
    with app.app_context(), unscoped():
        plans = _plans()
        services.subscribe(ACTOR, fresh, plans["starter"], starts_on=dt.date(2026, 9, 1))
        services.change_plan(ACTOR, fresh, plans["professional"], "immediately",
                             today=dt.date(2026, 9, 11))
        segments = services.base_fee_segments(fresh, Period(dt.date(2026, 9, 1),
                                                            dt.date(2026, 10, 1)))
    assert [(s.starts_on.day, s.days) for s in segments] == [(1, 10), (11, 20)]
    total = sum((s.amount for s in segments), Money.zero("USD"))
    # 99 x 10/30 + 499 x 20/30 = 33.00 + 332.666...
    assert total.amount == Decimal(99) * 10 / 30 + Decimal(499) * 20 / 30
    assert total.to_minor() == 36567


def test_change_at_period_end_is_scheduled_and_history_kept(app, fresh):
    with app.app_context(), unscoped():
        plans = _plans()
        services.subscribe(ACTOR, fresh, plans["professional"], starts_on=dt.date(2026, 9, 1))
        services.change_plan(ACTOR, fresh, plans["starter"], "period_end",
                             today=dt.date(2026, 9, 18))
        assert services.current_subscription(fresh, dt.date(2026, 9, 30)).plan_version.plan \
            .code == "professional"
        assert services.current_subscription(fresh, dt.date(2026, 10, 1)).plan_version.plan \
            .code == "starter"
        history = services.subscription_history(fresh)
        assert [(s.starts_on, s.ends_on) for s in history] == [
            (dt.date(2026, 10, 1), None), (dt.date(2026, 9, 1), dt.date(2026, 10, 1))]


def test_enterprise_needs_a_negotiated_price(app, fresh):
    with app.app_context(), unscoped():
        with pytest.raises(ValidationFailed) as info:
            services.subscribe(ACTOR, fresh, _plans()["enterprise"])
        assert "custom_price" in info.value.errors
        sub = services.subscribe(ACTOR, fresh, _plans()["enterprise"],
                                 custom_base_price_minor=250_000)
        assert sub.base_price_minor == 250_000


def test_editing_a_locked_plan_version_makes_a_new_one(app, fresh):
    with app.app_context(), unscoped():
        plan = _plans()["starter"]
        terms = {k: ("" if v is None else str(v))
                 for k, v in services.version_terms(plan.current_version).items()}
        edited = services.update_plan_terms(ACTOR, plan, {**terms, "base_price": "109.00"})
        assert edited.version == 1  # never invoiced: edited in place
        sub = services.subscribe(ACTOR, fresh, plan)
        services.lock_plan_version(edited)
        db.session.commit()
        newer = services.update_plan_terms(ACTOR, plan, {**terms, "base_price": "119.00"})
        assert newer.version == 2 and newer.base_price_minor == 11900
        old = db.session.get(type(newer), edited.id)
        assert old.base_price_minor == 10900  # kept as it was
        assert db.session.get(Subscription, sub.id).plan_version_id == old.id


def test_bad_plan_terms_name_each_field(app, fresh):
    with app.app_context(), unscoped():
        with pytest.raises(ValidationFailed) as info:
            services.update_plan_terms(ACTOR, _plans()["starter"], {
                "base_price": "ninety", "user_limit": "2.5", "llm_tokens_included": "-1",
                "sql_queries_unit_price": "x"})
    assert set(info.value.errors) == {"base_price", "user_limit", "llm_tokens_included",
                                      "sql_queries_unit_price"}


def test_platform_admin_edits_the_catalog_in_the_portal(app, world, login):
    admin = login("operator")
    plan_id = world_plan_id(app, "starter")
    page = admin.get(f"/platform/plans/{plan_id}/edit")
    assert page.status_code == 200 and 'value="99.00"' in page.get_data(as_text=True)
    bad = admin.post(f"/platform/plans/{plan_id}/edit", data={"base_price": "abc"})
    assert bad.status_code == 400 and "must be a number" in page_text(bad)
    data = {"base_price": "129.00", "user_limit": "6", "llm_tokens_included": "600000",
            "llm_tokens_unit_price": "0.000004"}
    assert admin.post(f"/platform/plans/{plan_id}/edit", data=data).status_code == 302
    assert "$129.00" in page_text(admin.get("/platform/plans/"))


def world_plan_id(app, code):
    with app.app_context(), unscoped():
        return _plans()[code].id


def test_request_approve_flow_through_the_portal(app, world, login):
    tenant_admin = login("alpha-admin")
    # The world already has a pending request for Alpha; one at a time.
    again = tenant_admin.post("/plan/request", data={
        "plan": str(world_plan_id(app, "starter")), "timing": "immediately",
        "reason": "cheaper please"})
    assert again.status_code == 400 and "already pending" in page_text(again)
    tenant_admin.post(f"/plan/request/{world.ids['a_request']}/cancel")
    sent = tenant_admin.post("/plan/request", data={
        "plan": str(world_plan_id(app, "starter")), "timing": "immediately",
        "reason": "We are scaling down for winter."})
    assert sent.status_code == 302
    page = page_text(tenant_admin.get("/plan/"))
    assert "We are scaling down for winter." in page and "pending" in page
    with app.app_context(), tenant_scope(world.ids["a"]):
        req = db.session.scalar(select(PlanChangeRequest)
                                .where(PlanChangeRequest.status == "pending"))
    operator = login("operator")
    queue = page_text(operator.get("/platform/plan-requests/"))
    assert "Alpha Ltd" in queue and "Bravo GmbH" in queue
    assert operator.post(f"/platform/plan-requests/{req.id}/approve",
                         data={"note": "ok"}).status_code == 302
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, world.ids["a"])
        assert services.current_subscription(tenant).plan_version.plan.code == "starter"
    assert "approved" in page_text(tenant_admin.get("/plan/"))


def test_decline_needs_a_note_and_the_tenant_sees_it(app, world, login):
    operator = login("operator")
    refused = operator.post(f"/platform/plan-requests/{world.ids['b_request']}/decline",
                            data={"note": ""}, follow_redirects=True)
    assert "tell the tenant why" in page_text(refused)
    operator.post(f"/platform/plan-requests/{world.ids['b_request']}/decline",
                  data={"note": "Talk to sales first"})
    page = page_text(login("bravo-admin").get("/plan/"))
    assert "declined" in page and "Talk to sales first" in page


def test_who_may_change_or_request_a_plan(app, world, login):
    professional = str(world_plan_id(app, "professional"))
    billing = login("alpha-billing")
    assert billing.get("/plan/").status_code == 403
    assert billing.post("/plan/request", data={"plan": professional, "timing": "period_end",
                                               "reason": "please please"}).status_code == 403
    tenant_admin = login("alpha-admin")
    assert tenant_admin.post("/plan/change", data={"plan": professional,
                                                    "timing": "immediately"}).status_code == 403
    assert tenant_admin.post(f"/platform/plan-requests/{world.ids['a_request']}/approve"
                             ).status_code == 403
    operator = login("operator")
    assert operator.post("/plan/request?tenant=alpha", data={
        "plan": professional, "timing": "period_end", "reason": "x" * 10}).status_code == 403
    starter = str(world_plan_id(app, "starter"))
    changed = operator.post("/plan/change?tenant=bravo", data={"plan": starter,
                                                              "timing": "immediately"})
    assert changed.status_code == 400 and "already on Starter" in page_text(changed)
    changed = operator.post("/plan/change?tenant=bravo", data={
        "plan": str(world_plan_id(app, "enterprise")), "timing": "immediately",
        "custom_price": "3000"})
    assert changed.status_code == 302
    with app.app_context(), unscoped():
        sub = services.current_subscription(db.session.get(Tenant, world.ids["b"]))
        assert (sub.plan_version.plan.code, sub.custom_base_price_minor) == ("enterprise",
                                                                             300_000)


def test_plan_user_limit_is_enforced_on_invite(app, world, login):
    admin = login("bravo-admin")  # Starter: 5 users, 2 taken
    for n in range(3):
        ok = admin.post("/team/add", data={"email": f"p{n}@bravo.example", "first_name": "P",
                                           "last_name": str(n), "role": "Billing Contact"})
        assert ok.status_code == 302
    full = admin.post("/team/add", data={"email": "p9@bravo.example", "first_name": "P",
                                         "last_name": "9", "role": "Billing Contact"})
    assert full.status_code == 200
    assert "includes 5 users" in page_text(full)


def test_usage_page_shows_meters_cards_and_projection(app, world, login):
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, world.ids["a"])  # Professional: 5M tokens
        today = today_in(tenant.timezone)
        moment = dt.datetime.combine(today, dt.time(0, 30), dt.UTC)
        ingest_events(tenant, [
            {"id": "t", "metric": "llm_tokens", "quantity": 4_100_000, "timestamp": moment},
            {"id": "q", "metric": "sql_queries", "quantity": 96_000, "timestamp": moment},
            {"id": "r", "metric": "api_requests", "quantity": 12_345, "timestamp": moment},
            {"id": "s", "metric": "storage_gb", "quantity": "130.5", "timestamp": moment},
        ], now=moment + dt.timedelta(hours=1))
    html = login("alpha-billing").get("/usage/").get_data(as_text=True)
    text = page_text(html)
    assert "Professional" in text
    assert "4,100,000" in text and "82.0%" in text
    assert re.search(r'meter-warning" data-metric="llm_tokens"', html)
    assert re.search(r'meter-critical" data-metric="sql_queries"', html)
    assert re.search(r'meter-over" data-metric="storage_gb"', html)
    assert "12,345" in text  # API calls card
    assert "days left" in text and "Projected" in text
    # 30.5 GB over 100 GB at $0.20 + the month's base fee
    assert "overage $6.10" in text


def test_platform_admin_picks_any_tenant_usage(world, login):
    operator = login("operator")
    assert "choose a tenant" in page_text(operator.get("/usage/"))
    assert "Bravo GmbH" in page_text(operator.get("/usage/?tenant=bravo"))
    assert operator.get("/usage/?tenant=nope").status_code == 404


def test_tenant_users_cannot_pick_another_tenant(world, login):
    text = page_text(login("alpha-billing").get("/usage/?tenant=bravo"))
    assert "Alpha Ltd" in text and "Bravo GmbH" not in text


def test_ingest_command_reads_jsonl_and_csv_and_reports(app, world, tmp_path):
    good = tmp_path / "events.jsonl"
    good.write_text("\n".join(json.dumps({
        "id": f"e{i}", "metric": "sql_queries", "quantity": 2,
        "timestamp": "2026-11-03T15:00:00Z", "user": "u1"}) for i in range(25)) + "\n")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["billfold", "ingest", str(good), "--tenant", "alpha",
                                 "--batch-size", "10"])
    assert result.exit_code == 0, result.output
    assert "accepted 25, duplicates 0, rejected 0" in result.output
    again = runner.invoke(args=["billfold", "ingest", str(good), "--tenant", "alpha"])
    assert "accepted 0, duplicates 25, rejected 0" in again.output

    csv_file = tmp_path / "events.csv"
    csv_file.write_text("id,metric,quantity,timestamp,user\n"
                        "c1,llm_tokens,100,2026-11-03T15:00:00Z,u1\n"
                        "c2,llm_tokens,abc,2026-11-03T15:00:00Z,u1\n"
                        "c3,llm_tokens,5,2026-11-03T15:00:00Z,u2\n")
    bad = runner.invoke(args=["billfold", "ingest", str(csv_file), "--tenant", "alpha"])
    assert bad.exit_code == 1
    assert "line 3: quantity: must be a number" in bad.output
    assert "accepted 0, duplicates 0, rejected 3" in bad.output
    with app.app_context(), unscoped():
        assert db.session.scalar(select(func.count(UsageEvent.id))
                                 .where(UsageEvent.event_id.like("c%"))) == 0
    unknown = runner.invoke(args=["billfold", "ingest", str(good), "--tenant", "nope"])
    assert unknown.exit_code == 1 and "no tenant" in unknown.output
