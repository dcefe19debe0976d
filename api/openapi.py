"""The OpenAPI 3.0.3 document of the REST API v1, built as a plain dict."""

from __future__ import annotations

from typing import Any

PREFIX = "/api/v1"

SCOPES = {
    "usage:write": "Send usage events.",
    "usage:read": "Read the usage summary and usage over time.",
    "billing:read": "Read costs, the credit ledger and invoices.",
    "platform:read": "Read platform-wide revenue and tenants (platform keys only).",
}
METRICS = ("llm_tokens", "sql_queries", "storage_gb", "api_requests", "compute_hours")
SERVICES = {
    "ai_service": ("llm_cost", "compute_cost"),
    "query_engine": ("query_cost", "storage_cost"),
    "ml_service": ("training_cost", "serving_cost"),
}
LEDGER_TYPES = ("topup", "auto_recharge", "usage", "storage_billing", "refund", "bonus",
                "admin_correction", "contract_grant", "bonus_grant")
LEDGER_SOURCES = ("stripe_webhook", "admin_correction", "system", "user")
INVOICE_STATUSES = ("draft", "pending", "paid", "overdue", "void")
GRANULARITIES = ("day", "week", "month")
GROUP_BY = ("metric", "service", "user")

MAX_BATCH = 10_000
MAX_DECIMALS = 6
MAX_QUANTITY = 10**12
MAX_PROPERTIES_BYTES = 4096
PERIOD_PATTERN = r"^(19|20|21)\d{2}-(0[1-9]|1[0-2])$"  # a month of 1900-2199
INVOICE_NUMBER_PATTERN = r"^BF-\d{4}-\d{6}$"

# Status: code, what it means, an example message and details.
ERRORS = {
    400: ("invalid_parameters", "A query parameter or the request body is invalid; "
          "`details` maps each bad parameter to its message.",
          "Invalid parameters.", {"limit": "must be an integer from 1 to 1000"}),
    401: ("unauthenticated", "The API key is missing, malformed, unknown, revoked or expired.",
          "A valid API key is required.", None),
    403: ("insufficient_scope", "The API key lacks the scope this operation needs.",
          "this API key lacks the billing:read scope", {"required": "billing:read"}),
    404: ("not_found", "No such resource for this tenant.", "No such invoice.", None),
    405: ("method_not_allowed", "The path does not accept this HTTP method.",
          "Method not allowed.", None),
    413: ("payload_too_large", f"The request body is too large, or the batch carries more "
          f"than {MAX_BATCH:,} events.", f"a batch carries at most {MAX_BATCH:,} events", None),
    422: ("invalid_batch", "At least one event is invalid; nothing was stored. `details` "
          "lists every problem by event index and field.",
          "The batch was rejected; nothing was stored.",
          [{"index": 3, "field": "quantity", "message": "at most 6 decimal places"}]),
    429: ("rate_limited", "Too many requests with this API key; retry after `Retry-After` "
          "seconds.", "Too many requests; retry later.", None),
}

RATE_LIMIT_HEADERS = {
    "Retry-After": "Seconds to wait before retrying.",
    "X-RateLimit-Limit": "Requests allowed in the window.",
    "X-RateLimit-Remaining": "Requests left in the window.",
    "X-RateLimit-Reset": "When the window resets, in seconds since the Unix epoch.",
}

