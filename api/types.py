"""Request-side types: the rules of :mod:`mlrig.validation` as pydantic/FastAPI types, so
that the OpenAPI schema says what the server enforces (``maxLength``, ``pattern``,
``maximum``, ``maxProperties``, ``maxItems``) and a bad value is a 422 before any
service sees it.

- :class:`InputModel` is the base of every JSON body model: it forbids unknown fields
  and walks the raw body once, refusing NUL characters and lone surrogates in any string
  or key at any depth, non-finite numbers, integers beyond 64 bits and absurd nesting.
- :func:`check_request_params` (an app-wide dependency) does the same for every query
  and path parameter, of every route, plugin routes included.
- The ``Annotated`` aliases below carry the bounds of each kind of field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import Query
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic_core import PydanticCustomError
from starlette.requests import HTTPConnection

from mlrig import validation as v
from mlrig.errors import ValidationError
from mlrig.experiments.rules import NAME_PATTERN as EXPERIMENT_NAME_PATTERN
from mlrig.experiments.rules import check_name as check_experiment_name
from mlrig.registry.names import (
    ALIAS_PATTERN,
    MODEL_NAME_PATTERN,
    VERSION_PATTERN,
    check_alias,
    check_model_name,
    check_version_name,
)

#: nesting allowed in a whole body, a backstop: free-form fields have their own, smaller
#: bound (MAX_JSON_DEPTH) whose message names the field
BODY_MAX_DEPTH = 2 * v.MAX_JSON_DEPTH


#: the schema's statement of "no NUL character" for a string without a pattern of its own
#: (surrogates need no statement: UTF-8 JSON cannot carry them unescaped)
NO_NUL_PATTERN = r"^[^\u0000]*$"


def _state_no_nul(schema: dict[str, Any], model: type) -> None:
    """Put :data:`NO_NUL_PATTERN` on the model's string fields (values, items, keys) that
    have no pattern, enum or format, so a request valid by the schema is not refused."""

    def visit(node: Any) -> None:
        if not isinstance(node, dict):
            return
        if node.get("type") == "string" and not {"pattern", "enum", "const", "format"} & set(node):
            node["pattern"] = NO_NUL_PATTERN
        for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            for child in node.get(key, []):
                visit(child)
        for key in ("items", "additionalProperties", "propertyNames"):
            visit(node.get(key))

    for prop in schema.get("properties", {}).values():
        visit(prop)


class InputModel(BaseModel):
    """Base of every request body: unknown fields refused, every string storable."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_state_no_nul)

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # other types: Python callers may pass models or datetimes; a JSON body has none
        problem = v.json_problem(data, max_depth=BODY_MAX_DEPTH, other_types=True)
        if problem is not None:
            where, what = problem
            # a 422 validation_error in the one error shape, like any pydantic error
            raise PydanticCustomError(
                "unstorable",
                "{where}: {what}",
                {"where": v.shorten(where.lstrip(".")) or "body", "what": what},
            )
        return data


