"""The audit log: who did what to which resource, with what outcome."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mlrig.db.models.auth import AuditLog
from mlrig.validation import INT64_MAX, as_utc, check_int, scrub

if TYPE_CHECKING:
    from mlrig.db import Database
    from mlrig.hooks import Hooks


def entry_view(entry: AuditLog) -> dict[str, Any]:
    return {
        "id": str(entry.id),
        "at": entry.at.isoformat(),
        "actor": entry.actor,
        "action": entry.action,
        "resource_type": entry.resource_type,
        "resource_id": entry.resource_id,
        "outcome": entry.outcome,
        "request_id": entry.request_id,
        "details": entry.details or {},
    }


def _fit(text: str | None, length: int) -> str | None:
    """Scrubbed ``text`` cut to ``length`` characters (a column's size)."""
    cleaned = scrub(text)
    return cleaned[:length] if isinstance(cleaned, str) else cleaned


class AuditTrail:
    """Writes and reads audit entries; every write also fires ``mlrig_audit_recorded``."""

    def __init__(self, db: Database, hooks: Hooks) -> None:
        self.db = db
        self.hooks = hooks

    def record(
        self,
        *,
        actor: str | None,
        action: str,
        outcome: str,
        resource_type: str | None = None,
        resource_id: str | None = None,
        request_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write one entry (its own transaction: it survives a failed operation).

        Text is scrubbed (:func:`mlrig.validation.scrub`): a request refused for a NUL
        character in its path is still recorded, with U+FFFD in its place; text longer
        than its column (a 4,000-character id in a path) is cut to fit, so the entry is
        written on PostgreSQL too (it was lost there, as VARCHAR refuses it)."""
        with self.db.session() as session:
            entry = AuditLog(
                actor=_fit(actor, 255),
                action=_fit(action, 100) or "",
                outcome=outcome,
                resource_type=_fit(resource_type, 100),
                resource_id=_fit(resource_id, 255),
                request_id=_fit(request_id, 255),
                details=scrub(details or {}),
            )
            session.add(entry)
            session.flush()
            view = entry_view(entry)
        self.hooks.audit_recorded(view)
        return view

    def query(
        self,
        *,
        since: datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Entries, newest first (then by id, so pages by offset do not overlap).

        A naive ``since`` is taken as UTC (:func:`mlrig.validation.as_utc`)."""
        if since is not None:
            since = as_utc(since, field="since")
        check_int(limit, field="limit", low=1, high=INT64_MAX)
        check_int(offset, field="offset", low=0, high=INT64_MAX)
        stmt = (
            select(AuditLog)
            .order_by(AuditLog.at.desc(), AuditLog.id.desc())
            .limit(limit)
            .offset(offset)
        )
        if since is not None:
            stmt = stmt.where(AuditLog.at >= since)
        if actor is not None:
            stmt = stmt.where(AuditLog.actor == actor)
        if action is not None:
            stmt = stmt.where(AuditLog.action == action)
        with self.db.session() as session:
            return [entry_view(e) for e in session.scalars(stmt)]
