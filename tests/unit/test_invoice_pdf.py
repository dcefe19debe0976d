"""The invoice PDF (invoices.invoice_pdf), rendered from an invoice's snapshot alone."""

from __future__ import annotations

import re
import subprocess
from typing import Any

from invoices.invoice_pdf import decimal_text, invoice_filename, price_text, render_invoice_pdf

NUMBER = "BF-2026-000123"
SERVICES = ("platform", "ai_service", "query_engine")


def snapshot(**changes: Any) -> dict[str, Any]:
    """An issued invoice's snapshot as ``invoices.invoicing`` stores it, with ``changes``."""
    data = {
        "number": NUMBER,
        "issued_at": "2026-12-01T00:05:00+00:00",
        "issue_date": "2026-12-01",
        "due_date": "2026-12-31",
        "terms": "invoice",
        "currency": "USD",
        "period": {"start": "2026-11-01", "end": "2026-11-30", "label": "2026-11"},
        "issuer": {"name": "Billfold Inc.", "address": "1 Market St\nSan Francisco, CA 94105",
                   "email": "billing@billfold.example", "tax_id": "US-12-3456789"},
        "payment_instructions": {"bank_name": "First Bank", "account_name": "Billfold Inc.",
                                 "account_number": "000123456789",
                                 "routing_number": "021000021", "swift": "FRSTUS33"},
        "customer": {"name": "Acme Corp", "slug": "acme", "billing_email": "ap@acme.example",
                     "timezone": "America/New_York"},
        "plans": [{"name": "Professional", "version": 2, "start": "2026-11-01",
                   "end": "2026-11-30"}],
        "lines": [
            {"description": "Professional plan, Nov 1–Nov 30, 2026", "metric": None,
             "service": "platform", "quantity": "1.000000", "unit_price": "499.0000000000",
             "amount": 49_900},
            {"description": "LLM tokens over the included amount, Nov 1–Nov 30, 2026",
             "metric": "llm_tokens", "service": "ai_service", "quantity": "1250000.000000",
             "unit_price": "0.0000020000", "amount": 250},
            {"description": "SQL queries over the included amount", "metric": "sql_queries",
             "service": "query_engine", "quantity": "12.500000",
             "unit_price": "0.0100000000", "amount": 13},
            {"description": "Model training hours", "metric": "compute_hours",
             "service": "ml_service", "quantity": "0.333333", "unit_price": "3.0000000000",
             "amount": 100},
        ],
        "usage": [
            {"metric": "llm_tokens", "label": "LLM tokens", "unit": "tokens", "used": "6250000",
             "included": "5000000", "billable": "1250000.000000", "start": "2026-11-01",
             "end": "2026-11-30"},
            {"metric": "storage_gb", "label": "Storage", "unit": "GB", "used": "42.5",
             "included": None, "billable": "0.000000", "start": "2026-11-01",
             "end": "2026-11-30"},
        ],
        "by_user": [{"user": "u-bob", "amount": 113}, {"user": "u-alice", "amount": 250}],
        "platform_fee": 49_900,
        "subtotal": 50_263, "tax_rate": "8.2500", "tax": 4_147, "total": 54_410,
        "credit_applied": 10_000, "amount_due": 44_410,
    }
    data.update(changes)
    return data


def render(app, data: dict[str, Any]) -> bytes:
    with app.app_context():
        return render_invoice_pdf(data)


def pdf_pages(data: bytes) -> list[str]:
    """The text of each page (pdftotext -layout), split on the form feeds between pages."""
    out = subprocess.run(["pdftotext", "-layout", "-enc", "UTF-8", "-", "-"], input=data,
                         capture_output=True, check=True, timeout=30)
    return out.stdout.decode().split("\f")[:-1]


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_invoice_shows_the_snapshot(app):
    data = snapshot()
    pdf = render(app, data)
    assert pdf.startswith(b"%PDF-")
    assert invoice_filename(data) == f"{NUMBER}.pdf"
    pages = pdf_pages(pdf)
    first = flat(pages[0])
    for expected in ("Billfold Inc.", "1 Market St", "San Francisco, CA 94105", "Invoice",
                     NUMBER, "Acme Corp", "ap@acme.example", "Account ID acme"):
        assert expected in first, expected
    text = flat(" ".join(pages))
    for expected in (
        "Professional (v2), Nov 1, 2026 – Nov 30, 2026",
        "Issue date Dec 1, 2026", "Due date Dec 31, 2026",
        "Billing period Nov 1, 2026 – Nov 30, 2026", "Payment terms Net 30",
        "Description Quantity Unit price Amount",
        "Platform", "AI service", "Query engine", "ML service",
        "Professional plan, Nov 1–Nov 30, 2026 1 $499.00 $499.00",
        "LLM tokens over the included amount, Nov 1–Nov 30, 2026 1,250,000 $0.000002 $2.50",
        "SQL queries over the included amount 12.5 $0.01 $0.13",
        "Model training hours 0.333333 $3.00 $1.00",
        "Platform subtotal $499.00", "AI service subtotal $2.50",
        "Subtotal $502.63", "Tax (8.25%) $41.47", "Total $544.10",
        "Paid from prepaid credit -$100.00", "Amount due $444.10",
        "Account number 000123456789", "Routing number 021000021", "SWIFT FRSTUS33",
        f"Quote {NUMBER} as the payment reference.",
    ):
        assert expected in text, expected
    assert "LLM tokens Nov 1, 2026 – Nov 30, 2026 6,250,000 5,000,000 1,250,000 tokens" in text
    assert "Storage Nov 1, 2026 – Nov 30, 2026 42.5 Unlimited 0 GB" in text
    assert f"Invoice {NUMBER}" in flat(pages[-1]) and f"Page {len(pages)} of {len(pages)}" in text


