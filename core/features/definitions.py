"""Checking feature-store definitions and turning them into specs and rows.

The bodies (what the REST API, the CLI's files and :class:`mlrig.Client` send)::

    entity: {"name", "join_keys": ["customer_id", ...], "description"}
    batch view: {"name", "entities": ["customer", ...], "source": {"kind": "file" | "sql" |
                 "push", "uri", "format", "query", "timestamp_field",
                 "created_timestamp_field"}, "features": [feature, ...], "ttl_seconds",
                 "online", "tags": [...], "description"}
    on-demand view: {"name", "kind": "on_demand", "function": "package.module:function",
                 "inputs": ["feature" | "view:feature", ...], "request_fields":
                 {"amount": "numerical", ...}, "features": [feature, ...], "tags",
                 "description"}
    feature: {"name", "type": "numerical" | "categorical" | "boolean" | "text",
              "expression": "<DuckDB SQL over the source's columns>", "description",
              "tags": ["pii", ...]}

Every check raises :class:`~mlrig.errors.ValidationError` naming the field (``details``
``{"field": ...}``) and what is allowed.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence, Set
from typing import Any

from mlrig import validation as v
from mlrig.errors import NotFoundError, ValidationError
from mlrig.features.spec import (
    FEATURE_TYPES,
    EntitySpec,
    FeatureSpec,
    FeatureViewSpec,
    OnDemandViewSpec,
    SourceSpec,
)

#: names of entities, views, features and join keys (they become SQL/DataFrame columns)
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
#: ``package.module:function``
FUNCTION_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
_FUNCTION = re.compile(FUNCTION_PATTERN)
SOURCE_KINDS = ("file", "sql", "push")
FILE_FORMATS = ("parquet", "csv")
VIEW_KINDS = ("batch", "on_demand")
MAX_JOIN_KEYS = 8
MAX_ENTITIES_PER_VIEW = 8
MAX_FEATURES_PER_VIEW = 1000
MAX_TAGS = 50
MAX_TAG_LENGTH = 100
MAX_EXPRESSION_LENGTH = 4000
MAX_URI_LENGTH = 1024
MAX_QUERY_LENGTH = 20_000
#: a TTL of at most 2**31 - 1 seconds (about 68 years: ``feature_views.ttl_seconds`` is
#: a 32-bit integer on every database)
MAX_TTL_SECONDS = 2**31 - 1
#: the columns a push row may carry besides join keys and features
RESERVED = ("event_timestamp", "created_timestamp")
#: feature names that are routes of ``/api/ml/features/...`` (``POST /features/batch``)
ROUTE_NAMES = ("batch",)

Body = Mapping[str, Any]


def _invalid(field: str, message: str, **details: Any) -> ValidationError:
    return ValidationError(message, details={"field": field, **details})


def check_name(value: object, *, field: str = "name") -> str:
    """A name by :data:`NAME_PATTERN` (a letter or ``_``, then letters, digits, ``_``)."""
    if not isinstance(value, str):
        raise _invalid(field, f"{field} must be a string, got {type(value).__name__}")
    v.check_text(value, field=field)
    if not _NAME.match(value):
        shown = value if len(value) <= 80 else value[:80] + "..."
        msg = (
            f"{field} {shown!r} is not a valid name: a letter or '_', then letters, digits "
            "or '_', at most 128 characters (names become SQL and DataFrame columns)"
        )
        raise _invalid(field, msg)
    return value


def _mapping(body: object, field: str) -> Body:
    if not isinstance(body, Mapping):
        raise _invalid(field, f"{field} must be an object, got {type(body).__name__}")
    return body


def _only(body: Body, allowed: Sequence[str], field: str) -> None:
    unknown = sorted(str(k) for k in body if k not in allowed)
    if unknown:
        where = f"{field}." if field else ""
        msg = (
            f"unknown field {where}{unknown[0]}; allowed: {', '.join(allowed)}"
            if len(unknown) == 1
            else f"unknown fields {', '.join(where + u for u in unknown)}; "
            f"allowed: {', '.join(allowed)}"
        )
        raise _invalid(f"{where}{unknown[0]}", v.scrub(msg))


def _description(value: object, field: str) -> str:
    if value is None:
        return ""
    return v.check_text(value, field=field, max_length=v.MAX_DESCRIPTION_LENGTH)


#: what counts as blank: Python's whitespace and JSON Schema's (ECMA-262 ``\s``) together,
#: spelled out so that the schema's pattern and this check agree on every character
BLANK_CHARS = (
    "\\t\\n\\v\\f\\r \\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
)
#: a tag: some character that is not blank (and no NUL)
TAG_PATTERN = f"^[^\\x00]*[^{BLANK_CHARS}\\x00][^\\x00]*$"
_TAG = re.compile(TAG_PATTERN)


def _tags(value: object, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    tags = v.check_text_list(value, field=field, max_items=MAX_TAGS, max_length=MAX_TAG_LENGTH)
    for index, tag in enumerate(tags):
        if not _TAG.match(tag):
            raise _invalid(f"{field}[{index}]", f"{field}[{index}] must not be empty")
    return tuple(dict.fromkeys(tags))


def _bool(value: object, field: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(field, f"{field} must be true or false, got {value!r}")
    return value


def check_type(value: object, *, field: str = "type") -> str:
    if value not in FEATURE_TYPES:
        shown = v.scrub(value) if isinstance(value, str) else value
        msg = f"{field} must be one of {', '.join(FEATURE_TYPES)}, got {shown!r}"
        raise _invalid(field, msg, allowed=list(FEATURE_TYPES))
    return str(value)


def check_entity(body: object) -> EntitySpec:
    body = _mapping(body, "body")
    _only(body, ("name", "join_keys", "description"), "")
    name = check_name(body.get("name"))
    keys = body.get("join_keys")
    if keys is None:
        raise _invalid("join_keys", "join_keys is required: a list of 1 to 8 column names")
    if isinstance(keys, str) or not isinstance(keys, Sequence) or not keys:
        raise _invalid("join_keys", "join_keys must be a list of 1 to 8 column names")
    if len(keys) > MAX_JOIN_KEYS:
        raise _invalid("join_keys", f"join_keys: {len(keys)} keys; at most {MAX_JOIN_KEYS}")
    checked = tuple(check_name(k, field=f"join_keys[{i}]") for i, k in enumerate(keys))
    if len(set(checked)) != len(checked):
        raise _invalid("join_keys", "join_keys must not repeat a key")
    for key in checked:
        if key in RESERVED:
            raise _invalid("join_keys", f"join key {key!r} is reserved (a timestamp column)")
    return EntitySpec(
        name=name,
        join_keys=checked,
        description=_description(body.get("description"), "description"),
    )


FEATURE_FIELDS = ("name", "type", "expression", "description", "tags")


def check_feature(body: object, *, field: str = "feature") -> FeatureSpec:
    body = _mapping(body, field)
    _only(body, FEATURE_FIELDS, field)
    name = check_name(body.get("name"), field=f"{field}.name")
    if name in RESERVED:
        raise _invalid(f"{field}.name", f"feature name {name!r} is reserved (a timestamp column)")
    if name in ROUTE_NAMES:
        msg = f"feature name {name!r} is reserved (the route /api/ml/features/{name}); pick another"
        raise _invalid(f"{field}.name", msg)
    if "type" not in body:
        msg = f"{field}.type is required: one of {', '.join(FEATURE_TYPES)}"
        raise _invalid(f"{field}.type", msg, allowed=list(FEATURE_TYPES))
    expression = body.get("expression")
    if expression is not None:
        expression = v.check_text(
            expression, field=f"{field}.expression", min_length=1, max_length=MAX_EXPRESSION_LENGTH
        )
        if ";" in expression:
            msg = f"{field}.expression must be one SQL expression (no ';')"
            raise _invalid(f"{field}.expression", msg)
    return FeatureSpec(
        name=name,
        dtype=check_type(body["type"], field=f"{field}.type"),  # type: ignore[arg-type]
        expression=expression,
        description=_description(body.get("description"), f"{field}.description"),
        tags=_tags(body.get("tags"), f"{field}.tags"),
    )


def _features(value: object) -> tuple[FeatureSpec, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise _invalid("features", "features must be a list of at least one feature")
    if len(value) > MAX_FEATURES_PER_VIEW:
        msg = f"features: {len(value):,} features; at most {MAX_FEATURES_PER_VIEW} per view"
        raise _invalid("features", msg)
    features = tuple(check_feature(f, field=f"features[{i}]") for i, f in enumerate(value))
    seen: set[str] = set()
    for index, feature in enumerate(features):
        if feature.name in seen:
            msg = f"features[{index}].name {feature.name!r} appears twice in the view"
            raise _invalid(f"features[{index}].name", msg)
        seen.add(feature.name)
    return features


def check_source(value: object) -> SourceSpec:
    body = _mapping(value, "source")
    _only(
        body,
        ("kind", "uri", "format", "query", "timestamp_field", "created_timestamp_field"),
        "source",
    )
    kind = body.get("kind")
    if kind not in SOURCE_KINDS:
        shown = v.scrub(kind) if isinstance(kind, str) else kind
        msg = f"source.kind must be one of {', '.join(SOURCE_KINDS)}, got {shown!r}"
        raise _invalid("source.kind", msg, allowed=list(SOURCE_KINDS))
    timestamp = check_name(
        body.get("timestamp_field", "event_timestamp"), field="source.timestamp_field"
    )
    created = body.get("created_timestamp_field")
    if created is not None:
        created = check_name(created, field="source.created_timestamp_field")
        if created == timestamp:
            msg = "source.created_timestamp_field must differ from source.timestamp_field"
            raise _invalid("source.created_timestamp_field", msg)
    uri = fmt = query = None
    if kind == "file":
        uri = body.get("uri")
        if uri is None:
            raise _invalid("source.uri", "source.uri is required for a file source")
        uri = v.check_text(uri, field="source.uri", min_length=1, max_length=MAX_URI_LENGTH)
        fmt = body.get("format")
        if fmt is None:
            fmt = "csv" if uri.lower().endswith(".csv") else "parquet"
        if fmt not in FILE_FORMATS:
            shown = v.scrub(fmt) if isinstance(fmt, str) else fmt
            msg = f"source.format must be one of {', '.join(FILE_FORMATS)}, got {shown!r}"
            raise _invalid("source.format", msg, allowed=list(FILE_FORMATS))
    elif kind == "sql":
        query = body.get("query")
        if query is None:
            raise _invalid("source.query", "source.query is required for a sql source")
        query = v.check_text(query, field="source.query", min_length=1, max_length=MAX_QUERY_LENGTH)
    for key, wanted in (("uri", "file"), ("format", "file"), ("query", "sql")):
        if body.get(key) is not None and kind != wanted:
            msg = f"source.{key} is for a {wanted} source, not a {kind} one"
            raise _invalid(f"source.{key}", msg)
    return SourceSpec(
        kind=kind,  # type: ignore[arg-type]
        timestamp_field=timestamp,
        created_timestamp_field=created,
        uri=uri,
        format=fmt,  # type: ignore[arg-type]
        query=query,
    )


BATCH_FIELDS = (
    "name",
    "kind",
    "entities",
    "source",
    "features",
    "ttl_seconds",
    "online",
    "tags",
    "description",
)
ON_DEMAND_FIELDS = (
    "name",
    "kind",
    "function",
    "inputs",
    "request_fields",
    "features",
    "tags",
    "description",
)


def view_kind(body: object) -> str:
    body = _mapping(body, "body")
    kind = body.get("kind", "batch")
    if kind not in VIEW_KINDS:
        shown = v.scrub(kind) if isinstance(kind, str) else kind
        msg = f"kind must be one of {', '.join(VIEW_KINDS)}, got {shown!r}"
        raise _invalid("kind", msg, allowed=list(VIEW_KINDS))
    return str(kind)


def check_batch_view(body: object, entities: Mapping[str, EntitySpec]) -> FeatureViewSpec:
    """A batch view; ``entities`` are the store's entities by name (an unknown one is a
    422 naming it)."""
    body = _mapping(body, "body")
    _only(body, BATCH_FIELDS, "")
    name = check_name(body.get("name"))
    names = body.get("entities")
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise _invalid("entities", "entities must be a list of 1 to 8 entity names")
    if len(names) > MAX_ENTITIES_PER_VIEW:
        raise _invalid("entities", f"entities: at most {MAX_ENTITIES_PER_VIEW}")
    specs = []
    for index, entity in enumerate(names):
        key = check_name(entity, field=f"entities[{index}]")
        if key not in entities:
            known = ", ".join(sorted(entities)[:20]) or "none yet"
            msg = f"entities[{index}]: no entity named {key!r} (known: {known}); create it first"
            raise NotFoundError(msg, details={"field": f"entities[{index}]", "name": key})
        specs.append(entities[key])
    keys = [k for e in specs for k in e.join_keys]
    if len(set(keys)) != len(keys):
        raise _invalid("entities", "the entities' join keys must not overlap")
    if "source" not in body:
        raise _invalid("source", 'source is required: {"kind": "file" | "sql" | "push", ...}')
    source = check_source(body["source"])
    features = _features(body.get("features"))
    for index, feature in enumerate(features):
        if feature.name in keys or feature.name in (
            source.timestamp_field,
            source.created_timestamp_field,
        ):
            msg = f"features[{index}].name {feature.name!r} is a join key or timestamp column"
            raise _invalid(f"features[{index}].name", msg)
    ttl = body.get("ttl_seconds")
    if ttl is not None:
        ttl = v.check_int(ttl, field="ttl_seconds", low=1, high=MAX_TTL_SECONDS)
    return FeatureViewSpec(
        name=name,
        entities=tuple(specs),
        source=source,
        features=features,
        ttl_seconds=ttl,
        description=_description(body.get("description"), "description"),
        tags=_tags(body.get("tags"), "tags"),
        online=_bool(body.get("online"), "online", True),
    )


def check_on_demand_view(body: object) -> OnDemandViewSpec:
    """An on-demand view (its inputs are checked against the store by the service)."""
    body = _mapping(body, "body")
    _only(body, ON_DEMAND_FIELDS, "")
    name = check_name(body.get("name"))
    function = body.get("function")
    if function is None:
        raise _invalid("function", "function is required: 'package.module:function'")
    function = v.check_text(function, field="function", min_length=1, max_length=1024)
    if not _FUNCTION.match(function):
        msg = f"function {function[:80]!r} must be an import string 'package.module:function'"
        raise _invalid("function", msg)
    inputs = body.get("inputs") or []
    inputs = v.check_text_list(
        inputs, field="inputs", max_items=MAX_FEATURES_PER_VIEW, max_length=300
    )
    for index, ref in enumerate(inputs):
        check_ref(ref, field=f"inputs[{index}]")
    fields = body.get("request_fields") or {}
    fields = _mapping(fields, "request_fields")
    if len(fields) > MAX_FEATURES_PER_VIEW:
        raise _invalid("request_fields", f"request_fields: at most {MAX_FEATURES_PER_VIEW}")
    request_fields = {
        check_name(k, field="request_fields"): check_type(t, field=f"request_fields.{k}")
        for k, t in fields.items()
    }
    if not inputs and not request_fields:
        msg = "an on-demand view needs inputs (features) or request_fields, or both"
        raise _invalid("inputs", msg)
    return OnDemandViewSpec(
        name=name,
        function=function,
        inputs=tuple(inputs),
        features=_features(body.get("features")),
        request_fields=request_fields,  # type: ignore[arg-type]
        description=_description(body.get("description"), "description"),
        tags=_tags(body.get("tags"), "tags"),
    )


def check_ref(ref: object, *, field: str = "features") -> tuple[str | None, str]:
    """``name`` or ``view:name`` -> (view or None, name)."""
    if not isinstance(ref, str):
        raise _invalid(field, f"{field} must be a feature name or 'view:name', got {ref!r}")
    view, sep, name = ref.partition(":")
    if not sep:
        return None, check_name(ref, field=field)
    return check_name(view, field=field), check_name(name, field=field)


def check_refs(refs: object, *, field: str = "features", max_items: int = 1000) -> list[str]:
    if isinstance(refs, (str, bytes)) or not isinstance(refs, Sequence) or not refs:
        raise _invalid(field, f"{field} must be a list of feature references (name or view:name)")
    if len(refs) > max_items:
        raise _invalid(field, f"{field}: {len(refs):,} references; at most {max_items}")
    for index, ref in enumerate(refs):
        check_ref(ref, field=f"{field}[{index}]")
    return list(dict.fromkeys(refs))


# --- specs <-> stored forms ---------------------------------------------------------------


def source_dict(source: SourceSpec) -> dict[str, Any]:
    return {
        "kind": source.kind,
        "uri": source.uri,
        "format": source.format,
        "query": source.query,
        "timestamp_field": source.timestamp_field,
        "created_timestamp_field": source.created_timestamp_field,
    }


def source_from_dict(data: Mapping[str, Any]) -> SourceSpec:
    return SourceSpec(
        kind=data["kind"],
        timestamp_field=data.get("timestamp_field") or "event_timestamp",
        created_timestamp_field=data.get("created_timestamp_field"),
        uri=data.get("uri"),
        format=data.get("format"),
        query=data.get("query"),
    )


def source_text(source: SourceSpec | None) -> str:
    """``feature_definitions.data_source``: the uri, or ``sql`` / ``push`` / ``on_demand``."""
    if source is None:
        return "on_demand"
    if source.kind == "file":
        uri = source.uri or ""
        return uri if len(uri) <= 255 else uri[:252] + "..."
    return source.kind


def feature_definition(feature: FeatureSpec) -> dict[str, Any]:
    """What a feature_definition_versions row records of one feature."""
    return {
        "name": feature.name,
        "type": feature.dtype,
        "expression": feature.expression,
        "description": feature.description,
        "tags": list(feature.tags),
    }


def is_breaking(old: FeatureSpec, new: FeatureSpec) -> bool:
    """A change that changes the values' type (what a deployed model was trained on)."""
    return old.dtype != new.dtype


