"""Finding rows by a prefix of their id, as git finds commits.

Tables in the CLI show ids truncated, so every lookup by id also accepts a unique
prefix of at least :data:`MIN_PREFIX` hex digits (dashes are ignored). Services try the
full id and the name first; a prefix is the last resort.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import String, cast, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from mlrig.errors import ValidationError

#: the fewest hex digits taken as an id prefix (shorter ones match too much)
MIN_PREFIX = 4
#: how many candidates an ambiguous prefix lists
_SHOWN = 10
_HEX_PREFIX = re.compile(r"^[0-9a-f]+$")


def id_prefix(ref: object) -> str | None:
    """``ref`` as lower-case hex digits without dashes if it can be an id prefix, else None."""
    if not isinstance(ref, str):
        return None
    digits = ref.strip().lower().replace("-", "")
    if not (MIN_PREFIX <= len(digits) <= 32) or not _HEX_PREFIX.match(digits):
        return None
    return digits


def find_by_id_prefix(
    session: Session,
    column: InstrumentedAttribute[uuid.UUID],
    ref: object,
    *,
    where: Iterable[Any] = (),
    what: str,
) -> uuid.UUID | None:
    """The one id in ``column`` that starts with the prefix ``ref`` (rows filtered by
    ``where``); ``None`` when ``ref`` is no prefix or matches nothing.

    :param what: the kind of thing, for the message (``"model"``, ``"experiment"``).
    :raises ValidationError: the prefix matches several ids (they are listed).
    """
    digits = id_prefix(ref)
    if digits is None:
        return None
    if session.get_bind().dialect.name == "postgresql":
        # a native uuid: its text form has dashes
        text_id = func.replace(cast(column, String), "-", "")
    else:
        # SQLite stores Uuid as 32 lower-case hex characters
        text_id = func.lower(cast(column, String))
    stmt = select(column).where(text_id.like(f"{digits}%"), *where).limit(_SHOWN + 1)
    found = list(session.scalars(stmt))
    if len(found) <= 1:
        return found[0] if found else None
    shown = ", ".join(str(i) for i in found[:_SHOWN])
    more = " and more" if len(found) > _SHOWN else ""
    msg = (
        f"{what} id prefix {ref!r} is ambiguous: it matches {shown}{more}; "
        "give more characters of the id"
    )
    raise ValidationError(msg, details={"candidates": [str(i) for i in found[:_SHOWN]]})
