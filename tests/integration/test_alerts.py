"""Budget alerts against a real SMTP server (aiosmtpd) and a local HTTP server standing
in for the SMS gateway: firing order, once per period, re-arming, retries, who may
edit rules, and isolation."""

from __future__ import annotations

import datetime as dt
import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select, update

from plans import alerts
from plans import services as plan_services
from plans.metering import ingest_events
from plans.models import Alert, AlertRule
from portal import jobs
from portal.audit import AuditEvent
from portal.extensions import db
from portal.notifications import Delivery, Notification, retry_due
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped
from tests.conftest import page_text
from tests.factories import ACTOR
from tests.smtp_server import SmtpServer, free_port


class SmsGateway:
    """An HTTP server on 127.0.0.1 that records each POST and answers with
    ``status`` (200 with an id, or an error)."""

    def __init__(self):
        self.received: list[dict] = []
        self.status = 200
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                gateway.received.append({"body": body, "headers": dict(self.headers)})
                status = gateway.status
                payload = (json.dumps({"id": f"sms_{len(gateway.received)}"})
                           if status == 200 else "gateway unavailable").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/messages"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def channels(app):
    """A real SMTP server and an SMS gateway, configured on the app."""
    keys = ("MAIL_SERVER", "MAIL_PORT", "SMS_GATEWAY_URL", "SMS_GATEWAY_TOKEN")
    saved = {k: app.config.get(k) for k in keys}
    with SmtpServer() as smtp, SmsGateway() as sms:
        app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=smtp.port,
                          SMS_GATEWAY_URL=sms.url, SMS_GATEWAY_TOKEN="sms-token")
        yield smtp, sms
    app.config.update(saved)


def _tenant(app, world, key="b") -> Tenant:
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, world.ids[key])
        db.session.expunge(tenant)
        return tenant


