"""``GET /api/ml/audit``: the audit log (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from mlrig.api.deps import PlatformDep
from mlrig.api.pagination import offset_page
from mlrig.api.schemas import AuditEntry, Page
from mlrig.api.security import Admin
from mlrig.api.types import Cursor, UtcDatetime, since_query

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", summary="Audit log entries, newest first", response_model_exclude_unset=True)
def list_audit(
    platform: PlatformDep,
    _: Admin,
    since: UtcDatetime | None = since_query("Entries at or after this time."),
    actor: str | None = None,
    action: str | None = None,
    limit: int = Query(default=100, ge=1, le=10_000),
    cursor: Cursor = None,
) -> Page[AuditEntry]:
    """One page of entries: ``{"items": [...], "next_cursor": ...}``."""
    return offset_page(  # type: ignore[return-value]
        lambda n, skip: platform.audit.query(
            since=since, actor=actor, action=action, limit=n, offset=skip
        ),
        limit=limit,
        offset=0,
        cursor=cursor,
    )
