"""Logs, metrics and probes: what an operator watches.

* Logs: one handler on the root logger, writing to standard error either text or one
  JSON object per line (``LOG_FORMAT`` = ``text`` | ``json``). Every line carries
  the request id, the tenant and the user of the request or job it belongs to; each
  request adds one access line (logger ``billfold.access``) with its method, path,
  status and duration. The request id is echoed in the ``X-Request-Id`` header.
* Metrics (Prometheus): requests and their latency by route rule and status, usage
  events ingested by outcome, and job outcomes by job name. Under several processes
  (gunicorn workers, Celery) ``PROMETHEUS_MULTIPROC_DIR`` must name a directory
  shared by them, set before this module is first imported; ``/metrics`` then adds up
  every process's counts.
* Probes: ``ping_redis`` for the readiness check and ``flask billfold doctor``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ACCESS_LOGGER = "billfold.access"
LOCAL_ADDRESSES = frozenset({"127.0.0.1", "::1"})
# Probes and scrapes are frequent and alike: their access lines are logged at DEBUG.
QUIET_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})

# -- metrics ------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "billfold_http_requests", "HTTP requests answered, by route rule, method and status",
    ["endpoint", "method", "status"])
HTTP_LATENCY = Histogram(
    "billfold_http_request_duration_seconds",
    "Time from the start of a request to its response, by route rule, method and status",
    ["endpoint", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
USAGE_EVENTS = Counter(
    "billfold_usage_events", "Usage events received for ingestion, by outcome "
    "(accepted, duplicate, rejected)", ["outcome"])
JOBS = Counter(
    "billfold_jobs", "Jobs and Celery tasks run, by job name and outcome "
    "(success, failure, retry)", ["job", "outcome"])

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
UNMATCHED_ROUTE = "<unmatched>"  # a path no route answers: one label, whatever the path


def record_job(job: str, outcome: str) -> None:
    """Count one run of ``job`` that ended in ``outcome`` (success, failure, retry)."""
    JOBS.labels(job, outcome).inc()


def run_observed(job: str, func: Callable[..., Any], *args: Any) -> Any:
    """Run ``func(*args)`` as the job ``job``, counting its success or failure; the
    job's exception propagates to the caller."""
    try:
        result = func(*args)
    except BaseException:
        record_job(job, "failure")
        raise
    record_job(job, "success")
    return result


