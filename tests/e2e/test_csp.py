"""The Content-Security-Policy in Chromium: the main pages of each role load, run their
scripts, draw their charts and lay themselves out without the browser refusing
anything, and the policy does refuse a style that is neither the portal's stylesheet,
nor nonced, nor one of Flask-AppBuilder's hashed style attributes.

Each page records the ``securitypolicyviolation`` events of its documents from an
init script (``helpers.watch_csp_violations``), before the page's own scripts run.
"""

from __future__ import annotations

import pytest

from tests.e2e.helpers import csp_violations, watch_csp_violations

expect = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed"
).expect

# (id, logged-in user or None, path, link): the page at ``path``, or, with a link
# selector, the page its first matching link leads to.
PAGES = [
    ("login", None, "/login/", None),
    # A Billing Contact
    ("home-billing-contact", "acme-billing", "/", None),
    ("usage", "acme-billing", "/usage/", None),
    ("cost-breakdown", "acme-billing", "/billing/costs/", None),
    ("analytics", "acme-billing", "/billing/analytics/", None),
    ("analytics-year", "acme-billing", "/billing/analytics/?view=year", None),
    ("invoices", "acme-billing", "/billing/invoices/", None),
    ("invoice", "acme-billing", "/billing/invoices/", "#invoices a[href*='/billing/invoices/BF-']"),
    ("transactions", "acme-billing", "/billing/transactions/", None),
    ("payments-billing-contact", "acme-billing", "/billing/payments/", None),
    ("budget-alerts", "acme-billing", "/billing/alerts/", None),
    ("alert-history", "initech-admin", "/billing/alerts/history", None),
    ("notifications", "initech-billing", "/notifications/", None),
    ("api-reference", "acme-billing", "/api-docs/", None),
    ("profile", "acme-billing", "/users/userinfo/", None),
    # A Tenant Admin
    ("home-tenant-admin", "acme-admin", "/", None),
    ("usage-tenant-admin", "initech-admin", "/usage/", None),
    ("plan", "initech-admin", "/plan/", None),
    ("payments", "acme-admin", "/billing/payments/", None),
    ("budget-alert-edit", "initech-admin", "/billing/alerts/", "a[href$='/edit']"),
    ("api-keys", "acme-admin", "/account/api-keys/", None),
    ("team", "acme-admin", "/team/list/", None),
    ("team-member", "acme-admin", "/team/list/", "a[href*='/team/show/']"),
    ("team-member-edit", "acme-admin", "/team/list/", "a[href*='/team/edit/']"),
    ("team-invite", "acme-admin", "/team/add", None),
    ("audit-log-tenant", "acme-admin", "/audit/list/", None),
    # A Platform Admin
    ("home-platform", "platform", "/", None),
    ("platform-overview", "platform", "/platform/overview/", None),
    ("plans-catalog", "platform", "/platform/plans/", None),
    ("plan-edit", "platform", "/platform/plans/", "a[href$='/edit']"),
    ("plan-requests", "platform", "/platform/plan-requests/", None),
    ("ledger", "platform", "/platform/ledger/?tenant=initech", None),
    ("transactions-of-a-tenant", "platform", "/billing/transactions/?tenant=initech", None),
    ("invoices-of-a-tenant", "platform", "/billing/invoices/?tenant=globex", None),
    ("cost-breakdown-of-a-tenant", "platform", "/billing/costs/?tenant=initech", None),
    ("analytics-of-a-tenant", "platform", "/billing/analytics/?tenant=globex", None),
    ("alerts-of-a-tenant", "platform", "/billing/alerts/?tenant=globex", None),
    ("tenants", "platform", "/platform/tenants/list/", None),
    ("tenant", "platform", "/platform/tenants/list/", "a[href*='/platform/tenants/show/']"),
    ("tenant-edit", "platform", "/platform/tenants/list/", "a[href*='/platform/tenants/edit/']"),
    ("users-of-all-tenants", "platform", "/platform/users/list/", None),
    ("users", "platform", "/users/list/", None),
    ("user", "platform", "/users/list/", "a[href*='/users/show/']"),
    ("roles", "platform", "/roles/list/", None),
    ("role", "platform", "/roles/list/", "a[href*='/roles/show/']"),
    ("audit-log-paged", "platform", "/audit/list/?psize_AuditLogView=5", None),
]

# True once every chart canvas of the page has its Chart.js chart.
CHARTS_DRAWN_JS = """
() => Array.from(document.querySelectorAll("canvas[id^='chart-']"))
  .every((canvas) => window.Chart && Chart.getChart(canvas))
"""

