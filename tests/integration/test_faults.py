"""Faults made real where they can run here: the database connection dropped in the
middle of an ingestion batch, Stripe answering 500 or too late while a user buys
credit and while an invoice or an auto-recharge is charged, webhooks delivered out
of order, and WeasyPrint failing when an invoice is issued.

Each test checks the stored state afterwards (nothing half-written, nothing booked
twice) and that the retry, once the fault is gone, does the work exactly once."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import time

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError

from invoices import auto_recharge, invoicing, ledger, payments
from invoices.invoice_pdf import render_invoice_pdf
from invoices.models import (
    AutoRecharge,
    CreditPurchase,
    Invoice,
    InvoicePayment,
    LedgerEntry,
)
from plans import metering
from plans.metering import ingest_events
from plans.models import UsageEvent, UsageRollup
from portal import jobs
from portal.audit import AuditEvent
from portal.extensions import db
from tenants.scoping import tenant_scope, unscoped
from tests.conftest import page_text
from tests.integration.test_auto_recharge import _card_on_file, _enable
from tests.integration.test_invoices import _last_period
from tests.integration.test_payments import ACTOR, _counts, _deliver, _tenant

STRIPE_TIMEOUT = 0.5  # seconds per attempt, for the tests that make Stripe slow
SLOW_ANSWER = 1.5  # how long the stand-in holds back a "slow" answer
ATTEMPTS = 3  # one request and the Stripe client's two retries


def _fault(stub, path: str, fault: str) -> None:
    """Make every attempt of the next Stripe call to ``path`` fail: HTTP 500, or an
    answer that comes only after the client has given up (the work is done)."""
    if fault == "answers 500":
        stub.fail_next(path, 500, times=ATTEMPTS)
    else:
        stub.delay_next(path, SLOW_ANSWER, times=ATTEMPTS)


def _job_failures(job: str) -> float:
    """How many runs of ``job`` failed, by the jobs metric."""
    return REGISTRY.get_sample_value(
        "billfold_jobs_total", {"job": job, "outcome": "failure"}) or 0.0


@pytest.fixture
def short_stripe_timeout(app, monkeypatch):
    monkeypatch.setitem(app.config, "STRIPE_TIMEOUT_SECONDS", STRIPE_TIMEOUT)


# -- 1. the database connection dropped during an ingestion batch ----------------------

def _batch(prefix: str, users: tuple[str, ...], quantity: int) -> list[dict]:
    moment = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    return [{"id": f"{prefix}-{user}-{n}", "metric": "llm_tokens", "quantity": quantity,
             "timestamp": moment, "user": user} for user in users for n in range(2)]


def _usage(app, tenant_id: int) -> tuple[int, dict[str, tuple[int, int]]]:
    """The tenant's stored events and its rollups by user (quantity, event count)."""
    with app.app_context(), unscoped():
        events = db.session.scalar(select(func.count(UsageEvent.id))
                                   .where(UsageEvent.tenant_id == tenant_id))
        rollups = {r.user_ref: (r.quantity_micro, r.event_count) for r in db.session.scalars(
            select(UsageRollup).where(UsageRollup.tenant_id == tenant_id))}
    return events, rollups


def _drop_connection(db_kind: str) -> None:
    """End the session's database connection under it: on PostgreSQL a second
    connection terminates its server process; SQLite has no server, so the driver's
    connection is closed (its open transaction is lost the same way)."""
    raw = db.session.connection().connection.driver_connection
    if db_kind != "postgresql":
        raw.close()
        return
    pid = raw.info.backend_pid
    with db.engine.connect() as other:
        assert other.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        for _ in range(100):  # until the server process is gone
            other.rollback()  # each look at pg_stat_activity in a transaction of its own
            if not other.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                                {"pid": pid}):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"backend {pid} was not terminated")


