"""Pure-ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on the hot paths)."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
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
            if scope["method"] in MUTATING_METHODS or status in (401, 403):
                await self._record(scope, status)

    async def _record(self, scope: Scope, status: int) -> None:
        import anyio

        state = scope.get("state", {})
        principal = state.get("principal")
        route = scope.get("route")
        params = scope.get("path_params") or {}
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
