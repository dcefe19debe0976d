"""Checks of every page the journeys visit: a non-empty <title>, a label for every
visible form field, and no horizontal overflow of the main pages at 1280 and 390 px.

A page that fails a check today is an xfail(strict=True) case naming the defect, so
the suite stays green, the defect stays visible, and the case turns into a failure
(XPASS) as soon as the page is fixed and the mark should go.
"""

from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy import select

from invoices import payments
from portal.audit import Actor
from portal.extensions import db
from tenants import services
from tenants.models import Tenant
from tenants.scoping import unscoped
from tests.e2e.helpers import horizontal_overflow, unlabelled_fields

expect = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed"
).expect

ACTOR = Actor.system("e2e")
INVITATION = "<invitation link>"
CHECKOUT = "<Stripe Checkout page>"

# (id, logged-in user or None, path): the pages the journeys visit.
PAGES = [
    ("login", None, "/login/"),
    ("dashboard-billing-contact", "acme-billing", "/"),
    ("dashboard-tenant-admin", "acme-admin", "/"),
    ("dashboard-platform", "platform", "/"),
    ("usage", "acme-billing", "/usage/"),
    ("transactions", "acme-billing", "/billing/transactions/"),
    ("transactions-filtered", "acme-billing", "/billing/transactions/?type=bonus"),
    ("plan", "initech-admin", "/plan/"),
    ("plan-requests", "platform", "/platform/plan-requests/"),
    ("plan-requests-approved", "platform", "/platform/plan-requests/?status=approved"),
    ("transactions-of-a-tenant", "platform", "/billing/transactions/?tenant=initech"),
    ("ledger-correction", "platform", "/platform/ledger/?tenant=initech"),
    ("payments", "acme-admin", "/billing/payments/"),
    ("invoices", "acme-billing", "/billing/invoices/"),
    ("invoices-of-a-tenant", "platform", "/billing/invoices/?tenant=globex"),
    ("cost-breakdown", "acme-billing", "/billing/costs/"),
    ("cost-breakdown-of-a-tenant", "platform", "/billing/costs/?tenant=initech&sort=name"),
    ("usage-analytics", "acme-admin", "/billing/analytics/"),
    ("usage-analytics-year", "acme-billing", "/billing/analytics/?view=year"),
    ("platform-overview", "platform", "/platform/overview/"),
    ("api-keys", "acme-admin", "/account/api-keys/"),
    ("budget-alerts", "initech-billing", "/billing/alerts/"),
    ("budget-alerts-of-a-tenant", "platform", "/billing/alerts/?tenant=globex"),
    ("alert-history", "initech-admin", "/billing/alerts/history"),
    ("alert-history-all-tenants", "platform", "/billing/alerts/history"),
    ("notifications", "initech-billing", "/notifications/"),
    ("api-reference", "acme-billing", "/api-docs/"),
    ("stripe-checkout", "acme-admin", CHECKOUT),
    ("team", "acme-admin", "/team/list/"),
    ("team-invite", "acme-admin", "/team/add"),
    ("invitation", None, INVITATION),
]

# Pages with an empty <title> or an unlabelled field today, by page id: the reason
# says which element is wrong. None at the moment.
PAGE_DEFECTS: dict[str, str] = {}

MAIN_PAGES = [
    ("dashboard", "/"),
    ("usage", "/usage/"),
    ("transactions", "/billing/transactions/"),
    ("plan", "/plan/"),
    ("payments", "/billing/payments/"),
    ("invoices", "/billing/invoices/"),
    ("cost-breakdown", "/billing/costs/"),
    ("usage-analytics", "/billing/analytics/"),
    ("budget-alerts", "/billing/alerts/"),
    ("alert-history", "/billing/alerts/history"),
    ("notifications", "/notifications/"),
]
WIDTHS = [1280, 390]
# Main pages too wide for a width today, by (page, width): the reason says which
# element is wrong. None at the moment.
OVERFLOW_DEFECTS: dict[tuple[str, int], str] = {}


def _known_defect(reason: str | None) -> list:
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


def _invitation_link(portal) -> str:
    """A fresh one-time invitation link of Acme (arranged through the service, as
    the Team page would)."""
    with portal.app.app_context(), unscoped():
        tenant = db.session.scalar(select(Tenant).where(Tenant.slug == "acme"))
        _, token = services.invite_user(
            ACTOR, tenant,
            {"email": f"e2e-page-{uuid.uuid4().hex[:8]}@acme.example", "first_name": "Page",
             "last_name": "Check", "role": "Billing Contact"})
        db.session.remove()
    return f"{portal.url}/invitation/{token}"


