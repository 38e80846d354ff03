"""Metric points: the batched ingest hot path, history reads and latest values.

Ingest validates a whole batch first (one tight loop, a precise message only when a
point is bad), then writes it in one transaction: ``COPY ... FROM STDIN`` on PostgreSQL,
``executemany`` on the raw SQLite connection. A bad point writes nothing.

History reads go through the raw DBAPI cursor along the index
``ix_training_metrics_experiment_name_step`` and come back columnar
(``{name: {"steps", "values", "epochs", "kinds", "times"}}``): no ORM objects, one
tuple per row, transposed in C.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import secrets
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mlrig.db.models import TrainingExperiment
from mlrig.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mlrig.db import Database

#: metric kinds a point may have (or none)
KINDS = frozenset({"train", "validation", "test"})
MAX_NAME_LENGTH = 100
#: ``metric_value`` is NUMERIC(20, 10): at most 10 digits before the point
VALUE_LIMIT = 1e10
INT32_MAX = 2**31 - 1
#: most points one call may write
MAX_POINTS = 1_000_000
_FIELDS = ("name", "value", "step", "epoch", "kind", "recorded_at")
POINT_KEYS = frozenset(_FIELDS)
_COLUMNS = "id, experiment_id, epoch, step, metric_name, metric_value, metric_type, recorded_at"

Point = Sequence[Any] | Mapping[str, Any]


# --- validation ---------------------------------------------------------------------------


def _int_ok(value: object) -> bool:
    return value is None or (type(value) is int and 0 <= value <= INT32_MAX)


def check_points(points: Iterable[Point], *, now: datetime | None = None) -> list[tuple[Any, ...]]:
    """Validated points as ``(name, value, step, epoch, kind, recorded_at)`` tuples.

    A point is a mapping with ``name``, ``value`` and optional ``step``, ``epoch``,
    ``kind``, ``recorded_at``, or a sequence in that order (5 or 6 items). ``recorded_at``
    defaults to ``now`` (one time for the whole batch).

    :raises ValidationError: naming the first bad point, its index and the rule it broke.
    """
    now = now or datetime.now(timezone.utc)
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    kinds = KINDS
    for index, point in enumerate(points):
        try:
            if type(point) is dict:
                name = point["name"]
                value = point["value"]
                step = point.get("step")
                epoch = point.get("epoch")
                kind = point.get("kind")
                at = point.get("recorded_at")
                if not point.keys() <= POINT_KEYS:
                    raise _bad(index, point)
            else:
                if len(point) == 5:
                    name, value, step, epoch, kind = point
                    at = None
                else:
                    name, value, step, epoch, kind, at = point
            if type(value) is not float:
                if type(value) is not int:
                    raise _bad(index, point)
                value = float(value)
            if not (
                type(name) is str and 0 < len(name) <= MAX_NAME_LENGTH
                and -VALUE_LIMIT < value < VALUE_LIMIT  # also False for NaN and inf
                and (kind is None or kind in kinds)
                and _int_ok(step) and _int_ok(epoch)
            ):
                raise _bad(index, point)
            append((name, value, step, epoch, kind, now if at is None else _time(index, at)))
        except (KeyError, TypeError, ValueError):
            raise _bad(index, point) from None
        if index >= MAX_POINTS:
            msg = f"too many points: at most {MAX_POINTS:,} per call; split the batch"
            raise ValidationError(msg)
    return rows


def _time(index: int, at: object) -> datetime:
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at)
        except ValueError:
            msg = f"points[{index}].recorded_at: {at!r} is not an ISO 8601 time"
            raise ValidationError(msg, details={"index": index}) from None
    if not isinstance(at, datetime) or at.utcoffset() is None:
        msg = (
            f"points[{index}].recorded_at: {at!r} needs a time zone, "
            "e.g. 2024-05-01T12:00:00+00:00"
        )
        raise ValidationError(msg, details={"index": index})
    return at.astimezone(timezone.utc)


def _bad(index: int, point: object) -> ValidationError:
    """The error for a point the fast loop refused, saying exactly what is wrong."""
    where = f"points[{index}]"
    if isinstance(point, Mapping):
        unknown = sorted(str(k) for k in set(point) - POINT_KEYS)
        if unknown:
            msg = f"{where}: unknown keys {unknown}; allowed: {', '.join(sorted(POINT_KEYS))}"
            return ValidationError(msg, details={"index": index})
        fields = dict(point)
    elif isinstance(point, Sequence) and not isinstance(point, str) and len(point) in (5, 6):
        fields = dict(zip(_FIELDS, point, strict=False))
    else:
        msg = (
            f"{where}: {repr(point)[:80]} is not a point; give an object with name, value "
            "and optional step, epoch, kind, or a list [name, value, step, epoch, kind]"
        )
        return ValidationError(msg, details={"index": index})
    return ValidationError(f"{where}.{_field_problem(fields)}", details={"index": index})


def _field_problem(fields: dict[str, Any]) -> str:
    for required in ("name", "value"):
        if required not in fields:
            return f"{required}: missing"
    name, value = fields["name"], fields["value"]
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        return f"name: {str(name)[:40]!r} must be a non-empty string of at most " \
               f"{MAX_NAME_LENGTH} characters"
    if type(value) not in (int, float):
        return f"value: {value!r} is not a number"
    if not math.isfinite(value) or not -VALUE_LIMIT < value < VALUE_LIMIT:
        return f"value: {value!r} must be finite and within ±1e10 (the column is NUMERIC(20, 10))"
    for key in ("step", "epoch"):
        if not _int_ok(fields.get(key)):
            return f"{key}: {fields.get(key)!r} must be an integer from 0 to {INT32_MAX} or null"
    if fields.get("kind") is not None and fields.get("kind") not in KINDS:
        return f"kind: {fields.get('kind')!r} must be one of train, validation, test or null"
    return "recorded_at: must be an ISO 8601 time with a time zone or null"


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


def write_points(db: Database, experiment_id: uuid.UUID | str, points: Iterable[Point]) -> int:
    """Validate and insert metric points of one experiment in one transaction.

    Returns how many were written; the caller fires ``hooks.metrics_logged`` once for
    the batch. Nothing is written when any point is invalid.

    :raises ValidationError: a bad point (see :func:`check_points`).
    :raises NotFoundError: no such experiment.
    """
    key = as_uuid(experiment_id)
    with _gc_paused():
        rows = check_points(points)
        if not rows:
            return 0
        with db.session() as session:
            _require_experiment(session, key)
            raw = session.connection().connection.driver_connection
            if db.dialect == "postgresql":
                _copy_postgresql(raw, key, rows)
            else:
                _insert_sqlite(raw, key, rows)
    return len(rows)


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


def _copy_postgresql(conn: Any, key: uuid.UUID, rows: list[tuple[Any, ...]]) -> None:
    sql = f"COPY training_metrics ({_COLUMNS}) FROM STDIN"
    ids = new_ids(len(rows))
    with conn.cursor() as cursor, cursor.copy(sql) as copy:
        write = copy.write_row
        for ident, (name, value, step, epoch, kind, at) in zip(ids, rows, strict=True):
            write((ident, key, epoch, step, name, value, kind, at))


def _insert_sqlite(conn: Any, key: uuid.UUID, rows: list[tuple[Any, ...]]) -> None:
    # The same text forms SQLAlchemy stores: 32 hex digits, naive UTC with microseconds.
    hex_key = key.hex
    times: dict[datetime, str] = {}

    def stamp(at: datetime) -> str:
        text = times.get(at)
        if text is None:
            text = times[at] = at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
        return text

    sql = f"INSERT INTO training_metrics ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    ids = new_ids(len(rows))
    conn.executemany(
        sql, [(i, hex_key, e, s, n, v, k, stamp(at)) for i, (n, v, s, e, k, at)
              in zip(ids, rows, strict=True)]
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
) -> dict[str, dict[str, list[Any]]]:
    """The points of an experiment, by metric name, in step order, columnar::

        {"loss": {"steps": [...], "values": [...], "epochs": [...], "kinds": [...],
                  "times": [ISO 8601 strings]}}

    :param name: only this metric.
    :param kind: only points of this kind (train, validation, test).
    :param after_step: only points with a step greater than this (for paging and polling).
    :param limit: at most this many points in all (ordered by name, then step); to page
        through one metric, give ``name`` and the last step seen as ``after_step``.
    """
    key = as_uuid(experiment_id)
    if kind is not None and kind not in KINDS:
        msg = f"kind {kind!r} must be one of train, validation, test"
        raise ValidationError(msg)
    postgres = db.dialect == "postgresql"
    mark, value, time_iso = _dialect_sql(db)
    columns = f"metric_name, step, {value}, epoch, metric_type, {time_iso}"
    where = [f"experiment_id = {mark}"]
    params: list[Any] = [key if postgres else key.hex]
    for column, wanted in (("metric_name", name), ("metric_type", kind)):
        if wanted is not None:
            where.append(f"{column} = {mark}")
            params.append(wanted)
    if after_step is not None:
        where.append(f"step > {mark}")
        params.append(int(after_step))
    sql = f"SELECT {columns} FROM training_metrics WHERE {' AND '.join(where)} " \
          "ORDER BY metric_name, step"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    history: dict[str, dict[str, list[Any]]] = {}
    with db.engine.connect() as conn, _gc_paused():
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        finally:
            cursor.close()
        conn.rollback()
        for metric, group in itertools.groupby(rows, key=itemgetter(0)):
            _, steps, values, epochs, kinds, times = zip(*group, strict=True)
            history[metric] = {"steps": list(steps), "values": list(values),
                               "epochs": list(epochs), "kinds": list(kinds), "times": list(times)}
        del rows
    return history


def series_key(name: str, kind: str | None) -> str:
    """How a metric is named in latest values and comparisons: ``loss`` for train (or no
    kind), ``validation/loss`` and ``test/loss`` for the other kinds."""
    return name if kind in (None, "train") else f"{kind}/{name}"


def _dialect_sql(db: Database) -> tuple[str, str, str]:
    """Placeholder, value and ISO-time column expressions of the database."""
    if db.dialect == "postgresql":
        time_iso = (
            "to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"
        )
        return "%s", "metric_value::float8", time_iso
    return "?", "CAST(metric_value AS REAL)", "replace(recorded_at, ' ', 'T') || '+00:00'"


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
        latest[series_key(name, kind)] = {"name": name, "kind": kind, "value": val, "step": step,
                                          "epoch": epoch, "recorded_at": at}
    return dict(sorted(latest.items()))
