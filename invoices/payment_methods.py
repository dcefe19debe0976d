"""Payment methods: ACH bank accounts, net-30 invoice terms and wire transfer next to
the cards that Stripe Checkout saves; one default; removal."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from invoices.models import PaymentMethod
from plans.services import current_subscription
from portal import audit
from portal.audit import Actor
from portal.errors import NotFoundError, ValidationFailed
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import tenant_scope
from tenants.services import lock_tenant

ENTERPRISE_ONLY = ("invoice", "wire")
FIELDS = ["kind", "brand", "last4", "is_default"]


def _digits(value: Any, name: str, low: int, high: int) -> str:
    text = "".join(str(value or "").split())
    if not text.isdigit() or not low <= len(text) <= high:
        raise ValidationFailed({name: f"enter {low}-{high} digits" if low != high
                                else f"enter {low} digits"})
    return text


def check_routing_number(value: Any) -> str:
    """A US ABA routing number: 9 digits whose weighted sum (3, 7, 1) is a multiple of 10."""
    digits = _digits(value, "routing_number", 9, 9)
    total = sum(int(d) * w for d, w in zip(digits, (3, 7, 1) * 3, strict=True))
    if total % 10:
        raise ValidationFailed({"routing_number": "this is not a valid ABA routing number"})
    return digits


def _is_enterprise(tenant: Tenant) -> bool:
    sub = current_subscription(tenant)
    return sub is not None and sub.plan_version.plan.custom_priced


def _snapshot(method: PaymentMethod) -> dict[str, Any]:
    return audit.snapshot(method, FIELDS)


def _first_is_default(tenant: Tenant, method: PaymentMethod) -> None:
    if db.session.scalar(select(PaymentMethod.id).where(
            PaymentMethod.is_default.is_(True), PaymentMethod.id != method.id)) is None:
        method.is_default = True


def add_bank_method(actor: Actor, tenant: Tenant, kind: str, data: dict[str, Any]
                    ) -> PaymentMethod:
    """Add an ACH account (routing and account numbers checked, only the last 4
    digits of the account kept), or net-30 invoice terms or wire transfer, which
    only Enterprise tenants may use."""
    if kind not in ("ach", *ENTERPRISE_ONLY):
        raise ValidationFailed({"kind": "choose ACH, invoice or wire"})
    if kind in ENTERPRISE_ONLY and not _is_enterprise(tenant):
        raise ValidationFailed({"kind": "invoice terms and wire transfer are for Enterprise plans"})
    last4 = None
    if kind == "ach":
        errors = {}
        for check in (lambda: check_routing_number(data.get("routing_number")),
                      lambda: _digits(data.get("account_number"), "account_number", 4, 17)):
            try:
                result = check()
            except ValidationFailed as exc:
                errors.update(exc.errors)
            else:
                last4 = result[-4:]
        if errors:
            raise ValidationFailed(errors)
    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        if kind != "ach" and db.session.scalar(
                select(PaymentMethod.id).where(PaymentMethod.kind == kind)):
            raise ValidationFailed({"kind": "the tenant already has this payment method"})
        method = PaymentMethod(tenant_id=tenant.id, kind=kind, last4=last4, is_default=False)
        db.session.add(method)
        db.session.flush()
        _first_is_default(tenant, method)
        audit.record("payment_method.add", method, actor, tenant_id=tenant.id,
                     after=_snapshot(method))
        db.session.commit()
        return method


def _get(tenant: Tenant, method_id: int) -> PaymentMethod:
    method = db.session.get(PaymentMethod, method_id)
    if method is None or method.tenant_id != tenant.id:
        raise NotFoundError("no such payment method")
    return method


def set_default(actor: Actor, tenant: Tenant, method_id: int) -> PaymentMethod:
    """Make one method the default; the previous default stops being it."""
    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        method = _get(tenant, method_id)
        for other in db.session.scalars(select(PaymentMethod).where(
                PaymentMethod.is_default.is_(True))):
            other.is_default = False
        method.is_default = True
        audit.record("payment_method.default", method, actor, tenant_id=tenant.id,
                     after=_snapshot(method))
        db.session.commit()
        return method


def remove(actor: Actor, tenant: Tenant, method_id: int) -> None:
    """Remove a method. The default cannot be removed while the tenant has open
    (pending or overdue) invoices, which it is there to pay; otherwise the oldest
    remaining method becomes the default. A card is detached from the Stripe
    customer too."""
    from invoices.models import Invoice

    with tenant_scope(tenant):
        lock_tenant(tenant.id)
        method = _get(tenant, method_id)
        if method.is_default and db.session.scalar(select(Invoice.id).where(
                Invoice.status.in_(("pending", "overdue"))).limit(1)) is not None:
            raise ValidationFailed({"method": "the default method pays the open invoices: "
                                              "make another method the default first"})
        stripe_id = method.stripe_payment_method_id
        audit.record("payment_method.remove", method, actor, tenant_id=tenant.id,
                     before=_snapshot(method))
        db.session.delete(method)
        db.session.flush()
        if method.is_default:
            successor = db.session.scalar(select(PaymentMethod).order_by(PaymentMethod.id)
                                          .limit(1))
            if successor is not None:
                successor.is_default = True
                audit.record("payment_method.default", successor, actor, tenant_id=tenant.id,
                             after=_snapshot(successor))
        if stripe_id:
            from invoices.payments import client

            client().v1.payment_methods.detach(stripe_id)
        db.session.commit()
