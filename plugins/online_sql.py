"""The ``sql`` online store: the platform database (the default ``[features] backend``).

Rows live in the table ``feature_online_values`` (created by the platform's migrations):
primary key ``(view, entity_key)``, the feature values as one JSON document, the event
and created timestamps.

- A read is one indexed statement whatever the number of keys (they travel as one
  parameter: ``json_each`` on SQLite, ``= ANY(array)`` on PostgreSQL; the TTL in the same
  ``WHERE``; several views: one ``UNION ALL``, views sharing a key list or a TTL sharing
  its parameter), run on a driver cursor without compiling SQL; PostgreSQL reads use an
  autocommit pool without pre-ping (one round trip) whose sessions always run the
  statement's generic plan (no planning per read).
- A write is a batched upsert (``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the new row
  is not older: ``executemany`` on SQLite, ``COPY`` into a staging table then one
  ``INSERT ... SELECT`` on PostgreSQL), so concurrent writers cannot make an older row win.

Options (``[features.sql]``): ``batch_size`` (rows per upsert batch).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    Column,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    func,
)
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from mlrig.contracts.online_store import (
    EntityKey,
    OnlineRow,
    OnlineStore,
    OnlineStoreError,
    ViewRead,
)
from mlrig.db.types import UTCDateTime, utcnow
from mlrig.errors import ConfigError
from mlrig.features.online import newest_per_key

if TYPE_CHECKING:
    from mlrig.db import Database
    from mlrig.plugins.pg_async import AsyncReadPool

TABLE = "feature_online_values"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _table(dialect: str) -> Table:
    """The columns this store uses (the migration owns the table's definition)."""
    return Table(
        TABLE,
        MetaData(),
        Column("view", String(255), primary_key=True),
        Column("entity_key", String(1024), primary_key=True),
        Column("values", Text),
        Column("event_timestamp", UTCDateTime, nullable=False),
        Column("created_timestamp", UTCDateTime, nullable=True),
        Column("written_at", UTCDateTime, nullable=True),
    )


class SqlOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: rows per upsert statement (each row binds six parameters)
    batch_size: int = Field(default=1000, ge=1, le=5000)


def encode_stored_key(key: EntityKey) -> str:
    """The ``entity_key`` column's text of a key: a JSON array of its strings."""
    return orjson.dumps(list(key)).decode()


class SqlOnlineStore(OnlineStore):
    """Online feature values in the platform database (``feature_online_values``)."""

    Options = SqlOptions

    def __init__(self, options: BaseModel) -> None:
        super().__init__(options)
        self._db: Database | None = None
        self._table = _table("sqlite")
        self._dialect = "sqlite"
        self._read_sql: dict[tuple[tuple[int, int, int | None], ...], str] = {}
        self._reads: Engine | None = None
        self._async: AsyncReadPool | None = None
        self._unanalyzed = 0
        self._analyzed_at = -math.inf
        #: views this process has analysed the table after writing
        self._analyzed_views: set[str] = set()

    # --- wiring -------------------------------------------------------------------------

    def bind(self, platform: Any) -> None:
        """Use the platform's database (called by ``platform.online_store``)."""
        self.bind_database(platform.db)

    def bind_database(self, db: Database) -> None:
        """Use ``db`` (the contract tests and tools without a platform)."""
        self._db = db
        self._table = _table(db.dialect)
        self._dialect = db.dialect
        self._read_sql: dict[tuple[tuple[int, int, int | None], ...], str] = {}
        self._reads = _read_engine(db)
        self._async = _async_pool(db) if db.dialect == "postgresql" else None

    @property
    def local_reads(self) -> bool:  # type: ignore[override]
        """On SQLite (WAL: a read never waits for a writer) reads are local file reads."""
        return self._db is not None and self._dialect == "sqlite"

    @property
    def db(self) -> Database:
        if self._db is None:
            msg = (
                "the sql online store is not bound to a database; get it as "
                "platform.online_store (or call bind(platform))"
            )
            raise ConfigError(msg)
        return self._db

    # --- the contract -------------------------------------------------------------------

    def write(
        self, view: str, rows: Sequence[OnlineRow], *, ttl_seconds: float | None = None
    ) -> int:
        if not rows:
            return 0
        db = self.db
        # in key order: two writers upserting overlapping keys (a push during a
        # materialisation) then lock rows in the same order and cannot deadlock
        newest = sorted(newest_per_key(rows).values(), key=lambda r: encode_stored_key(r.key))
        size = self.options.batch_size
        now = utcnow()
        sql = _UPSERT[self._dialect]
        when = self._bind_time
        dumps = orjson.dumps
        option = orjson.OPT_SERIALIZE_NUMPY
        written_at = when(now)
        written = 0
        copy = self._dialect == "postgresql"
        try:
            with db.bulk_write_lock, db.engine.begin() as conn:
                cursor = conn.connection.cursor()  # executemany on the driver: no compiling
                try:
                    for start in range(0, len(newest), size):
                        params = [
                            (
                                view,
                                encode_stored_key(row.key),
                                dumps(row.values, option=option).decode(),
                                when(_aware(row.event_timestamp)),
                                None
                                if row.created_timestamp is None
                                else when(_aware(row.created_timestamp)),
                                written_at,
                            )
                            for row in newest[start : start + size]
                        ]
                        if copy and len(params) >= _COPY_FROM:
                            written += _copy_upsert(cursor, params)
                        else:
                            cursor.executemany(sql, params)
                            written += max(cursor.rowcount, 0)
                finally:
                    cursor.close()
        except (SQLAlchemyError, *_driver_errors()) as exc:
            raise self._error("write", view, exc) from exc
        if copy:
            self._analyze_after(view, len(newest))
        return written

    def _analyze_after(self, view: str, rows: int) -> None:
        """PostgreSQL: refresh the table's statistics after bulk writes. Right after a load,
        stale statistics make the planner scan the whole view for a read instead of looking
        the keys up (20 ms instead of 1 ms for 100 keys of a 10,000-entity view) until
        autovacuum catches up. The worst case is a view the statistics have never seen:
        estimated at one row, its reads walk every row of the view (measured: 6-9 ms for one
        key of a 10,000-entity view), so the first bulk write of a view in this process is
        always followed by ``ANALYZE``; later ones at most every ``_ANALYZE_EVERY_S``."""
        self._unanalyzed += rows
        if self._unanalyzed < _ANALYZE_ROWS:
            return
        now = time.monotonic()
        if view in self._analyzed_views and now - self._analyzed_at < _ANALYZE_EVERY_S:
            return
        self._analyzed_at, self._unanalyzed = now, 0
        self._analyzed_views.add(view)
        engine = self._reads or self.db.engine
        with contextlib.suppress(SQLAlchemyError), engine.connect() as conn:
            conn.exec_driver_sql(f"ANALYZE {TABLE}")

    def read(
        self,
        view: str,
        keys: Sequence[EntityKey],
        features: Sequence[str],
        *,
        ttl_seconds: float | None,
        now: datetime,
    ) -> list[dict[str, Any] | None]:
        if not keys:
            return []
        return self.read_many([ViewRead(view, keys, features, ttl_seconds)], now=now)[0]

    def read_many(
        self, reads: Sequence[ViewRead], *, now: datetime
    ) -> list[list[dict[str, Any] | None]]:
        """Every view's keys in one statement (a ``UNION ALL`` of one indexed lookup per
        view, each with its TTL): one round trip. Views of the same entities share one
        key list, and views of the same TTL one cutoff: each travels once (named
        parameters), where dumping the same array five times was a third of the
        client's time of a five-view read."""
        plan = self._plan(reads, now)
        if plan is None:
            return [[] for _ in reads]
        sql, params, stored = plan
        engine = self._reads or self.db.engine
        try:
            try:
                rows = _fetch(engine, sql, params)
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                # a pooled connection the server closed (no pre-ping on this path): once more
                rows = _fetch(engine, sql, params)
        except SQLAlchemyError as exc:
            raise self._error("read", ", ".join(r.view for r in reads), exc) from exc
        return _picked(reads, stored, rows)

    @property
    def async_reads(self) -> bool:  # type: ignore[override]
        """On PostgreSQL, :meth:`aread_many` awaits psycopg's async connections."""
        return self._async is not None

    async def aread_many(
        self, reads: Sequence[ViewRead], *, now: datetime
    ) -> list[list[dict[str, Any] | None]]:
        """:meth:`read_many` on the event loop (PostgreSQL: an async connection of the
        loop's own, the same statement; SQLite: in a thread)."""
        if self._async is None:
            return await super().aread_many(reads, now=now)
        plan = self._plan(reads, now)
        if plan is None:
            return [[] for _ in reads]
        sql, params, stored = plan
        try:
            rows = await self._async.fetch(sql, params)
        except _driver_errors() as exc:
            raise self._error("read", ", ".join(r.view for r in reads), exc) from exc
        return _picked(reads, stored, rows)

    def _plan(
        self, reads: Sequence[ViewRead], now: datetime
    ) -> tuple[str, dict[str, Any], list[list[str]]] | None:
        """The read's statement, its parameters, and per part the stored keys' texts in
        the asked order (``None``: no key asked at all)."""
        params: dict[str, Any] = {}
        slots: dict[Any, int] = {}  # id(key list) or cutoff -> its parameter's number
        texts: dict[int, list[str]] = {}  # id(key list) -> the stored keys' texts
        stored: list[list[str]] = []
        shape: list[tuple[int, int, int | None]] = []  # (part, keys slot, cutoff slot)
        for i, part in enumerate(reads):
            slot = slots.get(id(part.keys))
            if slot is None:
                texts[id(part.keys)] = [encode_stored_key(k) for k in part.keys]
                slot = slots[id(part.keys)] = len(slots)
                unique = list(dict.fromkeys(texts[id(part.keys)]))
                params[f"k{slot}"] = (
                    unique if self._dialect == "postgresql" else orjson.dumps(unique).decode()
                )
            stored.append(texts[id(part.keys)])
            if not stored[i]:
                continue
            params[f"v{i}"] = part.view
            cut: int | None = None
            if part.ttl_seconds is not None:
                cutoff = self._bind_time(_aware(now) - timedelta(seconds=part.ttl_seconds))
                cut = slots.get(("cutoff", cutoff))
                if cut is None:
                    cut = slots[("cutoff", cutoff)] = len(slots)
                    params[f"c{cut}"] = cutoff
            shape.append((i, slot, cut))
        if not shape:
            return None
        key = tuple(shape)
        return self._read_sql.get(key) or self._remember_sql(key), params, stored

    def _remember_sql(self, shape: tuple[tuple[int, int, int | None], ...]) -> str:
        sql = " UNION ALL ".join(_read_sql(self._dialect, *part) for part in shape)
        if len(self._read_sql) < 256:  # shapes: views per read x shared keys and TTLs
            self._read_sql[shape] = sql
        return sql

    def delete_view(self, view: str) -> None:
        try:
            with self.db.bulk_write_lock, self.db.engine.begin() as conn:
                conn.execute(self._table.delete().where(self._table.c.view == view))
        except SQLAlchemyError as exc:
            raise self._error("delete the rows of", view, exc) from exc

    def check(self) -> dict[str, Any]:
        try:
            with self.db.engine.connect() as conn:
                conn.execute(sa_select(func.count()).select_from(self._table).limit(1)).all()
        except SQLAlchemyError as exc:
            raise self._error("probe", None, exc) from exc
        return {"backend": "sql", "database": self.db.dialect, "table": TABLE}

    def close(self) -> None:
        """Release the read pool (the platform owns the database itself)."""
        if self._reads is not None and self._db is not None and self._reads is not self._db.engine:
            self._reads.dispose()
        if self._async is not None:
            self._async.close()

    # --- helpers ------------------------------------------------------------------------

    def _bind_time(self, value: datetime) -> Any:
        """A time as the driver compares it with the stored column: PostgreSQL takes the
        instant; SQLite compares the naive UTC text SQLAlchemy stored."""
        if self._dialect == "postgresql":
            return value
        if value.utcoffset():
            value = value.astimezone(timezone.utc)
        # SQLAlchemy's SQLite DATETIME text: always six digits of microseconds
        return value.replace(tzinfo=None).isoformat(" ", "microseconds")

    def _error(self, action: str, view: str | None, exc: Exception) -> OnlineStoreError:
        first = " ".join(str(getattr(exc, "orig", exc) or exc).split())[:300]
        what = f" view {view!r}" if view else ""
        msg = (
            f"the sql online store could not {action}{what} in {self.db.display_url} "
            f"(table {TABLE}): {first}; run `mlrig db upgrade` if the table is missing"
        )
        return OnlineStoreError(msg, details={"view": view, "table": TABLE})


_COLUMNS = '(view, entity_key, "values", event_timestamp, created_timestamp, written_at)'
_NEWER = (
    "excluded.event_timestamp > {t}.event_timestamp OR (excluded.event_timestamp = "
    "{t}.event_timestamp AND COALESCE(excluded.created_timestamp, {epoch}) >= "
    "COALESCE({t}.created_timestamp, {epoch}))"
)
_SET = (
    'SET "values" = excluded."values", event_timestamp = excluded.event_timestamp, '
    "created_timestamp = excluded.created_timestamp, written_at = excluded.written_at"
)
#: the upsert, newest (event, created) winning, in each driver's parameter style
_UPSERT = {
    "sqlite": (
        f"INSERT INTO {TABLE} {_COLUMNS} VALUES (?, ?, ?, ?, ?, ?) "
        f"ON CONFLICT (view, entity_key) DO UPDATE {_SET} WHERE "
        + _NEWER.format(t=TABLE, epoch="'1970-01-01 00:00:00.000000'")
    ),
    "postgresql": (
        f"INSERT INTO {TABLE} {_COLUMNS} VALUES (%s, %s, %s::jsonb, %s, %s, %s) "
        f"ON CONFLICT (view, entity_key) DO UPDATE {_SET} WHERE "
        + _NEWER.format(t=TABLE, epoch="'1970-01-01 00:00:00+00'::timestamptz")
    ),
}


#: PostgreSQL: ANALYZE after this many rows written (and at most every so many seconds)
_ANALYZE_ROWS = 1000
_ANALYZE_EVERY_S = 10.0
#: PostgreSQL batches at least this long go through COPY into a temporary table
_COPY_FROM = 200
_STAGE = "mlrig_online_stage"
_STAGE_SQL = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (view text, entity_key text, "
    '"values" jsonb, event_timestamp timestamptz, created_timestamp timestamptz, '
    "written_at timestamptz) ON COMMIT DELETE ROWS"
)
_STAGE_UPSERT = (
    # rows in the same (bytewise = Python's) key order as executemany's, so that two
    # writers lock overlapping keys in one order
    f'INSERT INTO {TABLE} {_COLUMNS} SELECT * FROM {_STAGE} ORDER BY entity_key COLLATE "C" '
    f"ON CONFLICT (view, entity_key) DO UPDATE {_SET} WHERE "
    + _NEWER.format(t=TABLE, epoch="'1970-01-01 00:00:00+00'::timestamptz")
)


def _copy_upsert(cursor: Any, params: list[tuple[Any, ...]]) -> int:
    """PostgreSQL: ``COPY`` the batch into a session-local staging table, then one
    ``INSERT ... SELECT ... ON CONFLICT`` (several times faster than ``executemany``)."""
    cursor.execute(_STAGE_SQL)
    cursor.execute(f"TRUNCATE {_STAGE}")
    with cursor.copy(f"COPY {_STAGE} FROM STDIN") as copy:
        for row in params:
            copy.write_row(row)
    cursor.execute(_STAGE_UPSERT)
    return max(cursor.rowcount, 0)


def _fetch(engine: Engine, sql: str, params: dict[str, Any]) -> list[Any]:
    """Run a read on a pooled driver connection: the driver's cursor, without SQLAlchemy's
    ``Connection`` and ``Result`` around it (a tenth of a millisecond per read). A driver
    error comes back as SQLAlchemy's, with ``connection_invalidated`` set when the
    connection is gone (it is then dropped from the pool, not returned to it)."""
    dialect = engine.dialect
    try:
        conn = engine.raw_connection()
    except _driver_errors() as exc:  # the server refuses connections
        raise DBAPIError.instance(sql, params, exc, dialect.loaded_dbapi.Error) from exc
    try:
        cursor = conn.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchall()
        finally:
            cursor.close()
    except _driver_errors() as exc:
        gone = dialect.is_disconnect(exc, conn.dbapi_connection, None)
        if gone:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql,
            params,
            exc,
            dialect.loaded_dbapi.Error,
            connection_invalidated=gone,
            dialect=dialect,
        ) from exc
    finally:
        conn.close()


