"""Pure-ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on the hot paths)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlrig.errors import MlrigError, PayloadTooLargeError

REQUEST_ID_HEADER = b"x-request-id"


class RequestIdMiddleware:
    """Give every request an id (the client's ``X-Request-ID`` or a new one) and echo it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or ()).get(REQUEST_ID_HEADER)
        request_id = incoming.decode("latin-1")[:128] if incoming else uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_PREFIX = "/api/ml/"
#: the MLflow-compatible routes (api/routers/mlflow_compat.py), audited like /api/ml
MLFLOW_PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
#: MLflow calls that are reads sent as POST, or the per-point logging a training loop
#: sends at a high rate (the run's own records hold what they wrote)
MLFLOW_NOT_AUDITED = frozenset(
    {
        "runs/search",
        "experiments/search",
        "logged-models/search",
        "runs/log-metric",
        "runs/log-batch",
        "runs/log-parameter",
        "runs/set-tag",
        "runs/log-inputs",
    }
)


def _mlflow_call(path: str) -> str | None:
    """``runs/create`` for ``/api/2.0/mlflow/runs/create`` (``artifacts/...`` for the
    artifact proxy), ``None`` for a path outside the MLflow-compatible routes."""
    for prefix in MLFLOW_PREFIXES:
        if path.startswith(prefix + "/") or path.startswith(prefix + "-artifacts/"):
            rest = path[len(prefix) :]
            return rest.removeprefix("-artifacts").lstrip("/")
    return None


def _outcome(status: int) -> str:
    if status in (401, 403):
        return "denied"
    return "success" if status < 400 else "failure"


class AuditMiddleware:
    """Write an audit entry for every mutating API call and every refused request.

    Runs after the response is sent, in a worker thread, so the entry costs the client
    nothing. The actor is the authenticated principal; the resource type is the first
    path segment after ``/api/ml``; the resource id is the route's ``id``/``name``
    parameter, or what the route put in ``request.state.audit_resource_id`` (creations).
    Predictions (routes that need the predict permission) are not audited one by one (the
    inference log records them), except when refused.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        mlflow_call = None if scope["path"].startswith(API_PREFIX) else _mlflow_call(scope["path"])
        if mlflow_call is None and not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            audited = scope.get("state", {}).get("audit", True)
            if mlflow_call is not None and mlflow_call in MLFLOW_NOT_AUDITED:
                audited = False
            if status in (401, 403) or (audited and scope["method"] in MUTATING_METHODS):
                await self._record(scope, status, mlflow_call)

    async def _record(self, scope: Scope, status: int, mlflow_call: str | None = None) -> None:
        import anyio

        state = scope.get("state", {})
        principal = state.get("principal")
        route = scope.get("route")
        params = scope.get("path_params") or {}
        if mlflow_call is not None:
            resource_type = "mlflow"
        else:
            resource_type = scope["path"][len(API_PREFIX) :].split("/", 1)[0] or None
        resource_id = state.get("audit_resource_id") or params.get("id") or params.get("name")
        action = getattr(route, "name", None) or f"{scope['method']} {scope['path']}"
        platform = scope["app"].state.platform
        try:
            await anyio.to_thread.run_sync(
                lambda: platform.audit.record(
                    actor=principal.name if principal else "anonymous",
                    action=action,
                    outcome=_outcome(status),
                    resource_type=resource_type,
                    resource_id=str(resource_id) if resource_id else None,
                    request_id=state.get("request_id"),
                    details={"method": scope["method"], "path": scope["path"], "status": status},
                )
            )
        except Exception:  # the audit write must never turn a response into an error
            import logging

            logging.getLogger("mlrig.api").exception("could not write the audit entry")


# --- the request guard: route, method, authentication, body size ------------------------


def online_read(fast: Any = None) -> Any:
    """Mark a route as a read on the online (prediction) path; a decorator, under
    ``@router.get``/``@router.post``.

    The guard then checks its token through the token cache, as for predictions (``[serving]
    token_cache_seconds``: a revocation takes effect within that TTL), and writes no audit
    entry per call (a read that happens to be a ``POST``; refusals are still audited).
    ``fast``: a raw ASGI handler (:mod:`mlrig.api.fastpath`) that the guard calls in place
    of FastAPI's routing and dependencies, after the same token, permission and body
    checks; it must answer exactly as the route does (the route stays the schema, and
    what runs when ``app.state.mlrig_fast_routes`` is false).
    """

    def mark(endpoint: Any) -> Any:
        endpoint.mlrig_online_read = True
        endpoint.mlrig_fast = fast
        return endpoint

    return mark


BodyClass = Literal["json", "metrics", "upload", "predict"]
#: the setting (``section.key``) that bounds each body class
BODY_LIMIT_SETTINGS: dict[str, str] = {
    "json": "api.max_body_bytes",
    "metrics": "api.max_metrics_body_bytes",
    "upload": "api.max_upload_bytes",
    "predict": "serving.max_body_bytes",  # predictions: the data plane's own limit
}


def _body_limit(settings: Any, setting: str) -> int:
    section, key = setting.split(".", 1)
    return int(getattr(getattr(settings, section), key))


def body_class(kind: BodyClass) -> Any:
    """A route dependency that puts the route in a body-size class.

    ``@router.post(..., dependencies=[body_class("upload")])``: the request guard then
    bounds the body by ``[api] max_upload_bytes`` instead of ``max_body_bytes``
    (``"predict"``: ``[serving] max_body_bytes``, as the data plane of ``mlrig serve``).
    """
    from fastapi import Depends

    def marker() -> None:
        return None

    marker.__name__ = f"body_class_{kind}"
    marker.mlrig_body_class = kind  # type: ignore[attr-defined]
    return Depends(marker)


@dataclass(frozen=True)
class RouteEntry:
    """What the guard knows of one route: where it matches and what it needs."""

    path: str
    name: str | None
    #: ``None`` for a mount (any method)
    methods: frozenset[str] | None
    #: a :class:`~mlrig.security.Permission` or ``"public"``
    permission: Any
    body_class: str
    regex: Any
    #: a WebSocket route (matched only by WebSocket connections)
    websocket: bool = False
    #: an online read (:func:`online_read`): the token cache, no audit entry per call
    online_read: bool = False
    #: a raw ASGI handler the guard calls in place of the framework (:func:`online_read`)
    fast: Any = None


def _body_class_of(dependant: Any) -> str:
    for sub in getattr(dependant, "dependencies", None) or ():
        kind = getattr(getattr(sub, "call", None), "mlrig_body_class", None)
        if kind is not None:
            return kind
        inner = _body_class_of(sub)
        if inner != "json":
            return inner
    return "json"


def _build_route_table(app: Any) -> list[RouteEntry]:
    from fastapi.routing import iter_route_contexts
    from starlette.routing import Mount, WebSocketRoute, compile_path
    from starlette.staticfiles import StaticFiles

    from mlrig.api.security import DEFAULT_PERMISSION, PUBLIC, declared_permission

    docs_paths = {
        getattr(app, name, None)
        for name in ("openapi_url", "docs_url", "redoc_url", "swagger_ui_oauth2_redirect_url")
    } - {None}
    table = []
    for context in iter_route_contexts(app.router.routes):
        original = context.original_route
        path = context.path
        if path is None:
            continue
        if isinstance(original, Mount):
            # static assets (the offline docs) are public; any other mounted app needs
            # the default permission unless it is marked ``mlrig_public``
            public = isinstance(original.app, StaticFiles) or getattr(
                original, "mlrig_public", False
            )
            regex = compile_path(path.rstrip("/") + "/{path:path}")[0]
            permission = PUBLIC if public else DEFAULT_PERMISSION
            methods = None
            kind = "json"
        else:
            regex = compile_path(path)[0]
            dependant = getattr(context, "dependant", None)
            declared = declared_permission(context) if dependant is not None else None
            if declared is None and (
                path in docs_paths or getattr(context.endpoint, "mlrig_public", False)
            ):
                declared = PUBLIC
            permission = declared or DEFAULT_PERMISSION
            methods = frozenset(context.methods or ())
            kind = _body_class_of(dependant)
        websocket = isinstance(original, WebSocketRoute)
        endpoint = getattr(context, "endpoint", None)
        online = bool(getattr(endpoint, "mlrig_online_read", False))
        fast = getattr(endpoint, "mlrig_fast", None)
        entry = RouteEntry(path, context.name, methods, permission, kind, regex, websocket)
        table.append(replace(entry, online_read=online, fast=fast))
    return table


def _route_lists(routes: list[Any]) -> list[list[Any]]:
    # the route lists of the app's router and of every included router, into included
    # routers: a route added to any of them later changes one of their lengths
    lists = [routes]
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            lists.extend(_route_lists(included.routes))
    return lists


#: how many leading path segments the guard's index keys on (``/api/ml/<component>``)
_INDEX_SEGMENTS = 3


def _segments_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/", _INDEX_SEGMENTS + 1)[1 : _INDEX_SEGMENTS + 1])


def _index_routes(table: list[RouteEntry]) -> tuple[dict[tuple[str, ...], list], list]:
    """HTTP routes by their leading literal segments, each list in the table's order with
    the routes that a parameter in those segments lets match anything (mounts too): a
    request is matched against its own bucket, not against every route."""
    http = [e for e in table if not e.websocket]

    def literal(e: RouteEntry) -> bool:
        return "{" not in "/".join(_segments_key(e.path)) and e.methods is not None

    keys = {_segments_key(e.path) for e in http if literal(e)}
    anywhere = [e for e in http if not literal(e)]
    buckets = {
        key: [e for e in http if not literal(e) or _segments_key(e.path) == key] for key in keys
    }
    return buckets, anywhere


def _cached_routes(app: Any) -> tuple[Any, ...]:
    # Runs on every request: the lengths of the route lists seen last time (a couple of
    # microseconds), the lists walked again and the table rebuilt only when one changed.
    cached = getattr(app.state, "mlrig_route_table", None)
    if cached is not None and cached[1] == tuple(map(len, cached[0])):
        return cached
    lists = _route_lists(app.router.routes)
    table = _build_route_table(app)
    cached = (lists, tuple(map(len, lists)), table, *_index_routes(table))
    app.state.mlrig_route_table = cached
    return cached


def route_table(app: Any) -> list[RouteEntry]:
    """The guard's view of ``app``'s routes, built again whenever the routes change."""
    return _cached_routes(app)[2]


def routes_for(app: Any, path: str) -> list[RouteEntry]:
    """The HTTP routes that may match ``path``, in the table's order (the index's bucket)."""
    *_, buckets, anywhere = _cached_routes(app)
    return buckets.get(_segments_key(path), anywhere)


def _route_path(scope: Scope) -> str:
    # the path the router matches: Starlette's rule for a root_path (behind a proxy)
    path: str = scope["path"]
    root_path = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


def _size(limit: int) -> str:
    from pydantic import ByteSize

    return f"{ByteSize(limit).human_readable(decimal=False)} ({limit:,} bytes)"


def _too_large_error(limit: int, setting: str) -> PayloadTooLargeError:
    """The 413 of a body over ``limit`` (the value of ``setting``, ``section.key``)."""
    section, key = setting.split(".", 1)
    return PayloadTooLargeError(
        f"the request body is over the limit of {_size(limit)} for this route; "
        f"send less, or raise [{section}] {key} in the server's config",
        details={"limit_bytes": limit, "setting": setting},
    )


class RequestGuardMiddleware:
    """Decide from the request line and headers alone, before any body byte is read.

    1. A path no route has passes through (404). A method the path does not have is 405
       with an ``Allow`` header listing every method of every route on that path.
    2. A route that is not public needs a valid bearer token (401) whose role, narrowed
       by the token's scopes, holds the route's permission (403), both as the permission
       map says (:func:`mlrig.api.security.route_permissions`). Prediction routes check
       the token through the token cache (:func:`mlrig.api.security.cached_principal`).
       The principal is cached on the request state, where the route's dependencies
       find it.
    3. The body is bounded by the route's class (``[api] max_body_bytes``,
       ``max_metrics_body_bytes``, ``max_upload_bytes``, ``[serving] max_body_bytes``): a
       ``Content-Length`` over it is 413 at once; a chunked body is counted as it streams
       and cut off at the limit.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        from mlrig.api.errors import error_response
        from mlrig.api.security import PUBLIC, bearer_token, cached_principal, resolve_principal
        from mlrig.security.roles import Permission

        app = scope["app"]
        path = _route_path(scope)
        method = scope["method"]
        found = [(e, m) for e in routes_for(app, path) if (m := e.regex.match(path))]
        if not found:
            await self.app(scope, receive, send)
            return
        chosen = next(((e, m) for e, m in found if e.methods is None or method in e.methods), None)
        if chosen is None:
            allowed = sorted(set().union(*(e.methods or () for e, _ in found)))
            allow = ", ".join(allowed)
            msg = f"{path} does not support {method}; it supports: {allow}"
            response = error_response(
                405, "method_not_allowed", msg, {"allowed": allowed}, headers={"Allow": allow}
            )
            await response(scope, receive, send)
            return
        entry, match = chosen
        headers = Headers(scope=scope)
        if entry.permission != PUBLIC:
            import anyio

            platform = app.state.platform
            token = bearer_token(headers)
            try:
                if entry.permission is Permission.PREDICT or entry.online_read:
                    # predictions and online reads: the token cache, no thread hop when it
                    # knows the token; and no audit entry per call (no database write each)
                    scope.setdefault("state", {})["audit"] = False
                    principal = cached_principal(platform, token)
                    if principal is None:
                        principal = await anyio.to_thread.run_sync(
                            partial(resolve_principal, platform, token, cached=True)
                        )
                else:
                    principal = await anyio.to_thread.run_sync(resolve_principal, platform, token)
                # known before the check, so that a refusal is audited under its name
                scope.setdefault("state", {})["principal"] = principal
                principal.require(entry.permission)
            except MlrigError as exc:
                # what the audit entry of a refused request names
                scope["route"] = entry
                scope["path_params"] = match.groupdict()
                extra = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
                response = error_response(
                    exc.http_status, exc.code, exc.message, exc.details, headers=extra
                )
                await response(scope, receive, send)
                return

        setting = BODY_LIMIT_SETTINGS[entry.body_class]
        limit = _body_limit(app.state.platform.settings, setting)
        length = headers.get("content-length")
        if length is not None:
            try:
                over = int(length) > limit
            except ValueError:
                response = error_response(400, "bad_request", "invalid Content-Length header")
                await response(scope, receive, send)
                return
            if over:
                await self._too_large(scope, receive, send, _too_large_error(limit, setting))
                return
        inner = self.app
        if entry.fast is not None and getattr(app.state, "mlrig_fast_routes", True):
            scope["route"] = entry  # what the audit entry of a refusal names
            scope["path_params"] = match.groupdict()
            inner = entry.fast
        await self._call_bounded(inner, scope, receive, send, limit, setting)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket route needs the same token and permission; a refused handshake is
        closed with code 1008 (the server answers it with HTTP 403)."""
        import anyio
        from starlette.datastructures import Headers

        from mlrig.api.security import PUBLIC, bearer_token, resolve_principal

        app = scope["app"]
        path = _route_path(scope)
        entry = next(
            (
                e
                for e in route_table(app)
                if (e.websocket or e.methods is None) and e.regex.match(path)
            ),
            None,
        )
        if entry is not None and entry.permission != PUBLIC:
            try:
                principal = await anyio.to_thread.run_sync(
                    resolve_principal, app.state.platform, bearer_token(Headers(scope=scope))
                )
                principal.require(entry.permission)
            except MlrigError as exc:
                await receive()  # the websocket.connect message
                await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
                return
            scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    @staticmethod
    async def _too_large(
        scope: Scope, receive: Receive, send: Send, exc: PayloadTooLargeError
    ) -> None:
        from mlrig.api.errors import error_response

        response = error_response(exc.http_status, exc.code, exc.message, exc.details)
        await response(scope, receive, send)

    async def _call_bounded(
        self, inner: ASGIApp, scope: Scope, receive: Receive, send: Send, limit: int, setting: str
    ) -> None:
        received = 0
        exceeded: PayloadTooLargeError | None = None  # made only when the body runs over
        replaced = False
        started = False

        async def bounded_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = _too_large_error(limit, setting)
                    raise exceeded
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replaced, started
            if replaced:
                return
            if message["type"] == "http.response.start":
                if exceeded is not None:
                    # whatever the route made of the cut-off body, the answer is 413
                    replaced = True
                    await self._too_large(scope, receive, send, exceeded)
                    return
                started = True
            await send(message)

        try:
            await inner(scope, bounded_receive, guarded_send)
        except PayloadTooLargeError as error:
            if not (replaced or started):
                replaced = True
                await self._too_large(scope, receive, send, error)
