"""Tenants and tenant users through the portal: creation, bad input, suspension,
invitations and team management."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from portal.audit import AuditEvent
from portal.extensions import db
from tenants.models import BillfoldUser, Tenant
from tenants.scoping import unscoped
from tests.conftest import PASSWORD, Browser, page_text

NEW_TENANT = {"name": "Delta Co", "slug": "delta", "currency": "GBP",
              "timezone": "Europe/London", "billing_email": "ap@delta.example"}


def _count(app, model, *where):
    with app.app_context(), unscoped():
        return db.session.scalar(select(func.count()).select_from(model).where(*where))


def test_platform_admin_creates_a_tenant_and_it_is_audited(app, world, login):
    admin = login("operator")
    response = admin.post("/platform/tenants/add", data=NEW_TENANT)
    assert response.status_code == 302
    with app.app_context(), unscoped():
        tenant = db.session.scalar(select(Tenant).where(Tenant.slug == "delta"))
        assert (tenant.name, tenant.currency, tenant.timezone, tenant.status) == (
            "Delta Co", "GBP", "Europe/London", "active")
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "tenant.create",
                                                           AuditEvent.tenant_id == tenant.id))
        assert event.actor_label == "operator" and '"slug": "delta"' in event.after
    assert "Delta Co" in page_text(admin.get("/platform/tenants/list/"))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("slug", "alpha", "already exists"),
        ("slug", "Not A Slug", "lowercase letters"),
        ("currency", "XYZ", "Not a valid choice"),
        ("timezone", "Mars/Olympus", "Not a valid choice"),
        ("billing_email", "not-an-email", "email"),
        ("name", "", "required"),
    ],
)
def test_invalid_tenant_form_shows_the_error_and_changes_nothing(app, world, login, field,
                                                                  value, message):
    admin = login("operator")
    before = _count(app, Tenant), _count(app, AuditEvent)
    response = admin.post("/platform/tenants/add", data={**NEW_TENANT, field: value})
    assert response.status_code == 200  # the form again, not a redirect
    assert message.lower() in page_text(response).lower()
    assert (_count(app, Tenant), _count(app, AuditEvent)) == before


def test_service_refuses_unknown_currency_and_time_zone_with_every_error(app, world):
    from portal.audit import Actor
    from portal.errors import ValidationFailed
    from tenants import services

    with app.app_context(), pytest.raises(ValidationFailed) as info:
        services.create_tenant(Actor.system(), {**NEW_TENANT, "currency": "ABC",
                                                "timezone": "Nowhere/Land"})
    assert set(info.value.errors) == {"currency", "timezone"}
    assert _count(app, Tenant, Tenant.slug == "delta") == 0


def test_platform_admin_edits_a_tenant_but_not_its_slug(app, world, login):
    admin = login("operator")
    response = admin.post(f"/platform/tenants/edit/{world.ids['a']}",
                          data={"name": "Alpha Limited", "currency": "EUR",
                                "timezone": "Europe/Paris", "billing_email": "ap@alpha.example",
                                "slug": "hijack"})
    assert response.status_code == 302
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, world.ids["a"])
        assert (tenant.name, tenant.slug, tenant.currency) == ("Alpha Limited", "alpha", "EUR")


def test_suspended_tenant_users_cannot_log_in_and_sessions_end(app, world, login):
    session = login("bravo-billing")
    assert session.get("/").status_code == 200
    admin = login("operator")
    admin.post("/platform/tenants/action_post",
               data={"action": "suspend", "rowid": [str(world.ids["b"])]})
    with app.app_context(), unscoped():
        assert db.session.get(Tenant, world.ids["b"]).status == "suspended"
    assert not Browser(app, "bravo-admin").logged_in
    assert session.get("/").status_code == 302  # back to the login page
    assert Browser(app, "alpha-admin").logged_in  # other tenants unaffected
    admin.post("/platform/tenants/action_post",
               data={"action": "reactivate", "rowid": [str(world.ids["b"])]})
    assert Browser(app, "bravo-admin").logged_in


def test_tenant_admin_invites_a_billing_contact_who_sets_a_password(app, world, login):
    admin = login("alpha-admin")
    response = admin.post("/team/add", data={"email": "fin@alpha.example", "first_name": "Fin",
                                             "last_name": "Ance", "role": "Billing Contact"},
                          follow_redirects=True)
    link = re.search(r"https?://[^\s<]+/invitation/[\w-]+", response.get_data(as_text=True))
    assert link, "the one-time invitation link is shown to the inviter"
    path = "/invitation/" + link.group(0).rsplit("/invitation/", 1)[1]
    anonymous = app.test_client()
    assert "Fin" in page_text(anonymous.get(path))
    short = anonymous.post(path, data={"password": "short", "confirm": "short"})
    assert short.status_code == 200 and "at least" in page_text(short)
    done = anonymous.post(path, data={"password": PASSWORD, "confirm": PASSWORD})
    assert done.status_code == 302
    assert anonymous.get(path).status_code == 404  # used once
    invited = Browser(app, "fin@alpha.example")
    assert invited.logged_in
    assert invited.get("/team/list/").status_code == 403  # a Billing Contact
    with app.app_context(), unscoped():
        user = db.session.scalar(select(BillfoldUser).where(
            BillfoldUser.email == "fin@alpha.example"))
        assert user.tenant_id == world.ids["a"] and user.role_names == ["Billing Contact"]


def test_tenant_admin_cannot_invite_a_platform_admin(app, world, login):
    admin = login("alpha-admin")
    response = admin.post("/team/add", data={"email": "evil@alpha.example", "first_name": "E",
                                             "last_name": "Vil", "role": "Platform Admin"})
    assert response.status_code == 200
    assert "Not a valid choice" in page_text(response)
    assert _count(app, BillfoldUser, BillfoldUser.email == "evil@alpha.example") == 0


def test_duplicate_email_is_a_form_error(app, world, login):
    admin = login("alpha-admin")
    response = admin.post("/team/add", data={"email": "bravo-admin@example.com",
                                             "first_name": "Dup", "last_name": "Licate",
                                             "role": "Billing Contact"})
    assert response.status_code == 200
    assert "exists" in page_text(response)


def test_tenant_admin_changes_a_role_but_keeps_one_admin(app, world, login):
    admin = login("alpha-admin")
    promote = admin.post(f"/team/edit/{world.ids['a_billing']}",
                         data={"first_name": "Test", "last_name": "B", "role": "Tenant Admin",
                               "active": "y"})
    assert promote.status_code == 302
    demote_self = admin.post(f"/team/edit/{world.ids['a_admin']}",
                             data={"first_name": "Test", "last_name": "A",
                                   "role": "Billing Contact", "active": "y"})
    assert demote_self.status_code == 302  # the other admin remains
    with app.app_context(), unscoped():
        assert db.session.get(BillfoldUser, world.ids["a_billing"]).role_names == ["Tenant Admin"]
    last = login("alpha-billing")
    refused = last.post(f"/team/edit/{world.ids['a_billing']}",
                        data={"first_name": "Test", "last_name": "B",
                              "role": "Billing Contact", "active": "y"})
    assert refused.status_code == 200
    assert "at least one active Tenant Admin" in page_text(refused)


def test_platform_admin_invites_into_any_tenant(app, world, login):
    admin = login("operator")
    response = admin.post("/platform/users/add", data={
        "email": "ops@bravo.example", "first_name": "Op", "last_name": "S",
        "role": "Tenant Admin", "tenant": str(world.ids["b"])})
    assert response.status_code == 302
    with app.app_context(), unscoped():
        user = db.session.scalar(select(BillfoldUser).where(
            BillfoldUser.email == "ops@bravo.example"))
        assert user.tenant_id == world.ids["b"] and user.invitation_pending


def test_a_tenant_user_cannot_be_made_platform_admin(app, world, login):
    admin = login("operator")
    response = admin.post("/platform/users/add", data={
        "email": "x@bravo.example", "first_name": "X", "last_name": "Y",
        "role": "Platform Admin", "tenant": str(world.ids["b"])})
    assert response.status_code == 200
    assert "choose one of" in page_text(response)
    assert _count(app, BillfoldUser, BillfoldUser.email == "x@bravo.example") == 0


def test_unknown_ids_answer_404(world, login):
    admin = login("operator")
    for url in ("/platform/tenants/show/999999", "/platform/tenants/edit/999999",
                "/platform/tenants/show/abc", "/team/show/0", "/audit/show/-1",
                "/platform/tenants/action/nope/1"):
        assert admin.get(url).status_code == 404, url


def test_health_reports_the_database(client, app):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["database"]["status"] == "ok"