# The elements whose data-width (widths.js) did not become their width.
UNSIZED_JS = """
() => Array.from(document.querySelectorAll("[data-width]"))
  .filter((el) => el.style.width !== el.getAttribute("data-width") + "%")
  .map((el) => el.outerHTML.slice(0, 120))
"""


def _open(journey, user: str | None, path: str, link: str | None):
    page = journey.new_page(as_user=user)
    watch_csp_violations(page)
    if link is not None:
        response = page.goto(path)
        assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
        target = page.locator(link).first.get_attribute("href")
        assert target, f"no link {link} on {path}"
        path = target
    response = page.goto(path)
    assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
    policy = response.headers.get("content-security-policy", "")
    assert "style-src 'self'" in policy and "'unsafe-inline'" not in policy, (path, policy)
    page.wait_for_load_state("networkidle")
    return page


@pytest.mark.parametrize(("user", "path", "link"),
                         [pytest.param(user, path, link, id=name)
                          for name, user, path, link in PAGES])
def test_page_runs_without_policy_violations(journey, user, path, link):
    page = _open(journey, user, path, link)
    page.wait_for_function(CHARTS_DRAWN_JS)
    if page.locator("#swagger-ui").count():
        # Swagger UI renders the document, then an operation opened with its schemas.
        page.locator("#swagger-ui .opblock-summary").first.click()
        expect(page.locator("#swagger-ui .opblock-body").first).to_be_visible()
        page.wait_for_load_state("networkidle")
    if page.locator(".meter").count():
        expect(page.locator(".meter .progress-bar").first).to_be_visible()
    assert page.evaluate(UNSIZED_JS) == []
    violations = csp_violations(page)
    assert violations == [], f"{page.url}: the browser refused:\n" + "\n".join(
        str(v) for v in violations)
    journey.shot(page, "page")


def test_the_policy_refuses_injected_styles_and_allows_fabs(browser, portal, auth_states):
    """What the page test relies on: a style attribute or a <style> element put into
    a portal page is refused, reported and not applied; Flask-AppBuilder's hashed
    attributes apply without a report, the one its filter script sets included.

    The contexts are this test's own: the refusals it provokes are console errors,
    which a journey counts as failures, and adding a filter on a date column raises
    Flask-AppBuilder's ``$field.datetimepicker is not a function`` after the style
    attribute is set."""
    contexts = []

    def open_page(user: str, path: str):
        context = browser.new_context(base_url=portal.url, storage_state=auth_states(user))
        contexts.append(context)
        page = context.new_page()
        watch_csp_violations(page)
        page.goto(path)
        page.wait_for_load_state("networkidle")
        assert csp_violations(page) == [], path
        return page

    try:
        page = open_page("initech-billing", "/notifications/")
        page.evaluate("""() => {
          const box = document.createElement("div");
          box.id = "injected";
          box.innerHTML = '<p id="refused" style="color: rgb(0, 0, 255)">refused</p>'
                        + '<p id="hashed" style="display: none">hashed</p>';
          document.body.appendChild(box);
          const sheet = document.createElement("style");
          sheet.textContent = "#injected { font-size: 40px; }";
          document.head.appendChild(sheet);
        }""")
        violations = csp_violations(page)
        assert sorted(v["directive"] for v in violations) == ["style-src-attr", "style-src-elem"]
        assert all(v["blockedURI"] == "inline" for v in violations)
        attribute = next(v for v in violations if v["directive"] == "style-src-attr")
        assert attribute["element"].startswith('<p id="refused"')
        assert page.locator("#refused").evaluate("el => el.style.color") == ""
        assert page.locator("#refused").evaluate("el => getComputedStyle(el).color") != (
            "rgb(0, 0, 255)")
        assert page.locator("#hashed").evaluate("el => el.style.display") == "none"
        expect(page.locator("#hashed")).to_be_hidden()
        assert page.locator("#injected").evaluate("el => getComputedStyle(el).fontSize") != "40px"
        # The portal's stylesheet applies: the unread count's badge is red.
        assert page.locator("#unread-count").evaluate(
            "el => getComputedStyle(el).backgroundColor") == "rgb(201, 48, 44)"

        page = open_page("platform", "/audit/list/")
        page.locator("a.accordion-toggle").first.click()
        page.get_by_role("button", name="Add Filter").click()
        page.locator("#filter_form a.filter[name='created_at']").click()
        date_input = page.locator("#filter_form input[name$='created_at']")
        expect(date_input).to_have_attribute("style", "width: 100%")
        assert date_input.evaluate("el => el.style.width") == "100%"
        assert csp_violations(page) == []
    finally:
        for context in contexts:
            context.close()
