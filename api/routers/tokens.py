"""``/api/ml/tokens``: API tokens. Everyone manages their own; admins anyone's."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field

from mlrig.api.deps import PlatformDep
from mlrig.api.security import Reader
from mlrig.errors import NotFoundError
from mlrig.security import Permission

router = APIRouter(prefix="/tokens", tags=["tokens"])


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(default=None, description="Default: yourself; others: admin only.")
    name: str = Field(default="default", min_length=1, max_length=255)
    ttl_days: int | None = Field(default=None, ge=1, le=3650)


@router.get("", summary="List tokens (yours; all for an admin)")
def list_tokens(platform: PlatformDep, principal: Reader) -> list[dict[str, Any]]:
    mine = None if principal.can(Permission.ADMIN) else principal.name
    return platform.security.list_tokens(user=mine)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a token (shown once)")
def create_token(
    body: TokenCreate, request: Request, platform: PlatformDep, principal: Reader
) -> dict[str, Any]:
    user = body.user or principal.name
    if user != principal.name:
        principal.require(Permission.ADMIN)
    token = platform.security.create_token(user=user, name=body.name, ttl_days=body.ttl_days)
    request.state.audit_resource_id = token["id"]
    return token


@router.delete("/{id}", summary="Revoke a token")
def revoke_token(id: str, platform: PlatformDep, principal: Reader) -> dict[str, Any]:
    if not principal.can(Permission.ADMIN):
        own = platform.security.list_tokens(user=principal.name)
        if id not in {t["id"] for t in own} | {t["prefix"] for t in own}:
            msg = f"no token {id!r} of yours"
            raise NotFoundError(msg)
    return platform.security.revoke_token(id)
