"""Plan catalog, subscriptions and plan-change requests.

Every function validates, writes, records an audit row and commits; they never
read the request.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from plans.metrics import METRIC_CODES, METRICS
from plans.models import (
    Plan,
    PlanChangeRequest,
    PlanMetricPrice,
    PlanVersion,
    Subscription,
)
from plans.periods import Period, period_containing, today_in
from portal import audit
from portal.audit import Actor
from portal.errors import NotFoundError, ValidationFailed
from portal.extensions import db
from portal.money import Money, to_decimal
from tenants.models import BillfoldUser, Tenant
from tenants.scoping import tenant_scope, unscoped

TIMINGS = ("immediately", "period_end")

# The default catalog (DESIGN.md's tiers). None means unlimited.
DEFAULT_CATALOG: tuple[dict[str, Any], ...] = (
    {
        "code": "starter", "name": "Starter", "sort_order": 1, "custom_priced": False,
        "description": "For small teams getting started.",
        "base_price_minor": 9900, "user_limit": 5,
        "metrics": {
            "llm_tokens": (Decimal(500_000), Decimal("0.000004")),
            "sql_queries": (Decimal(10_000), Decimal("0.002")),
            "storage_gb": (Decimal(10), Decimal("0.25")),
            "api_requests": (Decimal(100_000), Decimal("0.0001")),
            "compute_hours": (Decimal(10), Decimal("0.50")),
        },
    },
    {
        "code": "professional", "name": "Professional", "sort_order": 2,
        "custom_priced": False, "description": "For growing teams in production.",
        "base_price_minor": 49900, "user_limit": 25,
        "metrics": {
            "llm_tokens": (Decimal(5_000_000), Decimal("0.000003")),
            "sql_queries": (Decimal(100_000), Decimal("0.0015")),
            "storage_gb": (Decimal(100), Decimal("0.20")),
            "api_requests": (Decimal(1_000_000), Decimal("0.00008")),
            "compute_hours": (Decimal(100), Decimal("0.40")),
        },
    },
    {
        "code": "enterprise", "name": "Enterprise", "sort_order": 3, "custom_priced": True,
        "description": "Custom contract: unlimited usage, 1 TB storage, invoice terms.",
        "base_price_minor": None, "user_limit": None,
        "metrics": {
            "llm_tokens": (None, Decimal(0)),
            "sql_queries": (None, Decimal(0)),
            "storage_gb": (Decimal(1000), Decimal("0.10")),
            "api_requests": (None, Decimal(0)),
            "compute_hours": (None, Decimal(0)),
        },
    },
)


# -- catalog -------------------------------------------------------------------------

def ensure_default_catalog() -> list[str]:
    """Create the default tiers that are missing (idempotent). Returns what was made."""
    made = []
    for spec in DEFAULT_CATALOG:
        if db.session.scalar(select(Plan.id).where(Plan.code == spec["code"])):
            continue
        plan = Plan(code=spec["code"], name=spec["name"], description=spec["description"],
                    sort_order=spec["sort_order"], custom_priced=spec["custom_priced"])
        version = PlanVersion(plan=plan, version=1, currency="USD",
                              base_price_minor=spec["base_price_minor"],
                              user_limit=spec["user_limit"])
        version.prices = [PlanMetricPrice(metric=m, included=inc, unit_price=price)
                          for m, (inc, price) in spec["metrics"].items()]
        db.session.add(plan)
        made.append(plan.name)
    db.session.commit()
    return made


def list_plans(active_only: bool = True) -> list[Plan]:
    stmt = select(Plan).options(selectinload(Plan.versions).selectinload(PlanVersion.prices))
    if active_only:
        stmt = stmt.where(Plan.active.is_(True))
    return list(db.session.scalars(stmt.order_by(Plan.sort_order)))


def get_plan(plan_id: int) -> Plan:
    plan = db.session.get(Plan, plan_id)
    if plan is None:
        raise NotFoundError("no such plan")
    return plan


def _quantity(label: str, value: Any, allow_none: bool) -> Decimal | None:
    if value in (None, "") and allow_none:
        return None
    try:
        number = to_decimal(str(value).strip().replace(",", ""))
    except (InvalidOperation, ValueError, TypeError) as exc:
        raise ValueError(f"{label} must be a number") from exc
    if number < 0:
        raise ValueError(f"{label} cannot be negative")
    return number


def parse_plan_terms(data: dict[str, Any], custom_priced: bool) -> dict[str, Any]:
    """Validate a plan version's terms from form or API data.

    ``base_price`` is in major units (e.g. "499.00"); ``user_limit`` and each
    ``<metric>_included`` may be empty for unlimited; ``<metric>_unit_price`` is the
    overage price of one billing unit. Raises ValidationFailed naming every bad field.
    """
    errors: dict[str, str] = {}
    terms: dict[str, Any] = {"metrics": {}}
    try:
        price = _quantity("base price", data.get("base_price"), allow_none=custom_priced)
        terms["base_price_minor"] = None if price is None else Money(price, "USD").to_minor()
    except ValueError as exc:
        errors["base_price"] = str(exc)
    try:
        limit = _quantity("user limit", data.get("user_limit"), allow_none=True)
        if limit is not None and limit != limit.to_integral_value():
            raise ValueError("user limit must be a whole number")
        terms["user_limit"] = None if limit is None else int(limit)
    except ValueError as exc:
        errors["user_limit"] = str(exc)
    for code in METRIC_CODES:
        label = METRICS[code].label
        try:
            included = _quantity(f"{label} included", data.get(f"{code}_included"), True)
        except ValueError as exc:
            errors[f"{code}_included"] = str(exc)
            continue
        try:
            unit = _quantity(f"{label} unit price", data.get(f"{code}_unit_price") or "0", False)
        except ValueError as exc:
            errors[f"{code}_unit_price"] = str(exc)
            continue
        terms["metrics"][code] = (included, unit)
    if errors:
        raise ValidationFailed(errors)
    return terms


def version_terms(version: PlanVersion) -> dict[str, Any]:
    """The editable terms of a version, as the form shows them."""
    data: dict[str, Any] = {
        "base_price": None if version.base_price_minor is None
        else str(Money.from_minor(version.base_price_minor, version.currency).amount),
        "user_limit": version.user_limit,
    }
    for price in version.prices:
        data[f"{price.metric}_included"] = price.included
        data[f"{price.metric}_unit_price"] = price.unit_price
    return data


def update_plan_terms(actor: Actor, plan: Plan, data: dict[str, Any]) -> PlanVersion:
    """Change a plan's price and limits. A locked version (used by an issued invoice)
    is kept as it is and the change becomes a new version; tenants subscribed to the
    old version stay on it until their plan is changed."""
    terms = parse_plan_terms(data, plan.custom_priced)
    current = plan.current_version
    before = version_terms(current) if current else None
    if current is None or current.locked_at is not None:
        version = PlanVersion(plan=plan, version=(current.version + 1) if current else 1,
                              currency="USD")
        db.session.add(version)
    else:
        version = current
    version.base_price_minor = terms["base_price_minor"]
    version.user_limit = terms["user_limit"]
    existing = {p.metric: p for p in version.prices}
    for code, (included, unit) in terms["metrics"].items():
        price = existing.get(code) or PlanMetricPrice(metric=code)
        price.included, price.unit_price = included, unit
        if code not in existing:
            version.prices.append(price)
    db.session.flush()
    audit.record("plan.update", version, actor, tenant_id=None,
                 before={k: str(v) for k, v in (before or {}).items()},
                 after={k: str(v) for k, v in version_terms(version).items()})
    db.session.commit()
    return version


def lock_plan_version(version: PlanVersion) -> None:
    """Mark ``version`` as used by an issued invoice (caller commits)."""
    if version.locked_at is None:
        version.locked_at = dt.datetime.now(dt.UTC)


# -- subscriptions ---------------------------------------------------------------

def current_subscription(tenant: Tenant, on: dt.date | None = None) -> Subscription | None:
    """The subscription in force for ``tenant`` on ``on`` (default: today, tenant zone)."""
    on = on or today_in(tenant.timezone)
    with tenant_scope(tenant):
        return db.session.scalar(
            select(Subscription)
            .where(Subscription.starts_on <= on,
                   (Subscription.ends_on.is_(None)) | (Subscription.ends_on > on))
            .order_by(Subscription.starts_on.desc())
            .limit(1)
        )


def subscription_history(tenant: Tenant) -> list[Subscription]:
    with tenant_scope(tenant):
        return list(db.session.scalars(
            select(Subscription).order_by(Subscription.starts_on.desc(), Subscription.id.desc())
        ))


def current_period(tenant: Tenant, on: dt.date | None = None) -> Period:
    sub = current_subscription(tenant, on)
    return period_containing(on or today_in(tenant.timezone), sub.anchor_day if sub else 1)


def subscribe(actor: Actor, tenant: Tenant, plan: Plan, *, starts_on: dt.date | None = None,
              anchor_day: int = 1, custom_base_price_minor: int | None = None) -> Subscription:
    """Put a tenant without a subscription on ``plan``'s current version."""
    with tenant_scope(tenant):
        if db.session.scalar(select(Subscription.id).where(Subscription.ends_on.is_(None))):
            raise ValidationFailed({"plan": "the tenant already has a plan; change it instead"})
        _check_custom_price(plan, custom_base_price_minor)
        sub = Subscription(
            tenant_id=tenant.id, plan_version=plan.current_version,
            starts_on=starts_on or today_in(tenant.timezone), anchor_day=anchor_day,
            custom_base_price_minor=custom_base_price_minor, created_by=actor.label,
        )
        db.session.add(sub)
        db.session.flush()
        audit.record("subscription.create", sub, actor, tenant_id=tenant.id,
                     after=_sub_snapshot(sub))
        db.session.commit()
        return sub