DESCRIPTION = f"""\
Billfold's REST API, version 1.

**Authentication.** Every call except the OpenAPI document itself sends an API key as a
bearer token: `Authorization: Bearer bf_...`. Keys are created in the portal (shown once),
named, scoped, revocable and optionally expiring. A tenant's key reads and writes that
tenant's data only; a platform key calls only the platform operations.

**Scopes.** Each operation needs one scope, named in its description and in its
`x-required-scope` extension; a key without it gets `403 insufficient_scope`.
{chr(10).join(f"- `{scope}`: {text}" for scope, text in SCOPES.items())}

**Money.** Amounts are integers in the currency's minor units (cents for USD), always
beside an ISO 4217 `currency` code; `1250` with `USD` is $12.50.

**Dates.** `from` and `to` take a date (`YYYY-MM-DD`, a whole day in the tenant's time
zone) or an RFC 3339 date-time with an offset. Periods are months, `YYYY-MM`.

**Errors.** Every error answers `{{"error": {{"code", "message", "details"}}}}`:
{chr(10).join(f"- `{status}` `{code}`" for status, (code, *_) in ERRORS.items())}

**Paging.** Lists answer `{{"data": [...], "has_more": bool, "next_before": cursor|null}}`,
newest first. Pass `next_before` as `before` to get the next page; `limit` is 1 to 1000
(default 50).

**Rate limits.** Requests are limited per API key; `429` carries
{", ".join(f"`{name}`" for name in RATE_LIMIT_HEADERS)}.
"""

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def obj(properties: dict[str, Schema], required: tuple[str, ...] | None = None,
        description: str | None = None, **extra: Any) -> Schema:
    """An object schema; every property is required unless ``required`` says otherwise."""
    schema: Schema = {"type": "object"}
    if description:
        schema["description"] = description
    schema["properties"] = properties
    schema["required"] = list(properties if required is None else required)
    schema.update(extra)
    return schema


