"""Schema migrations (Alembic), driven from code: no ``alembic.ini`` is needed.

The migration scripts ship inside the package (``mlrig/db/migrations``). Each run holds
a lock for its whole duration (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on
PostgreSQL), so two processes starting on the same fresh database migrate it once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection

from mlrig.errors import MlrigError, ValidationError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from mlrig.db.engine import Database

#: where the migration environment and the revision scripts live
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# arbitrary, stable: the key of the PostgreSQL advisory lock held while migrating
_PG_LOCK_KEY = 0x6D6C726967  # "mlrig"

#: called with one line per applied or reverted revision
Progress = Callable[[str], None]


def config(url: str | URL | None = None) -> Config:
    """An Alembic config for mlrig's migrations, for ``alembic.command`` calls.

    Contributors create a revision with
    ``command.revision(config(url), message="...", autogenerate=True)``.
    """
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
        # ConfigParser interpolation: a literal % must be doubled.
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config())


def head() -> str:
    """The newest revision this mlrig ships (what ``upgrade`` goes to).

    A constant, so that checking a schema costs no alembic import (job processes start
    often); ``tests/test_db_head.py`` keeps it equal to the migration scripts' head.
    """
    from mlrig.db.migrations import HEAD_REVISION

    return HEAD_REVISION


def script_head() -> str:
    """The head revision as alembic computes it from the migration scripts."""
    revision = _script().get_current_head()
    if revision is None:  # pragma: no cover - the package always ships revisions
        msg = f"no migrations found in {MIGRATIONS_DIR}"
        raise MlrigError(msg)
    return revision


def revisions() -> list[str]:
    """Every revision this mlrig ships, oldest first."""
    return list(_revisions())


@lru_cache(maxsize=1)
def _revisions() -> tuple[str, ...]:
    return tuple(s.revision for s in reversed(list(_script().walk_revisions())))


def is_known(revision: str | None) -> bool:
    """Whether ``revision`` is one of ours (``None``, the empty database, always is)."""
    return revision is None or all(r in _revisions() for r in revision.split(","))


def current(db_or_url: Database | str | URL) -> str | None:
    """The revision the database is at, ``None`` when it has no mlrig schema."""
    with _database(db_or_url) as db:
        return db.schema_revision()


def upgrade(
    db_or_url: Database | str | URL, revision: str = "head", *, progress: Progress | None = None
) -> str | None:
    """Migrate the database up to ``revision`` (default: the newest); returns where it is.

    :raises ValidationError: ``revision`` is not one this mlrig knows.
    """
    from alembic import command

    return _run(db_or_url, lambda cfg: command.upgrade(cfg, revision), progress)


def downgrade(
    db_or_url: Database | str | URL, revision: str, *, progress: Progress | None = None
) -> str | None:
    """Migrate the database down to ``revision`` (``"base"`` drops everything, ``"-1"`` one
    step); returns where it is.

    :raises ValidationError: ``revision`` is unknown or not below the current one.
    """
    from alembic import command

    return _run(db_or_url, lambda cfg: command.downgrade(cfg, revision), progress)


def _run(
    db_or_url: Database | str | URL,
    action: Callable[[Config], None],
    progress: Progress | None,
) -> str | None:
    from alembic.util import CommandError

    with _database(db_or_url) as db:
        db.schema_revision()  # an unreachable database fails here, in one line
        cfg = config()
        if progress is not None:
            cfg.attributes["on_version_apply"] = _reporter(progress)
        with db.engine.connect() as conn, _migration_lock(conn):
            cfg.attributes["connection"] = conn
            try:
                action(cfg)
            except CommandError as exc:
                msg = f"{exc}; known revisions: {', '.join(revisions())} (and base, head, -N)"
                raise ValidationError(msg) from None
        return db.schema_revision()


@contextmanager
def _database(db_or_url: Database | str | URL) -> Iterator[Database]:
    from mlrig.db.engine import Database

    if isinstance(db_or_url, Database):
        yield db_or_url
        return
    db = Database(db_or_url, pool_size=1, max_overflow=0)
    try:
        yield db
    finally:
        db.dispose()


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """Run the migration in one transaction that holds the database's migration lock.

    Alembic sees the transaction already open and runs inside it; it commits here.
    """
    sqlite = conn.dialect.name == "sqlite"
    if sqlite:
        # Table rebuilds (batch migrations) and drops must not trip on foreign keys
        # midway; the check below verifies them once at the end. The pragma only takes
        # effect outside a transaction.
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    else:
        conn.begin()
    try:
        yield
        if sqlite:
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                msg = f"migration left rows with dangling foreign keys: {broken[:5]}"
                raise MlrigError(msg)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()


def _reporter(progress: Progress) -> Callable[..., None]:
    # Alembic calls this after each revision with keyword arguments (ctx, step, heads...).
    def on_version_apply(*, step: Any, **kw: Any) -> None:
        verb = "applied" if step.is_upgrade else "reverted"
        script = step.up_revision
        doc = f": {script.doc}" if script is not None and script.doc else ""
        progress(f"{verb} {step.up_revision_id}{doc}")

    return on_version_apply