def _check_custom_price(plan: Plan, custom_minor: int | None) -> None:
    if plan.custom_priced and custom_minor is None:
        raise ValidationFailed({"custom_price": f"{plan.name} needs a negotiated monthly price"})
    if custom_minor is not None and custom_minor < 0:
        raise ValidationFailed({"custom_price": "the price cannot be negative"})


def _sub_snapshot(sub: Subscription) -> dict[str, Any]:
    return {"plan_version": sub.plan_version.label, "starts_on": sub.starts_on.isoformat(),
            "ends_on": sub.ends_on.isoformat() if sub.ends_on else None,
            "custom_base_price_minor": sub.custom_base_price_minor}


def change_plan(actor: Actor, tenant: Tenant, plan: Plan, timing: str, *,
                custom_base_price_minor: int | None = None,
                today: dt.date | None = None) -> Subscription:
    """Move ``tenant`` to ``plan``: ``immediately`` (the base fee is prorated by day
    across the two plans) or at the end of the current period. Replaces a change
    already scheduled for the period end."""
    if timing not in TIMINGS:
        raise ValidationFailed({"timing": f"choose one of: {', '.join(TIMINGS)}"})
    _check_custom_price(plan, custom_base_price_minor)
    today = today or today_in(tenant.timezone)
    with tenant_scope(tenant):
        current = current_subscription(tenant, today)
        if current is None:
            return subscribe(actor, tenant, plan, starts_on=today,
                             custom_base_price_minor=custom_base_price_minor)
        for scheduled in db.session.scalars(
            select(Subscription).where(Subscription.starts_on > today)
        ):
            db.session.delete(scheduled)
        db.session.flush()
        if (current.plan_version_id == plan.current_version.id
                and current.custom_base_price_minor == custom_base_price_minor):
            raise ValidationFailed({"plan": f"the tenant is already on {plan.name}"})
        before = _sub_snapshot(current)
        period = period_containing(today, current.anchor_day)
        switch_on = today if timing == "immediately" else period.end
        if switch_on <= current.starts_on:
            # Changed again on the day it started: replace rather than leave an empty row.
            db.session.delete(current)
            db.session.flush()
        else:
            current.ends_on = switch_on
            db.session.flush()
        new = Subscription(
            tenant_id=tenant.id, plan_version=plan.current_version, starts_on=switch_on,
            anchor_day=current.anchor_day, custom_base_price_minor=custom_base_price_minor,
            created_by=actor.label,
        )
        db.session.add(new)
        db.session.flush()
        audit.record("subscription.change", new, actor, tenant_id=tenant.id, before=before,
                     after={**_sub_snapshot(new), "timing": timing})
        db.session.commit()
        return new


