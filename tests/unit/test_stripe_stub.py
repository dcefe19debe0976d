"""The Stripe stub, exercised through the official ``stripe`` library.

These tests need no database: they never request the ``app`` fixture.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import stripe

from tests.stripe_stub import StripeStub, parse_form, sign_payload, signed_webhook

API_KEY = "sk_test_billfold"
WEBHOOK_SECRET = "whsec_test_billfold"
SUCCESS_URL = "https://billfold.test/billing/paid?session_id={CHECKOUT_SESSION_ID}"
CANCEL_URL = "https://billfold.test/billing/cancelled"


@pytest.fixture
def stub() -> Iterator[StripeStub]:
    with StripeStub() as running:
        yield running


@pytest.fixture
def client(stub: StripeStub) -> stripe.StripeClient:
    return stripe.StripeClient(API_KEY, base_addresses={"api": stub.url}, max_network_retries=0)


def payment_session_params(customer: str, **extra: object) -> dict:
    return {
        "mode": "payment",
        "customer": customer,
        "client_reference_id": "invoice-42",
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
        "line_items": [
            {
                "price_data": {
                    "currency": "eur",
                    "unit_amount": 1250,
                    "product_data": {"name": "Invoice INV-0042"},
                },
                "quantity": 2,
            }
        ],
        "metadata": {"invoice_id": "42"},
        "payment_intent_data": {"metadata": {"invoice_id": "42", "tenant_id": "7"}},
        **extra,
    }


def setup_session_params(customer: str) -> dict:
    return {
        "mode": "setup",
        "customer": customer,
        "client_reference_id": "tenant-7",
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
        "metadata": {"tenant_id": "7"},
        "setup_intent_data": {"metadata": {"tenant_id": "7"}},
    }


def saved_card_customer(client: stripe.StripeClient, stub: StripeStub) -> tuple[str, str]:
    """A customer with a card saved through setup-mode Checkout: (customer id, pm id)."""
    customer = client.v1.customers.create({"email": "ops@acme.test", "name": "Acme"})
    session = client.v1.checkout.sessions.create(setup_session_params(customer.id))
    stub.complete_checkout(session.id, card=("mastercard", "4444", 3, 2031))
    methods = client.v1.payment_methods.list({"customer": customer.id, "type": "card"})
    return customer.id, methods.data[0].id


def construct(event: dict, secret: str = WEBHOOK_SECRET) -> stripe.Event:
    payload, header = signed_webhook(event, WEBHOOK_SECRET)
    return stripe.Webhook.construct_event(payload, header, secret)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


# ------------------------------------------------------------------- customers


def test_customer_create_retrieve_and_update(client: stripe.StripeClient, stub: StripeStub):
    created = client.v1.customers.create(
        {"email": "billing@acme.test", "name": "Acme Ltd", "metadata": {"tenant_id": "7"}}
    )
    assert isinstance(created, stripe.Customer)
    assert created.id.startswith("cus_")
    assert created.object == "customer"
    assert created.livemode is False
    assert isinstance(created.created, int)
    assert created.metadata.to_dict() == {"tenant_id": "7"}

    fetched = client.v1.customers.retrieve(created.id)
    assert (fetched.id, fetched.email, fetched.name) == (
        created.id,
        "billing@acme.test",
        "Acme Ltd",
    )
    assert fetched.invoice_settings.default_payment_method is None

    card = stub.create_payment_method(customer=created.id)
    updated = client.v1.customers.update(
        created.id,
        {
            "name": "Acme Limited",
            "metadata": {"plan": "pro", "tenant_id": ""},
            "invoice_settings": {"default_payment_method": card["id"]},
        },
    )
    assert updated.name == "Acme Limited"
    assert updated.email == "billing@acme.test"
    assert updated.metadata.to_dict() == {"plan": "pro"}
    assert updated.invoice_settings.default_payment_method == card["id"]

    expanded = client.v1.customers.retrieve(
        created.id, {"expand": ["invoice_settings.default_payment_method"]}
    )
    assert isinstance(expanded.invoice_settings.default_payment_method, stripe.PaymentMethod)
    assert expanded.invoice_settings.default_payment_method.card.last4 == "4242"

    method, path, params, headers = stub.requests_for("POST", f"/v1/customers/{created.id}")[0]
    assert params["invoice_settings"] == {"default_payment_method": card["id"]}
    assert params["metadata"] == {"plan": "pro", "tenant_id": ""}
    assert headers["Authorization"] == f"Bearer {API_KEY}"


def test_default_payment_method_must_belong_to_the_customer(
    client: stripe.StripeClient, stub: StripeStub
):
    customer = client.v1.customers.create({"email": "a@acme.test"})
    stranger = stub.create_payment_method()
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.customers.update(
            customer.id, {"invoice_settings": {"default_payment_method": stranger["id"]}}
        )
    assert raised.value.http_status == 400
    assert raised.value.param == "invoice_settings[default_payment_method]"


def test_module_level_configuration_works(stub: StripeStub, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(stripe, "api_key", API_KEY)
    monkeypatch.setattr(stripe, "api_base", stub.url)
    monkeypatch.setattr(stripe, "max_network_retries", 0)
    customer = stripe.Customer.create(email="legacy@acme.test", metadata={"tenant_id": "3"})
    assert stripe.Customer.retrieve(customer.id).email == "legacy@acme.test"
    assert stub.requests[0].path == "/v1/customers"
    assert stub.requests[0].params == {"email": "legacy@acme.test", "metadata": {"tenant_id": "3"}}


# ----------------------------------------------------------- checkout sessions


def test_payment_session_is_created_and_retrieved_with_expand(
    client: stripe.StripeClient, stub: StripeStub
):
    customer = client.v1.customers.create({"email": "billing@acme.test"})
    session = client.v1.checkout.sessions.create(payment_session_params(customer.id))

    assert isinstance(session, stripe.checkout.Session)
    assert session.id.startswith("cs_test_")
    assert session.url == f"{stub.url}/pay/{session.id}"
    assert (session.status, session.payment_status, session.mode) == ("open", "unpaid", "payment")
    assert (session.amount_total, session.currency) == (2500, "eur")
    assert session.customer == customer.id
    assert session.client_reference_id == "invoice-42"
    assert session.metadata.to_dict() == {"invoice_id": "42"}
    assert session.payment_intent is None

    sent = stub.requests_for("POST", "/v1/checkout/sessions")[0].params
    assert sent["line_items"] == [
        {
            "price_data": {
                "currency": "eur",
                "unit_amount": "1250",
                "product_data": {"name": "Invoice INV-0042"},
            },
            "quantity": "2",
        }
    ]

    stub.complete_checkout(session.id)
    fetched = client.v1.checkout.sessions.retrieve(
        session.id, {"expand": ["payment_intent.latest_charge", "line_items"]}
    )
    assert (fetched.status, fetched.payment_status, fetched.url) == ("complete", "paid", None)
    intent = fetched.payment_intent
    assert isinstance(intent, stripe.PaymentIntent)
    assert intent.id.startswith("pi_")
    assert (intent.status, intent.amount, intent.currency) == ("succeeded", 2500, "eur")
    assert intent.metadata.to_dict() == {"invoice_id": "42", "tenant_id": "7"}
    charge = intent.latest_charge
    assert isinstance(charge, stripe.Charge)
    assert charge.id.startswith("ch_")
    assert charge.receipt_url.startswith(f"{stub.url}/receipts/")
    assert fetched.line_items.data[0].description == "Invoice INV-0042"
    assert fetched.line_items.data[0].amount_total == 2500

    plain = client.v1.checkout.sessions.retrieve(session.id)
    assert plain.payment_intent == intent.id


def test_setup_session_saves_the_card(client: stripe.StripeClient, stub: StripeStub):
    customer = client.v1.customers.create({"email": "ops@acme.test"})
    session = client.v1.checkout.sessions.create(setup_session_params(customer.id))
    assert (session.mode, session.amount_total, session.setup_intent) == ("setup", None, None)

    event = stub.complete_checkout(session.id, card=("visa", "1881", 7, 2029))
    assert event["data"]["object"]["payment_status"] == "no_payment_required"

    fetched = client.v1.checkout.sessions.retrieve(session.id, {"expand": ["setup_intent"]})
    setup_intent = fetched.setup_intent
    assert isinstance(setup_intent, stripe.SetupIntent)
    assert setup_intent.id.startswith("seti_")
    assert setup_intent.status == "succeeded"
    assert setup_intent.metadata.to_dict() == {"tenant_id": "7"}

    methods = client.v1.payment_methods.list({"customer": customer.id, "type": "card"})
    assert methods.object == "list" and methods.has_more is False
    assert [m.id for m in methods.data] == [setup_intent.payment_method]
    card = client.v1.payment_methods.retrieve(setup_intent.payment_method).card
    assert (card.brand, card.last4, card.exp_month, card.exp_year) == ("visa", "1881", 7, 2029)


def test_payment_mode_saves_the_card_only_with_setup_future_usage(
    client: stripe.StripeClient, stub: StripeStub
):
    customer = client.v1.customers.create({"email": "billing@acme.test"})
    one_off = client.v1.checkout.sessions.create(payment_session_params(customer.id))
    stub.complete_checkout(one_off.id)
    assert client.v1.payment_methods.list({"customer": customer.id}).data == []

    saving = client.v1.checkout.sessions.create(
        payment_session_params(
            customer.id,
            payment_intent_data={"setup_future_usage": "off_session"},
        )
    )
    stub.complete_checkout(saving.id)
    assert len(client.v1.payment_methods.list({"customer": customer.id}).data) == 1


def test_attach_and_detach_payment_methods(client: stripe.StripeClient, stub: StripeStub):
    customer = client.v1.customers.create({"email": "a@acme.test"})
    card = stub.create_payment_method(card=("amex", "0005", 1, 2032))
    attached = client.v1.payment_methods.attach(card["id"], {"customer": customer.id})
    assert attached.customer == customer.id
    client.v1.customers.update(
        customer.id, {"invoice_settings": {"default_payment_method": card["id"]}}
    )
    detached = client.v1.payment_methods.detach(card["id"])
    assert detached.customer is None
    assert client.v1.customers.retrieve(customer.id).invoice_settings.default_payment_method is None
    assert client.v1.payment_methods.list({"customer": customer.id, "type": "card"}).data == []


# -------------------------------------------------------------------- webhooks


def test_completed_checkout_event_verifies(client: stripe.StripeClient, stub: StripeStub):
    customer = client.v1.customers.create({"email": "billing@acme.test"})
    session = client.v1.checkout.sessions.create(payment_session_params(customer.id))
    event = stub.complete_checkout(session.id)

    assert event["id"].startswith("evt_")
    assert (event["object"], event["type"]) == ("event", "checkout.session.completed")
    assert event["livemode"] is False
    assert event["api_version"] and isinstance(event["created"], int)
    assert event["pending_webhooks"] >= 1
    assert set(event["request"]) == {"id", "idempotency_key"}

    payload = json.dumps(event)
    header = sign_payload(payload, WEBHOOK_SECRET)
    verified = stripe.Webhook.construct_event(payload, header, WEBHOOK_SECRET)
    assert verified.type == "checkout.session.completed"
    completed = verified.data.object
    assert isinstance(completed, stripe.checkout.Session)
    assert completed.id == session.id
    assert completed.client_reference_id == "invoice-42"
    assert (completed.status, completed.payment_status) == ("complete", "paid")
    assert completed.payment_intent.startswith("pi_")

    same = client.construct_event(payload.encode(), header, WEBHOOK_SECRET)
    assert same.id == event["id"]
    assert client.v1.events.retrieve(event["id"]).type == "checkout.session.completed"
    assert stub.events_of_type("checkout.session.completed")[-1]["id"] == event["id"]


def test_signature_matches_the_library_and_rejects_a_wrong_secret(stub: StripeStub):
    payload = '{"id": "evt_1", "object": "event"}'
    stamp = int(time.time())
    assert sign_payload(payload, WEBHOOK_SECRET, stamp) == (
        stripe.WebhookSignature.generate_signature_header(payload, WEBHOOK_SECRET, stamp)
    )
    assert sign_payload(payload.encode(), WEBHOOK_SECRET, stamp) == sign_payload(
        payload, WEBHOOK_SECRET, stamp
    )

    event = stub.payment_failed_event(amount=900, currency="usd")
    payload_bytes, header = signed_webhook(event, WEBHOOK_SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload_bytes, header, "whsec_someone_else")
    stale = sign_payload(payload_bytes, WEBHOOK_SECRET, int(time.time()) - 3600)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload_bytes, stale, WEBHOOK_SECRET)


def test_payment_failed_event(client: stripe.StripeClient, stub: StripeStub):
    customer = client.v1.customers.create({"email": "billing@acme.test"})
    event = construct(
        stub.payment_failed_event(None, 4200, "eur", customer.id, {"invoice_id": "9"})
    )
    assert event.type == "payment_intent.payment_failed"
    intent = event.data.object
    assert isinstance(intent, stripe.PaymentIntent)
    assert (intent.amount, intent.currency, intent.customer) == (4200, "eur", customer.id)
    assert intent.metadata.to_dict() == {"invoice_id": "9"}
    assert intent.status == "requires_payment_method"
    error = intent.last_payment_error
    assert (error.type, error.code, error.decline_code) == (
        "card_error",
        "card_declined",
        "generic_decline",
    )
    assert error.message == "Your card was declined."
    assert error.payment_method.card.last4 == "0002"
    assert client.v1.charges.retrieve(intent.latest_charge).status == "failed"

    again = construct(stub.payment_failed_event(intent.id, code="expired_card"))
    assert again.data.object.id == intent.id
    assert again.data.object.last_payment_error.code == "expired_card"


# ----------------------------------------------------------- payment intents


def test_off_session_payment_succeeds_then_declines(client: stripe.StripeClient, stub: StripeStub):
    customer_id, pm_id = saved_card_customer(client, stub)
    params = {
        "amount": 4900,
        "currency": "usd",
        "customer": customer_id,
        "payment_method": pm_id,
        "off_session": True,
        "confirm": True,
        "description": "Invoice INV-0043",
        "metadata": {"invoice_id": "43"},
    }
    intent = client.v1.payment_intents.create(params)
    assert intent.id.startswith("pi_")
    assert (intent.status, intent.amount_received) == ("succeeded", 4900)
    assert intent.metadata.to_dict() == {"invoice_id": "43"}
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert (charge.amount, charge.paid, charge.status) == (4900, True, "succeeded")
    assert charge.payment_method_details.card.last4 == "4444"
    assert charge.metadata.to_dict() == {"invoice_id": "43"}
    assert client.v1.payment_intents.retrieve(intent.id).status == "succeeded"

    stub.decline_next_payment(code="card_declined")
    with pytest.raises(stripe.CardError) as raised:
        client.v1.payment_intents.create(params)
    error = raised.value
    assert error.http_status == 402
    assert error.code == "card_declined"
    assert error.error.type == "card_error"
    assert error.error.decline_code == "generic_decline"
    assert error.error.payment_intent.status == "requires_payment_method"
    assert error.error.payment_intent.metadata.to_dict() == {"invoice_id": "43"}
    failed = client.v1.payment_intents.retrieve(error.error.payment_intent.id)
    assert failed.last_payment_error.code == "card_declined"

    stub.decline_next_payment(code="insufficient_funds")
    with pytest.raises(stripe.CardError) as raised:
        client.v1.payment_intents.create(params)
    assert raised.value.code == "insufficient_funds"
    assert raised.value.user_message == "Your card has insufficient funds."

    assert client.v1.payment_intents.create(params).status == "succeeded"
    assert [e["type"] for e in stub.events if e["type"].startswith("payment_intent.")] == [
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.payment_failed",
        "payment_intent.succeeded",
    ]


def test_missing_required_param_is_named(client: stripe.StripeClient, stub: StripeStub):
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.payment_intents.create({"currency": "usd"})
    assert (raised.value.http_status, raised.value.param, raised.value.code) == (
        400,
        "amount",
        "parameter_missing",
    )
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.checkout.sessions.create(
            {"mode": "payment", "success_url": SUCCESS_URL, "line_items": [{"quantity": 1}]}
        )
    assert raised.value.param == "line_items[0][price_data]"
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.customers.create({"emial": "typo@acme.test"})
    assert (raised.value.param, raised.value.code) == ("emial", "parameter_unknown")
    assert client.v1.customers.list().data == []


def test_payment_method_types_is_refused_as_the_pinned_api_version_does(
        client: stripe.StripeClient, stub: StripeStub):
    """Since 2026-09-30.endive, Checkout takes ``allowed_payment_method_types`` and no
    ``payment_method_types``, and a PaymentIntent refuses ``payment_method_types``."""
    customer = client.v1.customers.create({"email": "ops@acme.test"})
    params = setup_session_params(customer.id)
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.checkout.sessions.create({**params, "payment_method_types": ["card"]})
    assert (raised.value.param, raised.value.code) == ("payment_method_types",
                                                      "parameter_unknown")
    session = client.v1.checkout.sessions.create(
        {**params, "allowed_payment_method_types": ["card"]})
    assert session.payment_method_types == ["card"]
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.payment_intents.create({"amount": 100, "currency": "usd",
                                          "payment_method_types": ["card"]})
    assert (raised.value.http_status, raised.value.code) == (
        400, "payment_method_types_no_longer_supported")
    assert stub.objects("payment_intent") == []


# --------------------------------------------------------------------- refunds


def test_refunds_and_refund_event(client: stripe.StripeClient, stub: StripeStub):
    customer = client.v1.customers.create({"email": "billing@acme.test"})
    session = client.v1.checkout.sessions.create(payment_session_params(customer.id))
    stub.complete_checkout(session.id)
    intent = client.v1.payment_intents.retrieve(
        client.v1.checkout.sessions.retrieve(session.id).payment_intent
    )

    partial = client.v1.refunds.create({"charge": intent.latest_charge, "amount": 1000})
    assert partial.id.startswith("re_")
    assert (partial.amount, partial.status, partial.charge) == (
        1000,
        "succeeded",
        intent.latest_charge,
    )
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (1000, False)

    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.refunds.create({"charge": intent.latest_charge, "amount": 5000})
    assert raised.value.param == "amount"

    rest = client.v1.refunds.create(
        {"payment_intent": intent.id, "reason": "requested_by_customer"}
    )
    assert rest.amount == 1500
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (2500, True)
    api_event = stub.events_of_type("charge.refunded")[-1]
    assert api_event["request"]["id"] is not None

    other = client.v1.checkout.sessions.create(payment_session_params(customer.id))
    stub.complete_checkout(other.id)
    other_charge = client.v1.payment_intents.retrieve(
        client.v1.checkout.sessions.retrieve(other.id).payment_intent
    ).latest_charge
    event = construct(stub.refund_event(other_charge, amount=700))
    assert event.type == "charge.refunded"
    refunded = event.data.object
    assert isinstance(refunded, stripe.Charge)
    assert (refunded.id, refunded.amount, refunded.amount_refunded) == (other_charge, 2500, 700)
    assert refunded.refunded is False
    assert event.data.previous_attributes.amount_refunded == 0
    assert event.request.id is None

    full = construct(stub.refund_event(other_charge))
    assert (full.data.object.amount_refunded, full.data.object.refunded) == (2500, True)


# ---------------------------------------------------------- protocol details


def test_idempotency_keys_replay_the_first_response(client: stripe.StripeClient, stub: StripeStub):
    options = {"idempotency_key": "create-acme-1"}
    first = client.v1.customers.create({"email": "acme@acme.test"}, options)
    second = client.v1.customers.create({"email": "acme@acme.test"}, options)
    assert first.id == second.id
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(client.v1.customers.list().data) == 1
    recorded = stub.requests_for("POST", "/v1/customers")
    assert [r.headers["Idempotency-Key"] for r in recorded] == ["create-acme-1"] * 2

    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create({"email": "other@acme.test"}, options)

    customer_id, pm_id = saved_card_customer(client, stub)
    stub.decline_next_payment()
    charge = {
        "amount": 500,
        "currency": "usd",
        "customer": customer_id,
        "payment_method": pm_id,
        "off_session": True,
        "confirm": True,
    }
    for _ in range(2):
        with pytest.raises(stripe.CardError):
            client.v1.payment_intents.create(charge, {"idempotency_key": "charge-1"})
    assert len(stub.events_of_type("payment_intent.payment_failed")) == 1


def test_missing_or_wrong_api_key_is_an_authentication_error(stub: StripeStub):
    def client_with(key: str) -> stripe.StripeClient:
        return stripe.StripeClient(key, base_addresses={"api": stub.url}, max_network_retries=0)

    with pytest.raises(stripe.AuthenticationError) as raised:
        client_with("").v1.customers.create({"email": "a@acme.test"})
    assert raised.value.http_status == 401
    assert raised.value.error.type == "authentication_error"
    assert "did not provide an API key" in raised.value.user_message

    with pytest.raises(stripe.AuthenticationError):
        client_with("sk_live_not_for_tests").v1.customers.list()

    with StripeStub(api_key="sk_test_only_this") as strict:
        wrong = stripe.StripeClient(
            "sk_test_another", base_addresses={"api": strict.url}, max_network_retries=0
        )
        with pytest.raises(stripe.AuthenticationError):
            wrong.v1.customers.list()
        right = stripe.StripeClient(
            "sk_test_only_this", base_addresses={"api": strict.url}, max_network_retries=0
        )
        assert right.v1.customers.list().data == []


def test_unknown_objects_and_routes_are_invalid_request_errors(client: stripe.StripeClient):
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.customers.retrieve("cus_doesnotexist")
    assert (raised.value.http_status, raised.value.code, raised.value.param) == (
        404,
        "resource_missing",
        "id",
    )
    assert raised.value.user_message == "No such customer: 'cus_doesnotexist'"

    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.checkout.sessions.create({**setup_session_params("cus_missing")})
    assert (raised.value.http_status, raised.value.param) == (400, "customer")

    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.raw_request("get", "/v1/invoices/in_123")
    assert (raised.value.http_status, raised.value.code) == (404, "resource_missing")
    assert raised.value.error.type == "invalid_request_error"


def test_form_decoding_matches_stripes_encoding():
    body = (
        "line_items[0][price_data][currency]=usd&line_items[0][quantity]=1"
        "&line_items[1][quantity]=2&expand[]=payment_intent&expand[]=customer"
        "&metadata[0]=zero&metadata[plan]=&confirm=true"
    )
    assert parse_form(body) == {
        "line_items": [{"price_data": {"currency": "usd"}, "quantity": "1"}, {"quantity": "2"}],
        "expand": ["payment_intent", "customer"],
        "metadata": {"0": "zero", "plan": ""},
        "confirm": "true",
    }


def test_wire_format_of_responses_and_errors(client: stripe.StripeClient, stub: StripeStub):
    customer = client.v1.customers.create({"email": "billing@acme.test"})
    session = client.v1.checkout.sessions.create(payment_session_params(customer.id))
    stub.complete_checkout(session.id)

    def get(path: str, key: str | None = API_KEY) -> tuple[int, dict, dict]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        request = urllib.request.Request(stub.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, dict(response.headers), json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                return error.code, dict(error.headers), json.load(error)

    status, headers, body = get(
        f"/v1/checkout/sessions/{session.id}?expand[]=payment_intent&expand[]=customer"
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert headers["Request-Id"].startswith("req_")
    assert body["payment_intent"]["object"] == "payment_intent"
    assert body["customer"]["email"] == "billing@acme.test"

    status, _, body = get("/v1/customers")
    assert status == 200
    assert body["object"] == "list" and body["url"] == "/v1/customers"

    status, _, body = get("/v1/customers", key=None)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, _, body = get("/v1/no_such_things/x")
    assert status == 404
    assert (body["error"]["type"], body["error"]["code"]) == (
        "invalid_request_error",
        "resource_missing",
    )
    status, _, body = get(f"/v1/customers/{customer.id}?expand[]=name")
    assert status == 400 and body["error"]["param"] == "expand"


def test_reset_forgets_everything(client: stripe.StripeClient, stub: StripeStub):
    client.v1.customers.create({"email": "a@acme.test"}, {"idempotency_key": "k"})
    stub.decline_next_payment()
    stub.reset()
    assert stub.requests == [] and stub.events == []
    assert client.v1.customers.list().data == []
    again = client.v1.customers.create({"email": "b@acme.test"}, {"idempotency_key": "k"})
    assert again.email == "b@acme.test"


def test_parallel_requests(client: stripe.StripeClient, stub: StripeStub):
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(
            pool.map(
                lambda n: client.v1.customers.create({"email": f"c{n}@acme.test"}).id, range(24)
            )
        )
    assert len(set(ids)) == 24
    assert len(stub.requests_for("POST", "/v1/customers")) == 24


def test_stop_closes_the_port():
    stub = StripeStub().start()
    url = stub.url
    stub.stop()
    stub.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/v1/customers", timeout=2)
    with pytest.raises(RuntimeError):
        _ = stub.url


# ---------------------------------------------------------- hosted checkout page


def test_hosted_checkout_page_completes_and_redirects(
    client: stripe.StripeClient, stub: StripeStub
):
    customer = client.v1.customers.create({"email": "billing@acme.test", "name": "Acme"})
    session = client.v1.checkout.sessions.create(payment_session_params(customer.id))

    with urllib.request.urlopen(session.url, timeout=5) as page:
        assert page.status == 200
        html_text = page.read().decode()
    assert f'action="/pay/{session.id}"' in html_text
    assert ">Pay</button>" in html_text
    assert "25.00 EUR" in html_text

    opener = urllib.request.build_opener(_NoRedirect)
    declined = urllib.parse.urlencode({"cardNumber": "4000 0000 0000 0002"}).encode()
    with pytest.raises(urllib.error.HTTPError) as raised:
        opener.open(urllib.request.Request(session.url, data=declined, method="POST"), timeout=5)
    with raised.value as response:
        assert response.code == 402
        assert "Your card was declined." in response.read().decode()
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"

    form = urllib.parse.urlencode(
        {"cardNumber": "5555 5555 5555 4444", "cardExpiry": "04 / 31", "cardCvc": "123"}
    ).encode()
    with pytest.raises(urllib.error.HTTPError) as raised:
        opener.open(urllib.request.Request(session.url, data=form, method="POST"), timeout=5)
    with raised.value as response:
        assert response.code == 303
        assert response.headers["Location"] == SUCCESS_URL.replace(
            "{CHECKOUT_SESSION_ID}", session.id
        )

    done = client.v1.checkout.sessions.retrieve(session.id, {"expand": ["payment_intent"]})
    assert (done.status, done.payment_status) == ("complete", "paid")
    assert done.customer_details.email == "billing@acme.test"
    card = client.v1.payment_methods.retrieve(done.payment_intent.payment_method).card
    assert (card.brand, card.last4, card.exp_month, card.exp_year) == (
        "mastercard",
        "4444",
        4,
        2031,
    )

    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(session.url, timeout=5)
    with raised.value as response:
        assert response.code == 410

    receipt_url = client.v1.charges.retrieve(done.payment_intent.latest_charge).receipt_url
    with urllib.request.urlopen(receipt_url, timeout=5) as receipt:
        assert "25.00 EUR" in receipt.read().decode()