def test_a_dropped_database_connection_mid_batch_writes_nothing(app, world, db_kind,
                                                                monkeypatch):
    tenant = _tenant(app, world)
    with app.app_context():
        ingest_events(tenant, _batch("earlier", ("u1",), 5))
    before = _usage(app, tenant.id)
    assert before == (2, {"u1": (10_000_000, 2)})
    batch = _batch("dropped", ("u1", "u2"), 7)
    original = metering._upsert_rollups
    written_when_dropped = []

    def drop_then_upsert(tenant_id, events, dialect):
        # Half-way: the batch's events are written in the open transaction, the
        # rollups not yet.
        written_when_dropped.append(db.session.connection().scalar(text(
            "SELECT count(*) FROM usage_event WHERE event_id LIKE 'dropped-%'")))
        _drop_connection(db_kind)
        return original(tenant_id, events, dialect)

    monkeypatch.setattr(metering, "_upsert_rollups", drop_then_upsert)
    with app.app_context(), pytest.raises(Exception) as failure:
        ingest_events(tenant, batch)
    monkeypatch.undo()
    assert written_when_dropped == [len(batch)]
    # A clear error: the database's, saying that the connection is gone (the rollback
    # finds it lost; the server's reason is the error it was raised while handling).
    assert isinstance(failure.value, DBAPIError), repr(failure.value)
    messages = " | ".join(str(e) for e in (failure.value, failure.value.__context__))
    assert ("terminating connection due to administrator command" if db_kind == "postgresql"
            else "Cannot operate on a closed database") in messages, messages
    assert _usage(app, tenant.id) == before  # nothing of the batch is stored

    with app.app_context():
        result = ingest_events(tenant, batch)
    assert (result.accepted, result.duplicates) == (len(batch), 0)
    after = _usage(app, tenant.id)
    assert after == (6, {"u1": (10_000_000 + 14_000_000, 4), "u2": (14_000_000, 2)})
    with app.app_context():
        again = ingest_events(tenant, batch)
    assert (again.accepted, again.duplicates) == (0, len(batch))
    assert _usage(app, tenant.id) == after  # stored exactly once


# -- 2. Stripe answering 500 or timing out during a user's action ------------------------

@pytest.mark.parametrize("fault", ["answers 500", "times out"])
def test_stripe_failing_at_buy_credit_shows_a_message_and_books_nothing(
        app, world, stub, client, login, short_stripe_timeout, fault):
    path = "/v1/checkout/sessions"
    tenant = _tenant(app, world)
    with app.app_context():
        payments.ensure_customer(tenant)  # the fault meets the checkout session itself
    before = _counts(app, tenant.id)
    user = login("alpha-billing")
    _fault(stub, path, fault)
    response = user.post("/billing/payments/buy-credit", data={"amount": "120.00"})
    assert response.status_code == 302, response.status_code
    page = user.get(response.headers["Location"])
    assert page.status_code == 200
    shown = page_text(page)
    assert ("Stripe did not answer in time" if fault == "times out"
            else "Stripe answered with an error") in shown
    assert "the checkout did not start and nothing was charged" in shown
    assert "Traceback" not in shown

    attempts = stub.requests_for("POST", path)
    assert len(attempts) == ATTEMPTS
    # The client's retries carry the request's idempotency key: Stripe makes one
    # session however often it is asked (here: none after a 500, one when slow).
    assert len({a.headers["Idempotency-Key"] for a in attempts}) == 1
    made = stub.objects("checkout.session")
    assert len(made) == (1 if fault == "times out" else 0)
    assert _counts(app, tenant.id) == before
    with app.app_context(), unscoped():
        assert db.session.scalar(select(func.count(AuditEvent.id)).where(
            AuditEvent.action == "checkout.start")) == 0

    # Stripe answers again: the user's retry works, and is booked once.
    again = user.post("/billing/payments/buy-credit", data={"amount": "120.00"})
    assert again.status_code == 303 and again.headers["Location"].startswith(stub.url + "/pay/")
    session_id = again.headers["Location"].rsplit("/", 1)[1]
    assert session_id not in {s["id"] for s in made}
    paid = stub.complete_checkout(session_id)
    assert _deliver(client, paid).get_json()["outcome"] == "topup booked"
    assert _deliver(client, paid).get_json()["outcome"] == "duplicate"
    entries, purchases, _methods = _counts(app, tenant.id)
    assert (entries, purchases) == (before[0] + 1, before[1] + 1)
    with app.app_context():
        assert ledger.balance_minor(tenant) == 12_000
    # The session Stripe made while its answer was late never reached the user.
    assert [(s["status"], s["payment_status"]) for s in made] == [("open", "unpaid")] * len(made)


