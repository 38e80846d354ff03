"""Authentication and permission checks as FastAPI dependencies.

Every route declares the permission it needs with one of the ``Annotated`` aliases
(``Reader``, ``Writer``, ``Deployer``, ``Approver``, ``Admin``); a route without one is
public (health, docs). With ``[auth] enabled = false`` (honoured on loopback only) every
request acts as the local operator with the admin role.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mlrig.api.deps import get_platform
from mlrig.security import Permission, Principal

LOCAL_OPERATOR = Principal(name="local", role="admin")


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def authenticate(request: Request) -> Principal:
    """The principal of this request (cached on ``request.state``)."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    platform = get_platform(request)
    if not platform.settings.auth.enabled:
        principal = LOCAL_OPERATOR
    else:
        principal = platform.security.authenticate(_bearer(request))
    request.state.principal = principal
    return principal


def require(permission: Permission) -> object:
    """A dependency that authenticates and checks ``permission``."""

    def check(request: Request) -> Principal:
        principal = authenticate(request)
        principal.require(permission)
        return principal

    check.__name__ = f"require_{permission.value}"
    return Depends(check)


Reader = Annotated[Principal, require(Permission.READ)]
Writer = Annotated[Principal, require(Permission.WRITE)]
Deployer = Annotated[Principal, require(Permission.DEPLOY)]
Approver = Annotated[Principal, require(Permission.APPROVE)]
Admin = Annotated[Principal, require(Permission.ADMIN)]
Deleter = Annotated[Principal, require(Permission.DELETE)]
