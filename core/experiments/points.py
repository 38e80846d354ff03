"""Metric points: the one validation every ingest path shares (REST, the training
context, Python callers). Exact JSON types go through a tight loop; a precise message is
built only for a point that fails."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from mlrig.errors import ValidationError
from mlrig.nonfinite import NON_FINITE_TEXT, to_json
from mlrig.validation import as_utc, find_bad_text

#: metric kinds a point may have (or none)
KINDS = frozenset({"train", "validation", "test"})
MAX_NAME_LENGTH = 100
#: ``metric_value`` is NUMERIC(20, 10): at most 10 digits before the point
VALUE_LIMIT = 1e10
INT32_MAX = 2**31 - 1
#: most points one call may write (they fit the default 16 MiB body, [api] max_metrics_body_bytes)
MAX_POINTS = 100_000
#: most distinct metric names in one batch
MAX_NAMES = 1000
_FIELDS = ("name", "value", "step", "epoch", "kind", "recorded_at")
POINT_KEYS = frozenset(_FIELDS)
Point = Sequence[Any] | Mapping[str, Any]


def _int_ok(value: object) -> bool:
    return value is None or (type(value) is int and 0 <= value <= INT32_MAX)


def _real(value: object) -> float:
    """A float from any real number but a bool (NumPy scalars included), or from one of
    the texts ``"NaN"``, ``"Infinity"``, ``"-Infinity"``."""
    if type(value) is str:
        return NON_FINITE_TEXT[value]  # KeyError: not a number
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(value)
    return float(value)


#: ``value`` for JSON: a finite number as is, NaN and infinities as their texts
wire_value = to_json


def wire_values(values: list[Any]) -> list[Any]:
    """A list of values for JSON (:func:`wire_value`); the same list when all are finite
    (one ``sum`` in C decides: finite values are bounded, so their sum is finite)."""
    try:
        if math.isfinite(sum(values)):
            return values
    except TypeError:  # a None among them
        pass
    return [wire_value(x) for x in values]


def _integer(value: object) -> int | None:
    """An int from any integer but a bool (NumPy integers included)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)  # JSON has one number type: 3.0 is the integer 3 (JSON Schema too)
    return operator.index(value)  # type: ignore[arg-type]


def check_points(points: Iterable[Point], *, now: datetime | None = None) -> list[tuple[Any, ...]]:
    """Validated points as ``(name, value, step, epoch, kind, recorded_at)`` tuples.

    A point is a mapping with ``name``, ``value`` and optional ``step``, ``epoch``,
    ``kind``, ``recorded_at``, or a sequence in that order (5 or 6 items). ``recorded_at``
    defaults to ``now`` (one time for the whole batch). Values must be finite real
    numbers within ±1e10 or non-finite (NaN, ±infinity, also as the texts ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``: a diverged loss is kept as such), steps and epochs
    integers from 0 to 2**31-1 (NumPy scalars are accepted and converted).

    :raises ValidationError: naming the first bad point, its index and the rule it broke.
    """
    now = now or datetime.now(timezone.utc)
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    kinds = KINDS
    isfinite = math.isfinite
    for index, point in enumerate(points):
        try:
            if type(point) is dict:
                name = point["name"]
                value = point["value"]
                step = point.get("step")
                epoch = point.get("epoch")
                kind = point.get("kind")
                at = point.get("recorded_at")
                if not point.keys() <= POINT_KEYS:
                    raise _bad(index, point)
            elif len(point) == 5:
                name, value, step, epoch, kind = point
                at = None
            else:
                name, value, step, epoch, kind, at = point
            # exact types are the fast path (all JSON gives); the rest is converted
            if type(value) is not float:
                value = float(value) if type(value) is int else _real(value)
            if type(step) is not int and step is not None:
                step = _integer(step)
            if type(epoch) is not int and epoch is not None:
                epoch = _integer(epoch)
            if not (
                type(name) is str
                and 0 < len(name) <= MAX_NAME_LENGTH
                # NaN and infinities are kept (a diverged loss); huge finite values not
                and (-VALUE_LIMIT < value < VALUE_LIMIT or not isfinite(value))
                and (kind is None or kind in kinds)
                and _int_ok(step)
                and _int_ok(epoch)
            ):
                raise _bad(index, point)
            append((name, value, step, epoch, kind, now if at is None else _time(index, at)))
        except (KeyError, TypeError, ValueError, OverflowError):
            raise _bad(index, point) from None
        if index >= MAX_POINTS:
            msg = f"too many points: at most {MAX_POINTS:,} per call; split the batch"
            raise ValidationError(msg)
    _check_names(rows)
    return rows