@dataclass(frozen=True)
class BaseFeeSegment:
    plan_version: PlanVersion
    starts_on: dt.date
    ends_on: dt.date  # exclusive
    monthly_price: Money
    amount: Money  # unrounded: monthly price x days / days in period

    @property
    def days(self) -> int:
        return (self.ends_on - self.starts_on).days


def base_fee_segments(tenant: Tenant, period: Period) -> list[BaseFeeSegment]:
    """The base fee of ``period``, one segment per plan in force, prorated by day."""
    with tenant_scope(tenant):
        subs = db.session.scalars(
            select(Subscription)
            .where(Subscription.starts_on < period.end,
                   (Subscription.ends_on.is_(None)) | (Subscription.ends_on > period.start))
            .order_by(Subscription.starts_on, Subscription.id)
        ).all()
    return _segments(tenant, period, subs)


def _segments(tenant: Tenant, period: Period, subs: Sequence[Subscription]
              ) -> list[BaseFeeSegment]:
    """The segments of ``period`` of those of ``subs`` (oldest first) in force in it."""
    segments = []
    for sub in subs:
        if sub.starts_on >= period.end or (sub.ends_on is not None
                                           and sub.ends_on <= period.start):
            continue
        start = max(sub.starts_on, period.start)
        end = min(sub.ends_on or period.end, period.end)
        monthly = Money.from_minor(sub.base_price_minor, tenant.currency)
        fraction = Decimal(end.toordinal() - start.toordinal()) / Decimal(period.days)
        segments.append(BaseFeeSegment(sub.plan_version, start, end, monthly, monthly * fraction))
    return segments


