"""Public routes: the health checks, the Prometheus metrics and the site icon.

* ``GET /health``: liveness plus the database's reachability (the API contract's).
* ``GET /health/live``: the process answers; no I/O (a load balancer's liveness probe).
* ``GET /health/ready``: the database answers, and Redis (rate-limit storage, Celery
  broker) where configured; 503 otherwise (take the instance out of rotation).
* ``GET /metrics``: Prometheus's text format, for 127.0.0.1 or a bearer
  ``METRICS_TOKEN`` (``portal.observability``).
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text

from portal.extensions import db

bp = Blueprint("public", __name__)

FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect width="32" height="32" rx="6" fill="#2c6fbb"/>'
    '<text x="16" y="23" font-size="20" text-anchor="middle" fill="#fff" '
    'font-family="sans-serif">B</text></svg>'
)


@bp.get("/favicon.ico")
def favicon():
    return Response(FAVICON, mimetype="image/svg+xml",
                    headers={"Cache-Control": "public, max-age=86400"})


def _database_status() -> dict:
    started = time.perf_counter()
    try:
        db.session.execute(text("SELECT 1"))
        database = {"status": "ok"}
    except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
        db.session.rollback()
        database = {"status": "unreachable", "error": type(exc).__name__}
    database["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return database


@bp.get("/health")
def health():
    database = _database_status()
    healthy = database["status"] == "ok"
    body = {"status": "ok" if healthy else "degraded", "database": database}
    return jsonify(body), 200 if healthy else 503


@bp.get("/health/live")
def health_live():
    return jsonify({"status": "ok"})


@bp.get("/health/ready")
def health_ready():
    from portal.observability import is_redis_url, ping_redis, redacted_url

    checks = {"database": _database_status()}
    config = current_app.config
    for name, url in (("rate_limit_storage", config.get("RATELIMIT_STORAGE_URI")),
                      ("broker", config.get("CELERY_BROKER_URL"))):
        if is_redis_url(url):
            started = time.perf_counter()
            error = ping_redis(str(url), timeout=1.0)
            checks[name] = {"status": "ok" if error is None else "unreachable",
                            "url": redacted_url(str(url)),
                            "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
            if error is not None:
                checks[name]["error"] = error
    ready = all(check["status"] == "ok" for check in checks.values())
    return jsonify({"status": "ok" if ready else "unavailable", **checks}), \
        200 if ready else 503


@bp.get("/metrics")
def metrics():
    from portal.observability import metrics_refusal, render_metrics

    refusal = metrics_refusal(current_app.config)
    if refusal is not None:
        return refusal
    body, content_type = render_metrics()
    return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
