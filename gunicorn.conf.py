"""Gunicorn settings for Billfold's web tier, read from ``BILLFOLD_*`` variables.

    gunicorn -c gunicorn.conf.py            # what `make run-prod` starts

BILLFOLD_WEB_BIND              address(es) to listen on, comma separated; default
                               127.0.0.1:8000 (0.0.0.0:8000 behind a load balancer)
BILLFOLD_WEB_WORKERS           worker processes; default 2 (about one per core)
BILLFOLD_WEB_THREADS           threads per worker (gthread); default 2; 1 gives
                               gunicorn's sync workers
BILLFOLD_WEB_TIMEOUT           seconds a request may take before its worker is
                               restarted; default 60
BILLFOLD_WEB_MAX_REQUESTS      restart a worker after this many requests; default 0
                               (never)
BILLFOLD_FORWARDED_ALLOW_IPS   proxies whose X-Forwarded-Proto gunicorn trusts;
                               default 127.0.0.1,::1
BILLFOLD_LOG_FORMAT, _LEVEL    gunicorn's own lines in the app's format (text, INFO)
PROMETHEUS_MULTIPROC_DIR       where the workers' metrics meet (see below); default a
                               new temporary directory

The app comes from ``portal.prod:web_app()``: one app per worker, none in the master,
so no database connection crosses a fork; the schema and roles must be in place
before the workers start (``make run-prod`` migrates first). The app writes its own
access line per request, so gunicorn's access log is off.

Metrics: each worker counts into files under ``PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` adds them up. Without the variable a private directory is made here
and removed on exit. With it, files left by processes no longer running are removed
at start, so a restart begins from zero.
"""

from __future__ import annotations

import os
import sys
import tempfile


def _int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        sys.exit(f"Error: {name} must be a whole number of at least {minimum}, not {raw!r}")
    return value


def _setting(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


# The multiprocess directory must be known before prometheus_client is first imported
# (by the app, in each worker) and before any worker forks.
_created_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _created_metrics_dir = tempfile.mkdtemp(prefix="billfold-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _created_metrics_dir
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

wsgi_app = "portal.prod:web_app()"
bind = [address.strip() for address in _setting("BILLFOLD_WEB_BIND", "127.0.0.1:8000").split(",")
        if address.strip()]
workers = _int("BILLFOLD_WEB_WORKERS", 2, 1)
threads = _int("BILLFOLD_WEB_THREADS", 2, 1)
worker_class = "gthread" if threads > 1 else "sync"
timeout = _int("BILLFOLD_WEB_TIMEOUT", 60, 1)
graceful_timeout = 30
keepalive = 5
max_requests = _int("BILLFOLD_WEB_MAX_REQUESTS", 0, 0)
max_requests_jitter = max_requests // 10
forwarded_allow_ips = _setting("BILLFOLD_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
proc_name = "billfold-web"
# No control socket: its default path is one per user, so two instances on one host
# would take each other's.
control_socket_disable = True

accesslog = None  # the app logs one line per request, with its request id
errorlog = "-"
loglevel = _setting("BILLFOLD_LOG_LEVEL", "info").lower()
_log_format = _setting("BILLFOLD_LOG_FORMAT", "text").lower()
if _log_format not in ("json", "text"):
    sys.exit(f"Error: BILLFOLD_LOG_FORMAT must be json or text, not {_log_format!r}")
if _log_format == "json":
    # gunicorn's own lines (start, workers booting and exiting) as JSON too.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": "WARNING", "handlers": []},
        "loggers": {
            "gunicorn.error": {"level": loglevel.upper(), "handlers": ["json"],
                               "propagate": False, "qualname": "gunicorn.error"},
        },
        "handlers": {
            "json": {"class": "logging.StreamHandler", "formatter": "json",
                     "stream": "ext://sys.stderr"},
        },
        "formatters": {"json": {"()": "portal.observability.JsonFormatter"}},
    }


def _pid_of(filename: str) -> int | None:
    """The process id in a metrics file's name (``counter_1234.db``), None for a file
    that is not prometheus_client's."""
    if not filename.startswith(("counter_", "gauge_", "histogram_", "summary_")) or \
            not filename.endswith(".db"):
        return None
    tail = filename[:-3].rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def on_starting(server) -> None:
    """Drop metrics files of processes that are gone (an earlier run's)."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for name in os.listdir(directory):
        pid = _pid_of(name)
        if pid is not None and not _alive(pid):
            os.remove(os.path.join(directory, name))


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if _created_metrics_dir:
        import shutil

        shutil.rmtree(_created_metrics_dir, ignore_errors=True)
