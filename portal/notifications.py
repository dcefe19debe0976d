"""Notifications: in-app messages with an unread count, and deliveries by email and
SMS that are recorded, retried with backoff and never lost.

Each delivery is a row written in the transaction that raised the alert, so an alert
and its deliveries exist together or not at all. Sending happens afterwards, in a
job: a delivery is claimed by one worker at a time (a conditional UPDATE), sent, and
marked sent, or marked for a retry with the error kept. A claim left behind by a
worker that died is taken over once it is stale, so nothing stays pending for ever.

SMS goes through an HTTP gateway (``SMS_GATEWAY_URL``, ``SMS_GATEWAY_TOKEN``): a JSON
``{"to", "message", "reference"}`` POST with the delivery's reference as its
``Idempotency-Key``; any 2xx answer is success.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, ClassVar, cast

from flask import current_app, render_template
from flask_appbuilder import Model
from sqlalchemy import (
    CursorResult,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    and_,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement

from portal import jobs
from portal.extensions import db
from tenants.scoping import TenantScoped, tenant_scope, unscoped

log = logging.getLogger(__name__)

STATUSES = ("pending", "sending", "sent", "retrying", "failed", "skipped")
DELIVER_JOB = "notifications.deliver"


class Notification(TenantScoped, Model):
    """An in-app message for one user of a tenant."""

    __tablename__ = "notification"
    __tenant_index__: ClassVar[bool] = False
    __table_args__ = (
        Index("ix_notification_user_unread", "user_id", "read_at"),
        Index("ix_notification_tenant_created", "tenant_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("ab_user.id", ondelete="CASCADE"),
                                         nullable=False)
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alert.id", ondelete="SET NULL"))
    level: Mapped[str] = mapped_column(String(16), nullable=False, default="info")
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False, default="")
    link: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    read_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Delivery(TenantScoped, Model):
    """One message of an alert on one channel to one recipient, and its fate."""

    __tablename__ = "notification_delivery"
    __table_args__ = (
        Index("ix_notification_delivery_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alert.id", ondelete="CASCADE"),
                                          nullable=False, index=True)
    channel: Mapped[str] = mapped_column(String(16), nullable=False)  # email|sms|in_app
    recipient: Mapped[str] = mapped_column(String(320), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    provider_ref: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    alert = relationship("Alert", backref="deliveries")

    @property
    def reference(self) -> str:
        return f"billfold-delivery-{self.id}"


class ChannelError(RuntimeError):
    """A channel refused or could not take a message; the delivery is retried."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def retry_delay(attempts: int) -> dt.timedelta:
    """Backoff after ``attempts`` failed attempts: the base delay doubled each time,
    capped."""
    config = current_app.config
    base = int(config.get("NOTIFY_RETRY_BASE_SECONDS", 60))
    cap = int(config.get("NOTIFY_RETRY_MAX_SECONDS", 3600))
    return dt.timedelta(seconds=min(cap, base * 2 ** max(0, attempts - 1)))


# --- writing ---------------------------------------------------------------------

def queue_alert_deliveries(alert: Any, channels: list[str], emails: list[str],
                           phones: list[str], users: list[Any]) -> list[Delivery]:
    """Add the deliveries of ``alert`` to the current transaction: in-app notices
    are written at once; email and SMS are sent by a job after the commit."""
    rows = []
    if "in_app" in channels:
        for user in users:
            db.session.add(Notification(
                tenant_id=alert.tenant_id, user_id=user.id, alert_id=alert.id, level=alert.level,
                title=alert.title, body=alert.message, link=alert_link()))
        rows.append(Delivery(tenant_id=alert.tenant_id, alert=alert, channel="in_app",
                             recipient=f"{len(users)} user{'s' if len(users) != 1 else ''}",
                             status="sent", sent_at=_now(), attempts=1))
    for channel, recipients, missing in (
        ("email", emails, "no email address on the rule or the tenant"),
        ("sms", phones, "no phone number on the rule"),
    ):
        if channel not in channels:
            continue
        if not recipients:
            rows.append(Delivery(tenant_id=alert.tenant_id, alert=alert, channel=channel,
                                 recipient="-", status="skipped", last_error=missing))
        for recipient in recipients:
            rows.append(Delivery(tenant_id=alert.tenant_id, alert=alert, channel=channel,
                                 recipient=recipient, status="pending"))
    db.session.add_all(rows)
    db.session.flush()
    for row in rows:
        if row.status == "pending":
            jobs.defer(DELIVER_JOB, row.id)
    return rows


