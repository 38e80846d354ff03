"""Portable column types: the same models run on SQLite and PostgreSQL.

- :data:`GUID`: UUID keys (native ``uuid`` on PostgreSQL, ``CHAR(32)`` on SQLite).
- :data:`JSONType`: ``JSONB`` on PostgreSQL, ``JSON`` (text) elsewhere; ``None`` is SQL NULL.
- :class:`UTCDateTime`: timezone-aware UTC datetimes on every database.
- :class:`new_uuid`: a server-side default for UUID keys (``gen_random_uuid()`` on PostgreSQL).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

#: UUID primary and foreign keys, handed to Python as :class:`uuid.UUID`.
GUID = Uuid(as_uuid=True)

# none_as_null: a Python ``None`` becomes SQL NULL, not the JSON text 'null', so
# ``IS NULL`` filters mean the same on both databases.
#: JSON documents: ``JSONB`` on PostgreSQL (indexable, compact), ``JSON`` elsewhere.
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the default of every timestamp column)."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` with a time zone: a naive one is taken as UTC (what SQLite stores)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


class UTCDateTime(TypeDecorator[datetime]):
    """``TIMESTAMP WITH TIME ZONE`` that always comes back aware, in UTC.

    PostgreSQL stores the instant natively. SQLite has no time zone support, so values
    are stored as naive UTC text and marked UTC again when read. Naive datetimes are
    refused on the way in: their meaning depends on the machine that made them.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            msg = f"expected a datetime, got {type(value).__name__} {value!r}"
            raise TypeError(msg)
        if value.tzinfo is None or value.utcoffset() is None:
            msg = (
                f"naive datetime {value.isoformat()!r}; mlrig stores aware datetimes only, "
                "use datetime.now(timezone.utc) or attach a tzinfo"
            )
            raise ValueError(msg)
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            # SQLite's DATETIME text would silently drop the offset: store naive UTC.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class new_uuid(FunctionElement[uuid.UUID]):  # lower case, like the SQL function it stands for
    """A server-side random UUID, for rows inserted by raw SQL without an ``id``.

    The ORM and Core inserts fill ``id`` in Python (``uuid.uuid4``); this default makes
    ``INSERT ... (cols without id)`` work too, as the spec's ``DEFAULT gen_random_uuid()``.
    """

    type = GUID
    name = "new_uuid"
    inherit_cache = True


@compiles(new_uuid, "postgresql")
def _new_uuid_postgresql(element: new_uuid, compiler: Any, **kw: Any) -> str:
    return "gen_random_uuid()"


@compiles(new_uuid)
def _new_uuid_default(element: new_uuid, compiler: Any, **kw: Any) -> str:
    # SQLite stores Uuid as 32 hex characters without dashes; the random bits need no
    # version nibble to parse as a UUID.
    return "lower(hex(randomblob(16)))"