def _check_names(rows: list[tuple[Any, ...]]) -> None:
    """Each distinct name once (a batch has few): storable text, few enough names."""
    names = {row[0] for row in rows}
    if len(names) > MAX_NAMES:
        msg = f"{len(names):,} distinct metric names in one batch; at most {MAX_NAMES:,}"
        raise ValidationError(msg)
    for name in names:
        problem = find_bad_text(name)
        if problem is not None:
            index = next(i for i, row in enumerate(rows) if row[0] == name)
            msg = f"points[{index}].name {problem}; metric names must be storable text"
            raise ValidationError(msg, details={"index": index})


def _time(index: int, at: object) -> datetime:
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at)
        except ValueError:
            msg = f"points[{index}].recorded_at: {at!r} is not an ISO 8601 time"
            raise ValidationError(msg, details={"index": index}) from None
    if not isinstance(at, datetime):
        msg = f"points[{index}].recorded_at: {at!r} is not an ISO 8601 time"
        raise ValidationError(msg, details={"index": index})
    try:  # naive: UTC, as everywhere (mlrig.validation)
        return as_utc(at, field=f"points[{index}].recorded_at")
    except ValidationError as exc:
        raise ValidationError(exc.message, details={"index": index}) from None


def _bad(index: int, point: object) -> ValidationError:
    """The error for a point the fast loop refused, saying exactly what is wrong."""
    where = f"points[{index}]"
    if isinstance(point, Mapping):
        unknown = sorted(str(k) for k in set(point) - POINT_KEYS)
        if unknown:
            msg = f"{where}: unknown keys {unknown}; allowed: {', '.join(sorted(POINT_KEYS))}"
            return ValidationError(msg, details={"index": index})
        fields = dict(point)
    elif isinstance(point, Sequence) and not isinstance(point, str) and len(point) in (5, 6):
        fields = dict(zip(_FIELDS, point, strict=False))
    else:
        msg = (
            f"{where}: {repr(point)[:80]} is not a point; give an object with name, value "
            "and optional step, epoch, kind, or a list [name, value, step, epoch, kind]"
        )
        return ValidationError(msg, details={"index": index})
    return ValidationError(f"{where}.{_field_problem(fields)}", details={"index": index})


def _field_problem(fields: dict[str, Any]) -> str:
    for required in ("name", "value"):
        if required not in fields:
            return f"{required}: missing"
    name, value = fields["name"], fields["value"]
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        return (
            f"name: {str(name)[:40]!r} must be a non-empty string of at most "
            f"{MAX_NAME_LENGTH} characters"
        )
    try:
        number = _real(value)
    except (TypeError, KeyError):
        return (
            f"value: {repr(value)[:40]} is not a number (non-finite values are the texts "
            '"NaN", "Infinity", "-Infinity")'
        )
    except OverflowError:
        number = VALUE_LIMIT
    if not (-VALUE_LIMIT < number < VALUE_LIMIT or not math.isfinite(number)):
        return (
            f"value: {repr(value)[:40]} must be within ±1e10 (the column is NUMERIC(20, 10)) "
            "or non-finite (NaN, Infinity, -Infinity)"
        )
    for key in ("step", "epoch"):
        try:
            ok = _int_ok(_integer(fields.get(key)))
        except TypeError:
            ok = False
        if not ok:
            return f"{key}: {fields.get(key)!r} must be an integer from 0 to {INT32_MAX} or null"
    kind = fields.get("kind")
    if kind is not None and (not isinstance(kind, str) or kind not in KINDS):
        return f"kind: {fields.get('kind')!r} must be one of train, validation, test or null"
    return "recorded_at: must be an ISO 8601 time with a time zone or null"
