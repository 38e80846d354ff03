"""``GET /api/ml/audit``: the audit log (admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query

from mlrig.api.deps import PlatformDep
from mlrig.api.security import Admin

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", summary="Audit log entries, newest first")
def list_audit(
    platform: PlatformDep,
    _: Admin,
    since: datetime | None = Query(default=None, description="ISO 8601 time"),
    actor: str | None = None,
    action: str | None = None,
    limit: int = Query(default=100, ge=1, le=10_000),
) -> list[dict[str, Any]]:
    return platform.audit.query(since=since, actor=actor, action=action, limit=limit)
