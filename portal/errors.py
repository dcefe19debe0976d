"""Errors that services raise and the handlers that turn them into responses."""

from __future__ import annotations

from flask import Flask, abort, jsonify, request
from werkzeug.exceptions import HTTPException, NotFound

from tenants.scoping import TenantScopeError


class ValidationFailed(ValueError):
    """Bad input: nothing was written. ``errors`` maps a field name to its message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def attach_errors(form, exc: ValidationFailed, aliases: dict[str, str] | None = None) -> None:
    """Put each message of ``exc`` on its form field (``aliases`` maps a service's field
    name to the form's); a message without a field is flashed."""
    from flask import flash

    for name, message in exc.errors.items():
        field = getattr(form, (aliases or {}).get(name, name), None)
        if field is not None and hasattr(field, "errors"):
            field.errors = [*field.errors, message]
        else:
            flash(message, "danger")


class NotFoundError(LookupError):
    """The object does not exist in the caller's scope (another tenant's looks the same)."""


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path.startswith("/webhooks/")


def _json_error(status: int, code: str, message: str, details=None):
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return jsonify(body), status


def init_error_handlers(app: Flask) -> None:
    @app.url_value_preprocessor
    def _reject_malformed_ids(endpoint, values):
        # Every model has an integer key: a malformed id is an unknown object.
        pk = (values or {}).get("pk")
        if pk is not None and not str(pk).isdigit():
            abort(404)

    @app.errorhandler(TenantScopeError)
    @app.errorhandler(NotFoundError)
    def _not_found(exc):
        from portal.extensions import db

        db.session.rollback()
        app.logger.warning("refused: %s", exc)
        if _wants_json():
            return _json_error(404, "not_found", "No such object.")
        return NotFound()

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if request.path.startswith("/api/"):
            from api.v1 import http_error

            return http_error(exc)
        if _wants_json():
            code = (exc.name or "error").lower().replace(" ", "_")
            return _json_error(exc.code or 500, code, exc.description or exc.name)
        return exc

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # Never a traceback or an HTML page for an API client.
        if isinstance(exc, HTTPException) or not _wants_json():
            raise exc
        from portal.extensions import db

        db.session.rollback()
        app.logger.exception("unexpected error on %s", request.path)
        return _json_error(500, "internal_error", "Something went wrong on our side; "
                                                  "it has been logged.")
