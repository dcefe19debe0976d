"""A local stand-in for the part of Stripe's REST API that Billfold uses.

``StripeStub`` runs a small threaded HTTP server on 127.0.0.1 (a free port) that
answers as ``https://api.stripe.com`` does for customers, Checkout Sessions,
PaymentMethods, PaymentIntents, SetupIntents, charges, refunds, balance
transactions and events, so tests can drive the official ``stripe`` library
against it::

    with StripeStub() as stub:
        client = stripe.StripeClient(
            "sk_test_x", base_addresses={"api": stub.url}, max_network_retries=0
        )
        # or, for the module-level API:
        # stripe.api_key, stripe.api_base = "sk_test_x", stub.url

As in pytest::

    @pytest.fixture
    def stripe_stub():
        with StripeStub() as stub:
            yield stub

What it mimics:

* Requests are form encoded with nested keys (``metadata[plan]``,
  ``line_items[0][price_data][currency]``, ``expand[0]`` or ``expand[]``) and
  authenticated with ``Authorization: Bearer sk_test_...``; responses are JSON
  objects with ``id``, ``object``, ``created``, ``livemode`` and ``metadata``.
  Money is always an integer amount in the currency's minor unit.
* Errors are ``{"error": {"type", "code", "message", "param", ...}}`` with the
  status Stripe uses: 400 for bad parameters, 401 for a missing or wrong key,
  402 for card declines, 404 for unknown objects and URLs.
* POSTs honour ``Idempotency-Key``: a repeat with the same key, path and
  parameters replays the first response; the same key with other parameters is
  an ``idempotency_error``.
* ``{stub.url}/pay/{session_id}`` is a minimal hosted Checkout page whose form
  completes the session and redirects (303) to ``success_url``.
* Helpers build the webhook events Stripe would send (``complete_checkout``,
  ``refund_event``, ``payment_failed_event``) and sign them
  (``sign_payload``, ``signed_webhook``) the way ``stripe.Webhook`` verifies.
* Faults on request: ``fail_next`` answers the next request to a path with a
  5xx ``api_error`` without executing it; ``delay_next`` executes it and holds
  the answer back, so a client's timeout fires after Stripe did the work.

Only the standard library is used.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import html
import json
import re
import secrets
import string
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_CARD",
    "RecordedRequest",
    "StripeStub",
    "StubError",
    "sign_payload",
    "signed_webhook",
]

JSON = dict[str, Any]
Card = tuple[str, str, int, int]
"""A card as ``(brand, last4, exp_month, exp_year)``."""

DEFAULT_API_VERSION = "2026-10-28.endive"
DEFAULT_CARD: Card = ("visa", "4242", 12, 2030)

_ID_ALPHABET = string.ascii_letters + string.digits
_RECORDED_HEADERS = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Stripe-Account",
    "Stripe-Version",
    "User-Agent",
)
_ZERO_DECIMAL_CURRENCIES = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)

# code -> (default decline_code, message), as Stripe reports card failures.
_DECLINES: dict[str, tuple[str | None, str]] = {
    "card_declined": ("generic_decline", "Your card was declined."),
    "insufficient_funds": ("insufficient_funds", "Your card has insufficient funds."),
    "expired_card": (None, "Your card has expired."),
    "incorrect_cvc": (None, "Your card's security code is incorrect."),
    "incorrect_number": (None, "Your card number is incorrect."),
    "processing_error": (
        None,
        "An error occurred while processing your card. Try again in a little bit.",
    ),
    "authentication_required": (
        "authentication_required",
        "Your card was declined. This transaction requires authentication.",
    ),
}
_DECLINE_CODE_MESSAGES = {
    "insufficient_funds": "Your card has insufficient funds.",
    "authentication_required": "Your card was declined. This transaction requires authentication.",
}

# Stripe's test card numbers that fail, for the hosted Checkout page.
_TEST_CARD_FAILURES: dict[str, tuple[str, str | None]] = {
    "4000000000000002": ("card_declined", "generic_decline"),
    "4000000000009995": ("card_declined", "insufficient_funds"),
    "4000000000000069": ("expired_card", None),
    "4000000000000127": ("incorrect_cvc", None),
}


def _now() -> int:
    return int(time.time())


def _new_id(prefix: str, length: int = 24) -> str:
    """An id shaped like Stripe's: a type prefix and random alphanumerics."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


# --------------------------------------------------------------------------- errors


class StubError(Exception):
    """A Stripe API error: an HTTP status and the response's ``error`` hash."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error: JSON = {"type": error_type, "message": message}
        if code is not None:
            self.error["code"] = code
            self.error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            self.error["param"] = param
        self.error.update(extra)

    @classmethod
    def from_error(cls, status: int, error: JSON) -> StubError:
        """An error carrying an already built ``error`` hash."""
        exc = cls(status, error["type"], error["message"])
        exc.error = dict(error)
        return exc


def _invalid(
    message: str, param: str | None = None, code: str | None = None, status: int = 400
) -> StubError:
    return StubError(status, "invalid_request_error", message, code=code, param=param)


def _missing_param(param: str) -> StubError:
    return _invalid(f"Missing required param: {param}.", param, "parameter_missing")


def _no_such(kind: str, object_id: str, param: str = "id", status: int = 404) -> StubError:
    label = "PaymentMethod" if kind == "payment_method" else kind
    return _invalid(f"No such {label}: '{object_id}'", param, "resource_missing", status)


# --------------------------------------------------------------- request parsing

_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT_RE = re.compile(r"\[([^\[\]]*)\]")


def parse_form(body: str) -> JSON:
    """Decode Stripe's form encoding into nested dicts and lists.

    ``a[b][c]=1`` becomes ``{"a": {"b": {"c": "1"}}}``; objects whose keys are
    all indexes (``line_items[0][...]``, ``expand[0]``) and ``expand[]``-style
    appends become lists. Leaf values stay strings, as on the wire. Keys under
    ``metadata`` are never turned into list indexes.
    """
    root: JSON = {}
    appended: dict[tuple[str, ...], int] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        match = _KEY_RE.match(key)
        parts = [match.group(1), *_SEGMENT_RE.findall(match.group(2))] if match else [key]
        for index in range(1, len(parts)):
            if parts[index] == "":
                prefix = tuple(parts[:index])
                parts[index] = str(appended.get(prefix, 0))
                appended[prefix] = int(parts[index]) + 1
        node = root
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise _invalid(
                    f"Invalid object: {_param_name(parts[: depth + 1])}",
                    _param_name(parts[: depth + 1]),
                )
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise _invalid(f"Invalid object: {key}", key)
        node[parts[-1]] = value
    return _listify(root, "")


def _param_name(parts: list[str]) -> str:
    return parts[0] + "".join(f"[{part}]" for part in parts[1:])


def _listify(value: Any, key: str) -> Any:
    if not isinstance(value, dict):
        return value
    if key == "metadata":
        return value
    converted = {k: _listify(v, k) for k, v in value.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


Spec = Mapping[str, Any]
"""Allowed parameters: name -> None (any value), a nested Spec, or [Spec] for arrays."""


def _check_params(params: Mapping[str, Any], spec: Spec, prefix: str = "") -> None:
    """Reject parameters Stripe does not know, as it does (``parameter_unknown``)."""
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else key
        if key not in spec:
            raise _invalid(f"Received unknown parameter: {name}", name, "parameter_unknown")
        sub = spec[key]
        if sub is None or value == "":
            continue
        if isinstance(sub, list):
            if not isinstance(value, list):
                raise _invalid(f"Invalid array: {name}", name)
            for index, item in enumerate(value):
                if not isinstance(item, dict):
                    raise _invalid(f"Invalid object: {name}[{index}]", f"{name}[{index}]")
                _check_params(item, sub[0], f"{name}[{index}]")
        elif isinstance(value, dict):
            _check_params(value, sub, name)
        else:
            raise _invalid(f"Invalid object: {name}", name)


def _no_payment_method_types(params: Mapping[str, Any]) -> None:
    """Since API version 2026-09-30.endive a PaymentIntent or SetupIntent takes no
    ``payment_method_types``: Stripe answers 400 with this code."""
    if "payment_method_types" in params:
        raise _invalid(
            "payment_method_types is no longer supported in this API version; use "
            "allowed_payment_method_types or dynamic payment methods instead.",
            "payment_method_types", "payment_method_types_no_longer_supported")


def _payment_method_types(params: Mapping[str, Any]) -> list[str]:
    """The payment method types a Checkout Session offers: the allowed ones (card only
    here, the one method the stub's hosted page takes), else card."""
    allowed = params.get("allowed_payment_method_types")
    if allowed is None:
        return ["card"]
    if not isinstance(allowed, list) or not allowed or "card" not in allowed:
        raise _invalid("allowed_payment_method_types must include card in this stub",
                       "allowed_payment_method_types")
    return ["card"]


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"Invalid string: {param}", param)
    return value


def _optional_string(params: Mapping[str, Any], key: str, param: str | None = None) -> str | None:
    """A nullable string parameter; the empty string means null, as in Stripe."""
    if key not in params:
        return None
    value = _string(params[key], param or key)
    return value or None


def _object(params: Mapping[str, Any], key: str) -> JSON:
    """A nested hash parameter (``payment_intent_data[...]``), ``{}`` when absent."""
    value = params.get(key) or {}
    if not isinstance(value, dict):
        raise _invalid(f"Invalid object: {key}", key)
    return value


def _required(params: Mapping[str, Any], key: str, param: str | None = None) -> Any:
    value = params.get(key)
    if value is None or value == "":
        raise _missing_param(param or key)
    return value


def _int(value: Any, param: str, minimum: int | None = None) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise _invalid(f"Invalid integer: {value}", param, "parameter_invalid_integer")
    number = int(value)
    if minimum is not None and number < minimum:
        raise _invalid(
            f"This value must be greater than or equal to {minimum}.",
            param,
            "parameter_invalid_integer",
        )
    return number


