"""Metric storage: the batched ingest hot path, history reads and latest values.

Ingest validates a whole batch first (:func:`mlrig.experiments.points.check_points`),
then writes it in one transaction: ``COPY ... FROM STDIN`` on PostgreSQL,
``executemany`` on the raw SQLite connection. A bad point writes nothing.

History reads go through the raw DBAPI cursor along the index
``ix_training_metrics_experiment_name_step`` and come back columnar
(``{name: {"steps", "values", "epochs", "kinds", "times"}}``): no ORM objects, one
tuple per row, transposed in C.
"""

from __future__ import annotations

import contextlib
import gc
import math
import secrets
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from mlrig.db.models import TrainingExperiment, TrainingMetric
from mlrig.errors import ConflictError, NotFoundError, ValidationError
from mlrig.experiments.points import KINDS, MAX_POINTS, Point, check_points

__all__ = [
    "HISTORY_FIELDS",
    "MAX_POINTS",
    "AttemptFence",
    "AttemptLostError",
    "Point",
    "check_points",
    "drop_points",
    "history_fields",
    "insert_checked",
    "latest_values",
    "new_ids",
    "read_history",
    "series_key",
    "write_points",
]

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mlrig.db import Database

_COLUMNS = "id, experiment_id, epoch, step, metric_name, metric_value, metric_type, recorded_at"

# --- non-finite values --------------------------------------------------------------------
# ``metric_value`` is the spec's NUMERIC(20, 10). PostgreSQL keeps NaN in it but no
# infinity (a NUMERIC with a precision cannot hold one), so ±infinity is stored as
# ±9999999999.9999999999: no finite value we accept can be stored as that (values are
# within ±1e10 exclusive, and the float closest below 1e10 stores as
# 9999999999.9999980927), and it reads back as float8 ±1e10, which no stored finite
# value does. SQLite keeps infinities as REAL, and stores NaN as NULL (it has no NaN):
# a NULL value reads back as NaN (no ingest path writes NULL otherwise).
PG_INFINITY_TEXT = "9999999999.9999999999"
_INFINITIES = frozenset({math.inf, -math.inf})
_PG_INFINITIES = frozenset({1e10, -1e10})


class _Text:
    """A value whose COPY text is given (``repr`` is what the COPY formatting uses)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


_PG_INFINITY = {math.inf: _Text(PG_INFINITY_TEXT), -math.inf: _Text(f"-{PG_INFINITY_TEXT}")}


def _pg_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``rows`` with infinite values replaced by their PostgreSQL text (the same list when
    none is infinite: one ``sum`` in C, a second pass when there is a NaN)."""
    values = map(itemgetter(1), rows)
    # finite values are bounded (±1e10), so a finite sum means none is infinite
    if math.isfinite(sum(values)) or _INFINITIES.isdisjoint(map(itemgetter(1), rows)):
        return rows
    return [(r[0], _PG_INFINITY[r[1]], *r[2:]) if r[1] in _INFINITIES else r for r in rows]


def stored_values(values: list[Any], *, postgres: bool) -> list[Any]:
    """Values as read from the column, with the stored forms of NaN and infinity made
    floats again (the same list when there are none: one scan in C)."""
    if postgres:
        if 1e10 in values or -1e10 in values:
            return [math.copysign(math.inf, x) if x in _PG_INFINITIES else x for x in values]
        return values
    if None in values:
        return [math.nan if x is None else x for x in values]
    return values


def stored_value(value: Any, *, postgres: bool) -> Any:
    """One value as read from the column (see :func:`stored_values`)."""
    return stored_values([value], postgres=postgres)[0]


# --- writing ------------------------------------------------------------------------------


def _require_experiment(session: Session, experiment_id: uuid.UUID) -> None:
    found = session.scalar(
        select(TrainingExperiment.id).where(TrainingExperiment.id == experiment_id)
    )
    if found is None:
        msg = f"no experiment {str(experiment_id)!r}; see: mlrig experiments list"
        raise NotFoundError(msg)


