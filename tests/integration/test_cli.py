"""``flask billfold`` commands: clear messages and exit status 1 on bad input."""

from __future__ import annotations

from sqlalchemy import func, select

from portal.demo import DEMO_PASSWORD
from portal.extensions import db
from tenants.models import BillfoldUser, Tenant
from tenants.scoping import unscoped
from tests.conftest import Browser


def _counts(app):
    with app.app_context(), unscoped():
        return (db.session.scalar(select(func.count(Tenant.id))),
                db.session.scalar(select(func.count(BillfoldUser.id))))


def test_demo_is_idempotent_and_its_logins_work(app):
    runner = app.test_cli_runner()
    first = runner.invoke(args=["billfold", "demo"])
    assert first.exit_code == 0, first.output
    assert "tenant acme" in first.output
    counts = _counts(app)
    assert counts == (3, 7)
    second = runner.invoke(args=["billfold", "demo"])
    assert second.exit_code == 0 and "already present" in second.output
    assert _counts(app) == counts
    for username in ("platform", "acme-admin", "acme-billing", "globex-admin",
                     "globex-billing", "initech-admin", "initech-billing"):
        assert Browser(app, username, DEMO_PASSWORD).logged_in, username
    with app.app_context(), unscoped():
        acme = db.session.scalar(select(Tenant).where(Tenant.slug == "acme"))
        assert acme.name == "Acme Corp"


def test_create_tenant_command_refuses_bad_input_with_status_1(app):
    runner = app.test_cli_runner()
    before = _counts(app)
    result = runner.invoke(args=["billfold", "create-tenant", "--slug", "Bad Slug", "--name", "X",
                                 "--billing-email", "x@example.com", "--currency", "QQQ"])
    assert result.exit_code == 1
    assert "slug:" in result.output and "currency:" in result.output
    assert _counts(app) == before


def test_create_tenant_and_user_commands(app):
    runner = app.test_cli_runner()
    ok = runner.invoke(args=["billfold", "create-tenant", "--slug", "echo", "--name", "Echo",
                             "--billing-email", "ap@echo.example", "--timezone", "Asia/Tokyo"])
    assert ok.exit_code == 0, ok.output
    user = runner.invoke(args=["billfold", "create-user", "--email", "boss@echo.example",
                               "--first-name", "B", "--last-name", "Oss", "--role",
                               "Tenant Admin", "--tenant", "echo", "--password",
                               "long-enough-password"])
    assert user.exit_code == 0, user.output
    assert Browser(app, "boss@echo.example", "long-enough-password").logged_in
    missing = runner.invoke(args=["billfold", "create-user", "--email", "a@b.example",
                                  "--first-name", "A", "--last-name", "B", "--role",
                                  "Tenant Admin", "--tenant", "nope", "--password", "x" * 12])
    assert missing.exit_code == 1 and "no tenant 'nope'" in missing.output


def test_sync_roles_is_repeatable(app):
    runner = app.test_cli_runner()
    first = runner.invoke(args=["billfold", "sync-roles"])
    second = runner.invoke(args=["billfold", "sync-roles"])
    assert first.exit_code == second.exit_code == 0
    assert first.output == second.output
    assert "Public: 0 permissions" in first.output
