"""Budget alerts: the rules of each tenant, their evaluation, and the alert history.

Every tenant starts with three rules: a usage warning at 80 % of a plan limit (email
and in-app), usage critical at 95 % (email, in-app and SMS) and overage past 100 %
(email, in-app and SMS). Tenants add their own: a percentage of a limit, a quantity
of a metric, the period's spend so far, a prepaid balance under an amount, or a
forecast that the burn rate passes a percentage before the period ends.

Evaluation reads the usage summary (rollups only) and the balance, and fires each
rule at most once per threshold, subject and period. Rules are taken in order of
severity, so one batch that crosses 80 %, 95 % and 100 % at once fires the warning,
the critical alert and the overage in that order. A rule whose condition stops
holding (a raised limit, a topped-up balance) has its alert cleared, which arms it
again; a new period arms every rule.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from plans.metrics import METRICS, PEAK
from plans.models import ALERT_CHANNELS, ALERT_KINDS, Alert, AlertRule
from plans.periods import Period
from portal import audit, jobs
from portal.audit import Actor
from portal.errors import NotFoundError, ValidationFailed
from portal.extensions import db
from portal.money import Money
from tenants.models import BillfoldUser, Tenant, TenantStatus
from tenants.scoping import tenant_scope, unscoped

EVALUATE_JOB = "alerts.evaluate"
RULE_FIELDS = ["name", "kind", "metric", "threshold", "amount_minor", "channels", "email_to",
               "sms_to", "enabled"]
KIND_LABELS = {
    "usage": "Usage of a plan limit",
    "overage": "Overage (past the plan limit)",
    "forecast": "Forecast: burn rate passes a percentage",
    "metric": "Quantity of a metric",
    "spend": "Spend this period",
    "credit": "Prepaid balance below",
}
CHANNEL_LABELS = {"email": "Email", "in_app": "In-app", "sms": "SMS"}
# The order rules are evaluated and fired in: milder thresholds first.
KIND_ORDER = {kind: i for i, kind in enumerate(("usage", "overage", "forecast", "metric",
                                                 "spend", "credit"))}
DEFAULT_RULES = (
    ("warning", "Usage warning", "usage", Decimal(80), "email,in_app"),
    ("critical", "Usage critical", "usage", Decimal(95), "email,in_app,sms"),
    ("overage", "Overage", "overage", None, "email,in_app,sms"),
)
PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
MAX_PERCENT = Decimal(1000)
FORECAST_MIN_DAYS = 3  # too few days give a burn rate that means nothing


# --- rules -----------------------------------------------------------------------

def add_default_rules(tenant_id: int) -> None:
    """Add the default rules of a new tenant to the current transaction."""
    for key, name, kind, threshold, channels in DEFAULT_RULES:
        db.session.add(AlertRule(tenant_id=tenant_id, system_key=key, name=name, kind=kind,
                                 threshold=threshold, channels=channels))


def list_rules(tenant: Tenant) -> list[AlertRule]:
    with tenant_scope(tenant):
        rules = list(db.session.scalars(select(AlertRule)))
    return sorted(rules, key=_rule_order)


def _rule_order(rule: AlertRule) -> tuple:
    return (KIND_ORDER[rule.kind], rule.threshold or 0, rule.amount_minor or 0, rule.id)


def get_rule(tenant: Tenant, rule_id: int) -> AlertRule:
    with tenant_scope(tenant):
        rule = db.session.get(AlertRule, rule_id)
    if rule is None or rule.tenant_id != tenant.id:
        raise NotFoundError(f"alert rule {rule_id}")
    return rule


def _decimal(value: Any) -> Decimal | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float):
        raise ValueError("not a float")
    try:
        number = Decimal(str(value).strip().replace(",", "").rstrip("%").strip())
    except InvalidOperation as exc:
        raise ValueError(str(value)) from exc
    if not number.is_finite():
        raise ValueError(str(value))
    return number


def clean_rule(tenant: Tenant, data: dict[str, Any], *, system_key: str | None = None,
               kind: str | None = None) -> dict[str, Any]:
    """Check a rule's fields; raises ValidationFailed naming each bad field. ``data``
    holds text as a form gives it: ``threshold`` a percentage or quantity,
    ``amount`` an amount in the tenant's currency, ``channels`` a list."""
    from tenants.services import check_email

    errors: dict[str, str] = {}
    clean: dict[str, Any] = {}
    name = (data.get("name") or "").strip()
    if not name:
        errors["name"] = "give the rule a name"
    elif len(name) > 100:
        errors["name"] = "at most 100 characters"
    clean["name"] = name
    kind = kind or (data.get("kind") or "").strip()
    if kind not in ALERT_KINDS:
        errors["kind"] = "choose what the rule watches"
    clean["kind"] = kind
    metric = (data.get("metric") or "").strip() or None
    if metric is not None and metric not in METRICS:
        errors["metric"] = "unknown metric"
    if kind == "metric" and metric is None:
        errors["metric"] = "choose the metric to watch"
    if kind in ("spend", "credit"):
        metric = None
    if kind == "forecast" and metric is not None and METRICS[metric].aggregation == PEAK:
        errors["metric"] = f"{METRICS[metric].label} is billed on its peak: nothing to forecast"
    clean["metric"] = metric
    clean["threshold"], clean["amount_minor"] = None, None
    try:
        if kind in ("usage", "forecast"):
            pct = _decimal(data.get("threshold"))
            if pct is None or not Decimal(0) < pct <= MAX_PERCENT:
                errors["threshold"] = "enter a percentage of the limit between 1 and 1000"
            clean["threshold"] = pct
        elif kind == "metric":
            qty = _decimal(data.get("threshold"))
            if qty is None or qty <= 0:
                errors["threshold"] = "enter a quantity greater than 0"
            elif qty.as_tuple().exponent < -6:  # type: ignore[operator]
                errors["threshold"] = "at most 6 decimal places"
            clean["threshold"] = qty
    except ValueError:
        errors["threshold"] = "enter a number such as 80"
    if kind in ("spend", "credit"):
        try:
            amount = _decimal(data.get("amount"))
            if amount is None or amount <= 0:
                errors["amount"] = "enter an amount greater than 0, such as 500.00"
            else:
                clean["amount_minor"] = Money(amount, tenant.currency).to_minor()
        except (ValueError, ValidationFailed):
            errors["amount"] = "enter an amount such as 500.00"
    channels = [c for c in (data.get("channels") or []) if c]
    unknown = [c for c in channels if c not in ALERT_CHANNELS]
    if unknown or not channels:
        errors["channels"] = "choose at least one of email, in-app and SMS"
    clean["channels"] = ",".join(c for c in ALERT_CHANNELS if c in channels)
    emails = [a.strip() for a in re.split(r"[,;\s]+", data.get("email_to") or "") if a.strip()]
    bad = []
    for address in emails:
        try:
            check_email(address)
        except ValueError:
            bad.append(address)
    if bad:
        errors["email_to"] = "not an email address: " + ", ".join(bad)
    clean["email_to"] = ", ".join(emails)
    phones = [p.strip() for p in re.split(r"[,;]+", data.get("sms_to") or "") if p.strip()]
    phones = [re.sub(r"[\s().-]", "", p) for p in phones]
    bad = [p for p in phones if not PHONE.match(p)]
    if bad:
        errors["sms_to"] = ("phone numbers in international form, such as +14155550123: "
                            + ", ".join(bad))
    elif "sms" in channels and not phones:
        errors["sms_to"] = "add a phone number for SMS, or leave SMS out"
    clean["sms_to"] = ", ".join(phones)
    clean["enabled"] = bool(data.get("enabled", True))
    if system_key is not None and kind != clean["kind"]:
        errors["kind"] = "a default rule keeps its kind"
    if errors:
        raise ValidationFailed(errors)
    return clean


