"""The OpenAPI schema, completed with the error answers every route can give.

FastAPI documents a route's success answer and a 422 of its own shape. The errors that
come from shared machinery are the same for every route, so they are added here from
what the route is, not written out per route (a new route cannot forget them):

- 401 and 403 where the operation needs a token (it has ``security``);
- 404 where the path has a parameter (the resource may not exist);
- 422 where the request has a parameter or a body (validation);
- 400 (malformed JSON) and 413 (over the body limit) where it takes a body.

Route-specific errors (409, a 404 for a resource named in the body) are declared on the
route with :func:`errors`. Every error answer has the schema ``ErrorBody``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from mlrig.api.schemas import ErrorBody

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}

DESCRIPTIONS = {
    400: "Malformed request (e.g. a body that is not JSON).",
    401: "No valid token: send `Authorization: Bearer <token>`.",
    403: "The token's role lacks the permission this route needs.",
    404: "No such resource.",
    409: "Conflicts with the resource's state (exists already, in use, not allowed now).",
    413: "The request body is over the configured limit (the message says which).",
    422: "A parameter or the body is invalid (`details.errors` lists each problem).",
    429: "Too many requests.",
}


def errors(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route's own error codes, e.g. ``errors(404, 409)``; a keyword
    ``e409="..."`` replaces the default description of that code."""
    return {
        code: {
            "model": ErrorBody,
            "description": descriptions.get(f"e{code}", DESCRIPTIONS.get(code, "Error.")),
        }
        for code in codes
    }


def _error(code: int) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": DESCRIPTIONS[code],
        "content": {"application/json": {"schema": ERROR_REF}},
    }
    if code == 401:
        answer["headers"] = {
            "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}
        }
    return answer


def shared_errors(path: str, operation: dict[str, Any]) -> list[int]:
    """The error codes the shared machinery can answer for ``operation`` at ``path``."""
    codes = []
    has_body = "requestBody" in operation
    if has_body:
        codes += [400, 413]
    if operation.get("security"):
        codes += [401, 403]
    if "{" in path:
        codes.append(404)
    if operation.get("parameters") or has_body:
        codes.append(422)
    return codes


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the shared error answers to every operation and use ``ErrorBody`` for all."""
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method not in {"get", "put", "post", "delete", "patch"}:
                continue
            responses = operation.setdefault("responses", {})
            for code in shared_errors(path, operation):
                responses.setdefault(str(code), _error(code))
            for code, answer in responses.items():
                if code.startswith("4"):
                    # FastAPI's own 422 schema is not what the error handler sends.
                    answer["content"] = {"application/json": {"schema": ERROR_REF}}
                    if code == "422" or not answer.get("description"):
                        answer["description"] = DESCRIPTIONS.get(int(code), "Error.")
            operation["responses"] = dict(sorted(responses.items()))
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    error_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error_schema.pop("$defs", {}))
    components["ErrorBody"] = error_schema
    return schema


def install(app: FastAPI) -> None:
    """Complete the schema ``app.openapi()`` builds (call it last: it wraps what is there,
    e.g. the security marks of :mod:`mlrig.api.app`)."""
    build = app.openapi
    done: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        schema = build()
        if not done or done[0] is not schema:
            done[:] = [complete(schema)]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
