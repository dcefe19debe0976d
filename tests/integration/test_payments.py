"""Stripe payments against a local server that answers as Stripe's API does, with
webhook payloads signed here."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from sqlalchemy import func, select

from invoices import ledger, payments
from invoices.models import CreditPurchase, LedgerEntry, PaymentMethod, StripeEvent
from portal.audit import Actor, AuditEvent
from portal.errors import ValidationFailed
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import unscoped
from tests.conftest import STRIPE_WEBHOOK_SECRET as SECRET
from tests.conftest import page_text
from tests.stripe_stub import sign_payload, signed_webhook

ACTOR = Actor.system("tests")


def _tenant(app, world, key="a"):
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, world.ids[key])
        db.session.expunge(tenant)
        return tenant


def _deliver(client, event, secret=SECRET, timestamp=None):
    payload, header = signed_webhook(event, secret, timestamp)
    return client.post("/webhooks/stripe", data=payload,
                       headers={"Stripe-Signature": header, "Content-Type": "application/json"})


def _checkout(app, world, mode="payment", amount=25_000):
    tenant = _tenant(app, world)
    with app.app_context():
        return payments.start_checkout(tenant, ACTOR, mode=mode, amount_minor=amount,
                                       success_url="http://billfold.test/ok?s={CHECKOUT_SESSION_ID}",
                                       cancel_url="http://billfold.test/cancel")


def _counts(app, tenant_id):
    with app.app_context(), unscoped():
        return tuple(db.session.scalar(select(func.count()).select_from(model)
                                       .where(model.tenant_id == tenant_id))
                     for model in (LedgerEntry, CreditPurchase, PaymentMethod))


def test_checkout_carries_the_customer_and_the_tenant_slug(app, world, stub):
    start = _checkout(app, world)
    session = stub.get(start.session_id)
    assert session["client_reference_id"] == "alpha"
    assert session["customer"].startswith("cus_")
    assert session["amount_total"] == 25_000 and session["mode"] == "payment"
    assert start.url.startswith(stub.url)
    again = _checkout(app, world, mode="setup", amount=None)
    assert stub.get(again.session_id)["customer"] == session["customer"]  # one per tenant


def test_purchase_amount_is_checked_before_stripe_is_called(app, world, stub):
    tenant = _tenant(app, world)
    with app.app_context(), pytest.raises(ValidationFailed):
        payments.start_checkout(tenant, ACTOR, mode="payment", amount_minor=10,
                                success_url="http://x/ok", cancel_url="http://x/no")
    assert stub.requests_for("POST", "/v1/checkout/sessions") == []


def test_completed_checkout_books_a_topup_and_mirrors_the_card(app, world, stub, client):
    start = _checkout(app, world)
    event = stub.complete_checkout(start.session_id, card=("mastercard", "4444", 7, 2031))
    response = _deliver(client, event)
    assert response.status_code == 200 and response.get_json()["outcome"] == "topup booked"
    tenant = _tenant(app, world)
    with app.app_context():
        assert ledger.balance_minor(tenant) == 25_000
        (card,) = [m for m in payments.list_payment_methods(tenant) if m.kind == "card"]
        assert (card.brand, card.last4, card.exp_month, card.exp_year) == ("mastercard", "4444",
                                                                          7, 2031)
        (purchase,) = payments.list_purchases(tenant)
        assert (purchase.status, purchase.amount_minor) == ("succeeded", 25_000)
        assert purchase.receipt_url


def test_setup_checkout_saves_the_card(app, world, stub, client):
    start = _checkout(app, world, mode="setup", amount=None)
    # Cards only, in the form the pinned API version takes (payment_method_types is
    # refused since 2026-09-30.endive).
    (request,) = stub.requests_for("POST", "/v1/checkout/sessions")
    assert request.params["allowed_payment_method_types"] == ["card"]
    assert "payment_method_types" not in request.params
    response = _deliver(client, stub.complete_checkout(start.session_id))
    assert response.get_json()["outcome"] == "card saved"
    assert _counts(app, world.ids["a"]) == (0, 0, 2)  # the world's ACH account and the card


def test_every_event_replayed_ten_times_books_once(app, world, stub, client):
    start = _checkout(app, world)
    paid = stub.complete_checkout(start.session_id)
    charge = stub.get(stub.get(paid["data"]["object"]["payment_intent"])["latest_charge"])
    refund = stub.refund_event(charge["id"], amount=5_000)
    failed = stub.payment_failed_event(amount=9_900, customer=paid["data"]["object"]["customer"])
    for event in (paid, refund, failed):
        outcomes = [_deliver(client, event).get_json()["outcome"] for _ in range(10)]
        assert outcomes[1:] == ["duplicate"] * 9
    assert _counts(app, world.ids["a"]) == (2, 3, 2)
    with app.app_context():
        assert ledger.balance_minor(_tenant(app, world)) == 20_000
    with app.app_context(), unscoped():
        assert db.session.scalar(select(func.count(StripeEvent.id))) == 3


def test_refund_before_its_payment_still_nets_out(app, world, stub, client):
    start = _checkout(app, world)
    paid = stub.complete_checkout(start.session_id)
    charge_id = stub.get(paid["data"]["object"]["payment_intent"])["latest_charge"]
    refund = stub.refund_event(charge_id)
    assert _deliver(client, refund).get_json()["outcome"] == "1 refund(s) booked"
    assert _deliver(client, paid).get_json()["outcome"] == "topup booked"
    with app.app_context():
        tenant = _tenant(app, world)
        assert ledger.balance_minor(tenant) == 0
        kinds = sorted(p.kind for p in payments.list_purchases(tenant))
    assert kinds == ["purchase", "refund"]


@pytest.mark.parametrize("how", ["forged", "stale", "missing", "wrong secret"])
def test_a_bad_signature_is_refused_and_books_nothing(app, world, stub, client, how):
    start = _checkout(app, world)
    event = stub.complete_checkout(start.session_id)
    payload = json.dumps(event).encode()
    headers = {"Content-Type": "application/json"}
    if how == "forged":
        tampered = payload.replace(b"25000", b"99999")
        headers["Stripe-Signature"] = sign_payload(payload, SECRET)
        payload = tampered
    elif how == "stale":
        headers["Stripe-Signature"] = sign_payload(payload, SECRET, timestamp=1_000_000_000)
    elif how == "wrong secret":
        headers["Stripe-Signature"] = sign_payload(payload, "whsec_other")
    response = client.post("/webhooks/stripe", data=payload, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_signature"
    assert _counts(app, world.ids["a"]) == (0, 0, 1)  # only the world's ACH account
    with app.app_context(), unscoped():
        assert db.session.scalar(select(func.count(StripeEvent.id))) == 0


def test_failed_payment_is_a_failed_purchase_row(app, world, stub, client):
    _checkout(app, world, mode="setup", amount=None)  # creates the customer
    with app.app_context(), unscoped():
        customer = payments._account(db.session.get(Tenant, world.ids["a"])).stripe_customer_id
        db.session.rollback()
    event = stub.payment_failed_event(amount=4_200, customer=customer)
    assert _deliver(client, event).get_json()["outcome"] == "failed purchase recorded"
    with app.app_context():
        (row,) = payments.list_purchases(_tenant(app, world))
    assert (row.status, row.amount_minor) == ("failed", 4_200) and row.failure_message
    assert _counts(app, world.ids["a"])[0] == 0  # nothing booked on the ledger


def test_tenant_found_by_client_reference_when_the_customer_is_unknown(app, world, stub, client):
    start = _checkout(app, world)
    event = stub.complete_checkout(start.session_id)
    event["data"]["object"]["customer"] = "cus_unknown_to_billfold"
    assert _deliver(client, event).get_json()["outcome"] == "topup booked"
    with app.app_context():
        assert ledger.balance_minor(_tenant(app, world)) == 25_000


def test_buy_credit_and_add_card_redirect_to_checkout(app, world, stub, login):
    user = login("alpha-billing")
    page = user.get("/billing/payments/")
    assert page.status_code == 200 and "Buy credit" in page_text(page)
    bad = user.post("/billing/payments/buy-credit", data={"amount": "1.00"})
    assert bad.status_code == 400 and "between 5.00" in page_text(bad)
    go = user.post("/billing/payments/buy-credit", data={"amount": "120.00"})
    assert go.status_code == 303 and go.headers["Location"].startswith(stub.url + "/pay/")
    session_id = go.headers["Location"].rsplit("/", 1)[1]
    assert stub.get(session_id)["amount_total"] == 12_000
    card = user.post("/billing/payments/add-card")
    assert card.status_code == 303 and stub.get(
        card.headers["Location"].rsplit("/", 1)[1])["mode"] == "setup"


def test_payments_page_is_scoped_to_the_tenant(app, world, stub, client, login):
    start = _checkout(app, world)
    _deliver(client, stub.complete_checkout(start.session_id))
    text = page_text(login("bravo-admin").get("/billing/payments/"))
    assert "No purchases yet" in text and "$250.00" not in text
    assert "$250.00" in page_text(login("alpha-admin").get("/billing/payments/"))
    assert re.search(r"Visa •••• 4242", page_text(login("alpha-admin").get(
        "/billing/payments/")))


def test_ach_is_checked_and_stored_masked(app, world, login):
    user = login("alpha-billing")
    bad = user.post("/billing/payments/methods/add", data={
        "kind": "ach", "routing_number": "123456789", "account_number": "12"})
    assert bad.status_code == 400
    text = page_text(bad)
    assert "not a valid ABA routing number" in text and "enter 4-17 digits" in text
    ok = user.post("/billing/payments/methods/add", data={
        "kind": "ach", "routing_number": "021000021", "account_number": "9876543210"})
    assert ok.status_code == 302
    with app.app_context():
        methods = payments.list_payment_methods(_tenant(app, world))
    assert [m.last4 for m in methods if m.kind == "ach"] == ["6789", "3210"]  # world's first
    with app.app_context(), unscoped():
        stored = " ".join(str(v) for m in db.session.scalars(select(PaymentMethod))
                          for v in vars(m).values())
    assert "9876543210" not in stored and "021000021" not in stored


def test_invoice_and_wire_are_for_enterprise_only(app, world, login):
    alpha = login("alpha-admin")  # Professional
    refused = alpha.post("/billing/payments/methods/add", data={"kind": "invoice"})
    assert refused.status_code == 400 and "for Enterprise plans" in page_text(refused)
    operator = login("operator")
    with app.app_context(), unscoped():
        from plans import services

        enterprise = next(p for p in services.list_plans() if p.code == "enterprise")
        services.change_plan(ACTOR, db.session.get(Tenant, world.ids["a"]), enterprise,
                             "immediately", custom_base_price_minor=300_000)
    assert alpha.post("/billing/payments/methods/add", data={"kind": "wire"}).status_code == 302
    again = alpha.post("/billing/payments/methods/add", data={"kind": "wire"})
    assert again.status_code == 400 and "already has" in page_text(again)
    assert operator.get("/billing/payments/?tenant=alpha").status_code == 200


def test_the_default_cannot_be_removed_while_invoices_are_open(app, world, login):
    from invoices import invoicing
    from plans.periods import period_containing

    user = login("alpha-admin")
    user.post("/billing/payments/methods/add", data={
        "kind": "ach", "routing_number": "021000021", "account_number": "9876543210"})
    with app.app_context():
        first, second = payments.list_payment_methods(_tenant(app, world))
        assert first.is_default and not second.is_default
        first_id, second_id = first.id, second.id
        invoice = invoicing.close_period(_tenant(app, world),
                                         period_containing(dt.date.today()).previous())
        assert invoice.status == "pending"
        number = invoice.number
    refused = user.post(f"/billing/payments/methods/{first_id}/remove", follow_redirects=True)
    assert "make another method the default first" in page_text(refused)
    with app.app_context():
        invoicing.mark_paid(ACTOR, _tenant(app, world), number, "ach", "ACH-123")
    assert user.post(f"/billing/payments/methods/{first_id}/remove").status_code == 302
    with app.app_context():
        (left,) = payments.list_payment_methods(_tenant(app, world))
        assert left.id == second_id and left.is_default  # the next method took over
    with app.app_context(), unscoped():
        actions = set(db.session.scalars(select(AuditEvent.action).where(
            AuditEvent.action.like("payment_method.%"))))
    assert {"payment_method.add", "payment_method.default", "payment_method.remove"} <= actions


def test_purchase_history_csv_and_date_range(app, world, stub, client, login):
    start = _checkout(app, world)
    _deliver(client, stub.complete_checkout(start.session_id))
    user = login("alpha-billing")
    body = user.get("/billing/payments/purchases.csv").get_data(as_text=True)
    lines = [line for line in body.splitlines() if not line.startswith("#")]
    assert lines[0].startswith("id,date,type,payment_method,amount")
    assert ",purchase,Visa •••• 4242,250.00,USD,succeeded," in lines[1]
    assert "UTC" in body.splitlines()[1]
    empty = user.get("/billing/payments/purchases.csv?from=2020-01-01&to=2020-01-31")
    assert len([r for r in empty.get_data(as_text=True).splitlines()
                if not r.startswith("#")]) == 1  # the header alone
    old = user.get("/billing/payments/?from=2020-01-01&to=2020-01-31")
    assert "No purchases yet" in page_text(old)
    assert user.get("/billing/payments/purchases.csv?from=soon").status_code == 400