def alert_link() -> str:
    base = (current_app.config.get("PORTAL_URL") or "").rstrip("/")
    return f"{base}/billing/alerts/history"


# --- sending ---------------------------------------------------------------------

def _claimable(now: dt.datetime, force: bool = False) -> ColumnElement[bool]:
    """Deliveries a worker may take: waiting and due (any waiting one when forced),
    or claimed by a worker that has not finished within the claim timeout."""
    stale = now - dt.timedelta(seconds=int(current_app.config.get(
        "NOTIFY_CLAIM_TIMEOUT_SECONDS", 600)))
    due = or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now)
    return or_(
        and_(Delivery.status.in_(("pending", "retrying")), true() if force else due),
        and_(Delivery.status == "sending", Delivery.claimed_at < stale),
    )


def _claim(delivery_id: int, now: dt.datetime, force: bool) -> bool:
    """Take the delivery for this worker. One UPDATE, so two workers never both win."""
    # An UPDATE answers a CursorResult, which carries the row count.
    result = cast("CursorResult[Any]", db.session.execute(
        update(Delivery).where(Delivery.id == delivery_id, _claimable(now, force))
        .values(status="sending", claimed_at=now)
        .execution_options(synchronize_session=False)))
    db.session.commit()
    return result.rowcount == 1


def deliver(delivery_id: int, *, now: dt.datetime | None = None, force: bool = False) -> str:
    """Send one delivery if it is due; returns its status afterwards."""
    now = now or _now()
    with unscoped():
        tenant_id = db.session.scalar(select(Delivery.tenant_id)
                                      .where(Delivery.id == delivery_id))
    if tenant_id is None:
        return "missing"
    with tenant_scope(tenant_id):
        if not _claim(delivery_id, now, force):
            return db.session.scalar(
                select(Delivery.status).where(Delivery.id == delivery_id)) or "missing"
        row = db.session.get_one(Delivery, delivery_id)
        error, ref = None, None
        try:
            ref = _send(row)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded and retried
            error = f"{type(exc).__name__}: {exc}"[:1000]
        row = db.session.get_one(Delivery, delivery_id)
        row.attempts += 1
        row.claimed_at = None
        if error is None:
            row.status, row.sent_at, row.provider_ref = "sent", _now(), ref
            row.last_error = None
            row.next_attempt_at = None
        else:
            row.last_error = error
            limit = int(current_app.config.get("NOTIFY_MAX_ATTEMPTS", 8))
            if row.attempts >= limit:
                row.status, row.next_attempt_at = "failed", None
                log.error("delivery %s (%s to %s) failed for good after %s attempts: %s",
                          row.id, row.channel, row.recipient, row.attempts, error)
            else:
                row.status = "retrying"
                row.next_attempt_at = now + retry_delay(row.attempts)
                log.warning("delivery %s (%s to %s) failed, retry at %s: %s", row.id,
                            row.channel, row.recipient, row.next_attempt_at, error)
        status = row.status
        db.session.commit()
        return status


def _send(row: Delivery) -> str | None:
    alert = row.alert
    tenant = alert.tenant
    if row.channel == "email":
        from portal.mail import send_mail

        context = {"alert": alert, "tenant": tenant, "link": alert_link()}
        return send_mail([row.recipient], f"[{tenant.name}] {alert.title}",
                         render_template("mail/alert.txt", **context),
                         render_template("mail/alert.html", **context))
    if row.channel == "sms":
        return send_sms(row.recipient, f"{tenant.name}: {alert.title}. {alert.message}",
                        row.reference)
    raise ChannelError(f"unknown channel {row.channel!r}")


