"""The permission matrix as data is complete and consistent (no database)."""

import pytest

from permissions.matrix import (
    GRANTING_LEVELS,
    MATRIX,
    PLATFORM_ADMIN,
    ROLES,
    TENANT_ROLES,
    role_permissions,
)

DESIGN_ROWS = {
    "view usage",
    "view invoices, download PDFs",
    "update plan",
    "manage payment methods",
    "set budget alerts",
    "manage tenant users, API keys",
    "plan catalog, tenants, ledger corrections, refunds, revenue",
}


def test_every_row_of_design_matrix_is_present():
    assert DESIGN_ROWS <= {row.action for row in MATRIX}


@pytest.mark.parametrize("row", MATRIX, ids=lambda r: r.action)
def test_every_row_names_every_role_with_a_known_level(row):
    assert set(row.access) == set(ROLES)
    assert set(row.access.values()) <= GRANTING_LEVELS | {"request", "no"}


@pytest.mark.parametrize("row", MATRIX, ids=lambda r: r.action)
def test_rows_without_pages_say_why(row):
    assert row.grants or row.pending


def test_platform_admin_is_never_refused():
    assert all(row.access[PLATFORM_ADMIN] != "no" for row in MATRIX)


def test_billing_contact_gets_a_subset_of_tenant_admin_except_own_cells():
    extra = role_permissions("Billing Contact") - role_permissions("Tenant Admin")
    assert extra == set()


def test_tenant_roles_never_hold_platform_resources():
    platform_row = next(r for r in MATRIX if r.action.startswith("plan catalog"))
    for role in TENANT_ROLES:
        assert not (role_permissions(role) & set(platform_row.grants))
