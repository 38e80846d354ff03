"""``/api/ml/approvals``: approval requests for stage changes."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from mlrig.api.deps import PlatformDep
from mlrig.api.openapi import errors
from mlrig.api.pagination import whole
from mlrig.api.schemas import ApprovalRequest, Page
from mlrig.api.security import Approver, Reader
from mlrig.api.types import Description, InputModel

router = APIRouter(prefix="/approvals", tags=["approvals"])


class Decision(InputModel):
    comment: Description | None = None


@router.get("", summary="List approval requests", response_model_exclude_unset=True)
def list_requests(
    platform: PlatformDep,
    _: Reader,
    status: Literal["pending", "approved", "rejected", "all"] = "pending",
    model: str | None = None,
) -> Page[ApprovalRequest]:
    """The requests (one page: ``next_cursor`` is always null)."""
    requests = platform.lifecycle.list_requests(
        status=None if status == "all" else status, model=model
    )
    return whole(requests)  # type: ignore[return-value]


@router.post(
    "/{id}/approve",
    summary="Approve a request (another user, deployer role)",
    responses=errors(409, e409="Already decided, or you requested it yourself."),
    response_model_exclude_unset=True,
)
def approve(
    id: str, platform: PlatformDep, actor: Approver, body: Decision | None = None
) -> ApprovalRequest:
    return platform.lifecycle.decide(
        id, approve=True, actor=actor, comment=body.comment if body else None
    )


@router.post(
    "/{id}/reject",
    summary="Reject a request",
    responses=errors(409, e409="Already decided."),
    response_model_exclude_unset=True,
)
def reject(
    id: str, platform: PlatformDep, actor: Approver, body: Decision | None = None
) -> ApprovalRequest:
    return platform.lifecycle.decide(
        id, approve=False, actor=actor, comment=body.comment if body else None
    )
