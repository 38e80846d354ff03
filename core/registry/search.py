"""Version search: filters, sorting and cursor pagination, as one SQL query.

Filters: name (exact, prefix or substring), framework, model type, stage, tags, creator,
creation-time range and metric thresholds (``accuracy > 0.9``). Sorting by creation time
or name pages with a keyset cursor (stable under inserts); sorting by a metric pages by
offset. Cursors are opaque base64 strings, strictly checked when they come back
(:func:`mlrig.validation.decode_cursor`): a crafted one is a 422, never a crash.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_, select

from mlrig.db.models import MLModel, RegisteredModel, User
from mlrig.errors import ValidationError
from mlrig.validation import as_utc, decode_cursor, encode_cursor

__all__ = ["MetricFilter", "VersionQuery", "build_query", "decode_cursor", "encode_cursor"]

_METRIC = re.compile(
    r"^\s*(?:metrics\.)?([A-Za-z_][A-Za-z0-9_.-]{0,99})\s*(>=|<=|==|!=|>|<|=)\s*"
    r"(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
_SORTS = ("created_at", "-created_at", "name", "-name")
MAX_LIMIT = 1000


@dataclass(frozen=True)
class MetricFilter:
    """``metrics.<name> <op> <value>``."""

    name: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> MetricFilter:
        found = _METRIC.match(text)
        if not found:
            msg = (
                f"invalid metric filter {text!r}: use NAME OP NUMBER, e.g. 'accuracy > 0.9' "
                "with OP one of > >= < <= = !="
            )
            raise ValidationError(msg)
        op = "==" if found.group(2) == "=" else found.group(2)
        return cls(found.group(1), op, float(found.group(3)))


@dataclass(frozen=True)
class VersionQuery:
    """What to look for among model versions (every field optional)."""

    model_id: uuid.UUID | None = None
    name: str | None = None
    name_prefix: str | None = None
    name_contains: str | None = None
    framework: str | None = None
    model_type: str | None = None
    stage: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    created_by: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    metrics: tuple[MetricFilter, ...] = ()
    sort: str = "-created_at"
    limit: int = 50
    cursor: str | None = None

    def __post_init__(self) -> None:
        for name in ("created_after", "created_before"):  # naive: UTC (mlrig.validation)
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, as_utc(value, field=name))
        if not (1 <= self.limit <= MAX_LIMIT):
            msg = f"limit must be between 1 and {MAX_LIMIT}, got {self.limit}"
            raise ValidationError(msg)
        if self.sort not in _SORTS and not _metric_sort(self.sort):
            msg = (
                f"invalid sort {self.sort!r}: one of {', '.join(_SORTS)} or "
                "metrics.NAME / -metrics.NAME"
            )
            raise ValidationError(msg)


def _metric_sort(sort: str) -> str | None:
    found = re.match(r"^-?metrics\.([A-Za-z_][A-Za-z0-9_.-]{0,99})$", sort)
    return found.group(1) if found else None


def metric_sort_name(sort: str) -> str | None:
    """The metric a sort such as ``-metrics.accuracy`` orders by, else ``None``."""
    return _metric_sort(sort)


def _metric_column(name: str) -> Any:
    return MLModel.metrics[name].as_float()


def _compare(column: Any, op: str, value: float) -> Any:
    return {
        ">": column > value,
        ">=": column >= value,
        "<": column < value,
        "<=": column <= value,
        "==": column == value,
        "!=": column != value,
    }[op]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


#: the two cursor shapes: an offset (metric sorts) or a keyset position
OFFSET_CURSOR = {"offset": int}
KEYSET_CURSOR = {"k": str, "id": str}


def _decode(cursor: str, spec: dict[str, type]) -> dict[str, Any]:
    """The strictly checked fields of a cursor of this query's shape."""
    return decode_cursor(cursor, spec)


def build_query(query: VersionQuery) -> tuple[Select[Any], Any]:
    """The SELECT for ``query`` (one page + 1 row) and the column the cursor is built on."""
    stmt = (
        select(MLModel, User.name)
        .join(RegisteredModel, RegisteredModel.id == MLModel.registered_model_id)
        .outerjoin(User, User.id == MLModel.created_by)
        .where(MLModel.deleted_at.is_(None), RegisteredModel.deleted_at.is_(None))
    )
    if query.model_id is not None:
        stmt = stmt.where(MLModel.registered_model_id == query.model_id)
    if query.name is not None:
        stmt = stmt.where(MLModel.name == query.name)
    if query.name_prefix:
        stmt = stmt.where(MLModel.name.like(_escape_like(query.name_prefix) + "%", escape="\\"))
    if query.name_contains:
        pattern = "%" + _escape_like(query.name_contains.lower()) + "%"
        stmt = stmt.where(MLModel.name.ilike(pattern, escape="\\"))
    for column, value in (
        (MLModel.framework, query.framework),
        (MLModel.model_type, query.model_type),
        (MLModel.stage, query.stage),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    for key, value in query.tags.items():
        stmt = stmt.where(MLModel.tags[key].as_string() == value)
    if query.created_by is not None:
        stmt = stmt.where(User.name == query.created_by)
    if query.created_after is not None:
        stmt = stmt.where(MLModel.created_at >= query.created_after)
    if query.created_before is not None:
        stmt = stmt.where(MLModel.created_at < query.created_before)
    for metric in query.metrics:
        stmt = stmt.where(_compare(_metric_column(metric.name), metric.op, metric.value))

    descending = query.sort.startswith("-")
    metric_name = _metric_sort(query.sort)
    if metric_name is not None:
        column = _metric_column(metric_name)
        stmt = stmt.where(column.is_not(None))
        order = column.desc() if descending else column.asc()
        stmt = stmt.order_by(order, MLModel.id)
        offset = _decode(query.cursor, OFFSET_CURSOR)["offset"] if query.cursor else 0
        return stmt.offset(offset).limit(query.limit + 1), None
    column = MLModel.created_at if query.sort.lstrip("-") == "created_at" else MLModel.name
    cursor = _decode(query.cursor, KEYSET_CURSOR) if query.cursor else None
    if cursor is not None:
        stmt = stmt.where(_after(column, cursor, descending))
    if descending:
        stmt = stmt.order_by(column.desc(), MLModel.id.desc())
    else:
        stmt = stmt.order_by(column.asc(), MLModel.id.asc())
    return stmt.limit(query.limit + 1), column


def _after(column: Any, cursor: dict[str, Any], descending: bool) -> Any:
    try:
        raw, last_id = cursor["k"], uuid.UUID(cursor["id"])
        value: Any = raw
        if column is MLModel.created_at:
            value = as_utc(datetime.fromisoformat(raw), field="cursor")
    except (KeyError, ValueError, TypeError, ValidationError):
        msg = "invalid cursor: pass back the next_cursor of the previous page unchanged"
        raise ValidationError(msg, details={"field": "cursor"}) from None
    if descending:
        return or_(column < value, and_(column == value, MLModel.id < last_id))
    return or_(column > value, and_(column == value, MLModel.id > last_id))


def next_cursor(query: VersionQuery, rows: list[MLModel], has_more: bool) -> str | None:
    """The cursor of the page after ``rows``, or ``None`` on the last page."""
    if not has_more or not rows:
        return None
    if _metric_sort(query.sort) is not None:
        previous = _decode(query.cursor, OFFSET_CURSOR)["offset"] if query.cursor else 0
        return encode_cursor({"offset": previous + len(rows)})
    last = rows[-1]
    key = last.created_at.isoformat() if query.sort.lstrip("-") == "created_at" else last.name
    return encode_cursor({"k": key, "id": str(last.id)})