def as_uuid(experiment_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(experiment_id, uuid.UUID):
        return experiment_id
    try:
        return uuid.UUID(str(experiment_id))
    except ValueError:
        msg = f"experiment id {experiment_id!r} is not a UUID"
        raise ValidationError(msg) from None


@dataclass(frozen=True)
class AttemptFence:
    """The attempt of an engine job that writes: its worker (lease owner) and number.

    A write fenced by it happens only while that attempt still holds the job, so points of
    an attempt that lost its job (requeued, cancelled) can never land after the next
    attempt cleared them.
    """

    owner: str
    attempt: int


class AttemptLostError(ConflictError):
    """The fenced attempt no longer holds its job; nothing was written."""

    code = "attempt_lost"


def _require_attempt(session: Session, key: uuid.UUID, fence: AttemptFence, postgres: bool) -> None:
    stmt = select(TrainingExperiment.id).where(
        TrainingExperiment.id == key,
        TrainingExperiment.lease_owner == fence.owner,
        TrainingExperiment.attempts == fence.attempt,
        TrainingExperiment.status == "running",
    )
    if postgres:
        # FOR SHARE: claiming the next attempt (an UPDATE of this row) waits for this write
        stmt = stmt.with_for_update(read=True)
    if session.scalar(stmt) is None:
        msg = f"attempt {fence.attempt} of experiment {str(key)!r} no longer holds the job"
        raise AttemptLostError(msg)


def write_points(
    db: Database,
    experiment_id: uuid.UUID | str,
    points: Iterable[Point],
    *,
    fence: AttemptFence | None = None,
) -> int:
    """Validate and insert metric points of one experiment in one transaction.

    Returns how many were written; the caller fires ``hooks.metrics_logged`` once for
    the batch. Nothing is written when any point is invalid.

    :param fence: write only while this attempt holds the job (the training engine).
    :raises ValidationError: a bad point (see :func:`check_points`).
    :raises NotFoundError: no such experiment.
    :raises AttemptLostError: ``fence`` is given and no longer holds the job.
    """
    key = as_uuid(experiment_id)
    with _gc_paused():
        now = datetime.now(timezone.utc)
        rows = check_points(points, now=now)
        if not rows:
            return 0
        with db.bulk_write_lock, db.session() as session:
            if fence is None:
                _require_experiment(session, key)
            else:
                _require_attempt(session, key, fence, db.dialect == "postgresql")
            insert_checked(session, key, rows, batch_time=now)
    return len(rows)


def insert_checked(
    session: Session, experiment_id: uuid.UUID, rows: list[tuple[Any, ...]], *, batch_time: datetime
) -> int:
    """Insert rows :func:`check_points` returned (``now=batch_time``) in ``session``'s
    transaction, which the caller made safe to write in (the engine's completing
    transaction holds the job's row, fenced by its attempt). Returns how many."""
    if not rows:
        return 0
    raw = session.connection().connection.driver_connection
    if session.get_bind().dialect.name == "postgresql":
        _copy_postgresql(raw, experiment_id, _pg_rows(rows), batch_time=batch_time)
    else:
        _insert_sqlite(raw, experiment_id, rows)
    return len(rows)


def drop_points(
    db: Database, experiment_id: uuid.UUID, *, after_step: int | None, fence: AttemptFence
) -> int:
    """Delete the points earlier attempts of a job left that the attempt ``fence`` will
    log again: those after ``after_step`` (its checkpoint), or all for ``None`` (a fresh
    start). Returns how many went.

    :raises AttemptLostError: ``fence`` no longer holds the job.
    """
    with db.session() as session:
        _require_attempt(session, experiment_id, fence, db.dialect == "postgresql")
        stmt = delete(TrainingMetric).where(TrainingMetric.experiment_id == experiment_id)
        if after_step is not None:
            stmt = stmt.where(TrainingMetric.step > after_step)
        return session.execute(stmt).rowcount or 0


def new_ids(count: int) -> list[str]:
    """``count`` time-ordered UUIDs (the UUIDv7 layout) as 32 hex digits.

    Consecutive keys append at the right edge of the primary-key index instead of
    landing at random pages, which keeps bulk inserts fast as the table grows. One
    random 42-bit stem per call (plus the millisecond) keeps concurrent writers apart.
    """
    head = f"{time.time_ns() // 1_000_000 & 0xFFFFFFFFFFFF:012x}7{secrets.randbits(12):03x}"
    base = 0x8000000000000000 | (secrets.randbits(30) << 32)  # variant 10, room for a counter
    return [f"{head}{base + i:016x}" for i in range(count)]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while building many small tuples that cannot form cycles (each full
    collection would walk the whole heap several times per 100,000 rows)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


#: rows per piece of COPY data: the server parses one piece while the next is formatted
COPY_CHUNK_ROWS = 20_000
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_postgresql(
    conn: Any, key: uuid.UUID, rows: list[tuple[Any, ...]], *, batch_time: datetime
) -> None:
    """``COPY ... FROM STDIN`` in text format, formatted here in pieces (several times
    cheaper than a per-row ``write_row`` and overlapping the server's work).

    When no point brings its own ``recorded_at`` (all carry ``batch_time``), the column is
    left to its default, the transaction's ``now()``: parsing a time zone'd timestamp
    for each row is a sizeable part of the server's work for a batch.
    """
    null = "\\N"
    names: dict[str, str] = {}
    times: dict[datetime, str] = {}
    experiment = str(key)
    ids = new_ids(len(rows))
    shared_time = all(row[5] is batch_time for row in rows)
    columns = _COLUMNS.removesuffix(", recorded_at") if shared_time else _COLUMNS
    end = "\n" if shared_time else None
    sql = f"COPY training_metrics ({columns}) FROM STDIN"
    with conn.cursor() as cursor, cursor.copy(sql) as copy:
        for begin in range(0, len(rows), COPY_CHUNK_ROWS):
            lines = []
            append = lines.append
            for ident, (name, value, step, epoch, kind, at) in zip(
                ids[begin : begin + COPY_CHUNK_ROWS],
                rows[begin : begin + COPY_CHUNK_ROWS],
                strict=True,
            ):
                text = names.get(name)
                if text is None:
                    text = names[name] = name.translate(_COPY_ESCAPES)
                stamp = end or times.get(at)
                if stamp is None:
                    stamp = times[at] = f"\t{at.isoformat()}\n"
                append(
                    f"{ident}\t{experiment}\t{null if epoch is None else epoch}\t"
                    f"{null if step is None else step}\t{text}\t{value!r}\t"
                    f"{null if kind is None else kind}{stamp}"
                )
            copy.write("".join(lines))


def _insert_sqlite(conn: Any, key: uuid.UUID, rows: list[tuple[Any, ...]]) -> None:
    # The same text forms SQLAlchemy stores: 32 hex digits, naive UTC with microseconds.
    hex_key = key.hex
    times: dict[datetime, str] = {}

    def stamp(at: datetime) -> str:
        text = times.get(at)
        if text is None:
            # isoformat, not strftime: "%Y" writes year 78 as "78", which reads back wrong
            utc = at.astimezone(timezone.utc).replace(tzinfo=None)
            text = times[at] = utc.isoformat(" ", "microseconds")
        return text

    sql = f"INSERT INTO training_metrics ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    ids = new_ids(len(rows))
    conn.executemany(
        sql,
        [
            (i, hex_key, e, s, n, v, k, stamp(at))
            for i, (n, v, s, e, k, at) in zip(ids, rows, strict=True)
        ],
    )


# --- reading ------------------------------------------------------------------------------


def read_history(
    db: Database,
    experiment_id: uuid.UUID | str,
    *,
    name: str | None = None,
    kind: str | None = None,
    after_step: int | None = None,
    limit: int | None = None,
    fields: Iterable[str] | None = None,
) -> dict[str, dict[str, list[Any]]]:
    """The points of an experiment, by metric name, in step order, columnar::

        {"loss": {"steps": [...], "values": [...], "epochs": [...], "kinds": [...],
                  "times": [ISO 8601 strings]}}

    :param name: only this metric.
    :param kind: only points of this kind (train, validation, test).
    :param after_step: only points with a step greater than this (for paging and polling).
    :param limit: at most this many points in all (ordered by name, then step); to page
        through one metric, give ``name`` and the last step seen as ``after_step``.
    :param fields: only these columns (of :data:`HISTORY_FIELDS`; always in that order):
        a plot needs ``steps`` and ``values``, at about half the cost of all five.
    """
    key = as_uuid(experiment_id)
    if kind is not None and kind not in KINDS:
        msg = f"kind {kind!r} must be one of train, validation, test"
        raise ValidationError(msg)
    chosen = history_fields(fields)
    postgres = db.dialect == "postgresql"
    mark, value, _ = _dialect_sql(db)
    expressions = {
        "steps": "step",
        "values": value,
        "epochs": "epoch",
        "kinds": "metric_type",
        "times": _time_text(db),
    }
    columns = ", ".join(["metric_name", *(expressions[f] for f in chosen)])
    where = [f"experiment_id = {mark}"]
    params: list[Any] = [key if postgres else key.hex]
    for column, wanted in (("metric_name", name), ("metric_type", kind)):
        if wanted is not None:
            where.append(f"{column} = {mark}")
            params.append(wanted)
    if after_step is not None:
        where.append(f"step > {mark}")
        params.append(int(after_step))
    sql = (
        f"SELECT {columns} FROM training_metrics WHERE {' AND '.join(where)} "
        "ORDER BY metric_name, step"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with db.engine.connect() as conn, _gc_paused():
        driver = conn.connection.driver_connection
        # psycopg's binary protocol: about half the time of text for 100,000 rows
        cursor = driver.cursor(binary=True) if postgres else driver.cursor()
        try:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        finally:
            cursor.close()
        conn.rollback()
        history = _columns(rows, chosen)
        del rows
    if "values" in chosen:
        for series in history.values():
            series["values"] = stored_values(series["values"], postgres=postgres)
    return history


#: the columns of a metric history, in the order they come back
HISTORY_FIELDS = ("steps", "values", "epochs", "kinds", "times")


def history_fields(fields: Iterable[str] | None) -> tuple[str, ...]:
    """The history columns asked for, in :data:`HISTORY_FIELDS` order (all for ``None``).

    :raises ValidationError: an unknown column, or none at all.
    """
    if fields is None:
        return HISTORY_FIELDS
    wanted = {f.strip() for f in fields} - {""}
    unknown = sorted(wanted - set(HISTORY_FIELDS))
    if unknown or not wanted:
        msg = (
            f"fields {unknown or '(none)'} are not history columns; pick from "
            f"{', '.join(HISTORY_FIELDS)}"
        )
        raise ValidationError(msg, details={"allowed": list(HISTORY_FIELDS)})
    return tuple(f for f in HISTORY_FIELDS if f in wanted)


def _columns(
    rows: list[tuple[Any, ...]], fields: tuple[str, ...] = HISTORY_FIELDS
) -> dict[str, dict[str, list[Any]]]:
    """Rows ``(name, *fields)`` ordered by name, as columns per name.

    One list comprehension per column and slice: several times faster than ``zip(*rows)``
    over 100,000 tuples. The database's time text (``YYYY-MM-DD HH:MM:SS[.ffffff]`` in
    UTC) becomes ISO 8601 here, once per distinct time: a batch shares one time.
    """
    iso: dict[str, str] = {}

    def to_iso(text: str | None) -> str | None:
        if text is None:
            return None
        made = iso[text] = text.replace(" ", "T", 1) + "+00:00"
        return made

    history: dict[str, dict[str, list[Any]]] = {}
    begin = 0
    while begin < len(rows):
        name = rows[begin][0]
        end = _run_end(rows, begin)
        group = rows if (begin, end) == (0, len(rows)) else rows[begin:end]
        series: dict[str, list[Any]] = {}
        for index, field in enumerate(fields, start=1):
            if field == "times":
                series[field] = [iso.get(r[index]) or to_iso(r[index]) for r in group]
            else:
                series[field] = [r[index] for r in group]
        history[name] = series
        begin = end
    return history


def _run_end(rows: list[tuple[Any, ...]], begin: int) -> int:
    """The end of the run of rows named like ``rows[begin]``, by bisection: each name is
    one contiguous run (ORDER BY metric_name), whatever order the collation gives."""
    name, low, high = rows[begin][0], begin + 1, len(rows)
    while low < high:
        middle = (low + high) // 2
        if rows[middle][0] == name:
            low = middle + 1
        else:
            high = middle
    return low


def series_key(name: str, kind: str | None) -> str:
    """How a metric is named in latest values and comparisons: ``loss`` for train (or no
    kind), ``validation/loss`` and ``test/loss`` for the other kinds."""
    return name if kind in (None, "train") else f"{kind}/{name}"


def _dialect_sql(db: Database) -> tuple[str, str, str]:
    """Placeholder, value and ISO-time column expressions of the database.

    Times are ISO 8601 in UTC, made by the database as text (cheaper than ``to_char`` or
    than building datetimes here); a whole second may come without a fraction.
    """
    if db.dialect == "postgresql":
        time_iso = "replace((recorded_at AT TIME ZONE 'UTC')::text, ' ', 'T') || '+00:00'"
        return "%s", "metric_value::float8", time_iso
    return "?", "CAST(metric_value AS REAL)", "replace(recorded_at, ' ', 'T') || '+00:00'"


def _time_text(db: Database) -> str:
    """The time as the database's UTC text; history reads turn it into ISO 8601 in Python,
    once per distinct time (cheaper for many rows than :func:`_dialect_sql`'s per row)."""
    if db.dialect == "postgresql":
        return "(recorded_at AT TIME ZONE 'UTC')::text"
    return "recorded_at"


def latest_values(db: Database, experiment_id: uuid.UUID | str) -> dict[str, dict[str, Any]]:
    """The last point of each metric: the one at its highest step (the newest one among
    several at that step), per kind present at that step::

        {"loss": {"name", "kind", "value", "step", "epoch", "recorded_at"},
         "validation/loss": {...}}

    A few index seeks per metric name, whatever the number of points (a loose index
    scan over the names), so pollers can call it often.
    """
    key = as_uuid(experiment_id)
    postgres = db.dialect == "postgresql"
    mark, value, time_iso = _dialect_sql(db)
    columns = f"metric_name, metric_type, {value}, step, epoch, {time_iso}"
    # A loose index scan: each metric name, then its highest step, by index seeks. No
    # ORDER BY (SQLite would walk every point for it); CROSS JOIN keeps SQLite's order.
    sql = f"""
        WITH RECURSIVE names(n) AS (
            SELECT MIN(metric_name) FROM training_metrics WHERE experiment_id = {mark}
            UNION ALL
            SELECT (SELECT MIN(metric_name) FROM training_metrics
                    WHERE experiment_id = {mark} AND metric_name > names.n)
            FROM names WHERE names.n IS NOT NULL
        ),
        tops AS (
            SELECT n, (SELECT MAX(step) FROM training_metrics
                       WHERE experiment_id = {mark} AND metric_name = names.n) AS s
            FROM names WHERE n IS NOT NULL
        )
        SELECT {columns} FROM tops CROSS JOIN training_metrics
        WHERE experiment_id = {mark} AND metric_name = tops.n AND step = tops.s
        UNION ALL
        SELECT {columns} FROM tops CROSS JOIN training_metrics
        WHERE tops.s IS NULL AND experiment_id = {mark} AND metric_name = tops.n
          AND step IS NULL
    """
    param = key if postgres else key.hex
    with db.engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(sql, (param,) * 5)
            rows = cursor.fetchall()
        finally:
            cursor.close()
        conn.rollback()
    latest: dict[str, dict[str, Any]] = {}
    rows.sort(key=lambda r: (r[0], r[5]))
    for name, kind, val, step, epoch, at in rows:  # newest last: it wins
        latest[series_key(name, kind)] = {
            "name": name,
            "kind": kind,
            "value": stored_value(val, postgres=postgres),
            "step": step,
            "epoch": epoch,
            "recorded_at": at,
        }
    return dict(sorted(latest.items()))
