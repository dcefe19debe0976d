"""``GET /health``: liveness plus the database's reachability, as JSON."""

from __future__ import annotations

import time

from flask import Blueprint, jsonify
from sqlalchemy import text

from portal.extensions import db

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    started = time.perf_counter()
    try:
        db.session.execute(text("SELECT 1"))
        database = {"status": "ok"}
    except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
        db.session.rollback()
        database = {"status": "unreachable", "error": type(exc).__name__}
    database["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    healthy = database["status"] == "ok"
    body = {"status": "ok" if healthy else "degraded", "database": database}
    return jsonify(body), 200 if healthy else 503
