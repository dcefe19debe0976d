"""``flask billfold doctor``: check the configuration and what it points at.

Each check prints one line, ``ok`` or ``FAIL``, saying what it found and, when it
fails, what is wrong and how to fix it; the command exits 1 when any check fails.
Checks read only the configuration (``BILLFOLD_*`` variables over ``Config``) and
open their own short-lived connections with timeouts, so they also run, and say
why, when the database or Redis is down.

The configuration counts as production when ``PRODUCTION`` is set (``make run-prod``
sets it) or the database is not SQLite; production is held to more: a real secret
key, Redis for rate limits, a Celery broker with jobs off the web tier.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from portal.config import PROJECT_ROOT
from portal.observability import is_redis_url, ping_redis, redacted_url

DEVELOPMENT_SECRET = "billfold-development-secret"
MIN_SECRET_LENGTH = 32
TIMEOUT = 5.0  # seconds, for each network check
APT_PACKAGES = "libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core"
UPGRADE = "flask --app portal db upgrade"
INIT = "flask --app portal billfold init"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':<5} {self.name + ':':<20} {self.message}"


def is_production(config: Mapping[str, Any]) -> bool:
    return bool(config.get("PRODUCTION")) or not _database_url(config).startswith("sqlite")


def _database_url(config: Mapping[str, Any]) -> str:
    return str(config.get("SQLALCHEMY_DATABASE_URI") or "")


def _shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by the check itself
        return redacted_url(url)


# -- the checks ---------------------------------------------------------------------------

def check_secret_key(config: Mapping[str, Any]) -> Check:
    secret = str(config.get("SECRET_KEY") or "")
    generate = "python -c 'import secrets; print(secrets.token_hex(32))'"
    if not is_production(config):
        if secret == DEVELOPMENT_SECRET:
            return Check("secret key", True, "the development default (fine for the "
                         "embedded SQLite demo; set BILLFOLD_SECRET_KEY in production)")
        return Check("secret key", True, "set")
    if not secret or secret == DEVELOPMENT_SECRET:
        return Check("secret key", False, "BILLFOLD_SECRET_KEY is "
                     + ("unset" if not secret else "the development default")
                     + ": anyone could forge session cookies. Set BILLFOLD_SECRET_KEY to a "
                     f"random value of its own, e.g. from `{generate}`, the same on every "
                     "web instance")
    if len(secret) < MIN_SECRET_LENGTH:
        return Check("secret key", False, f"BILLFOLD_SECRET_KEY has {len(secret)} characters; "
                     f"use at least {MIN_SECRET_LENGTH} random ones, e.g. from `{generate}`")
    return Check("secret key", True, f"set ({len(secret)} characters)")


def _engine(config: Mapping[str, Any], url: str | None = None):
    """A throwaway engine on the configured database (or ``url``), with a connect
    timeout."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    url = url or _database_url(config)
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args["connect_timeout"] = int(TIMEOUT)
    elif url.startswith("sqlite"):
        connect_args["timeout"] = TIMEOUT
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def _sqlite_file_missing(url: str) -> str | None:
    """The path of a SQLite database file that does not exist (SQLite would create an
    empty one on connect), else None."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or \
            parsed.database == ":memory:":
        return None
    return None if Path(parsed.database).exists() else parsed.database


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    return f"{type(original).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_database(config: Mapping[str, Any]) -> Check:
    from sqlalchemy import text

    url = _database_url(config)
    shown = _shown_url(url)
    if not url:
        return Check("database", False, "no database configured: set BILLFOLD_DATABASE_URL")
    missing = _sqlite_file_missing(url)
    if missing:
        return Check("database", False, f"no SQLite database file at {missing}: run "
                     f"`{UPGRADE}` and `{INIT}` (or `make migrate`), or set "
                     "BILLFOLD_DATABASE_URL to the database to use")
    started = time.perf_counter()
    try:
        engine = _engine(config)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - every failure is reported
        return Check("database", False, f"{shown} does not answer ({_first_line(exc)}): check "
                     "BILLFOLD_DATABASE_URL (host, port, database name, user, password) and "
                     "that the server runs and accepts connections from this host")
    elapsed = (time.perf_counter() - started) * 1000
    return Check("database", True, f"{shown} answers ({elapsed:.0f} ms)")


def _scripts():
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    return ScriptDirectory.from_config(alembic)


def _current_heads(config: Mapping[str, Any], url: str | None = None) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    engine = _engine(config, url)
    try:
        with engine.connect() as connection:
            return set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()


def check_migrations(config: Mapping[str, Any]) -> Check:
    script = _scripts()
    heads = set(script.get_heads())
    try:
        current = _current_heads(config)
    except Exception as exc:  # noqa: BLE001
        return Check("migrations", False, f"not checked: the database does not answer "
                     f"({_first_line(exc)})")
    shown_heads = ", ".join(sorted(heads))
    if current == heads:
        return Check("migrations", True, f"at head ({shown_heads})")
    if not current:
        return Check("migrations", False, "the database has no schema: run "
                     f"`{UPGRADE}`, then `{INIT}`")
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = current - known
    if unknown:
        return Check("migrations", False, f"the database is at {', '.join(sorted(unknown))}, "
                     "a revision this code does not have (a newer release migrated it): "
                     "deploy the same release on every machine")
    return Check("migrations", False, f"the database is at {', '.join(sorted(current))}, the "
                 f"code's head is {shown_heads}: run `{UPGRADE}`, then `{INIT}`")


def check_replica(config: Mapping[str, Any]) -> Check:
    from portal.replica import BIND_KEY

    url = str((config.get("SQLALCHEMY_BINDS") or {}).get(BIND_KEY) or "")
    if not url:
        return Check("read replica", True, "none: the report pages read the primary (set "
                     "BILLFOLD_DATABASE_REPLICA_URL to move them to a replica)")
    shown = _shown_url(url)
    try:
        current = _current_heads(config, url)
    except Exception as exc:  # noqa: BLE001
        return Check("read replica", False, f"{shown} does not answer ({_first_line(exc)}): "
                     "check BILLFOLD_DATABASE_REPLICA_URL, or unset it to read the reports "
                     "from the primary")
    heads = set(_scripts().get_heads())
    if current != heads:
        return Check("read replica", False, f"{shown} is at "
                     f"{', '.join(sorted(current)) or 'no schema'}, the code's head is "
                     f"{', '.join(sorted(heads))}: it must be a streaming replica of the "
                     "migrated primary (BILLFOLD_DATABASE_REPLICA_URL)")
    return Check("read replica", True, f"{shown} answers, at head; the report pages read it")


def check_roles(config: Mapping[str, Any]) -> Check:
    from sqlalchemy import text

    from permissions.matrix import ROLES, TENANT_ROLES

    try:
        engine = _engine(config)
        try:
            with engine.connect() as connection:
                rows = connection.execute(text(
                    "SELECT r.name, count(pvr.id) FROM ab_role r LEFT JOIN "
                    "ab_permission_view_role pvr ON pvr.role_id = r.id GROUP BY r.name"
                )).all()
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001
        return Check("roles", False, f"not checked: the roles cannot be read "
                     f"({_first_line(exc)}); run `{UPGRADE}`, then `{INIT}`")
    counts = dict(rows)
    missing = [role for role in ROLES if role not in counts]
    empty = [role for role in TENANT_ROLES if counts.get(role) == 0]
    if missing or empty:
        problem = (f"missing role(s): {', '.join(missing)}" if missing
                   else f"role(s) without permissions: {', '.join(empty)}")
        return Check("roles", False, f"{problem}: run `{INIT}`")
    return Check("roles", True, ", ".join(f"{role} ({counts[role]} permissions)"
                                          for role in ROLES))


def _redis_check(name: str, url: str, variable: str) -> Check:
    started = time.perf_counter()
    error = ping_redis(url, timeout=TIMEOUT)
    shown = redacted_url(url)
    if error is not None:
        return Check(name, False, f"Redis at {shown} does not answer ({error}): start Redis "
                     f"there or point {variable} at a Redis server")
    return Check(name, True, f"Redis at {shown} answers "
                 f"({(time.perf_counter() - started) * 1000:.0f} ms)")


def check_rate_limit_storage(config: Mapping[str, Any]) -> Check:
    name, variable = "rate-limit storage", "BILLFOLD_RATELIMIT_STORAGE_URI"
    url = str(config.get("RATELIMIT_STORAGE_URI") or "memory://")
    production = is_production(config)
    if not config.get("RATELIMIT_ENABLED", False):
        if production:
            return Check(name, False, "rate limits are off (RATELIMIT_ENABLED false): API keys "
                         "and login attempts are unlimited; set BILLFOLD_RATELIMIT_ENABLED=true")
        return Check(name, True, "rate limits are off (RATELIMIT_ENABLED false)")
    if is_redis_url(url):
        return _redis_check(name, url, variable)
    if url.startswith("memory://"):
        if production:
            return Check(name, False, "memory:// counts per process, so with N web processes "
                         "a limit of 3 lets 3×N through: set "
                         f"{variable}=redis://HOST:6379/0, the same for every web instance")
        return Check(name, True, "memory:// (counts per process: fine for one process)")
    return Check(name, True, f"{redacted_url(url)} (not probed: only Redis URLs are)")


def check_broker(config: Mapping[str, Any]) -> Check:
    name, variable = "celery broker", "BILLFOLD_CELERY_BROKER_URL"
    broker = config.get("CELERY_BROKER_URL")
    eager = bool(config.get("JOBS_EAGER", True))
    production = is_production(config)
    if not broker:
        if production:
            return Check(name, False, "no broker: periodic jobs do not run and deferred jobs "
                         "run inside web requests; set "
                         f"{variable}=redis://HOST:6379/1 and BILLFOLD_JOBS_EAGER=false, and "
                         "run `celery -A portal.worker:celery worker` and `... beat`")
        return Check(name, True, "none: jobs run in-process (the embedded default)")
    if eager and production:
        return Check(name, False, "BILLFOLD_JOBS_EAGER is on: card charges, PDFs and notices "
                     "run inside web requests instead of on the Celery workers; set "
                     "BILLFOLD_JOBS_EAGER=false")
    if not is_redis_url(str(broker)):
        return Check(name, True, f"{redacted_url(str(broker))} (not probed: only Redis URLs "
                     "are)")
    result = _redis_check(name, str(broker), variable)
    backend = config.get("CELERY_RESULT_BACKEND")
    if result.ok and backend and backend != broker and is_redis_url(str(backend)):
        stored = _redis_check(name, str(backend), "BILLFOLD_CELERY_RESULT_BACKEND")
        if not stored.ok:
            return stored
        return Check(name, True, f"{result.message}; result backend: {stored.message}")
    return result


def check_smtp(config: Mapping[str, Any]) -> Check:
    host = config.get("MAIL_SERVER")
    if not host:
        return Check("smtp", True, "email is off (BILLFOLD_MAIL_SERVER unset): notices and "
                     "alerts are not emailed")
    use_ssl = bool(config.get("MAIL_USE_SSL"))
    port = int(config.get("MAIL_PORT") or (465 if use_ssl else 25))
    where = f"{host}:{port}"
    step = "connect"
    try:
        if use_ssl:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(str(host), port, timeout=TIMEOUT,
                                                  context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(str(host), port, timeout=TIMEOUT)
        with smtp:
            step = "EHLO"
            smtp.ehlo()
            if config.get("MAIL_USE_TLS") and not use_ssl:
                step = "STARTTLS"
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if config.get("MAIL_USERNAME"):
                step = "login"
                smtp.login(str(config["MAIL_USERNAME"]), str(config.get("MAIL_PASSWORD") or ""))
            step = "NOOP"
            smtp.noop()
    except smtplib.SMTPAuthenticationError as exc:
        return Check("smtp", False, f"{where} refused the login of {config['MAIL_USERNAME']} "
                     f"({exc.smtp_code}): fix BILLFOLD_MAIL_USERNAME / BILLFOLD_MAIL_PASSWORD")
    except smtplib.SMTPNotSupportedError as exc:
        return Check("smtp", False, f"{where} does not support {step} ({exc}): change "
                     "BILLFOLD_MAIL_USE_TLS / BILLFOLD_MAIL_USE_SSL / BILLFOLD_MAIL_PORT")
    except (OSError, smtplib.SMTPException) as exc:
        return Check("smtp", False, f"{where} failed at {step} ({type(exc).__name__}: {exc}): "
                     "check BILLFOLD_MAIL_SERVER, BILLFOLD_MAIL_PORT and the TLS settings "
                     "(MAIL_USE_SSL for port 465, MAIL_USE_TLS for STARTTLS on 587)")
    login = f" as {config['MAIL_USERNAME']}" if config.get("MAIL_USERNAME") else ""
    tls = " over TLS" if use_ssl else (" with STARTTLS" if config.get("MAIL_USE_TLS") else "")
    return Check("smtp", True, f"{where} answers{tls}{login}")


def check_stripe(config: Mapping[str, Any]) -> Check:
    secret = str(config.get("STRIPE_SECRET_KEY") or "")
    webhook = str(config.get("STRIPE_WEBHOOK_SECRET") or "")
    base = config.get("STRIPE_API_BASE")
    problems = []
    if not secret:
        problems.append("BILLFOLD_STRIPE_SECRET_KEY is not set (card payments, auto-recharge "
                        "and refunds are off): set it to the secret key of Stripe's dashboard, "
                        "Developers → API keys")
    elif not secret.startswith(("sk_live_", "sk_test_", "rk_live_", "rk_test_")):
        problems.append("BILLFOLD_STRIPE_SECRET_KEY does not look like a Stripe secret key "
                        "(sk_live_…, sk_test_…, rk_…): copy it again from Stripe's dashboard")
    if not webhook:
        problems.append("BILLFOLD_STRIPE_WEBHOOK_SECRET is not set (payments are never booked): "
                        "add an endpoint for https://YOUR-HOST/webhooks/stripe in Stripe's "
                        "dashboard and set its signing secret (whsec_…)")
    elif not webhook.startswith("whsec_"):
        problems.append("BILLFOLD_STRIPE_WEBHOOK_SECRET does not look like a signing secret "
                        "(whsec_…): copy it from the webhook endpoint in Stripe's dashboard")
    if base and is_production(config):
        problems.append(f"BILLFOLD_STRIPE_API_BASE sends payments to {base} instead of "
                        "Stripe: unset it")
    if problems:
        return Check("stripe", False, "; ".join(problems))
    mode = "live" if "_live_" in secret else "test"
    return Check("stripe", True, f"secret key ({mode} mode) and webhook signing secret set"
                 + (f"; API at {base}" if base else ""))


def check_weasyprint(config: Mapping[str, Any]) -> Check:
    install = f"install them: sudo apt-get install -y {APT_PACKAGES}"
    try:
        import weasyprint
    except (ImportError, OSError) as exc:
        return Check("weasyprint", False, f"WeasyPrint cannot load its system libraries "
                     f"({_first_line(exc)}): {install}")
    try:
        started = time.perf_counter()
        document = weasyprint.HTML(
            string="<p style='font-family: sans-serif'>Billfold</p>").render()
        pdf = document.write_pdf()
        elapsed = (time.perf_counter() - started) * 1000
    except Exception as exc:  # noqa: BLE001
        return Check("weasyprint", False, f"a one-line PDF failed to render ({_first_line(exc)}): "
                     f"{install}")
    if not pdf.startswith(b"%PDF"):
        return Check("weasyprint", False, f"the rendered document is not a PDF: {install}")
    if not document.fonts:  # the fonts the PDF embeds
        return Check("weasyprint", False, "no font was found, so PDFs would have no text: "
                     "sudo apt-get install -y fonts-dejavu-core")
    return Check("weasyprint", True, f"WeasyPrint {weasyprint.__version__} renders a PDF "
                 f"({elapsed:.0f} ms)")


CHECKS: tuple[Callable[[Mapping[str, Any]], Check], ...] = (
    check_secret_key, check_database, check_migrations, check_roles, check_replica,
    check_rate_limit_storage, check_broker, check_smtp, check_stripe, check_weasyprint,
)


def run_checks(config: Mapping[str, Any],
               checks: tuple[Callable[[Mapping[str, Any]], Check], ...] = CHECKS,
               ) -> list[Check]:
    """Every check's result; a check that raises is a failure naming the error. The
    checks that need the database are skipped, failing, when it does not answer."""
    results = []
    database_down = False
    for check in checks:
        if database_down and check in (check_migrations, check_roles):
            name = "migrations" if check is check_migrations else "roles"
            results.append(Check(name, False, "not checked: the database does not answer"))
            continue
        try:
            result = check(config)
        except Exception as exc:  # noqa: BLE001 - the doctor reports, never crashes
            result = Check(check.__name__.removeprefix("check_").replace("_", " "), False,
                           f"the check itself failed ({_first_line(exc)})")
        if check is check_database and not result.ok:
            database_down = True
        results.append(result)
    return results


@click.command("doctor")
@with_appcontext
def doctor_command() -> None:
    """Check the configuration: database, migrations, roles, Redis, SMTP, Stripe and
    WeasyPrint. One line per check; exit status 1 when any fails."""
    import sys

    config = current_app.config
    kind = "production" if is_production(config) else "embedded (SQLite, development)"
    click.echo(f"Checking the {kind} configuration.")
    results = run_checks(config)
    for result in results:
        click.echo(result.line())
    failed = [r for r in results if not r.ok]
    if failed:
        click.echo(f"{len(failed)} of {len(results)} checks failed.", err=True)
        sys.exit(1)
    click.echo(f"All {len(results)} checks passed.")