def _stamp(day: dt.date | None = None) -> str:
    if day is None:
        return (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()
    return dt.datetime.combine(day, dt.time(12), dt.UTC).isoformat()


def _ingest(app, tenant, quantity, *, prefix="e", metric="llm_tokens", day=None, n=1):
    """One batch of ``n`` events of ``quantity`` each; runs the jobs it deferred."""
    with app.app_context():
        result = ingest_events(tenant, [
            {"id": f"{prefix}-{i}", "metric": metric, "quantity": str(quantity),
             "timestamp": _stamp(day)} for i in range(n)])
        jobs.drain()
    return result


def _alerts(app, tenant) -> list[Alert]:
    with app.app_context(), tenant_scope(tenant.id):
        rows = list(db.session.scalars(select(Alert).order_by(Alert.id)))
        for row in rows:
            db.session.expunge(row)
        return rows


def _deliveries(app, tenant, channel=None) -> list[Delivery]:
    with app.app_context(), tenant_scope(tenant.id):
        query = select(Delivery).order_by(Delivery.id)
        if channel:
            query = query.where(Delivery.channel == channel)
        rows = list(db.session.scalars(query))
        for row in rows:
            db.session.expunge(row)
        return rows


def _rule(app, tenant, key) -> AlertRule:
    with app.app_context(), tenant_scope(tenant.id):
        return db.session.scalar(select(AlertRule).where(AlertRule.system_key == key))


def _set_phone(app, tenant, key, phone="+14155550123"):
    rule = _rule(app, tenant, key)
    with app.app_context():
        alerts.update_rule(ACTOR, tenant, rule.id, {
            "name": rule.name, "threshold": rule.threshold, "channels": rule.channel_list,
            "email_to": "", "sms_to": phone, "enabled": True})
        jobs.drain()


def _evaluate(app, tenant, **kw):
    with app.app_context():
        fired = alerts.evaluate(tenant, **kw)
        jobs.drain()
        return len(fired)


# Bravo is on Starter: 500,000 LLM tokens a month.

def test_one_big_batch_fires_each_level_once_in_order(app, world, channels):
    smtp, sms = channels
    bravo = _tenant(app, world)
    for key in ("critical", "overage"):
        _set_phone(app, bravo, key)
    result = _ingest(app, bravo, 600_000)
    assert result.accepted == 1

    fired = _alerts(app, bravo)
    assert [(a.rule_name, a.level, a.subject) for a in fired] == [
        ("Usage warning", "warning", "llm_tokens"),
        ("Usage critical", "critical", "llm_tokens"),
        ("Overage", "critical", "llm_tokens"),
    ]
    assert fired[0].value_text == "120.0%" and fired[0].threshold_text == "80.0%"
    assert "over the plan limit by 100,000 tokens" in fired[2].title
    # Email: the billing address, one message per level, in order; HTML and text.
    assert [m["To"] for m in smtp.messages] == ["billing@bravo.example"] * 3
    subjects = [m["Subject"] for m in smtp.messages]
    assert [s.split("] ")[1].split(":")[0] for s in subjects] == [
        "Usage warning", "Usage critical", "Overage"]
    body = smtp.messages[0].get_body(("plain",)).get_content()
    assert "600,000 of 500,000 tokens" in body and "/billing/alerts/history" in body
    assert smtp.messages[0].get_body(("html",)) is not None
    # SMS for the two levels that have it, in order, with the gateway's ids kept.
    assert [r["body"]["to"] for r in sms.received] == ["+14155550123"] * 2
    assert "Usage critical" in sms.received[0]["body"]["message"]
    assert "Overage" in sms.received[1]["body"]["message"]
    assert sms.received[0]["headers"]["Authorization"] == "Bearer sms-token"
    texts = [d for d in _deliveries(app, bravo, "sms")]
    assert [d.provider_ref for d in texts] == ["sms_1", "sms_2"]
    assert sms.received[0]["headers"]["Idempotency-Key"] == texts[0].reference
    # In-app: each of Bravo's two users has three unread notices.
    with app.app_context(), tenant_scope(bravo.id):
        counts = dict(db.session.execute(select(Notification.user_id, func.count())
                                         .group_by(Notification.user_id)).all())
    assert counts == {world.ids["b_admin"]: 3, world.ids["b_billing"]: 3}
    assert {d.status for d in _deliveries(app, bravo)} == {"sent"}
    # Alpha (Professional, 5M tokens) saw nothing.
    assert _alerts(app, _tenant(app, world, "a")) == []


def test_re_evaluation_and_more_usage_fire_nothing_again(app, world, channels):
    smtp, _ = channels
    bravo = _tenant(app, world)
    _ingest(app, bravo, 450_000)  # 90 %: the warning only
    assert [a.rule_name for a in _alerts(app, bravo)] == ["Usage warning"]
    assert _evaluate(app, bravo) == 0
    _ingest(app, bravo, 1_000, prefix="more")  # 90.2 %: still only the warning
    assert [a.rule_name for a in _alerts(app, bravo)] == ["Usage warning"]
    assert len(smtp.messages) == 1
    _ingest(app, bravo, 30_000, prefix="crit")  # 96.2 %: critical, once
    assert [a.rule_name for a in _alerts(app, bravo)] == ["Usage warning", "Usage critical"]
    assert len(smtp.messages) == 2


def test_a_new_period_re_arms_every_rule(app, world, channels):
    smtp, _ = channels
    bravo = _tenant(app, world)
    with app.app_context():
        current = plan_services.current_period(bravo)
    previous = current.previous()
    _ingest(app, bravo, 420_000, prefix="old", day=previous.start + dt.timedelta(days=2))
    assert _evaluate(app, bravo, today=previous.start + dt.timedelta(days=3)) == 1
    _ingest(app, bravo, 420_000, prefix="new", day=current.start)
    fired = _alerts(app, bravo)
    assert [(a.rule_name, a.period_start) for a in fired] == [
        ("Usage warning", previous.start), ("Usage warning", current.start)]
    assert len(smtp.messages) == 2


def test_a_raised_limit_re_arms_and_the_rule_fires_again_past_the_new_limit(app, world,
                                                                            channels):
    bravo = _tenant(app, world)
    _ingest(app, bravo, 420_000)  # 84 % of Starter's 500,000
    with app.app_context(), unscoped():
        plans = {p.code: p for p in plan_services.list_plans()}
        plan_services.change_plan(ACTOR, db.session.get(Tenant, bravo.id),
                                  plans["professional"], "immediately")
    assert _evaluate(app, bravo) == 0  # 8.4 % of 5,000,000: the warning is cleared
    (first,) = _alerts(app, bravo)
    assert first.cleared_at is not None
    _ingest(app, bravo, 3_700_000, prefix="big")  # 82.4 % of 5,000,000
    fired = _alerts(app, bravo)
    assert [a.rule_name for a in fired] == ["Usage warning", "Usage warning"]
    assert fired[1].cleared_at is None and fired[1].period_start == first.period_start


def test_a_down_smtp_server_is_retried_recorded_and_ingestion_goes_on(app, world, client):
    from api import keys

    bravo = _tenant(app, world)
    port = free_port()  # nothing listens here yet
    saved = app.config.get("MAIL_SERVER"), app.config.get("MAIL_PORT")
    app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=port)
    try:
        with app.app_context():
            _, secret = keys.create_key(ACTOR, bravo, "ingest", "usage:write,usage:read")
        headers = {"Authorization": f"Bearer {secret}"}
        answer = client.post("/api/v1/usage/events", headers=headers, json={"events": [
            {"id": "big", "metric": "llm_tokens", "quantity": "450000",
             "timestamp": _stamp()}]})
        assert answer.status_code == 200 and answer.get_json()["accepted"] == 1
        used = client.get("/api/v1/usage/summary", headers=headers).get_json()
        assert used["metrics"]["llm_tokens"]["used"] == 450_000
        (email,) = _deliveries(app, bravo, "email")
        assert email.status == "retrying" and email.attempts == 1
        assert "refused" in email.last_error.lower() or "errno" in email.last_error.lower()
        assert email.next_attempt_at is not None
        # Not due yet: the sweep leaves it alone.
        with app.app_context():
            assert retry_due() == {}
        with SmtpServer() as smtp:
            app.config.update(MAIL_PORT=smtp.port)
            with app.app_context():
                later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
                assert retry_due(now=later) == {"sent": 1}
                assert retry_due(now=later + dt.timedelta(hours=1)) == {}
            assert len(smtp.messages) == 1
        (email,) = _deliveries(app, bravo, "email")
        assert email.status == "sent" and email.attempts == 2 and email.last_error is None
    finally:
        app.config.update(MAIL_SERVER=saved[0], MAIL_PORT=saved[1])


