"""Helpers for the browser tests: starting the portal, logging in, Stripe webhooks and
the page checks (titles, labels, horizontal overflow, Content-Security-Policy
violations)."""

from __future__ import annotations

import json
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from werkzeug.serving import make_server

from tests.stripe_stub import StripeStub, signed_webhook

if TYPE_CHECKING:  # Playwright is imported lazily: without it the e2e tests are skipped.
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
CHROMIUM_MISSING = (
    f"Chromium is not installed ({CHROMIUM} is missing): the e2e browser tests are skipped. "
    "Install it with `sudo apt-get install -y chromium` (`make test` does so when run as root)."
)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = PROJECT_ROOT / "artifacts" / "e2e"
DEMO_PASSWORD = "billfold-demo"
STRIPE_SECRET_KEY = "sk_test_e2e"
STRIPE_WEBHOOK_SECRET = "whsec_e2e"


@dataclass
class Portal:
    """The running portal: its base URL, the Flask app and the Stripe stand-in."""

    url: str
    app: Any
    stub: StripeStub
    server: Any = field(repr=False, default=None)
    thread: threading.Thread | None = field(repr=False, default=None)

    def deliver(self, event: dict) -> dict:
        """POST a Stripe event to the webhook endpoint, signed as Stripe would sign it."""
        payload, signature = signed_webhook(event, STRIPE_WEBHOOK_SECRET)
        request = urllib.request.Request(
            self.url + "/webhooks/stripe",
            data=payload,
            method="POST",
            headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200, response.status
            return json.loads(response.read())

    def checkout_completed(self, session_id: str) -> dict:
        """The ``checkout.session.completed`` event the stub generated for one session."""
        events = [e for e in self.stub.events_of_type("checkout.session.completed")
                  if e["data"]["object"]["id"] == session_id]
        assert len(events) == 1, f"expected one completion event for {session_id}: {events}"
        return events[0]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)


def e2e_config(database_path: Path, stub_url: str) -> dict:
    return {
        "DATABASE_URL": f"sqlite:///{database_path}",
        "SECRET_KEY": "billfold-e2e-secret",
        # A real browser posts real forms: CSRF protection stays on.
        "WTF_CSRF_ENABLED": True,
        # Every journey logs in from 127.0.0.1; the login limit stays on but roomier.
        "AUTH_RATE_LIMIT": "200 per 20 second",
        # Demo users are hashed at start-up and checked at every login: keep it quick.
        "FAB_PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
        "STRIPE_SECRET_KEY": STRIPE_SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
        "STRIPE_API_BASE": stub_url,
    }


def start_portal(database_path: Path, stub: StripeStub) -> Portal:
    """Migrate a fresh SQLite database, sync roles, load the demo, and serve the portal
    with werkzeug on a free 127.0.0.1 port from a daemon thread."""
    from flask_migrate import upgrade

    from permissions.sync import sync_roles
    from portal import create_app
    from portal.demo import load_demo
    from portal.extensions import db

    app = create_app(e2e_config(database_path, stub.url))
    with app.app_context():
        upgrade()
        sync_roles(app.appbuilder)
        load_demo()
        db.session.remove()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="billfold-e2e", daemon=True)
    thread.start()
    return Portal(f"http://127.0.0.1:{server.server_port}", app, stub, server, thread)


def login(page: Page, username: str, password: str = DEMO_PASSWORD) -> None:
    """Log in through the login form and wait for the portal to answer."""
    from playwright.sync_api import expect

    page.goto("/login/")
    page.locator("#username").fill(username)
    page.locator("#password").fill(password)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_load_state()
    assert "/login" not in page.url, f"{username} could not log in: still on {page.url}"
    # The logout link sits in the user menu, collapsed until opened.
    expect(page.locator("a[href*='/logout']")).to_have_count(1)


def flash_messages(page: Page):
    """The flash messages (Bootstrap alerts) on the page."""
    return page.locator(".alert")


