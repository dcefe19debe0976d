"""``POST /webhooks/stripe``: Stripe's events, verified by signature."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from invoices.payments import PaymentsNotConfigured, WebhookRejected, handle_webhook

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@bp.post("/stripe")
def stripe_webhook():
    try:
        outcome = handle_webhook(request.get_data(), request.headers.get("Stripe-Signature"))
    except WebhookRejected as exc:
        return jsonify(error={"code": "invalid_signature", "message": str(exc),
                              "details": []}), 400
    except PaymentsNotConfigured as exc:
        return jsonify(error={"code": "not_configured", "message": str(exc),
                              "details": []}), 503
    return jsonify(received=True, outcome=outcome)
