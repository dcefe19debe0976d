"""Test fixtures. Every database test runs on SQLite and, when
``BILLFOLD_TEST_DATABASE_URL`` is set, on PostgreSQL as well."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import socket
import sqlite3
from collections.abc import Iterator

import pytest
from flask_migrate import upgrade
from sqlalchemy import delete

from portal import create_app
from portal.extensions import db
from tenants.scoping import unscoped

PG_URL = os.environ.get("BILLFOLD_TEST_DATABASE_URL")
DATABASES = ["sqlite"] + (["postgresql"] if PG_URL else [])
# Under pytest-xdist (``make test`` runs two workers, ``--dist loadfile``: the tests of
# one file stay on one worker, so the Redis tests of a file never race each other)
# each worker has a PostgreSQL database of its own, named after the given one.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def _admin_execute(url, statement: str) -> None:
    import psycopg

    admin = url.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False),
                         autocommit=True) as conn:
        conn.execute(statement)


def worker_pg_url(base: str) -> str:
    """The PostgreSQL URL of this worker: the given database, or one of its own."""
    from sqlalchemy.engine import make_url

    if not WORKER:
        return base
    url = make_url(base)
    name = f"{url.database}_{WORKER}"
    _admin_execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin_execute(url, f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


def drop_worker_database(worker_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(worker_url)
    if WORKER and PG_URL and url.database != make_url(PG_URL).database:
        _admin_execute(url, f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
@contextlib.contextmanager
def database_copy(app, db_kind: str, tmp_path) -> Iterator[str]:
    """A copy of the test database as it is now; yields its URL."""
    from sqlalchemy.engine import make_url

    url = make_url(app.config["DATABASE_URL"])
    with app.app_context():
        db.session.remove()
        db.engine.dispose()  # PostgreSQL copies a database nobody is connected to
    if db_kind == "sqlite":
        copy = url.set(database=str(tmp_path / "copy.db"))
        with sqlite3.connect(url.database) as source, sqlite3.connect(copy.database) as target:
            source.backup(target)
    else:
        copy = url.set(database=f"{url.database}_copy")
        _admin_execute(url, f'DROP DATABASE IF EXISTS "{copy.database}" WITH (FORCE)')
        # Apps built by other tests on this database may keep pooled connections; they
        # reconnect on their next use (pool_pre_ping).
        _admin_execute(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            f"WHERE datname = '{url.database}' AND pid <> pg_backend_pid()")
        _admin_execute(url, f'CREATE DATABASE "{copy.database}" TEMPLATE "{url.database}"')
    try:
        yield copy.render_as_string(hide_password=False)
    finally:
        if db_kind == "postgresql":
            _admin_execute(url, f'DROP DATABASE IF EXISTS "{copy.database}" WITH (FORCE)')



def redis_up() -> bool:
    """Whether Redis answers on 127.0.0.1:6379 (the Redis-backed tests need it)."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


needs_redis = pytest.mark.skipif(not redis_up(), reason="Redis is not running on 127.0.0.1:6379")

PASSWORD = "correct-horse-battery"

# Tables that hold the roles and permissions synced once per session.
SECURITY_TABLES = {"ab_permission", "ab_view_menu", "ab_permission_view", "ab_role",
                   "ab_permission_view_role", "alembic_version"}


def database_url(kind: str, tmp_path_factory) -> str:
    if kind == "sqlite":
        return "sqlite:///" + str(tmp_path_factory.mktemp("db") / "billfold-test.db")
    return worker_pg_url(PG_URL)


def config_for(url: str, **extra) -> dict:
    return {
        "TESTING": True,
        "DATABASE_URL": url,
        "WTF_CSRF_ENABLED": False,
        "RATELIMIT_ENABLED": False,
        "FAB_PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
        "SERVER_NAME": "billfold.test",
        **extra,
    }


