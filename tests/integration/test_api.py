"""REST API v1: keys, scopes, isolation, every endpoint, errors and rate limits."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select

from api import keys
from api.models import ApiKey
from invoices import invoicing, ledger
from plans.periods import period_containing
from portal.audit import Actor
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import unscoped
from tests.conftest import page_text

ACTOR = Actor.system("tests")
ALL_TENANT = "usage:write,usage:read,billing:read"


def _tenant(app, world, key="a"):
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, world.ids[key])
        db.session.expunge(tenant)
        return tenant


def _key(app, tenant=None, scopes=ALL_TENANT, **kw):
    with app.app_context():
        _, secret = keys.create_key(ACTOR, tenant, "test key", scopes, **kw)
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def alpha_key(app, world):
    return _key(app, _tenant(app, world))


def _event(n, metric="llm_tokens", quantity="1000", **extra):
    stamp = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    return {"id": f"evt-{n}", "metric": metric, "quantity": quantity, "timestamp": stamp,
            **extra}


def test_cli_prints_the_secret_alone_and_stores_only_its_hash(app, world):
    runner = app.test_cli_runner(mix_stderr=False) if "mix_stderr" in \
        app.test_cli_runner.__code__.co_varnames else app.test_cli_runner()
    result = runner.invoke(args=["billfold", "create-api-key", "--tenant", "alpha",
                                 "--scopes", ALL_TENANT, "--name", "metering"])
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip().splitlines()[-1]
    assert secret.startswith("bf_") and len(secret) > 40
    with app.app_context(), unscoped():
        key = db.session.scalar(select(ApiKey))
        assert key.secret_hash == keys.hash_secret(secret) and secret not in key.prefix + \
            key.secret_hash and key.prefix == secret[:10]
    refused = runner.invoke(args=["billfold", "create-api-key", "--tenant", "alpha",
                                  "--scopes", "platform:read", "--name", "x"])
    assert refused.exit_code == 1 and "platform keys only" in refused.output
    both = runner.invoke(args=["billfold", "create-api-key", "--tenant", "alpha", "--platform",
                               "--scopes", "usage:read", "--name", "x"])
    assert both.exit_code == 1
    platform = runner.invoke(args=["billfold", "create-api-key", "--platform",
                                   "--scopes", "platform:read", "--name", "finance"])
    assert platform.exit_code == 0 and platform.stdout.strip().splitlines()[-1].startswith("bf_")


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer bf_not-a-key", "Basic abc"])
def test_a_missing_or_unknown_key_is_401_json(client, world, header):
    response = client.get("/api/v1/usage/summary",
                          headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthenticated"
    assert "Bearer" in response.headers["WWW-Authenticate"]


def test_revoked_and_expired_keys_are_refused_on_their_next_request(app, world, client):
    tenant = _tenant(app, world)
    with app.app_context():
        key, secret = keys.create_key(ACTOR, tenant, "k", ALL_TENANT)
        key_id = key.id
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/usage/summary", headers=headers).status_code == 200
    with app.app_context():
        assert keys.get_key(tenant, key_id).last_used_at is not None
        keys.revoke_key(ACTOR, tenant, key_id)
    revoked = client.get("/api/v1/usage/summary", headers=headers)
    assert revoked.status_code == 401 and "revoked" in revoked.get_json()["error"]["message"]
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    with app.app_context():
        key, secret = keys.create_key(ACTOR, tenant, "short", ALL_TENANT, expires_at=soon)
        keys.authenticate(secret)
        with pytest.raises(keys.KeyRejected, match="expired"):
            keys.authenticate(secret, now=soon + dt.timedelta(seconds=1))


def test_scopes_are_enforced(app, world, client):
    tenant = _tenant(app, world)
    reader = _key(app, tenant, "usage:read")
    write = client.post("/api/v1/usage/events", headers=reader, json={"events": [_event(1)]})
    assert write.status_code == 403 and write.get_json()["error"]["code"] == "insufficient_scope"
    assert client.get("/api/v1/transactions", headers=reader).status_code == 403
    assert client.get("/api/v1/platform/tenants", headers=reader).status_code == 403
    platform = _key(app, None, "platform:read")
    assert client.get("/api/v1/platform/tenants", headers=platform).status_code == 200
    assert client.get("/api/v1/usage/summary", headers=platform).status_code == 403


def test_ingestion_is_all_or_nothing_and_counts_duplicates(client, alpha_key, app, world):
    ok = client.post("/api/v1/usage/events", headers=alpha_key,
                     json={"events": [_event(1), _event(2), _event(1)]})
    assert ok.status_code == 200 and ok.get_json() == {"accepted": 2, "duplicates": 1}
    again = client.post("/api/v1/usage/events", headers=alpha_key, json={"events": [_event(2)]})
    assert again.get_json() == {"accepted": 0, "duplicates": 1}
    bad = client.post("/api/v1/usage/events", headers=alpha_key, json={"events": [
        _event(3), _event(4, metric="gpu_hours"), _event(5, quantity="-1")]})
    assert bad.status_code == 422
    error = bad.get_json()["error"]
    assert error["code"] == "invalid_batch"
    assert [(d["index"], d["field"]) for d in error["details"]] == [(1, "metric"),
                                                                   (2, "quantity")]
    summary = client.get("/api/v1/usage/summary", headers=alpha_key).get_json()
    assert summary["metrics"]["llm_tokens"]["used"] == 2000  # event 3 was not stored
    # A JSON float is parsed as an exact decimal, never through float.
    exact = client.post("/api/v1/usage/events", headers=alpha_key,
                        data='{"events": [{"id": "f1", "metric": "compute_hours", '
                             '"quantity": 0.1, "timestamp": "' + _event(0)["timestamp"]
                             + '"}]}',
                        content_type="application/json")
    assert exact.status_code == 200


def test_oversized_and_malformed_batches(client, alpha_key):
    big = client.post("/api/v1/usage/events", headers=alpha_key,
                      json={"events": [_event(n) for n in range(10_001)]})
    assert big.status_code == 413 and big.get_json()["error"]["code"] == "payload_too_large"
    for body in ("not json", '{"events": 3}', '{"events": []}'):
        response = client.post("/api/v1/usage/events", headers=alpha_key, data=body,
                               content_type="application/json")
        assert response.status_code == 400, body
        assert response.get_json()["error"]["code"] == "invalid_parameters"


def test_usage_summary_and_buckets(client, alpha_key):
    client.post("/api/v1/usage/events", headers=alpha_key, json={"events": [
        _event(1, quantity="6000000"), _event(2, metric="sql_queries", quantity="10")]})
    summary = client.get("/api/v1/usage/summary", headers=alpha_key).get_json()
    tokens = summary["metrics"]["llm_tokens"]
    assert (tokens["used"], tokens["limit"], tokens["percentage"]) == (6_000_000, 5_000_000,
                                                                     120)
    assert client.get("/api/v1/usage/summary?period=2026-13",
                      headers=alpha_key).status_code == 400
    usage = client.get("/api/v1/usage?granularity=month&group_by=metric",
                       headers=alpha_key).get_json()
    tokens = [b for b in usage["data"] if b["group"] == "llm_tokens"]
    assert sum(b["quantity"] for b in tokens) == 6_000_000
    assert sum(b["cost"] for b in tokens) == 300  # 1M over the plan at $0.000003
    bad = client.get("/api/v1/usage?granularity=hour&from=yesterday", headers=alpha_key)
    assert bad.status_code == 400
    assert set(bad.get_json()["error"]["details"]) == {"granularity"} or \
        set(bad.get_json()["error"]["details"]) == {"from"}


def test_breakdown_reconciles_with_the_invoice(app, world, client, alpha_key):
    tenant = _tenant(app, world)
    period = period_containing(dt.date.today()).previous()
    from plans.metering import ingest_events

    with app.app_context():
        moment = dt.datetime.combine(period.start, dt.time(12), dt.UTC)
        ingest_events(tenant, [
            {"id": f"u{n}", "metric": "llm_tokens", "quantity": 2_000_000, "timestamp": moment,
             "user": user} for n, user in enumerate(["alice", "bob", "alice"])])
        invoice = invoicing.close_period(tenant, period)
        subtotal, number = invoice.subtotal_minor, invoice.number
    body = client.get(f"/api/v1/costs/breakdown?period={period.label}",
                      headers=alpha_key).get_json()
    assert body["invoice"] == number and body["total"] == subtotal
    components = sum(sum(parts.values()) for parts in body["by_service"].values())
    assert components + body["platform_fee"] == subtotal
    assert sum(u["cost"] for u in body["by_user"]) + body["platform_fee"] == subtotal
    assert [u["user_id"] for u in body["by_user"]] == ["alice", "bob"]
    detail = client.get(f"/api/v1/invoices/{number}", headers=alpha_key).get_json()
    assert detail["subtotal"] == subtotal and sum(ln["amount"] for ln in detail["lines"]) \
        == subtotal
    listed = client.get("/api/v1/invoices", headers=alpha_key).get_json()
    assert listed["data"][0]["number"] == number and listed["has_more"] is False
    pdf = client.get(f"/api/v1/invoices/{number}/pdf", headers=alpha_key)
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF")
    bravo = _key(app, _tenant(app, world, "b"))
    for url in (f"/api/v1/invoices/{number}", f"/api/v1/invoices/{number}/pdf"):
        refused = client.get(url, headers=bravo)
        assert refused.status_code == 404 and refused.get_json()["error"]["code"] == "not_found"


def test_transactions_page_by_cursor_and_export_csv(app, world, client, alpha_key):
    tenant = _tenant(app, world)
    with app.app_context():
        for n in range(7):
            ledger.post_entry(tenant, ACTOR, "bonus", 100 + n, f"=bonus {n}")
    first = client.get("/api/v1/transactions?limit=3", headers=alpha_key).get_json()
    assert [e["amount"] for e in first["data"]] == [106, 105, 104] and first["has_more"]
    second = client.get(f"/api/v1/transactions?limit=3&before={first['next_before']}",
                        headers=alpha_key).get_json()
    assert [e["amount"] for e in second["data"]] == [103, 102, 101]
    assert set(first["data"][0]) == {"id", "created_at", "type", "amount", "currency",
                                     "balance_after", "description", "source", "ref_id"}
    for bad in ("limit=1001", "limit=0", "before=x", "type=gift", "from=2026-02-30"):
        response = client.get(f"/api/v1/transactions?{bad}", headers=alpha_key)
        assert response.status_code == 400, bad
    csv = client.get("/api/v1/transactions.csv?type=bonus", headers=alpha_key)
    text = csv.get_data(as_text=True)
    assert csv.mimetype == "text/csv" and "'=bonus 6" in text


def test_a_tenant_key_never_sees_another_tenant(app, world, client):
    bravo_tenant = _tenant(app, world, "b")
    with app.app_context():
        ledger.post_entry(bravo_tenant, ACTOR, "bonus", 999, "bravo only")
    alpha = _key(app, _tenant(app, world))
    body = client.get("/api/v1/transactions", headers=alpha).get_json()
    assert body["data"] == []
    text = client.get("/api/v1/transactions.csv", headers=alpha).get_data(as_text=True)
    assert "bravo only" not in text


def test_platform_endpoints(app, world, client, stub):
    platform = _key(app, None, "platform:read")
    tenants = client.get("/api/v1/platform/tenants", headers=platform).get_json()
    slugs = {t["slug"]: t for t in tenants["data"]}
    assert set(slugs) == {"alpha", "bravo"}
    assert slugs["alpha"]["plan"] == "Professional" and slugs["alpha"]["currency"] == "USD"
    revenue = client.get("/api/v1/platform/revenue?granularity=month", headers=platform)
    body = revenue.get_json()
    assert body["currency"] == "USD" and all(
        b["net"] == b["gross"] - b["refunds"] - b["fees"] for b in body["data"])
    bad = client.get("/api/v1/platform/revenue?currency=dollars", headers=platform)
    assert bad.status_code == 400


@pytest.fixture(scope="module")
def limited_app(app):
    """The portal with rate limits on (the suite's app runs without them), on the
    same database."""
    from portal import create_app
    from tests.conftest import config_for

    return create_app(config_for(app.config["DATABASE_URL"], RATELIMIT_ENABLED=True,
                                 API_RATE_LIMIT="3 per minute",
                                 API_INGEST_RATE_LIMIT="5 per minute"))


def test_rate_limit_answers_429_with_headers(app, world, limited_app):
    headers = _key(app, _tenant(app, world))
    client = limited_app.test_client()
    statuses = [client.get("/api/v1/usage/summary", headers=headers).status_code
                for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = client.get("/api/v1/transactions", headers=headers)
    assert limited.status_code == 429  # the limit is per key, across endpoints
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    assert limited.headers["X-RateLimit-Limit"] == "3"
    # Ingestion has its own, higher limit; another key has its own budget.
    assert client.post("/api/v1/usage/events", headers=headers,
                       json={"events": [_event(1)]}).status_code == 200
    other = _key(app, _tenant(app, world))
    assert client.get("/api/v1/usage/summary", headers=other).status_code == 200


def test_no_html_and_no_traceback_under_api(client, alpha_key):
    for method, url in (("get", "/api/v1/nowhere"), ("delete", "/api/v1/transactions"),
                        ("get", "/api/v1/invoices/BF-2026-999999")):
        response = getattr(client, method)(url, headers=alpha_key)
        assert response.mimetype == "application/json", url
        assert response.status_code in (404, 405)
        assert "Traceback" not in response.get_data(as_text=True)


def test_openapi_is_public_json(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert json.loads(response.data)["openapi"].startswith("3.")


def test_tenant_admin_creates_and_revokes_a_key_in_the_portal(app, world, client, login):
    admin = login("alpha-admin")
    page = admin.get("/account/api-keys/")
    assert page.status_code == 200 and "curl" in page_text(page)
    created = admin.post("/account/api-keys/create", data={
        "name": "warehouse", "scopes": ["billing:read"]})
    assert created.status_code == 200 and created.headers["Cache-Control"] == "no-store"
    html = created.get_data(as_text=True)
    secret = html.split('id="secret-value" class="form-control" readonly value="')[1][:43]
    assert secret.startswith("bf_")
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/transactions", headers=headers).status_code == 200
    assert secret not in admin.get("/account/api-keys/").get_data(as_text=True)
    with app.app_context(), unscoped():
        key_id = db.session.scalar(select(ApiKey.id))
    assert admin.post(f"/account/api-keys/{key_id}/revoke").status_code == 302
    assert client.get("/api/v1/transactions", headers=headers).status_code == 401
    bad = admin.post("/account/api-keys/create", data={"name": "x",
                                                        "scopes": ["platform:read"]})
    assert bad.status_code == 400
    assert login("alpha-billing").get("/account/api-keys/").status_code == 403
    assert login("bravo-admin").post(f"/account/api-keys/{key_id}/revoke").status_code == 404


def test_a_cursor_beyond_any_id_starts_from_the_newest(app, world, client, login):
    tenant_key = _key(app, _tenant(app, world))
    platform = _key(app, None, "platform:read")
    huge = "99999999999999999999"
    for url, headers in ((f"/api/v1/transactions?before={huge}", tenant_key),
                         (f"/api/v1/invoices?before={huge}", tenant_key),
                         (f"/api/v1/platform/tenants?before={huge}", platform)):
        response = client.get(url, headers=headers)
        assert response.status_code == 200, url
    assert {t["slug"] for t in client.get(f"/api/v1/platform/tenants?before={huge}",
                                          headers=platform).get_json()["data"]} == {
        "alpha", "bravo"}
    page = login("alpha-billing").get(f"/billing/transactions/?before={huge}")
    assert page.status_code == 200
