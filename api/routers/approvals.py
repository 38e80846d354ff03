"""``/api/ml/approvals``: approval requests for stage changes."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from mlrig.api.deps import PlatformDep
from mlrig.api.security import Approver, Reader

router = APIRouter(prefix="/approvals", tags=["approvals"])


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str | None = Field(default=None, max_length=10_000)


@router.get("", summary="List approval requests")
def list_requests(
    platform: PlatformDep,
    _: Reader,
    status: Literal["pending", "approved", "rejected", "all"] = "pending",
    model: str | None = None,
) -> list[dict[str, Any]]:
    return platform.lifecycle.list_requests(status=None if status == "all" else status, model=model)


@router.post("/{id}/approve", summary="Approve a request (another user, deployer role)")
def approve(id: str, platform: PlatformDep, actor: Approver, body: Decision | None = None) -> Any:
    return platform.lifecycle.decide(
        id, approve=True, actor=actor, comment=body.comment if body else None
    )


@router.post("/{id}/reject", summary="Reject a request")
def reject(id: str, platform: PlatformDep, actor: Approver, body: Decision | None = None) -> Any:
    return platform.lifecycle.decide(
        id, approve=False, actor=actor, comment=body.comment if body else None
    )