def typed(kind: str, description: str | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": kind, **extra}
    if description:
        schema["description"] = description
    return schema


def string(description: str | None = None, **extra: Any) -> Schema:
    return typed("string", description, **extra)


def integer(description: str | None = None, **extra: Any) -> Schema:
    return typed("integer", description, **extra)


def number(description: str) -> Schema:
    return typed("number", description)


def money(description: str = "Minor units of `currency`.") -> Schema:
    return integer(description, format="int64")


def currency(description: str = "ISO 4217 currency code.") -> Schema:
    return string(description, pattern="^[A-Z]{3}$", minLength=3, maxLength=3, example="USD")


def date(description: str) -> Schema:
    return string(description, format="date")


def date_time(description: str) -> Schema:
    return string(description, format="date-time")


def list_of(item: str) -> Schema:
    return obj({
        "data": {"type": "array", "items": ref(item)},
        "has_more": {"type": "boolean", "description": "Whether older items follow."},
        "next_before": nullable(integer(
            "Cursor for the next page (pass it as `before`); null on the last page.",
            format="int64")),
    }, description=f"A page of {item} items, newest first.")


def schemas() -> dict[str, Schema]:
    return {
        "Error": obj({"error": obj({
            "code": string("Machine-readable code: "
                           + ", ".join(f"`{code}` ({status})"
                                       for status, (code, *_) in ERRORS.items()) + "."),
            "message": string("Human-readable explanation."),
            "details": {
                "nullable": True,
                "description": "More about the error, or null. For `invalid_batch`, an "
                               "array of InvalidBatchItem; for `invalid_parameters`, an "
                               "object mapping each bad parameter name to its message "
                               "(InvalidParameters).",
            },
        }, required=("code", "message", "details"))}),
        "InvalidBatchItem": obj({
            "index": integer("Index of the event in `events`.", minimum=0),
            "field": string("Field of the event at fault (`event` for the event as a "
                            "whole)."),
            "message": string("What is wrong with it."),
        }, description="One problem in a rejected batch (an `invalid_batch` error's "
                        "`details` is an array of these)."),
        "InvalidParameters": {
            "type": "object",
            "description": "An `invalid_parameters` error's `details`: each bad parameter "
                           "name mapped to its message.",
            "additionalProperties": {"type": "string"},
        },
        "UsageEvent": obj({
            "id": string("Unique per tenant: the idempotency key. An event whose id was "
                         "already stored counts as a duplicate and is not stored again.",
                         minLength=1, maxLength=128, example="evt_000001"),
            "metric": string("What is measured. `compute_hours` events carry minutes.",
                             enum=list(METRICS)),
            "quantity": {
                "description": "Non-negative amount, exact: a decimal string such as "
                               f'`"12.5"`, an integer, or a JSON number, at most '
                               f"{MAX_DECIMALS} decimal places, at most {MAX_QUANTITY:,}. "
                               "JSON numbers are read as exact decimals from their digits, "
                               "never through binary floating point.",
                "anyOf": [
                    string(pattern=rf"^\d+(\.\d{{1,{MAX_DECIMALS}}})?$", example="12.5"),
                    integer(minimum=0, maximum=MAX_QUANTITY, format="int64"),
                    {"type": "number", "minimum": 0, "maximum": MAX_QUANTITY},
                ],
            },
            "timestamp": date_time("When the usage happened, RFC 3339 with an offset "
                                   "(`Z` or `±hh:mm`); at most 5 minutes in the future."),
            "service": string("Service the usage belongs to; defaults to the metric's "
                              "service.", enum=list(SERVICES)),
            "user": string("Your identifier of the end user, for cost by user.",
                           maxLength=128, example="user_42"),
            "properties": {
                "type": "object",
                "description": f"Free-form attributes, at most {MAX_PROPERTIES_BYTES} bytes "
                               "as JSON.",
                "additionalProperties": True,
                "example": {"model": "large"},
            },
        }, required=("id", "metric", "quantity", "timestamp"), additionalProperties=False),
        "UsageEventBatch": obj({
            "events": {"type": "array", "items": ref("UsageEvent"), "minItems": 1,
                       "maxItems": MAX_BATCH},
        }, description="A batch of events, stored all or nothing."),
        "IngestResult": obj({
            "accepted": integer("Events stored by this request.", minimum=0),
            "duplicates": integer("Events skipped because their id was already stored.",
                                  minimum=0),
        }),
        "MetricUsage": obj({
            "used": number("Quantity used this period, in the metric's billing unit."),
            "limit": nullable(number("Quantity included in the plan; null when unlimited.")),
            "percentage": nullable(number("`used` as a percentage of `limit`; null without "
                                          "a limit.")),
        }),
        "UsageSummary": obj({
            "period": string("The period, `YYYY-MM`.", pattern=PERIOD_PATTERN),
            "metrics": obj({code: ref("MetricUsage") for code in METRICS},
                           description="Usage per metric code."),
        }),
        "UsageBucket": obj({
            "start": date("First day of the bucket."),
            "end": date("Day after the bucket's last day (exclusive)."),
            "group": string("The metric code, service or user this row is for."),
            "quantity": nullable(number("Quantity in the metric's billing unit; null where "
                                        "it would add up different metrics (rows grouped "
                                        "by service or user).")),
            "cost": money("Cost in minor units of the response's `currency`."),
        }),
        "UsageSeries": obj({
            "from": date("First day of the range (inclusive)."),
            "to": date("Last day of the range (inclusive)."),
            "granularity": string("Bucket size.", enum=list(GRANULARITIES)),
            "group_by": string("Grouping of the rows.", enum=list(GROUP_BY)),
            "timezone": string("The tenant's IANA time zone, in which days are counted.",
                               example="Europe/Berlin"),
            "currency": currency(),
            "data": {"type": "array", "items": ref("UsageBucket")},
        }),
        "CostBreakdown": obj({
            "period": string("The period, `YYYY-MM`.", pattern=PERIOD_PATTERN),
            "currency": currency(),
            "total": money("Total before tax; for a closed period, the invoice's amount "
                           "before tax."),
            "platform_fee": money("The plan's base fee."),
            "by_service": obj({
                service: obj({part: money() for part in parts})
                for service, parts in SERVICES.items()
            }, description="Cost per service and component."),
            "by_user": {"type": "array", "items": ref("UserCost")},
            "invoice": nullable(string("Number of the period's invoice; null while the "
                                       "period is open.",
                                       pattern=INVOICE_NUMBER_PATTERN)),
        }),
        "UserCost": obj({
            "user_id": string("The `user` given in usage events."),
            "name": string("Display name."),
            "cost": money(),
        }),
        "LedgerEntry": obj({
            "id": integer("Entry id (also the paging cursor).", format="int64"),
            "created_at": date_time("When the entry was recorded."),
            "type": string("Kind of entry.", enum=list(LEDGER_TYPES)),
            "amount": money("Signed minor units: credit positive, debit negative."),
            "currency": currency(),
            "balance_after": money("Credit balance after this entry."),
            "description": string("What the entry is for."),
            "source": string("What recorded it.", enum=list(LEDGER_SOURCES)),
            "ref_id": nullable(string("External reference (payment, invoice), if any.")),
        }),
        "LedgerEntryList": list_of("LedgerEntry"),
        "Invoice": obj(invoice_properties()),
        "InvoiceList": list_of("Invoice"),
        "InvoiceDetail": obj({
            **invoice_properties(),
            "subtotal": money("Total before tax."),
            "tax": money(),
            "paid": money("Amount paid or credited so far."),
            "amount_due": money("Amount still due."),
            "lines": {"type": "array", "items": ref("InvoiceLine")},
            "payments": {"type": "array", "items": ref("InvoicePayment")},
        }),
        "InvoiceLine": obj({
            "description": string(),
            "metric": nullable(string("Metric code; null for lines not metered (the base "
                                      "fee).")),
            "service": string(),
            "quantity": string("Decimal quantity.", example="1250.5"),
            "unit_price": string("Decimal price per unit, in major units.",
                                 example="0.002"),
            "amount": money(),
        }),
        "InvoicePayment": obj({
            "method": string("How it was paid, such as `card`, `credit`, `ach` or "
                             "`wire`."),
            "amount": money(),
            "reference": string("Payment reference."),
            "received_at": date_time("When the payment was received."),
        }),
        "RevenueBucket": obj({
            "start": date("First day of the bucket."),
            "gross": money("Payments received."),
            "refunds": money("Refunds paid out."),
            "fees": money("Payment processor fees."),
            "net": money("`gross - refunds - fees`."),
        }),
        "Revenue": obj({
            "currency": currency(),
            "granularity": string("Bucket size.", enum=list(GRANULARITIES)),
            "data": {"type": "array", "items": ref("RevenueBucket")},
        }),
        "TenantSummary": obj({
            "slug": string(),
            "name": string(),
            "status": string(),
            "currency": currency(),
            "plan": nullable(string("Current plan's name; null without a plan.")),
            "balance": money("Credit balance."),
            "month_to_date_spend": money("Spend since the start of the month."),
            "overdue": money("Amount of overdue invoices."),
        }),
        "TenantList": list_of("TenantSummary"),
    }


def invoice_properties() -> dict[str, Schema]:
    return {
        "number": string("Invoice number.", pattern=INVOICE_NUMBER_PATTERN,
                         example="BF-2026-000042"),
        "period_start": date("First day of the billed period."),
        "period_end": date("Last day of the billed period (inclusive)."),
        "status": string(enum=list(INVOICE_STATUSES)),
        "issued_at": nullable(date_time("When the invoice was issued; null for a draft.")),
        "due_date": nullable(date("Payment due date; null for a draft.")),
        "amount": money("Total, tax included."),
        "currency": currency(),
    }


def query(name: str, schema: Schema, description: str, required: bool = False) -> Schema:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}


