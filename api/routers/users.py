"""``/api/ml/users``: user accounts (admin)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field

from mlrig.api.deps import PlatformDep
from mlrig.api.security import Admin, Reader

router = APIRouter(prefix="/users", tags=["users"])


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255)
    role: Literal["viewer", "developer", "deployer", "admin"] = "viewer"
    email: str | None = Field(default=None, max_length=320)


@router.get("", summary="List users")
def list_users(platform: PlatformDep, _: Admin) -> list[dict[str, Any]]:
    return platform.security.list_users()


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a user")
def create_user(body: UserCreate, request: Request, platform: PlatformDep, _: Admin) -> Any:
    user = platform.security.create_user(name=body.name, role=body.role, email=body.email)
    request.state.audit_resource_id = user["id"]
    return user


@router.get("/me", summary="The authenticated user")
def whoami(principal: Reader) -> dict[str, Any]:
    return {"name": principal.name, "role": principal.role}
