"""``GET /api/ml/model-versions``: search versions across every model."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Query

from mlrig.api.deps import PlatformDep
from mlrig.api.routers.models import VersionFilters
from mlrig.api.schemas import Page, Version
from mlrig.api.security import Reader

router = APIRouter(prefix="/model-versions", tags=["models"])


@router.get("", summary="Search model versions across models", response_model_exclude_unset=True)
def search_versions(
    platform: PlatformDep,
    _: Reader,
    filters: VersionFilters,
    name: str | None = Query(default=None, description="Exact model name."),
    name_prefix: str | None = Query(default=None, description="Model names starting with this."),
    q: str | None = Query(default=None, description="Model names containing this."),
) -> Page[Version]:
    """One page of versions: ``{"items": [...], "next_cursor": "..." | null}``."""
    query = dataclasses.replace(filters, name=name, name_prefix=name_prefix, name_contains=q)
    return platform.registry.search_versions(query)
