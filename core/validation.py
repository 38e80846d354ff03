"""Input rules every entry point shares, so that nothing stored can break a read.

- Text: no NUL character and no UTF-16 surrogate code point (a lone surrogate cannot be
  encoded as UTF-8, so a stored one makes every later response that holds it fail; NUL
  cannot be stored by PostgreSQL at all).
- Integers: within 64 bits (the databases' ``BIGINT``), and the bounds of each field.
- Datetimes: a naive datetime is taken as UTC; after conversion to UTC it must lie
  between :data:`MIN_DATETIME` and :data:`MAX_DATETIME` (a day inside what Python and
  both databases can represent in any session time zone).
- Free-form JSON documents (hyperparameters, params, signature, metadata): nested at most
  :data:`MAX_JSON_DEPTH` deep, at most :data:`MAX_JSON_BYTES` of JSON, finite numbers.
- Collections: tags, lists of strings and their items are bounded (the ``MAX_*`` below).
- Pagination cursors: opaque; :func:`decode_cursor` parses them strictly.

The REST API puts the same rules into its OpenAPI schema (:mod:`mlrig.api.types`); the
services check them again at their entry points, so the CLI, ``mlrig.Client`` and Python
callers get the same answer; the database layer refuses text that slipped through
(:func:`find_bad_text` in a statement hook). Every check raises
:class:`~mlrig.errors.ValidationError` naming the field, the rule and the fix.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from mlrig.errors import ValidationError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
#: deepest nesting of objects and arrays in a free-form JSON field
MAX_JSON_DEPTH = 32
#: largest free-form JSON field, in bytes of compact JSON
MAX_JSON_BYTES = 256 * 1024
#: most keys at the top of a free-form JSON object (hyperparameters, params)
MAX_JSON_KEYS = 1000
MAX_TAGS = 100
MAX_TAG_KEY_LENGTH = 250
MAX_TAG_VALUE_LENGTH = 5000
MAX_DESCRIPTION_LENGTH = 10_000
#: longest short free text: frameworks, model types, runs, code versions, URIs, hashes
MAX_SHORT_TEXT_LENGTH = 1000
MAX_REQUIREMENTS = 1000
MAX_REQUIREMENT_LENGTH = 1000
MAX_DATASETS = 100
#: longest value of one query or path parameter, and most repeats of one parameter
MAX_PARAM_LENGTH = 4096
MAX_PARAM_REPEATS = 100
MAX_CURSOR_LENGTH = 1024
#: the earliest and latest instants accepted, in UTC
MIN_DATETIME = datetime.min.replace(tzinfo=timezone.utc) + timedelta(days=1)
MAX_DATETIME = datetime.max.replace(tzinfo=timezone.utc) - timedelta(days=1)

_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_CURSOR_TEXT = re.compile(r"^[A-Za-z0-9_-]*$")

#: the one sentence on datetimes that the schema's descriptions and the docs repeat
DATETIME_RULE = (
    "ISO 8601; without a time zone it is taken as UTC; "
    "between 0001-01-02 and 9999-12-30 after conversion to UTC."
)


def find_bad_text(value: str) -> str | None:
    """What is wrong with ``value`` as stored text (``None``: nothing)."""
    found = _BAD_TEXT.search(value)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return f"contains a NUL character (U+0000) at index {found.start()}"
    return f"contains a lone UTF-16 surrogate (U+{ord(char):04X}) at index {found.start()}"


def scrub(value: Any) -> Any:
    """``value`` with NUL characters and surrogates replaced by U+FFFD, in strings at any
    depth of lists and dicts: for records that must be kept whatever came in (the audit
    log of a refused request), where refusing is not an option."""
    if isinstance(value, str):
        return _BAD_TEXT.sub("\ufffd", value)
    if isinstance(value, (list, tuple)):
        return [scrub(item) for item in value]
    if isinstance(value, Mapping):
        return {scrub(key): scrub(item) for key, item in value.items()}
    return value


def check_text(
    value: object,
    *,
    field: str,
    max_length: int | None = None,
    min_length: int = 0,
    pattern: re.Pattern[str] | None = None,
) -> str:
    """``value`` if it is a string that can be stored and read back, within bounds."""
    if not isinstance(value, str):
        msg = f"{field} must be a string, got {type(value).__name__}"
        raise ValidationError(msg, details={"field": field})
    problem = find_bad_text(value)
    if problem is not None:
        msg = f"{field} {problem}; send text without NUL characters or unpaired surrogates"
        raise ValidationError(msg, details={"field": field})
    if len(value) < min_length or (max_length is not None and len(value) > max_length):
        limit = f"{min_length} to {max_length}" if max_length is not None else f"≥ {min_length}"
        msg = f"{field} must have {limit} characters, got {len(value):,}"
        raise ValidationError(msg, details={"field": field})
    if pattern is not None and not pattern.match(value):
        msg = f"{field} {value[:80]!r} does not match {pattern.pattern}"
        raise ValidationError(msg, details={"field": field})
    return value


def check_optional_text(
    value: object, *, field: str, max_length: int = MAX_SHORT_TEXT_LENGTH
) -> str | None:
    """``None``, or :func:`check_text` with ``max_length``."""
    return None if value is None else check_text(value, field=field, max_length=max_length)


def check_int(value: object, *, field: str, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    """An integer (not a bool) in ``low..high`` (64 bits by default)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        shown = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge int"
        msg = f"{field} must be an integer from {low} to {high}, got {shown}"
        raise ValidationError(msg, details={"field": field})
    return value