def _bool(value: Any, param: str) -> bool:
    if value in ("true", "false"):
        return value == "true"
    raise _invalid(f"Invalid boolean: {value}", param)


def _currency(value: Any, param: str = "currency") -> str:
    currency = _string(value, param).lower()
    if not re.fullmatch(r"[a-z]{3}", currency):
        raise _invalid(f"Invalid currency: {currency}.", param)
    return currency


def _url(value: Any, param: str) -> str:
    url = _string(value, param)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _invalid("Not a valid URL", param, "url_invalid")
    return url


def _metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    """Validate a metadata hash: string keys and values within Stripe's limits."""
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"Invalid object: {param}", param)
    if len(value) > 50:
        raise _invalid("You can have at most 50 metadata keys.", param)
    for key, item in value.items():
        if not isinstance(item, str):
            raise _invalid(
                f"Invalid value type: {param}[{key}] must be a string", f"{param}[{key}]"
            )
        if len(key) > 40:
            raise _invalid(
                "Metadata keys can have a maximum length of 40 characters.", f"{param}[{key}]"
            )
        if len(item) > 500:
            raise _invalid(
                "Metadata values can have a maximum length of 500 characters.", f"{param}[{key}]"
            )
    return dict(value)


def _merge_metadata(current: Mapping[str, str], value: Any, param: str = "metadata") -> JSON:
    """Stripe's update semantics: new keys are added, keys set to "" are removed."""
    if value == "":
        return {}
    merged = dict(current)
    for key, item in _metadata(value, param).items():
        if item == "":
            merged.pop(key, None)
        else:
            merged[key] = item
    return merged


def _expand_paths(params: Mapping[str, Any]) -> list[str]:
    value = params.get("expand")
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in values):
        raise _invalid("Invalid array: expand", "expand")
    return values


def _decline(
    code: str, decline_code: str | None, message: str | None
) -> tuple[str, str | None, str]:
    """``(code, decline_code, message)`` with Stripe's defaults filled in."""
    default_decline, default_message = _DECLINES.get(code, (None, "Your card was declined."))
    decline = decline_code or default_decline
    return code, decline, message or _DECLINE_CODE_MESSAGES.get(decline or "", default_message)


def _format_amount(amount: int, currency: str) -> str:
    if currency in _ZERO_DECIMAL_CURRENCIES:
        return f"{amount:,} {currency.upper()}"
    return f"{amount // 100:,}.{amount % 100:02d} {currency.upper()}"


