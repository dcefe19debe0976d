"""The credit ledger: signs, balance chain, concurrency, paging, filters, CSV and
Platform Admin corrections."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from invoices import ledger
from invoices.csv_export import neutralise
from invoices.models import ENTRY_SIGNS, LedgerEntry
from portal.audit import Actor, AuditEvent
from portal.errors import ValidationFailed
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped
from tests.conftest import page_text
from tests.factories import TenantFactory

ACTOR = Actor.system("tests")


def _tenant(app, world, key="a"):
    with app.app_context(), unscoped():
        return db.session.get(Tenant, world.ids[key])


def _chain(app, tenant_id):
    with app.app_context(), unscoped():
        return db.session.execute(
            select(LedgerEntry.amount_minor, LedgerEntry.balance_after_minor)
            .where(LedgerEntry.tenant_id == tenant_id).order_by(LedgerEntry.id)).all()


def test_each_type_has_its_sign_and_nothing_is_written_otherwise(app, world):
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, world.ids["a"])
        ledger.post_entry(tenant, ACTOR, "topup", 10_000, "Credit purchase")
        for entry_type, amount in [("topup", -5), ("usage", 5), ("refund", 0),
                                   ("admin_correction", 0), ("gpu_usage", 5)]:
            with pytest.raises(ValidationFailed):
                ledger.post_entry(tenant, ACTOR, entry_type, amount, "x")
        with pytest.raises(ValidationFailed):
            ledger.post_entry(tenant, ACTOR, "usage", -5, "x", source="elsewhere")
        ledger.post_entry(tenant, ACTOR, "usage", -2_500, "LLM tokens, 1 Nov")
        assert ledger.balance_minor(tenant) == 7_500
    assert _chain(app, world.ids["a"]) == [(10_000, 10_000), (-2_500, 7_500)]


def test_the_database_refuses_a_wrong_sign_too(app, world):
    with app.app_context(), tenant_scope(world.ids["a"]):
        db.session.add(LedgerEntry(type="usage", amount_minor=500, currency="USD",
                                   balance_after_minor=500, description="x", source="system",
                                   actor_label="t"))
        with pytest.raises(Exception, match="(?i)check"):
            db.session.flush()
        db.session.rollback()


def test_a_reference_books_once(app, world):
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, world.ids["a"])
        first = ledger.post_entry(tenant, ACTOR, "topup", 5_000, "Checkout cs_1",
                                  source="stripe_webhook", ref_id="cs_1")
        for _ in range(9):
            again = ledger.post_entry(tenant, ACTOR, "topup", 5_000, "Checkout cs_1",
                                      source="stripe_webhook", ref_id="cs_1")
            assert again.id == first.id
        assert ledger.balance_minor(tenant) == 5_000


ENTRY = st.sampled_from(sorted(ENTRY_SIGNS)).flatmap(
    lambda t: st.tuples(st.just(t), st.integers(-10**9, 10**9)))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ENTRY, min_size=1, max_size=25))
def test_every_balance_after_is_the_previous_plus_the_amount(app, entries):
    with app.app_context(), unscoped():
        tenant = TenantFactory()
        accepted = []
        for entry_type, amount in entries:
            try:
                ledger.post_entry(tenant, ACTOR, entry_type, amount, "property")
            except ValidationFailed:
                continue
            accepted.append(amount)
        tenant_id = tenant.id
    chain = _chain(app, tenant_id)
    assert [a for a, _ in chain] == accepted
    running = 0
    for amount, balance_after in chain:
        running += amount
        assert balance_after == running


def test_concurrent_debits_never_lose_an_update(app, world):
    tenant_id = world.ids["a"]
    with app.app_context(), unscoped():
        ledger.post_entry(db.session.get(Tenant, tenant_id), ACTOR, "topup", 1_000_000, "seed")
    barrier = threading.Barrier(50, timeout=60)
    errors = []

    def debit(n):
        try:
            with app.app_context():
                with unscoped():
                    tenant = db.session.get(Tenant, tenant_id)
                    db.session.expunge(tenant)
                db.session.close()  # no connection held while waiting at the barrier
                barrier.wait()
                ledger.post_entry(tenant, ACTOR, "usage", -(n + 1), f"debit {n}")
                db.session.remove()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=debit, args=(n,), daemon=True) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    chain = _chain(app, tenant_id)
    assert len(chain) == 51
    assert chain[-1][1] == 1_000_000 - sum(range(1, 51))
    running = 0
    for amount, balance_after in chain:
        running += amount
        assert balance_after == running


def _seed(app, tenant_id, count, start=dt.datetime(2026, 10, 1, 12, tzinfo=dt.UTC)):
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, tenant_id)
        for n in range(count):
            entry = ledger.post_entry(tenant, ACTOR, "usage" if n % 3 else "topup",
                                      -100 if n % 3 else 1_000, f"entry {n}")
            db.session.execute(update(LedgerEntry).where(LedgerEntry.id == entry.id)
                               .values(created_at=start + dt.timedelta(hours=n)))
        db.session.commit()


def test_transactions_page_pages_by_cursor_without_a_depth_limit(app, world, login):
    _seed(app, world.ids["a"], 120)
    user = login("alpha-billing")
    seen, url = [], "/billing/transactions/"
    for _ in range(5):
        response = user.get(url)
        html = response.get_data(as_text=True)
        ids = [int(i) for i in re.findall(r'<tr data-id="(\d+)"', html)]
        seen.extend(ids)
        more = re.search(r'id="load-more" href="([^"]+)"', html)
        if not more:
            break
        url = more.group(1).replace("&amp;", "&")
    assert len(seen) == 120 and len(set(seen)) == 120
    assert seen == sorted(seen, reverse=True)  # newest first


def test_type_and_date_filters_use_the_tenant_time_zone(app, world, login):
    # Bravo is in Europe/Berlin (UTC+1 in November): 23:30 UTC is the next local day.
    _seed(app, world.ids["b"], 6, start=dt.datetime(2026, 11, 3, 21, 30, tzinfo=dt.UTC))
    user = login("bravo-billing")
    text = page_text(user.get("/billing/transactions/?from=2026-11-04&to=2026-11-04"))
    # 21:30 and 22:30 UTC are 3 Nov in Berlin; 23:30 UTC onwards is 4 Nov.
    assert "entry 0" not in text and "entry 1" not in text
    assert all(f"entry {n}" in text for n in range(2, 6))
    only_topups = page_text(user.get("/billing/transactions/?type=topup"))
    assert "entry 0" in only_topups and "entry 3" in only_topups and "entry 1" not in only_topups
    bad = user.get("/billing/transactions/?from=yesterday")
    assert bad.status_code == 400 and "from must be a date" in page_text(bad)


def test_csv_export_streams_filtered_rows_and_neutralises_formulas(app, world, login):
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, world.ids["a"])
        ledger.post_entry(tenant, ACTOR, "topup", 2_000, '=HYPERLINK("http://evil","x")')
        ledger.post_entry(tenant, ACTOR, "usage", -150, "@SUM(A1:A2)")
        ledger.post_entry(tenant, ACTOR, "usage", -50, "plain")
    response = login("alpha-admin").get("/billing/transactions.csv?type=usage")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.is_streamed
    lines = response.get_data(as_text=True).splitlines()
    assert lines[0].startswith("# Billfold transactions of Alpha Ltd")
    assert "UTC" in lines[1]
    rows = list(csv.DictReader(io.StringIO("\n".join(line for line in lines
                                                     if not line.startswith("#")))))
    assert [r["description"] for r in rows] == ["plain", "'@SUM(A1:A2)"]
    assert [r["amount"] for r in rows] == ["-0.50", "-1.50"]  # numbers are not neutralised
    assert neutralise("-1") == "'-1" and neutralise(-1) == -1 and neutralise("+x") == "'+x"


def test_csv_of_another_tenant_is_never_reachable(app, world, login):
    with app.app_context(), unscoped():
        ledger.post_entry(db.session.get(Tenant, world.ids["b"]), ACTOR, "topup", 777,
                          "bravo secret")
    body = login("alpha-admin").get("/billing/transactions.csv?tenant=bravo").get_data(
        as_text=True)
    assert "bravo secret" not in body and "Alpha Ltd" in body


def test_platform_admin_corrects_with_a_reason_and_it_is_audited(app, world, login):
    admin = login("operator")
    refused = admin.post("/platform/ledger/?tenant=alpha", data={
        "kind": "admin_correction", "amount": "-12.50", "reason": "no"})
    assert refused.status_code == 400 and "explain the correction" in page_text(refused)
    bad_amount = admin.post("/platform/ledger/?tenant=alpha", data={
        "kind": "admin_correction", "amount": "twelve", "reason": "Double-billed storage"})
    assert bad_amount.status_code == 400
    done = admin.post("/platform/ledger/?tenant=alpha", data={
        "kind": "admin_correction", "amount": "-12.50", "reason": "Double-billed storage"})
    assert done.status_code == 302
    grant = admin.post("/platform/ledger/?tenant=alpha", data={
        "kind": "contract_grant", "amount": "10000", "reason": "Contract 2026-17"})
    assert grant.status_code == 302
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, world.ids["a"])
        assert ledger.balance_minor(tenant) == 1_000_000 - 1_250
        actions = set(db.session.scalars(select(AuditEvent.action).where(
            AuditEvent.tenant_id == tenant.id, AuditEvent.action.like("ledger.%"))))
        assert actions == {"ledger.correction", "ledger.contract_grant"}
    page = page_text(login("alpha-billing").get("/billing/transactions/"))
    assert "Double-billed storage" in page and "Contract 2026-17" in page
    assert login("alpha-admin").post("/platform/ledger/?tenant=alpha", data={
        "kind": "bonus", "amount": "5", "reason": "self-service"}).status_code == 403


def test_entries_counted_per_tenant(app, world):
    with app.app_context(), unscoped():
        ledger.post_entry(db.session.get(Tenant, world.ids["b"]), ACTOR, "bonus", 100, "b")
    with app.app_context(), tenant_scope(world.ids["a"]):
        assert db.session.scalar(select(func.count(LedgerEntry.id))) == 0