_KEY_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,127}):(.*)$", re.S)
_INTEGER = re.compile(r"^-?[0-9]{1,19}$")


def parse_key(text: str) -> dict[str, int | str]:
    """``customer_id:42`` or ``customer_id:42,store_id:s7`` -> one entity row (join key ->
    value); a value of digits is an integer (``POST /features/batch`` sends typed values)."""
    row: dict[str, int | str] = {}
    for part in text.split(","):
        match = _KEY_PART.match(part)
        if match is None:
            msg = (
                f"key {text[:100]!r} must be join_key:value, several joined by ',' "
                "(e.g. customer_id:42,store_id:7)"
            )
            raise _invalid("key", v.scrub(msg))
        name, value = match.groups()
        if name in row:
            raise _invalid("key", v.scrub(f"key {text[:100]!r} repeats {name!r}"))
        if _INTEGER.match(value) or value.lstrip("-").isdigit():
            number = int(value) if value.lstrip("-").isascii() else None
            if number is None or not v.INT64_MIN <= number <= v.INT64_MAX:
                msg = f"key {name}: {value[:40]!r} is not an integer within 64 bits"
                raise _invalid("key", v.scrub(msg))
            row[name] = number
        else:
            row[name] = value
    return row


def key_text(row: Mapping[str, Any]) -> str:
    """An entity row as :func:`parse_key` reads it."""
    return ",".join(f"{k}:{val}" for k, val in row.items())


