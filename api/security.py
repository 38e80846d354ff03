"""Authentication and permission checks: the dependencies routes declare, and the one
permission map derived from them.

Every route declares the permission it needs with one of the ``Annotated`` aliases
(``Reader``, ``Predictor``, ``Writer``, ``Deployer``, ``Approver``, ``Deleter``, ``Admin``),
or that it is public with ``Public``. These aliases are the plugin API too
(``from mlrig.api.security import Writer``). A plugin route that declares neither needs
the read permission.

:func:`route_permissions` reads what each route declared; the request guard
(:class:`mlrig.api.middleware.RequestGuardMiddleware`) enforces it from the headers alone,
before the body is read, and caches the principal on the request state, where these
dependencies find it. With ``[auth] enabled = false`` (honoured on loopback only) every
request acts as the local operator with the admin role.

A token's scopes (:mod:`mlrig.security.scopes`) narrow its role everywhere: the guard's
check is :meth:`Principal.require`, which honours them. ``Predictor`` routes (predictions)
check tokens through a :class:`mlrig.serving.auth.TokenCache` (``[serving]
token_cache_seconds``): no database round trip per prediction; a revocation takes effect
within that TTL. Which deployment a scoped token may predict from is the route's check
(:meth:`Principal.require_predict`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mlrig.api.deps import get_platform
from mlrig.errors import MlrigError
from mlrig.security import Permission, Principal
from mlrig.security.roles import PERMISSIONS, ROLES

__all__ = [
    "DEFAULT_PERMISSION",
    "PUBLIC",
    "Admin",
    "Approver",
    "Deleter",
    "Deployer",
    "Predictor",
    "Public",
    "Reader",
    "RoutePermission",
    "Writer",
    "authenticate",
    "bearer_token",
    "cached_principal",
    "declared_permission",
    "require",
    "route_permissions",
]

LOCAL_OPERATOR = Principal(name="local", role="admin")
#: what a route that declares nothing needs (plugin routes, mounted apps)
DEFAULT_PERMISSION = Permission.READ
#: the permission map's word for a route anyone may call
PUBLIC = "public"

# Declares the bearer token in the OpenAPI schema (the /docs "Authorize" button) for every
# operation whose dependency uses it; the guard, not this object, checks the token.
_bearer_scheme = HTTPBearer(
    scheme_name="bearer",
    description="An API token: `mlrig tokens create --user NAME`.",
    auto_error=False,
)
_BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]


def bearer_token(headers: Any) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    header = headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def token_cache(platform: Any) -> Any:
    """The platform's :class:`~mlrig.serving.auth.TokenCache` for prediction routes (made on
    first use with ``[serving] token_cache_seconds``)."""
    cache = getattr(platform, "_mlrig_token_cache", None)
    if cache is None:
        from mlrig.serving.auth import TokenCache

        cache = TokenCache(platform.security, platform.settings.serving.token_cache_seconds)
        platform._mlrig_token_cache = cache
    return cache


def cached_principal(platform: Any, token: str | None) -> Principal | None:
    """The principal of ``token`` from the prediction routes' cache without blocking
    (``None``: not cached; then :func:`resolve_principal` with ``cached=True`` in a
    thread). Raises the cached refusal."""
    if not platform.settings.auth.enabled:
        return LOCAL_OPERATOR
    return token_cache(platform).peek(token)


def resolve_principal(platform: Any, token: str | None, *, cached: bool = False) -> Principal:
    """The principal a request with ``token`` acts as (blocking: it may read the database);
    ``cached``: through the prediction routes' token cache."""
    if not platform.settings.auth.enabled:
        return LOCAL_OPERATOR
    if cached:
        return token_cache(platform).authenticate(token)
    return platform.security.authenticate(token)


def authenticate(request: Request) -> Principal:
    """The principal of this request (cached on ``request.state``)."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    principal = resolve_principal(get_platform(request), bearer_token(request.headers))
    request.state.principal = principal
    return principal


def require(permission: Permission) -> Any:
    """A dependency that authenticates and checks ``permission``.

    The guard already did both before the body was read; this repeats the check (from the
    cached principal) so that a route is safe even in an app built without the guard.
    """

    def check(request: Request, _credentials: _BearerCredentials) -> Principal:
        principal = authenticate(request)
        principal.require(permission)
        return principal

    check.__name__ = f"require_{permission.value}"
    check.mlrig_permission = permission  # type: ignore[attr-defined]
    return Depends(check)


def _optional_principal(request: Request) -> Principal | None:
    """The principal of a valid token sent to a public route, else ``None``."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    token = bearer_token(request.headers)
    platform = get_platform(request)
    if token is None and platform.settings.auth.enabled:
        return None
    try:
        principal = resolve_principal(platform, token)
    except MlrigError:  # a bad token on a public route: answer as to anyone
        return None
    request.state.principal = principal
    return principal


_optional_principal.mlrig_public = True  # type: ignore[attr-defined]

Reader = Annotated[Principal, require(Permission.READ)]
#: predictions: viewers and up, and tokens whose scopes include some ``predict`` entry
Predictor = Annotated[Principal, require(Permission.PREDICT)]
Writer = Annotated[Principal, require(Permission.WRITE)]
Deployer = Annotated[Principal, require(Permission.DEPLOY)]
Approver = Annotated[Principal, require(Permission.APPROVE)]
Deleter = Annotated[Principal, require(Permission.DELETE)]
Admin = Annotated[Principal, require(Permission.ADMIN)]
#: a route anyone may call; the value is the principal of a valid token, else ``None``
Public = Annotated[Principal | None, Depends(_optional_principal)]


# --- the permission map -----------------------------------------------------------------

_RANK = {p: ROLES.index(role) for p, role in PERMISSIONS.items()}
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def _declarations(dependant: Any) -> Iterator[Permission | str]:
    for sub in getattr(dependant, "dependencies", None) or ():
        call: Callable[..., Any] | None = getattr(sub, "call", None)
        permission = getattr(call, "mlrig_permission", None)
        if permission is not None:
            yield permission
        elif getattr(call, "mlrig_public", False):
            yield PUBLIC
        yield from _declarations(sub)


def declared_permission(route: Any) -> Permission | str | None:
    """What ``route`` declared: a :class:`Permission`, :data:`PUBLIC`, or ``None``.

    A route with several permission dependencies needs all of them; the one held by the
    fewest roles is returned. A permission wins over ``Public``.
    """
    found = list(_declarations(getattr(route, "dependant", None)))
    permissions = [p for p in found if isinstance(p, Permission)]
    if permissions:
        return max(permissions, key=lambda p: _RANK[p])
    return PUBLIC if found else None


@dataclass(frozen=True)
class RoutePermission:
    """One row of the permission map."""

    method: str
    path: str
    #: a :class:`Permission`, or :data:`PUBLIC`
    permission: Permission | str
    name: str | None = None

    @property
    def label(self) -> str:
        """``public`` or the permission's value (``read``, ``write``...)."""
        if isinstance(self.permission, Permission):
            return self.permission.value
        return self.permission


def route_permissions(app: FastAPI) -> list[RoutePermission]:
    """The permission map: ``(method, path, permission)`` of every route of ``app``,
    plugin routes included, in routing order. This is what the request guard enforces.
    """
    from mlrig.api.middleware import route_table

    rows = []
    for entry in route_table(app):
        path = _CONVERTOR.sub(r"{\1}", entry.path)  # as the OpenAPI schema writes it
        methods = {"WEBSOCKET"} if entry.websocket else (entry.methods or {"*"})
        for method in sorted(methods):
            rows.append(RoutePermission(method, path, entry.permission, entry.name))
    return rows