def count_ingestion(rejected_by: type[BaseException] | tuple[type[BaseException], ...]):
    """Decorate an ingestion function ``f(tenant, events, ...) -> result`` whose result
    has ``accepted`` and ``duplicates``: count its events by outcome. A batch refused
    with one of ``rejected_by`` counts all its events as rejected."""
    def decorate(ingest: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(ingest)
        def counted(tenant: Any, events: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                result = ingest(tenant, events, *args, **kwargs)
            except rejected_by:
                USAGE_EVENTS.labels("rejected").inc(len(events))
                raise
            if result.accepted:
                USAGE_EVENTS.labels("accepted").inc(result.accepted)
            if result.duplicates:
                USAGE_EVENTS.labels("duplicate").inc(result.duplicates)
            return result
        return counted
    return decorate


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def render_metrics() -> tuple[bytes, str]:
    """The metrics in Prometheus's text format: this process's, or under
    ``PROMETHEUS_MULTIPROC_DIR`` the sum over every process writing there."""
    directory = multiprocess_dir()
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def metrics_refusal(config: dict) -> Response | None:
    """Why this request may not read ``/metrics`` (a 403), or None when it may: a
    direct request from this machine (no proxy in between, ``METRICS_ALLOW_LOCAL``)
    or one carrying ``Authorization: Bearer <METRICS_TOKEN>``."""
    token = config.get("METRICS_TOKEN")
    header = request.headers.get("Authorization", "")
    if token and header[:7].lower() == "bearer " and hmac.compare_digest(
            header[7:].strip().encode(), str(token).encode()):
        return None
    if (config.get("METRICS_ALLOW_LOCAL", True) and request.remote_addr in LOCAL_ADDRESSES
            and "X-Forwarded-For" not in request.headers):
        return None
    return Response("Metrics are served to 127.0.0.1 and to requests carrying "
                    "Authorization: Bearer <BILLFOLD_METRICS_TOKEN>.\n", status=403,
                    mimetype="text/plain")


# -- probes -------------------------------------------------------------------------------

_redis_clients: dict[str, Any] = {}


def is_redis_url(url: str | None) -> bool:
    return bool(url) and str(url).split(":", 1)[0] in ("redis", "rediss", "redis+unix")


def ping_redis(url: str, timeout: float = 2.0) -> str | None:
    """None when the Redis server at ``url`` answers a PING within ``timeout`` seconds,
    otherwise what went wrong. Clients are kept per URL, so a probe reuses its
    connection."""
    import redis

    client = _redis_clients.get(url)
    if client is None:
        target = "unix" + url[len("redis+unix"):] if url.startswith("redis+unix") else url
        client = redis.Redis.from_url(target, socket_connect_timeout=timeout,
                                      socket_timeout=timeout)
        _redis_clients[url] = client
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not answering"
        return f"{type(exc).__name__}: {exc}"
    return None


def redacted_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


# -- logs ---------------------------------------------------------------------------------

# Attributes every LogRecord has; any other attribute came from ``extra=`` and is logged.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "tenant", "user"}


def _request_context_fields() -> tuple[str | None, str | None, str | None]:
    """The request id, tenant and user of the code running now (a request or a job)."""
    from portal.audit import current_request_id
    from tenants.scoping import current_scope

    scope = current_scope()
    tenant = str(scope.tenant_id) if scope.is_tenant else ("all" if scope.is_all else None)
    user = None
    if has_request_context():
        key = g.get("api_key")
        if key is not None:
            user = f"api-key:{_loaded(key, 'id')}"
        else:
            person = g.get("user")
            if person is not None and getattr(person, "is_authenticated", False):
                user = _loaded(person, "username")
    return current_request_id.get(), tenant, user


def _loaded(instance: Any, attribute: str) -> str:
    """An attribute of an ORM instance as the session holds it, never loaded from the
    database (after a commit the instance is expired, and a log line must not cost a
    query): the attribute, else the primary key."""
    from sqlalchemy import inspect as sa_inspect

    state = sa_inspect(instance)
    value = state.dict.get(attribute)
    if value is None and state.identity:
        value = state.identity[0]
    return str(value)


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``tenant`` and ``user`` to each record that lacks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            try:
                record.request_id, record.tenant, record.user = _request_context_fields()
            except Exception:  # noqa: BLE001 - a log line is never lost to its context
                record.request_id = record.tenant = record.user = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message,
    request_id, tenant, user, pid, then any ``extra=`` fields, and the traceback as
    ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        moment = dt.datetime.fromtimestamp(record.created, dt.UTC)
        entry: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "tenant": getattr(record, "tenant", None),
            "user": getattr(record, "user", None),
            "pid": record.process,
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger [request tenant user] message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s "
                         "[%(request_id)s %(tenant)s %(user)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        for name in ("request_id", "tenant", "user"):
            if getattr(record, name, None) is None:
                setattr(record, name, "-")
        return super().format(record)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (test runners
    swap it), never to a stream captured once."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def log_formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"LOG_FORMAT must be json or text, not {fmt!r}")


# Billfold's own loggers log at LOG_LEVEL; libraries' loggers at WARNING and above.
OWN_LOGGERS = ("billfold", "portal", "api", "plans", "invoices", "tenants", "permissions")


def configure_logging(fmt: str, level: str | int = "INFO",
                      loggers: tuple[str, ...] = OWN_LOGGERS) -> logging.Handler:
    """Send the root logger's records to standard error in ``fmt`` (json or text),
    replacing the handler an earlier call installed (other handlers are kept).
    ``loggers`` log from ``level`` up, every other logger from WARNING up (or from
    ``level`` when it is higher)."""
    number = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    handler = StderrHandler()
    handler.setFormatter(log_formatter(fmt))
    handler.addFilter(ContextFilter())
    handler._billfold = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_billfold", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(number, logging.WARNING))
    for name in loggers:
        logging.getLogger(name).setLevel(number)
    # A logging.config call (Alembic's fileConfig in a migration) disables the loggers
    # it does not name; ours are kept on.
    prefixes = tuple(f"{name}." for name in loggers)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (name in loggers
                                                   or name.startswith(prefixes)):
            logger.disabled = False
    return handler


# -- the app ------------------------------------------------------------------------------

def init_observability(app: Flask) -> None:
    """Logging by ``LOG_FORMAT``/``LOG_LEVEL``, the ``X-Request-Id`` header, one access
    line and the request metrics per request, and job outcomes from Celery's signals."""
    from flask.logging import default_handler

    fmt = str(app.config.get("LOG_FORMAT") or "text").lower()
    level = str(app.config.get("LOG_LEVEL") or "INFO").upper()
    if fmt not in ("json", "text"):
        raise ValueError(f"BILLFOLD_LOG_FORMAT must be json or text, not {fmt!r}")
    if level not in logging.getLevelNamesMapping():
        raise ValueError(f"BILLFOLD_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, "
                         f"not {level!r}")
    configure_logging(fmt, level)
    app.logger.removeHandler(default_handler)  # the root handler writes its records
    # The development server's own access lines would repeat ours.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    access = logging.getLogger(ACCESS_LOGGER)

    @app.before_request
    def _start_clock():
        g._started = time.perf_counter()
        # A caller's request id becomes the request's (init_request_scope) only if it
        # can be logged and stored as it is (audit rows keep 64 characters); any
        # other is dropped, so the request gets a fresh one.
        incoming = request.environ.get("HTTP_X_REQUEST_ID")
        if incoming is not None and not REQUEST_ID.fullmatch(incoming):
            del request.environ["HTTP_X_REQUEST_ID"]

    @app.after_request
    def _observe(response: Response) -> Response:
        from portal.audit import current_request_id

        started = g.pop("_started", None)
        elapsed = time.perf_counter() - started if started is not None else 0.0
        request_id = current_request_id.get()
        if request_id:
            response.headers["X-Request-Id"] = request_id
        rule = request.url_rule
        endpoint = rule.rule if rule is not None else UNMATCHED_ROUTE
        status = str(response.status_code)
        HTTP_REQUESTS.labels(endpoint, request.method, status).inc()
        HTTP_LATENCY.labels(endpoint, request.method, status).observe(elapsed)
        level_no = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
        if access.isEnabledFor(level_no):
            duration_ms = round(elapsed * 1000, 1)
            access.log(level_no, "%s %s %s %.1fms", request.method, request.path, status,
                       duration_ms, extra={
                           "method": request.method, "path": request.path,
                           "endpoint": endpoint, "status": response.status_code,
                           "duration_ms": duration_ms, "remote_addr": request.remote_addr})
        return response

    _connect_celery_signals()


_celery_connected = False


def _connect_celery_signals() -> None:
    """Count Celery task outcomes (a deferred job under its own name) and give Celery's
    processes this module's logging; once per process."""
    global _celery_connected
    if _celery_connected:
        return
    from celery import signals

    signals.task_success.connect(_task_succeeded, weak=False)
    signals.task_failure.connect(_task_failed, weak=False)
    signals.task_retry.connect(_task_retried, weak=False)
    signals.setup_logging.connect(_celery_logging, weak=False)
    signals.worker_ready.connect(_serve_worker_metrics, weak=False)
    _celery_connected = True


RUN_JOB_TASK = "billfold.run_job"


def _job_name(task: Any, args: Any) -> str:
    """The task's name; for ``billfold.run_job`` the deferred job's name."""
    name = getattr(task, "name", None) or str(task)
    if name == RUN_JOB_TASK and args:
        return str(args[0])
    return name


def _task_succeeded(sender=None, **kwargs) -> None:
    record_job(_job_name(sender, getattr(sender.request, "args", None)), "success")


def _task_failed(sender=None, args=None, **kwargs) -> None:
    record_job(_job_name(sender, args), "failure")


def _task_retried(sender=None, request=None, **kwargs) -> None:
    record_job(_job_name(sender, getattr(request, "args", None)), "retry")


def _celery_logging(loglevel=None, **kwargs) -> None:
    """Celery's worker and beat log through this module's handler (JSON or text), at
    the level of their ``--loglevel``."""
    from portal.tasks import celery

    app = getattr(celery, "flask_app", None)
    config = app.config if app is not None else {}
    configure_logging(str(config.get("LOG_FORMAT") or "text").lower(), loglevel or "INFO",
                      (*OWN_LOGGERS, "celery"))


def _serve_worker_metrics(sender=None, **kwargs) -> None:
    """With ``WORKER_METRICS_BIND`` (host:port) set, the Celery worker serves its
    metrics there, summed over its pool's processes when ``PROMETHEUS_MULTIPROC_DIR``
    is shared by them."""
    from prometheus_client import start_http_server

    from portal.tasks import celery

    app = getattr(celery, "flask_app", None)
    bind = app.config.get("WORKER_METRICS_BIND") if app is not None else None
    if not bind:
        return
    host, _, port = str(bind).rpartition(":")
    registry = REGISTRY
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        logging.getLogger(__name__).warning(
            "PROMETHEUS_MULTIPROC_DIR is not set: the worker's metrics leave out the "
            "tasks its pool processes ran")
    start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    logging.getLogger(__name__).info("worker metrics on http://%s/metrics", bind)