def _pydantic(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``check`` as a pydantic validator: its ValidationError keeps the field's location."""

    def validate(value: Any) -> Any:
        try:
            return check(value)
        except ValidationError as exc:
            raise PydanticCustomError("invalid", "{message}", {"message": exc.message}) from None

    return validate


_json_object = _pydantic(lambda value: v.check_json(value, field=""))
_utc = _pydantic(lambda value: v.as_utc(value, field="value"))


_JSON_RULE = (
    f"Free-form JSON object: at most {v.MAX_JSON_DEPTH} levels deep, "
    f"{v.MAX_JSON_BYTES // 1024} KiB as JSON and {v.MAX_JSON_KEYS} top-level keys; "
    "finite numbers, integers within 64 bits, no NUL character in any string or key."
)

# --- strings ------------------------------------------------------------------------------


def _named(check: Callable[[str], Any], pattern: str, max_length: int) -> Any:
    """A name type: the pattern in the schema, the service's own check (and message)."""
    return Annotated[
        str,
        Field(min_length=1, max_length=max_length, json_schema_extra={"pattern": pattern}),
        AfterValidator(_pydantic(check)),
    ]


ModelName = _named(check_model_name, MODEL_NAME_PATTERN, 255)
ExperimentName = _named(check_experiment_name, EXPERIMENT_NAME_PATTERN, 200)
VersionName = _named(check_version_name, VERSION_PATTERN, 100)
AliasName = _named(check_alias, ALIAS_PATTERN, 63)
Description = Annotated[str, Field(max_length=v.MAX_DESCRIPTION_LENGTH)]
ShortText = Annotated[str, Field(max_length=v.MAX_SHORT_TEXT_LENGTH)]
NonEmptyShortText = Annotated[str, Field(min_length=1, max_length=v.MAX_SHORT_TEXT_LENGTH)]
MetricName = Annotated[str, Field(min_length=1, max_length=100)]
TagKey = Annotated[str, Field(min_length=1, max_length=v.MAX_TAG_KEY_LENGTH)]
TagValue = Annotated[str, Field(max_length=v.MAX_TAG_VALUE_LENGTH)]

# --- collections --------------------------------------------------------------------------

Tags = Annotated[
    dict[TagKey, TagValue],
    Field(
        max_length=v.MAX_TAGS,
        description=f"At most {v.MAX_TAGS} tags; keys 1-{v.MAX_TAG_KEY_LENGTH} characters, "
        f"values at most {v.MAX_TAG_VALUE_LENGTH}.",
    ),
]
JsonObject = Annotated[
    dict[str, Any],
    Field(max_length=v.MAX_JSON_KEYS),  # before the validator: the schema says maxProperties
    AfterValidator(_json_object),
    Field(description=_JSON_RULE),
]
Requirements = Annotated[
    list[Annotated[str, Field(max_length=v.MAX_REQUIREMENT_LENGTH)]],
    Field(max_length=v.MAX_REQUIREMENTS, description="pip requirement lines."),
]

# --- numbers and times --------------------------------------------------------------------

Int64 = Annotated[int, Field(ge=v.INT64_MIN, le=v.INT64_MAX)]


def _integral_float(value: Any) -> Any:
    # JSON Schema's "integer" holds 5.0; a string or a bool stays refused (StrictInt)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def whole_number(*, ge: int = v.INT64_MIN, le: int = v.INT64_MAX) -> Any:
    """A JSON integer between ``ge`` and ``le``, ``5.0`` included (what JSON Schema calls an
    integer); not ``"5"`` or ``true``. (The bounds come before the validator, or the
    schema would show them as pydantic's ``ge``/``le`` rather than ``minimum``/``maximum``.)"""
    return Annotated[int, Field(ge=ge, le=le, strict=True), BeforeValidator(_integral_float)]


NonNegativeInt = Annotated[int, Field(ge=0, le=v.INT64_MAX)]


def _not_a_number(value: Any) -> Any:
    # pydantic would read 1700000000 or "0.5" as Unix time; the schema says ISO 8601 only
    if isinstance(value, (int, float)) or (
        isinstance(value, str) and _NUMBER.fullmatch(value.strip())
    ):
        raise ValueError("an ISO 8601 time is needed, e.g. 2026-01-31T12:00:00Z, not a number")
    return value


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

UtcDatetime = Annotated[
    datetime,
    BeforeValidator(_not_a_number),
    AfterValidator(_utc),
    Field(description=v.DATETIME_RULE),
]

# --- query parameters (FastAPI markers in Annotated, so the schema shows the bounds) ------

Offset = Annotated[int, Query(ge=0, le=v.INT64_MAX, description="Items to skip (0 to 2**63-1).")]
Cursor = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=v.MAX_CURSOR_LENGTH,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="The next_cursor of the previous page, unchanged (opaque).",
    ),
]
TagFilters = Annotated[
    list[str] | None,
    Query(
        max_length=v.MAX_TAGS,
        description=f"key:value, repeatable (at most {v.MAX_TAGS}).",
        json_schema_extra={"items": {"type": "string", "pattern": r"^[^:\u0000]+:[^\u0000]*$"}},
    ),
]


def since_query(description: str) -> Any:
    """A ``Query`` for a datetime parameter whose description states the one rule."""
    return Query(default=None, description=f"{description} {v.DATETIME_RULE}")


# --- every query and path parameter -------------------------------------------------------


def check_request_params(request: HTTPConnection) -> None:  # WebSocket routes too
    """Refuse unstorable or oversized query and path parameters, for every route.

    Installed app-wide (``FastAPI(dependencies=...)``), so a route or plugin that forgets
    a parameter type still never hands a NUL character to a database.
    """
    counts: dict[str, int] = {}
    items = [("query parameter", k, val) for k, val in request.query_params.multi_items()]
    items += [("path parameter", k, str(val)) for k, val in request.path_params.items()]
    for where, name, value in items:
        field = f"{where} {name!r}"
        v.check_text(name, field=f"{where} name", max_length=200)
        v.check_text(value, field=field, max_length=v.MAX_PARAM_LENGTH)
        counts[name] = counts.get(name, 0) + 1
        if counts[name] > v.MAX_PARAM_REPEATS:
            msg = f"{field} is repeated more than {v.MAX_PARAM_REPEATS} times"
            raise ValidationError(msg, details={"field": name})


#: the schema of an experiment's (or a sweep's trials') ``dataset`` object: ``uri``
#: required, ``target`` optional, anything else the trainer reads
DATASET_SCHEMA: dict[str, Any] = {
    "required": ["uri"],
    "properties": {
        "uri": {
            "type": "string",
            "pattern": "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$",
            "maxLength": 1000,
        },
        "target": {"type": "string", "minLength": 1, "maxLength": 1000},
    },
}