def create_rule(actor: Actor, tenant: Tenant, data: dict[str, Any]) -> AlertRule:
    clean = clean_rule(tenant, data)
    with tenant_scope(tenant):
        rule = AlertRule(tenant_id=tenant.id, created_by=actor.label, **clean)
        db.session.add(rule)
        db.session.flush()
        audit.record("alert_rule.create", rule, actor, tenant_id=tenant.id,
                     after=audit.snapshot(rule, RULE_FIELDS))
        jobs.defer(EVALUATE_JOB, tenant.id)
        db.session.commit()
    return rule


def update_rule(actor: Actor, tenant: Tenant, rule_id: int, data: dict[str, Any]) -> AlertRule:
    rule = get_rule(tenant, rule_id)
    clean = clean_rule(tenant, data, system_key=rule.system_key,
                       kind=rule.kind if rule.system_key else None)
    with tenant_scope(tenant):
        before = audit.snapshot(rule, RULE_FIELDS)
        for key, value in clean.items():
            setattr(rule, key, value)
        rule.updated_at = dt.datetime.now(dt.UTC)
        audit.record("alert_rule.update", rule, actor, tenant_id=tenant.id, before=before,
                     after=audit.snapshot(rule, RULE_FIELDS))
        jobs.defer(EVALUATE_JOB, tenant.id)
        db.session.commit()
    return rule


