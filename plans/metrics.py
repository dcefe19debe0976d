"""The metered metrics. Their codes are part of the API."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

SUM = "sum"
PEAK = "peak"


@dataclass(frozen=True)
class Metric:
    code: str
    label: str
    unit: str  # the billing unit shown and priced (plural)
    unit_one: str  # the same unit, singular
    event_unit: str  # the unit an event's quantity is in
    aggregation: str  # SUM: add every event; PEAK: highest daily value, period on its peak
    service: str  # default service
    component: str  # default cost component of that service
    per_billing_unit: Decimal = Decimal(1)  # event units per billing unit

    @property
    def digits(self) -> int:
        """Decimal places worth showing: whole tokens and queries, GB and hours to 2."""
        return 2 if self.unit in ("GB", "hours") else 0

    def to_billing_units(self, quantity: Decimal) -> Decimal:
        return quantity / self.per_billing_unit


METRICS: dict[str, Metric] = {
    m.code: m
    for m in (
        Metric("llm_tokens", "LLM tokens", "tokens", "token", "tokens", SUM, "ai_service",
               "llm_cost"),
        Metric("sql_queries", "SQL queries", "queries", "query", "queries", SUM,
               "query_engine", "query_cost"),
        Metric("storage_gb", "Storage", "GB", "GB", "GB", PEAK, "query_engine",
               "storage_cost"),
        Metric("api_requests", "API requests", "requests", "request", "requests", SUM,
               "ai_service", "compute_cost"),
        # Compute is metered per minute: events carry minutes, bills count hours.
        Metric("compute_hours", "Compute", "hours", "hour", "minutes", SUM, "ai_service",
               "compute_cost", per_billing_unit=Decimal(60)),
    )
}
METRIC_CODES = tuple(METRICS)

# Services and their cost components (the cost breakdown's shape).
SERVICES: dict[str, tuple[str, ...]] = {
    "ai_service": ("llm_cost", "compute_cost"),
    "query_engine": ("query_cost", "storage_cost"),
    "ml_service": ("training_cost", "serving_cost"),
}