@pytest.fixture(scope="module")
def acme_in_use(portal):
    """Acme as everyday use leaves it, whichever tests ran before: a team member who
    accepted an invitation (their email is then the actor of audit events on the
    dashboard) and credit bought by card (a Stripe Checkout id in the description
    of a ledger entry). Arranged through the services and the Stripe stub."""
    with portal.app.app_context(), unscoped():
        tenant = db.session.scalar(select(Tenant).where(Tenant.slug == "acme"))
        _, token = services.invite_user(
            ACTOR, tenant,
            {"email": f"e2e-member-{uuid.uuid4().hex[:8]}@acme.example", "first_name": "Mem",
             "last_name": "Ber", "role": "Billing Contact"})
        services.accept_invitation(token, "e2e-" + uuid.uuid4().hex)
        checkout = payments.start_checkout(
            tenant, ACTOR, mode="payment", amount_minor=5_000,
            success_url=f"{portal.url}/billing/payments/returned",
            cancel_url=f"{portal.url}/billing/payments/returned?cancelled=1")
        db.session.remove()
    portal.stub.complete_checkout(checkout.session_id)
    assert portal.deliver(portal.checkout_completed(checkout.session_id))["outcome"] == (
        "topup booked")


def _open(journey, portal, user, path, viewport=None):
    page = journey.new_page(as_user=user, viewport=viewport)
    if path == CHECKOUT:
        page.goto("/billing/payments/")
        page.get_by_role("button", name="Add card").click()
        expect(page).to_have_url(re.compile(re.escape(portal.stub.url) + r"/pay/cs_\w+$"))
    else:
        response = page.goto(_invitation_link(portal) if path == INVITATION else path)
        assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
    page.wait_for_load_state()
    return page


@pytest.mark.parametrize(
    ("user", "path"),
    [pytest.param(user, path, id=name, marks=_known_defect(PAGE_DEFECTS.get(name)))
     for name, user, path in PAGES],
)
def test_page_has_a_title_and_labelled_fields(journey, portal, user, path):
    page = _open(journey, portal, user, path)
    journey.shot(page, "page")
    assert page.title().strip(), f"{path} has an empty <title>"
    missing = unlabelled_fields(page)
    assert not missing, f"{path}: visible form fields without a label:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    ("path", "width"),
    [
        pytest.param(path, width, id=f"{name}-{width}px",
                     marks=_known_defect(OVERFLOW_DEFECTS.get((name, width))))
        for name, path in MAIN_PAGES
        for width in WIDTHS
    ],
)
def test_main_page_has_no_horizontal_overflow(journey, portal, acme_in_use, path, width):
    page = _open(journey, portal, "acme-admin", path, viewport={"width": width, "height": 900})
    journey.shot(page, f"{width}px")
    overflow = horizontal_overflow(page)
    assert overflow is None, (
        f"{path} at {width}px is wider than the viewport: scrollWidth "
        f"{overflow['scrollWidth']} > innerWidth {overflow['innerWidth']}; past the edge:\n"
        + "\n".join(overflow["culprits"])
    )


def test_the_checks_find_what_they_look_for(page):
    """The label and overflow checks themselves, on a page made for them."""
    page.set_content("""<!doctype html><title>t</title><body style="margin:0">
      <label for="a">A</label><input id="a">
      <label>B <input name="b"></label>
      <input aria-label="C" name="c"><span id="d-label">D</span><input aria-labelledby="d-label">
      <input type="hidden" name="h"><input type="submit" value="Go"><input name="gone" hidden>
      <div style="display:none"><input name="invisible"></div>
      <input name="e" placeholder="no label"><label for="f"></label><select id="f"></select>
      <textarea name="g"></textarea>
    </body>""")
    missing = unlabelled_fields(page)
    assert [m.split(" ")[0] for m in missing] == [
        'input[type=text][name=e][placeholder="no', "select#f", "textarea[name=g]"], missing
    assert horizontal_overflow(page) is None
    page.set_content('<body style="margin:0"><div style="width:2000px">wide</div></body>')
    assert horizontal_overflow(page) == {"scrollWidth": 2000, "innerWidth": 1280,
                                         "culprits": ['div (right edge 2000px): "wide"']}
