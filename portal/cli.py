"""``flask billfold ...``: set-up, roles, tenants and demo data."""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import with_appcontext

from portal.audit import Actor
from portal.doctor import doctor_command
from portal.errors import NotFoundError, ValidationFailed

CLI_ACTOR = Actor.system("cli")


def fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


@click.group()
def billfold() -> None:
    """Billfold administration."""


billfold.add_command(doctor_command)


@billfold.command("sync-roles")
@with_appcontext
def sync_roles_command() -> None:
    """Write the roles of the permission matrix to the database."""
    from permissions.sync import sync_roles

    counts = sync_roles(current_app.extensions["appbuilder"])
    for role, count in counts.items():
        click.echo(f"{role}: {count} permissions")


@billfold.command("ingest")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--tenant", "tenant_slug", required=True,
              help="Slug of the tenant the events belong to")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv"]), default="auto",
              show_default=True)
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 10_000))
@with_appcontext
def ingest_command(path, tenant_slug, fmt, batch_size) -> None:
    """Ingest usage events from a JSON-lines or CSV file.

    Each batch of --batch-size rows is all or nothing: a batch with an invalid row is
    rejected whole and its errors are listed with their line numbers. Exit status 1
    when any row was rejected.
    """
    from plans.ingest_file import ingest_file
    from tenants import services

    try:
        tenant = services.get_tenant_by_slug(tenant_slug)
    except NotFoundError as exc:
        fail(str(exc))
    report = ingest_file(tenant, path, fmt=fmt, batch_size=batch_size)
    for line in report.error_lines(limit=50):
        click.echo(line, err=True)
    click.echo(f"accepted {report.accepted}, duplicates {report.duplicates}, "
               f"rejected {report.rejected}")
    if report.rejected:
        sys.exit(1)


@billfold.command("init")
@with_appcontext
def init_command() -> None:
    """Prepare a migrated database: sync roles and permissions."""
    from permissions.sync import sync_roles
    from plans.services import ensure_default_catalog
    from tenants.scoping import unscoped

    sync_roles(current_app.extensions["appbuilder"])
    with unscoped():
        made = ensure_default_catalog()
    click.echo("Roles and permissions are in place.")
    if made:
        click.echo(f"Created the default plans: {', '.join(made)}.")


@billfold.command("create-tenant")
@click.option("--slug", required=True)
@click.option("--name", required=True)
@click.option("--billing-email", required=True)
@click.option("--currency", default="USD", show_default=True)
@click.option("--timezone", default="UTC", show_default=True)
@with_appcontext
def create_tenant_command(slug, name, billing_email, currency, timezone) -> None:
    """Create a tenant."""
    from tenants import services

    try:
        tenant = services.create_tenant(
            CLI_ACTOR,
            {"slug": slug, "name": name, "billing_email": billing_email,
             "currency": currency, "timezone": timezone},
        )
    except ValidationFailed as exc:
        fail("; ".join(f"{k}: {v}" for k, v in exc.errors.items()))
    click.echo(f"Created tenant {tenant.slug} (id {tenant.id}).")


@billfold.command("create-user")
@click.option("--email", required=True)
@click.option("--first-name", required=True)
@click.option("--last-name", required=True)
@click.option("--role", required=True,
              type=click.Choice(["Platform Admin", "Tenant Admin", "Billing Contact"]))
@click.option("--tenant", "tenant_slug", help="Tenant slug (omit for a Platform Admin)")
@click.option("--username")
@click.password_option()
@with_appcontext
def create_user_command(email, first_name, last_name, role, tenant_slug, username, password):
    """Create a user who can log in at once."""
    from tenants import services

    try:
        tenant = services.get_tenant_by_slug(tenant_slug) if tenant_slug else None
        user = services.create_user(
            CLI_ACTOR, tenant,
            {"email": email, "first_name": first_name, "last_name": last_name,
             "role": role, "username": username},
            password,
        )
    except NotFoundError as exc:
        fail(str(exc))
    except ValidationFailed as exc:
        fail("; ".join(f"{k}: {v}" for k, v in exc.errors.items()))
    click.echo(f"Created {role} {user.username}.")


@billfold.command("demo")
@with_appcontext
def demo_command() -> None:
    """Load the demo tenants and logins (idempotent). Demo-only passwords."""
    from portal.demo import load_demo

    summary = load_demo()
    for line in summary:
        click.echo(line)


@billfold.command("auto-recharge")
@with_appcontext
def auto_recharge_command() -> None:
    """Charge auto-recharges still pending and resend failure notices not yet sent."""
    from invoices.auto_recharge import sweep
    from portal import jobs

    outcome = sweep()
    jobs.drain()
    click.echo(f"{outcome['pending']} pending: {outcome['charged']} submitted to Stripe; "
               f"{outcome['notified']} failure notice(s) sent.")
    if outcome["failed"]:
        click.echo(f"{outcome['failed']} could not be charged (Stripe did not answer, see the "
                   "log); they stay pending for the next run.", err=True)
        raise SystemExit(1)


