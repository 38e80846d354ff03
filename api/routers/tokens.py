"""``/api/ml/tokens``: API tokens. Everyone manages their own; admins anyone's."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, status
from pydantic import Field

from mlrig.api.deps import PlatformDep
from mlrig.api.openapi import errors
from mlrig.api.pagination import whole
from mlrig.api.schemas import NewToken, Page, Token
from mlrig.api.security import Reader
from mlrig.api.types import InputModel
from mlrig.security.scopes import MAX_SCOPES, SCOPE_PATTERN

router = APIRouter(prefix="/tokens", tags=["tokens"])


class TokenCreate(InputModel):
    user: Annotated[str, Field(min_length=1, max_length=255)] | None = Field(
        default=None, description="Default: yourself; others: admin only."
    )
    name: str = Field(default="default", min_length=1, max_length=255)
    ttl_days: int | None = Field(default=None, ge=1, le=3650)
    scopes: (
        list[Annotated[str, Field(min_length=1, max_length=300, pattern=SCOPE_PATTERN)]] | None
    ) = Field(
        default=None,
        min_length=1,
        max_length=MAX_SCOPES,
        description=(
            "Narrow the token within the user's role: permissions (`read`, `write`, ...), "
            "`predict:*` or `predict:<deployment name or id>`. Null: everything the role "
            "allows. A token with scopes can create only tokens within its own scopes."
        ),
        examples=[["predict:churn"]],
    )


@router.get("", summary="List tokens (yours; all for an admin)", response_model_exclude_unset=True)
def list_tokens(platform: PlatformDep, principal: Reader) -> Page[Token]:
    """The tokens (one page: ``next_cursor`` is always null); never their secrets."""
    return whole(platform.security.list_tokens(actor=principal))  # type: ignore[return-value]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a token (shown once)",
    responses=errors(
        403,
        404,
        422,
        e403="Another user's token (admin only), or scopes beyond the caller's own.",
        e404="No such user.",
        e422="A malformed scope, or one beyond the user's role.",
    ),
    response_model_exclude_unset=True,
)
def create_token(
    body: TokenCreate, request: Request, platform: PlatformDep, principal: Reader
) -> NewToken:
    user = body.user or principal.name
    token = platform.security.create_token(
        user=user, name=body.name, ttl_days=body.ttl_days, scopes=body.scopes, actor=principal
    )
    request.state.audit_resource_id = token["id"]
    return token


@router.delete("/{id}", summary="Revoke a token", response_model_exclude_unset=True)
def revoke_token(id: str, platform: PlatformDep, principal: Reader) -> Token:
    return platform.security.revoke_token(id, actor=principal)