@pytest.mark.parametrize("fault", ["answers 500", "times out"])
def test_stripe_failing_at_an_invoice_charge_is_retried_and_charges_once(
        app, world, stub, client, short_stripe_timeout, fault):
    tenant = _card_on_file(app, world, stub, client)
    path = "/v1/payment_intents"
    _fault(stub, path, fault)
    with app.app_context():
        invoice = invoicing.close_period(tenant, _last_period(), render=False)
        number, invoice_id, due = invoice.number, invoice.id, invoice.due_minor
        assert (invoice.status, invoice.payment_terms) == ("pending", "card") and due > 0
        assert invoice.stripe_payment_intent_id is None
    with app.app_context(), unscoped():
        (outcome,) = db.session.scalars(select(AuditEvent.after).where(
            AuditEvent.action == "invoice.charge")).all()
    assert "not confirmed by Stripe" in str(outcome)

    def intents():
        return [pi for pi in stub.objects("payment_intent")
                if pi["metadata"].get("invoice") == number]

    # After a 500 Stripe charged nothing; a late answer came after it had charged.
    assert [pi["status"] for pi in intents()] == (["succeeded"] if fault == "times out" else [])
    assert len(stub.requests_for("POST", path)) == ATTEMPTS

    with app.app_context():
        jobs.drain()  # the charge job queued at issue: the retry, Stripe answering again
    (intent,) = intents()
    requests = stub.requests_for("POST", path)
    assert len(requests) == ATTEMPTS + 1
    assert {r.headers["Idempotency-Key"] for r in requests} == {f"billfold-invoice-{number}"}
    with app.app_context(), unscoped():
        row = db.session.get(Invoice, invoice_id)
        assert (row.stripe_payment_intent_id, row.status) == (intent["id"], "pending")

    for event in stub.events_of_type("payment_intent.succeeded") * 2:
        assert _deliver(client, event).status_code == 200
    with app.app_context():
        again = invoicing.close_period(tenant, _last_period(), render=False)  # a later run
        assert again.id == invoice_id and again.status == "paid"
    assert len(intents()) == 1 and len(stub.requests_for("POST", path)) == ATTEMPTS + 1
    with app.app_context(), unscoped():
        card_payments = db.session.execute(select(InvoicePayment.method,
                                                  InvoicePayment.amount_minor)).all()
        assert [tuple(p) for p in card_payments] == [("card", due)]
        assert db.session.get(Invoice, invoice_id).paid_minor == due


# -- 3. webhooks out of order ----------------------------------------------------------

def test_checkout_events_in_reverse_order_book_once(app, world, stub, client):
    tenant = _tenant(app, world)
    with app.app_context():
        start = payments.start_checkout(tenant, ACTOR, mode="payment", amount_minor=25_000,
                                        success_url="http://billfold.test/ok",
                                        cancel_url="http://billfold.test/no")
    already = len(stub.events)
    stub.complete_checkout(start.session_id, card=("mastercard", "4444", 7, 2031))
    sent = copy.deepcopy(stub.events[already:])
    assert [e["type"] for e in sent][-1] == "checkout.session.completed"
    assert "payment_intent.succeeded" in [e["type"] for e in sent]
    # The session's completion first, then what Stripe sent before it; then all again.
    outcomes = {e["type"]: _deliver(client, e).get_json()["outcome"] for e in reversed(sent)}
    assert outcomes["checkout.session.completed"] == "topup booked"
    assert outcomes["payment_intent.succeeded"] == "ignored"  # Checkout books on completion
    assert {_deliver(client, e).get_json()["outcome"] for e in sent} == {"duplicate"}
    with app.app_context():
        assert ledger.balance_minor(tenant) == 25_000
        (purchase,) = payments.list_purchases(tenant)
        assert (purchase.kind, purchase.status, purchase.amount_minor) == ("purchase",
                                                                           "succeeded", 25_000)
        cards = [m for m in payments.list_payment_methods(tenant) if m.kind == "card"]
        assert [(c.brand, c.last4) for c in cards] == [("mastercard", "4444")]
    with app.app_context(), unscoped():
        assert db.session.scalar(select(func.count(LedgerEntry.id)).where(
            LedgerEntry.tenant_id == tenant.id)) == 1


