"""The database: engine, connection pool, sessions and the schema policy.

SQLite is the embedded default and PostgreSQL the production database; both get the
same models and migrations. The embedded SQLite database migrates itself on first use;
any other database must be migrated explicitly (``mlrig db upgrade``), and a schema
behind the code is refused at start instead of failing later on a missing column.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    StatementError,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool, StaticPool

from mlrig.db import guard
from mlrig.errors import ConfigError, MissingExtraError, MlrigError, SchemaOutOfDateError

if TYPE_CHECKING:
    from mlrig.config import Settings

#: Seconds a SQLite connection waits for another writer before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30


class Database:
    """An engine with its pool and a session factory for one database URL.

    :param url: a SQLAlchemy URL; ``postgresql://`` uses psycopg 3, relative SQLite
        paths are taken from the current directory (the config resolves them first).
    :param pool_size: connections kept open per process.
    :param max_overflow: extra connections allowed under load.
    :param echo: log every SQL statement.

    Building a :class:`Database` connects to nothing; :meth:`from_settings` also applies
    the schema policy (:meth:`ensure_schema`).
    """

    def __init__(
        self, url: str | URL, *, pool_size: int = 10, max_overflow: int = 20, echo: bool = False
    ) -> None:
        self.url = normalize_url(url)
        self.engine = _create_engine(
            self.url, pool_size=pool_size, max_overflow=max_overflow, echo=echo
        )
        #: the session factory: sessions keep loaded values readable after commit
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        #: SQLite has one writer at a time: threads of this process writing big batches
        #: take turns on this lock instead of in SQLite's busy handler, which sleeps and
        #: retries with back-off (a waiting request could wait seconds while others got
        #: in first). Other processes still meet at SQLite's own lock.
        self.bulk_write_lock: AbstractContextManager[Any] = (
            threading.Lock() if self.engine.dialect.name == "sqlite" else nullcontext()
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, ensure_schema: bool = True) -> Database:
        """The database of the ``[database]`` config section.

        :param ensure_schema: apply the schema policy (:meth:`ensure_schema`): upgrade an
            embedded SQLite database, refuse any other whose schema is not current.
        :raises SchemaOutOfDateError: a non-SQLite schema behind (or ahead of) the code.
        """
        section = settings.database
        db = cls(
            settings.database_url,
            pool_size=section.pool_size,
            max_overflow=section.max_overflow,
            echo=section.echo,
        )
        if ensure_schema:
            try:
                db.ensure_schema()
            except BaseException:
                db.dispose()
                raise
        return db

    # --- facts --------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"`` (the SQLAlchemy dialect name)."""
        return self.engine.dialect.name

    @property
    def display_url(self) -> str:
        """The URL with its password hidden, for messages and logs."""
        return self.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Database({self.display_url!r})"

    # --- sessions -----------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error.

        One session per unit of work (one API request, one job step); sessions are not
        shared between threads, the engine's pool is.
        """
        session = self.sessionmaker()
        try:
            yield session
            session.commit()
        except StatementError as exc:
            session.rollback()
            if isinstance(exc.orig, MlrigError):  # a value the guard refused (db.guard)
                raise exc.orig from None
            raise
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def begin_write(self, session: Session) -> None:
        """Take the write lock now on SQLite (``BEGIN IMMEDIATE``), so that a read followed
        by a write in ``session`` is one atomic step; PostgreSQL callers lock the rows they
        read (``FOR UPDATE``) instead."""
        if self.dialect == "sqlite":
            session.execute(text("BEGIN IMMEDIATE"))

    # --- schema -------------------------------------------------------------------

    def schema_revision(self) -> str | None:
        """The migration revision the database is at; ``None`` for an empty database.

        One query; the catalog is asked only when that query fails.
        """
        with _translate_connect_errors(self):
            with self.engine.connect() as conn:
                try:
                    rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
                except (OperationalError, ProgrammingError):
                    conn.rollback()
                    if inspect(conn).has_table("alembic_version"):
                        raise
                    return None
        if not rows:
            return None
        return ",".join(sorted(r[0] for r in rows))

    def ensure_schema(self) -> None:
        """Apply the schema policy: upgrade embedded SQLite, refuse any other stale schema.

        Costs one query when the schema is current.

        :raises SchemaOutOfDateError: when the schema is not at the code's head revision
            (and is not an SQLite database this call could upgrade).
        """
        from mlrig.db import migrate

        revision = self.schema_revision()
        if revision == migrate.head():
            return
        if self.dialect == "sqlite" and migrate.is_known(revision):
            migrate.upgrade(self)
            return
        self._refuse(revision)

    def require_current_schema(self) -> None:
        """Raise unless the schema is at this mlrig's head revision (never migrates).

        :raises SchemaOutOfDateError: naming the current and the expected revision and
            the command that fixes it.
        """
        from mlrig.db import migrate

        revision = self.schema_revision()
        if revision != migrate.head():
            self._refuse(revision)

    def _refuse(self, revision: str | None) -> None:
        from mlrig.db import migrate

        expected = migrate.head()
        if migrate.is_known(revision):
            found = "empty (no mlrig tables)" if revision is None else f"at revision {revision!r}"
            msg = (
                f"database {self.display_url} schema is {found}, this mlrig needs revision "
                f"{expected!r}; run `mlrig db upgrade` (with the same config) to migrate it"
            )
        else:
            msg = (
                f"database {self.display_url} schema is at revision {revision!r}, which this "
                f"mlrig does not know (its newest is {expected!r}); it was migrated by a newer "
                "mlrig: upgrade mlrig, or run `mlrig db downgrade` with that newer version"
            )
        raise SchemaOutOfDateError(msg, details={"current": revision, "expected": expected})

    def check(self) -> dict[str, Any]:
        """Facts for the health check: dialect, driver, revision, head; raises if unreachable."""
        from mlrig.db import migrate

        revision = self.schema_revision()
        expected = migrate.head()
        return {
            "dialect": self.dialect,
            "driver": self.engine.dialect.driver,
            "url": self.display_url,
            "revision": revision,
            "head": expected,
            "schema_current": revision == expected,
        }

    def dispose(self) -> None:
        """Close every pooled connection (call at shutdown and in a forked child)."""
        self.engine.dispose()


def normalize_url(url: str | URL) -> URL:
    """``url`` as a SQLAlchemy URL, with PostgreSQL on the psycopg 3 driver.

    :raises ConfigError: the URL cannot be parsed.
    :raises MissingExtraError: PostgreSQL without psycopg installed.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:
        msg = f"database url {_redacted(url)!r} is not a valid URL ({exc}); expected e.g. "
        msg += "sqlite:///.mlrig/mlrig.db or postgresql://user:password@host/dbname"
        raise ConfigError(msg) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername == "postgresql+psycopg" and importlib.util.find_spec("psycopg") is None:
        msg = "a PostgreSQL database needs psycopg: pip install 'mlrig[postgres]'"
        raise MissingExtraError(msg)
    return parsed


