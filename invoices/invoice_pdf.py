"""The invoice PDF, rendered from the invoice's snapshot alone.

The snapshot (``invoices.invoicing``) is a JSON-able dict holding everything the
document shows, the issuer's details and bank instructions included, so the same
invoice always gives the same bytes: nothing here reads the database, the clock or
the app's configuration.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, NamedTuple

from portal.formatting import long_date, quantity, unit_price
from portal.money import to_decimal
from portal.pdf import render_pdf

TEMPLATE = "pdf/invoice.html"

SERVICE_LABELS = {"platform": "Platform", "ai_service": "AI service",
                  "query_engine": "Query engine", "ml_service": "ML service"}
TERMS = {"card": "Charged to the card on file", "prepaid": "Paid from prepaid credit",
         "ach": "ACH debit", "invoice": "Net 30", "wire": "Wire transfer",
         "none": "Due on receipt"}


class ServiceGroup(NamedTuple):
    service: str
    label: str
    lines: list[dict[str, Any]]
    subtotal: int


def invoice_filename(snapshot: dict[str, Any]) -> str:
    """``BF-2026-000123.pdf``."""
    return f"{snapshot['number']}.pdf"


def render_invoice_pdf(snapshot: dict[str, Any]) -> bytes:
    """The invoice's PDF, dated by its issue time."""
    return render_pdf(
        TEMPLATE,
        invoice=snapshot,
        terms=TERMS.get(snapshot["terms"], snapshot["terms"]),
        groups=service_groups(snapshot["lines"]),
        by_user=sorted(snapshot["by_user"], key=lambda row: (-row["amount"], row["user"])),
        day=day_text,
        decimal=decimal_text,
        price=price_text,
        document_date=dt.datetime.fromisoformat(snapshot["issued_at"]),
    )


def service_groups(lines: list[dict[str, Any]]) -> list[ServiceGroup]:
    """The lines grouped by service, groups in the order their first line comes."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        grouped.setdefault(line["service"], []).append(line)
    return [ServiceGroup(service, SERVICE_LABELS.get(service, service), rows,
                         sum(row["amount"] for row in rows))
            for service, rows in grouped.items()]


def day_text(value: str) -> str:
    """An ISO date (``2026-11-30``) as ``Nov 30, 2026``."""
    return long_date(dt.date.fromisoformat(value))


def decimal_text(value: str | None) -> str:
    """A decimal string with thousands separators and no trailing zeros after the
    point (``1250000.000000`` → ``1,250,000``); ``None`` (no limit) is ``Unlimited``."""
    if value is None:
        return "Unlimited"
    number = to_decimal(value)
    return quantity(number, _places(number))


def price_text(value: str, currency: str) -> str:
    """A unit price: at least the currency's 2 decimals, more only when needed."""
    return unit_price(to_decimal(value), currency)


def _places(number: Decimal) -> int:
    """Digits after the point once trailing zeros are dropped."""
    exponent = number.normalize().as_tuple().exponent
    if not isinstance(exponent, int):  # "n", "N" or "F": NaN or infinity
        raise ValueError(f"{number} is not a finite number")
    return max(0, -exponent)
