"""Raw ASGI handlers for the few API routes on the prediction path.

FastAPI's routing, dependency solving and thread hops cost a few milliseconds per request
on a small machine: nothing for a control-plane call, most of the latency of an online
feature read that the store answers in a fraction of a millisecond. A route marked with
``online_read(fast=handler)`` (:func:`mlrig.api.middleware.online_read`) is answered by
``handler`` straight from the request guard, which has already routed the request,
checked its token and permission and bounds its body.

A handler answers exactly as its FastAPI route: the same body model (validated the way
FastAPI validates it: ``json.loads`` then the model), the same parameter checks
(:func:`mlrig.api.types.check_request_params`), the same error shapes (the handlers of
:mod:`mlrig.api.errors`). ``tests/test_api_fastpath.py`` holds the two side by side.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from email.message import Message as _ContentType
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from mlrig.errors import MlrigError, PayloadTooLargeError

Model = TypeVar("Model", bound=BaseModel)
Result = TypeVar("Result")
Handler = Callable[[Request], Awaitable[Response]]


def fast_route(handler: Handler) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app of ``handler(request) -> Response``, with the API's error handling."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        from mlrig.api import errors
        from mlrig.api.types import check_request_params

        request = Request(scope, receive)
        try:
            check_request_params(request)
            response = await handler(request)
        except PayloadTooLargeError:
            raise  # the guard answers 413 for a body cut off at its limit
        except MlrigError as exc:
            response = await errors._mlrig_error(request, exc)
        except RequestValidationError as exc:
            response = await errors._validation_error(request, exc)
        except HTTPException as exc:
            response = await errors._http_error(request, exc)
        except Exception as exc:
            response = await errors._unexpected_error(request, exc)
        await response(scope, receive, send)

    app.__name__ = getattr(handler, "__name__", "fast_route")
    app.__doc__ = handler.__doc__
    return app


def _is_json(content_type: str | None) -> bool:
    # FastAPI's rule (strict_content_type, its default): application/json or
    # application/*+json; a body without a Content-Type is not read as JSON
    if not content_type:
        return False
    message = _ContentType()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


async def json_body(request: Request, model: type[Model]) -> Model:
    """The request's body as ``model``, refused as FastAPI refuses it (422 in the same
    shape): malformed JSON, a non-JSON content type, an empty body, a field that fails."""
    raw = await request.body()
    if not raw:
        data: Any = None
    elif _is_json(request.headers.get("content-type")):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RequestValidationError(
                [
                    {
                        "type": "json_invalid",
                        "loc": ("body", exc.pos),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": exc.msg},
                    }
                ]
            ) from None
        except ValueError:  # not UTF-8
            raise HTTPException(400, "There was an error parsing the body") from None
    else:
        data = raw
    if data is None:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        return model.model_validate(data, from_attributes=True)  # as FastAPI validates
    except PydanticValidationError as exc:
        problems = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(problems) from None


def orjson_response(content: dict[str, Any]) -> Response:
    """A JSON answer encoded by orjson (the service's plain values, not revalidated)."""
    import orjson

    return Response(orjson.dumps(content), media_type="application/json")


__all__ = ["fast_route", "json_body", "orjson_response"]