def period_param() -> Schema:
    return query("period", string(pattern=PERIOD_PATTERN),
                 "Billing period, `YYYY-MM` (the month it starts in); defaults to the "
                 "current one.")


def range_params() -> list[Schema]:
    kinds = ("a date (`YYYY-MM-DD`, in the tenant's time zone) or an RFC 3339 date-time")
    return [
        query("from", string(), f"Start of the range (inclusive): {kinds}."),
        query("to", string(), f"End of the range: {kinds}; a date includes that whole day."),
    ]


def granularity_param(default: str) -> Schema:
    return query("granularity", string(enum=list(GRANULARITIES), default=default),
                 "Bucket size.")


def paging_params() -> list[Schema]:
    return [
        query("limit", integer(minimum=1, maximum=1000, default=50),
              "Items per page, 1 to 1000."),
        query("before", integer(format="int64"),
              "Cursor: the previous page's `next_before`; items older than it."),
    ]


def ledger_type_param() -> Schema:
    return query("type", string(enum=list(LEDGER_TYPES)), "Only entries of this type.")


def json_body(schema: Schema) -> dict[str, Schema]:
    return {"application/json": {"schema": schema}}


def error_response(status: int, details: Any = None) -> Schema:
    """The response of an error status; ``details`` replaces the example's details."""
    code, description, message, example_details = ERRORS[status]
    details = example_details if details is None else details
    example = {"error": {"code": code, "message": message, "details": details}}
    response: Schema = {"description": f"`{code}`: {description}",
                        "content": {"application/json": {"schema": ref("Error"),
                                                          "example": example}}}
    if status == 429:
        response["headers"] = {name: {"description": text, "schema": integer(minimum=0)}
                               for name, text in RATE_LIMIT_HEADERS.items()}
    return response


