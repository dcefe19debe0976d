"""Demo data: three tenants and their logins. Idempotent: running it again adds
only what is missing. The password is for demonstrations only."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from invoices import invoicing, ledger, usage_charges
from invoices.models import PaymentMethod
from permissions.matrix import BILLING_CONTACT, PLATFORM_ADMIN, TENANT_ADMIN
from plans import alerts
from plans import services as plan_services
from plans.metering import compact_usage, ingest_events
from plans.periods import period_containing, today_in
from portal import jobs
from portal.audit import Actor
from portal.extensions import db
from tenants import services
from tenants.models import BillfoldUser, Tenant
from tenants.scoping import tenant_scope, unscoped

DEMO_PASSWORD = "billfold-demo"
DEMO_ACTOR = Actor.system("demo")

DEMO_TENANTS = (
    {"slug": "acme", "name": "Acme Corp", "currency": "USD", "timezone": "America/New_York",
     "billing_email": "billing@acme.example"},
    {"slug": "globex", "name": "Globex", "currency": "USD", "timezone": "Europe/London",
     "billing_email": "accounts@globex.example"},
    {"slug": "initech", "name": "Initech", "currency": "USD", "timezone": "America/Chicago",
     "billing_email": "finance@initech.example"},
)

# Per tenant: plan code, negotiated price, end users, and the daily volume per end user
# of each metric on a weekday at the end of the six months (growth leads up to it).
DEMO_USAGE: dict[str, dict[str, Any]] = {
    "acme": {"plan": "professional", "custom_price_minor": None,
             "users": ["u-ana", "u-ben", "u-chen", "u-dana", "u-eli", "u-fay"],
             "daily": {"llm_tokens": 26_000, "sql_queries": 520, "api_requests": 4_200,
                       "compute_hours": 30},
             "storage_gb": 62},
    "globex": {"plan": "enterprise", "custom_price_minor": 400_000,
               "users": [f"gx-{n:02d}" for n in range(1, 11)],
               "daily": {"llm_tokens": 90_000, "sql_queries": 1_800, "api_requests": 12_000,
                         "compute_hours": 55},
               "storage_gb": 740},
    # Initech outgrows Starter: its tokens pass the plan's limit this month.
    "initech": {"plan": "starter", "custom_price_minor": None,
                "users": ["it-milton", "it-peter", "it-samir", "it-joanna"],
                "daily": {"llm_tokens": 8_000, "sql_queries": 95, "api_requests": 800,
                          "compute_hours": 6},
                "storage_gb": 9},
}
DEMO_MONTHS = 6


def _months_before(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 - months
    return dt.date(index // 12, index % 12 + 1, 1)


def _ensure_user(username: str, tenant: Tenant | None, role: str, first: str, last: str,
                 email: str, lines: list[str]) -> None:
    if db.session.scalar(select(BillfoldUser.id).where(BillfoldUser.username == username)):
        return
    services.create_user(
        DEMO_ACTOR, tenant,
        {"username": username, "email": email, "first_name": first, "last_name": last,
         "role": role},
        DEMO_PASSWORD,
    )
    lines.append(f"user {username} ({role}{', ' + tenant.slug if tenant else ''})")


def _demo_plans(tenant: Tenant, spec: dict, start: dt.date, lines: list[str]) -> None:
    """Six months on the plan, Acme upgraded from Starter half way, Initech asking
    for more."""
    if plan_services.current_subscription(tenant) is not None:
        return
    plans = {p.code: p for p in plan_services.list_plans()}
    first = plans["starter"] if tenant.slug == "acme" else plans[spec["plan"]]
    plan_services.subscribe(DEMO_ACTOR, tenant, first, starts_on=start,
                            custom_base_price_minor=spec["custom_price_minor"])
    if tenant.slug == "acme":
        plan_services.change_plan(DEMO_ACTOR, tenant, plans["professional"], "immediately",
                                  today=start + dt.timedelta(days=92))
    if tenant.slug == "initech":
        plan_services.request_plan_change(
            Actor("user", None, "initech-admin"), tenant, plans["professional"], "period_end",
            "Our token use has passed the Starter limit two months running.")
    lines.append(f"plan {spec['plan']} for {tenant.slug}")


def _demo_events(tenant: Tenant, spec: dict, start: dt.date, end: dt.date):
    """Deterministic events: weekday/weekend rhythm, steady growth, several users, up
    to the last full hour (so a second run within the hour finds them all there)."""
    rng = random.Random(f"billfold-demo-{tenant.slug}")
    zone = ZoneInfo(tenant.timezone)
    total_days = (end - start).days
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    day = start
    while day < end:
        growth = 0.55 + 0.45 * (day - start).days / max(1, total_days)
        weekday = day.weekday() < 5
        rhythm = 1.0 if weekday else 0.35
        for user in spec["users"]:
            for metric, volume in spec["daily"].items():
                pieces = 3 if metric in ("llm_tokens", "api_requests") else 1
                for piece in range(pieces):
                    amount = volume * growth * rhythm * rng.uniform(0.6, 1.4) / pieces
                    if metric == "compute_hours":  # minutes
                        amount = round(amount)
                        service = "ml_service" if user.endswith(("a", "0")) else "ai_service"
                    else:
                        amount = round(amount)
                        service = None
                    hour = rng.randint(8, 18) if weekday else rng.randint(10, 16)
                    moment = dt.datetime.combine(day, dt.time(hour, rng.randint(0, 59)), zone)
                    if moment > now:
                        continue
                    event = {"id": f"demo-{day:%Y%m%d}-{user}-{metric}-{piece}",
                             "metric": metric, "quantity": int(amount),
                             "timestamp": moment.astimezone(dt.UTC), "user": user}
                    if service:
                        event["service"] = service
                    yield event
        storage = spec["storage_gb"] * growth * rng.uniform(0.97, 1.03)
        moment = min(dt.datetime.combine(day, dt.time(23, 0), zone), now)
        if moment >= dt.datetime.combine(day, dt.time(0), zone):  # the day has begun
            yield {"id": f"demo-{day:%Y%m%d}-storage", "metric": "storage_gb",
                   "quantity": Decimal(str(round(storage, 2))),
                   "timestamp": moment.astimezone(dt.UTC)}
        day += dt.timedelta(days=1)


def _demo_usage(tenant: Tenant, spec: dict, start: dt.date, lines: list[str]) -> None:
    today = today_in(tenant.timezone)
    accepted = duplicates = 0
    batch: list[dict] = []
    for event in _demo_events(tenant, spec, start, today + dt.timedelta(days=1)):
        batch.append(event)
        if len(batch) == 5000:
            result = ingest_events(tenant, batch)
            accepted, duplicates = accepted + result.accepted, duplicates + result.duplicates
            batch = []
    if batch:
        result = ingest_events(tenant, batch)
        accepted, duplicates = accepted + result.accepted, duplicates + result.duplicates
    if accepted:
        lines.append(f"usage for {tenant.slug}: {accepted} events ({duplicates} already there)")


def _demo_ledger(tenant: Tenant, start: dt.date, lines: list[str]) -> None:
    """Credit history: Initech buys credit each month (its invoices are then paid
    from it); Acme got a welcome credit; Globex's contract came with a grant and its
    bonus."""
    if ledger.balance_minor(tenant) != 0 or ledger.list_entries(tenant, limit=1).entries:
        return
    zone = ZoneInfo(tenant.timezone)

    def moment(day: dt.date, hour: int) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(hour), zone).astimezone(dt.UTC)

    if tenant.slug == "acme":
        ledger.post_entry(tenant, DEMO_ACTOR, "bonus", 10_000, "Welcome credit",
                          at=moment(start, 9))
    elif tenant.slug == "globex":
        ledger.post_entry(tenant, DEMO_ACTOR, "contract_grant", 1_000_000,
                          "Contract GX-2026-04: prepaid portion", source="admin_correction",
                          at=moment(start, 10))
        ledger.post_entry(tenant, DEMO_ACTOR, "bonus_grant", 200_000,
                          "Contract GX-2026-04: negotiated bonus", source="admin_correction",
                          at=moment(start, 10))
    else:
        ledger.post_entry(tenant, DEMO_ACTOR, "bonus", 5_000, "Sign-up bonus",
                          at=moment(start, 9))
        # Initech is prepaid: its usage is charged to the credit day by day.
        usage_charges.set_prepaid(DEMO_ACTOR, tenant, True, today=start)
        period = period_containing(start)
        today = today_in(tenant.timezone)
        n = 0
        while period.start <= today:
            n += 1
            ledger.post_entry(tenant, DEMO_ACTOR, "topup", 30_000 if n < 4 else 45_000,
                              f"Credit purchase, Stripe Checkout cs_demo_{tenant.slug}_{n}",
                              source="stripe_webhook", ref_id=f"cs_demo_{tenant.slug}_{n}",
                              at=moment(period.start + dt.timedelta(days=2), 11))
            period = period.next()
        ledger.post_entry(tenant, Actor("user", None, "platform"), "admin_correction", 1_250,
                          "Refund of a duplicated storage charge", source="admin_correction")
    lines.append(f"ledger for {tenant.slug}: balance {ledger.balance(tenant)}")


DEMO_METHODS: dict[str, list[dict[str, Any]]] = {
    "acme": [{"kind": "card", "brand": "visa", "last4": "4242", "exp_month": 8,
              "exp_year": 2028, "stripe_payment_method_id": "pm_demo_acme_visa"},
             {"kind": "ach", "last4": "6789"}],
    "globex": [{"kind": "invoice"}, {"kind": "wire", "last4": "0451"}],
    "initech": [{"kind": "card", "brand": "mastercard", "last4": "4444", "exp_month": 3,
                 "exp_year": 2027, "stripe_payment_method_id": "pm_demo_initech_mc"}],
}


def _demo_payment_methods(tenant: Tenant, lines: list[str]) -> None:
    """Acme pays by card (ACH as a second method), Globex on net-30 invoice terms with
    wire details, Initech by card. Bank numbers are stored masked (last 4 only)."""
    with tenant_scope(tenant):
        if db.session.scalar(select(PaymentMethod.id).limit(1)):
            return
        for n, spec in enumerate(DEMO_METHODS[tenant.slug]):
            db.session.add(PaymentMethod(tenant_id=tenant.id, is_default=n == 0, **spec))
        db.session.commit()
    lines.append(f"payment methods for {tenant.slug}")


# Rules of each tenant's own beside the three defaults every tenant has.
DEMO_ALERT_RULES = {
    "acme": [{"name": "Monthly budget", "kind": "spend", "amount": "650.00",
              "channels": ["email", "in_app"], "email_to": "cfo@acme.example"},
             {"name": "Token forecast", "kind": "forecast", "metric": "llm_tokens",
              "threshold": "95", "channels": ["email", "in_app"]}],
    "globex": [{"name": "Storage at 70 %", "kind": "usage", "metric": "storage_gb",
                "threshold": "70", "channels": ["email", "in_app", "sms"],
                "sms_to": "+442071838750"}],
    "initech": [{"name": "Query ceiling", "kind": "metric", "metric": "sql_queries",
                 "threshold": "2500", "channels": ["in_app"]},
                {"name": "Low prepaid credit", "kind": "credit", "amount": "50.00",
                 "channels": ["email", "in_app"]}],
}


def _demo_alert_rules(tenant: Tenant, lines: list[str]) -> None:
    have = {rule.name for rule in alerts.list_rules(tenant)}
    for rule in DEMO_ALERT_RULES.get(tenant.slug, []):
        if rule["name"] not in have:
            alerts.create_rule(DEMO_ACTOR, tenant, rule)
            lines.append(f"alert rule {rule['name']!r} for {tenant.slug}")


def load_demo() -> list[str]:
    """Create what is missing of the demo; returns a line per object created."""
    lines: list[str] = []
    with unscoped():
        plan_services.ensure_default_catalog()
        _ensure_user("platform", None, PLATFORM_ADMIN, "Pat", "Operator",
                     "platform@billfold.example", lines)
        for spec in DEMO_TENANTS:
            tenant = db.session.scalar(select(Tenant).where(Tenant.slug == spec["slug"]))
            if tenant is None:
                tenant = services.create_tenant(DEMO_ACTOR, spec)
                lines.append(f"tenant {tenant.slug}")
            domain = spec["billing_email"].split("@")[1]
            _ensure_user(f"{tenant.slug}-admin", tenant, TENANT_ADMIN, "Alex",
                         f"{tenant.name} Admin", f"admin@{domain}", lines)
            _ensure_user(f"{tenant.slug}-billing", tenant, BILLING_CONTACT, "Bailey",
                         f"{tenant.name} Billing", f"billing-contact@{domain}", lines)
            spec_usage = DEMO_USAGE[tenant.slug]
            start = _months_before(today_in(tenant.timezone), DEMO_MONTHS)
            _demo_plans(tenant, spec_usage, start, lines)
            _demo_usage(tenant, spec_usage, start, lines)
            _demo_ledger(tenant, start, lines)
            _demo_payment_methods(tenant, lines)
            _demo_alert_rules(tenant, lines)
    for result in invoicing.close_due():
        lines.append(f"invoice {result.number} for {result.tenant} {result.period}: "
                     f"{result.status}")
    for slug, outcome in usage_charges.run_all().items():
        if outcome["settled"]:
            lines.append(f"daily usage charges for {slug}: {outcome['settled']} day(s)")
    jobs.drain()
    # As the hourly job leaves them: past days added up by month (not an object shown).
    db.session.commit()
    compact_usage()
    for slug, fired in alerts.evaluate_all().items():
        if fired:
            lines.append(f"budget alerts for {slug}: {fired} fired")
    jobs.drain()
    return lines or ["demo data already present"]