@functools.cache
def _driver_errors() -> tuple[type[BaseException], ...]:
    """The DBAPI errors of the drivers (raw cursors are not wrapped by SQLAlchemy)."""
    import sqlite3

    errors: list[type[BaseException]] = [sqlite3.Error]
    try:
        import psycopg
    except ImportError:
        pass
    else:
        errors.append(psycopg.Error)
    return tuple(errors)


def _read_engine(db: Database) -> Engine:
    """The engine reads go through. PostgreSQL: a pool of its own in autocommit, without
    pre-ping, so that a read is one round trip (no ``BEGIN``/``ROLLBACK``, no ping); a
    connection the server dropped is retried once. SQLite: the platform's engine."""
    if db.dialect != "postgresql":
        return db.engine
    pool = db.engine.pool
    return create_engine(
        db.url,
        isolation_level="AUTOCOMMIT",
        pool_pre_ping=False,
        # the connection used last: its server process has the view's pages and the
        # prepared statement warm, where a FIFO pool cycles through every connection
        pool_use_lifo=True,
        pool_size=getattr(pool, "size", lambda: 10)(),
        max_overflow=getattr(pool, "_max_overflow", 20),
        # psycopg prepares a statement after a few runs, but the server still plans it
        # per call for its first executions and whenever it judges a custom plan worth
        # it: planning the five-view UNION ALL took 0.17 ms of a 0.48 ms read. The read
        # is an index lookup whatever the keys, so the generic plan is always right
        # (measured: 0.48 -> 0.27 ms per 1 x 50 read, raw psycopg)
        connect_args={"options": _with_generic_plans(db.url.query.get("options"))},
    )