def set_enabled(actor: Actor, tenant: Tenant, rule_id: int, enabled: bool) -> AlertRule:
    rule = get_rule(tenant, rule_id)
    with tenant_scope(tenant):
        before = audit.snapshot(rule, RULE_FIELDS)
        rule.enabled = enabled
        rule.updated_at = dt.datetime.now(dt.UTC)
        audit.record("alert_rule.enable" if enabled else "alert_rule.disable", rule, actor,
                     tenant_id=tenant.id, before=before,
                     after=audit.snapshot(rule, RULE_FIELDS))
        if enabled:
            jobs.defer(EVALUATE_JOB, tenant.id)
        db.session.commit()
    return rule


def delete_rule(actor: Actor, tenant: Tenant, rule_id: int) -> None:
    """Delete a tenant's own rule; the default rules can be turned off, not deleted.
    Its alerts stay in the history."""
    rule = get_rule(tenant, rule_id)
    if rule.system_key is not None:
        raise ValidationFailed({"rule": "a default rule cannot be deleted; turn it off"})
    with tenant_scope(tenant):
        audit.record("alert_rule.delete", rule, actor, tenant_id=tenant.id,
                     before=audit.snapshot(rule, RULE_FIELDS))
        db.session.delete(rule)
        db.session.commit()


def describe(rule: AlertRule, currency: str) -> str:
    """The rule's trigger in words, e.g. "80 % of any plan limit"."""
    what = METRICS[rule.metric_code].label if rule.metric else "any plan limit"
    if rule.kind == "usage":
        return f"{_pct(rule.threshold_value)} of {what}"
    if rule.kind == "overage":
        return f"past 100% of {what}"
    if rule.kind == "forecast":
        return f"burn rate projects {_pct(rule.threshold_value)} of {what} by period end"
    if rule.kind == "metric":
        metric = METRICS[rule.metric_code]
        return f"{metric.label} reaches {_qty(rule.threshold_value, metric.digits)} {metric.unit}"
    if rule.kind == "spend":
        return f"spend this period reaches {Money.from_minor(rule.amount_value, currency)}"
    return f"prepaid balance under {Money.from_minor(rule.amount_value, currency)}"


def _pct(value: Decimal | None) -> str:
    from portal.formatting import percentage

    return percentage(value)


def _qty(value: Decimal | None, digits: int = 2) -> str:
    from portal.formatting import quantity

    return quantity(value, digits)


# --- evaluation ------------------------------------------------------------------

class _Check:
    """What a rule's condition says for one subject: fire, clear, or leave as is."""

    __slots__ = ("subject", "state", "level", "title", "message", "threshold_text",
                 "value_text", "forecast_on")

    def __init__(self, subject: str, state: str, level: str = "", title: str = "",
                 message: str = "", threshold_text: str = "", value_text: str = "",
                 forecast_on: dt.date | None = None):
        self.subject, self.state, self.level = subject, state, level
        self.title, self.message = title, message
        self.threshold_text, self.value_text = threshold_text, value_text
        self.forecast_on = forecast_on


def _limited(summary, rule: AlertRule):
    """The metrics a usage, overage or forecast rule looks at: those with a limit."""
    for code, usage in summary.metrics.items():
        if rule.metric is not None and code != rule.metric:
            continue
        if usage.limit is None:
            continue
        yield code, usage


