"""One test per cell of DESIGN.md's permission matrix, generated from
``permissions.matrix`` and checked through the real views with logged-in users."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from permissions.matrix import (
    GRANTING_LEVELS,
    MATRIX,
    PLATFORM_ADMIN,
    PUBLIC,
    PUBLIC_RESOURCES,
    ROLES,
    TENANT_ROLES,
    all_matrix_resources,
    role_permissions,
    row_grants,
)
from portal.extensions import db
from tenants.scoping import tenant_scope, unscoped
from tests.routes import routes_for, view_routes

CELLS = [(row, role) for row in MATRIX for role in ROLES]
USER_OF_ROLE = {PLATFORM_ADMIN: "platform", "Tenant Admin": "a_admin",
                "Billing Contact": "a_billing"}
# Page methods a GET can safely open; writes are proven by the feature tests.
PROBED_METHODS = {"list", "show", "add", "edit", "index", "userinfo", "this_form_get"}


def _scope_of(world, role):
    return unscoped() if role == PLATFORM_ADMIN else tenant_scope(world.ids["a"])


def probes(app, world, grants, role) -> list[tuple[str, str]]:
    """(method, URL) of the routes behind ``grants``: GET pages, with ids of rows the
    role's user can see, and POST-only routes without ids, posted empty (an empty
    form never writes)."""
    found = []
    for permission, resource in grants:
        for route in routes_for(app, permission, resource):
            args = re.findall(r"<(?:\w+:)?(\w+)>", route.rule)
            if "GET" not in route.http_methods:
                if not args:
                    found.append(("POST", route.rule))
                continue
            if route.method_name not in PROBED_METHODS:
                continue
            if not args:
                found.append(("GET", route.rule))
                continue
            if args != ["pk"] or route.model is None:
                continue
            with app.app_context(), _scope_of(world, role):
                pk = db.session.scalar(select(route.model.id).order_by(route.model.id).limit(1))
            assert pk is not None, f"no {route.model.__name__} to probe {route.rule}"
            found.append(("GET", re.sub(r"<(?:\w+:)?pk>", str(pk), route.rule)))
    return found


@pytest.mark.parametrize(
    "row,role", CELLS, ids=[f"{r.action}|{role}" for r, role in CELLS]
)
def test_matrix_cell(app, world, login, row, role):
    level = row.access[role]
    if not row.grants:
        # The row's pages arrive with a later capability (row.pending says which);
        # its cell is then checked here without editing this test.
        assert row.pending
        return
    user = login(getattr(world, USER_OF_ROLE[role]).username)
    given = set(row_grants(row, role))
    allowed = probes(app, world, sorted(given), role)
    refused = [p for p in probes(app, world, sorted(set(row.grants + row.request_grants) - given),
                                 role) if p not in allowed]
    assert allowed or refused, f"row {row.action!r} grants no page that can be probed"
    assert bool(allowed) == (level in GRANTING_LEVELS | {"request"})
    for method, url in allowed:
        status = user.client.open(url, method=method).status_code
        expected_ok = status == 200 if method == "GET" else status != 403
        assert expected_ok, f"{role} refused {method} {url} ({status}) although {level!r}"
    for method, url in refused:
        status = user.client.open(url, method=method).status_code
        assert status == 403, f"{role} reached {method} {url} ({status}) although {level!r}"


def test_every_protected_view_is_in_the_matrix(app):
    """A page that exists with no cell in the matrix fails here."""
    covered = all_matrix_resources() | PUBLIC_RESOURCES
    missing = {
        route.resource for route in view_routes(app)
        if route.permission is not None and route.resource not in covered
    }
    assert not missing, f"views without a matrix row: {sorted(missing)}"


def test_every_matrix_grant_names_an_existing_permission(app):
    granted = {(p, r) for row in MATRIX for p, r in row.grants + row.request_grants}
    with app.app_context():
        sm = app.appbuilder.sm
        absent = [g for g in granted if sm.find_permission_view_menu(*g) is None]
    assert not absent


def test_roles_in_database_hold_exactly_the_matrix(app):
    with app.app_context():
        sm = app.appbuilder.sm
        for role_name in ROLES:
            role = sm.find_role(role_name)
            held = {(p.permission.name, p.view_menu.name) for p in role.permissions}
            assert held == role_permissions(role_name)
        assert sm.find_role(PUBLIC).permissions == []
        assert sm.find_role("Admin") is None


def test_anonymous_visitors_reach_only_public_pages(app, world, client):
    for route in view_routes(app):
        if "<" in route.rule or "GET" not in route.http_methods or route.permission is None:
            continue
        response = client.get(route.rule)
        assert response.status_code in (302, 401), route.rule
        if response.status_code == 302:
            assert "/login" in response.headers["Location"], route.rule


@pytest.mark.parametrize("role", TENANT_ROLES)
def test_tenant_roles_see_only_their_menus(app, world, login, role):
    user = login(getattr(world, USER_OF_ROLE[role]).username)
    html = user.get("/").get_data(as_text=True)
    assert "/platform/tenants/list/" not in html
    assert ("/team/list/" in html) == (role == "Tenant Admin")


def test_billing_contact_cannot_reach_user_management(world, login):
    billing = login("alpha-billing")
    for url in ("/team/list/", "/team/add", f"/team/edit/{world.ids['a_admin']}",
                "/platform/users/list/", "/users/list/"):
        assert billing.get(url).status_code == 403, url
    response = billing.post("/team/add", data={"email": "x@alpha.example", "first_name": "X",
                                               "last_name": "Y", "role": "Billing Contact"})
    assert response.status_code == 403