@dataclass(frozen=True)
class SubscriptionHistory:
    """A tenant's subscriptions, oldest first, with their plan versions, read in one
    statement: for the reads that need the base fee of many periods (a year of
    analytics), which would otherwise look the subscriptions up once per period."""

    tenant: Tenant
    subscriptions: tuple[Subscription, ...]

    @classmethod
    def of(cls, tenant: Tenant) -> SubscriptionHistory:
        with tenant_scope(tenant):
            subs = db.session.scalars(
                select(Subscription)
                .options(selectinload(Subscription.plan_version))
                .order_by(Subscription.starts_on, Subscription.id)
            ).all()
        return cls(tenant, tuple(subs))

    @property
    def anchor_day(self) -> int:
        """The billing cycle's anchor: the latest subscription's (1 without any)."""
        return self.subscriptions[-1].anchor_day if self.subscriptions else 1

    def base_fee_segments(self, period: Period) -> list[BaseFeeSegment]:
        """``base_fee_segments(tenant, period)``, from the subscriptions read."""
        return _segments(self.tenant, period, self.subscriptions)


def check_seat_available(tenant: Tenant) -> None:
    """Refuse another user when the tenant's plan has no seat left."""
    sub = current_subscription(tenant)
    if sub is None or sub.plan_version.user_limit is None:
        return
    with tenant_scope(tenant):
        used = db.session.scalar(
            select(func.count(BillfoldUser.id)).where(BillfoldUser.tenant_id == tenant.id,
                                                      BillfoldUser.active.is_(True))
        )
    if used >= sub.plan_version.user_limit:
        raise ValidationFailed({
            "email": f"the {sub.plan_version.plan.name} plan includes "
                     f"{sub.plan_version.user_limit} users and all are taken; "
                     "upgrade the plan or deactivate a user"
        })