def _card_brand(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if re.match(r"5[1-5]|2[2-7]", number):
        return "mastercard"
    if number.startswith(("34", "37")):
        return "amex"
    if number.startswith(("6011", "65")):
        return "discover"
    return "unknown"


# --------------------------------------------------------------- parameter specs

_EXPAND: Spec = {"expand": None}
_ADDRESS: Spec = {k: None for k in ("city", "country", "line1", "line2", "postal_code", "state")}
_CUSTOMER_FIELDS: Spec = {
    "address": _ADDRESS,
    "description": None,
    "email": None,
    "expand": None,
    "invoice_settings": {
        "custom_fields": None,
        "default_payment_method": None,
        "footer": None,
        "rendering_options": None,
    },
    "metadata": None,
    "name": None,
    "phone": None,
    "preferred_locales": None,
    "shipping": None,
    "tax_exempt": None,
}
_CUSTOMER_CREATE: Spec = {**_CUSTOMER_FIELDS, "payment_method": None}
_LIST: Spec = {"ending_before": None, "expand": None, "limit": None, "starting_after": None}
_PRODUCT_DATA: Spec = {
    "description": None,
    "images": None,
    "metadata": None,
    "name": None,
    "tax_code": None,
}
_CHECKOUT_CREATE: Spec = {
    "allow_promotion_codes": None,
    "automatic_tax": None,
    "billing_address_collection": None,
    "cancel_url": None,
    "client_reference_id": None,
    "currency": None,
    "customer": None,
    "customer_creation": None,
    "customer_email": None,
    "customer_update": None,
    "expand": None,
    "expires_at": None,
    "invoice_creation": None,
    "line_items": [
        {
            "price": None,
            "price_data": {
                "currency": None,
                "product": None,
                "product_data": _PRODUCT_DATA,
                "tax_behavior": None,
                "unit_amount": None,
            },
            "quantity": None,
        }
    ],
    "locale": None,
    "metadata": None,
    "mode": None,
    "payment_intent_data": {
        "capture_method": None,
        "description": None,
        "metadata": None,
        "receipt_email": None,
        "setup_future_usage": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
    },
    "allowed_payment_method_types": None,
    "excluded_payment_method_types": None,
    "setup_intent_data": {"description": None, "metadata": None},
    "submit_type": None,
    "success_url": None,
    "ui_mode": None,
}
_PAYMENT_INTENT_CREATE: Spec = {
    "allowed_payment_method_types": None,
    "amount": None,
    "automatic_payment_methods": None,
    "capture_method": None,
    "confirm": None,
    "currency": None,
    "customer": None,
    "description": None,
    "error_on_requires_action": None,
    "expand": None,
    "metadata": None,
    "off_session": None,
    "payment_method": None,
    "receipt_email": None,
    "return_url": None,
    "setup_future_usage": None,
    "statement_descriptor": None,
    "statement_descriptor_suffix": None,
}
_REFUND_CREATE: Spec = {
    "amount": None,
    "charge": None,
    "expand": None,
    "metadata": None,
    "payment_intent": None,
    "reason": None,
}


# Fields holding an object id that ``expand[]`` may replace with the object.
_EXPANDABLE = frozenset(
    {
        "balance_transaction",
        "charge",
        "customer",
        "default_payment_method",
        "latest_charge",
        "line_items",
        "payment_intent",
        "payment_method",
        "product",
        "setup_intent",
        "source",
    }
)


# ----------------------------------------------------------------------- routing

_Handler = Callable[..., JSON]
_API_ROUTES: list[tuple[str, re.Pattern[str], str]] = []


def _route(method: str, pattern: str) -> Callable[[_Handler], _Handler]:
    """Register a ``StripeStub`` method as the handler of ``method pattern``.

    ``{id}`` in the pattern matches one path segment, passed to the handler.
    """

    def register(func: _Handler) -> _Handler:
        regex = re.compile("^" + pattern.replace("{id}", "([^/]+)") + "$")
        _API_ROUTES.append((method, regex, func.__name__))
        return func

    return register


class RecordedRequest(NamedTuple):
    """One request the stub received.

    ``params`` are the decoded query and form parameters (nested dicts and
    lists of strings); ``headers`` holds those of ``Authorization``,
    ``Content-Type``, ``Idempotency-Key``, ``Stripe-Account``,
    ``Stripe-Version`` and ``User-Agent`` that were sent.
    """

    method: str
    path: str
    params: JSON
    headers: dict[str, str]


@dataclass
class _Call:
    """An API request being handled."""

    method: str
    path: str
    params: JSON
    headers: dict[str, str]
    request_id: str

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes
    delay: float = 0.0  # seconds to hold the answer back


@dataclass
class _Fault:
    """A fault queued for requests ``method path``: an HTTP ``status`` to answer
    with, or ``delay`` seconds to hold the answer back; ``times`` requests left."""

    method: str
    path: str
    status: int | None
    delay: float
    times: int


@dataclass
class _Replay:
    fingerprint: tuple[str, str, str]
    response: _Response
    request_id: str


class _Store:
    """In-memory Stripe objects, keyed by id, in creation order.

    Each value is the JSON dict the API returns. ``extras`` holds per-object
    state Stripe keeps but does not show (a Checkout Session's line items,
    ``payment_intent_data``; whether a PaymentMethod has been used).
    """

    def __init__(self) -> None:
        self.objects: dict[str, JSON] = {}
        self.extras: dict[str, JSON] = {}

    def add(self, obj: JSON, **extras: Any) -> JSON:
        self.objects[obj["id"]] = obj
        self.extras[obj["id"]] = dict(extras)
        return obj

    def find(self, object_id: str) -> JSON | None:
        return self.objects.get(object_id)

    def get(self, kind: str, object_id: Any, *, param: str = "id", status: int = 404) -> JSON:
        """The object of type ``kind`` with this id, or Stripe's ``resource_missing`` error."""
        if not isinstance(object_id, str):
            raise _invalid(f"Invalid string: {param}", param)
        obj = self.objects.get(object_id)
        if obj is None or obj["object"] != kind or obj.get("deleted"):
            raise _no_such(kind, object_id, param, status)
        return obj

    def all(self, kind: str) -> list[JSON]:
        """Live objects of one type, newest first, as Stripe lists them."""
        return [
            obj
            for obj in reversed(self.objects.values())
            if obj["object"] == kind and not obj.get("deleted")
        ]


# ----------------------------------------------------------------------- signing


def sign_payload(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send with this webhook body.

    ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<payload>" keyed by secret>``,
    which is what ``stripe.Webhook.construct_event`` verifies.
    """
    text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    stamp = _now() if timestamp is None else int(timestamp)
    digest = hmac.new(secret.encode("utf-8"), f"{stamp}.{text}".encode(), hashlib.sha256)
    return f"t={stamp},v1={digest.hexdigest()}"


def signed_webhook(event: JSON, secret: str, timestamp: int | None = None) -> tuple[bytes, str]:
    """An event as Stripe delivers it: the JSON body and its ``Stripe-Signature`` header."""
    payload = json.dumps(event, indent=2).encode("utf-8")
    return payload, sign_payload(payload, secret, timestamp)


# -------------------------------------------------------------------------- stub


class StripeStub:
    """A fake ``api.stripe.com`` on 127.0.0.1 with in-memory state.

    ``api_key``: the only key accepted; by default any test-mode key
    (``sk_test_...`` or ``rk_test_...``) is. ``strict``: reject parameters the
    stub does not know, as Stripe rejects unknown ones. ``api_version``: what
    events report as their ``api_version``.

    Public state: ``url`` (``http://127.0.0.1:<port>``), ``requests`` (every
    request received, as ``RecordedRequest``) and ``events`` (every event
    generated, oldest first). All access to state is serialised by one lock,
    while the server handles connections on separate daemon threads.
    """

    sign_payload = staticmethod(sign_payload)
    signed_webhook = staticmethod(signed_webhook)

    def __init__(
        self,
        api_key: str | None = None,
        *,
        strict: bool = True,
        api_version: str = DEFAULT_API_VERSION,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.strict = strict
        self.api_version = api_version
        self._address = (host, port)
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[RecordedRequest] = []
        self.events: list[JSON] = []
        self._store = _Store()
        self._declines: deque[tuple[str, str | None, str]] = deque()
        self._idempotency: dict[tuple[str, str], _Replay] = {}
        self._faults: list[_Fault] = []

    # ------------------------------------------------------------- lifecycle

    def start(self) -> StripeStub:
        """Bind the port and serve on a daemon thread. Returns the stub."""
        if self._server is not None:
            return self
        server = _Server(self._address, self)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"stripe-stub:{server.server_address[1]}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call more than once."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> StripeStub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL to use as ``api_base``, e.g. ``http://127.0.0.1:53117``."""
        if self._server is None:
            raise RuntimeError("StripeStub is not running: use start() or a with block")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"<StripeStub {where}>"

    def reset(self) -> None:
        """Forget all objects, events, recorded requests, idempotency keys, declines
        and queued faults."""
        with self._lock:
            self.requests.clear()
            self.events.clear()
            self._store = _Store()
            self._declines.clear()
            self._idempotency.clear()
            self._faults.clear()

    # --------------------------------------------------------------- helpers

    def get(self, object_id: str) -> JSON:
        """A copy of any stored object (customer, pi_, ch_, re_, evt_, ...) by id."""
        with self._lock:
            obj = self._store.find(object_id)
            if obj is None:
                raise KeyError(object_id)
            return copy.deepcopy(obj)

    def objects(self, kind: str) -> list[JSON]:
        """Copies of the live objects of one type (``checkout.session``,
        ``payment_intent``, ...), newest first."""
        with self._lock:
            return copy.deepcopy(self._store.all(kind))

    def requests_for(self, method: str, path: str) -> list[RecordedRequest]:
        """Recorded requests with this method and exact path."""
        with self._lock:
            return [r for r in self.requests if r.method == method.upper() and r.path == path]

    def events_of_type(self, event_type: str) -> list[JSON]:
        """Copies of the generated events of one type, oldest first."""
        with self._lock:
            return [copy.deepcopy(e) for e in self.events if e["type"] == event_type]

    def decline_next_payment(
        self,
        code: str = "card_declined",
        *,
        decline_code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Make the next confirmed ``POST /v1/payment_intents`` fail with a card error.

        The request gets HTTP 402 with ``type: card_error``, this ``code``, a
        ``decline_code`` (``generic_decline`` for ``card_declined``) and the
        PaymentIntent in status ``requires_payment_method``, as Stripe answers
        a failed off-session payment. Each call queues one decline.
        """
        with self._lock:
            self._declines.append(_decline(code, decline_code, message))

    def fail_next(self, path: str, status: int = 500, *, method: str = "POST",
                  times: int = 1) -> None:
        """Answer the next ``times`` requests ``method path`` (e.g. ``POST
        /v1/checkout/sessions``) with HTTP ``status`` and an ``api_error``.

        As when Stripe fails in front of the API: the request is recorded but not
        executed, and nothing is saved for its idempotency key, so a retry with the
        same key runs it. No ``Stripe-Should-Retry`` header is sent: the ``stripe``
        library retries a 5xx as far as its ``max_network_retries`` allow.
        """
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        with self._lock:
            self._faults.append(_Fault(method.upper(), path, status, 0.0, times))

    def delay_next(self, path: str, seconds: float, *, method: str = "POST",
                   times: int = 1) -> None:
        """Hold back the answer to the next ``times`` requests ``method path`` for
        ``seconds``.

        The request is executed first (and its answer saved for its idempotency
        key), as when Stripe did the work but its answer is slow: a client that
        times out and retries with the same key gets the first answer replayed,
        one with a new key makes a new object.
        """
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        with self._lock:
            self._faults.append(_Fault(method.upper(), path, None, float(seconds), times))

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        """The first queued fault for ``method path``, used up by one request."""
        for fault in self._faults:
            if fault.method == method and fault.path == path:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def create_payment_method(self, card: Card = DEFAULT_CARD, customer: str | None = None) -> JSON:
        """Create a card PaymentMethod, attached to ``customer`` if given; returns a copy."""
        with self._lock:
            owner = self._store.get("customer", customer) if customer is not None else None
            payment_method = self._new_payment_method(card)
            if owner is not None:
                self._attach(payment_method, owner)
            return copy.deepcopy(payment_method)

    def complete_checkout(
        self,
        session_id: str,
        card: Card = DEFAULT_CARD,
        *,
        email: str | None = None,
        name: str | None = None,
    ) -> JSON:
        """Simulate the customer finishing hosted Checkout with ``card``.

        Creates the card PaymentMethod. In ``payment`` mode: a succeeded
        PaymentIntent (metadata and description from ``payment_intent_data``),
        its charge (with ``receipt_url``) and balance transaction; the card is
        attached to the customer only when ``payment_intent_data[setup_future_usage]``
        was set, as Stripe saves cards only then. In ``setup`` mode: a succeeded
        SetupIntent (metadata from ``setup_intent_data``) and the card attached
        to the session's customer. The session becomes ``complete`` with
        ``payment_status`` ``paid`` (``no_payment_required`` in setup mode).

        Returns the ``checkout.session.completed`` event (also kept in
        ``events``, after the ``charge.succeeded``/``payment_intent.succeeded``
        or ``setup_intent.succeeded`` events that Stripe sends first). Raises
        ``ValueError`` if the session is not open.
        """
        with self._lock:
            session = self._store.get("checkout.session", session_id)
            if session["status"] != "open":
                raise ValueError(f"Checkout Session {session_id} is {session['status']}, not open")
            extras = self._store.extras[session_id]
            intent_data: JSON = extras["payment_intent_data"]
            customer = self._store.find(session["customer"]) if session["customer"] else None
            email = email or session["customer_email"] or (customer or {}).get("email")
            name = name or (customer or {}).get("name")
            saves_card = session["mode"] == "setup" or bool(intent_data.get("setup_future_usage"))
            payment_method = self._new_payment_method(card, email=email, name=name)
            if customer is None and (
                session["customer_creation"] == "always"
                or (session["mode"] == "payment" and saves_card)
            ):
                customer = self._new_customer(email=email, name=name)
            if customer is not None and saves_card:
                self._attach(payment_method, customer)
            customer_id = customer["id"] if customer else None

            if session["mode"] == "payment":
                intent = self._new_payment_intent(
                    amount=session["amount_total"],
                    currency=session["currency"],
                    customer=customer_id,
                    payment_method=payment_method["id"],
                    metadata=dict(intent_data.get("metadata", {})),
                    description=intent_data.get("description"),
                    receipt_email=intent_data.get("receipt_email"),
                    setup_future_usage=intent_data.get("setup_future_usage"),
                    statement_descriptor=intent_data.get("statement_descriptor"),
                )
                self._succeed(intent, payment_method, None)
                session["payment_intent"] = intent["id"]
                session["payment_status"] = "paid"
            else:
                setup_data: JSON = extras["setup_intent_data"]
                setup_intent = self._store.add(
                    {
                        "id": _new_id("seti_"),
                        "object": "setup_intent",
                        "application": None,
                        "cancellation_reason": None,
                        "client_secret": None,
                        "created": _now(),
                        "customer": customer_id,
                        "description": setup_data.get("description"),
                        "last_setup_error": None,
                        "latest_attempt": None,
                        "livemode": False,
                        "mandate": None,
                        "metadata": dict(setup_data.get("metadata", {})),
                        "next_action": None,
                        "on_behalf_of": None,
                        "payment_method": payment_method["id"],
                        "payment_method_types": ["card"],
                        "single_use_mandate": None,
                        "status": "succeeded",
                        "usage": "off_session",
                    }
                )
                setup_intent["client_secret"] = f"{setup_intent['id']}_secret_{_new_id('')}"
                self._emit("setup_intent.succeeded", setup_intent)
                session["setup_intent"] = setup_intent["id"]
                session["payment_status"] = "no_payment_required"

            session["status"] = "complete"
            session["url"] = None
            session["customer"] = customer_id
            session["customer_details"] = {
                "address": None,
                "email": email,
                "name": name,
                "phone": None,
                "tax_exempt": "none",
                "tax_ids": [],
            }
            return self._emit("checkout.session.completed", session)

    def refund_event(self, charge_id: str, amount: int | None = None) -> JSON:
        """Refund a charge outside the API (as from the Dashboard).

        Refunds ``amount`` (default: all that is left), updates the charge's
        ``amount_refunded``/``refunded`` and returns the ``charge.refunded``
        event, whose ``data.previous_attributes`` holds the old values.
        """
        with self._lock:
            charge = self._store.get("charge", charge_id)
            self._refund(charge, amount, None, {}, None)
            return copy.deepcopy(self.events[-1])

    def payment_failed_event(
        self,
        payment_intent_id: str | None = None,
        amount: int | None = None,
        currency: str = "usd",
        customer: str | None = None,
        metadata: Mapping[str, str] | None = None,
        *,
        code: str = "card_declined",
        decline_code: str | None = None,
    ) -> JSON:
        """A ``payment_intent.payment_failed`` event with ``last_payment_error``.

        With ``payment_intent_id`` that PaymentIntent fails; otherwise a new
        one is created from ``amount`` (required), ``currency``, ``customer``
        and ``metadata``. The failure uses a failed charge and the card
        ``visa 0002``; the PaymentIntent ends in ``requires_payment_method``.
        """
        with self._lock:
            if payment_intent_id is not None:
                intent = self._store.get("payment_intent", payment_intent_id)
                if intent["status"] == "succeeded":
                    raise ValueError(f"PaymentIntent {payment_intent_id} has already succeeded")
                if metadata:
                    intent["metadata"].update(metadata)
            else:
                if amount is None:
                    raise ValueError("amount is required when no payment_intent_id is given")
                if customer is not None:
                    self._store.get("customer", customer)
                intent = self._new_payment_intent(
                    amount=int(amount),
                    currency=currency.lower(),
                    customer=customer,
                    payment_method=None,
                    metadata=dict(metadata or {}),
                )
            payment_method = self._new_payment_method(("visa", "0002", 12, 2030))
            self._fail(intent, payment_method, _decline(code, decline_code, None), None)
            return copy.deepcopy(self.events[-1])

    # --------------------------------------------------------- HTTP handling

    def _handle_http(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> _Response:
        """Record and answer one HTTP request (``headers`` keys are lower case)."""
        split = urlsplit(raw_path)
        path = unquote(split.path)
        request_id = _new_id("req_", 14)
        with self._lock:
            error: StubError | None = None
            params: JSON = {}
            try:
                params = parse_form(split.query)
                content_type = headers.get("content-type", "application/x-www-form-urlencoded")
                if body and content_type.startswith("application/x-www-form-urlencoded"):
                    params.update(parse_form(body.decode("utf-8")))
            except (StubError, UnicodeDecodeError) as exc:
                error = exc if isinstance(exc, StubError) else _invalid("Invalid request body")
            recorded = {
                name: headers[name.lower()] for name in _RECORDED_HEADERS if name.lower() in headers
            }
            self.requests.append(RecordedRequest(method, path, copy.deepcopy(params), recorded))
            call = _Call(method, path, params, headers, request_id)
            fault = self._take_fault(method, path)
            if fault is not None and fault.status is not None:
                failed = self._json_response(call, fault.status, {"error": {
                    "type": "api_error",
                    "message": f"Stripe answered {fault.status} (a fault set by fail_next).",
                }})
                failed.headers.pop("Stripe-Should-Retry", None)
                return failed
            response = None if path.startswith("/v1/") else self._page(call)
            if response is None:
                response = self._api(call, error)
            if fault is not None:
                response.delay = fault.delay
            return response

    def _api(self, call: _Call, parse_error: StubError | None) -> _Response:
        replay_key: tuple[str, str] | None = None
        fingerprint = (call.method, call.path, json.dumps(call.params, sort_keys=True))
        try:
            api_key = self._authenticate(call)
            handler, args = self._resolve(call)
            if parse_error is not None:
                raise parse_error
            if call.method == "POST" and call.idempotency_key:
                replay_key = (api_key, call.idempotency_key)
                previous = self._idempotency.get(replay_key)
                if previous is not None:
                    if previous.fingerprint != fingerprint:
                        raise StubError(
                            400,
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other than "
                            f"'{call.idempotency_key}' if you meant to execute a different "
                            "request.",
                        )
                    response = copy.deepcopy(previous.response)
                    response.headers["Idempotent-Replayed"] = "true"
                    response.headers["Original-Request"] = previous.request_id
                    return response
            status, payload = 200, self._render(handler(call, *args), _expand_paths(call.params))
        except StubError as exc:
            status, payload = exc.status, {"error": dict(exc.error)}
            payload["error"]["request_log_url"] = (
                f"https://dashboard.stripe.com/test/logs/{call.request_id}"
            )
        except Exception as exc:
            status = 500
            payload = {"error": {"type": "api_error", "message": f"Stripe stub failed: {exc!r}"}}
        response = self._json_response(call, status, payload)
        if replay_key is not None and (status < 400 or status == 402):
            self._idempotency[replay_key] = _Replay(fingerprint, response, call.request_id)
            response = copy.deepcopy(response)
        return response

    def _authenticate(self, call: _Call) -> str:
        """The API key from ``Authorization: Bearer``; 401 if missing or not accepted."""
        authorization = call.headers.get("authorization", "").strip()
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if not key:
            raise StubError(
                401,
                "authentication_error",
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
                "or we can help at https://support.stripe.com/.",
            )
        if self.api_key is not None:
            accepted = key == self.api_key
        else:
            accepted = key.startswith(("sk_test_", "rk_test_")) and len(key) > len("sk_test_")
        if scheme.lower() != "bearer" or not accepted:
            shown = (key[:8] + "*" * max(len(key) - 12, 0) + key[-4:]) if len(key) > 12 else key
            raise StubError(
                401,
                "authentication_error",
                f"Invalid API Key provided: {shown or '(empty)'}",
            )
        return key

    def _resolve(self, call: _Call) -> tuple[_Handler, tuple[str, ...]]:
        for method, regex, name in _API_ROUTES:
            match = regex.match(call.path)
            if match and method == call.method:
                return getattr(self, name), match.groups()
        raise _invalid(
            f"Unrecognized request URL ({call.method}: {call.path}). Please see "
            "https://stripe.com/docs or we can help at https://support.stripe.com/.",
            code="resource_missing",
            status=404,
        )

    def _json_response(self, call: _Call, status: int, payload: JSON) -> _Response:
        headers = {
            "Content-Type": "application/json",
            "Request-Id": call.request_id,
            "Stripe-Version": call.headers.get("stripe-version", self.api_version),
            "Cache-Control": "no-cache, no-store",
        }
        if call.idempotency_key:
            headers["Idempotency-Key"] = call.idempotency_key
        if status >= 400:
            headers["Stripe-Should-Retry"] = "false"
        return _Response(status, headers, json.dumps(payload, indent=2).encode("utf-8"))

    # ------------------------------------------------------------- rendering

    def _render(self, obj: JSON, expand: list[str]) -> JSON:
        """A copy of ``obj`` with the ``expand`` paths replaced by the objects they name."""
        view = copy.deepcopy(obj)
        for path in expand:
            self._expand(view, path.split("."))
        return view

    def _expand(self, node: Any, parts: list[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self._expand(item, parts)
            return
        if not isinstance(node, dict):
            return
        head, rest = parts[0], parts[1:]
        if head == "line_items" and node.get("object") == "checkout.session":
            node["line_items"] = self._line_items_list(node["id"], {})
        if head not in node:
            raise _invalid(f"This property cannot be expanded ({head}).", "expand")
        value = node[head]
        if not isinstance(value, (dict, list)) and head not in _EXPANDABLE:
            raise _invalid(f"This property cannot be expanded ({head}).", "expand")
        if isinstance(value, str):
            target = self._store.find(value)
            if target is None:
                raise _invalid(f"This property cannot be expanded ({head}).", "expand")
            node[head] = value = copy.deepcopy(target)
        if rest and value is not None:
            self._expand(value, rest)

    def _list(self, url: str, items: list[JSON], params: Mapping[str, Any]) -> JSON:
        """A Stripe list object over ``items`` (newest first) with limit/starting_after."""
        limit = _int(params["limit"], "limit", 1) if "limit" in params else 10
        if limit > 100:
            raise _invalid("This value must be less than or equal to 100.", "limit")
        start = 0
        if params.get("starting_after"):
            ids = [item["id"] for item in items]
            if params["starting_after"] not in ids:
                raise _no_such("object", params["starting_after"], "starting_after", 400)
            start = ids.index(params["starting_after"]) + 1
        elif params.get("ending_before"):
            ids = [item["id"] for item in items]
            if params["ending_before"] not in ids:
                raise _no_such("object", params["ending_before"], "ending_before", 400)
            end = ids.index(params["ending_before"])
            page = items[max(end - limit, 0) : end]
            return {"object": "list", "data": page, "has_more": end - limit > 0, "url": url}
        page = items[start : start + limit]
        return {
            "object": "list",
            "data": page,
            "has_more": start + limit < len(items),
            "url": url,
        }

    def _check(self, params: Mapping[str, Any], spec: Spec) -> None:
        if self.strict:
            _check_params(params, spec)

    # ------------------------------------------------------------- customers

    def _new_customer(self, **fields: Any) -> JSON:
        return self._store.add(self._customer_object(**fields))

    @staticmethod
    def _customer_object(**fields: Any) -> JSON:
        customer: JSON = {
            "id": _new_id("cus_", 14),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": _now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": None,
            "invoice_prefix": secrets.token_hex(4).upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": {},
            "name": None,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        customer.update(fields)
        return customer

    def _apply_customer_fields(
        self, customer: JSON, params: Mapping[str, Any], attaching: str | None = None
    ) -> None:
        """Set customer fields from create/update parameters.

        ``attaching`` is a PaymentMethod about to be attached (``payment_method`` on
        create), which may already be named as the default.
        """
        for key in ("description", "email", "name", "phone"):
            if key in params:
                customer[key] = _optional_string(params, key)
        if "metadata" in params:
            customer["metadata"] = _merge_metadata(customer["metadata"], params["metadata"])
        if "address" in params:
            address = params["address"]
            customer["address"] = (
                {k: address.get(k) or None for k in _ADDRESS} if isinstance(address, dict) else None
            )
        if "shipping" in params:
            customer["shipping"] = params["shipping"] or None
        if "preferred_locales" in params:
            locales = params["preferred_locales"]
            customer["preferred_locales"] = locales if isinstance(locales, list) else []
        if "tax_exempt" in params:
            value = _string(params["tax_exempt"], "tax_exempt")
            if value not in ("none", "exempt", "reverse"):
                raise _invalid(
                    "Invalid tax_exempt: must be one of none, exempt, or reverse", "tax_exempt"
                )
            customer["tax_exempt"] = value
        settings = params.get("invoice_settings")
        if isinstance(settings, dict):
            if "footer" in settings:
                customer["invoice_settings"]["footer"] = _optional_string(
                    settings, "footer", "invoice_settings[footer]"
                )
            if "default_payment_method" in settings:
                param = "invoice_settings[default_payment_method]"
                pm_id = _optional_string(settings, "default_payment_method", param)
                if pm_id is not None:
                    payment_method = self._store.get(
                        "payment_method", pm_id, param=param, status=400
                    )
                    if payment_method["customer"] != customer["id"] and pm_id != attaching:
                        raise _invalid(
                            f"The customer does not have a payment method with the ID {pm_id}. "
                            "The payment method must be attached to the customer.",
                            param,
                            "resource_missing",
                        )
                customer["invoice_settings"]["default_payment_method"] = pm_id

    @_route("POST", "/v1/customers")
    def _create_customer(self, call: _Call) -> JSON:
        """``POST /v1/customers``: email, name, description, phone, metadata, ..."""
        params = call.params
        self._check(params, _CUSTOMER_CREATE)
        customer = self._customer_object()
        payment_method = None
        if params.get("payment_method"):
            payment_method = self._store.get(
                "payment_method", params["payment_method"], param="payment_method", status=400
            )
            self._check_attachable(payment_method, customer["id"])
        self._apply_customer_fields(
            customer, params, payment_method["id"] if payment_method else None
        )
        self._store.add(customer)
        if payment_method is not None:
            self._attach(payment_method, customer, call)
        return customer

    @_route("GET", "/v1/customers")
    def _list_customers(self, call: _Call) -> JSON:
        """``GET /v1/customers`` with an optional exact ``email`` filter."""
        self._check(call.params, {**_LIST, "email": None, "created": None, "test_clock": None})
        customers = self._store.all("customer")
        if "email" in call.params:
            customers = [c for c in customers if c["email"] == call.params["email"]]
        return self._list("/v1/customers", customers, call.params)

    @_route("GET", "/v1/customers/{id}")
    def _retrieve_customer(self, call: _Call, customer_id: str) -> JSON:
        self._check(call.params, _EXPAND)
        obj = self._store.find(customer_id)
        if obj is not None and obj["object"] == "customer" and obj.get("deleted"):
            return obj
        return self._store.get("customer", customer_id)

    @_route("POST", "/v1/customers/{id}")
    def _update_customer(self, call: _Call, customer_id: str) -> JSON:
        """Update a customer; metadata merges, ``""`` unsets a field or metadata key."""
        customer = self._store.get("customer", customer_id)
        self._check(call.params, _CUSTOMER_FIELDS)
        updated = copy.deepcopy(customer)
        self._apply_customer_fields(updated, call.params)
        customer.clear()
        customer.update(updated)
        return customer

    @_route("DELETE", "/v1/customers/{id}")
    def _delete_customer(self, call: _Call, customer_id: str) -> JSON:
        self._store.get("customer", customer_id)
        for payment_method in self._store.all("payment_method"):
            if payment_method["customer"] == customer_id:
                payment_method["customer"] = None
        deleted = {"id": customer_id, "object": "customer", "deleted": True}
        self._store.objects[customer_id] = deleted
        return deleted

    @_route("GET", "/v1/customers/{id}/payment_methods")
    def _list_customer_payment_methods(self, call: _Call, customer_id: str) -> JSON:
        self._store.get("customer", customer_id)
        self._check(call.params, {**_LIST, "type": None, "allow_redisplay": None})
        methods = [
            pm
            for pm in self._store.all("payment_method")
            if pm["customer"] == customer_id and call.params.get("type", pm["type"]) == pm["type"]
        ]
        return self._list(f"/v1/customers/{customer_id}/payment_methods", methods, call.params)

    # ------------------------------------------------------- payment methods

    def _new_payment_method(
        self, card: Card, *, email: str | None = None, name: str | None = None
    ) -> JSON:
        brand, last4, exp_month, exp_year = card
        if not (isinstance(last4, str) and re.fullmatch(r"\d{4}", last4)):
            raise ValueError(f"last4 must be four digits, not {last4!r}")
        if not 1 <= int(exp_month) <= 12:
            raise ValueError(f"exp_month must be 1-12, not {exp_month!r}")
        fingerprint = hashlib.sha256(f"{brand}:{last4}:{exp_month}:{exp_year}".encode())
        return self._store.add(
            {
                "id": _new_id("pm_"),
                "object": "payment_method",
                "allow_redisplay": "unspecified",
                "billing_details": {
                    "address": dict.fromkeys(_ADDRESS),
                    "email": email,
                    "name": name,
                    "phone": None,
                    "tax_id": None,
                },
                "card": {
                    "brand": brand,
                    "checks": {
                        "address_line1_check": None,
                        "address_postal_code_check": None,
                        "cvc_check": "pass",
                    },
                    "country": "US",
                    "display_brand": brand,
                    "exp_month": int(exp_month),
                    "exp_year": int(exp_year),
                    "fingerprint": fingerprint.hexdigest()[:16],
                    "funding": "credit",
                    "generated_from": None,
                    "last4": last4,
                    "networks": {"available": [brand], "preferred": None},
                    "regulated_status": "unregulated",
                    "three_d_secure_usage": {"supported": True},
                    "wallet": None,
                },
                "created": _now(),
                "customer": None,
                "livemode": False,
                "metadata": {},
                "type": "card",
            },
            used=False,
        )

    def _check_attachable(self, payment_method: JSON, customer_id: str) -> None:
        """Stripe's refusals: attached elsewhere already, or spent while unattached."""
        if payment_method["customer"] not in (None, customer_id):
            raise _invalid(
                "The payment method you provided has already been attached to a customer.",
                "payment_method",
                "payment_method_unexpected_state",
            )
        if payment_method["customer"] is None and self._store.extras[payment_method["id"]]["used"]:
            raise _invalid(
                "This PaymentMethod was previously used without being attached to a Customer "
                "or was detached from a Customer, and may not be used again.",
                "payment_method",
                "payment_method_unexpected_state",
            )

    def _attach(self, payment_method: JSON, customer: JSON, call: _Call | None = None) -> None:
        self._check_attachable(payment_method, customer["id"])
        if payment_method["customer"] is None:
            payment_method["customer"] = customer["id"]
            self._emit("payment_method.attached", payment_method, call)

    @_route("GET", "/v1/payment_methods")
    def _list_payment_methods(self, call: _Call) -> JSON:
        """``GET /v1/payment_methods?customer=cus_...&type=card``."""
        params = call.params
        self._check(params, {**_LIST, "customer": None, "type": None, "allow_redisplay": None})
        methods = self._store.all("payment_method")
        if params.get("customer"):
            self._store.get("customer", params["customer"], param="customer", status=400)
            methods = [pm for pm in methods if pm["customer"] == params["customer"]]
        if params.get("type"):
            methods = [pm for pm in methods if pm["type"] == params["type"]]
        return self._list("/v1/payment_methods", methods, params)

    @_route("GET", "/v1/payment_methods/{id}")
    def _retrieve_payment_method(self, call: _Call, pm_id: str) -> JSON:
        self._check(call.params, _EXPAND)
        return self._store.get("payment_method", pm_id)

    @_route("POST", "/v1/payment_methods/{id}/attach")
    def _attach_payment_method(self, call: _Call, pm_id: str) -> JSON:
        payment_method = self._store.get("payment_method", pm_id)
        self._check(call.params, {"customer": None, "expand": None})
        customer = self._store.get(
            "customer", _required(call.params, "customer"), param="customer", status=400
        )
        self._attach(payment_method, customer, call)
        return payment_method

    @_route("POST", "/v1/payment_methods/{id}/detach")
    def _detach_payment_method(self, call: _Call, pm_id: str) -> JSON:
        """Detach; clears the customer's default payment method if it was this one."""
        payment_method = self._store.get("payment_method", pm_id)
        self._check(call.params, _EXPAND)
        customer_id = payment_method["customer"]
        if customer_id is None:
            raise _invalid(
                f"The payment method {pm_id} is not attached to a customer so detachment is "
                "impossible.",
                code="payment_method_unexpected_state",
            )
        customer = self._store.get("customer", customer_id)
        if customer["invoice_settings"]["default_payment_method"] == pm_id:
            customer["invoice_settings"]["default_payment_method"] = None
        payment_method["customer"] = None
        self._store.extras[pm_id]["used"] = True
        self._emit(
            "payment_method.detached", payment_method, call, previous={"customer": customer_id}
        )
        return payment_method

    # ------------------------------------------------------ checkout sessions

    @_route("POST", "/v1/checkout/sessions")
    def _create_checkout_session(self, call: _Call) -> JSON:
        """``POST /v1/checkout/sessions`` in ``payment`` or ``setup`` mode, hosted UI."""
        params = call.params
        self._check(params, _CHECKOUT_CREATE)
        mode = _required(params, "mode")
        if mode not in ("payment", "setup"):
            raise _invalid(
                "Invalid mode: the stub supports payment and setup (Stripe also has subscription)",
                "mode",
            )
        if params.get("ui_mode", "hosted") != "hosted":
            raise _invalid("The stub supports only ui_mode=hosted.", "ui_mode")
        success_url = _url(_required(params, "success_url"), "success_url")
        cancel_url = _url(params["cancel_url"], "cancel_url") if params.get("cancel_url") else None
        if params.get("customer") and params.get("customer_email"):
            raise _invalid(
                "You may only specify one of these parameters: customer, customer_email.",
                "customer",
                "parameters_exclusive",
            )
        customer = None
        if params.get("customer"):
            customer = self._store.get("customer", params["customer"], param="customer", status=400)
        if mode == "setup":
            for key in ("line_items", "payment_intent_data"):
                if key in params:
                    raise _invalid(f"You can not pass `{key}` in `setup` mode.", key)
        elif "setup_intent_data" in params:
            raise _invalid(
                "You can not pass `setup_intent_data` in `payment` mode.", "setup_intent_data"
            )
        creation = params.get("customer_creation")
        if creation is not None and creation not in ("always", "if_required"):
            raise _invalid(
                "Invalid customer_creation: must be always or if_required", "customer_creation"
            )

        currency = _currency(params["currency"]) if params.get("currency") else None
        items: list[JSON] = []
        amount_total: int | None = None
        if mode == "payment":
            line_items = _required(params, "line_items")
            if not isinstance(line_items, list):
                raise _invalid("Invalid array: line_items", "line_items")
            items = [self._line_item(item, index) for index, item in enumerate(line_items)]
            currencies = {item["currency"] for item in items}
            if len(currencies) > 1 or (currency is not None and currencies != {currency}):
                raise _invalid("All line items must use the same currency.", "line_items")
            currency = currencies.pop()
            amount_total = sum(item["amount_total"] for item in items)

        intent_data = _object(params, "payment_intent_data")
        setup_data = _object(params, "setup_intent_data")
        if "metadata" in intent_data:
            intent_data["metadata"] = _metadata(
                intent_data["metadata"], "payment_intent_data[metadata]"
            )
        if "metadata" in setup_data:
            setup_data["metadata"] = _metadata(
                setup_data["metadata"], "setup_intent_data[metadata]"
            )
        sfu = intent_data.get("setup_future_usage")
        if sfu is not None and sfu not in ("on_session", "off_session"):
            raise _invalid(
                "Invalid setup_future_usage: must be on_session or off_session",
                "payment_intent_data[setup_future_usage]",
            )
        created = _now()
        session_id = _new_id("cs_test_", 58)
        session: JSON = {
            "id": session_id,
            "object": "checkout.session",
            "after_expiration": None,
            "allow_promotion_codes": None,
            "amount_subtotal": amount_total,
            "amount_total": amount_total,
            "billing_address_collection": params.get("billing_address_collection"),
            "cancel_url": cancel_url,
            "client_reference_id": _optional_string(params, "client_reference_id"),
            "created": created,
            "currency": currency,
            "customer": customer["id"] if customer else None,
            "customer_creation": None if customer else (creation or "if_required"),
            "customer_details": None,
            "customer_email": _optional_string(params, "customer_email"),
            "expires_at": (
                _int(params["expires_at"], "expires_at")
                if params.get("expires_at")
                else created + 24 * 3600
            ),
            "livemode": False,
            "locale": params.get("locale"),
            "metadata": _metadata(params.get("metadata", {})),
            "mode": mode,
            "payment_intent": None,
            "payment_method_types": _payment_method_types(params),
            "payment_status": "unpaid",
            "setup_intent": None,
            "status": "open",
            "submit_type": params.get("submit_type"),
            "success_url": success_url,
            "ui_mode": "hosted",
            "url": f"{self.url}/pay/{session_id}",
        }
        for item in items:
            for product in item.pop("_product"):
                self._store.add(product)
        self._store.add(
            session,
            line_items=items,
            payment_intent_data=intent_data,
            setup_intent_data=setup_data,
        )
        return session

    def _line_item(self, item: JSON, index: int) -> JSON:
        """Validate one ``line_items[i]`` with ``price_data``; returns the line item object."""
        name = f"line_items[{index}]"
        quantity = _int(_required(item, "quantity", f"{name}[quantity]"), f"{name}[quantity]", 1)
        if item.get("price"):
            raise _no_such("price", item["price"], f"{name}[price]", 400)
        price_data = _required(item, "price_data", f"{name}[price_data]")
        if not isinstance(price_data, dict):
            raise _invalid(f"Invalid object: {name}[price_data]", f"{name}[price_data]")
        prefix = f"{name}[price_data]"
        currency = _currency(
            _required(price_data, "currency", f"{prefix}[currency]"), f"{prefix}[currency]"
        )
        unit_amount = _int(
            _required(price_data, "unit_amount", f"{prefix}[unit_amount]"),
            f"{prefix}[unit_amount]",
            0,
        )
        products: list[JSON] = []
        if price_data.get("product"):
            product = self._store.get(
                "product", price_data["product"], param=f"{prefix}[product]", status=400
            )
            description = product["name"]
            product_id = product["id"]
        else:
            product_data = _required(price_data, "product_data", f"{prefix}[product_data]")
            if not isinstance(product_data, dict):
                raise _invalid(f"Invalid object: {prefix}[product_data]", f"{prefix}[product_data]")
            description = _string(
                _required(product_data, "name", f"{prefix}[product_data][name]"),
                f"{prefix}[product_data][name]",
            )
            product_id = _new_id("prod_", 14)
            products.append(
                {
                    "id": product_id,
                    "object": "product",
                    "active": False,
                    "created": _now(),
                    "description": product_data.get("description"),
                    "images": product_data.get("images") or [],
                    "livemode": False,
                    "metadata": _metadata(
                        product_data.get("metadata", {}), f"{prefix}[product_data][metadata]"
                    ),
                    "name": description,
                    "type": "service",
                }
            )
        amount = unit_amount * quantity
        return {
            "id": _new_id("li_"),
            "object": "item",
            "amount_discount": 0,
            "amount_subtotal": amount,
            "amount_tax": 0,
            "amount_total": amount,
            "currency": currency,
            "description": description,
            "price": {
                "id": _new_id("price_"),
                "object": "price",
                "active": False,
                "billing_scheme": "per_unit",
                "created": _now(),
                "currency": currency,
                "livemode": False,
                "lookup_key": None,
                "metadata": {},
                "product": product_id,
                "recurring": None,
                "tax_behavior": price_data.get("tax_behavior", "unspecified"),
                "type": "one_time",
                "unit_amount": unit_amount,
                "unit_amount_decimal": str(unit_amount),
            },
            "quantity": quantity,
            "_product": products,
        }

    def _line_items_list(self, session_id: str, params: Mapping[str, Any]) -> JSON:
        items = copy.deepcopy(self._store.extras[session_id]["line_items"])
        return self._list(f"/v1/checkout/sessions/{session_id}/line_items", items, params)

    @_route("GET", "/v1/checkout/sessions/{id}")
    def _retrieve_checkout_session(self, call: _Call, session_id: str) -> JSON:
        """Retrieve; ``expand[]`` may name payment_intent, setup_intent, customer, line_items."""
        self._check(call.params, _EXPAND)
        return self._store.get("checkout.session", session_id)

    @_route("GET", "/v1/checkout/sessions/{id}/line_items")
    def _list_checkout_line_items(self, call: _Call, session_id: str) -> JSON:
        self._store.get("checkout.session", session_id)
        self._check(call.params, _LIST)
        return self._line_items_list(session_id, call.params)

    @_route("POST", "/v1/checkout/sessions/{id}/expire")
    def _expire_checkout_session(self, call: _Call, session_id: str) -> JSON:
        session = self._store.get("checkout.session", session_id)
        self._check(call.params, _EXPAND)
        if session["status"] != "open":
            raise _invalid(
                f'Only Checkout Sessions with a status in ["open"] can be expired. This '
                f'Checkout Session has a status of "{session["status"]}".'
            )
        session["status"] = "expired"
        session["url"] = None
        self._emit("checkout.session.expired", session, call)
        return session

    # ------------------------------------------------------- payment intents

    def _new_payment_intent(
        self,
        *,
        amount: int,
        currency: str,
        customer: str | None,
        payment_method: str | None,
        metadata: dict[str, str],
        description: str | None = None,
        receipt_email: str | None = None,
        setup_future_usage: str | None = None,
        statement_descriptor: str | None = None,
    ) -> JSON:
        intent_id = _new_id("pi_")
        return self._store.add(
            {
                "id": intent_id,
                "object": "payment_intent",
                "amount": amount,
                "amount_capturable": 0,
                "amount_received": 0,
                "application": None,
                "application_fee_amount": None,
                "automatic_payment_methods": None,
                "canceled_at": None,
                "cancellation_reason": None,
                "capture_method": "automatic",
                "client_secret": f"{intent_id}_secret_{_new_id('')}",
                "confirmation_method": "automatic",
                "created": _now(),
                "currency": currency,
                "customer": customer,
                "description": description,
                "last_payment_error": None,
                "latest_charge": None,
                "livemode": False,
                "metadata": metadata,
                "next_action": None,
                "on_behalf_of": None,
                "payment_method": payment_method,
                "payment_method_types": ["card"],
                "processing": None,
                "receipt_email": receipt_email,
                "setup_future_usage": setup_future_usage,
                "shipping": None,
                "statement_descriptor": statement_descriptor,
                "statement_descriptor_suffix": None,
                "status": "requires_payment_method"
                if payment_method is None
                else "requires_confirmation",
                "transfer_data": None,
                "transfer_group": None,
            }
        )

    def _new_charge(self, intent: JSON, payment_method: JSON, *, succeeded: bool) -> JSON:
        charge_id = _new_id("ch_")
        card = payment_method["card"]
        charge = {
            "id": charge_id,
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": intent["amount"] if succeeded else 0,
            "amount_refunded": 0,
            "application_fee_amount": None,
            "balance_transaction": None,
            "billing_details": copy.deepcopy(payment_method["billing_details"]),
            "calculated_statement_descriptor": "STRIPE STUB",
            "captured": succeeded,
            "created": _now(),
            "currency": intent["currency"],
            "customer": intent["customer"],
            "description": intent["description"],
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": None,
            "failure_message": None,
            "fraud_details": {},
            "livemode": False,
            "metadata": dict(intent["metadata"]),
            "outcome": {
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
            "paid": succeeded,
            "payment_intent": intent["id"],
            "payment_method": payment_method["id"],
            "payment_method_details": {
                "card": {
                    "brand": card["brand"],
                    "checks": dict(card["checks"]),
                    "country": card["country"],
                    "exp_month": card["exp_month"],
                    "exp_year": card["exp_year"],
                    "fingerprint": card["fingerprint"],
                    "funding": card["funding"],
                    "last4": card["last4"],
                    "network": card["brand"],
                    "wallet": None,
                },
                "type": "card",
            },
            "receipt_email": intent["receipt_email"],
            "receipt_number": None,
            "receipt_url": f"{self.url}/receipts/{charge_id}" if self._server else None,
            "refunded": False,
            "review": None,
            "shipping": None,
            "status": "succeeded" if succeeded else "failed",
        }
        if succeeded:
            fee = (intent["amount"] * 29 + 500) // 1000 + 30
            charge["balance_transaction"] = self._new_balance_transaction(
                charge_id, intent["amount"], intent["currency"], "charge", fee
            )["id"]
        return self._store.add(charge)

    def _new_balance_transaction(
        self, source: str, amount: int, currency: str, kind: str, fee: int
    ) -> JSON:
        """A balance transaction; charge fees follow US card pricing (2.9% + 30, rounded)."""
        created = _now()
        return self._store.add(
            {
                "id": _new_id("txn_"),
                "object": "balance_transaction",
                "amount": amount,
                "available_on": created + 2 * 24 * 3600,
                "created": created,
                "currency": currency,
                "description": None,
                "exchange_rate": None,
                "fee": fee,
                "fee_details": [
                    {
                        "amount": fee,
                        "application": None,
                        "currency": currency,
                        "description": "Stripe processing fees",
                        "type": "stripe_fee",
                    }
                ]
                if fee
                else [],
                "net": amount - fee,
                "reporting_category": kind,
                "source": source,
                "status": "pending",
                "type": kind,
            }
        )

    def _succeed(self, intent: JSON, payment_method: JSON, call: _Call | None) -> None:
        charge = self._new_charge(intent, payment_method, succeeded=True)
        intent.update(
            status="succeeded",
            amount_received=intent["amount"],
            latest_charge=charge["id"],
            payment_method=payment_method["id"],
        )
        self._store.extras[payment_method["id"]]["used"] = True
        self._emit("charge.succeeded", charge, call)
        self._emit("payment_intent.succeeded", intent, call)

    def _fail(
        self,
        intent: JSON,
        payment_method: JSON,
        decline: tuple[str, str | None, str],
        call: _Call | None,
    ) -> JSON:
        """Fail a payment as the card network would; returns the API ``error`` hash."""
        code, decline_code, message = decline
        charge = self._new_charge(intent, payment_method, succeeded=False)
        charge.update(
            failure_code=code,
            failure_message=message,
            outcome={
                "network_status": "declined_by_network",
                "reason": decline_code,
                "risk_level": "normal",
                "seller_message": "The bank did not return any further details with this decline.",
                "type": "issuer_declined",
            },
        )
        error = StubError(
            402,
            "card_error",
            message,
            code=code,
            charge=charge["id"],
            payment_method=copy.deepcopy(payment_method),
        ).error
        if decline_code:
            error["decline_code"] = decline_code
        intent.update(
            status="requires_payment_method",
            payment_method=None,
            latest_charge=charge["id"],
            last_payment_error=copy.deepcopy(error),
        )
        self._store.extras[payment_method["id"]]["used"] = True
        self._emit("charge.failed", charge, call)
        self._emit("payment_intent.payment_failed", intent, call)
        return error

    @_route("POST", "/v1/payment_intents")
    def _create_payment_intent(self, call: _Call) -> JSON:
        """Create (and with ``confirm=true`` charge) a PaymentIntent.

        Confirmed intents succeed at once with a charge, unless a decline was
        queued with ``decline_next_payment``: then HTTP 402 ``card_error``.
        """
        params = call.params
        _no_payment_method_types(params)
        self._check(params, _PAYMENT_INTENT_CREATE)
        amount = _int(_required(params, "amount"), "amount", 1)
        currency = _currency(_required(params, "currency"))
        customer = None
        if params.get("customer"):
            customer = self._store.get("customer", params["customer"], param="customer", status=400)
        payment_method = None
        if params.get("payment_method"):
            payment_method = self._store.get(
                "payment_method", params["payment_method"], param="payment_method", status=400
            )
        confirm = _bool(params.get("confirm", "false"), "confirm")
        off_session = params.get("off_session", "false")
        if off_session not in ("true", "false", "one_off", "recurring"):
            raise _invalid(f"Invalid off_session: {off_session}", "off_session")
        if off_session != "false" and not confirm:
            raise _invalid(
                "You can only set `off_session` when `confirm` is `true`.", "off_session"
            )
        sfu = params.get("setup_future_usage") or None
        if sfu is not None and sfu not in ("on_session", "off_session"):
            raise _invalid(
                "Invalid setup_future_usage: must be on_session or off_session",
                "setup_future_usage",
            )
        if sfu is not None and customer is None:
            raise _invalid("You must provide a `customer` to use `setup_future_usage`.", "customer")
        if payment_method is not None:
            owner = payment_method["customer"]
            if owner is not None and customer is None:
                raise _invalid(
                    "The provided PaymentMethod belongs to a Customer, but you did not provide "
                    "the Customer's ID. Please provide the `customer` parameter.",
                    "payment_method",
                )
            if owner is not None and owner != customer["id"]:
                raise _invalid(
                    "The provided PaymentMethod belongs to a different Customer.",
                    "payment_method",
                )
            if owner is None and self._store.extras[payment_method["id"]]["used"]:
                raise _invalid(
                    "The provided PaymentMethod was previously used with a PaymentIntent "
                    "without Customer attachment, shared with a connected account without "
                    "Customer attachment, or was detached from a Customer. It may not be used "
                    "again. To use a PaymentMethod multiple times, you must attach it to a "
                    "Customer first.",
                    "payment_method",
                )
        if confirm and payment_method is None:
            raise _invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method. "
                "You can either update the PaymentIntent with a payment method and then confirm "
                "it again, or confirm it again directly with a payment method.",
                "payment_method",
                "payment_intent_unexpected_state",
            )
        intent = self._new_payment_intent(
            amount=amount,
            currency=currency,
            customer=customer["id"] if customer else None,
            payment_method=payment_method["id"] if payment_method else None,
            metadata=_metadata(params.get("metadata", {})),
            description=_optional_string(params, "description"),
            receipt_email=_optional_string(params, "receipt_email"),
            setup_future_usage=sfu,
            statement_descriptor=_optional_string(params, "statement_descriptor"),
        )
        if not confirm or payment_method is None:
            return intent
        if self._declines:
            error = self._fail(intent, payment_method, self._declines.popleft(), call)
            error["payment_intent"] = copy.deepcopy(intent)
            raise StubError.from_error(402, error)
        if sfu is not None and customer is not None and payment_method["customer"] is None:
            self._attach(payment_method, customer, call)
        self._succeed(intent, payment_method, call)
        return intent

    @_route("GET", "/v1/payment_intents/{id}")
    def _retrieve_payment_intent(self, call: _Call, intent_id: str) -> JSON:
        self._check(call.params, {**_EXPAND, "client_secret": None})
        return self._store.get("payment_intent", intent_id)

    @_route("GET", "/v1/setup_intents/{id}")
    def _retrieve_setup_intent(self, call: _Call, intent_id: str) -> JSON:
        self._check(call.params, {**_EXPAND, "client_secret": None})
        return self._store.get("setup_intent", intent_id)

    # ------------------------------------------------------ charges, refunds

    @_route("GET", "/v1/charges/{id}")
    def _retrieve_charge(self, call: _Call, charge_id: str) -> JSON:
        self._check(call.params, _EXPAND)
        return self._store.get("charge", charge_id)

    @_route("GET", "/v1/balance_transactions/{id}")
    def _retrieve_balance_transaction(self, call: _Call, txn_id: str) -> JSON:
        self._check(call.params, _EXPAND)
        return self._store.get("balance_transaction", txn_id)

    def _refund(
        self,
        charge: JSON,
        amount: int | None,
        reason: str | None,
        metadata: dict[str, str],
        call: _Call | None,
    ) -> JSON:
        if charge["status"] != "succeeded":
            raise _invalid(
                f"Charge {charge['id']} has a status of {charge['status']} and cannot be refunded.",
                "charge",
                "charge_not_refundable",
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining == 0:
            raise _invalid(
                f"Charge {charge['id']} has already been refunded.",
                "charge",
                "charge_already_refunded",
            )
        if amount is None:
            amount = remaining
        if amount < 1:
            raise _invalid("Refund amount must be a positive integer.", "amount")
        if amount > remaining:
            raise _invalid(
                f"Refund amount ({_format_amount(amount, charge['currency'])}) is greater than "
                f"unrefunded amount on charge ({_format_amount(remaining, charge['currency'])})",
                "amount",
                "amount_too_large",
            )
        refund_id = _new_id("re_")
        txn = self._new_balance_transaction(refund_id, -amount, charge["currency"], "refund", 0)
        refund = self._store.add(
            {
                "id": refund_id,
                "object": "refund",
                "amount": amount,
                "balance_transaction": txn["id"],
                "charge": charge["id"],
                "created": _now(),
                "currency": charge["currency"],
                "destination_details": {
                    "card": {
                        "reference_status": "pending",
                        "reference_type": "acquirer_reference_number",
                        "type": "refund",
                    },
                    "type": "card",
                },
                "metadata": metadata,
                "payment_intent": charge["payment_intent"],
                "reason": reason,
                "receipt_number": None,
                "source_transfer_reversal": None,
                "status": "succeeded",
                "transfer_reversal": None,
            }
        )
        previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        self._emit("refund.created", refund, call)
        self._emit("charge.refunded", charge, call, previous=previous)  # the last event emitted
        return refund

    @_route("POST", "/v1/refunds")
    def _create_refund(self, call: _Call) -> JSON:
        """Refund a charge (``charge=ch_...`` or ``payment_intent=pi_...``), fully by default."""
        params = call.params
        self._check(params, _REFUND_CREATE)
        if not params.get("charge") and not params.get("payment_intent"):
            raise _invalid(
                "One of `charge` or `payment_intent` is required.", "charge", "parameter_missing"
            )
        charge_id = params.get("charge") or None
        if params.get("payment_intent"):
            intent = self._store.get(
                "payment_intent", params["payment_intent"], param="payment_intent", status=400
            )
            if intent["status"] != "succeeded" or intent["latest_charge"] is None:
                raise _invalid(
                    f"This PaymentIntent ({intent['id']}) does not have a successful charge to "
                    "refund.",
                    "payment_intent",
                    "charge_not_refundable",
                )
            if charge_id is not None and charge_id != intent["latest_charge"]:
                raise _invalid("The charge does not belong to this PaymentIntent.", "charge")
            charge_id = intent["latest_charge"]
        charge = self._store.get("charge", charge_id, param="charge", status=400)
        amount = _int(params["amount"], "amount") if params.get("amount") else None
        reason = params.get("reason") or None
        if reason is not None and reason not in (
            "duplicate",
            "fraudulent",
            "requested_by_customer",
        ):
            raise _invalid(
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
                "reason",
            )
        return self._refund(charge, amount, reason, _metadata(params.get("metadata", {})), call)

    @_route("GET", "/v1/refunds")
    def _list_refunds(self, call: _Call) -> JSON:
        """``GET /v1/refunds``, optionally of one ``charge`` or ``payment_intent``."""
        params = call.params
        self._check(params, {**_LIST, "charge": None, "payment_intent": None, "created": None})
        refunds = self._store.all("refund")
        for key in ("charge", "payment_intent"):
            if params.get(key):
                refunds = [r for r in refunds if r[key] == params[key]]
        return self._list("/v1/refunds", refunds, params)

    @_route("GET", "/v1/refunds/{id}")
    def _retrieve_refund(self, call: _Call, refund_id: str) -> JSON:
        self._check(call.params, _EXPAND)
        return self._store.get("refund", refund_id)

    # ----------------------------------------------------------------- events

    def _emit(
        self,
        event_type: str,
        obj: JSON,
        call: _Call | None = None,
        *,
        previous: JSON | None = None,
    ) -> JSON:
        """Record the event Stripe would send; returns a copy of it."""
        data: JSON = {"object": copy.deepcopy(obj)}
        if previous is not None:
            data["previous_attributes"] = copy.deepcopy(previous)
        event = self._store.add(
            {
                "id": _new_id("evt_"),
                "object": "event",
                "api_version": self.api_version,
                "created": _now(),
                "data": data,
                "livemode": False,
                "pending_webhooks": 1,
                "request": {
                    "id": call.request_id if call else None,
                    "idempotency_key": call.idempotency_key if call else None,
                },
                "type": event_type,
            }
        )
        self.events.append(event)
        return copy.deepcopy(event)

    @_route("GET", "/v1/events/{id}")
    def _retrieve_event(self, call: _Call, event_id: str) -> JSON:
        self._check(call.params, _EXPAND)
        return self._store.get("event", event_id)

    @_route("GET", "/v1/events")
    def _list_events(self, call: _Call) -> JSON:
        """``GET /v1/events`` with an optional ``type`` filter, newest first."""
        self._check(call.params, {**_LIST, "type": None, "types": None, "created": None})
        events = list(reversed(self.events))
        if call.params.get("type"):
            events = [e for e in events if e["type"] == call.params["type"]]
        return self._list("/v1/events", events, call.params)

    # ------------------------------------------------------------------ pages

    def _page(self, call: _Call) -> _Response | None:
        """The hosted pages: ``/pay/{session}`` (Checkout) and ``/receipts/{charge}``."""
        match = re.fullmatch(r"/pay/([^/]+)", call.path)
        if match and call.method in ("GET", "POST"):
            session = self._store.find(match.group(1))
            if session is None or session["object"] != "checkout.session":
                return _html(404, "Not found", "<p>No such Checkout Session.</p>")
            if session["status"] != "open":
                return _html(410, "Checkout", "<p>This Checkout Session is no longer active.</p>")
            if call.method == "GET":
                return _html(200, "Checkout", self._checkout_form(session, {}, None))
            return self._submit_checkout(session, call.params)
        match = re.fullmatch(r"/receipts/([^/]+)", call.path)
        if match and call.method == "GET":
            charge = self._store.find(match.group(1))
            if charge is None or charge["object"] != "charge":
                return _html(404, "Not found", "<p>No such receipt.</p>")
            return _html(200, "Receipt", _receipt(charge))
        return None

    def _checkout_form(self, session: JSON, form: Mapping[str, Any], error: str | None) -> str:
        esc = html.escape
        rows = "".join(
            f"<li>{esc(item['description'])} &times; {item['quantity']}: "
            f"{esc(_format_amount(item['amount_total'], item['currency']))}</li>"
            for item in self._store.extras[session["id"]]["line_items"]
        )
        customer = self._store.find(session["customer"]) if session["customer"] else None
        email = form.get("email") or session["customer_email"] or (customer or {}).get("email")

        def field(name: str, label: str, default: str) -> str:
            value = form.get(name, default)
            value = value if isinstance(value, str) else default
            return (
                f'<p><label for="{name}">{label}</label> '
                f'<input id="{name}" name="{name}" value="{esc(value)}"></p>'
            )

        if session["mode"] == "payment":
            total = _format_amount(session["amount_total"], session["currency"])
            summary = f'<ul>{rows}</ul><p class="total">Total: {esc(total)}</p>'
            button = "Pay"
        else:
            summary = "<p>Save a card for future payments.</p>"
            button = "Save card"
        cancel = (
            f'<p><a href="{esc(session["cancel_url"])}">Back</a></p>'
            if session["cancel_url"]
            else ""
        )
        notice = f'<p class="error" role="alert">{esc(error)}</p>' if error else ""
        return (
            f"<h1>Checkout</h1>{summary}{notice}"
            f'<form method="post" action="/pay/{esc(session["id"])}">'
            + field("email", "Email", email or "")
            + field("cardNumber", "Card number", "4242 4242 4242 4242")
            + field("cardExpiry", "Expiry (MM / YY)", "12 / 30")
            + field("cardCvc", "CVC", "123")
            + field("billingName", "Name on card", (customer or {}).get("name") or "")
            + f'<button type="submit" id="submit" '
            f'data-testid="hosted-payment-submit-button">{button}</button></form>{cancel}'
        )

    def _submit_checkout(self, session: JSON, form: Mapping[str, Any]) -> _Response:
        """POST /pay/{id}: validate the card fields, complete, 303 to ``success_url``."""

        def text(name: str, default: str) -> str:
            value = form.get(name, default)
            return value if isinstance(value, str) else default

        number = re.sub(r"\D", "", text("cardNumber", "4242424242424242"))
        expiry = re.fullmatch(r"\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*", text("cardExpiry", "12 / 30"))
        problem: tuple[int, str] | None = None
        if len(number) < 13:
            problem = 400, _DECLINES["incorrect_number"][1]
        elif expiry is None or not 1 <= int(expiry.group(1)) <= 12:
            problem = 400, "Your card's expiration date is incomplete."
        elif number in _TEST_CARD_FAILURES:
            problem = 402, _decline(*_TEST_CARD_FAILURES[number], None)[2]
        if problem is not None or expiry is None:
            status, message = problem or (400, "Your card's expiration date is incomplete.")
            return _html(status, "Checkout", self._checkout_form(session, form, message))
        year = int(expiry.group(2))
        card: Card = (
            _card_brand(number),
            number[-4:],
            int(expiry.group(1)),
            year + 2000 if year < 100 else year,
        )
        self.complete_checkout(
            session["id"],
            card,
            email=text("email", "") or None,
            name=text("billingName", "") or None,
        )
        location = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"])
        response = _html(
            303, "Redirecting", f'<p><a href="{html.escape(location)}">Continue</a></p>'
        )
        response.headers["Location"] = location
        return response


def _html(status: int, title: str, body: str) -> _Response:
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} (Stripe stub)</title></head>"
        f"<body><main>{body}</main></body></html>"
    )
    return _Response(status, {"Content-Type": "text/html; charset=utf-8"}, page.encode("utf-8"))


def _receipt(charge: JSON) -> str:
    esc = html.escape
    card = charge["payment_method_details"]["card"]
    paid = time.strftime("%Y-%m-%d", time.gmtime(charge["created"]))
    refunded = ""
    if charge["amount_refunded"]:
        refunded = (
            f"<p>Refunded: {esc(_format_amount(charge['amount_refunded'], charge['currency']))}</p>"
        )
    return (
        f"<h1>Receipt</h1><p>Amount paid: "
        f"{esc(_format_amount(charge['amount'], charge['currency']))}</p>"
        f"<p>Date paid: {paid}</p>"
        f"<p>Payment method: {esc(card['brand'])} ending {esc(card['last4'])}</p>{refunded}"
    )


# ------------------------------------------------------------------ HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], stub: StripeStub) -> None:
        self.stub = stub
        super().__init__(address, _RequestHandler)


class _RequestHandler(BaseHTTPRequestHandler):
    """Hands each request to the stub; one request per connection (HTTP/1.0)."""

    server: _Server
    server_version = "stripe-stub"
    timeout = 30

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        response = self.server.stub._handle_http(self.command, self.path, headers, body)
        if response.delay:
            time.sleep(response.delay)  # outside the stub's lock: other requests go on
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped waiting (a delayed answer): nothing to deliver

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: ``StripeStub.requests`` records what happened."""
