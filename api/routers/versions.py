"""``GET /api/ml/model-versions``: search versions across every model."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query

from mlrig.api.deps import PlatformDep
from mlrig.api.routers.models import version_query
from mlrig.api.security import Reader

router = APIRouter(prefix="/model-versions", tags=["models"])


@router.get("", summary="Search model versions across models")
def search_versions(
    platform: PlatformDep,
    _: Reader,
    name: str | None = Query(default=None, description="Exact model name."),
    name_prefix: str | None = Query(default=None, description="Model names starting with this."),
    q: str | None = Query(default=None, description="Model names containing this."),
    framework: str | None = None,
    model_type: str | None = None,
    stage: str | None = None,
    tag: list[str] | None = Query(default=None, description="key:value, repeatable."),
    created_by: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    metric: list[str] | None = Query(default=None, description="e.g. 'accuracy>0.9'."),
    sort: str = Query(
        default="-created_at", description="created_at, name, metrics.NAME; '-' descending."
    ),
    limit: int = Query(default=50, ge=1, le=1000),
    cursor: str | None = None,
) -> Any:
    """One page of versions: ``{"items": [...], "next_cursor": "..." | null}``."""
    query = version_query(
        name=name,
        name_prefix=name_prefix,
        name_contains=q,
        framework=framework,
        model_type=model_type,
        stage=stage,
        tag=tag,
        created_by=created_by,
        created_after=created_after,
        created_before=created_before,
        metric=metric,
        sort=sort,
        limit=limit,
        cursor=cursor,
    )
    return platform.registry.search_versions(query)
