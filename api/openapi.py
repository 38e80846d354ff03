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

The input rules every route shares (:mod:`mlrig.validation`, enforced app-wide by
:mod:`mlrig.api.types`) are written into the request side of the schema here too, so that
a request the schema calls valid is never refused: no NUL character in any string or
object key, query and path values at most ``MAX_PARAM_LENGTH`` long and repeated at most
``MAX_PARAM_REPEATS`` times, and free-form JSON values (``Any``) described by the
``JsonValue`` schema (64-bit integers, storable strings; its depth bound is in the text).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from mlrig import validation
from mlrig.api.schemas import ErrorBody

API_PREFIX = "/api/ml"
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
JSON_VALUE_REF = {"$ref": "#/components/schemas/JsonValue"}
#: longest value of a repeated query parameter the schema admits
MAX_REPEATED_LENGTH = 1000
#: any string without a NUL character (ECMA-262 regex, as JSON Schema reads it)
NO_NUL = "^[^\\u0000]*$"
JSON_VALUE = {
    "description": "Any JSON value: strings and keys without NUL, integers within 64 bits, "
    f"nested at most {validation.MAX_JSON_DEPTH} levels deep.",
    "anyOf": [
        {"type": "string", "pattern": NO_NUL},
        # one branch for all numbers: an integer must fit 64 bits (a float that large
        # would be fine, but the schema says the simpler rule)
        {"type": "number", "minimum": validation.INT64_MIN, "maximum": validation.INT64_MAX},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": JSON_VALUE_REF},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": JSON_VALUE_REF,
        },
    ],
}

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


#: models the schema names that no route declares (e.g. a JSON form field's shape)
_COMPONENTS: list[type[BaseModel]] = []


def component(model: type[BaseModel]) -> dict[str, str]:
    """A ``$ref`` to ``model``'s schema, which the completed schema then holds (for
    ``openapi_extra`` bodies that FastAPI does not derive from the signature)."""
    if model not in _COMPONENTS:
        _COMPONENTS.append(model)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


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


def _is_free(schema: Any) -> bool:
    """An ``Any`` value: a schema that says nothing of the value's type."""
    return schema is True or (
        isinstance(schema, dict)
        and not ({"type", "$ref", "anyOf", "oneOf", "allOf", "enum", "const", "not"} & set(schema))
    )


def _storable(schema: Any, components: dict[str, Any], seen: set[str], *, param: bool) -> None:
    """Write the shared input rules into a request-side ``schema`` (in place, following
    ``$ref`` into ``components`` once each)."""
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[-1]
        if name not in seen and name in components:
            seen.add(name)
            _storable(components[name], components, seen, param=False)
        return
    kind = schema.get("type")
    if kind == "string" and not ({"pattern", "enum", "const", "format"} & set(schema)):
        schema["pattern"] = NO_NUL
    if kind == "string" and param:
        schema.setdefault("maxLength", validation.MAX_PARAM_LENGTH)
    if kind == "array" and param:
        schema.setdefault("maxItems", validation.MAX_PARAM_REPEATS)
        # repeated values: shorter, so the whole URL stays within the server's limit
        items = schema.get("items")
        if isinstance(items, dict) and items.get("type") == "string":
            items["maxLength"] = min(
                items.get("maxLength", MAX_REPEATED_LENGTH), MAX_REPEATED_LENGTH
            )
    if kind == "object" and schema.get("additionalProperties", False) is not False:
        # a mapping (free keys): keys are text too
        names = schema.setdefault("propertyNames", {})
        if isinstance(names, dict) and "pattern" not in names:
            names["pattern"] = NO_NUL
        extra = schema.get("additionalProperties")
        if extra is True or (isinstance(extra, dict) and _is_free(extra)):
            schema["additionalProperties"] = JSON_VALUE_REF
    for key in ("items", "additionalProperties"):
        if _is_free(schema.get(key)) and key in schema and schema[key] is not False:
            schema[key] = JSON_VALUE_REF
        else:
            _storable(schema.get(key), components, seen, param=param)
    for sub in (schema.get("properties") or {}).values():
        _storable(sub, components, seen, param=False)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key) or []:
            _storable(sub, components, seen, param=param)
    for prop, sub in list((schema.get("properties") or {}).items()):
        if _is_free(sub):
            schema["properties"][prop] = {**sub, **JSON_VALUE_REF}


def _request_rules(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["JsonValue"] = JSON_VALUE
    for model in _COMPONENTS:
        extra = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in extra.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components.setdefault(model.__name__, extra)
    seen = {"JsonValue"}
    for item in schema.get("paths", {}).values():
        for method, operation in item.items():
            if method not in {"get", "put", "post", "delete", "patch"}:
                continue
            for parameter in operation.get("parameters", []):
                _storable(parameter.get("schema"), components, seen, param=True)
            for media in operation.get("requestBody", {}).get("content", {}).values():
                body = media.get("schema") or {}
                if "$ref" in body and "properties" in body:
                    # a body written out in openapi_extra replaces the one FastAPI derived
                    components.pop(body.pop("$ref").rsplit("/", 1)[-1], None)
                _storable(body, components, seen, param=False)


def _add_links(schema: dict[str, Any]) -> None:
    """OpenAPI links from each creation (a POST answering 201) to the operations on what it
    created, so clients and stateful fuzzers can follow them: ``POST /models`` -> every
    ``/models/{id}...`` operation with ``id`` from the answer's ``id``; ``POST
    /models/{id}/versions`` -> ``/models/{id}/versions/{version}...`` with ``version``
    from the answer; a stage change -> approving or rejecting the request it opened."""
    paths = schema.get("paths", {})

    def operations_under(prefix: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            (path, operation)
            for path, item in paths.items()
            if path.startswith(prefix + "/{")
            for method, operation in item.items()
            if method in {"get", "put", "post", "delete", "patch"} and "operationId" in operation
        ]

    for path, item in paths.items():
        create = item.get("post")
        if not create or "201" not in create.get("responses", {}):
            continue
        targets = operations_under(path)
        if not targets:
            continue
        created = targets[0][0][len(path) + 2 :].split("}", 1)[0]  # {id} or {version}
        source = "id" if created == "id" else created
        links = create["responses"]["201"].setdefault("links", {})
        for _, operation in targets:
            parameters = {
                p["name"]: (
                    f"$response.body#/{source}"
                    if p["name"] == created
                    else f"$request.path.{p['name']}"
                )
                for p in operation.get("parameters", [])
                if p.get("in") == "path" and f"{{{p['name']}}}" in path + "/{" + created + "}"
            }
            links[operation["operationId"]] = {
                "operationId": operation["operationId"],
                "parameters": parameters,
            }
    for path, item in paths.items():
        stage = item.get("post") if path.endswith("/stage") else None
        if not stage:
            continue
        links = stage["responses"]["200"].setdefault("links", {})
        for decision in ("approve", "reject"):
            target = paths.get(f"{API_PREFIX}/approvals/{{id}}/{decision}", {}).get("post")
            if target and "operationId" in target:
                links[target["operationId"]] = {
                    "operationId": target["operationId"],
                    "parameters": {"id": "$response.body#/request/id"},
                }


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the shared error answers to every operation and use ``ErrorBody`` for all;
    write the shared input rules into the request side; link creations to their uses."""
    _request_rules(schema)
    _add_links(schema)
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
