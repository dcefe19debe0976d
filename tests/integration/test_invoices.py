"""Period close, rating, numbering, settlement, states, immutability and the stored PDF."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading

import pytest
from sqlalchemy import func, select

from invoices import invoicing, ledger, payment_methods, payments
from invoices.invoicing import InvoiceImmutable
from invoices.models import Invoice, InvoicePayment
from plans import services as plan_services
from plans.metering import ingest_events
from plans.periods import period_containing
from portal import jobs
from portal.audit import Actor, AuditEvent
from portal.errors import ValidationFailed
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped
from tests.conftest import page_text
from tests.integration.test_payments import _checkout, _deliver

ACTOR = Actor.system("tests")


def _tenant(key="a", world=None):
    with unscoped():
        tenant = db.session.get(Tenant, world.ids[key])
    return tenant


def _last_period(tenant_today=None):
    today = tenant_today or dt.date.today()
    return period_containing(today).previous()


def _events(period, metric, total, *, users=("u1",), service=None, days=(0,), prefix="e"):
    """``total`` of ``metric`` spread evenly over ``users`` on the given days."""
    events = []
    share = total // (len(users) * len(days))
    for d in days:
        moment = dt.datetime.combine(period.start + dt.timedelta(days=d), dt.time(12),
                                     tzinfo=dt.UTC)
        for user in users:
            event = {"id": f"{prefix}-{metric}-{d}-{user}", "metric": metric,
                     "quantity": share, "timestamp": moment, "user": user}
            if service:
                event["service"] = service
            events.append(event)
    return events


def _pdf_text(data: bytes) -> str:
    return subprocess.run(["pdftotext", "-layout", "-", "-"], input=data, capture_output=True,
                          check=True).stdout.decode()


def test_a_closed_period_is_rated_against_the_plan(app, world, ctx):
    tenant = _tenant(world=world)
    period = _last_period()
    ingest_events(tenant, _events(period, "llm_tokens", 6_000_000, users=("u1", "u2", "u3")))
    ingest_events(tenant, _events(period, "storage_gb", 150, days=(0,), prefix="s1")
                  + _events(period, "storage_gb", 120, days=(3,), prefix="s2"))
    invoice = invoicing.close_period(tenant, period)
    lines = [(line.kind, line.metric, line.service, line.quantity, line.amount_minor)
             for line in invoice.lines]
    # Professional: $499; 1M tokens over 5M at $0.000003 = $3.00; storage on its
    # peak, 150 GB against 100 included, at $0.20 = $10.00.
    assert lines[0][:3] == ("base_fee", None, "platform") and lines[0][4] == 49_900
    assert ("overage", "llm_tokens", "ai_service") == lines[1][:3] and lines[1][4] == 300
    assert ("overage", "storage_gb", "query_engine") == lines[2][:3] and lines[2][4] == 1_000
    assert invoice.subtotal_minor == sum(line[4] for line in lines) == 51_200
    assert invoice.total_minor == invoice.subtotal_minor + invoice.tax_minor
    assert invoice.number == f"BF-{dt.date.today().year}-000001"
    assert invoice.status == "pending" and invoice.payment_terms == "ach"
    snapshot = invoicing.snapshot_of(invoice)
    assert sum(u["amount"] for u in snapshot["by_user"]) + snapshot["platform_fee"] \
        == invoice.subtotal_minor
    assert invoice.lines[0].description.startswith("Professional plan")


def test_closing_twice_gives_one_invoice_and_numbers_are_sequential(app, world, ctx):
    a, b = _tenant("a", world), _tenant("b", world)
    period = _last_period()
    first = invoicing.close_period(a, period)
    again = invoicing.close_period(a, period)
    other = invoicing.close_period(b, period)
    assert first.id == again.id
    year = dt.date.today().year
    assert (first.number, other.number) == (f"BF-{year}-000001", f"BF-{year}-000002")
    results = invoicing.close_due()  # every ended period still open: the one before
    assert all(r.number not in (first.number, other.number) for r in results)
    assert invoicing.close_due() == []
    assert db.session.scalar(select(func.count(Invoice.id))) == 2 + len(results)


def test_a_plan_change_mid_period_prorates_the_base_fee(app, world, ctx):
    tenant = _tenant(world=world)
    period = _last_period()
    plans = {p.code: p for p in plan_services.list_plans()}
    with tenant_scope(tenant):
        sub = plan_services.current_subscription(tenant, period.start)
        sub.ends_on = period.start + dt.timedelta(days=10)
        db.session.commit()
    plan_services.subscribe(ACTOR, tenant, plans["starter"],
                            starts_on=period.start + dt.timedelta(days=10))
    invoice = invoicing.close_period(tenant, period)
    base = [line for line in invoice.lines if line.kind == "base_fee"]
    assert len(base) == 2
    days = period.days
    expected = [round(49_900 * 10 / days), round(9_900 * (days - 10) / days)]
    assert [line.amount_minor for line in base] == expected
    assert "prorated 10/" in base[0].description


def test_prepaid_credit_pays_first(app, world, ctx):
    tenant = _tenant(world=world)
    ledger.post_entry(tenant, ACTOR, "topup", 20_000, "credit")
    invoice = invoicing.close_period(tenant, _last_period())
    assert invoice.paid_minor == 20_000 and invoice.due_minor == 29_900
    assert invoice.status == "pending"
    assert ledger.balance_minor(tenant) == 0
    ledger.post_entry(tenant, ACTOR, "topup", 100_000, "more credit")
    older = invoicing.close_period(tenant, _last_period().previous())
    assert older.status == "paid" and older.payment_terms == "prepaid"
    assert older.paid_minor == older.total_minor
    assert ledger.balance_minor(tenant) == 100_000 - older.total_minor


def test_tax_is_added_at_the_tenants_rate(app, world, ctx):
    from decimal import Decimal

    tenant = _tenant(world=world)
    invoicing.set_tax_rate(ACTOR, tenant, Decimal("8.25"))
    invoice = invoicing.close_period(tenant, _last_period())
    assert invoice.tax_minor == 4_117  # 8.25 % of $499.00, half up
    assert invoice.total_minor == 49_900 + 4_117
    with pytest.raises(ValidationFailed):
        invoicing.set_tax_rate(ACTOR, tenant, Decimal("120"))


def test_an_issued_invoice_is_immutable(app, world, ctx):
    tenant = _tenant(world=world)
    invoice = invoicing.close_period(tenant, _last_period())
    with tenant_scope(tenant):
        row = db.session.get(Invoice, invoice.id)
        row.total_minor += 1
        with pytest.raises(InvoiceImmutable):
            db.session.flush()
        db.session.rollback()
        row = db.session.get(Invoice, invoice.id)
        row.lines[0].amount_minor = 1
        with pytest.raises(InvoiceImmutable):
            db.session.flush()
        db.session.rollback()
        row = db.session.get(Invoice, invoice.id)
        row.status = "draft"
        with pytest.raises(InvoiceImmutable):
            db.session.flush()
        db.session.rollback()


def test_an_open_period_cannot_be_closed(app, world, ctx):
    tenant = _tenant(world=world)
    with pytest.raises(ValidationFailed):
        invoicing.close_period(tenant, period_containing(dt.date.today()))
    assert db.session.scalar(select(func.count(Invoice.id))) == 0


def test_overdue_after_the_due_date_and_paid_by_the_platform_admin(app, world, login):
    with app.app_context():
        tenant = _tenant(world=world)
        invoice = invoicing.close_period(tenant, _last_period())
        number, due = invoice.number, invoice.due_date
        later = dt.datetime.combine(due + dt.timedelta(days=1), dt.time(12), tzinfo=dt.UTC)
        assert invoicing.mark_overdue(now=later) == 1
        assert invoicing.mark_overdue(now=later) == 0
    operator = login("operator")
    url = f"/billing/invoices/{number}"
    assert "overdue" in page_text(operator.get(url + "?tenant=alpha"))
    bad = operator.post(url + "/paid?tenant=alpha", data={"method": "wire", "reference": ""})
    assert bad.status_code == 400
    admin = login("alpha-admin")
    assert admin.post(url + "/paid", data={"method": "wire", "reference": "X"}).status_code == 403
    ok = operator.post(url + "/paid?tenant=alpha",
                       data={"method": "wire", "reference": "FED-20261201-77"})
    assert ok.status_code == 302
    with app.app_context(), unscoped():
        row = db.session.scalar(select(Invoice).where(Invoice.number == number))
        assert row.status == "paid" and row.paid_minor == row.total_minor
        assert db.session.scalar(select(InvoicePayment.reference)) == "FED-20261201-77"
        assert db.session.scalar(select(func.count(AuditEvent.id)).where(
            AuditEvent.action == "invoice.payment")) == 1


def test_void_returns_the_credit_it_took(app, world, ctx):
    tenant = _tenant(world=world)
    ledger.post_entry(tenant, ACTOR, "topup", 10_000, "credit")
    invoice = invoicing.close_period(tenant, _last_period())
    assert ledger.balance_minor(tenant) == 0
    with pytest.raises(ValidationFailed):
        invoicing.void_invoice(ACTOR, tenant, invoice.number, "")
    invoicing.void_invoice(ACTOR, tenant, invoice.number, "issued on the wrong plan")
    assert ledger.balance_minor(tenant) == 10_000
    with pytest.raises(ValidationFailed):
        invoicing.void_invoice(ACTOR, tenant, invoice.number, "again, twice")


def test_the_pdf_is_rendered_once_stored_and_the_same_on_request(app, world, login):
    with app.app_context():
        tenant = _tenant(world=world)
        invoice = invoicing.close_period(tenant, _last_period())
        number, digest = invoice.number, invoice.pdf_sha256
    assert digest and len(digest) == 64
    response = login("alpha-billing").get(f"/billing/invoices/{number}.pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    import hashlib

    assert hashlib.sha256(response.data).hexdigest() == digest
    text = _pdf_text(response.data)
    assert number in text and "Alpha Ltd" in text and "$499.00" in text
    operator = login("operator")
    assert operator.post(f"/billing/invoices/{number}/render?tenant=alpha").status_code == 302
    with app.app_context(), unscoped():
        row = db.session.scalar(select(Invoice).where(Invoice.number == number))
        assert row.pdf_sha256 == digest  # same snapshot, same bytes
    assert login("alpha-admin").post(f"/billing/invoices/{number}/render").status_code == 403


def test_another_tenants_invoice_is_not_found(app, world, login):
    with app.app_context():
        number = invoicing.close_period(_tenant(world=world), _last_period()).number
    bravo = login("bravo-billing")
    for url in (f"/billing/invoices/{number}", f"/billing/invoices/{number}.pdf"):
        assert bravo.get(url).status_code == 404
    assert number not in page_text(bravo.get("/billing/invoices/"))
    assert number in page_text(login("alpha-billing").get("/billing/invoices/"))


def test_a_killed_close_is_finished_by_the_next_run(app, world, ctx, monkeypatch):
    import invoices.invoice_pdf

    tenant = _tenant(world=world)
    period = _last_period()

    def crash(snapshot):
        raise SystemExit("killed while rendering")

    monkeypatch.setattr(invoices.invoice_pdf, "render_invoice_pdf", crash)
    with pytest.raises(SystemExit):
        invoicing.close_period(tenant, period)
    jobs._pending().clear()  # the process died, and its queued jobs with it
    monkeypatch.undo()
    db.session.rollback()
    issued = invoicing.find_invoice(tenant, period)
    assert issued is not None and issued.pdf_sha256 is None
    again = invoicing.close_period(tenant, period)
    assert again.id == issued.id and again.pdf_sha256
    assert db.session.scalar(select(func.count(Invoice.id))) == 1


@pytest.mark.postgres_only
def test_concurrent_closes_issue_one_invoice(app, world):
    period = _last_period()
    barrier = threading.Barrier(6, timeout=60)
    numbers, errors = [], []

    def close():
        try:
            with app.app_context():
                tenant = _tenant(world=world)
                db.session.close()
                barrier.wait()
                numbers.append(invoicing.close_period(tenant, period).number)
                db.session.remove()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=close, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(set(numbers)) == 1
    with app.app_context(), unscoped():
        assert db.session.scalar(select(func.count(Invoice.id))) == 1


def test_card_terms_are_charged_and_settled_by_the_webhook(app, world, stub, client):
    start = _checkout(app, world, mode="setup", amount=None)
    _deliver(client, stub.complete_checkout(start.session_id))
    with app.app_context():
        tenant = _tenant(world=world)
        card = next(m for m in payments.list_payment_methods(tenant) if m.kind == "card")
        payment_methods.set_default(ACTOR, tenant, card.id)
        invoice = invoicing.close_period(tenant, _last_period())
        jobs.drain()
        number = invoice.number
        assert invoice.payment_terms == "card" and invoice.due_date == invoice.issued_at.date()
    (call,) = stub.requests_for("POST", "/v1/payment_intents")
    assert call.params["amount"] == "49900" and call.params["metadata"]["invoice"] == number
    for event in stub.events_of_type("payment_intent.succeeded"):
        if event["data"]["object"]["metadata"].get("invoice") == number:
            assert _deliver(client, event).status_code == 200
            _deliver(client, event)  # a replay changes nothing
    with app.app_context(), unscoped():
        row = db.session.scalar(select(Invoice).where(Invoice.number == number))
        assert row.status == "paid" and row.paid_minor == 49_900
        assert len(row.payments) == 1


def test_close_period_command(app, world):
    runner = app.test_cli_runner()
    label = _last_period().label
    bad = runner.invoke(args=["billfold", "close-period", "--period", "2026-13"])
    assert bad.exit_code == 1 and "period" in bad.output
    early = runner.invoke(args=["billfold", "close-period", "--period",
                                period_containing(dt.date.today()).label])
    assert early.exit_code == 1 and "has not ended" in early.output
    unknown = runner.invoke(args=["billfold", "close-period", "--tenant", "nobody"])
    assert unknown.exit_code == 1 and "no tenant" in unknown.output
    with app.app_context(), unscoped():
        assert db.session.scalar(select(func.count(Invoice.id))) == 0
    first = runner.invoke(args=["billfold", "close-period", "--period", label])
    assert first.exit_code == 0, first.output
    assert "2 invoice(s)" in first.output and f"alpha {label}: BF-" in first.output
    second = runner.invoke(args=["billfold", "close-period", "--period", label])
    assert second.exit_code == 0
    with app.app_context(), unscoped():
        assert db.session.scalar(select(func.count(Invoice.id))) == 2


@pytest.mark.postgres_only
def test_numbers_under_concurrency_have_no_gap_and_no_duplicate(app, world):
    from tests.factories import ACTOR as FACTORY_ACTOR
    from tests.factories import TenantFactory

    period = _last_period()
    with app.app_context(), unscoped():
        starter = next(p for p in plan_services.list_plans() if p.code == "starter")
        ids = []
        for n in range(10):
            tenant = TenantFactory(slug=f"t{n:02d}", name=f"Tenant {n}")
            plan_services.subscribe(FACTORY_ACTOR, tenant, starter,
                                    starts_on=period.start - dt.timedelta(days=5))
            ids.append(tenant.id)
        db.session.remove()
    barrier = threading.Barrier(len(ids), timeout=60)
    errors = []

    def close(tenant_id):
        try:
            with app.app_context():
                with unscoped():
                    tenant = db.session.get(Tenant, tenant_id)
                db.session.close()
                barrier.wait()
                invoicing.close_period(tenant, period, render=False)
                db.session.remove()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=close, args=(i,), daemon=True) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with app.app_context(), unscoped():
        numbers = sorted(db.session.scalars(select(Invoice.number)))
    year = dt.date.today().year
    assert numbers == [f"BF-{year}-{n:06d}" for n in range(1, len(ids) + 1)]


def test_unlimited_metrics_and_zero_usage_cost_only_the_base_fee(app, world, ctx):
    tenant = _tenant(world=world)
    period = _last_period()
    plans = {p.code: p for p in plan_services.list_plans()}
    with tenant_scope(tenant):
        sub = plan_services.current_subscription(tenant, period.start)
        sub.ends_on = period.start
        db.session.commit()
    plan_services.subscribe(ACTOR, tenant, plans["enterprise"], starts_on=period.start,
                            custom_base_price_minor=400_000)
    ingest_events(tenant, _events(period, "llm_tokens", 900_000_000))  # unlimited
    ingest_events(tenant, _events(period, "storage_gb", 900, prefix="st"))  # 1 TB included
    invoice = invoicing.close_period(tenant, period)
    assert [(line.kind, line.amount_minor) for line in invoice.lines] == [("base_fee", 400_000)]
    usage = {u["metric"]: u for u in invoicing.snapshot_of(invoice)["usage"]}
    assert usage["llm_tokens"]["included"] is None and usage["llm_tokens"]["billable"] == "0.000000"
    bravo = _tenant("b", world)
    quiet = invoicing.close_period(bravo, period)
    assert [(line.kind, line.amount_minor) for line in quiet.lines] == [("base_fee", 9_900)]
    assert invoicing.snapshot_of(quiet)["usage"] == []


def test_illegal_state_changes_are_refused(app, world, ctx):
    tenant = _tenant(world=world)
    invoice = invoicing.close_period(tenant, _last_period())
    invoicing.mark_paid(ACTOR, tenant, invoice.number, "wire", "WIRE-1")
    with pytest.raises(ValidationFailed):
        invoicing.mark_paid(ACTOR, tenant, invoice.number, "wire", "WIRE-2")
    with pytest.raises(ValidationFailed):
        invoicing.void_invoice(ACTOR, tenant, invoice.number, "paid invoices stay")
    with tenant_scope(tenant):
        row = db.session.get(Invoice, invoice.id)
        row.status = "overdue"
        with pytest.raises(InvoiceImmutable):
            db.session.flush()
        db.session.rollback()