def test_auto_recharge_success_before_the_api_answer_and_a_stale_failure_after_it(
        app, world, stub, client, short_stripe_timeout):
    """Stripe charges the card but its answer comes too late; its webhook arrives
    before the job is retried; an older failure event arrives last."""
    tenant = _card_on_file(app, world, stub, client)
    _enable(app, tenant, threshold=5_000, amount=10_000)
    path = "/v1/payment_intents"
    stub.delay_next(path, SLOW_ANSWER, times=ATTEMPTS)
    failures = _job_failures(auto_recharge.JOB)
    with app.app_context():
        ledger.post_entry(tenant, ACTOR, "bonus", 6_000, "start")
        ledger.post_entry(tenant, ACTOR, "usage", -1_500, "a dip under the threshold")
        jobs.drain()  # the charge job: Stripe charged, its answer came too late
    assert _job_failures(auto_recharge.JOB) == failures + 1
    with app.app_context(), unscoped():
        (recharge,) = db.session.scalars(select(AutoRecharge)).all()
        assert (recharge.status, recharge.stripe_payment_intent_id) == ("pending", None)
        recharge_id = recharge.id
    (intent,) = stub.objects("payment_intent")
    assert intent["status"] == "succeeded"

    (succeeded,) = stub.events_of_type("payment_intent.succeeded")
    assert _deliver(client, succeeded).get_json()["outcome"] == "auto-recharge booked"
    with app.app_context():
        assert auto_recharge.sweep(max_age=dt.timedelta(0))["charged"] == 0  # found booked
        jobs.drain()
    assert len(stub.requests_for("POST", path)) == ATTEMPTS  # no new charge was asked for

    # An older event of the same payment intent: a failed first attempt.
    stale = copy.deepcopy(succeeded)
    stale["id"] = "evt_stale_failure_of_" + intent["id"]
    stale["type"] = "payment_intent.payment_failed"
    stale["created"] = succeeded["created"] - 60
    stale["data"]["object"].update(status="requires_payment_method", last_payment_error={
        "code": "card_declined", "message": "Your card was declined.", "type": "card_error"})
    assert _deliver(client, stale).status_code == 200
    assert _deliver(client, succeeded).get_json()["outcome"] == "duplicate"

    with app.app_context():
        assert ledger.balance_minor(tenant) == 6_000 - 1_500 + 10_000
        assert auto_recharge.last_failure(tenant) is None  # no failure shown to the tenant
        assert jobs.pending() == []  # and no failure notice queued
        with tenant_scope(tenant):
            booked = db.session.scalars(select(LedgerEntry.amount_minor).where(
                LedgerEntry.type == "auto_recharge")).all()
            purchases = db.session.execute(select(CreditPurchase.status,
                                                  CreditPurchase.stripe_ref)).all()
            row = db.session.get_one(AutoRecharge, recharge_id)
            assert (row.status, row.stripe_payment_intent_id) == ("succeeded", intent["id"])
    assert booked == [10_000]
    assert [tuple(p) for p in purchases] == [("succeeded", intent["id"])]


def test_auto_recharge_with_stripe_answering_500_stays_pending_and_the_sweep_books_it_once(
        app, world, stub, client, short_stripe_timeout):
    """Stripe answers 500 to the charge job and to the next sweep: nothing is charged
    or booked, the recharge stays pending, the sweep goes on to its other work, and
    the sweep after Stripe is back charges once, which the webhook books once."""
    tenant = _card_on_file(app, world, stub, client)
    _enable(app, tenant, threshold=5_000, amount=10_000)
    path = "/v1/payment_intents"
    stub.fail_next(path, 500, times=ATTEMPTS * 2)  # the job, then a sweep
    failures = _job_failures(auto_recharge.JOB)
    with app.app_context():
        ledger.post_entry(tenant, ACTOR, "bonus", 6_000, "start")
        ledger.post_entry(tenant, ACTOR, "usage", -1_500, "a dip under the threshold")
        jobs.drain()  # the charge job: three 500s
    assert _job_failures(auto_recharge.JOB) == failures + 1
    with app.app_context():
        outcome = auto_recharge.sweep(max_age=dt.timedelta(0))  # three 500s again
    assert outcome == {"pending": 1, "charged": 0, "failed": 1, "notified": 0}
    stub.fail_next(path, 500, times=ATTEMPTS)
    with app.app_context(), unscoped():  # old enough for the command's sweep
        db.session.execute(update(AutoRecharge).values(
            created_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)))
        db.session.commit()
    result = app.test_cli_runner().invoke(args=["billfold", "auto-recharge"])
    assert result.exit_code == 1
    assert "1 could not be charged (Stripe did not answer" in result.stderr
    assert stub.objects("payment_intent") == []
    with app.app_context(), unscoped():
        (recharge,) = db.session.scalars(select(AutoRecharge)).all()
        assert (recharge.status, recharge.stripe_payment_intent_id) == ("pending", None)
        assert ledger.balance_minor(tenant) == 4_500
        assert auto_recharge.last_failure(tenant) is None  # not the tenant's failure

    with app.app_context():
        outcome = auto_recharge.sweep(max_age=dt.timedelta(0))  # Stripe is back
        assert outcome == {"pending": 1, "charged": 1, "failed": 0, "notified": 0}
        assert auto_recharge.sweep(max_age=dt.timedelta(0))["pending"] == 0
    (intent,) = stub.objects("payment_intent")
    requests = stub.requests_for("POST", path)
    assert len(requests) == ATTEMPTS * 3 + 1
    assert len({r.headers["Idempotency-Key"] for r in requests}) == 1
    (succeeded,) = stub.events_of_type("payment_intent.succeeded")
    for _ in range(2):
        _deliver(client, succeeded)
    with app.app_context(), tenant_scope(tenant):
        assert ledger.balance_minor(tenant) == 4_500 + 10_000
        assert db.session.scalars(select(LedgerEntry.amount_minor).where(
            LedgerEntry.type == "auto_recharge")).all() == [10_000]
        assert db.session.get_one(AutoRecharge, recharge.id).stripe_payment_intent_id \
            == intent["id"]