# -- plan-change requests ----------------------------------------------------------

def request_plan_change(actor: Actor, tenant: Tenant, plan: Plan, timing: str,
                        reason: str) -> PlanChangeRequest:
    """A Tenant Admin asks for another plan. One pending request per tenant; a reason
    is required; the current plan cannot be requested."""
    errors = {}
    reason = (reason or "").strip()
    if len(reason) < 5:
        errors["reason"] = "say in a few words why the plan should change"
    if timing not in TIMINGS:
        errors["timing"] = f"choose one of: {', '.join(TIMINGS)}"
    current = current_subscription(tenant)
    if current is not None and current.plan_version.plan_id == plan.id:
        errors["plan"] = f"the tenant is already on {plan.name}"
    if not plan.active:
        errors["plan"] = f"{plan.name} is not offered"
    if errors:
        raise ValidationFailed(errors)
    with tenant_scope(tenant):
        if db.session.scalar(select(PlanChangeRequest.id)
                             .where(PlanChangeRequest.status == "pending")):
            raise ValidationFailed({"plan": "a request is already pending; cancel it first"})
        req = PlanChangeRequest(
            tenant_id=tenant.id, requested_plan_id=plan.id, timing=timing, reason=reason,
            from_plan_version_id=current.plan_version_id if current else None,
            requested_by=actor.label,
        )
        db.session.add(req)
        db.session.flush()
        audit.record("plan_change_request.create", req, actor, tenant_id=tenant.id,
                     after={"plan": plan.name, "timing": timing, "reason": reason})
        db.session.commit()
        return req


def _pending_request(request_id: int) -> PlanChangeRequest:
    req = db.session.get(PlanChangeRequest, request_id)
    if req is None:
        raise NotFoundError("no such request")
    if req.status != "pending":
        raise ValidationFailed({"status": f"the request is already {req.status}"})
    return req


def approve_plan_change(actor: Actor, request_id: int, *, note: str = "",
                        custom_base_price_minor: int | None = None) -> PlanChangeRequest:
    """Approve a pending request: the plan changes with the requested timing."""
    with unscoped():
        req = _pending_request(request_id)
        tenant = req.tenant
        change_plan(actor, tenant, req.requested_plan, req.timing,
                    custom_base_price_minor=custom_base_price_minor)
        return _decide(actor, req, "approved", note)


def decline_plan_change(actor: Actor, request_id: int, note: str) -> PlanChangeRequest:
    """Decline a pending request; the tenant sees the note."""
    if not (note or "").strip():
        raise ValidationFailed({"note": "tell the tenant why the request is declined"})
    with unscoped():
        return _decide(actor, _pending_request(request_id), "declined", note)


def cancel_plan_change(actor: Actor, tenant: Tenant, request_id: int) -> PlanChangeRequest:
    """The tenant withdraws its pending request."""
    with tenant_scope(tenant):
        return _decide(actor, _pending_request(request_id), "cancelled", "")


def _decide(actor: Actor, req: PlanChangeRequest, status: str, note: str) -> PlanChangeRequest:
    req.status = status
    req.decided_by = actor.label
    req.decided_at = dt.datetime.now(dt.UTC)
    req.decision_note = note.strip() or None
    audit.record(f"plan_change_request.{status}", req, actor, tenant_id=req.tenant_id,
                 before={"status": "pending"}, after={"status": status, "note": req.decision_note})
    db.session.commit()
    return req


def list_requests(tenant: Tenant | None = None,
                  status: str | None = None) -> list[PlanChangeRequest]:
    """Requests newest first: one tenant's, or (in the all-tenants scope) everyone's."""
    stmt = select(PlanChangeRequest).order_by(PlanChangeRequest.id.desc())
    if status:
        stmt = stmt.where(PlanChangeRequest.status == status)
    if tenant is None:
        return list(db.session.scalars(stmt))
    with tenant_scope(tenant):
        return list(db.session.scalars(stmt))
