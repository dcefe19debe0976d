"""The production runtime on one machine: ``make run-prod`` (``python -m portal.prod``).

1. Checks the configuration: PostgreSQL (``BILLFOLD_DATABASE_URL``, required), a
   secret key of its own, Redis for rate limits and as the Celery broker; then that
   the database and Redis answer. Anything wrong is listed with its fix, exit 1.
2. Migrates once (what ``flask db upgrade`` then ``flask billfold init`` do, in one
   process: ``python -m portal.prod migrate``), before any worker starts, so no two
   processes race to create tables or roles.
3. Starts gunicorn (``gunicorn.conf.py``: ``BILLFOLD_WEB_WORKERS`` workers), one
   Celery worker and Celery beat, each in its own session, and watches them. Ctrl-C
   (or SIGTERM) stops all three, gracefully, then by force after a grace period; when
   one of them ends on its own the others are stopped and the exit status is 1, for
   the service manager to restart the whole.

The children inherit the environment with ``BILLFOLD_PRODUCTION=true``,
``BILLFOLD_JOBS_EAGER=false``, ``BILLFOLD_LOG_FORMAT=json`` (unless set) and one
``PROMETHEUS_MULTIPROC_DIR`` for all, so ``/metrics`` also counts the worker's jobs.

``web_app()`` is the WSGI app gunicorn serves: the portal, behind ``ProxyFix`` when
``BILLFOLD_PROXY_COUNT`` says how many proxies (load balancers) stand in front.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from portal.config import PROJECT_ROOT

DEFAULT_RATELIMIT_STORAGE = "redis://127.0.0.1:6379/0"
DEFAULT_BROKER = "redis://127.0.0.1:6379/1"
STOP_GRACE_SECONDS = 40  # gunicorn's graceful timeout is 30 s; Celery finishes its task


def web_app():
    """The portal for gunicorn (``portal.prod:web_app()``)."""
    from portal import create_app

    app = create_app()
    proxies = int(app.config.get("PROXY_COUNT") or 0)
    if proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies,
                                x_host=proxies)
    return app


# -- configuration ------------------------------------------------------------------------

def production_environment(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The children's environment, and what is wrong with ``environ`` (empty if nothing)."""
    env = dict(environ)
    errors: list[str] = []
    url = env.get("BILLFOLD_DATABASE_URL", "").strip()
    if not url:
        errors.append("BILLFOLD_DATABASE_URL is not set. run-prod serves PostgreSQL, e.g. "
                      "BILLFOLD_DATABASE_URL=postgresql://billfold:PASSWORD@127.0.0.1:5432/"
                      "billfold (create the database first: createdb billfold)")
    elif not url.startswith(("postgresql", "postgres://")):
        errors.append(f"BILLFOLD_DATABASE_URL must be a PostgreSQL URL (postgresql://…), not "
                      f"{url.split(':', 1)[0]}: several processes write at once, which "
                      "SQLite serialises; `make run` is the embedded SQLite setup")
    from portal.doctor import DEVELOPMENT_SECRET, MIN_SECRET_LENGTH

    secret = env.get("BILLFOLD_SECRET_KEY", "")
    generate = "python -c 'import secrets; print(secrets.token_hex(32))'"
    if not secret or secret == DEVELOPMENT_SECRET:
        errors.append("BILLFOLD_SECRET_KEY is not set (or is the development default): set "
                      f"it to a random value of its own, e.g. from `{generate}`")
    elif len(secret) < MIN_SECRET_LENGTH:
        errors.append(f"BILLFOLD_SECRET_KEY has {len(secret)} characters: use at least "
                      f"{MIN_SECRET_LENGTH} random ones, e.g. from `{generate}`")
    env.setdefault("BILLFOLD_RATELIMIT_STORAGE_URI", DEFAULT_RATELIMIT_STORAGE)
    if not env["BILLFOLD_RATELIMIT_STORAGE_URI"].startswith(("redis", "rediss")):
        errors.append("BILLFOLD_RATELIMIT_STORAGE_URI must be a Redis URL "
                      f"(e.g. {DEFAULT_RATELIMIT_STORAGE}): memory:// counts per process, so "
                      "each web worker would allow the whole limit")
    env.setdefault("BILLFOLD_CELERY_BROKER_URL", DEFAULT_BROKER)
    for name in ("BILLFOLD_WEB_WORKERS", "BILLFOLD_WEB_THREADS", "BILLFOLD_CELERY_CONCURRENCY"):
        raw = env.get(name, "").strip()
        if raw and (not raw.isdigit() or int(raw) < 1):
            errors.append(f"{name} must be a whole number of at least 1, not {raw!r}")
    if env.get("BILLFOLD_LOG_FORMAT", "json") not in ("json", "text"):
        errors.append(f"BILLFOLD_LOG_FORMAT must be json or text, not "
                      f"{env['BILLFOLD_LOG_FORMAT']!r}")
    env.setdefault("BILLFOLD_LOG_FORMAT", "json")
    env.setdefault("BILLFOLD_LOG_LEVEL", "INFO")
    env["BILLFOLD_PRODUCTION"] = "true"
    env["BILLFOLD_JOBS_EAGER"] = "false"
    env.setdefault("BILLFOLD_RATELIMIT_ENABLED", "true")
    env.setdefault("PROMETHEUS_MULTIPROC_DIR",
                   str(PROJECT_ROOT / "instance" / "prometheus"))
    return env, errors


