"""One JSON shape for every API error: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlrig.errors import MlrigError

log = logging.getLogger("mlrig.api")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON error response in the API's one error shape."""
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status, headers=headers)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def _mlrig_error(request: Request, exc: MlrigError) -> JSONResponse:
    if exc.http_status >= 500:
        log.error("request %s failed: %s", _request_id(request), exc.message)
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    return error_response(exc.http_status, exc.code, exc.message, exc.details, headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [
        {
            "loc": [str(p) for p in err.get("loc", ())],
            "message": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors()
    ]
    first = problems[0] if problems else {"loc": [], "message": "invalid request"}
    where = ".".join(first["loc"]) or "request"
    message = f"{where}: {first['message']}"
    return error_response(422, "validation_error", message, {"errors": problems})


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = _request_id(request)
    log.exception("request %s failed", request_id)
    return error_response(
        500,
        "internal_error",
        "internal server error; the server log has the details",
        {"request_id": request_id},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the one JSON error shape."""
    app.add_exception_handler(MlrigError, _mlrig_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
