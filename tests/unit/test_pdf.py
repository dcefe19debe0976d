"""PDF rendering (portal.pdf) and credit-purchase receipts (invoices.receipts)."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
from flask import Flask
from jinja2 import ChoiceLoader, FileSystemLoader

from invoices.models import CreditPurchase
from invoices.receipts import receipt_filename, receipt_pdf
from portal.config import PROJECT_ROOT
from portal.extensions import db
from portal.formatting import init_filters
from portal.pdf import PdfRenderError, is_local_url, render_pdf, sha256_hex
from tenants import services
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped
from tests.factories import ACTOR

PAID_AT = dt.datetime(2026, 3, 1, 23, 30, tzinfo=dt.UTC)

# A receipt over plain data, rendered here and in a fresh interpreter (another hash
# seed, another process), which also shows that importing portal.pdf leaves
# WeasyPrint unimported.
SAMPLE = {
    "tenant": {"name": "Sample GmbH", "slug": "sample", "billing_email": "ap@sample.example",
               "timezone": "Europe/Berlin", "currency": "EUR"},
    "purchase": {"id": 7, "kind": "purchase", "status": "succeeded", "amount_minor": 9_900,
                 "currency": "EUR", "stripe_ref": "cs_sample", "stripe_charge_id": "ch_sample",
                 "payment_method_label": "Visa •••• 4242", "failure_message": None,
                 "created_at": PAID_AT},
    "title": "Receipt", "number": "R-sample-000007", "issuer_name": "Billfold",
    "issuer_address": "", "document_date": PAID_AT,
}
SAMPLE_IN_SUBPROCESS = "import datetime\nSAMPLE = " + repr(SAMPLE) + textwrap.dedent("""
    import sys
    from flask import Flask
    from portal.config import PROJECT_ROOT
    from portal.formatting import init_filters
    from portal.pdf import render_pdf, sha256_hex
    assert "weasyprint" not in sys.modules, "importing portal.pdf imported WeasyPrint"
    app = Flask("sample", template_folder=str(PROJECT_ROOT / "templates"))
    init_filters(app)
    with app.app_context():
        sys.stdout.write(sha256_hex(render_pdf("pdf/receipt.html", **SAMPLE)))
""")


def pdf_text(data: bytes) -> str:
    """The text of a PDF (pdftotext), whitespace collapsed."""
    out = subprocess.run(["pdftotext", "-enc", "UTF-8", "-", "-"], input=data,
                         capture_output=True, check=True, timeout=30)
    return re.sub(r"\s+", " ", out.stdout.decode())


def bare_app(*folders) -> Flask:
    """A Flask app with the project's templates (after ``folders``) and filters, no db."""
    app = Flask(__name__, template_folder=str(PROJECT_ROOT / "templates"))
    app.jinja_loader = ChoiceLoader([FileSystemLoader([str(f) for f in folders]),
                                     FileSystemLoader(str(PROJECT_ROOT / "templates"))])
    init_filters(app)
    return app


def render_sample() -> bytes:
    with bare_app().app_context():
        return render_pdf("pdf/receipt.html", **SAMPLE)


def _purchase(app, world, key="a", **fields) -> int:
    values = {"kind": "purchase", "status": "succeeded", "amount_minor": 123_456,
              "currency": "USD", "stripe_ref": "cs_test_receipt",
              "stripe_charge_id": "ch_test_receipt", "payment_method_label": "Visa •••• 4242",
              "created_at": PAID_AT, **fields}
    with app.app_context(), tenant_scope(world.ids[key]):
        purchase = CreditPurchase(**values)
        db.session.add(purchase)
        db.session.commit()
        return purchase.id


def _receipt(app, world, purchase_id, key="a") -> tuple[bytes, str]:
    """Load the tenant and its purchase in the tenant's scope, as a view would."""
    with app.app_context(), tenant_scope(world.ids[key]):
        tenant = db.session.get(Tenant, world.ids[key])
        purchase = db.session.get(CreditPurchase, purchase_id)
        return receipt_pdf(tenant, purchase), receipt_filename(tenant, purchase)


def test_receipt_shows_the_purchase(app, world, tmp_path):
    pid = _purchase(app, world)
    data, filename = _receipt(app, world, pid)
    assert data.startswith(b"%PDF-")
    number = f"R-alpha-{pid:06d}"
    assert filename == f"{number}.pdf"
    text = pdf_text(data)
    for expected in ("Billfold", "Receipt", number, "Alpha Ltd", "billing@alpha.example",
                     "2026-03-01 23:30 UTC", "Credit purchase", "Succeeded", "Visa •••• 4242",
                     "$1,234.56", "cs_test_receipt", "ch_test_receipt",
                     "$1,234.56 of credit was added to the prepaid balance of Alpha Ltd",
                     "Page 1 of 1"):
        assert expected in text, expected
    assert "failed" not in text.lower()
    # The document's own date, not the time of rendering, dates the file.
    (tmp_path / "receipt.pdf").write_bytes(data)
    info = subprocess.run(["pdfinfo", "-isodates", str(tmp_path / "receipt.pdf")],
                          capture_output=True, check=True, text=True).stdout
    assert re.search(r"CreationDate:\s+2026-03-01T23:30:00", info)
    assert re.search(r"ModDate:\s+2026-03-01T23:30:00", info)


