"""MLflow's error bodies on MLflow's routes: ``{"error_code": "RESOURCE_DOES_NOT_EXIST",
"message": "..."}``, the shape the ``mlflow`` client reads (it returns ``None`` from
``get_experiment_by_name`` only for that code, for instance).

:class:`MlflowRoute` is the route class of the MLflow router: it turns mlrig's errors and
request validation errors raised in a route (its body and parameters included) into
that shape, with a 4xx status for a client's mistake.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from mlrig.errors import (
    AuthenticationError,
    ConflictError,
    MlrigError,
    NotFoundError,
    PermissionDeniedError,
    TooLargeError,
    ValidationError,
)

log = logging.getLogger("mlrig.api")

RESOURCE_DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"
RESOURCE_ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
INVALID_PARAMETER_VALUE = "INVALID_PARAMETER_VALUE"
INVALID_STATE = "INVALID_STATE"
PERMISSION_DENIED = "PERMISSION_DENIED"
UNAUTHENTICATED = "UNAUTHENTICATED"
INTERNAL_ERROR = "INTERNAL_ERROR"


class MlflowError(MlrigError):
    """An error with MLflow's code and status, raised by the MLflow routes."""

    def __init__(self, error_code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.http_status = status


def mlflow_error_body(exc: Exception) -> tuple[int, dict[str, str]]:
    """The status and MLflow body for ``exc``."""
    if isinstance(exc, MlflowError):
        return exc.http_status, {"error_code": exc.error_code, "message": exc.message}
    if isinstance(exc, RequestValidationError):
        problems = exc.errors()
        first = problems[0] if problems else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        message = f"{where}: {first.get('msg', 'invalid request')}"
        return 400, {"error_code": INVALID_PARAMETER_VALUE, "message": message}
    if isinstance(exc, MlrigError):
        message = exc.message
        if isinstance(exc, NotFoundError):
            return 404, {"error_code": RESOURCE_DOES_NOT_EXIST, "message": message}
        if isinstance(exc, AuthenticationError):
            return 401, {"error_code": UNAUTHENTICATED, "message": message}
        if isinstance(exc, PermissionDeniedError):
            return 403, {"error_code": PERMISSION_DENIED, "message": message}
        if isinstance(exc, TooLargeError):
            return 413, {"error_code": INVALID_PARAMETER_VALUE, "message": message}
        if isinstance(exc, (ValidationError, ConflictError)):
            return 400, {"error_code": INVALID_PARAMETER_VALUE, "message": message}
        if exc.http_status < 500:
            return exc.http_status, {"error_code": INVALID_PARAMETER_VALUE, "message": message}
    log.exception("MLflow route failed")
    message = "internal server error; the server log has the details"
    return 500, {"error_code": INTERNAL_ERROR, "message": message}


def mlflow_error_response(exc: Exception) -> JSONResponse:
    """:func:`mlflow_error_body` as a response."""
    status, body = mlflow_error_body(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


class MlflowRoute(APIRoute):
    """A route that answers its errors in MLflow's shape instead of mlrig's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except (MlrigError, RequestValidationError) as exc:
                return mlflow_error_response(exc)

        return handle


#: the paths whose errors are MLflow's shape (the tracking API and the artifact proxy)
MLFLOW_PATHS = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
#: MLflow's code for an error mlrig's shared machinery answered, by status
_STATUS_CODES = {
    400: INVALID_PARAMETER_VALUE,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: "ENDPOINT_NOT_FOUND",
    405: "ENDPOINT_NOT_FOUND",
    413: INVALID_PARAMETER_VALUE,
    422: INVALID_PARAMETER_VALUE,
    429: "REQUEST_LIMIT_EXCEEDED",
}


def reshape_error(body: bytes, status: int) -> bytes:
    """An mlrig error body (``{"error": {"code", "message", ...}}``) as MLflow's; any other
    body unchanged."""
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return body
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or "message" not in error:
        return body
    code = _STATUS_CODES.get(status, INTERNAL_ERROR if status >= 500 else INVALID_PARAMETER_VALUE)
    return json.dumps({"error_code": code, "message": str(error["message"])}).encode()


class MlflowErrorShapeMiddleware:
    """Pure ASGI: on MLflow's paths, an error answered before the route ran (the request
    guard's 401/403/405/413, a path no route has, a 500) in mlrig's shape is rewritten
    into MLflow's, so the ``mlflow`` client reports ``PERMISSION_DENIED: ...`` and not
    ``INTERNAL_ERROR: Response: {...}``. Add it outside the request guard."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(MLFLOW_PATHS):
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] | None = None
        pieces: list[bytes] = []

        async def reshaping_send(message: Any) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                json_error = message["status"] >= 400 and headers.get(
                    b"content-type", b""
                ).startswith(b"application/json")
                if json_error:
                    held = message  # an error body is small: hold it to rewrite it
                    return
            elif message["type"] == "http.response.body" and held is not None:
                pieces.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = reshape_error(b"".join(pieces), held["status"])
                headers = [
                    (k, v) for k, v in held.get("headers") or [] if k.lower() != b"content-length"
                ]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**held, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, reshaping_send)
