"""Auto-recharge (once per dip, also under concurrent debits), its failure notice by
real SMTP, and refunds issued through Stripe by a Platform Admin."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from invoices import auto_recharge, ledger, payment_methods, payments
from invoices.models import AutoRecharge, CreditPurchase, LedgerEntry
from portal import jobs
from portal.errors import NotFoundError, ValidationFailed
from portal.extensions import db
from tenants.scoping import tenant_scope, unscoped
from tests.conftest import page_text
from tests.integration.test_payments import ACTOR, _checkout, _deliver, _tenant
from tests.smtp_server import SmtpServer, free_port


@pytest.fixture
def smtp(app):
    with SmtpServer() as server:
        saved = app.config.get("MAIL_SERVER"), app.config.get("MAIL_PORT")
        app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=server.port)
        yield server
        app.config.update(MAIL_SERVER=saved[0], MAIL_PORT=saved[1])


def _card_on_file(app, world, stub, client):
    """Alpha saves a card through Checkout and makes it the default."""
    start = _checkout(app, world, mode="setup", amount=None)
    assert _deliver(client, stub.complete_checkout(start.session_id)).status_code == 200
    tenant = _tenant(app, world)
    with app.app_context():
        card = next(m for m in payments.list_payment_methods(tenant) if m.kind == "card")
        payment_methods.set_default(ACTOR, tenant, card.id)
    return tenant


def _enable(app, tenant, threshold=5_000, amount=10_000):
    with app.app_context():
        auto_recharge.configure(ACTOR, tenant, enabled=True, threshold_minor=threshold,
                                amount_minor=amount)


def _post(app, tenant, entry_type, amount, text="test"):
    with app.app_context():
        ledger.post_entry(tenant, ACTOR, entry_type, amount, text)
        return jobs.drain()


def _recharges(app, tenant_id):
    with app.app_context(), unscoped():
        return [(r.status, r.amount_minor, r.balance_at_trigger_minor)
                for r in db.session.scalars(select(AutoRecharge).where(
                    AutoRecharge.tenant_id == tenant_id).order_by(AutoRecharge.id))]


def _deliver_new_events(client, stub, seen, event_type):
    delivered = 0
    for event in stub.events_of_type(event_type):
        if event["id"] not in seen:
            seen.add(event["id"])
            assert _deliver(client, event).status_code == 200
            delivered += 1
    return delivered


def test_a_dip_charges_once_and_the_webhook_books_the_credit(app, world, stub, client):
    tenant = _card_on_file(app, world, stub, client)
    _enable(app, tenant)
    _post(app, tenant, "bonus", 6_000)
    assert _post(app, tenant, "usage", -500) == 0  # 55.00: still over the threshold
    assert _post(app, tenant, "usage", -1_000) == 1  # 45.00: under it, one charge
    _post(app, tenant, "usage", -1_000)  # 35.00: the same dip, no second charge
    intents = stub.requests_for("POST", "/v1/payment_intents")
    assert len(intents) == 1
    params = intents[0].params
    assert (params["amount"], params["off_session"], params["confirm"]) == ("10000", "true",
                                                                            "true")
    assert params["metadata"]["purpose"] == "auto_recharge"
    assert _recharges(app, tenant.id) == [("submitted", 10_000, 4_500)]

    seen = set()
    assert _deliver_new_events(client, stub, seen, "payment_intent.succeeded") >= 1
    with app.app_context():
        assert ledger.balance_minor(tenant) == 13_500
        with tenant_scope(tenant):
            booked = db.session.scalars(select(LedgerEntry).where(
                LedgerEntry.type == "auto_recharge")).all()
        assert [(e.amount_minor, e.source) for e in booked] == [(10_000, "stripe_webhook")]
    assert _recharges(app, tenant.id)[0][0] == "succeeded"
    # Replays change nothing; the account is armed again, so a new dip charges again.
    for event in stub.events_of_type("payment_intent.succeeded"):
        _deliver(client, event)
    _post(app, tenant, "usage", -9_000)  # 45.00 again: a new dip
    assert len(stub.requests_for("POST", "/v1/payment_intents")) == 2


@pytest.mark.postgres_only
def test_concurrent_debits_across_the_threshold_charge_once(app, world, stub, client):
    tenant = _card_on_file(app, world, stub, client)
    _enable(app, tenant, threshold=5_000)
    _post(app, tenant, "bonus", 6_000)
    barrier = threading.Barrier(20, timeout=60)
    errors = []

    def debit():
        try:
            with app.app_context():
                db.session.close()
                barrier.wait()
                ledger.post_entry(tenant, ACTOR, "usage", -100, "concurrent debit")
                jobs.drain()
                db.session.remove()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=debit, daemon=True) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with app.app_context():
        assert ledger.balance_minor(tenant) == 4_000
    assert len(_recharges(app, tenant.id)) == 1
    assert len(stub.requests_for("POST", "/v1/payment_intents")) == 1


def test_a_declined_card_fails_the_recharge_and_notifies_by_email(app, world, stub, client,
                                                                  smtp, login):
    tenant = _card_on_file(app, world, stub, client)
    _enable(app, tenant)
    _post(app, tenant, "bonus", 6_000)
    stub.decline_next_payment("card_declined", message="Your card was declined.")
    _post(app, tenant, "usage", -2_000)
    assert _recharges(app, tenant.id) == [("failed", 10_000, 4_000)]
    (message,) = smtp.messages
    assert message["To"] == tenant.billing_email
    assert "Auto-recharge failed" in message["Subject"]
    assert "Your card was declined." in message.get_body(("plain",)).get_content()
    # The webhook of the same failure adds nothing: one failed purchase, one email.
    _deliver_new_events(client, stub, set(), "payment_intent.payment_failed")
    with app.app_context():
        failed = [p for p in payments.list_purchases(tenant) if p.status == "failed"]
    assert len(failed) == 1 and len(smtp.messages) == 1
    page = page_text(login("alpha-admin").get("/billing/payments/"))
    assert "auto-recharge of $100.00" in page and "Your card was declined." in page
    # The dip goes on: no second attempt until a credit brings the balance back.
    _post(app, tenant, "usage", -1_000)
    assert len(_recharges(app, tenant.id)) == 1


def test_a_notice_that_could_not_be_sent_is_sent_by_the_sweep(app, world, stub, client):
    tenant = _card_on_file(app, world, stub, client)
    _enable(app, tenant)
    _post(app, tenant, "bonus", 6_000)
    app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=free_port())  # nobody listens
    try:
        stub.decline_next_payment()
        _post(app, tenant, "usage", -2_000)
        with app.app_context(), unscoped():
            assert db.session.scalar(select(AutoRecharge.notified_at)) is None
        with SmtpServer() as smtp:
            app.config.update(MAIL_PORT=smtp.port)
            with app.app_context():
                assert auto_recharge.sweep()["notified"] == 1
                assert auto_recharge.sweep()["notified"] == 0
            assert len(smtp.messages) == 1
    finally:
        app.config.update(MAIL_SERVER=None, MAIL_PORT=25)


def test_settings_are_checked_and_audited(app, world, stub, client, login):
    tenant = _tenant(app, world)
    with app.app_context(), pytest.raises(ValidationFailed) as no_card:
        auto_recharge.configure(ACTOR, tenant, enabled=True, threshold_minor=5_000,
                                amount_minor=10_000)
    assert "enabled" in no_card.value.errors
    _card_on_file(app, world, stub, client)
    admin = login("alpha-admin")
    bad = admin.post("/billing/payments/auto-recharge",
                     data={"recharge-enabled": "y", "recharge-threshold": "50",
                           "recharge-amount": "1.00"})
    assert bad.status_code == 400 and "recharge between 5.00" in page_text(bad)
    good = admin.post("/billing/payments/auto-recharge",
                      data={"recharge-enabled": "y", "recharge-threshold": "50",
                            "recharge-amount": "100"})
    assert good.status_code == 302
    assert "On: under $50.00, add $100.00" in page_text(admin.get("/billing/payments/"))
    off = admin.post("/billing/payments/auto-recharge",
                     data={"recharge-threshold": "", "recharge-amount": ""})
    assert off.status_code == 302
    with app.app_context():
        assert not auto_recharge.settings(tenant).auto_recharge_enabled


def _purchase(app, world, stub, client, amount=25_000):
    start = _checkout(app, world, amount=amount)
    _deliver(client, stub.complete_checkout(start.session_id))
    with app.app_context():
        (purchase,) = payments.list_purchases(_tenant(app, world))
        return purchase.id


def test_platform_admin_refunds_through_stripe_once(app, world, stub, client, login):
    purchase_id = _purchase(app, world, stub, client)
    operator = login("operator")
    url = f"/billing/payments/purchases/{purchase_id}/refund?tenant=alpha"
    form = {f"r{purchase_id}-amount": "50.00", f"r{purchase_id}-reason": "duplicate order",
            f"r{purchase_id}-request_key": "k1"}
    assert operator.post(url, data=form).status_code == 302
    assert operator.post(url, data=form).status_code == 302  # the same form again
    # Two requests with one idempotency key: Stripe made one refund.
    (refund,) = [e["data"]["object"] for e in stub.events_of_type("refund.created")]
    assert refund["amount"] == 5_000
    tenant = _tenant(app, world)
    with app.app_context():
        assert ledger.balance_minor(tenant) == 20_000
    # Stripe's webhook for the refund finds it booked.
    _deliver_new_events(client, stub, set(), "charge.refunded")
    with app.app_context():
        assert ledger.balance_minor(tenant) == 20_000
        with tenant_scope(tenant):
            kinds = sorted(db.session.scalars(select(CreditPurchase.kind)))
        assert kinds == ["purchase", "refund"]
    too_much = dict(form, **{f"r{purchase_id}-amount": "250.00",
                             f"r{purchase_id}-request_key": "k2"})
    response = operator.post(url, data=too_much)
    assert response.status_code == 400 and "refund between 0.01 and" in page_text(response)
    assert len(stub.events_of_type("refund.created")) == 1


def test_tenant_roles_cannot_refund(app, world, stub, client, login):
    purchase_id = _purchase(app, world, stub, client)
    for user in ("alpha-admin", "alpha-billing"):
        session = login(user)
        assert "Refund through Stripe" not in page_text(session.get("/billing/payments/"))
        response = session.post(f"/billing/payments/purchases/{purchase_id}/refund",
                                data={f"r{purchase_id}-reason": "please"})
        assert response.status_code == 403
    assert stub.requests_for("POST", "/v1/refunds") == []


def test_another_tenants_purchase_is_not_found(app, world, stub, client, login):
    purchase_id = _purchase(app, world, stub, client)
    bravo = login("bravo-admin")
    assert bravo.get(f"/billing/payments/purchases/{purchase_id}/receipt.pdf").status_code == 404
    with app.app_context(), pytest.raises(NotFoundError):
        payments.get_purchase(_tenant(app, world, "b"), purchase_id)



def test_billing_contact_downloads_a_receipt_pdf(app, world, stub, client, login):
    import subprocess

    purchase_id = _purchase(app, world, stub, client)
    response = login("alpha-billing").get(f"/billing/payments/purchases/{purchase_id}/receipt.pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    assert f"R-alpha-{purchase_id:06d}.pdf" in response.headers["Content-Disposition"]
    text = subprocess.run(["pdftotext", "-", "-"], input=response.data, capture_output=True,
                          check=True).stdout.decode()
    assert "Receipt" in text and "$250.00" in text and f"R-alpha-{purchase_id:06d}" in text