def test_a_failing_sms_gateway_is_retried_with_backoff_then_marked_failed(app, world,
                                                                         channels, login):
    _, sms = channels
    bravo = _tenant(app, world)
    _set_phone(app, bravo, "critical")
    sms.status = 503
    app.config.update(NOTIFY_MAX_ATTEMPTS=3)
    try:
        _ingest(app, bravo, 480_000)  # 96 %: warning and critical
        (text,) = _deliveries(app, bravo, "sms")
        assert text.status == "retrying" and "503" in text.last_error
        first_wait = text.next_attempt_at
        with app.app_context():
            assert retry_due(now=first_wait + dt.timedelta(seconds=1)) == {"retrying": 1}
        (text,) = _deliveries(app, bravo, "sms")
        assert text.attempts == 2
        # The wait doubles: 60 s after the first failure, 120 s after the second.
        assert text.next_attempt_at - first_wait >= dt.timedelta(seconds=120)
        with app.app_context():
            assert retry_due(now=text.next_attempt_at + dt.timedelta(seconds=1)) == {"failed": 1}
        assert len(sms.received) == 3
        assert len({r["headers"]["Idempotency-Key"] for r in sms.received}) == 1
        # The email and in-app notices were not held up by the SMS failure.
        assert {d.channel: d.status for d in _deliveries(app, bravo)
                if d.channel != "sms"} == {"email": "sent", "in_app": "sent"}
        # A person retries it from the history once the gateway is back.
        sms.status = 200
        user = login("bravo-billing")
        page = page_text(user.get("/billing/alerts/history"))
        assert "failed" in page and "503" in page
        answer = user.post(f"/billing/alerts/deliveries/{text.id}/retry")
        assert answer.status_code == 302
        (text,) = _deliveries(app, bravo, "sms")
        assert text.status == "sent" and text.attempts == 4
    finally:
        app.config.update(NOTIFY_MAX_ATTEMPTS=8)