def operation(operation_id: str, tag: str, scope: str | None, summary: str,
              description: str, ok: Schema, errors: tuple[int, ...],
              parameters: list[Schema] | None = None, body: Schema | None = None,
              error_details: dict[int, Any] | None = None) -> Schema:
    op: Schema = {"operationId": operation_id, "tags": [tag], "summary": summary}
    if scope is None:
        op["description"] = f"{description}\n\nNo authentication required."
        op["security"] = []
    else:
        op["description"] = f"{description}\n\nRequired scope: `{scope}`."
        op["x-required-scope"] = scope
    if parameters:
        op["parameters"] = list(parameters)
    if body is not None:
        op["requestBody"] = body
    error_details = error_details or {}
    op["responses"] = {"200": ok, **{str(status): error_response(status, error_details.get(status))
                                     for status in errors}}
    return op


def ok_json(description: str, schema: str) -> Schema:
    return {"description": description, "content": json_body(ref(schema))}


def paths() -> dict[str, Schema]:
    reads = (400, 401, 403, 429)
    invoice_number = {"name": "number", "in": "path", "required": True,
                      "description": "Invoice number.",
                      "schema": string(pattern=INVOICE_NUMBER_PATTERN,
                                       example="BF-2026-000042")}
    return {
        f"{PREFIX}/usage/events": {"post": operation(
            "ingestUsageEvents", "Usage", "usage:write", "Send a batch of usage events",
            f"Stores up to {MAX_BATCH:,} events, all or nothing: one invalid event rejects "
            "the batch with `422 invalid_batch` listing every problem. Events whose id was "
            "already stored are counted as duplicates and skipped, so a batch can be "
            "retried safely.",
            ok_json("The batch was stored.", "IngestResult"), (400, 401, 403, 413, 422, 429),
            body={"required": True, "content": json_body(ref("UsageEventBatch"))},
            error_details={400: {"events": f"must be an array of 1 to {MAX_BATCH:,} events"}})},
        f"{PREFIX}/usage/summary": {"get": operation(
            "getUsageSummary", "Usage", "usage:read", "Usage of the period per metric",
            "Used quantity, plan limit and percentage per metric for a billing period.",
            ok_json("The usage summary.", "UsageSummary"), reads,
            parameters=[period_param()])},
        f"{PREFIX}/usage": {"get": operation(
            "getUsage", "Usage", "usage:read", "Usage and cost over time",
            "Quantity and cost per bucket of time, grouped by metric, service or user; "
            "by default over the last 30 days.",
            ok_json("The usage buckets.", "UsageSeries"), reads,
            parameters=[*range_params(), granularity_param("day"),
                        query("group_by", string(enum=list(GROUP_BY), default="metric"),
                              "Grouping of the rows.")])},
        f"{PREFIX}/costs/breakdown": {"get": operation(
            "getCostBreakdown", "Costs", "billing:read", "Cost breakdown of a period",
            "Total, platform fee, cost per service and component, and cost per user.",
            ok_json("The cost breakdown.", "CostBreakdown"), reads,
            parameters=[period_param()])},
        f"{PREFIX}/transactions": {"get": operation(
            "listTransactions", "Transactions", "billing:read", "List ledger entries",
            "The credit ledger, newest first, one page at a time.",
            ok_json("A page of ledger entries.", "LedgerEntryList"), reads,
            parameters=[*paging_params(), *range_params(), ledger_type_param()])},
        f"{PREFIX}/transactions.csv": {"get": operation(
            "exportTransactionsCsv", "Transactions", "billing:read",
            "Export ledger entries as CSV",
            "The same ledger entries as `listTransactions`, all of them, streamed as CSV.",
            {"description": "The entries as CSV.",
             "content": {"text/csv": {"schema": string()}}}, reads,
            parameters=[*range_params(), ledger_type_param()])},
        f"{PREFIX}/invoices": {"get": operation(
            "listInvoices", "Invoices", "billing:read", "List invoices",
            "Invoices, newest first, one page at a time.",
            ok_json("A page of invoices.", "InvoiceList"), reads,
            parameters=[query("status", string(enum=list(INVOICE_STATUSES)),
                              "Only invoices with this status."),
                        *range_params(), *paging_params()])},
        f"{PREFIX}/invoices/{{number}}": {"get": operation(
            "getInvoice", "Invoices", "billing:read", "Get an invoice",
            "An invoice with its lines and payments.",
            ok_json("The invoice.", "InvoiceDetail"), (401, 403, 404, 429),
            parameters=[invoice_number])},
        f"{PREFIX}/invoices/{{number}}/pdf": {"get": operation(
            "getInvoicePdf", "Invoices", "billing:read", "Download an invoice's PDF",
            "The invoice as a PDF document.",
            {"description": "The PDF.",
             "content": {"application/pdf": {"schema": string(format="binary")}}},
            (401, 403, 404, 429), parameters=[invoice_number])},
        f"{PREFIX}/platform/revenue": {"get": operation(
            "getPlatformRevenue", "Platform", "platform:read", "Platform revenue",
            "Gross payments, refunds, processor fees and net revenue per bucket of time, "
            "for one currency.",
            ok_json("The revenue buckets.", "Revenue"), reads,
            parameters=[*range_params(), granularity_param("month"),
                        query("currency", currency("ISO 4217 currency code.")
                              | {"default": "USD"}, "Currency of the figures.")])},
        f"{PREFIX}/platform/tenants": {"get": operation(
            "listPlatformTenants", "Platform", "platform:read", "List tenants",
            "Tenants with their plan, credit balance, month-to-date spend and overdue "
            "amount.",
            ok_json("A page of tenants.", "TenantList"), reads,
            parameters=paging_params())},
        f"{PREFIX}/openapi.json": {"get": operation(
            "getOpenApiDocument", "Meta", None, "This OpenAPI document",
            "The OpenAPI 3.0.3 document of this API.",
            {"description": "The OpenAPI document.",
             "content": json_body({"type": "object"})}, ())},
    }


TAGS = (
    ("Usage", "Send usage events and read usage."),
    ("Costs", "What usage costs."),
    ("Transactions", "The credit ledger."),
    ("Invoices", "Invoices and their PDFs."),
    ("Platform", "Platform-wide figures, for platform keys."),
    ("Meta", "About the API itself."),
)


def openapi_document(server_url: str = "/") -> dict:
    """The OpenAPI 3.0.3 document of the API v1, with ``server_url`` as its server."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "Billfold API", "version": "1.0.0", "description": DESCRIPTION},
        "servers": [{"url": server_url}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": name, "description": text} for name, text in TAGS],
        "paths": paths(),
        "components": {
            "securitySchemes": {"bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "bf_ API key",
                "description": "An API key, `Authorization: Bearer bf_...`.",
            }},
            "schemas": schemas(),
        },
    }
