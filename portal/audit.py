"""The audit trail: one row per billing-relevant change, written in the change's transaction."""

from __future__ import annotations

import datetime as dt
import json
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

from flask_appbuilder import Model
from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db
from tenants.scoping import TenantIsolated

current_request_id: ContextVar[str | None] = ContextVar("billfold_request_id", default=None)


@dataclass(frozen=True)
class Actor:
    """Who made a change: a user, an API key, or the system (CLI, jobs, webhooks)."""

    kind: str  # "user" | "api_key" | "system"
    id: int | None
    label: str

    @classmethod
    def for_user(cls, user: Any) -> Actor:
        return cls("user", user.id, user.username)

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls("system", None, label)


class AuditEvent(TenantIsolated, Model):
    """An audit row. Rows without a tenant record platform-level changes and are
    visible to Platform Admins only."""

    __tablename__ = "audit_event"
    __tenant_column__: ClassVar[str] = "tenant_id"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), index=True
    )
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenant.id", ondelete="RESTRICT"), index=True
    )
    actor_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    actor_id: Mapped[int | None] = mapped_column(Integer)
    actor_label: Mapped[str] = mapped_column(String(256), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    object_type: Mapped[str] = mapped_column(String(64), nullable=False)
    object_id: Mapped[str | None] = mapped_column(String(64))
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64))

    tenant = relationship("Tenant")

    @property
    def changes(self) -> str:
        before = json.loads(self.before) if self.before else {}
        after = json.loads(self.after) if self.after else {}
        keys = sorted(set(before) | set(after))
        return "; ".join(f"{k}: {before.get(k)!r} → {after.get(k)!r}" for k in keys)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def snapshot(obj: Any, fields: list[str]) -> dict[str, Any]:
    """The audited values of ``fields`` on ``obj``."""
    return {f: _jsonable(getattr(obj, f)) for f in fields}


def record(
    action: str,
    obj: Any,
    actor: Actor,
    *,
    tenant_id: int | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit row to the current transaction (the caller commits)."""
    if obj is not None and getattr(obj, "id", None) is None:
        db.session.flush()
    event = AuditEvent(
        tenant_id=tenant_id,
        actor_kind=actor.kind,
        actor_id=actor.id,
        actor_label=actor.label,
        action=action,
        object_type=type(obj).__name__ if obj is not None else "-",
        object_id=str(obj.id) if obj is not None else None,
        before=json.dumps(before, sort_keys=True) if before is not None else None,
        after=json.dumps(after, sort_keys=True) if after is not None else None,
        request_id=current_request_id.get(),
    )
    db.session.add(event)
    return event
