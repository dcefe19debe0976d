"""Plan catalog, subscriptions, plan-change requests, usage events and daily rollups."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import ClassVar

from flask_appbuilder import Model
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from plans.metrics import METRICS, PEAK
from tenants.scoping import TenantScoped

QUANTITY = Numeric(24, 6)
UNIT_PRICE = Numeric(20, 10)
METRIC_CHECK = "metric in ({})".format(", ".join(f"'{m}'" for m in METRICS))
SUMMED_METRIC_CHECK = "metric in ({})".format(
    ", ".join(f"'{code}'" for code, m in METRICS.items() if m.aggregation != PEAK))


class Plan(Model):
    """A tier of the catalog. Its prices and limits live in versions."""

    __tablename__ = "plan"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), nullable=False, unique=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    sort_order: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    custom_priced: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)

    versions: Mapped[list[PlanVersion]] = relationship(
        back_populates="plan", order_by="PlanVersion.version"
    )

    @property
    def current_version(self) -> PlanVersion | None:
        return self.versions[-1] if self.versions else None

    def __repr__(self) -> str:
        return self.name


class PlanVersion(Model):
    """Prices and limits of a plan at one time. A version that an issued invoice
    used is locked: editing the plan then makes a new version."""

    __tablename__ = "plan_version"
    __table_args__ = (UniqueConstraint("plan_id", "version", name="uq_plan_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plan.id"), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False, default="USD")
    # Monthly base fee in minor units; NULL for custom-priced plans (set per tenant).
    base_price_minor: Mapped[int | None] = mapped_column(BigInteger)
    user_limit: Mapped[int | None] = mapped_column(Integer)  # NULL: unlimited
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    locked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    plan: Mapped[Plan] = relationship(back_populates="versions")
    prices: Mapped[list[PlanMetricPrice]] = relationship(
        back_populates="plan_version", order_by="PlanMetricPrice.id",
        cascade="all, delete-orphan",
    )

    def price_for(self, metric: str) -> PlanMetricPrice | None:
        return next((p for p in self.prices if p.metric == metric), None)

    @property
    def label(self) -> str:
        return f"{self.plan.name} v{self.version}"

    def __repr__(self) -> str:
        return self.label


class PlanMetricPrice(Model):
    """What a plan version includes of one metric, and its overage unit price."""

    __tablename__ = "plan_metric_price"
    __table_args__ = (
        UniqueConstraint("plan_version_id", "metric", name="uq_plan_metric_price"),
        CheckConstraint(METRIC_CHECK, name="ck_plan_metric_price_metric"),
        CheckConstraint("unit_price >= 0", name="ck_plan_metric_price_unit_price"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_version_id: Mapped[int] = mapped_column(
        ForeignKey("plan_version.id", ondelete="CASCADE"), nullable=False
    )
    metric: Mapped[str] = mapped_column(String(32), nullable=False)
    # Included per period, in billing units; NULL: unlimited.
    included: Mapped[Decimal | None] = mapped_column(QUANTITY)
    # Price of one billing unit beyond the included amount, in major units.
    unit_price: Mapped[Decimal] = mapped_column(UNIT_PRICE, nullable=False, default=0)

    plan_version: Mapped[PlanVersion] = relationship(back_populates="prices")


class Subscription(TenantScoped, Model):
    """A tenant on one plan version from ``starts_on`` until ``ends_on`` (exclusive).
    A plan change closes the open row and opens another, so the rows are the history."""

    __tablename__ = "subscription"
    __table_args__ = (
        Index("uq_subscription_open", "tenant_id", unique=True,
              sqlite_where=text("ends_on IS NULL"), postgresql_where=text("ends_on IS NULL")),
        CheckConstraint("ends_on IS NULL OR ends_on > starts_on", name="ck_subscription_dates"),
        CheckConstraint("anchor_day BETWEEN 1 AND 28", name="ck_subscription_anchor"),
        UniqueConstraint("tenant_id", "id", name="uq_subscription_tenant_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_version_id: Mapped[int] = mapped_column(ForeignKey("plan_version.id"), nullable=False)
    starts_on: Mapped[dt.date] = mapped_column(Date, nullable=False)
    ends_on: Mapped[dt.date | None] = mapped_column(Date)
    anchor_day: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    # The negotiated monthly fee of a custom-priced plan, in minor units.
    custom_base_price_minor: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    created_by: Mapped[str] = mapped_column(String(256), nullable=False, default="system")

    plan_version: Mapped[PlanVersion] = relationship()
    tenant = relationship("Tenant")

    @property
    def base_price_minor(self) -> int:
        if self.custom_base_price_minor is not None:
            return self.custom_base_price_minor
        return self.plan_version.base_price_minor or 0


class PlanChangeRequest(TenantScoped, Model):
    """A Tenant Admin's request to move to another plan; a Platform Admin decides."""

    __tablename__ = "plan_change_request"
    __table_args__ = (
        CheckConstraint("status in ('pending', 'approved', 'declined', 'cancelled')",
                        name="ck_plan_change_request_status"),
        CheckConstraint("timing in ('immediately', 'period_end')",
                        name="ck_plan_change_request_timing"),
        Index("uq_plan_change_request_pending", "tenant_id", unique=True,
              sqlite_where=text("status = 'pending'"),
              postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    requested_plan_id: Mapped[int] = mapped_column(ForeignKey("plan.id"), nullable=False)
    from_plan_version_id: Mapped[int | None] = mapped_column(ForeignKey("plan_version.id"))
    timing: Mapped[str] = mapped_column(String(16), nullable=False, default="period_end")
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    requested_by: Mapped[str] = mapped_column(String(256), nullable=False)
    requested_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    decided_by: Mapped[str | None] = mapped_column(String(256))
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    decision_note: Mapped[str | None] = mapped_column(Text)

    requested_plan: Mapped[Plan] = relationship()
    from_plan_version: Mapped[PlanVersion | None] = relationship()
    tenant = relationship("Tenant")


class UsageEvent(TenantScoped, Model):
    """A raw usage event, kept as the audit trail of every rollup."""

    __tablename__ = "usage_event"
    __tenant_index__: ClassVar[bool] = False
    __table_args__ = (
        UniqueConstraint("tenant_id", "event_id", name="uq_usage_event_idempotency"),
        CheckConstraint(METRIC_CHECK, name="ck_usage_event_metric"),
        CheckConstraint("quantity_micro >= 0", name="ck_usage_event_quantity"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True
    )
    event_id: Mapped[str] = mapped_column(String(128), nullable=False)
    metric: Mapped[str] = mapped_column(String(32), nullable=False)
    # Millionths of the event unit: exact integer arithmetic on every database
    # (SQLite has no decimal type and would sum in binary floating point).
    quantity_micro: Mapped[int] = mapped_column(BigInteger, nullable=False)
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    day: Mapped[dt.date] = mapped_column(Date, nullable=False)  # in the tenant's time zone
    service: Mapped[str] = mapped_column(String(64), nullable=False)
    user_ref: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    properties: Mapped[str | None] = mapped_column(Text)  # JSON
    ingested_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    @property
    def quantity(self) -> Decimal:
        return from_micro(self.quantity_micro)


class _RollupCells:
    """The columns of a rollup row beside its tenant and time: the metric, the cell
    (service, end user) and the quantities (the events' sum, or for peak metrics
    their maximum, in millionths of the event unit, and how many events)."""

    metric: Mapped[str] = mapped_column(String(32), nullable=False)
    service: Mapped[str] = mapped_column(String(64), nullable=False)
    user_ref: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    quantity_micro: Mapped[int] = mapped_column(BigInteger, nullable=False)
    event_count: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class UsageRollup(_RollupCells, TenantScoped, Model):
    """Usage per tenant, day (tenant time zone), metric, service and end user.
    ``quantity_micro`` is the sum of the day's events, or for peak metrics their
    maximum, in millionths of the event unit."""

    __tablename__ = "usage_rollup"
    __tenant_index__: ClassVar[bool] = False
    __table_args__ = (
        # The key is in the order the reads want it: a metric's rows of a span of days,
        # in (day, service, user) order, for the sums and peaks that rating and the
        # analytics take per metric (``plans.metering.by_metric``). The table is that
        # one tree on SQLite (no rowid) and the key holds the quantities on PostgreSQL,
        # so those reads need nothing else, and a batch's upsert writes one index.
        PrimaryKeyConstraint("tenant_id", "metric", "day", "service", "user_ref",
                             name="pk_usage_rollup",
                             postgresql_include=["quantity_micro", "event_count"]),
        CheckConstraint(METRIC_CHECK, name="ck_usage_rollup_metric"),
        {"sqlite_with_rowid": False},
    )

    day: Mapped[dt.date] = mapped_column(Date, nullable=False)

    @property
    def quantity(self) -> Decimal:
        return from_micro(self.quantity_micro)


class UsageRollupMonth(_RollupCells, TenantScoped, Model):
    """The daily rollups of summed metrics added up per calendar month (of the rollup
    days), for the days before the tenant's ``UsageCompaction.through``.

    A span of days that starts on or before the first of a month reads that month's
    rows here instead of one row per day, service and user: the cost of a period's
    per-user split follows the number of users, not users times days. The compaction
    job adds the days up; a batch with events of days already added up adds them here
    too, so the invariant holds at every commit."""

    __tablename__ = "usage_rollup_month"
    __tenant_index__: ClassVar[bool] = False
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "metric", "month", "service", "user_ref",
                             name="pk_usage_rollup_month",
                             postgresql_include=["quantity_micro", "event_count"]),
        CheckConstraint(SUMMED_METRIC_CHECK, name="ck_usage_rollup_month_metric"),
        {"sqlite_with_rowid": False},
    )

    month: Mapped[dt.date] = mapped_column(Date, nullable=False)  # its first day


class UsageRollupService(TenantScoped, Model):
    """The daily rollups of every metric with the users added up: per tenant, metric,
    day and service, for the days before the tenant's ``UsageCompaction.through``.

    The day-by-day reads (usage analytics, spend over time) group by day and service
    only; for compacted days they read one row per metric, day and service here
    instead of one per user. The compaction job writes these rows; a batch with
    events of compacted days writes those days' rows again from the daily rollups."""

    __tablename__ = "usage_rollup_service"
    __tenant_index__: ClassVar[bool] = False
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "metric", "day", "service",
                             name="pk_usage_rollup_service",
                             postgresql_include=["quantity_micro", "event_count"]),
        CheckConstraint(METRIC_CHECK, name="ck_usage_rollup_service_metric"),
        {"sqlite_with_rowid": False},
    )

    day: Mapped[dt.date] = mapped_column(Date, nullable=False)
    metric: Mapped[str] = mapped_column(String(32), nullable=False)
    service: Mapped[str] = mapped_column(String(64), nullable=False)
    quantity_micro: Mapped[int] = mapped_column(BigInteger, nullable=False)
    event_count: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class UsageCompaction(TenantScoped, Model):
    """How far a tenant's daily rollups are added up in ``usage_rollup_month`` and
    ``usage_rollup_service``: every day before ``through``."""

    __tablename__ = "usage_compaction"
    __tenant_index__: ClassVar[bool] = False
    __table_args__ = (PrimaryKeyConstraint("tenant_id", name="pk_usage_compaction"),)

    through: Mapped[dt.date] = mapped_column(Date, nullable=False)


