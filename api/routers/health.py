"""``GET /api/ml/health``: database, storage and plugin status."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from mlrig import __version__
from mlrig.api.deps import PlatformDep
from mlrig.api.schemas import Health
from mlrig.api.security import Public

router = APIRouter(tags=["health"])


def public_view(report: dict[str, Any]) -> dict[str, Any]:
    """Only the status of each part: no paths, versions, URLs or error texts."""
    checks = report.get("checks", {})
    return {
        "status": report["status"],
        "checks": {name: {"status": check.get("status")} for name, check in checks.items()},
    }


@router.get(
    "/health",
    summary="Platform health check",
    responses={
        200: {"model": Health, "description": "Every part is up (or degraded)."},
        503: {"model": Health, "description": "The database or the storage is down."},
    },
)
def health(platform: PlatformDep, principal: Public) -> JSONResponse:
    """The status of the database, the storage backend and the plugins (503 when a part is
    down). Anyone gets the status of each part; a valid token also gets the details
    (versions, backends, the database revision, plugin names and errors)."""
    report = platform.health()
    body = {"version": __version__, **report} if principal is not None else public_view(report)
    return JSONResponse(body, status_code=503 if report["status"] == "error" else 200)
