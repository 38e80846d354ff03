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