MICRO = Decimal(1_000_000)


def from_micro(micro: int) -> Decimal:
    return Decimal(micro) / MICRO


ALERT_KINDS = ("usage", "overage", "forecast", "spend", "metric", "credit")
ALERT_CHANNELS = ("email", "in_app", "sms")


class AlertRule(TenantScoped, Model):
    """When to alert a tenant and through which channels.

    ``kind`` says what is watched: ``usage`` a percentage of a plan limit,
    ``overage`` usage past a plan limit, ``forecast`` the percentage the burn rate
    projects for the period's end, ``metric`` a quantity of one metric, ``spend`` the
    period's cost so far, ``credit`` a prepaid balance under an amount. ``metric``
    narrows usage, overage and forecast rules to one metric (NULL: every metric
    with a limit). ``system_key`` marks the three rules every tenant starts with.
    """

    __tablename__ = "alert_rule"
    __table_args__ = (
        CheckConstraint("kind in ({})".format(", ".join(f"'{k}'" for k in ALERT_KINDS)),
                        name="ck_alert_rule_kind"),
        CheckConstraint(f"metric IS NULL OR {METRIC_CHECK}", name="ck_alert_rule_metric"),
        CheckConstraint("threshold IS NULL OR threshold >= 0", name="ck_alert_rule_threshold"),
        CheckConstraint("amount_minor IS NULL OR amount_minor >= 0",
                        name="ck_alert_rule_amount"),
        CheckConstraint("kind NOT IN ('usage', 'forecast', 'metric') OR threshold IS NOT NULL",
                        name="ck_alert_rule_has_threshold"),
        CheckConstraint("kind NOT IN ('spend', 'credit') OR amount_minor IS NOT NULL",
                        name="ck_alert_rule_has_amount"),
        CheckConstraint("kind <> 'metric' OR metric IS NOT NULL",
                        name="ck_alert_rule_has_metric"),
        Index("uq_alert_rule_system_key", "tenant_id", "system_key", unique=True,
              sqlite_where=text("system_key IS NOT NULL"),
              postgresql_where=text("system_key IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    metric: Mapped[str | None] = mapped_column(String(32))
    # A percentage (usage, forecast) or a quantity in billing units (metric).
    threshold: Mapped[Decimal | None] = mapped_column(QUANTITY)
    # An amount in the tenant's currency, minor units (spend, credit).
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    channels: Mapped[str] = mapped_column(String(64), nullable=False, default="email,in_app")
    email_to: Mapped[str] = mapped_column(Text, nullable=False, default="")
    sms_to: Mapped[str] = mapped_column(Text, nullable=False, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    system_key: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    created_by: Mapped[str] = mapped_column(String(256), nullable=False, default="system")
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    tenant = relationship("Tenant")

    @property
    def threshold_value(self) -> Decimal:
        """The threshold of a usage, forecast or metric rule (a constraint keeps it set)."""
        if self.threshold is None:
            raise ValueError(f"alert rule {self.id} ({self.kind}) has no threshold")
        return self.threshold

    @property
    def amount_value(self) -> int:
        """The amount of a spend or credit rule (a constraint keeps it set)."""
        if self.amount_minor is None:
            raise ValueError(f"alert rule {self.id} ({self.kind}) has no amount")
        return self.amount_minor

    @property
    def metric_code(self) -> str:
        """The metric of a metric rule (a constraint keeps it set)."""
        if self.metric is None:
            raise ValueError(f"alert rule {self.id} ({self.kind}) has no metric")
        return self.metric

    @property
    def channel_list(self) -> list[str]:
        return [c for c in ALERT_CHANNELS if c in self.channels.split(",")]

    @property
    def email_list(self) -> list[str]:
        return [a.strip() for a in self.email_to.replace(";", ",").split(",") if a.strip()]

    @property
    def sms_list(self) -> list[str]:
        return [n.strip() for n in self.sms_to.replace(";", ",").split(",") if n.strip()]

    def __repr__(self) -> str:
        return self.name


class Alert(TenantScoped, Model):
    """One firing of a rule: a threshold crossed in a period, for one subject (a
    metric, or "" for rules about the whole account).

    At most one uncleared alert exists per rule, period and subject, which is what
    makes a rule fire once per threshold per period, also when evaluations run
    concurrently. An alert is cleared when its condition stops holding (a raised
    limit, a balance topped up), which re-arms the rule."""

    __tablename__ = "alert"
    __table_args__ = (
        Index("uq_alert_armed", "rule_id", "period_start", "subject", unique=True,
              sqlite_where=text("cleared_at IS NULL"),
              postgresql_where=text("cleared_at IS NULL")),
        Index("ix_alert_tenant_fired", "tenant_id", "fired_at"),
    )
    __tenant_index__: ClassVar[bool] = False

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[int | None] = mapped_column(
        ForeignKey("alert_rule.id", ondelete="SET NULL"), index=True)
    rule_name: Mapped[str] = mapped_column(String(100), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    level: Mapped[str] = mapped_column(String(16), nullable=False)  # warning|critical|budget
    subject: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    period_start: Mapped[dt.date] = mapped_column(Date, nullable=False)
    period_end: Mapped[dt.date] = mapped_column(Date, nullable=False)
    threshold_text: Mapped[str] = mapped_column(String(64), nullable=False)
    value_text: Mapped[str] = mapped_column(String(64), nullable=False)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    forecast_on: Mapped[dt.date | None] = mapped_column(Date)
    fired_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    cleared_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    rule: Mapped[AlertRule | None] = relationship()
    tenant = relationship("Tenant")
