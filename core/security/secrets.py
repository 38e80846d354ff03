"""Secrets the installation makes for itself: random bytes made on first use, kept in the
``platform_secrets`` table, the same for every server and worker on the database.

Two processes asking for a new secret at once both try to insert it; the loser reads the
winner's, so every reader ends with one value.
"""

from __future__ import annotations

import secrets as _random

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from mlrig.db import Database
from mlrig.db.models import PlatformSecret

#: bytes of a new secret
SECRET_BYTES = 32


def installation_secret(db: Database, name: str) -> bytes:
    """The secret ``name`` of the installation on ``db``, made now if there is none."""
    stored = _read(db, name)
    if stored is not None:
        return stored
    try:
        with db.session() as session:
            session.add(PlatformSecret(name=name, value=_random.token_hex(SECRET_BYTES)))
    except IntegrityError:  # another process made it first: theirs is the one
        pass
    stored = _read(db, name)
    if stored is None:  # pragma: no cover - the row was inserted or already there
        raise RuntimeError(f"platform secret {name!r} could not be stored")
    return stored


def _read(db: Database, name: str) -> bytes | None:
    with db.session() as session:
        value = session.scalar(select(PlatformSecret.value).where(PlatformSecret.name == name))
    return bytes.fromhex(value) if value is not None else None