def as_utc(value: object, *, field: str) -> datetime:
    """``value`` in UTC; naive datetimes are taken as UTC (the one rule, documented)."""
    if not isinstance(value, datetime):
        msg = f"{field} must be a datetime, got {type(value).__name__}"
        raise ValidationError(msg, details={"field": field})
    if value.tzinfo is None or value.utcoffset() is None:
        value = value.replace(tzinfo=timezone.utc)
    try:
        utc = value.astimezone(timezone.utc)
    except OverflowError:
        utc = None
    if utc is None or not MIN_DATETIME <= utc <= MAX_DATETIME:
        msg = f"{field} {value.isoformat()!r} is out of range: {DATETIME_RULE}"
        raise ValidationError(msg, details={"field": field})
    return utc


def check_tags(tags: object, *, field: str = "tags") -> dict[str, str]:
    """A ``{key: value}`` mapping of strings: at most :data:`MAX_TAGS` entries, keys of 1
    to :data:`MAX_TAG_KEY_LENGTH` characters, values of at most
    :data:`MAX_TAG_VALUE_LENGTH`."""
    if not isinstance(tags, Mapping):
        msg = f"{field} must be an object of string keys and string values"
        raise ValidationError(msg, details={"field": field})
    if len(tags) > MAX_TAGS:
        msg = f"{field}: {len(tags):,} tags; at most {MAX_TAGS} per object"
        raise ValidationError(msg, details={"field": field})
    for key, value in tags.items():
        check_text(key, field=f"{field} key", min_length=1, max_length=MAX_TAG_KEY_LENGTH)
        check_text(value, field=f"{field}.{key}", max_length=MAX_TAG_VALUE_LENGTH)
    return dict(tags)