def _checks(rule: AlertRule, summary, period: Period, balance_minor: int | None,
            today: dt.date, currency: str) -> list[_Check]:
    """What ``rule`` finds; ``summary`` (the usage of ``period``) may be None when the
    rule is a balance rule, which does not read it."""
    span = f"{period.start.isoformat()} – {period.last_day.isoformat()}"
    checks = []
    if rule.kind in ("usage", "overage"):
        for code, usage in _limited(summary, rule):
            metric = METRICS[code]
            used = f"{_qty(usage.used, metric.digits)} of {_qty(usage.limit, metric.digits)}"
            pct = usage.percentage if usage.percentage is not None else Decimal(0)
            if rule.kind == "usage":
                holds = pct >= rule.threshold_value
                level = "critical" if rule.threshold_value >= 95 else "warning"
                title = f"{rule.name}: {metric.label} at {_pct(pct)} of the plan limit"
                threshold_text = _pct(rule.threshold_value)
            else:
                holds = usage.used > usage.limit
                level = "critical"
                over = usage.used - usage.limit
                title = (f"{rule.name}: {metric.label} over the plan limit by "
                         f"{_qty(over, metric.digits)} {metric.unit}")
                threshold_text = f"{_qty(usage.limit, metric.digits)} {metric.unit}"
            message = (f"{metric.label} used {used} {metric.unit} "
                       f"({_pct(pct)}) in the period {span}.")
            if rule.kind == "overage" and usage.unit_price:
                message += (" Usage beyond the limit is billed at "
                            f"{usage.unit_price.normalize():f} {currency} per "
                            f"{metric.unit_one}.")
            checks.append(_Check(code, "fire" if holds else "clear", level, title, message,
                                 threshold_text, _pct(pct)))
    elif rule.kind == "forecast":
        for code, usage in _limited(summary, rule):
            metric = METRICS[code]
            if metric.aggregation == PEAK:
                continue
            target = usage.limit * rule.threshold_value / 100
            projected_pct = (usage.projected * 100 / usage.limit) if usage.limit else None
            if projected_pct is None or summary.days_elapsed < FORECAST_MIN_DAYS:
                continue
            if projected_pct < rule.threshold_value:
                checks.append(_Check(code, "clear"))
                continue
            if usage.used >= target:
                checks.append(_Check(code, "hold"))
                continue
            rate = usage.used / summary.days_elapsed
            days = math.ceil((target - usage.used) / rate) if rate > 0 else None
            if days is None:
                continue
            on = today + dt.timedelta(days=days)
            title = (f"{rule.name}: {metric.label} on course to pass "
                     f"{_pct(rule.threshold_value)} of the limit on {on.isoformat()}")
            message = (f"At the current burn rate "
                       f"({_qty(rate, metric.digits)} {metric.unit} a day) {metric.label} "
                       f"passes {_pct(rule.threshold_value)} of the plan limit on "
                       f"{on.isoformat()}, "
                       f"before the period ends on {period.last_day.isoformat()}. Used so far: "
                       f"{_qty(usage.used, metric.digits)} of "
                       f"{_qty(usage.limit, metric.digits)} {metric.unit}.")
            checks.append(_Check(code, "fire", "warning", title, message,
                                 _pct(rule.threshold_value), _pct(projected_pct.quantize(
                                     Decimal("0.1"))), forecast_on=on))
    elif rule.kind == "metric":
        usage = summary.metrics.get(rule.metric_code)
        if usage is not None:
            metric = METRICS[rule.metric_code]
            holds = usage.used >= rule.threshold_value
            value = f"{_qty(usage.used, metric.digits)} {metric.unit}"
            limit = f"{_qty(rule.threshold_value, metric.digits)} {metric.unit}"
            checks.append(_Check(
                "", "fire" if holds else "clear", "budget",
                f"{rule.name}: {metric.label} reached {limit}",
                f"{metric.label} used {value} in the period {span}, "
                f"past the threshold of {limit}.", limit, value))
    elif rule.kind == "spend":
        spent = summary.cost_so_far
        budget = Money.from_minor(rule.amount_value, currency)
        holds = spent.to_minor() >= rule.amount_value
        checks.append(_Check(
            "", "fire" if holds else "clear", "budget",
            f"{rule.name}: spend this period reached {budget}",
            f"Spend so far in the period {span} is {spent.rounded()}, past the "
            f"budget of {budget}. Projected for the whole period: "
            f"{summary.projected_cost.rounded()}.", str(budget), str(spent.rounded())))
    elif rule.kind == "credit" and balance_minor is not None:
        floor = Money.from_minor(rule.amount_value, currency)
        balance = Money.from_minor(balance_minor, currency)
        holds = balance_minor < rule.amount_value
        checks.append(_Check(
            "", "fire" if holds else "clear", "warning",
            f"{rule.name}: prepaid balance under {floor}",
            f"The prepaid credit balance is {balance}, under {floor}. Buy credit "
            "or turn on auto-recharge to keep usage paid for.", str(floor), str(balance)))
    return checks


