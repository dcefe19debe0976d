"""Tenants and the users who belong to them."""

from __future__ import annotations

import datetime as dt
import enum
from typing import ClassVar

from flask_appbuilder import Model
from flask_appbuilder.security.sqla.models import User
from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Integer, String, event, func
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from permissions.matrix import PLATFORM_ADMIN, TENANT_ROLES
from tenants.scoping import TenantIsolated, tenant_scope


class TenantStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Tenant(TenantIsolated, Model):
    """A customer organisation of the platform."""

    __tablename__ = "tenant"
    __tenant_column__: ClassVar[str] = "id"
    __table_args__ = (
        CheckConstraint("status in ('active', 'suspended')", name="ck_tenant_status"),
        CheckConstraint("length(currency) = 3", name="ck_tenant_currency"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    slug: Mapped[str] = mapped_column(String(63), nullable=False, unique=True)
    currency: Mapped[str] = mapped_column(String(3), nullable=False, default="USD")
    timezone: Mapped[str] = mapped_column(String(64), nullable=False, default="UTC")
    billing_email: Mapped[str] = mapped_column(String(320), nullable=False)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False, default=TenantStatus.ACTIVE.value
    )
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    suspended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    users: Mapped[list[BillfoldUser]] = relationship(
        "BillfoldUser", back_populates="tenant", foreign_keys="BillfoldUser.tenant_id"
    )

    @property
    def is_active(self) -> bool:
        return self.status == TenantStatus.ACTIVE.value

    def __repr__(self) -> str:
        return self.name


class BillfoldUser(TenantIsolated, User):
    """FAB's user with the tenant it belongs to (none for Platform Admins).

    Users are readable without a tenant scope (logging in needs that); within a
    tenant scope only that tenant's users are visible.
    """

    __tablename__ = "ab_user"
    __readable_without_scope__: ClassVar[bool] = True

    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenant.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    invitation_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    invitation_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    tenant: Mapped[Tenant | None] = relationship(
        Tenant, back_populates="users", foreign_keys=[tenant_id]
    )

    @property
    def is_active(self) -> bool:  # Flask-Login and FAB's login both consult this
        if not self.active:
            return False
        if self.tenant_id is None:
            return True
        # Login runs before any scope exists: read the user's own tenant in its scope.
        with tenant_scope(self.tenant_id):
            return self.tenant is not None and self.tenant.is_active

    @property
    def role_names(self) -> list[str]:
        return sorted(r.name for r in self.roles)

    @property
    def invitation_pending(self) -> bool:
        return self.invitation_token_hash is not None

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


@event.listens_for(Session, "before_flush")
def _check_membership(session: Session, flush_context, instances) -> None:
    """A user belongs to at most one tenant; Platform Admins belong to none."""
    for obj in list(session.new) + list(session.dirty):
        if not isinstance(obj, BillfoldUser):
            continue
        names = {r.name for r in obj.roles}
        if obj.tenant_id is not None or obj.tenant is not None:
            if PLATFORM_ADMIN in names:
                raise MembershipError("a tenant user cannot be a Platform Admin")
        elif names & set(TENANT_ROLES):
            raise MembershipError("a Tenant Admin or Billing Contact must belong to a tenant")


class MembershipError(ValueError):
    """A user's roles contradict their tenant membership."""
