"""Browser tests: the real portal served on 127.0.0.1, driven by Debian's Chromium
through Playwright for Python.

One portal per test package (``portal``): a fresh SQLite database migrated to head,
roles synced and the demo loaded, served by werkzeug from a thread, with the Stripe
stand-in (``tests/stripe_stub.py``) as its Stripe API. One Chromium per package
(``browser``); each test gets fresh browser contexts (``journey``, ``page``) whose
console errors and uncaught page errors fail the test, and whose pages are saved as
full-page screenshots under ``artifacts/e2e/``.

Nothing here uses the ``app`` fixture of ``tests/conftest.py``; without
``/usr/bin/chromium`` every test of this package is skipped with a message saying so.
Never run ``playwright install``: the tests use the system's Chromium.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.helpers import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    CHROMIUM_MISSING,
    DEMO_PASSWORD,
    start_portal,
)
from tests.stripe_stub import StripeStub

DEFAULT_VIEWPORT = {"width": 1280, "height": 900}
ACTION_TIMEOUT_MS = 15_000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="package", autouse=True)
def _chromium():
    """Skip the whole package, saying why, when Chromium or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(CHROMIUM_MISSING)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright for Python is not installed: the e2e browser tests are "
                    "skipped. Install the dev extra: .venv/bin/pip install -e '.[dev]'")


@pytest.fixture(scope="package")
def artifacts(_chromium):
    """``artifacts/e2e``, without the previous run's screenshots and exports (file by
    file, so that a run alongside never loses its directory)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.iterdir():
        if old.is_file():
            old.unlink(missing_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="package")
def portal(_chromium, tmp_path_factory):
    """The portal with demo data on a free port, and the Stripe stub it talks to."""
    with StripeStub() as stub:
        running = start_portal(tmp_path_factory.mktemp("e2e") / "billfold-e2e.db", stub)
        try:
            yield running
        finally:
            running.stop()
            from portal.extensions import db

            with running.app.app_context():
                db.session.remove()
                db.engine.dispose()


@pytest.fixture(scope="package")
def browser(_chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="package")
def auth_states(browser, portal):
    """Logged-in storage states by username, each made once, for tests that are about
    a page rather than about logging in: the login form is posted over HTTP (with
    its CSRF token) from a browser context, whose cookies are then kept. The
    journeys log in through the form in the browser (``helpers.login``)."""
    states: dict[str, dict] = {}

    def state_of(username: str) -> dict:
        if username not in states:
            context = browser.new_context(base_url=portal.url)
            try:
                form = context.request.get("/login/").text()
                token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form)
                assert token, "no CSRF token on the login page"
                response = context.request.post("/login/", form={
                    "csrf_token": token.group(1), "username": username,
                    "password": DEMO_PASSWORD})
                assert response.ok and "/login" not in response.url, (
                    f"{username} could not log in: {response.status} {response.url}")
                states[username] = context.storage_state()
            finally:
                context.close()
        return states[username]

    return state_of


class Journey:
    """One test's browser contexts, console errors and screenshots."""

    def __init__(self, browser, portal, auth_states, artifacts, name: str):
        self.browser = browser
        self.portal = portal
        self.auth_states = auth_states
        self.artifacts = artifacts
        self.name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
        self.errors: list[str] = []
        self.contexts = []
        self.steps = 0
        self._watched: set[int] = set()

    def new_page(self, *, viewport: dict | None = None, as_user: str | None = None):
        """A page in a fresh browser context (no cookies unless ``as_user`` is given)."""
        context = self.browser.new_context(
            base_url=self.portal.url,
            viewport=viewport or DEFAULT_VIEWPORT,
            accept_downloads=True,
            storage_state=self.auth_states(as_user) if as_user else None,
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        # The Stripe stub answers every unknown path with 401, its hosted page's
        # favicon included; Stripe's own pages have one. Serve an empty icon instead
        # of counting the stub's 401 as a console error of the journey.
        context.route(f"{self.portal.stub.url}/favicon.ico",
                      lambda route: route.fulfill(status=204, body=b""))
        context.on("page", self._watch)
        self.contexts.append(context)
        page = context.new_page()
        self._watch(page)
        return page

    def _watch(self, page) -> None:
        if id(page) in self._watched:
            return
        self._watched.add(id(page))

        def on_console(message):
            if message.type == "error":
                self.errors.append(f"console error on {page.url}: {message.text} "
                                   f"({message.location.get('url', '')})")

        page.on("console", on_console)
        page.on("pageerror", lambda error: self.errors.append(
            f"uncaught error on {page.url}: {error}"))

    def assert_no_console_errors(self) -> None:
        assert not self.errors, "the browser reported errors:\n" + "\n".join(self.errors)

    def shot(self, page, step: str) -> None:
        """Save a full-page screenshot as ``<test>-<NN>-<step>.png`` and check that the
        browser has reported no error so far."""
        self.steps += 1
        page.wait_for_load_state()
        path = self.artifacts / f"{self.name}-{self.steps:02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        self.assert_no_console_errors()

    def close(self, failed: bool) -> None:
        for n, context in enumerate(self.contexts):
            if failed:
                for m, page in enumerate(context.pages):
                    try:
                        path = self.artifacts / f"{self.name}-failed-{n}-{m}.png"
                        page.screenshot(path=str(path), full_page=True)
                    except Exception:  # best effort after a failure
                        pass
            context.close()


@pytest.fixture
def journey(request, browser, portal, auth_states, artifacts):
    run = Journey(browser, portal, auth_states, artifacts, request.node.name)
    yield run
    report = getattr(request.node, "rep_call", None)
    run.close(failed=report is None or report.failed)
    if report is not None and report.passed and run.errors:
        pytest.fail("the browser reported errors:\n" + "\n".join(run.errors))


@pytest.fixture
def page(journey):
    """A page in a fresh browser context, not logged in."""
    return journey.new_page()
