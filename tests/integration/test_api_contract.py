"""The API against its OpenAPI document: every response of these tests is validated
against the document, each operation is tried with each scope, the rate limit
recovers after its window, and schemathesis fuzzes every operation (no 5xx, every
response as documented)."""

from __future__ import annotations

import datetime as dt
import re
import time

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from openapi_schema_validator import OAS30Validator

from api import keys
from api.openapi import openapi_document
from invoices import invoicing
from plans.metering import ingest_events
from plans.periods import period_containing
from portal.audit import Actor
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import unscoped

ACTOR = Actor.system("contract")
DOCUMENT = openapi_document("/")
TENANT_SCOPES = ("usage:write", "usage:read", "billing:read")


def _resolve(node, document=DOCUMENT):
    """The schema with every $ref replaced by what it points at."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = document
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return _resolve(target, document)
        return {k: _resolve(v, document) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, document) for v in node]
    return node


def _operation(method: str, path: str):
    for template, item in DOCUMENT["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    return None, None


def check_response(method: str, path: str, response) -> None:
    """The response's status is documented for the operation, and its JSON body (or
    content type) is what the document says."""
    template, operation = _operation(method, path)
    assert operation is not None, f"{method} {path} is not in the OpenAPI document"
    documented = operation["responses"]
    status = str(response.status_code)
    assert status in documented, f"{method} {template}: {status} is not documented"
    content = _resolve(documented[status]).get("content", {})
    media = response.mimetype
    assert media in content, f"{method} {template} {status}: {media} not documented"
    schema = content[media].get("schema")
    if media == "application/json" and schema:
        errors = sorted(OAS30Validator(schema).iter_errors(response.get_json()), key=str)
        assert not errors, f"{method} {template} {status}: {errors[0].message}"


class CheckedClient(FlaskClient):
    """A test client that validates every /api/v1 response against the document."""

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        request = response.request
        if request.path.startswith("/api/v1/"):
            check_response(request.method, request.path, response)
        return response


@pytest.fixture
def api(app):
    saved = app.test_client_class
    app.test_client_class = CheckedClient
    yield app.test_client()
    app.test_client_class = saved


@pytest.fixture
def seeded(app, world):
    """Alpha with usage, a closed period with its invoice, and a key per scope."""
    with app.app_context(), unscoped():
        alpha = db.session.get(Tenant, world.ids["a"])
        period = period_containing(dt.date.today()).previous()
        moment = dt.datetime.combine(period.start, dt.time(9), dt.UTC)
        ingest_events(alpha, [{"id": f"s{n}", "metric": metric, "quantity": qty,
                               "timestamp": moment, "user": user}
                              for n, (metric, qty, user) in enumerate([
                                  ("llm_tokens", 7_000_000, "alice"),
                                  ("storage_gb", 120, "bob"),
                                  ("compute_hours", 90, "alice")])])
        number = invoicing.close_period(alpha, period).number
        headers = {}
        for scope in TENANT_SCOPES:
            _, secret = keys.create_key(ACTOR, alpha, scope, scope)
            headers[scope] = {"Authorization": f"Bearer {secret}"}
        _, secret = keys.create_key(ACTOR, None, "platform", "platform:read")
        headers["platform:read"] = {"Authorization": f"Bearer {secret}"}
        _, secret = keys.create_key(ACTOR, alpha, "all", ",".join(TENANT_SCOPES))
        headers["all"] = {"Authorization": f"Bearer {secret}"}
    return {"number": number, "period": period.label, "headers": headers}


def _calls(seeded):
    """One valid call per documented operation, with the scope it needs."""
    now = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
    number = seeded["number"]
    return [
        ("post", "/api/v1/usage/events", {"json": {"events": [
            {"id": "c1", "metric": "sql_queries", "quantity": 3, "timestamp": now}]}},
         "usage:write"),
        ("get", "/api/v1/usage/summary", {}, "usage:read"),
        ("get", f"/api/v1/usage/summary?period={seeded['period']}", {}, "usage:read"),
        ("get", "/api/v1/usage?granularity=week&group_by=user", {}, "usage:read"),
        ("get", f"/api/v1/costs/breakdown?period={seeded['period']}", {}, "billing:read"),
        ("get", "/api/v1/transactions?limit=5", {}, "billing:read"),
        ("get", "/api/v1/transactions.csv", {}, "billing:read"),
        ("get", "/api/v1/invoices?status=pending", {}, "billing:read"),
        ("get", f"/api/v1/invoices/{number}", {}, "billing:read"),
        ("get", f"/api/v1/invoices/{number}/pdf", {}, "billing:read"),
        ("get", "/api/v1/platform/revenue?granularity=week", {}, "platform:read"),
        ("get", "/api/v1/platform/tenants", {}, "platform:read"),
    ]


def test_every_operation_is_allowed_with_its_scope_and_refused_without(api, seeded):
    covered = set()
    for method, url, kwargs, needed in _calls(seeded):
        covered.add(_operation(method, url.split("?")[0])[0])
        for scope, headers in seeded["headers"].items():
            if scope == "all":
                continue
            response = getattr(api, method)(url, headers=headers, **kwargs)
            if scope == needed:
                assert response.status_code == 200, (url, scope, response.get_data()[:300])
            else:
                assert response.status_code == 403, (url, scope)
                assert response.get_json()["error"]["code"] == "insufficient_scope"
    documented = {p for p in DOCUMENT["paths"] if p != "/api/v1/openapi.json"}
    assert covered == documented


def test_error_responses_match_the_document(api, seeded):
    headers = seeded["headers"]["all"]
    assert api.get("/api/v1/usage/summary").status_code == 401
    assert api.get("/api/v1/transactions?limit=5000", headers=headers).status_code == 400
    assert api.get("/api/v1/usage?from=soon", headers=headers).status_code == 400
    assert api.get("/api/v1/invoices/BF-2000-000001", headers=headers).status_code == 404
    bad = api.post("/api/v1/usage/events", headers=headers,
                   json={"events": [{"id": "x", "metric": "nope"}]})
    assert bad.status_code == 422
    assert api.get("/api/v1/openapi.json").status_code == 200


@pytest.fixture(scope="module")
def short_window_app(app):
    from portal import create_app
    from tests.conftest import config_for

    return create_app(config_for(app.config["DATABASE_URL"], RATELIMIT_ENABLED=True,
                                 API_RATE_LIMIT="2 per 2 second"))


def test_the_rate_limit_recovers_after_its_window(seeded, short_window_app):
    client = short_window_app.test_client()
    headers = seeded["headers"]["usage:read"]
    statuses = [client.get("/api/v1/usage/summary", headers=headers).status_code
                for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = client.get("/api/v1/usage/summary", headers=headers)
    check_response("GET", "/api/v1/usage/summary", limited)
    time.sleep(float(limited.headers["Retry-After"]) + 0.2)
    assert client.get("/api/v1/usage/summary", headers=headers).status_code == 200


# -- schemathesis ---------------------------------------------------------------------

def test_fuzzing_finds_no_server_error_and_no_undocumented_response(app, seeded):
    """schemathesis generates requests for every operation from the document; each
    answer must be a documented status with a documented body, and never a 5xx."""
    import schemathesis

    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    # Every operation but the document itself, which schemathesis leaves out.
    documented = {f"{method.upper()} {path}" for path, item in DOCUMENT["paths"].items()
                  for method in item if path != "/api/v1/openapi.json"}
    assert {op.label for op in operations} == documented
    for operation in operations:
        scope = operation.definition.raw.get("x-required-scope")
        headers = seeded["headers"]["platform:read" if scope == "platform:read" else "all"]

        _fuzz(operation, headers)


def _fuzz(operation, headers: dict) -> None:
    from hypothesis import given
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    @given(case=operation.as_strategy())
    @settings(max_examples=15, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        # Generated data can be valid for the schema yet refused on a rule the schema
        # cannot state (a range that ends before it starts, a cursor of a deleted
        # row): that 400 is right, so acceptance is not demanded.
        case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

    run()