def _redacted(url: str | URL) -> str:
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    from mlrig.config import redact_url

    return redact_url(url)


def _create_engine(url: URL, *, pool_size: int, max_overflow: int, echo: bool) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _create_sqlite_engine(url, pool_size=pool_size, max_overflow=max_overflow, echo=echo)
    try:
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            echo=echo,
            json_serializer=guard.dump_json,
            json_deserializer=guard.load_json,
        )
    except (NoSuchModuleError, ArgumentError, ImportError) as exc:
        msg = (
            f"database url {_redacted(url)!r} is not supported ({exc}); "
            "use sqlite:///path/to/file.db or postgresql://user:password@host/dbname"
        )
        raise ConfigError(msg) from None
    _guard_against_fork(engine)
    guard.install(engine)
    return engine


def _is_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


def _create_sqlite_engine(url: URL, *, pool_size: int, max_overflow: int, echo: bool) -> Engine:
    # check_same_thread: the pool hands a connection to one thread at a time, and a
    # server's threads (FastAPI's thread pool) take turns on pooled connections.
    connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
    if _is_memory(url):
        # One connection is the whole in-memory database: share it.
        engine = create_engine(
            url,
            poolclass=StaticPool,
            connect_args=connect_args,
            echo=echo,
            json_serializer=guard.dump_json,
            json_deserializer=guard.load_json,
        )
    else:
        database = url.database or ""
        if not database.startswith("file:"):
            folder = Path(database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                msg = f"cannot create the folder of database {_redacted(url)}: {exc.strerror}"
                raise ConfigError(msg) from None
        engine = create_engine(
            url,
            poolclass=QueuePool,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            connect_args=connect_args,
            echo=echo,
            json_serializer=guard.dump_json,
            json_deserializer=guard.load_json,
        )
        _guard_against_fork(engine)
    event.listen(engine, "connect", _sqlite_pragmas)
    guard.install(engine)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # SQLite ignores foreign keys (and so ON DELETE CASCADE) unless asked, per connection.
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        # WAL: readers never block the writer nor each other; NORMAL is durable in WAL
        # except for the last transactions on power loss, and much faster than FULL.
        _enter_wal_mode(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _enter_wal_mode(cursor: Any) -> None:
    """Switch the database to WAL, waiting out other connections doing the same.

    Several connections opening a new database at once (threads of a first use) race to
    change its journal mode; the losers get "database is locked" at once, without the
    busy handler, so they retry here for up to the busy timeout.
    """
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def _guard_against_fork(engine: Engine) -> None:
    """Never hand a connection opened by a parent process to a forked child.

    A server with several worker processes may fork after the engine connected; sharing
    a socket (or an SQLite file handle) between processes corrupts both sides.
    """

    @event.listens_for(engine, "connect")
    def _remember_pid(dbapi_connection: Any, connection_record: Any) -> None:
        connection_record.info["pid"] = os.getpid()

    @event.listens_for(engine, "checkout")
    def _check_pid(dbapi_connection: Any, connection_record: Any, connection_proxy: Any) -> None:
        pid = os.getpid()
        if connection_record.info.get("pid", pid) != pid:
            from sqlalchemy.exc import DisconnectionError

            connection_record.dbapi_connection = connection_proxy.dbapi_connection = None
            msg = f"connection opened in process {connection_record.info['pid']}, used in {pid}"
            raise DisconnectionError(msg)


@contextmanager
def _translate_connect_errors(db: Database) -> Iterator[None]:
    """A database that cannot be reached is a one-line :class:`ConfigError`."""
    try:
        yield
    except DBAPIError as exc:
        if not exc.connection_invalidated and not _is_connect_error(exc):
            raise
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        msg = f"cannot connect to database {db.display_url}: {reason}; check [database] url"
        raise ConfigError(msg) from None


def _is_connect_error(exc: DBAPIError) -> bool:
    # Errors raised while opening a connection carry no statement.
    return isinstance(exc, OperationalError) and not exc.statement
