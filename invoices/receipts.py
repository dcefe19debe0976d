"""Receipts for credit purchases and refunds, as PDF documents."""

from __future__ import annotations

from flask import current_app

from invoices.models import CreditPurchase
from portal.pdf import render_pdf
from tenants.models import Tenant
from tenants.scoping import tenant_scope

TEMPLATE = "pdf/receipt.html"


def receipt_number(tenant: Tenant, purchase: CreditPurchase) -> str:
    """``R-<tenant slug>-<purchase id, 6 digits>``: stable, and unique per purchase."""
    return f"R-{tenant.slug}-{purchase.id:06d}"


def receipt_title(purchase: CreditPurchase) -> str:
    if purchase.status == "failed":
        return "Refund failed" if purchase.kind == "refund" else "Payment failed"
    return "Refund receipt" if purchase.kind == "refund" else "Receipt"


def receipt_filename(tenant: Tenant, purchase: CreditPurchase) -> str:
    _check_owner(tenant, purchase)
    return f"{receipt_number(tenant, purchase)}.pdf"


def receipt_pdf(tenant: Tenant, purchase: CreditPurchase) -> bytes:
    """The receipt of ``purchase`` (which the caller loaded in ``tenant``'s scope).

    Reads nothing but the two objects given; the amount is shown in the purchase's
    own currency, which is the tenant's currency when the purchase was made.
    """
    _check_owner(tenant, purchase)
    config = current_app.config
    with tenant_scope(tenant):
        return render_pdf(
            TEMPLATE,
            tenant=tenant,
            purchase=purchase,
            title=receipt_title(purchase),
            number=receipt_number(tenant, purchase),
            issuer_name=config.get("ISSUER_NAME", "Billfold"),
            issuer_address=config.get("ISSUER_ADDRESS", ""),
            document_date=purchase.created_at,
        )


def _check_owner(tenant: Tenant, purchase: CreditPurchase) -> None:
    if purchase.id is None or purchase.tenant_id != tenant.id:
        raise ValueError("the purchase does not belong to this tenant")