def test_forecast_fires_once_when_the_projection_first_crosses(app, world, channels):
    bravo = _tenant(app, world)
    with app.app_context():
        period = plan_services.current_period(bravo).previous()
        alerts.create_rule(ACTOR, bravo, {
            "name": "Forecast 95", "kind": "forecast", "metric": "llm_tokens",
            "threshold": "95", "channels": ["email", "in_app"]})
        jobs.drain()
    # 20,000 tokens a day for the first ten days: 200,000 (40 %) by day ten, so the
    # burn rate reaches 475,000 (95 %) on day 24 of the period.
    for i in range(10):
        _ingest(app, bravo, 20_000, prefix=f"d{i}", day=period.start + dt.timedelta(days=i))
    day_ten = period.start + dt.timedelta(days=9)
    assert _evaluate(app, bravo, today=day_ten) == 1
    (forecast,) = _alerts(app, bravo)
    assert forecast.kind == "forecast"
    assert forecast.forecast_on == day_ten + dt.timedelta(days=14)
    assert f"on {forecast.forecast_on.isoformat()}" in forecast.title
    assert _evaluate(app, bravo, today=day_ten) == 0
    assert _evaluate(app, bravo, today=day_ten + dt.timedelta(days=1)) == 0


def test_spend_metric_and_low_balance_rules(app, world, channels):
    from invoices import ledger

    smtp, _ = channels
    bravo = _tenant(app, world)  # EUR; Starter's base fee is 99.00
    with app.app_context():
        alerts.create_rule(ACTOR, bravo, {"name": "Budget 50", "kind": "spend",
                                          "amount": "50.00", "channels": ["email"],
                                          "email_to": "cfo@bravo.example"})
        alerts.create_rule(ACTOR, bravo, {"name": "Queries 1k", "kind": "metric",
                                          "metric": "sql_queries", "threshold": "1000",
                                          "channels": ["in_app"]})
        alerts.create_rule(ACTOR, bravo, {"name": "Low credit", "kind": "credit",
                                          "amount": "10", "channels": ["in_app"]})
        jobs.drain()  # creating a rule evaluates at once
    fired = {a.rule_name: a for a in _alerts(app, bravo)}
    assert set(fired) == {"Budget 50", "Low credit"}
    assert fired["Budget 50"].value_text == "€99.00"
    assert [m["To"] for m in smtp.messages] == ["cfo@bravo.example"]
    _ingest(app, bravo, 1_000, metric="sql_queries")
    assert "Queries 1k" in {a.rule_name for a in _alerts(app, bravo)}
    # A top-up clears the balance alert, and a new dip fires it again.
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, bravo.id)
        ledger.grant_credit(ACTOR, tenant, "bonus", 2_000, "welcome credit")
    assert _evaluate(app, bravo) == 0
    with app.app_context(), unscoped():
        ledger.correct_balance(ACTOR, db.session.get(Tenant, bravo.id), -1_500, "correction")
    assert _evaluate(app, bravo) == 1
    low = [a for a in _alerts(app, bravo) if a.rule_name == "Low credit"]
    assert len(low) == 2 and low[0].cleared_at is not None and low[1].value_text == "€5.00"


def test_balance_rules_alone_are_checked_and_the_rules_page_shows_each_last_alert(
        app, world, login, channels):
    """With only a balance rule on, evaluation reads the balance and the period's dates,
    and the rules page says when each rule last fired and what it said."""
    from invoices import ledger

    bravo = _tenant(app, world)
    with app.app_context(), unscoped():
        db.session.execute(update(AlertRule).where(AlertRule.tenant_id == bravo.id)
                           .values(enabled=False))
        db.session.commit()
    _ingest(app, bravo, 600_000)  # over the limit, but the usage rules are off
    assert _alerts(app, bravo) == []
    with app.app_context():
        alerts.create_rule(ACTOR, bravo, {"name": "Low credit", "kind": "credit",
                                          "amount": "10", "channels": ["in_app"]})
        jobs.drain()
        period = plan_services.current_period(bravo)
    (low,) = _alerts(app, bravo)
    assert (low.rule_name, low.period_start, low.value_text) == (
        "Low credit", period.start, "€0.00")
    with app.app_context(), unscoped():
        ledger.grant_credit(ACTOR, db.session.get(Tenant, bravo.id), "bonus", 2_000, "credit")
    assert _evaluate(app, bravo) == 0 and _alerts(app, bravo)[0].cleared_at is not None
    with app.app_context(), unscoped():
        ledger.correct_balance(ACTOR, db.session.get(Tenant, bravo.id), -1_500, "correction")
    assert _evaluate(app, bravo) == 1
    latest = _alerts(app, bravo)[-1]

    html = login("bravo-admin").get("/billing/alerts/").get_data(as_text=True)
    last_fired = {}  # rule name: the "Last fired" cell
    for row in html.split("<tr")[2:]:
        cells = [page_text("<td" + c).strip() for c in row.split("<td")[1:]]
        last_fired[cells[0].removesuffix(" default")] = cells[4]
    assert "Low credit: prepaid balance under €10.00" in last_fired["Low credit"]
    assert latest.fired_at.strftime("%Y") in last_fired["Low credit"]
    assert last_fired["Usage warning"] == "never"