# JavaScript run in the page: every visible, user-editable form field without an
# accessible label. A field counts as labelled by a <label> associated with it (for=id
# or wrapping it) with text, a non-empty aria-label, or aria-labelledby naming an
# element with text.
UNLABELLED_FIELDS_JS = """
() => {
  const skip = new Set(["hidden", "submit", "button", "image", "reset"]);
  const text = (el) => (el && (el.innerText || el.textContent) || "").trim();
  const describe = (el) => {
    let d = el.tagName.toLowerCase();
    if (el.type && el.tagName !== "SELECT" && el.tagName !== "TEXTAREA") d += `[type=${el.type}]`;
    if (el.id) d += `#${el.id}`;
    if (el.name) d += `[name=${el.name}]`;
    if (el.placeholder) d += `[placeholder="${el.placeholder}"]`;
    const form = el.closest("form");
    if (form) {
      const where = form.getAttribute("action") || form.id || form.className || "";
      d += ` in form(${where})`;
    }
    return d;
  };
  const missing = [];
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.tagName === "INPUT" && skip.has((el.type || "").toLowerCase())) continue;
    if (el.hidden || el.getAttribute("aria-hidden") === "true") continue;
    const style = getComputedStyle(el);
    if (style.display === "none" || style.visibility === "hidden") continue;
    if (!el.getClientRects().length) continue;
    const byLabel = Array.from(el.labels || []).some((l) => text(l));
    const byAria = (el.getAttribute("aria-label") || "").trim() !== "";
    const ids = (el.getAttribute("aria-labelledby") || "").split(/\\s+/).filter(Boolean);
    const byLabelledBy = ids.some((id) => text(document.getElementById(id)));
    if (!(byLabel || byAria || byLabelledBy)) missing.push(describe(el));
  }
  return missing;
}
"""

# The page's and the viewport's widths, and the innermost elements that reach past
# the viewport's right edge (to say what makes a page too wide).
OVERFLOW_JS = """
() => {
  const width = window.innerWidth;
  const past = (el) => el.getBoundingClientRect().right > width + 1;
  const culprits = [];
  for (const el of document.body.querySelectorAll("*")) {
    if (!past(el) || Array.from(el.children).some(past)) continue;
    let d = el.tagName.toLowerCase() + (el.id ? "#" + el.id : "");
    for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
      if (up.id) { d = `#${up.id} ` + d; break; }
    }
    const text = (el.innerText || "").trim().replace(/\\s+/g, " ").slice(0, 60);
    culprits.push(`${d} (right edge ${Math.round(el.getBoundingClientRect().right)}px)`
                  + (text ? `: "${text}"` : ""));
  }
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: width,
          culprits: culprits.slice(0, 8)};
}
"""


def unlabelled_fields(page: Page) -> list[str]:
    return page.evaluate(UNLABELLED_FIELDS_JS)


def horizontal_overflow(page: Page) -> dict | None:
    """``None`` when the page fits its viewport's width, else the two widths and the
    innermost elements reaching past the viewport (``culprits``)."""
    widths = page.evaluate(OVERFLOW_JS)
    return None if widths["scrollWidth"] <= widths["innerWidth"] + 1 else widths


# An init script, run in each document before its own scripts: every
# ``securitypolicyviolation`` event the browser fires in the document (a style, a
# script or a connection the Content-Security-Policy refused) is kept in
# ``window.__cspViolations`` with the directive, the blocked URI ("inline" for inline
# styles and scripts), the sample the browser gives and the start of the element.
CSP_VIOLATIONS_INIT_JS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const target = event.target;
  window.__cspViolations.push({
    directive: event.effectiveDirective,
    blockedURI: event.blockedURI,
    sample: event.sample,
    element: target && target.outerHTML ? target.outerHTML.slice(0, 160) : String(target),
  });
}, true);
"""


def watch_csp_violations(page: Page) -> None:
    """Record the policy violations of every document the page loads from now on."""
    page.add_init_script(CSP_VIOLATIONS_INIT_JS)


def csp_violations(page: Page) -> list[dict]:
    """The violations recorded in the page's current document, once the events the
    browser has queued for it have been delivered."""
    return page.evaluate(
        "() => new Promise((resolve) => setTimeout(() => resolve(window.__cspViolations), 0))")