def send_sms(to: str, message: str, reference: str) -> str | None:
    """POST one message to the SMS gateway; returns the gateway's id for it."""
    import requests

    config = current_app.config
    url = config.get("SMS_GATEWAY_URL")
    if not url:
        raise ChannelError("no SMS gateway: set BILLFOLD_SMS_GATEWAY_URL")
    headers = {"Idempotency-Key": reference}
    if config.get("SMS_GATEWAY_TOKEN"):
        headers["Authorization"] = f"Bearer {config['SMS_GATEWAY_TOKEN']}"
    answer = requests.post(url, json={"to": to, "message": message[:640],
                                      "reference": reference},
                           headers=headers, timeout=int(config.get("SMS_TIMEOUT", 10)))
    if not 200 <= answer.status_code < 300:
        raise ChannelError(f"gateway answered {answer.status_code}: {answer.text[:200]}")
    try:
        body = answer.json()
    except ValueError:
        return None
    if isinstance(body, dict):
        ref = body.get("id") or body.get("message_id")
        return str(ref)[:200] if ref is not None else None
    return None


@jobs.task(DELIVER_JOB)
def deliver_job(delivery_id: int) -> str:
    return deliver(delivery_id)


def retry_due(now: dt.datetime | None = None, limit: int = 500) -> dict[str, int]:
    """Send every delivery that is due (first attempts left behind, retries whose
    time has come, stale claims); returns the count per resulting status."""
    now = now or _now()
    with unscoped():
        ids = list(db.session.scalars(
            select(Delivery.id).where(_claimable(now)).order_by(Delivery.id).limit(limit)))
    outcome: dict[str, int] = {}
    for delivery_id in ids:
        status = deliver(delivery_id, now=now)
        outcome[status] = outcome.get(status, 0) + 1
    return outcome


def retry_now(delivery_id: int) -> str:
    """Send a failed or waiting delivery again at once (a person asked for it)."""
    with unscoped():
        row = db.session.get(Delivery, delivery_id)
        if row is not None and row.status == "failed":
            row.status = "retrying"
            row.next_attempt_at = None
            db.session.commit()
    return deliver(delivery_id, force=True)


# --- in-app ----------------------------------------------------------------------

def unread_count(user: Any) -> int:
    if user is None or getattr(user, "tenant_id", None) is None:
        return 0
    with tenant_scope(user.tenant_id):
        return db.session.scalar(select(func.count(Notification.id)).where(
            Notification.user_id == user.id, Notification.read_at.is_(None))) or 0


def list_notifications(user: Any, *, unread_only: bool = False, before: int | None = None,
                       limit: int = 50) -> list[Notification]:
    with tenant_scope(user.tenant_id):
        query = select(Notification).where(Notification.user_id == user.id)
        if unread_only:
            query = query.where(Notification.read_at.is_(None))
        if before is not None:
            query = query.where(Notification.id < before)
        return list(db.session.scalars(query.order_by(Notification.id.desc()).limit(limit)))


def mark_read(user: Any, notification_id: int | None = None) -> int:
    """Mark one of the user's notifications (or all of them) read; returns how many
    changed. Another user's notification is not found."""
    from portal.errors import NotFoundError

    with tenant_scope(user.tenant_id):
        query = update(Notification).where(Notification.user_id == user.id,
                                           Notification.read_at.is_(None))
        if notification_id is not None:
            exists = db.session.scalar(select(Notification.id).where(
                Notification.id == notification_id, Notification.user_id == user.id))
            if exists is None:
                raise NotFoundError(f"notification {notification_id}")
            query = query.where(Notification.id == notification_id)
        result = cast("CursorResult[Any]", db.session.execute(
            query.values(read_at=_now()).execution_options(synchronize_session=False)))
        changed = result.rowcount
        db.session.commit()
        return changed


def init_notifications(app) -> None:
    """``unread_notifications()`` for the navigation bar's badge."""
    @app.context_processor
    def _unread():
        def unread_notifications() -> int:
            from flask import g

            user = getattr(g, "user", None)
            if user is None or not getattr(user, "is_authenticated", False):
                return 0
            return unread_count(user)
        return {"unread_notifications": unread_notifications}
