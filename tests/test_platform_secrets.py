"""The installation's own secrets (``mlrig.security.secrets``): made once on first use,
the same for every process on the database, one value when two processes race to make
it, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import func, select

from mlrig.db import Database
from mlrig.db.models import PlatformSecret
from mlrig.security.secrets import SECRET_BYTES, installation_secret


def test_a_secret_is_made_once_and_read_back_by_another_process(database: Any, db_url: str):
    first = installation_secret(database, "features.pii_mask")
    assert len(first) == SECRET_BYTES
    # a second engine on the same database stands for another server or worker
    other = Database(db_url)
    try:
        assert installation_secret(other, "features.pii_mask") == first
        assert installation_secret(other, "another") != first
    finally:
        other.dispose()


def test_two_first_uses_at_once_end_with_one_secret(database: Any, db_url: str):
    engines = [Database(db_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    got: list[bytes] = []
    errors: list[BaseException] = []

    def make(db: Database) -> None:
        barrier.wait()
        try:
            got.append(installation_secret(db, "raced"))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(db,)) for db in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for db in engines:
        db.dispose()
    assert errors == []
    assert len(got) == len(engines) and len(set(got)) == 1
    with database.session() as session:
        count = session.scalar(
            select(func.count()).select_from(PlatformSecret).where(PlatformSecret.name == "raced")
        )
    assert count == 1


def test_installations_have_different_secrets(tmp_path: Any):
    from mlrig.db import migrate

    keys = []
    for name in ("one", "two"):
        db = Database(f"sqlite:///{tmp_path / name}.db")
        migrate.upgrade(db)
        keys.append(installation_secret(db, "features.pii_mask"))
        db.dispose()
    assert keys[0] != keys[1]
