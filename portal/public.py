"""Public routes: ``GET /health`` (liveness plus the database's reachability, as
JSON) and the site icon."""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify
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