# --- PII follows the source column -----------------------------------------------------------

#: what :func:`column_refs` answers for an expression it cannot read: every column
ALL_COLUMNS: frozenset[str] = frozenset({"*"})


@functools.lru_cache(maxsize=4096)
def column_refs(expression: str | None, name: str) -> frozenset[str]:
    """The source columns (lower case) a feature reads: the column references in
    ``expression`` (DuckDB's parse tree), or ``name`` when it has none. Conservative: an
    expression that does not parse, or uses ``*`` / ``COLUMNS(...)``, reads
    :data:`ALL_COLUMNS`; every part of a qualified reference (``a.b``) is counted."""
    if not expression:
        return frozenset({name.lower()})
    import duckdb

    try:
        with duckdb.connect() as con:
            text = con.execute(
                "SELECT json_serialize_sql(?)", [f"SELECT (\n{expression}\n) FROM t"]
            ).fetchone()[0]
        tree = json.loads(text)
    except Exception:  # unreadable: assume it reads everything
        return ALL_COLUMNS
    if tree.get("error"):
        return ALL_COLUMNS
    found: set[str] = set()
    stack: list[Any] = [tree.get("statements")]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            kind = node.get("class") or node.get("type")
            if kind == "COLUMN_REF":
                found.update(str(p).lower() for p in node.get("column_names") or ())
            elif kind in ("STAR", "COLUMNS"):
                return ALL_COLUMNS
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
    return frozenset(found)


def source_key(source: Mapping[str, Any] | None, view: str) -> tuple[str, str]:
    """What identifies a view's source for PII: the file's uri, the SQL query (spaces
    normalised), or the push view itself."""
    source = source or {"kind": "push"}
    kind = str(source.get("kind") or "push")
    if kind == "file":
        uri = str(source.get("uri") or "")
        if "://" not in uri:
            uri = os.path.normpath(uri)
        return ("file", uri)
    if kind == "sql":
        return ("sql", " ".join(str(source.get("query") or "").split()).lower())
    return (kind, view)


def reads_pii(columns: frozenset[str], pii_columns: Set[str]) -> bool:
    """Whether a feature reading ``columns`` reads one of ``pii_columns``."""
    if not pii_columns:
        return False
    return bool(columns & pii_columns) or "*" in columns or "*" in pii_columns
