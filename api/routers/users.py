"""``/api/ml/users``: user accounts (admin)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, status
from pydantic import Field

from mlrig.api.deps import PlatformDep
from mlrig.api.openapi import errors
from mlrig.api.pagination import whole
from mlrig.api.schemas import Me, Page, User
from mlrig.api.security import Admin, Reader
from mlrig.api.types import InputModel
from mlrig.security.service import USER_NAME_PATTERN

router = APIRouter(prefix="/users", tags=["users"])


class UserCreate(InputModel):
    # the pattern is the schema's; the service checks it with a message saying what is wrong
    name: str = Field(
        min_length=1, max_length=255, json_schema_extra={"pattern": USER_NAME_PATTERN}
    )
    role: Literal["viewer", "developer", "deployer", "admin"] = "viewer"
    email: str | None = Field(default=None, max_length=320)


@router.get("", summary="List users", response_model_exclude_unset=True)
def list_users(platform: PlatformDep, _: Admin) -> Page[User]:
    """Every user (one page: ``next_cursor`` is always null)."""
    return whole(platform.security.list_users())  # type: ignore[return-value]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a user",
    responses=errors(409, e409="A user of that name exists."),
    response_model_exclude_unset=True,
)
def create_user(body: UserCreate, request: Request, platform: PlatformDep, _: Admin) -> User:
    user = platform.security.create_user(name=body.name, role=body.role, email=body.email)
    request.state.audit_resource_id = user["id"]
    return user


@router.get("/me", summary="The authenticated user")
def whoami(principal: Reader) -> Me:
    return Me(name=principal.name, role=principal.role)
