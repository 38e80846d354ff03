"""The declarative base, the constraint naming convention and shared column helpers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import MetaData, func, text
from sqlalchemy.orm import DeclarativeBase, MappedColumn, mapped_column

from mlrig.db.types import GUID, JSONType, UTCDateTime, new_uuid, utcnow

# Deterministic constraint names: migrations can drop what they created, and the names
# are the same on SQLite and PostgreSQL. Spec indexes keep their spec names (given
# explicitly); the others get ix_<table>_<columns>.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base class of every mlrig table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        uuid.UUID: GUID,
        datetime: UTCDateTime,
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
    }

    def __repr__(self) -> str:
        key = getattr(self, "id", None)
        return f"<{type(self).__name__} id={key}>"


def uuid_pk() -> MappedColumn[Any]:
    """A UUID primary key, filled in Python and, for raw SQL, by the server."""
    return mapped_column(GUID, primary_key=True, default=uuid.uuid4, server_default=new_uuid())


def created_at(*, nullable: bool = False) -> MappedColumn[Any]:
    """``created_at ... DEFAULT NOW()`` (the spec's tables leave it nullable)."""
    return mapped_column(UTCDateTime, nullable=nullable, default=utcnow, server_default=func.now())


def updated_at(*, nullable: bool = False) -> MappedColumn[Any]:
    """``updated_at ... DEFAULT NOW()``, refreshed by the ORM on every update."""
    return mapped_column(
        UTCDateTime, nullable=nullable, default=utcnow, onupdate=utcnow, server_default=func.now()
    )


def json_object(*, nullable: bool = True) -> MappedColumn[Any]:
    """A JSON object column, ``DEFAULT '{}'``.

    Assign a new dict to change it: in-place mutation is not tracked by the ORM.
    """
    return mapped_column(JSONType, nullable=nullable, default=dict, server_default=text("'{}'"))


def json_array(*, nullable: bool = True) -> MappedColumn[Any]:
    """A JSON array column, ``DEFAULT '[]'`` (assign a new list to change it)."""
    return mapped_column(JSONType, nullable=nullable, default=list, server_default=text("'[]'"))


def choices_check(column: str, values: tuple[str, ...]) -> str:
    """The SQL of a check constraint limiting ``column`` to ``values``."""
    allowed = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({allowed})"
