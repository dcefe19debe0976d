"""The OpenAPI document of the REST API v1: a valid OpenAPI 3.0.3 document with exactly
the API's operations, their parameters, scopes and error responses. No app, no database."""

from __future__ import annotations

import json

from openapi_spec_validator import OpenAPIV30SpecValidator, validate

from api.openapi import openapi_document

DOC = openapi_document()
ERROR_REF = {"$ref": "#/components/schemas/Error"}
SCOPES = {"usage:write", "usage:read", "billing:read", "platform:read"}
READS = {"200", "400", "401", "403", "429"}
ONE_INVOICE = {"200", "401", "403", "404", "429"}
RANGE = {"from", "to"}
PAGING = {"limit", "before"}

# (method, path): (scope, response statuses, query or path parameters)
OPERATIONS = {
    ("post", "/api/v1/usage/events"): (
        "usage:write", {"200", "400", "401", "403", "413", "422", "429"}, set()),
    ("get", "/api/v1/usage/summary"): ("usage:read", READS, {"period"}),
    ("get", "/api/v1/usage"): ("usage:read", READS, RANGE | {"granularity", "group_by"}),
    ("get", "/api/v1/costs/breakdown"): ("billing:read", READS, {"period"}),
    ("get", "/api/v1/transactions"): ("billing:read", READS, PAGING | RANGE | {"type"}),
    ("get", "/api/v1/transactions.csv"): ("billing:read", READS, RANGE | {"type"}),
    ("get", "/api/v1/invoices"): ("billing:read", READS, PAGING | RANGE | {"status"}),
    ("get", "/api/v1/invoices/{number}"): ("billing:read", ONE_INVOICE, {"number"}),
    ("get", "/api/v1/invoices/{number}/pdf"): ("billing:read", ONE_INVOICE, {"number"}),
    ("get", "/api/v1/platform/revenue"): (
        "platform:read", READS, RANGE | {"granularity", "currency"}),
    ("get", "/api/v1/platform/tenants"): ("platform:read", READS, PAGING),
    ("get", "/api/v1/openapi.json"): (None, {"200"}, set()),
}
PUBLIC = ("get", "/api/v1/openapi.json")


def operations(doc: dict = DOC):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield (method, path), op


def schema(name: str) -> dict:
    return DOC["components"]["schemas"][name]


def test_the_document_is_valid_openapi_3_0():
    assert DOC["openapi"] == "3.0.3"
    validate(DOC, cls=OpenAPIV30SpecValidator)


def test_the_server_url_is_the_one_given():
    doc = openapi_document("https://billing.example.com/")
    validate(doc, cls=OpenAPIV30SpecValidator)
    assert doc["servers"] == [{"url": "https://billing.example.com/"}]
    assert DOC["servers"] == [{"url": "/"}]
    assert DOC["info"]["title"] == "Billfold API"
    assert DOC["info"]["version"] == "1.0.0"


def test_exactly_the_api_operations_are_described():
    assert {key for key, _ in operations()} == set(OPERATIONS)
    ids = [op["operationId"] for _, op in operations()]
    assert len(ids) == len(set(ids))
    tags = {tag["name"] for tag in DOC["tags"]}
    assert tags == {"Usage", "Costs", "Transactions", "Invoices", "Platform", "Meta"}
    for _, op in operations():
        assert len(op["tags"]) == 1 and op["tags"][0] in tags


def test_each_operation_has_its_parameters_and_responses():
    for key, op in operations():
        _, statuses, parameters = OPERATIONS[key]
        assert set(op["responses"]) == statuses, key
        assert {p["name"] for p in op.get("parameters", [])} == parameters, key
        for parameter in op.get("parameters", []):
            assert parameter["in"] == ("path" if parameter["name"] == "number" else "query")
            assert parameter["required"] is (parameter["in"] == "path")
            assert "type" in parameter["schema"]


def test_paging_and_date_range_parameters():
    for _, op in operations():
        parameters = {p["name"]: p for p in op.get("parameters", [])}
        if "limit" in parameters:
            assert parameters["limit"]["schema"] == {
                "type": "integer", "minimum": 1, "maximum": 1000, "default": 50}
            assert parameters["before"]["schema"]["type"] == "integer"
        for name in RANGE & set(parameters):
            assert parameters[name]["schema"] == {"type": "string"}
            assert "RFC 3339" in parameters[name]["description"]


