"""A read replica for the reports: with ``DATABASE_REPLICA_URL`` set, the report pages
and API reads take their figures from the replica, while sign-in, API keys, every
write and every other page stay on the primary.

The replica is a copy of the test database taken mid-test (PostgreSQL: a database
made from the test database as template; SQLite: a backup of the file), made to
differ from the primary afterwards, so each answer shows which database it read.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import create_engine, select, text

from api import keys
from api.models import ApiKey
from plans.metering import ingest_events
from portal import create_app
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import unscoped
from tests.conftest import Browser, config_for, database_copy
from tests.factories import ACTOR

READ_ALL = ["usage:read", "billing:read"]


def _alpha(app, world) -> Tenant:
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, world.ids["a"])
        db.session.expunge(tenant)
        return tenant


def _tokens(client, headers) -> int:
    answer = client.get("/api/v1/usage/summary", headers=headers)
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["metrics"]["llm_tokens"]["used"]


def test_reports_read_the_replica_and_everything_else_the_primary(app, world, db_kind,
                                                                   tmp_path):
    from invoices import ledger

    alpha = _alpha(app, world)
    moment = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()
    with app.app_context():
        ingest_events(alpha, [{"id": "t1", "metric": "llm_tokens", "quantity": 2000,
                               "timestamp": moment, "user": "u1"}])
    with database_copy(app, db_kind, tmp_path) as replica_url:
        # The replica's figures differ from the primary's from here on: seven times the
        # tokens, so that every answer shows which database it was read from.
        engine = create_engine(replica_url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE usage_rollup SET quantity_micro = quantity_micro * 7"))
        engine.dispose()
        # Only the primary has the API key and the credit written after the copy.
        with app.app_context():
            key, secret = keys.create_key(ACTOR, alpha, "reports", READ_ALL)
            key_id = key.id
            ledger.post_entry(alpha, ACTOR, "bonus", 1_234, "after the copy")
        headers = {"Authorization": f"Bearer {secret}"}
        assert _tokens(app.test_client(), headers) == 2000  # no replica: the primary

        reporting = create_app(config_for(app.config["DATABASE_URL"],
                                          DATABASE_REPLICA_URL=replica_url))
        try:
            client = reporting.test_client()
            # Report reads: the replica. The key is checked on the primary (the
            # replica has never seen it), and its last use is written there.
            assert _tokens(client, headers) == 14_000
            assert client.get("/api/v1/costs/breakdown", headers=headers).status_code == 200
            with app.app_context(), unscoped():
                assert db.session.get(ApiKey, key_id).last_used_at is not None
            # Any other read: the primary, which has the credit written after the copy.
            entries = client.get("/api/v1/transactions", headers=headers).get_json()["data"]
            assert [e["amount"] for e in entries if e["description"] == "after the copy"] \
                == [1_234]
            # A revoked key is refused at once, report or not.
            with app.app_context():
                keys.revoke_key(ACTOR, alpha, key_id)
            assert client.get("/api/v1/usage/summary", headers=headers).status_code == 401

            # The pages: the analytics page reads the replica, the usage page the primary.
            browser = Browser(reporting, "alpha-billing")
            assert browser.logged_in
            today = dt.datetime.now(dt.UTC).date()
            days = browser.get(f"/billing/analytics/data.json?from={today - dt.timedelta(days=2)}"
                               f"&to={today + dt.timedelta(days=1)}").get_json()
            assert sum(u["quantity"] for u in days["usage"] if u["metric"] == "llm_tokens") \
                == 14_000
            usage_page = browser.get("/usage/").get_data(as_text=True)
            assert "2,000" in usage_page and "14,000" not in usage_page
        finally:
            with reporting.app_context():
                db.session.remove()
                for engine in db.engines.values():
                    engine.dispose()


def test_without_a_replica_there_is_one_engine(app):
    with app.app_context():
        assert set(db.engines) == {None}
        assert db.session.execute(select(1)).scalar() == 1
