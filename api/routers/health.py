"""``GET /api/ml/health``: database, storage and plugin status."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from mlrig import __version__
from mlrig.api.deps import PlatformDep

router = APIRouter(tags=["health"])


@router.get("/health", summary="Platform health check")
def health(platform: PlatformDep) -> Any:
    """Report the database, the storage backend and the plugins; 503 when a part is down."""
    report = {"version": __version__, **platform.health()}
    return JSONResponse(report, status_code=503 if report["status"] == "error" else 200)