def preflight(env: Mapping[str, str]) -> list[str]:
    """The doctor's lines for what must answer before anything starts: the database,
    Redis for rate limits, the broker."""
    from flask import Flask

    from portal import doctor
    from portal.config import load_config

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        app = Flask("billfold-preflight", instance_path=str(PROJECT_ROOT / "instance"))
        load_config(app, None)
        results = doctor.run_checks(app.config, (doctor.check_database,
                                                 doctor.check_rate_limit_storage,
                                                 doctor.check_broker))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return [r.line() for r in results if not r.ok]


METRICS_FILE = re.compile(r"(counter|gauge_[a-z]+|histogram|summary)_\d+\.db")


def reset_metrics_dir(path: str) -> None:
    """``PROMETHEUS_MULTIPROC_DIR`` without the metrics files of earlier processes
    (``counter_<pid>.db``...): counts start from zero with the processes."""
    directory = Path(path)
    if directory.exists():
        for child in directory.iterdir():
            if child.is_file() and METRICS_FILE.fullmatch(child.name):
                child.unlink()
    directory.mkdir(parents=True, exist_ok=True)


# -- processes ----------------------------------------------------------------------------

@dataclass
class Child:
    name: str
    process: subprocess.Popen


def say(message: str) -> None:
    print(f"run-prod: {message}", file=sys.stderr, flush=True)


def migrate(env: Mapping[str, str]) -> bool:
    """Run ``python -m portal.prod migrate`` in a process of its own; whether it worked."""
    say("migrating: flask db upgrade, then flask billfold init")
    status = subprocess.call([sys.executable, "-m", "portal.prod", "migrate"], env=dict(env),
                             cwd=PROJECT_ROOT)
    if status != 0:
        say(f"the migration failed (exit {status}); nothing was started")
        return False
    return True


def migrate_here() -> None:
    """What ``flask --app portal db upgrade`` and ``flask --app portal billfold init`` do,
    one after the other, in this process (the app is built once instead of twice)."""
    import click
    from flask_migrate import upgrade

    from portal import create_app
    from portal.cli import init_command

    app = create_app()
    with app.app_context():
        upgrade()
        with click.Context(init_command) as context:
            context.invoke(init_command)


def commands(env: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    python = sys.executable
    level = env.get("BILLFOLD_LOG_LEVEL", "INFO").upper()
    concurrency = env.get("BILLFOLD_CELERY_CONCURRENCY", "").strip() or "2"
    schedule = env.get("BILLFOLD_BEAT_SCHEDULE_FILE", "").strip() or str(
        PROJECT_ROOT / "instance" / "celerybeat-schedule")
    # Celery's start-up banner is plain text: left out when the logs are JSON lines.
    celery = [python, "-m", "celery", "-A", "portal.worker:celery"] + (
        ["--quiet"] if env.get("BILLFOLD_LOG_FORMAT") == "json" else [])
    return [
        ("gunicorn", [python, "-m", "gunicorn", "-c", str(PROJECT_ROOT / "gunicorn.conf.py")]),
        ("celery worker", [*celery, "worker", "--loglevel", level, "--concurrency",
                           concurrency, "--hostname", "billfold@%h"]),
        ("celery beat", [*celery, "beat", "--loglevel", level, "--schedule", schedule]),
    ]


def start(env: Mapping[str, str]) -> list[Child]:
    children = []
    for name, argv in commands(env):
        # A session of its own: Ctrl-C reaches this supervisor only, which then stops
        # each child once, in order.
        process = subprocess.Popen(argv, env=dict(env), cwd=PROJECT_ROOT,
                                   start_new_session=True)
        say(f"started {name} (pid {process.pid})")
        children.append(Child(name, process))
    return children


def stop(children: list[Child], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to each running child (gunicorn and Celery shut down gracefully on it),
    then SIGKILL to the process group of any still running after ``grace`` seconds."""
    for child in children:
        if child.process.poll() is None:
            say(f"stopping {child.name} (pid {child.process.pid})")
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{child.name} did not stop in {grace:.0f} s: killing it")
            try:
                os.killpg(child.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.process.wait()


class _Stop(Exception):
    pass


def supervise(children: list[Child]) -> int:
    """Wait until a signal asks to stop (exit 0) or a child ends (exit 1); stop all."""
    def on_signal(signum, frame):
        raise _Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        while True:
            ended = next((c for c in children if c.process.poll() is not None), None)
            if ended is not None:
                say(f"{ended.name} exited with status {ended.process.returncode}; stopping "
                    "the others")
                status = 1
                break
            time.sleep(0.5)
    except _Stop as stop_signal:
        say(f"{stop_signal} received; stopping")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # A second Ctrl-C while stopping is ignored: the grace period still applies.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop(children)
        signal.signal(signal.SIGINT, previous[signal.SIGINT])
    return status


def main(argv: list[str] | None = None) -> int:
    """``python -m portal.prod``: check, migrate, start and supervise;
    ``python -m portal.prod migrate``: the migration step alone."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["migrate"]:
        migrate_here()
        return 0
    if argv:
        say("usage: python -m portal.prod [migrate]")
        return 2
    env, errors = production_environment(os.environ)
    if errors:
        for error in errors:
            say(f"Error: {error}")
        say("nothing was started")
        return 1
    failures = preflight(env)
    if failures:
        for line in failures:
            print(line, file=sys.stderr)
        say("fix the above (`flask --app portal billfold doctor` checks everything); "
            "nothing was started")
        return 1
    reset_metrics_dir(env["PROMETHEUS_MULTIPROC_DIR"])
    if not migrate(env):
        return 1
    children = start(env)
    bind = env.get("BILLFOLD_WEB_BIND", "").strip() or "127.0.0.1:8000"
    say(f"Billfold on http://{bind.split(',')[0].strip()} (Ctrl-C stops everything)")
    return supervise(children)


if __name__ == "__main__":
    sys.exit(main())
