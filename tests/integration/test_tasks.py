"""Celery tasks: the beat schedule, eager runs on the embedded default, and real
workers on Redis: a close fanned out over a worker issues what the in-process run
issues, a period is closed once however often it is asked, and a worker killed
mid-task is replaced without a second invoice or charge."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select, update

from invoices.models import Invoice
from portal import tasks
from portal.extensions import db
from tenants.scoping import unscoped
from tests.conftest import database_copy, needs_redis
from tests.smtp_server import free_port


def test_the_beat_schedule_runs_every_periodic_job(app):
    schedule = tasks.celery.conf.beat_schedule
    assert {entry["task"] for entry in schedule.values()} == {
        "billfold.close_periods", "billfold.charge_usage", "billfold.mark_overdue",
        "billfold.auto_recharge_sweep", "billfold.evaluate_alerts",
        "billfold.retry_notifications", "billfold.compact_usage"}
    assert all(name in tasks.celery.tasks for name in (e["task"] for e in schedule.values()))


def test_without_a_broker_tasks_run_in_process(app, world):
    assert tasks.celery.conf.task_always_eager
    with app.app_context():
        assert tasks.close_periods.delay().get() == 2  # one close task per tenant
        tasks.close_periods.delay()  # again: nothing new
        with unscoped():
            count = db.session.scalar(select(func.count(Invoice.id)))
            assert count >= 2
            assert len(set(db.session.scalars(select(Invoice.number)))) == count
        assert tasks.mark_overdue.delay().get() == 0
        assert tasks.compact_usage.delay().get() == 2  # each tenant's mark set once
        assert tasks.compact_usage.delay().get() == 0


BROKER = "redis://127.0.0.1:6379/14"


def _start_worker(app, *, module: str = "portal.worker", fresh: bool = True,
                  **env_extra) -> subprocess.Popen:
    """A Celery worker on Redis for the test database (its queue emptied first unless
    ``fresh`` is off: a worker taking over from one that died)."""
    import redis

    if fresh:
        redis.Redis.from_url(BROKER).flushdb()  # no message of an earlier run
    env = dict(os.environ, BILLFOLD_DATABASE_URL=app.config["DATABASE_URL"],
               BILLFOLD_CELERY_BROKER_URL=BROKER, BILLFOLD_JOBS_EAGER="false")
    env.update(env_extra)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", f"{module}:celery", "worker", "--pool=solo",
         "--without-heartbeat", "--without-mingle", "--without-gossip", "-Q", "celery",
         "--loglevel=WARNING"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@needs_redis
def test_a_real_worker_closes_each_period_once(app, world):
    """A Celery worker on Redis gets the same close three times (as after a retry or
    a duplicate beat): one invoice per tenant and period."""
    worker = _start_worker(app)
    try:
        from celery import Celery

        client = Celery("billfold", broker=BROKER, backend=BROKER)
        results = [client.send_task("billfold.close_tenant", args=["alpha"]) for _ in range(3)]
        numbers = [r.get(timeout=90) for r in results]
        assert len(numbers[0]) >= 1 and numbers[1] == numbers[2] == []
        deadline = time.monotonic() + 10
        with app.app_context(), unscoped():
            while time.monotonic() < deadline:
                rows = db.session.execute(select(Invoice.number, Invoice.pdf_sha256)).all()
                if rows and all(sha for _, sha in rows):
                    break
                db.session.rollback()
                time.sleep(0.2)
            assert sorted(n for n, _ in rows) == sorted(numbers[0])
            assert all(sha for _, sha in rows)
    finally:
        worker.terminate()
        output = worker.communicate(timeout=30)[0].decode(errors="replace")
    assert "Traceback" not in output, output


def _without_time(snapshot: str) -> dict:
    """An invoice snapshot less its moment of issue (the date stays)."""
    content = json.loads(snapshot)
    content.pop("issued_at")
    return content


def _issued_invoices(url: str) -> list[tuple]:
    """Every invoice with its lines, read straight from the tables of ``url``."""
    from sqlalchemy import create_engine

    from invoices.models import InvoiceLine

    invoice, line = Invoice.__table__, InvoiceLine.__table__
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(invoice).order_by(invoice.c.number)).mappings().all()
            result = []
            for row in rows:
                lines = conn.execute(select(
                    line.c.position, line.c.kind, line.c.description, line.c.metric,
                    line.c.service, line.c.quantity, line.c.unit_price, line.c.amount_minor)
                    .where(line.c.invoice_id == row["id"]).order_by(line.c.position)).all()
                result.append((
                    row["tenant_id"], row["number"], row["period_start"], row["period_end"],
                    row["status"], row["subtotal_minor"], row["tax_minor"], row["total_minor"],
                    row["paid_minor"], row["payment_terms"], row["due_date"],
                    _without_time(row["snapshot"]),
                    bool(row["pdf_sha256"]), [tuple(x) for x in lines]))
            return result
    finally:
        engine.dispose()


@needs_redis
def test_a_close_fanned_out_over_a_worker_issues_the_invoices_of_the_in_process_run(
        app, world, db_kind, tmp_path):
    """The same data closed twice: in this process (eager tasks, the embedded default)
    and by the beat's close fanned out over a real worker, one task per tenant, on a
    copy of the database taken before. Both issue the same invoices, to the line."""
    from celery import Celery

    with database_copy(app, db_kind, tmp_path) as copy_url:
        with app.app_context():
            assert tasks.close_periods.delay().get() == 2
        in_process = _issued_invoices(app.config["DATABASE_URL"])
        assert len({i[0] for i in in_process}) == 2 and all(i[12] for i in in_process)

        worker = _start_worker(app, BILLFOLD_DATABASE_URL=copy_url)
        try:
            client = Celery("billfold", broker=BROKER, backend=BROKER)
            assert client.send_task("billfold.close_periods").get(timeout=90) == 2
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                fanned_out = _issued_invoices(copy_url)
                if len(fanned_out) >= len(in_process) and all(i[12] for i in fanned_out):
                    break
                time.sleep(0.3)
        finally:
            worker.terminate()
            output = worker.communicate(timeout=30)[0].decode(errors="replace")
    assert fanned_out == in_process, output
    assert "Traceback" not in output, output


@needs_redis
def test_a_real_worker_evaluates_alerts_and_mails_them_once(app, world):
    """The beat's evaluation fanned out over a worker three times over: each alert
    fires once and its email goes out once, through a real SMTP server."""
    from celery import Celery

    from plans.metering import ingest_events
    from plans.models import Alert, AlertRule
    from portal import jobs
    from portal.notifications import Delivery
    from tenants.models import Tenant
    from tests.smtp_server import SmtpServer

    with app.app_context(), unscoped():
        bravo = db.session.get(Tenant, world.ids["b"])
        rules = update(AlertRule).where(AlertRule.tenant_id == bravo.id)
        db.session.execute(rules.values(enabled=False))  # nothing fires in this process
        db.session.commit()
        ingest_events(bravo, [{"id": "big", "metric": "llm_tokens", "quantity": "420000",
                               "timestamp": dt.datetime.now(dt.UTC).isoformat()}])
        jobs.drain()
        db.session.execute(rules.values(enabled=True))
        db.session.commit()
        assert db.session.scalar(select(func.count(Alert.id))) == 0
    with SmtpServer() as smtp:
        worker = _start_worker(app, BILLFOLD_MAIL_SERVER="127.0.0.1",
                               BILLFOLD_MAIL_PORT=str(smtp.port))
        try:
            client = Celery("billfold", broker=BROKER, backend=BROKER)
            for _ in range(3):
                assert client.send_task("billfold.evaluate_alerts").get(timeout=90) == 2
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not smtp.messages:
                time.sleep(0.2)
            time.sleep(1)  # any duplicate would arrive now
            with app.app_context(), unscoped():
                fired = db.session.scalars(select(Alert.rule_name)).all()
                emails = db.session.scalars(select(Delivery.status).where(
                    Delivery.channel == "email")).all()
        finally:
            worker.terminate()
            output = worker.communicate(timeout=30)[0].decode(errors="replace")
    assert fired == ["Usage warning"], output
    assert emails == ["sent"] and len(smtp.messages) == 1
    assert "Traceback" not in output, output


VISIBILITY_TIMEOUT = 2  # seconds before the task of a killed worker is handed out again


@needs_redis
@pytest.mark.parametrize("killed", ["after the invoice is issued",
                                    "after Stripe charged the card"])
def test_a_worker_killed_mid_close_is_replaced_and_nothing_is_issued_or_charged_twice(
        app, world, stub, client, tmp_path, killed):
    """A worker closing a card tenant's period is killed outright (SIGKILL) at a point
    where part of the work is committed or done at Stripe. Its task goes back to the
    queue, another worker runs it again, and the period has one invoice, one number
    taken, one PDF and one card charge."""
    from invoices.models import LedgerEntry
    from tests.integration.test_auto_recharge import _card_on_file

    tenant = _card_on_file(app, world, stub, client)
    point = {"after the invoice is issued": "invoices.invoicing:render_invoice:before",
             "after Stripe charged the card":
                 "stripe._payment_intent_service:PaymentIntentService.create:after"}[killed]
    mark = tmp_path / "stalled"
    env = {"BILLFOLD_STRIPE_SECRET_KEY": app.config["STRIPE_SECRET_KEY"],
           "BILLFOLD_STRIPE_API_BASE": stub.url,
           "BILLFOLD_CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT)}
    doomed = _start_worker(app, module="tests.stalling_worker", BILLFOLD_TEST_STALL=point,
                           BILLFOLD_TEST_STALL_MARK=str(mark), **env)
    from celery import Celery

    celery_client = Celery("billfold", broker=BROKER, backend=BROKER)
    result = celery_client.send_task("billfold.close_tenant", args=[tenant.slug])
    deadline = time.monotonic() + 90
    while not mark.exists() and doomed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mark.exists(), doomed.communicate(timeout=30)[0].decode(errors="replace")
    doomed.kill()  # SIGKILL: no clean-up, the task stays unacknowledged
    doomed.communicate(timeout=30)

    def state():
        with app.app_context(), unscoped():
            invoices = db.session.execute(select(
                Invoice.number, Invoice.period_start, Invoice.pdf_sha256,
                Invoice.stripe_payment_intent_id).where(
                Invoice.tenant_id == tenant.id).order_by(Invoice.number)).all()
            db.session.rollback()
            return invoices

    def intents(number):
        return [pi for pi in stub.objects("payment_intent")
                if pi["metadata"].get("invoice") == number]

    (issued,) = state()  # the first period's invoice, then the worker died
    at_stripe = killed == "after Stripe charged the card"
    assert (issued.pdf_sha256 is None) is not at_stripe  # the PDF comes before the charge
    assert len(intents(issued.number)) == (1 if at_stripe else 0)
    assert issued.stripe_payment_intent_id is None  # no charge recorded

    time.sleep(VISIBILITY_TIMEOUT + 0.5)
    worker = _start_worker(app, fresh=False, **env)
    try:
        numbers = result.get(timeout=90)  # the same task, run again by the new worker
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            invoices = state()
            if all(i.pdf_sha256 and i.stripe_payment_intent_id for i in invoices):
                break
            time.sleep(0.2)
        time.sleep(1)  # the render and charge jobs queued at issue have run by now
        invoices = state()
    finally:
        worker.terminate()
        output = worker.communicate(timeout=30)[0].decode(errors="replace")
    # The killed close's invoice stands; the run again issued only the periods after it.
    assert invoices[0].number == issued.number, output
    assert [i.number for i in invoices[1:]] == numbers
    assert len({i.period_start for i in invoices}) == len(invoices)
    first = int(issued.number.rsplit("-", 1)[1])  # no number taken twice or skipped
    assert [int(i.number.rsplit("-", 1)[1]) for i in invoices] == list(
        range(first, first + len(invoices)))
    keys = set()
    for invoice in invoices:
        (intent,) = intents(invoice.number)  # one charge each
        assert invoice.pdf_sha256 and invoice.stripe_payment_intent_id == intent["id"]
        keys.add(f"billfold-invoice-{invoice.number}")
    sent = {r.headers["Idempotency-Key"] for r in stub.requests_for("POST",
                                                                     "/v1/payment_intents")}
    assert sent == keys
    with app.app_context(), unscoped():
        refs = db.session.scalars(select(LedgerEntry.ref_id).where(
            LedgerEntry.tenant_id == tenant.id, LedgerEntry.ref_id.is_not(None))).all()
        assert len(refs) == len(set(refs))  # no ledger entry booked twice
    assert "Traceback" not in output, output


@needs_redis
def test_the_alert_evaluations_of_a_burst_of_batches_go_to_the_workers_once(
        app, world, monkeypatch):
    """With the jobs on Celery, each ingested batch asks for its tenant's alert check;
    the batches of one window send one check per tenant, to run when the window has
    closed, and the next window sends one again. Without Redis every batch sends one."""
    import redis

    from plans.alerts import EVALUATE_JOB
    from plans.metering import ingest_events
    from portal import jobs
    from tenants.models import Tenant

    sent: list[tuple] = []
    monkeypatch.setattr(tasks.run_job, "apply_async",
                        lambda args, countdown=None: sent.append((args, countdown)))
    monkeypatch.setattr(tasks.run_job, "delay", lambda *args: sent.append((args, None)))
    monkeypatch.setitem(app.config, "JOBS_EAGER", False)
    monkeypatch.setitem(app.config, "CELERY_BROKER_URL", BROKER)
    monkeypatch.setitem(jobs.COALESCE, EVALUATE_JOB, 1)
    redis.Redis.from_url(BROKER).flushdb()
    now = dt.datetime.now(dt.UTC).isoformat()

    def batch(tenant_id: int, name: str) -> None:
        with app.app_context(), unscoped():
            tenant = db.session.get(Tenant, tenant_id)
            ingest_events(tenant, [{"id": name, "metric": "api_requests", "quantity": 1,
                                    "timestamp": now}])

    alpha, bravo = world.ids["a"], world.ids["b"]
    for n in range(5):
        batch(alpha, f"a{n}")
        batch(bravo, f"b{n}")
    assert sorted(sent) == [((EVALUATE_JOB, alpha), 2), ((EVALUATE_JOB, bravo), 2)]
    time.sleep(1.2)  # the window has closed: the check sent runs now, and reads them all
    batch(alpha, "a-later")
    assert sent[2:] == [((EVALUATE_JOB, alpha), 2)]

    monkeypatch.setitem(app.config, "CELERY_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    sent.clear()
    batch(alpha, "a-no-redis-1")
    batch(alpha, "a-no-redis-2")
    assert sent == [((EVALUATE_JOB, alpha), 2)] * 2