def evaluate(tenant: Tenant, *, today: dt.date | None = None,
             now: dt.datetime | None = None) -> list[Alert]:
    """Fire the tenant's rules whose condition holds and that have not fired in this
    period; clear the alerts whose condition no longer holds. Returns the new alerts,
    in the order they fired. Their email and SMS go out by job after the commit."""
    from invoices.ledger import balance_minor
    from plans.services import current_period
    from plans.usage import usage_summary
    from portal.notifications import queue_alert_deliveries

    now = now or dt.datetime.now(dt.UTC)
    today = today or _today(tenant)
    with tenant_scope(tenant):
        rules = sorted(db.session.scalars(select(AlertRule).where(AlertRule.enabled)),
                       key=_rule_order)
    if not rules:
        return []
    # Balance rules alone do not need the period's usage, only its dates.
    if all(r.kind == "credit" for r in rules):
        summary, period = None, current_period(tenant, today)
    else:
        summary = usage_summary(tenant, today=today)
        period = summary.period
    with tenant_scope(tenant):
        balance = balance_minor(tenant) if any(r.kind == "credit" for r in rules) else None
        armed = {(a.rule_id, a.subject): a for a in db.session.scalars(
            select(Alert).where(Alert.period_start == period.start,
                                Alert.cleared_at.is_(None),
                                Alert.rule_id.in_([r.id for r in rules])))}
        users = None
        fired = []
        for rule in rules:
            for check in _checks(rule, summary, period, balance, today, tenant.currency):
                existing = armed.get((rule.id, check.subject))
                if check.state == "clear" and existing is not None:
                    existing.cleared_at = now
                if check.state != "fire" or existing is not None:
                    continue
                if users is None:
                    users = list(db.session.scalars(select(BillfoldUser).where(
                        BillfoldUser.tenant_id == tenant.id, BillfoldUser.active)))
                alert = _fire(tenant, rule, check, period, now, users,
                              queue_alert_deliveries)
                if alert is not None:
                    fired.append(alert)
        db.session.commit()
    return fired


def _fire(tenant, rule, check, period, now, users, queue) -> Alert | None:
    """Write one alert and its deliveries under a savepoint; None when a concurrent
    evaluation fired it first (the unique index of armed alerts)."""
    try:
        with db.session.begin_nested():
            alert = Alert(tenant_id=tenant.id, rule=rule, rule_name=rule.name, kind=rule.kind,
                          level=check.level, subject=check.subject,
                          period_start=period.start, period_end=period.end,
                          threshold_text=check.threshold_text, value_text=check.value_text,
                          title=check.title, message=check.message,
                          forecast_on=check.forecast_on, fired_at=now)
            db.session.add(alert)
            db.session.flush()
            emails = rule.email_list or [tenant.billing_email]
            queue(alert, rule.channel_list, emails, rule.sms_list, users)
    except IntegrityError:
        return None
    return alert


def _today(tenant: Tenant) -> dt.date:
    from plans.periods import today_in

    return today_in(tenant.timezone)


# With the jobs on Celery, the evaluations asked for by the batches of a few seconds
# are one evaluation, which reads them all.
EVALUATE_COALESCE_SECONDS = 5


@jobs.task(EVALUATE_JOB, coalesce=EVALUATE_COALESCE_SECONDS)
def evaluate_job(tenant_id: int) -> int:
    with unscoped():
        tenant = db.session.get(Tenant, tenant_id)
    if tenant is None or tenant.status != TenantStatus.ACTIVE.value:
        return 0
    return len(evaluate(tenant))


def evaluate_all(tenant_slug: str | None = None) -> dict[str, int]:
    """Evaluate every active tenant (or one); returns alerts fired per tenant slug."""
    with unscoped():
        query = select(Tenant).where(Tenant.status == TenantStatus.ACTIVE.value)
        if tenant_slug:
            query = select(Tenant).where(Tenant.slug == tenant_slug)
        tenants = list(db.session.scalars(query.order_by(Tenant.slug)))
    if tenant_slug and not tenants:
        raise NotFoundError(f"no tenant {tenant_slug!r}")
    return {t.slug: len(evaluate(t)) for t in tenants}


# --- history ---------------------------------------------------------------------

def last_fired(tenant: Tenant) -> dict[int, Alert]:
    """The latest alert of each of the tenant's rules, by rule id."""
    with tenant_scope(tenant):
        latest = select(func.max(Alert.id)).group_by(Alert.rule_id).scalar_subquery()
        return {a.rule_id: a for a in db.session.scalars(
            select(Alert).where(Alert.id.in_(latest))) if a.rule_id is not None}


def list_alerts(tenant: Tenant | None, *, start: dt.datetime | None = None,
                end: dt.datetime | None = None, before: int | None = None,
                limit: int = 100) -> list[Alert]:
    """Alerts newest first, of one tenant or (for a Platform Admin) of all."""
    from sqlalchemy.orm import selectinload

    query = select(Alert).options(selectinload(Alert.deliveries))
    if start is not None:
        query = query.where(Alert.fired_at >= start)
    if end is not None:
        query = query.where(Alert.fired_at < end)
    if before is not None:
        query = query.where(Alert.id < before)
    query = query.order_by(Alert.id.desc()).limit(limit)
    if tenant is None:
        with unscoped():
            return list(db.session.scalars(query.options(selectinload(Alert.tenant))))
    with tenant_scope(tenant):
        return list(db.session.scalars(query))