def test_every_operation_but_the_document_needs_a_scope():
    bearer = DOC["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"], bearer["bearerFormat"]) == (
        "http", "bearer", "bf_ API key")
    assert DOC["security"] == [{"bearerAuth": []}]
    for key, op in operations():
        scope = OPERATIONS[key][0]
        if key == PUBLIC:
            assert op["security"] == []
            assert "x-required-scope" not in op
            continue
        assert "security" not in op
        assert op["x-required-scope"] == scope
        assert scope in SCOPES
        assert f"`{scope}`" in op["description"]


def test_authenticated_operations_answer_401_and_429():
    for key, op in operations():
        if key != PUBLIC:
            assert {"401", "429"} <= set(op["responses"]), key


def test_every_4xx_response_is_the_error_schema():
    for key, op in operations():
        for status, response in op["responses"].items():
            if status.startswith("4"):
                content = response["content"]["application/json"]
                assert content["schema"] == ERROR_REF, (key, status)
                assert set(content["example"]["error"]) == {"code", "message", "details"}
    error = schema("Error")["properties"]["error"]
    assert error["required"] == ["code", "message", "details"]
    assert error["properties"]["details"]["nullable"] is True


def test_429_carries_the_rate_limit_headers():
    for _, op in operations():
        if "429" in op["responses"]:
            assert set(op["responses"]["429"]["headers"]) == {
                "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining",
                "X-RateLimit-Reset"}


def test_error_codes_match_their_statuses():
    codes = {}
    for _, op in operations():
        for status, response in op["responses"].items():
            if status.startswith("4"):
                codes[status] = response["content"]["application/json"]["example"]["error"]
    assert {status: error["code"] for status, error in codes.items()} == {
        "400": "invalid_parameters", "401": "unauthenticated", "403": "insufficient_scope",
        "404": "not_found", "413": "payload_too_large", "422": "invalid_batch",
        "429": "rate_limited"}
    assert isinstance(codes["422"]["details"], list)
    assert set(codes["422"]["details"][0]) == set(schema("InvalidBatchItem")["properties"])


def test_the_document_is_json_and_deterministic():
    text = json.dumps(DOC, allow_nan=False)
    assert json.loads(text) == DOC
    assert json.dumps(openapi_document(), allow_nan=False) == text


def test_usage_events_are_closed_objects():
    event = schema("UsageEvent")
    assert event["additionalProperties"] is False
    assert set(event["required"]) == {"id", "metric", "quantity", "timestamp"}
    assert {s["type"] for s in event["properties"]["quantity"]["anyOf"]} == {
        "string", "integer", "number"}
    batch = schema("UsageEventBatch")["properties"]["events"]
    assert (batch["minItems"], batch["maxItems"]) == (1, 10_000)


def test_lists_share_the_paging_envelope():
    for name in ("LedgerEntryList", "InvoiceList", "TenantList"):
        envelope = schema(name)
        assert set(envelope["required"]) == {"data", "has_more", "next_before"}
        assert envelope["properties"]["next_before"]["nullable"] is True


def test_enums_match_the_domain():
    from invoices.models import ENTRY_SIGNS, INVOICE_STATUSES, SOURCES
    from plans.metrics import METRICS, SERVICES

    event = schema("UsageEvent")["properties"]
    assert event["metric"]["enum"] == list(METRICS)
    assert event["service"]["enum"] == list(SERVICES)
    assert list(schema("UsageSummary")["properties"]["metrics"]["properties"]) == list(METRICS)
    by_service = schema("CostBreakdown")["properties"]["by_service"]["properties"]
    assert {k: tuple(v["properties"]) for k, v in by_service.items()} == SERVICES
    ledger = schema("LedgerEntry")["properties"]
    assert ledger["type"]["enum"] == list(ENTRY_SIGNS)
    assert ledger["source"]["enum"] == list(SOURCES)
    assert schema("Invoice")["properties"]["status"]["enum"] == list(INVOICE_STATUSES)


def test_ingestion_limits_match_the_metering():
    from plans import metering

    event = schema("UsageEvent")["properties"]
    batch = schema("UsageEventBatch")["properties"]["events"]
    assert batch["maxItems"] == metering.MAX_BATCH
    assert str(metering.MAX_PROPERTIES_BYTES) in event["properties"]["description"]
    assert event["quantity"]["anyOf"][1]["maximum"] == metering.MAX_QUANTITY
    assert rf"\d{{1,{metering.MAX_DECIMALS}}}" in event["quantity"]["anyOf"][0]["pattern"]
