"""Prepaid tenants: daily holds and settlements add up to the invoice, once each."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from invoices import invoicing, ledger, usage_charges
from invoices.models import LedgerEntry
from plans.metering import ingest_events
from plans.periods import period_containing
from portal.audit import Actor
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import tenant_scope, unscoped

ACTOR = Actor.system("tests")


def _alpha(world) -> Tenant:
    with unscoped():
        return db.session.get(Tenant, world.ids["a"])


def _tokens(period, day: int, amount: int, tag: str):
    moment = dt.datetime.combine(period.start + dt.timedelta(days=day), dt.time(10),
                                 tzinfo=dt.UTC)
    return [{"id": f"{tag}-{day}", "metric": "llm_tokens", "quantity": amount,
             "timestamp": moment, "user": "u1"}]


def _entries(tenant, prefix):
    with tenant_scope(tenant):
        return [(e.type, e.amount_minor, e.ref_id.rsplit(":", 1)[1]) for e in db.session.scalars(
            select(LedgerEntry).where(LedgerEntry.ref_id.like(prefix + "%"))
            .order_by(LedgerEntry.id))]


def test_days_are_held_settled_and_add_up_to_the_invoice(app, world, ctx):
    tenant = _alpha(world)
    period = period_containing(dt.date.today()).previous()
    ledger.post_entry(tenant, ACTOR, "topup", 200_000, "prepaid credit")
    usage_charges.set_prepaid(ACTOR, tenant, True, today=period.start)
    # Professional includes 5M tokens; day 0 uses them all, then 1M a day beyond
    # them costs $3.00 a day.
    ingest_events(tenant, _tokens(period, 0, 5_000_000, "a"))
    for day in range(1, 9):
        ingest_events(tenant, _tokens(period, day, 1_000_000, "a"))
    first = usage_charges.run_for_tenant(tenant, today=period.start + dt.timedelta(days=8))
    assert first["settled"] == 8
    prefix = usage_charges.ref_prefix(period)
    entries = _entries(tenant, prefix)
    assert ("usage", -49_900, "base") in entries  # the base fee with the first day
    settles = [amount for kind, amount, part in entries if part == "settle"]
    assert settles == [-300] * 7  # days 1..7, no hold before them
    assert first["held"] == 300  # today's hold: the mean of the last 7 days
    assert entries[-1] == ("usage", -300, "hold")
    # Running again changes nothing.
    assert usage_charges.run_for_tenant(tenant, today=period.start + dt.timedelta(days=8)) \
        == {"settled": 0, "held": 300}
    assert len(_entries(tenant, prefix)) == len(entries)
    # Day 8 used 1M tokens: its settlement finds the hold exact; a late event for
    # day 2 (ingested now) is charged by the next settlement.
    ingest_events(tenant, _tokens(period, 2, 500_000, "late"))
    usage_charges.run_for_tenant(tenant, today=period.start + dt.timedelta(days=9))
    assert _entries(tenant, prefix)[-2][1:] == (-150, "settle")
    # The close settles the remaining days; the charges pay the invoice exactly.
    invoice = invoicing.close_period(tenant, period)
    charged = usage_charges.charged_for_period(tenant, period)
    assert charged == invoice.subtotal_minor == 49_900 + 8 * 300 + 150
    assert invoice.status == "paid" and invoice.payment_terms == "prepaid"
    assert ledger.balance_minor(tenant) == 200_000 - invoice.total_minor


def test_a_quiet_day_returns_its_unused_hold(app, world, ctx):
    tenant = _alpha(world)
    period = period_containing(dt.date.today()).previous()
    ledger.post_entry(tenant, ACTOR, "topup", 100_000, "prepaid credit")
    usage_charges.set_prepaid(ACTOR, tenant, True, today=period.start)
    ingest_events(tenant, _tokens(period, 0, 5_000_000, "b"))
    for day in range(1, 4):
        ingest_events(tenant, _tokens(period, day, 2_000_000, "b"))  # $6.00 a day
    usage_charges.run_for_tenant(tenant, today=period.start + dt.timedelta(days=4))
    prefix = usage_charges.ref_prefix(period)
    # The mean of days 0-3: day 0 stayed within the included tokens.
    assert _entries(tenant, prefix)[-1] == ("usage", -450, "hold")
    # Day 4 uses nothing: its settlement gives the whole hold back.
    usage_charges.run_for_tenant(tenant, today=period.start + dt.timedelta(days=5))
    assert ("refund", 450, "settle") in _entries(tenant, prefix)


def test_tenants_that_are_not_prepaid_are_not_charged_daily(app, world, ctx):
    tenant = _alpha(world)
    assert usage_charges.run_all() == {}
    assert usage_charges.run_for_tenant(tenant) == {"settled": 0, "held": 0}
    with tenant_scope(tenant):
        assert db.session.scalar(select(LedgerEntry.id)) is None


def test_charge_usage_command(app, world):
    with app.app_context():
        usage_charges.set_prepaid(ACTOR, _alpha(world), True)
    result = app.test_cli_runner().invoke(args=["billfold", "charge-usage"])
    assert result.exit_code == 0 and "alpha:" in result.output and "1 prepaid" in result.output