@billfold.command("close-period")
@click.option("--period", "period_label", help="YYYY-MM: only this period (default: every "
              "ended period without an invoice)")
@click.option("--tenant", "tenant_slug", help="Only this tenant (default: every active tenant)")
@with_appcontext
def close_period_command(period_label, tenant_slug) -> None:
    """Rate ended billing periods and issue their invoices (safe to run again)."""
    from invoices.invoicing import close_due
    from portal import jobs

    try:
        with click.progressbar(length=1, label="Closing periods", file=sys.stderr) as bar:
            def progress(done, total):
                bar.length = total
                bar.update(done - bar.pos)

            results = close_due(period_label=period_label, tenant_slug=tenant_slug,
                                progress=progress)
        jobs.drain()
    except NotFoundError as exc:
        fail(str(exc))
    except ValidationFailed as exc:
        fail("; ".join(f"{k}: {v}" for k, v in exc.errors.items()))
    for r in results:
        click.echo(f"{r.tenant} {r.period}: {r.number} total {r.total_minor} minor units, "
                   f"{r.status}")
    click.echo(f"{len(results)} invoice(s) issued or finished.")


@billfold.command("mark-overdue")
@with_appcontext
def mark_overdue_command() -> None:
    """Pending invoices past their due date become overdue (daily)."""
    from invoices.invoicing import mark_overdue

    click.echo(f"{mark_overdue()} invoice(s) marked overdue.")


@billfold.command("compact-usage")
@with_appcontext
def compact_usage_command() -> None:
    """Add up each tenant's daily usage rollups by month, up to its today."""
    from plans.metering import compact_usage

    click.echo(f"{compact_usage()} tenant(s) compacted.")


@billfold.command("charge-usage")
@with_appcontext
def charge_usage_command() -> None:
    """Settle prepaid tenants' ended days and hold today's usage (daily)."""
    from invoices.usage_charges import run_all
    from portal import jobs

    results = run_all()
    jobs.drain()
    for slug, outcome in results.items():
        click.echo(f"{slug}: {outcome['settled']} day(s) settled, hold {outcome['held']} "
                   "minor units")
    click.echo(f"{len(results)} prepaid tenant(s).")


@billfold.command("evaluate-alerts")
@click.option("--tenant", "tenant_slug", help="Only this tenant (default: every active tenant)")
@with_appcontext
def evaluate_alerts_command(tenant_slug) -> None:
    """Fire the budget alerts whose threshold is crossed, then send the email and SMS
    that are due (first attempts and retries)."""
    from plans.alerts import evaluate_all
    from portal import jobs
    from portal.notifications import retry_due

    try:
        fired = evaluate_all(tenant_slug)
    except NotFoundError as exc:
        fail(str(exc))
    jobs.drain()
    sent = retry_due()
    for slug, count in fired.items():
        if count:
            click.echo(f"{slug}: {count} alert(s) fired")
    click.echo(f"{sum(fired.values())} alert(s) fired for {len(fired)} tenant(s); "
               "deliveries: " + (", ".join(f"{n} {s}" for s, n in sorted(sent.items()))
                                 or "none due"))


@billfold.command("create-api-key")
@click.option("--tenant", "tenant_slug", help="The tenant the key acts for")
@click.option("--platform", is_flag=True, help="A platform key (scope platform:read)")
@click.option("--scopes", required=True,
              help="Comma separated: usage:write,usage:read,billing:read (tenant keys) "
                   "or platform:read (platform keys)")
@click.option("--name", required=True, help="What uses the key")
@click.option("--expires", "expires_on", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="YYYY-MM-DD: the key stops working at the start of this day (UTC)")
@with_appcontext
def create_api_key_command(tenant_slug, platform, scopes, name, expires_on) -> None:
    """Create an API key and print its secret alone on standard output."""
    import datetime as dt

    from api.keys import create_key
    from tenants.services import get_tenant_by_slug

    if bool(tenant_slug) == bool(platform):
        fail("give either --tenant SLUG or --platform")
    try:
        tenant = get_tenant_by_slug(tenant_slug) if tenant_slug else None
        expires = (dt.datetime.combine(expires_on.date(), dt.time(), dt.UTC)
                   if expires_on else None)
        key, secret = create_key(CLI_ACTOR, tenant, name, scopes, expires_at=expires)
    except NotFoundError as exc:
        fail(str(exc))
    except ValidationFailed as exc:
        fail("; ".join(f"{k}: {v}" for k, v in exc.errors.items()))
    click.echo(f"Created key {key.name} ({key.prefix}…) with {key.scopes}.", err=True)
    click.echo(secret)