@pytest.fixture(scope="session", params=DATABASES)
def db_kind(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def _apps(tmp_path_factory):
    """One migrated app per database for the whole session. pytest re-creates a
    parametrised session fixture each time the parameter changes, which happens at
    every test file when the files are spread over xdist workers; the apps are
    therefore kept here and ``app`` only looks its one up."""
    from permissions.sync import sync_roles

    built: dict[str, object] = {}

    def get(kind: str):
        if kind not in built:
            url = database_url(kind, tmp_path_factory)
            app = create_app(config_for(url))
            with app.app_context():
                if kind == "postgresql":
                    # A previous run may have left the schema behind: start from nothing.
                    from flask_migrate import downgrade

                    downgrade(revision="base")
                upgrade()
                sync_roles(app.appbuilder)
            built[kind] = app
        return built[kind]

    yield get
    for kind, app in built.items():
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        if kind == "postgresql":
            drop_worker_database(app.config["DATABASE_URL"])


@pytest.fixture(scope="session")
def app(db_kind, _apps):
    return _apps(db_kind)


@pytest.fixture(autouse=True)
def _clean_tables(request):
    """Empty every business table after a test that used the database."""
    yield
    if "app" not in request.fixturenames:
        return
    app = request.getfixturevalue("app")
    with app.app_context(), unscoped():
        db.session.rollback()
        for table in reversed(db.metadata.sorted_tables):
            if table.name not in SECURITY_TABLES:
                db.session.execute(delete(table))
        db.session.commit()
        db.session.remove()


@pytest.fixture
def ctx(app):
    """An application context in the all-tenants scope, for arranging data."""
    with app.app_context(), unscoped():
        yield
        db.session.remove()


@pytest.fixture
def client(app):
    return app.test_client()


class Browser:
    """A logged-in test client."""

    def __init__(self, app, username: str, password: str = PASSWORD):
        self.app = app
        self.client = app.test_client()
        self.username = username
        response = self.client.post("/login/", data={"username": username, "password": password})
        self.logged_in = response.status_code == 302 and "/login" not in response.headers.get(
            "Location", ""
        )

    def get(self, url, **kw):
        return self.client.get(url, **kw)

    def post(self, url, **kw):
        return self.client.post(url, **kw)


@pytest.fixture
def login(app):
    def _login(username: str, password: str = PASSWORD) -> Browser:
        browser = Browser(app, username, password)
        assert browser.logged_in, f"{username} could not log in"
        return browser

    return _login


def page_text(response) -> str:
    """The visible text of a response (or of an HTML string), whitespace collapsed."""
    html = response if isinstance(response, str) else response.get_data(as_text=True)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


class World:
    """Two tenants, each with a Tenant Admin and a Billing Contact, and a Platform Admin."""

    def __init__(self):
        from tests.factories import (
            ACTOR,
            TenantFactory,
            billing_contact,
            platform_admin,
            tenant_admin,
        )

        self.a = TenantFactory(slug="alpha", name="Alpha Ltd")
        self.b = TenantFactory(slug="bravo", name="Bravo GmbH", currency="EUR",
                               timezone="Europe/Berlin")
        self.a_admin = tenant_admin(self.a, "alpha-admin")
        self.a_billing = billing_contact(self.a, "alpha-billing")
        self.b_admin = tenant_admin(self.b, "bravo-admin")
        self.b_billing = billing_contact(self.b, "bravo-billing")
        self.platform = platform_admin("operator")
        from plans import services as plan_services

        plan_services.ensure_default_catalog()
        plans = {p.code: p for p in plan_services.list_plans()}
        start = dt.date.today().replace(day=1) - dt.timedelta(days=40)
        self.a_sub = plan_services.subscribe(ACTOR, self.a, plans["professional"],
                                             starts_on=start)
        self.b_sub = plan_services.subscribe(ACTOR, self.b, plans["starter"], starts_on=start)
        self.a_request = plan_services.request_plan_change(
            ACTOR, self.a, plans["enterprise"], "period_end", "we need a contract")
        self.b_request = plan_services.request_plan_change(
            ACTOR, self.b, plans["professional"], "period_end", "we need more tokens")
        from invoices.payment_methods import add_bank_method

        bank = {"routing_number": "011000015", "account_number": "000123456789"}
        self.a_method = add_bank_method(ACTOR, self.a, "ach", bank)
        self.b_method = add_bank_method(ACTOR, self.b, "ach", bank)
        self.ids = {
            name: getattr(self, name).id
            for name in ("a", "b", "a_admin", "a_billing", "b_admin", "b_billing", "platform",
                         "a_sub", "b_sub", "a_request", "b_request", "a_method", "b_method")
        }


@pytest.fixture
def world(app):
    with app.app_context(), unscoped():
        w = World()
        db.session.remove()
    return w


STRIPE_WEBHOOK_SECRET = "whsec_test_billfold"


@pytest.fixture
def stub(app):
    """A local server answering as Stripe's API does, configured on the app."""
    from tests.stripe_stub import StripeStub

    with StripeStub() as server:
        saved = {k: app.config.get(k) for k in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET",
                                                "STRIPE_API_BASE")}
        app.config.update(STRIPE_SECRET_KEY="sk_test_billfold",
                          STRIPE_WEBHOOK_SECRET=STRIPE_WEBHOOK_SECRET, STRIPE_API_BASE=server.url)
        yield server
        app.config.update(saved)