# -- 4. WeasyPrint failing when an invoice is issued -----------------------------------

def _issued(app, invoice_id: int) -> tuple:
    with app.app_context(), unscoped():
        invoice = db.session.get_one(Invoice, invoice_id)
        lines = [(line.position, line.kind, line.metric, line.amount_minor)
                 for line in invoice.lines]
        pdf = db.session.scalar(select(Invoice.pdf).where(Invoice.id == invoice_id))
        return ((invoice.number, invoice.status, invoice.total_minor, invoice.snapshot, lines),
                (pdf, invoice.pdf_sha256, invoice.pdf_rendered_at))


def test_a_weasyprint_failure_leaves_the_invoice_issued_and_the_pdf_is_rendered_later(
        app, world, login, monkeypatch):
    import weasyprint

    real_write_pdf = weasyprint.HTML.write_pdf
    state = {"broken": True, "renders": 0}

    def write_pdf(self, *args, **kwargs):
        if state["broken"]:
            raise OSError("cannot load library 'libpango-1.0-0': file not found")
        state["renders"] += 1
        return real_write_pdf(self, *args, **kwargs)

    monkeypatch.setattr(weasyprint.HTML, "write_pdf", write_pdf)
    tenant = _tenant(app, world)
    failures = _job_failures(invoicing.RENDER_JOB)
    with app.app_context():
        invoice = invoicing.close_period(tenant, _last_period())  # does not raise
        invoice_id, number, total = invoice.id, invoice.number, invoice.total_minor
    assert number and number.startswith("BF-") and total > 0
    issued, pdf = _issued(app, invoice_id)
    assert issued[:3] == (number, "pending", total) and issued[3] and issued[4]
    assert pdf == (None, None, None)  # no PDF, and none recorded as rendered
    assert _job_failures(invoicing.RENDER_JOB) == failures + 1  # the failure is counted

    with app.app_context():
        jobs.drain()  # the render job queued at issue fails the same way
    assert _job_failures(invoicing.RENDER_JOB) == failures + 2
    assert _issued(app, invoice_id) == (issued, (None, None, None))

    billing = login("alpha-billing")  # a download while it is broken: a message, no PDF
    refused = billing.get(f"/billing/invoices/{number}.pdf")
    assert refused.status_code == 302 and refused.headers["Location"].endswith(
        f"/billing/invoices/{number}")
    page = billing.get(refused.headers["Location"])
    assert "could not be made just now" in page.get_data(as_text=True)
    assert _issued(app, invoice_id) == (issued, (None, None, None))

    state["broken"] = False  # WeasyPrint works again: the first download renders it
    first = billing.get(f"/billing/invoices/{number}.pdf")
    assert first.status_code == 200 and first.mimetype == "application/pdf"
    body = first.get_data()
    assert body.startswith(b"%PDF")
    again_issued, (stored, digest, rendered_at) = _issued(app, invoice_id)
    assert again_issued == issued  # number, status, total, snapshot and lines unchanged
    assert stored == body and digest == hashlib.sha256(body).hexdigest() and rendered_at
    assert state["renders"] == 1

    second = billing.get(f"/billing/invoices/{number}.pdf")
    with app.app_context():
        invoicing.close_period(tenant, _last_period())  # a later close renders nothing
    assert second.get_data() == body and state["renders"] == 1
    with app.app_context(), unscoped():
        assert db.session.scalar(select(func.count(Invoice.id))) == 1
        # The stored PDF is the invoice's: its snapshot renders to the same bytes.
        fresh = render_invoice_pdf(invoicing.snapshot_of(db.session.get_one(Invoice,
                                                                            invoice_id)))
    assert hashlib.sha256(fresh).hexdigest() == digest