def test_refund_uses_the_tenants_currency_time_zone_and_issuer(app, world):
    app.config.update(ISSUER_NAME="Platform Co", ISSUER_ADDRESS="1 Main St\nSpringfield")
    try:
        pid = _purchase(app, world, key="b", kind="refund", currency="EUR",
                        stripe_ref="re_test_receipt")
        data, filename = _receipt(app, world, pid, key="b")
    finally:
        app.config.pop("ISSUER_NAME")
        app.config.pop("ISSUER_ADDRESS")
    text = pdf_text(data)
    assert filename == f"R-bravo-{pid:06d}.pdf"
    for expected in ("Platform Co", "1 Main St Springfield", "Refund receipt", "Bravo GmbH",
                     "2026-03-02 00:30 +0100", "Refund", "€1,234.56", "re_test_receipt",
                     "€1,234.56 of credit was taken from the prepaid balance of Bravo GmbH"):
        assert expected in text, expected
    assert "$" not in text and "Billfold" not in text


def test_failed_purchase_is_a_payment_failed_notice(app, world):
    pid = _purchase(app, world, status="failed", stripe_ref="pi_test_failed",
                    stripe_charge_id=None, failure_message="Your card was declined.")
    text = pdf_text(_receipt(app, world, pid)[0])
    assert "Payment failed" in text
    assert "The payment failed: Your card was declined." in text
    assert "No credit was added to the prepaid balance of Alpha Ltd" in text
    assert f"R-alpha-{pid:06d}" in text and "pi_test_failed" in text
    assert "Receipt" not in text and "Succeeded" not in text


def test_markup_in_tenant_data_is_printed_not_interpreted(app, world):
    name = '<b>Acme</b> & "Sons" <img src="http://127.0.0.1:9/pixel.png">'
    with app.app_context(), unscoped():
        services.update_tenant(ACTOR, db.session.get(Tenant, world.ids["a"]), {"name": name})
    pid = _purchase(app, world, payment_method_label="<i>Visa</i>")
    text = pdf_text(_receipt(app, world, pid)[0])  # an <img> would be refused and raise
    assert name in text
    assert "<i>Visa</i>" in text


def test_receipt_is_byte_identical_across_renders_times_and_processes(app, world, monkeypatch):
    other = subprocess.Popen([sys.executable, "-c", SAMPLE_IN_SUBPROCESS], cwd=PROJECT_ROOT,
                             env={**os.environ, "PYTHONHASHSEED": "12345"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = _purchase(app, world)
    first = _receipt(app, world, pid)[0]
    # Whatever the clock says (font subsetting may stamp "now"), the bytes stay the same.
    later = time.time() + 86_400
    monkeypatch.setattr(time, "time", lambda: later)
    second = _receipt(app, world, pid)[0]
    monkeypatch.undo()
    assert first == second
    assert sha256_hex(first) == sha256_hex(second)
    assert re.fullmatch(r"[0-9a-f]{64}", sha256_hex(first))

    sample = render_sample()
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    assert out == sha256_hex(sample)


def test_receipt_refuses_another_tenants_purchase(app, world):
    pid = _purchase(app, world)
    with app.app_context():
        with tenant_scope(world.ids["a"]):
            purchase = db.session.get(CreditPurchase, pid)
        with tenant_scope(world.ids["b"]):
            bravo = db.session.get(Tenant, world.ids["b"])
            with pytest.raises(ValueError):
                receipt_pdf(bravo, purchase)
            with pytest.raises(ValueError):
                receipt_filename(bravo, purchase)


def test_base_repeats_table_headers_and_numbers_pages(tmp_path):
    (tmp_path / "long.html").write_text(
        '{% extends "pdf/base.html" %}{% block body %}<table class="lines">'
        "<thead><tr><th>Line header</th><th>Amount</th></tr></thead><tbody>"
        "{% for i in range(120) %}<tr><td>Row {{ i }}</td><td>{{ i }}</td></tr>{% endfor %}"
        "</tbody></table>{% endblock %}")
    with bare_app(tmp_path).app_context():
        text = pdf_text(render_pdf("long.html"))
    pages = int(re.search(r"Page 1 of (\d+)", text).group(1))
    assert pages >= 2
    assert f"Page {pages} of {pages}" in text
    assert text.count("Line header") == pages
    assert "Row 0 " in text and "Row 119 " in text


@pytest.mark.parametrize("src", [
    "http://127.0.0.1:9/logo.png",
    "https://example.com/logo.png",
    "file:///etc/hostname",
    "../../../../../../etc/hostname",
])
def test_only_project_files_and_data_urls_are_fetched(tmp_path, src):
    (tmp_path / "img.html").write_text(
        '{% extends "pdf/base.html" %}{% block body %}<img src="{{ src }}">{% endblock %}')
    with bare_app(tmp_path).app_context(), pytest.raises(PdfRenderError, match="refused"):
        render_pdf("img.html", src=src)


def test_local_url_rule():
    project_file = (PROJECT_ROOT / "templates" / "pdf" / "base.html").as_uri()
    assert is_local_url(project_file)
    assert is_local_url("data:image/png;base64,iVBORw0KGgo=")
    assert not is_local_url(project_file.replace("/templates/pdf/base.html",
                                                 "/templates/../../etc/passwd"))
    assert not is_local_url("file://example.com" + str(PROJECT_ROOT / "setup.cfg"))
    assert not is_local_url("ftp://example.com/x")
    assert not is_local_url("http://localhost/x")