def test_terms_without_bank_instructions_and_without_tax_or_credit(app):
    unknown = {"description": "GPU reservation", "metric": None, "service": "gpu_farm",
               "quantity": "2.000000", "unit_price": "10.0000000000", "amount": 2_000}
    data = snapshot(terms="card", payment_instructions=None, tax_rate="0.0000", tax=0,
                    credit_applied=0, lines=[*snapshot()["lines"], unknown],
                    by_user=[{"user": "u-alice", "amount": 2_363}],
                    subtotal=52_263, total=52_263, amount_due=52_263)
    text = flat(" ".join(pdf_pages(render(app, data))))
    assert "Payment terms Charged to the card on file" in text
    assert "$522.63 will be charged to the card on file" in text
    assert "Tax (0%) $0.00" in text and "Amount due $522.63" in text
    assert "gpu_farm" in text and "gpu_farm subtotal $20.00" in text
    assert "Paid from prepaid credit" not in text
    assert "Account number" not in text and "Quote" not in text
    assert "Cost by user" not in text

    wire = snapshot(terms="wire", payment_instructions=None)
    text = flat(" ".join(pdf_pages(render(app, wire))))
    assert "Payment terms Wire transfer" in text
    assert f"Pay by bank transfer to the account on your contract, quoting {NUMBER}." in text


def test_same_snapshot_same_bytes(app, tmp_path):
    first = render(app, snapshot())
    assert render(app, snapshot()) == first
    (tmp_path / "invoice.pdf").write_bytes(first)
    info = subprocess.run(["pdfinfo", "-isodates", str(tmp_path / "invoice.pdf")],
                          capture_output=True, check=True, text=True).stdout
    assert re.search(r"CreationDate:\s+2026-12-01T00:05:00", info)


def test_long_invoice_repeats_the_table_header_on_every_page(app):
    descriptions = [f"Usage item {i:03d} of 200" for i in range(200)]
    lines = [{"description": description, "metric": None, "service": SERVICES[i % 3],
              "quantity": "1.000000", "unit_price": "1.0000000000", "amount": 100}
             for i, description in enumerate(descriptions)]
    data = snapshot(lines=lines, by_user=[], subtotal=20_000, tax=1_650, total=21_650,
                    amount_due=11_650)
    pages = pdf_pages(render(app, data))
    assert len(pages) >= 4
    with_lines = [page for page in pages if "Usage item " in page]
    assert len(with_lines) >= 3 and pages[:len(with_lines)] == with_lines
    for page in with_lines:
        assert re.search(r"Description +Quantity +Unit price +Amount", page)
    text = "\n".join(pages)
    for description in descriptions:
        assert text.count(description) == 1, description
    for label in ("Platform", "AI service", "Query engine"):
        assert f"{label} subtotal" in text
    assert "Subtotal $200.00" in flat(text) and "Amount due $116.50" in flat(text)
    assert "Cost by user" not in text


def test_cost_by_user_page_for_two_users_or_more(app):
    by_user = [{"user": "u-bob", "amount": 113}, {"user": "u-carol", "amount": 125},
               {"user": "u-alice", "amount": 125}]
    pages = pdf_pages(render(app, snapshot(by_user=by_user)))
    page = flat(pages[-1])
    assert "Cost by user" in page and "Amount due" not in page
    assert ("User Amount u-alice $1.25 u-carol $1.25 u-bob $1.13 "
            "Platform fee (not attributed to users) $499.00 Total $502.63") in page
    assert not any("Cost by user" in other for other in pages[:-1])


def test_markup_in_snapshot_data_is_printed_not_interpreted(app):
    name = '<b>Acme</b> & "Sons" <i>Ltd</i>'
    description = '<img src="http://127.0.0.1:9/p.png"> & <b>x</b>'
    lines = [{**snapshot()["lines"][0], "description": description}]
    data = snapshot(customer={**snapshot()["customer"], "name": name}, lines=lines)
    text = flat(" ".join(pdf_pages(render(app, data))))  # an <img> would be refused and raise
    assert name in text
    assert description in text


def test_quantities_prices_and_rates_are_formatted_exactly():
    assert decimal_text("1250000.000000") == "1,250,000"
    assert decimal_text("12.500000") == "12.5"
    assert decimal_text("0.333333") == "0.333333"
    assert decimal_text("0.000000") == "0"
    assert decimal_text("8.2500") == "8.25"
    assert decimal_text("10.0000") == "10"
    assert decimal_text(None) == "Unlimited"
    assert price_text("0.0000020000", "USD") == "$0.000002"
    assert price_text("499.0000000000", "USD") == "$499.00"
    assert price_text("0.0000000001", "USD") == "$0.0000000001"
    assert price_text("1234.5000000000", "EUR") == "€1,234.50"