def check_text_list(values: object, *, field: str, max_items: int, max_length: int) -> list[str]:
    """A list of at most ``max_items`` strings of at most ``max_length`` characters."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        msg = f"{field} must be a list of strings"
        raise ValidationError(msg, details={"field": field})
    items = list(values)
    if len(items) > max_items:
        msg = f"{field}: {len(items):,} items; at most {max_items}"
        raise ValidationError(msg, details={"field": field})
    for index, item in enumerate(items):
        check_text(item, field=f"{field}[{index}]", max_length=max_length)
    return items


def check_json(
    value: Any,
    *,
    field: str,
    max_depth: int = MAX_JSON_DEPTH,
    max_bytes: int = MAX_JSON_BYTES,
    max_keys: int | None = MAX_JSON_KEYS,
    object_only: bool = True,
) -> Any:
    """A free-form JSON document that can be stored and read back, as plain JSON values.

    Objects with string keys, arrays, strings (see :func:`check_text`), finite numbers,
    integers within 64 bits, booleans and null; nested at most ``max_depth`` deep; at most
    ``max_bytes`` of compact JSON; at most ``max_keys`` keys at the top.
    """
    if object_only and not isinstance(value, Mapping):
        msg = f"{field} must be a JSON object, got {type(value).__name__}"
        raise ValidationError(msg, details={"field": field})
    if max_keys is not None and isinstance(value, Mapping) and len(value) > max_keys:
        msg = f"{field}: {len(value):,} keys; at most {max_keys}"
        raise ValidationError(msg, details={"field": field})
    problem = json_problem(
        value, max_depth=max_depth, max_chars=max_bytes, integral_floats_as_integers=True
    )
    if problem is not None:
        where, what = problem
        location = (field + shorten(where)).lstrip(".") or "value"
        msg = f"{location}: {what}"
        raise ValidationError(msg, details={"field": field, "at": where})
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        msg = f"{field} is {size:,} bytes of JSON; at most {max_bytes:,}"
        raise ValidationError(msg, details={"field": field})
    return json.loads(text)  # plain dicts and lists, detached from the caller's objects


def shorten(where: str, limit: int = 100) -> str:
    """A JSON path for a message: its start and its end when it is long."""
    return where if len(where) <= limit else f"{where[:40]}...{where[-40:]}"


def json_problem(
    value: Any,
    *,
    max_depth: int,
    max_chars: int | None = None,
    other_types: bool = False,
    integral_floats_as_integers: bool = False,
) -> tuple[str, str] | None:
    """``(where, what)`` for the first value that is not storable JSON, else ``None``.

    ``where`` is a path such as ``.layers[3].name``. Walks iteratively (no recursion
    limit to hit) and stops early once the strings alone pass ``max_chars``. With
    ``other_types``, values that are not JSON (a model, a datetime) are let through.
    With ``integral_floats_as_integers`` (free-form JSON, whose schema bounds every
    integer to 64 bits), a float without a fraction (``1e27``) is bounded like the
    integer it is to a JSON Schema validator.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    chars = 0
    while stack:
        item, where, depth = stack.pop()
        kind = type(item)
        if kind is str:
            problem = find_bad_text(item)
            if problem is not None:
                return where, problem
            chars += len(item)
        elif kind is dict or isinstance(item, Mapping):
            if depth >= max_depth:
                return where, f"nested deeper than {max_depth} levels"
            for key, child in item.items():
                if type(key) is not str:
                    return where, f"keys must be strings, got {type(key).__name__}"
                problem = find_bad_text(key)
                if problem is not None:
                    return where, f"key {problem}"
                chars += len(key)
                stack.append((child, f"{where}.{key[:50]}", depth + 1))
        elif kind is list or kind is tuple:
            if depth >= max_depth:
                return where, f"nested deeper than {max_depth} levels"
            if item and set(map(type, item)) == {str}:
                # a list of strings (feature names, labels): one search over all of them
                # (a tenth of the time of one per string); the walk below only to say where
                joined = "".join(item)
                if _BAD_TEXT.search(joined) is None:
                    chars += len(joined)
                    if max_chars is not None and chars > max_chars:
                        return "", f"more than {max_chars:,} characters of text"
                    continue
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
        elif kind is bool or item is None:
            pass
        elif kind is int:
            if not INT64_MIN <= item <= INT64_MAX:
                return where, "integers must fit in 64 bits"
        elif kind is float:
            if not math.isfinite(item):
                return where, f"{item!r} is not JSON (no NaN or infinity): numbers must be finite"
            # JSON has one number type: 1e27 is the integer 10**27 to a JSON Schema
            # validator, so the 64-bit bound the schema states holds for it too
            if (
                integral_floats_as_integers
                and item.is_integer()
                and not INT64_MIN <= item <= INT64_MAX
            ):
                return where, "numbers without a fraction must fit in 64 bits (as integers do)"
        elif not other_types:
            return where, f"a {kind.__name__} is not a JSON value"
        if max_chars is not None and chars > max_chars:
            return "", f"more than {max_chars:,} characters of text"
    return None


# --- pagination cursors -------------------------------------------------------------------

_BAD_CURSOR = "invalid cursor: pass back the next_cursor of the previous page unchanged"


def encode_cursor(fields: Mapping[str, str | int]) -> str:
    """An opaque cursor for ``fields`` (strings and non-negative integers)."""
    raw = json.dumps(dict(fields), separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: object, spec: Mapping[str, type]) -> dict[str, Any]:
    """The fields of ``cursor``, strictly checked against ``spec`` (name -> ``str`` or
    ``int``): exactly those keys, each of its type; strings storable and short, integers
    from 0 to 2**63-1. Anything else is a :class:`ValidationError`, never a crash."""
    if (
        not isinstance(cursor, str)
        or len(cursor) > MAX_CURSOR_LENGTH
        or not _CURSOR_TEXT.match(cursor)
    ):
        raise ValidationError(_BAD_CURSOR, details={"field": "cursor"})
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise ValidationError(_BAD_CURSOR, details={"field": "cursor"}) from None
    if not isinstance(data, dict) or set(data) != set(spec):
        raise ValidationError(_BAD_CURSOR, details={"field": "cursor"})
    for key, kind in spec.items():
        item = data[key]
        if kind is int:
            ok = type(item) is int and 0 <= item <= INT64_MAX
        else:
            ok = type(item) is str and len(item) <= 512 and find_bad_text(item) is None
        if not ok:
            raise ValidationError(_BAD_CURSOR, details={"field": "cursor"})
    return data