def _async_pool(db: Database) -> AsyncReadPool:
    """The async twin of :func:`_read_engine`'s pool: the same server and options
    (generic plans), at most the pool's size of connections per loop and no overflow
    (a read holds one for a fraction of a millisecond, so ten serve thousands of reads a
    second; a burst beyond them waits its turn instead of opening connections that
    several server processes together could run the server out of)."""
    from psycopg.conninfo import make_conninfo

    from mlrig.plugins.pg_async import AsyncReadPool

    url = db.url
    query = {k: " ".join(v) if isinstance(v, tuple) else v for k, v in url.query.items()}
    query["options"] = _with_generic_plans(url.query.get("options"))
    given = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    conninfo = make_conninfo(**{k: v for k, v in given.items() if v is not None}, **query)
    return AsyncReadPool(conninfo, size=getattr(db.engine.pool, "size", lambda: 10)())


def _with_generic_plans(options: str | tuple[str, ...] | None) -> str:
    """libpq ``options`` of the read pool: the URL's own, plus generic plans."""
    given = " ".join(options) if isinstance(options, tuple) else (options or "")
    return f"{given} -c plan_cache_mode=force_generic_plan".strip()


def _read_sql(dialect: str, part: int, keys: int, cutoff: int | None) -> str:
    """One view's read query, in the driver's own named-parameter style (no SQL
    compilation per request): ``v{part}`` the view, ``k{keys}`` its keys as one parameter,
    an array (PostgreSQL) or a JSON text (SQLite's ``json_each``), so that the statement
    is the same for any number of keys; ``c{cutoff}`` the TTL's oldest live event time."""
    if dialect == "postgresql":
        sql = (
            f'SELECT {part:d}, entity_key, "values"::text FROM {TABLE} '
            f"WHERE view = %(v{part:d})s AND entity_key = ANY(%(k{keys:d})s)"
        )
        return sql + ("" if cutoff is None else f" AND event_timestamp >= %(c{cutoff:d})s")
    sql = (
        f'SELECT {part:d}, entity_key, "values" FROM {TABLE} '
        f"WHERE view = :v{part:d} AND entity_key IN (SELECT value FROM json_each(:k{keys:d}))"
    )
    return sql + ("" if cutoff is None else f" AND event_timestamp >= :c{cutoff:d}")


def _picked(
    reads: Sequence[ViewRead], stored: Sequence[Sequence[str]], rows: Sequence[Any]
) -> list[list[dict[str, Any] | None]]:
    """The statement's rows ``(part, stored key, values text)`` as one result per part."""
    found: list[dict[str, Any]] = [{} for _ in reads]
    for part, key_text, text in rows:
        found[part][key_text] = text
    return [_pick(stored[i], found[i], part.features) for i, part in enumerate(reads)]


def _pick(
    stored: Sequence[str], found: dict[str, Any], features: Sequence[str]
) -> list[dict[str, Any] | None]:
    """Per asked key (in order) the asked features of its row, or ``None``."""
    wanted = set(features)
    out: list[dict[str, Any] | None] = []
    for key in stored:
        text = found.get(key)
        if text is None:
            out.append(None)
            continue
        values = orjson.loads(text)  # a fresh dict per asked key, repeated keys included
        if values.keys() == wanted:
            out.append(values)
        else:
            out.append({name: values.get(name) for name in features})
    return out


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value
