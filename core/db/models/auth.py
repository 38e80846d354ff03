"""Users, roles, API tokens and the audit log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, false, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mlrig.db.models.base import Base, choices_check, created_at, json_object, uuid_pk
from mlrig.db.types import JSONType, UTCDateTime, utcnow

#: The roles, each including the rights of the ones before it.
ROLES = ("viewer", "developer", "deployer", "admin")


class User(Base):
    """A person or a service account; ``role`` is one of :data:`ROLES`."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(choices_check("role", ROLES), name="role"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(255), unique=True)
    role: Mapped[str] = mapped_column(String(20), default="viewer", server_default="viewer")
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = created_at()
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    tokens: Mapped[list[ApiToken]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )


class ApiToken(Base):
    """An API token: only its sha256 is stored; ``token_prefix`` finds it without a scan."""

    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    token_prefix: Mapped[str] = mapped_column(String(32), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = created_at()
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: what the token is narrowed to (``["predict:*"]``); None: all its role allows
    scopes: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)

    user: Mapped[User] = relationship(back_populates="tokens")


class AuditLog(Base):
    """One audited action: who did what to which resource, with what outcome."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, server_default=func.now())
    actor: Mapped[str | None] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(100))
    resource_type: Mapped[str | None] = mapped_column(String(100))
    resource_id: Mapped[str | None] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(50))
    request_id: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = json_object(nullable=False)


class PlatformSecret(Base):
    """A secret the installation makes for itself once (migration 0010): the key of the
    PII hash mask. The database already holds what such a key protects (the clear
    values), so keeping it there gives no reader of the database anything new."""

    __tablename__ = "platform_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: hex of the secret's bytes
    value: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = created_at()