def test_concurrent_evaluations_fire_each_alert_once(app, world):
    bravo = _tenant(app, world)
    _ingest(app, bravo, 600_000)
    with app.app_context(), tenant_scope(bravo.id):
        for row in db.session.scalars(select(Alert)):
            row.cleared_at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        db.session.commit()
    barrier = threading.Barrier(6, timeout=60)
    counts, errors = [], []

    def run():
        try:
            with app.app_context():
                db.session.close()
                barrier.wait()
                counts.append(len(alerts.evaluate(bravo)))
                db.session.remove()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sum(counts) == 3
    armed = [a for a in _alerts(app, bravo) if a.cleared_at is None]
    assert sorted(a.rule_name for a in armed) == ["Overage", "Usage critical", "Usage warning"]


# --- the pages ---------------------------------------------------------------------

@pytest.mark.parametrize("who", ["bravo-admin", "bravo-billing"])
def test_tenant_roles_add_edit_toggle_and_delete_rules(app, world, login, who):
    user = login(who)
    page = user.get("/billing/alerts/")
    assert page.status_code == 200
    text = page_text(page)
    assert "Usage warning" in text and "80.0% of any plan limit" in text
    answer = user.post("/billing/alerts/add", data={
        "rule-name": "Monthly budget", "rule-kind": "spend", "rule-amount": "1,500.00",
        "rule-channels": ["email", "in_app"], "rule-email_to": "ops@bravo.example",
        "rule-enabled": "y"})
    assert answer.status_code == 302
    bravo = _tenant(app, world)
    with app.app_context(), tenant_scope(bravo.id):
        rule = db.session.scalar(select(AlertRule).where(AlertRule.name == "Monthly budget"))
        assert rule.amount_minor == 150_000 and rule.channels == "email,in_app"
    assert "spend this period reaches €1,500.00" in page_text(user.get("/billing/alerts/"))
    edit = user.get(f"/billing/alerts/{rule.id}/edit")
    assert edit.status_code == 200 and "1500.00" in edit.get_data(as_text=True)
    assert user.post(f"/billing/alerts/{rule.id}/edit", data={
        "rule-name": "Budget", "rule-kind": "spend", "rule-amount": "2000",
        "rule-channels": ["email"], "rule-enabled": "y"}).status_code == 302
    assert user.post(f"/billing/alerts/{rule.id}/toggle").status_code == 302
    with app.app_context(), tenant_scope(bravo.id):
        rule = db.session.get(AlertRule, rule.id)
        assert (rule.name, rule.amount_minor, rule.enabled) == ("Budget", 200_000, False)
        actions = list(db.session.scalars(select(AuditEvent.action).where(
            AuditEvent.object_type == "AlertRule").order_by(AuditEvent.id)))
    assert actions == ["alert_rule.create", "alert_rule.update", "alert_rule.disable"]
    assert user.post(f"/billing/alerts/{rule.id}/delete").status_code == 302
    default = _rule(app, bravo, "warning")
    refused = user.post(f"/billing/alerts/{default.id}/delete")
    assert refused.status_code == 400 and "cannot be deleted" in page_text(refused)
    assert _rule(app, bravo, "warning") is not None


def test_bad_rules_are_refused_field_by_field_and_nothing_is_written(app, world, login):
    user = login("bravo-admin")
    bravo = _tenant(app, world)
    with app.app_context(), tenant_scope(bravo.id):
        before = db.session.scalar(select(func.count(AlertRule.id)))
    answer = user.post("/billing/alerts/add", data={
        "rule-name": "Bad", "rule-kind": "usage", "rule-threshold": "eighty",
        "rule-channels": ["sms"], "rule-email_to": "not-an-address",
        "rule-sms_to": "0800 12"})
    assert answer.status_code == 400
    text = page_text(answer)
    assert "enter a number such as 80" in text
    assert "not an email address: not-an-address" in text
    assert "international form" in text
    answer = user.post("/billing/alerts/add", data={
        "rule-name": "No channel", "rule-kind": "credit", "rule-amount": "-5"})
    text = page_text(answer)
    assert answer.status_code == 400
    assert "greater than 0" in text and "choose at least one" in text
    with app.app_context(), tenant_scope(bravo.id):
        assert db.session.scalar(select(func.count(AlertRule.id))) == before


