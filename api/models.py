"""API keys: named, scoped, optionally expiring, revocable; stored hashed."""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

from flask_appbuilder import Model
from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from tenants.scoping import TenantIsolated

SCOPES = ("usage:write", "usage:read", "billing:read", "platform:read")
TENANT_SCOPES = ("usage:write", "usage:read", "billing:read")
PLATFORM_SCOPES = SCOPES


class ApiKey(TenantIsolated, Model):
    """A key of one tenant (``tenant_id``) or of the platform (no tenant). Only the
    SHA-256 of the secret is kept, and its first characters for display. Readable
    without a tenant scope, since a request is authenticated before its scope is
    known; within a tenant scope only that tenant's keys are visible."""

    __tablename__ = "api_key"
    __readable_without_scope__: ClassVar[bool] = True

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenant.id", ondelete="RESTRICT"), nullable=True, index=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    scopes: Mapped[str] = mapped_column(Text, nullable=False)  # space separated
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now())
    created_by: Mapped[str] = mapped_column(String(256), nullable=False)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()

    @property
    def is_platform(self) -> bool:
        return self.tenant_id is None

    def status(self, now: dt.datetime | None = None) -> str:
        now = now or dt.datetime.now(dt.UTC)
        if self.revoked_at is not None:
            return "revoked"
        expires = self.expires_at
        if expires is not None:
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.UTC)
            if expires <= now:
                return "expired"
        return "active"
