"""Inference logging: served predictions written to ``inference_requests`` off the
request path.

:meth:`InferenceLogger.record` is what a request pays: a sampling draw, the inputs and
the prediction written as JSON text (one orjson call each), one lock and a tuple appended
to an in-memory buffer. It never touches the database and never waits:
when the buffer is full the record is dropped and counted (``dropped``, exported as
``mlrig_inference_log_dropped_total`` through ``on_drop``). A background thread takes
the buffer every ``flush_seconds`` (sooner when ``batch_size`` records are waiting),
turns the records into rows (ids, aware UTC timestamps) and writes them in
batches with ``INSERT ... ON CONFLICT DO NOTHING``, so a retried client ``request_id``
(unique per deployment) is stored once, on SQLite and PostgreSQL alike.

When the database is down the rows taken out stay held, count against the buffer bound
and are retried with exponential back-off; nothing is lost unless the outage lasts so
long that new records no longer fit (those are dropped and counted). A row the database
refuses for good (e.g. an unknown deployment id) is isolated by writing the batch row by
row, and only that row is given up (``failed``).
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson

from mlrig.errors import MlrigError

if TYPE_CHECKING:
    from mlrig.db import Database
    from mlrig.hooks import Hooks

__all__ = ["InferenceLogger"]

log = logging.getLogger(__name__)

#: the longest wait between two write attempts while the database is failing (seconds)
MAX_BACKOFF_SECONDS = 30.0
#: the first wait after a failed write (seconds); doubled on each further failure
FIRST_BACKOFF_SECONDS = 0.1
#: ``inference_requests.request_id`` is VARCHAR(255)
MAX_REQUEST_ID = 255
#: ``confidence_score`` is NUMERIC(5, 4): larger magnitudes cannot be stored
MAX_CONFIDENCE = 9.9999

#: one buffered record: (deployment_id, request_id, inputs as JSON text, prediction as
#: JSON text, confidence, latency_ms, model_version_id, variant, unix time). Only atomic
#: values: the cyclic GC untracks such a tuple at its first pass, so thousands of records
#: waiting for the writer add nothing to the collections of the serving process (holding
#: the model's lists of predictions made every older-generation pass walk them: about a
#: tenth of a replica's CPU at 100 % sampling).
Record = tuple[str, "str | None", Any, Any, "float | None", float, "str | None", str, float]

#: stands for inputs or a prediction that could not be written as JSON (given up later)
_UNCONVERTIBLE = "\x00unconvertible"


class InferenceLogger:
    """Buffered, sampled, bounded writer of ``inference_requests`` rows.

    :param db: the platform's database.
    :param sample_rate: the share of calls to :meth:`record` that are kept (0 to 1).
    :param max_buffer: records held in memory at most (waiting and being retried);
        beyond it new records are dropped and counted.
    :param flush_seconds: how often the background thread writes what is waiting.
    :param hooks: the platform's hooks; ``predictions_served`` is called once per
        deployment per written batch, from the background thread.
    :param batch_size: rows per ``INSERT`` (a full batch wakes the writer early).
    :param seed: seed of the sampling draw (tests; ``None``: random).
    :param on_drop: called with the number of records just dropped because the buffer
        was full (e.g. :meth:`mlrig.serving.metrics.ServingMetrics.log_dropped`); called
        on the request path, so it must be cheap.

    Use one logger per process: :meth:`start` it, :meth:`record` from any thread or
    event loop, :meth:`stop` at shutdown (which writes what is left).
    """

    def __init__(
        self,
        db: Database,
        *,
        sample_rate: float,
        max_buffer: int,
        flush_seconds: float,
        hooks: Hooks | None = None,
        batch_size: int = 1000,
        seed: int | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            msg = f"sample_rate must be between 0 and 1, not {sample_rate!r}"
            raise ValueError(msg)
        if max_buffer < 1 or batch_size < 1 or flush_seconds <= 0:
            msg = "max_buffer and batch_size must be >= 1 and flush_seconds > 0"
            raise ValueError(msg)
        self.db = db
        self.sample_rate = float(sample_rate)
        self.max_buffer = int(max_buffer)
        self.flush_seconds = float(flush_seconds)
        self.batch_size = int(batch_size)
        self.hooks = hooks
        self.on_drop = on_drop
        self._random = random.Random(seed).random
        self._lock = threading.Lock()
        self._buffer: list[Record] = []
        #: rows taken out of the buffer and not yet written (they count against the bound)
        self._held = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_lock = threading.Lock()  # one writer at a time (thread or flush())
        self._retry: list[Record] = []
        self._failures = 0  # consecutive failed attempts, for the back-off
        self._dropped = 0
        self._sampled_out = 0
        self._written = 0
        self._duplicates = 0
        self._failed = 0
        self._ids: dict[Any, str | None] = {}
        self._seconds: dict[int, str] = {}  # unix second -> its SQLite text
        self.last_error: str | None = None

    # --- counters -------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Records refused because the buffer was full (or left unwritten at stop)."""
        return self._dropped

    @property
    def written(self) -> int:
        """Rows inserted (duplicates of a stored request id not included)."""
        return self._written

    @property
    def sampled_out(self) -> int:
        """Calls to :meth:`record` that the sampling rate skipped."""
        return self._sampled_out

    @property
    def pending(self) -> int:
        """Records in memory: waiting for the next write or held for a retry."""
        return len(self._buffer) + self._held

    @property
    def duplicates(self) -> int:
        """Rows skipped because their ``(deployment_id, request_id)`` was stored already."""
        return self._duplicates

    @property
    def failed(self) -> int:
        """Rows the database refused for good (given up, logged as a warning)."""
        return self._failed

    @property
    def consecutive_failures(self) -> int:
        """Failed write attempts since the last good one (0 while the database is fine)."""
        return self._failures

    def stats(self) -> dict[str, int]:
        """Every counter, for health pages and tests."""
        return {
            "written": self._written,
            "pending": self.pending,
            "dropped": self._dropped,
            "sampled_out": self._sampled_out,
            "duplicates": self._duplicates,
            "failed": self._failed,
        }

    # --- the request path -----------------------------------------------------------

    def record(
        self,
        *,
        deployment_id: str,
        request_id: str | None,
        inputs: Any,
        prediction: Any,
        confidence: float | None,
        latency_ms: float,
        model_version_id: str | None,
        variant: str,
    ) -> bool:
        """Keep one served prediction for the next write; never blocks on I/O.

        ``inputs`` and ``prediction`` may be numpy arrays or scalars, lists, dicts: they
        are written as JSON text here (:func:`dump_json`, a few microseconds for a
        request's rows), so that the buffer holds no container (see :data:`Record`).

        :returns: ``True`` when kept; ``False`` when the sampling skipped it or the
            buffer was full (then counted in :attr:`dropped`).
        """
        rate = self.sample_rate
        if rate < 1.0 and (rate <= 0.0 or self._random() >= rate):
            self._sampled_out += 1  # a lost increment under a thread race is harmless
            return False
        try:  # the common case in line (rows of numbers, a list): a third cheaper
            if inputs is None or prediction is None:
                raise TypeError
            raw_inputs = _dumps(inputs, option=_JSON_OPTIONS)
            raw_prediction = _dumps(prediction, option=_JSON_OPTIONS)
            if b"\\u0000" in raw_inputs or b"\\u0000" in raw_prediction:
                raise TypeError
            inputs_text, prediction_text = raw_inputs.decode(), raw_prediction.decode()
        except TypeError:  # None, NUL characters, what orjson cannot write as it is
            try:
                inputs_text, prediction_text = dump_json(inputs), dump_json(prediction)
            except Exception:  # a value whose tolist()/str() fails: given up by the writer
                inputs_text = prediction_text = _UNCONVERTIBLE
        entry = (
            deployment_id,
            request_id,
            inputs_text,
            prediction_text,
            confidence,
            latency_ms,
            model_version_id,
            variant,
            time.time(),
        )
        with self._lock:
            buffer = self._buffer
            if len(buffer) + self._held >= self.max_buffer:
                self._dropped += 1
                full = True
            else:
                buffer.append(entry)
                full = False
                if len(buffer) == self.batch_size:
                    self._wake.set()
        if full:
            if self.on_drop is not None:
                self.on_drop(1)
            return False
        return True

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> InferenceLogger:
        """Start the background writer (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._run, name="mlrig-inference-log", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, flush: bool = True, *, timeout: float = 10.0) -> None:
        """Stop the writer; with ``flush``, write what is left first.

        :param timeout: how long to keep trying when the database fails meanwhile; what
            is still unwritten then is counted in :attr:`dropped`.
        """
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(timeout, 0.1) + 1.0)
            self._thread = None
        if flush:
            deadline = time.monotonic() + timeout
            while self.pending and (left := deadline - time.monotonic()) > 0:
                if not self.flush(timeout=left):
                    time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        with self._lock:
            lost = len(self._buffer) + self._held
            self._buffer = []
            self._retry = []
            self._held = 0
            self._dropped += lost
        if lost:
            log.warning("inference log: %d records were not written before stop", lost)
            if self.on_drop is not None:
                self.on_drop(lost)

    def __enter__(self) -> InferenceLogger:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the writer -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            if self._failures:
                delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (self._failures - 1))
                delay *= 0.5 + random.random() / 2  # jitter: replicas don't retry in step
                self._stopping.wait(delay)
                if self._stopping.is_set():
                    return
            else:
                self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # never let the writer die: log and try again later
                log.exception("inference log: unexpected error in the writer")

    def flush(self, *, timeout: float | None = None) -> bool:
        """Write everything waiting now (in the caller's thread).

        :param timeout: how long to wait for a write already running in another thread
            (``None``: as long as it takes).
        :returns: ``True`` when nothing is left to retry.
        """
        if not self._flush_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            return False
        try:
            return self._flush_locked()
        finally:
            self._flush_lock.release()

    def _flush_locked(self) -> bool:
        with self._lock:
            taken = self._buffer
            self._buffer = []
            self._held += len(taken)
        rows = self._retry + taken
        self._retry = []
        for begin in range(0, len(rows), self.batch_size):
            batch = rows[begin : begin + self.batch_size]
            try:
                self._write(batch)
            except Exception as exc:
                self._failures += 1
                lines = str(exc).splitlines()  # SQLAlchemy adds the statement: first line
                self.last_error = f"{type(exc).__name__}: {lines[0] if lines else ''}"
                if self._failures == 1 or self._failures % 20 == 0:
                    log.warning(
                        "inference log: writing %d rows failed (attempt %d, %d held): %s",
                        len(batch),
                        self._failures,
                        len(rows) - begin,
                        self.last_error,
                    )
                self._retry = rows[begin:]
                return False
            with self._lock:  # (never below 0: stop() may have given these up)
                self._held = max(0, self._held - len(batch))
        if self._failures:
            log.info("inference log: writing again after %d failed attempts", self._failures)
        self._failures = 0
        return True

    def _write(self, batch: list[Record]) -> None:
        """Insert ``batch``; a transient error propagates (the caller keeps the batch), a
        permanent one is narrowed down to the bad rows, which are given up."""
        postgres = self.db.dialect == "postgresql"
        unconverted = 0
        try:
            rows = self._rows(batch, postgres)
        except Exception:  # a record that cannot be converted: find it, keep the rest
            log.exception("inference log: a record could not be converted")
            kept = []
            for entry in batch:
                try:
                    self._rows([entry], postgres)
                except Exception:
                    unconverted += 1
                else:
                    kept.append(entry)
            batch = kept
            rows = self._rows(batch, postgres)
        refused = 0
        try:
            inserted = self._insert(rows, postgres)
        except Exception as exc:
            if not _is_permanent(exc):
                raise
            inserted, refused = self._insert_singly(rows, postgres)
        self._written += inserted
        self._failed += unconverted + refused
        self._duplicates += len(rows) - inserted - refused
        self._notify(batch, rows)

    def _insert(self, rows: list[tuple[Any, ...]], postgres: bool) -> int:
        """``INSERT ... ON CONFLICT DO NOTHING`` of ``rows`` in one transaction, on the
        driver's own cursor (the rows are made storable by :meth:`_rows`, so
        SQLAlchemy's per-value processing would only cost time); returns the number of
        rows really inserted.

        PostgreSQL: one ``executemany`` (psycopg pipelines it). SQLite: statements of
        :data:`SQLITE_ROWS_PER_STATEMENT` rows each (one multi-row ``VALUES``; a fifth
        less CPU per row than one statement per row, and the GIL is released once per
        statement rather than once per row), the rest by ``executemany``.
        """
        if not rows:
            return 0
        with self.db.bulk_write_lock, self.db.engine.begin() as conn:
            raw = conn.connection.driver_connection
            cursor = raw.cursor()  # type: ignore[union-attr]
            try:
                if postgres:
                    cursor.executemany(_POSTGRES_INSERT, rows)
                    count = cursor.rowcount
                else:
                    count = _sqlite_insert(cursor, rows)
            finally:
                cursor.close()
        # a driver that cannot tell (-1) is taken at its word that all went in
        return len(rows) if count is None or count < 0 else int(count)

    def _insert_singly(self, rows: list[tuple[Any, ...]], postgres: bool) -> tuple[int, int]:
        """Insert row by row (after a permanent error): ``(inserted, given up)``; a
        transient error still propagates, so the whole batch is retried."""
        inserted = failed = 0
        for row in rows:
            try:
                inserted += self._insert([row], postgres)
            except Exception as exc:
                if not _is_permanent(exc):
                    raise
                failed += 1
                log.warning(
                    "inference log: a record of deployment %s (request %s) cannot be "
                    "stored and is given up: %s",
                    row[1],
                    row[2],
                    str(getattr(exc, "orig", None) or exc).splitlines()[0],
                )
        return inserted, failed

    def _rows(self, batch: list[Record], postgres: bool) -> list[tuple[Any, ...]]:
        """The stored form of ``batch``: 32-hex ids, JSON text, and the time as an aware
        UTC datetime on PostgreSQL or as the naive UTC text SQLAlchemy's
        :class:`~mlrig.db.types.UTCDateTime` keeps on SQLite.

        One loop with everything bound locally: this runs in the serving process and
        shares its interpreter with the requests, so each microsecond per row counts.
        """
        from mlrig.experiments.metrics import new_ids

        hexed, known, seconds = self._hex, self._ids.get, self._seconds
        unconvertible = _UNCONVERTIBLE
        rows: list[tuple[Any, ...]] = []
        append = rows.append
        ids = new_ids(len(batch))
        for begin in range(0, len(batch), _ROWS_PER_SLICE):
            if begin:
                time.sleep(0)  # hand the GIL to the event loop: requests wait < 2 ms
            end = begin + _ROWS_PER_SLICE
            for ident, entry in zip(ids[begin:end], batch[begin:end], strict=True):
                (
                    deployment,
                    request,
                    inputs,
                    prediction,
                    confidence,
                    latency,
                    version,
                    variant,
                    at,
                ) = entry
                if inputs is unconvertible or prediction is unconvertible:
                    msg = "inputs or prediction that cannot be written as JSON"
                    raise TypeError(msg)
                if request is not None and (
                    type(request) is not str or len(request) > 64 or "\x00" in request
                ):
                    request = str(request).replace("\x00", "")[:MAX_REQUEST_ID]
                if postgres:
                    stamp: Any = datetime.fromtimestamp(at, timezone.utc)
                else:
                    whole = int(at)
                    prefix = seconds.get(whole)
                    if prefix is None:
                        if len(seconds) > 64:
                            seconds.clear()
                        prefix = seconds[whole] = time.strftime(
                            "%Y-%m-%d %H:%M:%S", time.gmtime(whole)
                        )
                    stamp = f"{prefix}.{int((at - whole) * 1e6):06d}"
                if type(confidence) is not float or not 0.0 <= confidence <= 1.0:
                    confidence = _confidence(confidence)
                if type(latency) is float and 0.0 <= latency < 2e9:
                    latency = round(latency)
                else:
                    latency = _latency(latency)
                deployment_hex = known(deployment, False)  # cached: a replica serves few
                if deployment_hex is False:
                    deployment_hex = hexed(deployment)
                version_hex = known(version, False)
                if version_hex is False:
                    version_hex = hexed(version)
                if type(variant) is not str or len(variant) > 50:
                    variant = _text(variant, 50)
                append(
                    (
                        ident,
                        deployment_hex,
                        request,
                        version_hex,
                        variant,
                        inputs,
                        prediction,
                        confidence,
                        latency,
                        stamp,
                    )
                )
        return rows

    def _hex(self, value: str | None) -> str | None:
        """An id as 32 hex digits (``None`` when it is no UUID: the row cannot refer to
        it); cached, a replica serves few deployments and versions."""
        if value is None:
            return None
        found = self._ids.get(value, False)
        if found is False:
            try:
                found = (value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))).hex
            except ValueError:
                found = None
            if len(self._ids) > 10_000:
                self._ids.clear()
            self._ids[value] = found
        return found  # type: ignore[return-value]

    def _notify(self, batch: list[Record], rows: list[tuple[Any, ...]]) -> None:
        hooks = self.hooks
        if hooks is None or not _has_implementations(hooks, "mlrig_predictions_served"):
            return
        by_deployment: dict[str, list[dict[str, Any]]] = {}
        for entry, row in zip(batch, rows, strict=True):
            by_deployment.setdefault(entry[0], []).append(
                {
                    "request_id": row[2],
                    "model_version_id": entry[6],
                    "variant": row[4],
                    "inputs": None if row[5] is None else orjson.loads(row[5]),
                    "prediction": None if row[6] is None else orjson.loads(row[6]),
                    "confidence": row[7],
                    "latency_ms": entry[5],
                    "timestamp": datetime.fromtimestamp(entry[8], timezone.utc).isoformat(),
                }
            )
        for deployment, records in by_deployment.items():
            event = {
                "deployment_id": deployment,
                "count": len(records),
                "latency_ms_p50": statistics.median(r["latency_ms"] for r in records),
                "records": records,
            }
            try:
                hooks.predictions_served(event)
            except Exception:  # a plugin's bug must not stop the writes
                log.exception("inference log: a predictions_served hook failed")


# --- conversions (writer thread) -----------------------------------------------------


_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_dumps = orjson.dumps


def dump_json(value: Any) -> str | None:
    """``value`` as JSON text for the ``input_features``/``prediction`` columns.

    numpy arrays and scalars are written as lists and numbers, NaN and infinities as
    ``null`` (JSON has no such numbers; PostgreSQL would refuse the row), NUL characters
    are removed (neither database stores them in JSON). A value that cannot be written at
    all (nested over 254 levels, a lone surrogate, an integer over 64 bits) is stored as
    ``null`` rather than failing the batch.
    """
    if value is None:
        return None
    try:
        data = orjson.dumps(value, option=_JSON_OPTIONS, default=_json_default)
    except TypeError:  # orjson.JSONEncodeError
        try:
            data = orjson.dumps(to_json(value), option=_JSON_OPTIONS, default=_json_default)
        except TypeError:
            return None
    if b"\\u0000" in data:
        data = orjson.dumps(_without_nul(orjson.loads(data)))
    return data.decode()


def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # a numpy array orjson does not take natively
    if tolist is not None:
        return to_json(tolist())
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


def to_json(value: Any) -> Any:
    """``value`` as plain JSON data: numpy arrays and scalars become lists and numbers,
    tuples become lists, NaN and infinities become ``None`` (JSON has no such numbers)."""
    if value is None or type(value) in (str, bool, int):
        return value
    if type(value) is float:
        return value if math.isfinite(value) else None
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if tolist is not None and not isinstance(value, (list, tuple, dict, str)):
        kind = getattr(getattr(value, "dtype", None), "kind", None)
        plain = tolist()
        if kind in ("i", "u", "b"):
            return plain  # integers and booleans are always finite
        if kind == "f":
            import numpy  # loaded already: value is a numpy object

            if bool(numpy.isfinite(value).all()):
                return plain
        return to_json(plain)
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (int, float)):
        return to_json(float(value)) if isinstance(value, float) else int(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return str(value)


def _confidence(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or abs(number) > MAX_CONFIDENCE:
        return None
    return number


def _latency(value: float) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return max(0, min(round(number), 2**31 - 1))


def _text(value: Any, size: int) -> str | None:
    return None if value is None else str(value).replace("\x00", "")[:size]


_COLUMNS = (
    "id, deployment_id, request_id, model_version_id, variant, input_features, prediction, "
    "confidence_score, latency_ms, timestamp"
)
# ON CONFLICT without a target: the unique (deployment_id, request_id) index is the one
# a new row can meet (ids are fresh); a retried client request id is stored once.
_SQLITE_INSERT = (
    f"INSERT INTO inference_requests ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
_POSTGRES_INSERT = (
    f"INSERT INTO inference_requests ({_COLUMNS}) VALUES (%s::uuid, %s::uuid, %s, %s::uuid, "
    "%s, %s::jsonb, %s::jsonb, %s, %s, %s) ON CONFLICT DO NOTHING"
)


#: rows per multi-row ``INSERT`` on SQLite: 990 parameters (SQLite builds before 3.32
#: allow 999 per statement)
SQLITE_ROWS_PER_STATEMENT = 99
_SQLITE_INSERT_MANY = (
    f"INSERT INTO inference_requests ({_COLUMNS}) VALUES "
    + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * SQLITE_ROWS_PER_STATEMENT)
    + " ON CONFLICT DO NOTHING"
)
#: rows converted between two hand-overs of the GIL to the event loop
_ROWS_PER_SLICE = 200


def _sqlite_insert(cursor: Any, rows: list[tuple[Any, ...]]) -> int:
    """Insert ``rows`` with the ``sqlite3`` cursor: full multi-row statements, then the
    rest one by one; returns the rows inserted (a duplicate request id is not)."""
    per = SQLITE_ROWS_PER_STATEMENT
    full = len(rows) - len(rows) % per
    count = 0
    for begin in range(0, full, per):
        cursor.execute(_SQLITE_INSERT_MANY, [v for row in rows[begin : begin + per] for v in row])
        count += cursor.rowcount
    if full < len(rows):
        cursor.executemany(_SQLITE_INSERT, rows[full:])
        count += cursor.rowcount
    return count


def _is_permanent(exc: BaseException) -> bool:
    """Whether retrying cannot help: the database refused the data itself (a constraint,
    a value it cannot store), not the connection, a lock or a missing table."""
    if isinstance(exc, (MlrigError, TypeError, ValueError)):
        return True
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    names = {cls.__name__ for cls in type(orig).__mro__}
    return bool(names & {"IntegrityError", "DataError"})


def _has_implementations(hooks: Hooks, name: str) -> bool:
    caller = getattr(getattr(hooks, "pm", None), "hook", None)
    caller = getattr(caller, name, None)
    if caller is None:
        return True  # not a pluggy facade: just call it
    return bool(caller.get_hookimpls())