def test_the_platform_admin_edits_any_tenants_rules_and_sees_every_history(app, world, login,
                                                                          channels):
    bravo = _tenant(app, world)
    _ingest(app, bravo, 420_000)
    operator = login("operator")
    assert "Choose" in page_text(operator.get("/billing/alerts/")) or \
        "Bravo GmbH" in page_text(operator.get("/billing/alerts/"))
    rule = _rule(app, bravo, "warning")
    answer = operator.post(f"/billing/alerts/{rule.id}/edit?tenant=bravo", data={
        "rule-name": "Usage warning", "rule-threshold": "75",
        "rule-channels": ["email", "in_app"], "rule-enabled": "y"})
    assert answer.status_code == 302
    assert _rule(app, bravo, "warning").threshold == Decimal(75)
    history = page_text(operator.get("/billing/alerts/history"))
    assert "Bravo GmbH" in history and "Usage warning" in history


def test_another_tenants_rules_and_deliveries_are_not_found(app, world, login, channels):
    bravo = _tenant(app, world)
    _ingest(app, bravo, 600_000)
    rule = _rule(app, bravo, "warning")
    delivery = _deliveries(app, bravo, "email")[0]
    user = login("alpha-admin")
    assert user.get(f"/billing/alerts/{rule.id}/edit").status_code == 404
    for path in (f"/billing/alerts/{rule.id}/edit", f"/billing/alerts/{rule.id}/toggle",
                 f"/billing/alerts/{rule.id}/delete",
                 f"/billing/alerts/deliveries/{delivery.id}/retry"):
        assert user.post(path, data={"rule-name": "x"}).status_code == 404, path
    assert user.get("/billing/alerts/?tenant=bravo").status_code == 200  # own tenant shown
    assert "Bravo" not in page_text(user.get("/billing/alerts/history"))
    assert _rule(app, bravo, "warning").enabled


def test_in_app_notifications_unread_count_and_mark_read(app, world, login, channels):
    bravo = _tenant(app, world)
    _ingest(app, bravo, 600_000)
    user = login("bravo-billing")
    home = user.get("/billing/alerts/").get_data(as_text=True)
    assert 'id="unread-count"' in home and ">3<" in home
    listing = user.get("/notifications/")
    assert "3 unread" in page_text(listing)
    with app.app_context(), tenant_scope(bravo.id):
        mine = list(db.session.scalars(select(Notification.id).where(
            Notification.user_id == world.ids["b_billing"]).order_by(Notification.id)))
        theirs = db.session.scalar(select(Notification.id).where(
            Notification.user_id == world.ids["b_admin"]))
    assert user.post(f"/notifications/{mine[0]}/read",
                     data={"next": "https://evil.example/"}).headers["Location"].endswith(
        "/notifications/")
    assert "2 unread" in page_text(user.get("/notifications/"))
    assert user.post(f"/notifications/{theirs}/read").status_code == 404
    assert user.post("/notifications/read-all").status_code == 302
    assert "0 unread" in page_text(user.get("/notifications/"))
    assert 'id="unread-count"' not in user.get("/notifications/").get_data(as_text=True)
    # The other user's notices are untouched.
    assert "3 unread" in page_text(login("bravo-admin").get("/notifications/"))
    assert login("alpha-admin").post(f"/notifications/{mine[1]}/read").status_code == 404


def test_cli_evaluates_every_tenant_and_refuses_an_unknown_one(app, world, channels):
    bravo = _tenant(app, world)
    with app.app_context(), tenant_scope(bravo.id):
        db.session.execute(update(AlertRule).values(enabled=False))
        db.session.commit()
    _ingest(app, bravo, 420_000)
    assert _alerts(app, bravo) == []
    with app.app_context(), tenant_scope(bravo.id):
        db.session.execute(update(AlertRule).values(enabled=True))
        db.session.commit()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["billfold", "evaluate-alerts"])
    assert result.exit_code == 0, result.output
    assert "bravo: 1 alert(s) fired" in result.output
    result = runner.invoke(args=["billfold", "evaluate-alerts"])
    assert "0 alert(s) fired" in result.output
    bad = runner.invoke(args=["billfold", "evaluate-alerts", "--tenant", "nope"])
    assert bad.exit_code == 1 and "no tenant 'nope'" in bad.output
