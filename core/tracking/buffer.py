"""The metric buffer of a tracked run: ``log_metric`` appends, background threads send.

The training loop's only cost is one tuple appended to a list (:attr:`MetricBuffer.points`,
no lock: ``list.append`` and the slice-and-delete that takes points out are each one
atomic operation under the GIL). Two daemon threads do the rest:

* the *sealer* wakes every :data:`POLL_SECONDS`, and when ``flush_points`` points wait
  or ``flush_seconds`` passed since the last seal, cuts them into batches (one request
  each) in a FIFO queue; when more than ``max_buffered_points`` points are queued (the
  server is down), the oldest batches go to a spill file (JSON lines under
  ``spill_dir``), so memory stays bounded;
* the *sender* sends batches oldest first (spilled ones before those in memory) and
  retries with exponential back-off while the server is unreachable.

Exactly once: a batch the sink *certainly* did not write (connection refused, a database
error that rolled the transaction back) is sent again; when the outcome is unknown (the
connection broke after the request went out) the sender asks the sink how many points
the run has and compares with what it acknowledged so far: the batch is sent again only
if it is not there. This assumes one writer per run (the script that runs it), which is
what a tracked run is. A batch the sink refuses as invalid is checked point by point:
the bad points are dropped with a warning (one per batch) and the rest sent.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from mlrig.nonfinite import to_json

__all__ = [
    "MetricBuffer",
    "OutcomeUnknownError",
    "PointSink",
    "UnreachableError",
    "replay_spilled",
    "to_wire",
]

log = logging.getLogger("mlrig.tracking")

#: how often the sealer looks at the buffer (the size threshold is checked this often)
POLL_SECONDS = 0.05
#: most points in one request (the server takes up to 100,000)
MAX_BATCH = 50_000
#: back-off between retries while the sink is unreachable: doubling, capped
BACKOFF_START = 0.25
BACKOFF_MAX = 10.0
SPILL_SUFFIX = ".points"
#: seconds one request of points may take (the sink's timeout)
SEND_TIMEOUT = 30.0

Row = tuple[Any, ...]


class UnreachableError(Exception):
    """The sink did not write the batch (it can be sent again as is)."""


class OutcomeUnknownError(Exception):
    """The request went out but no answer came back: the batch may have been written."""


class PointSink(Protocol):
    """Where a run's points go (:mod:`mlrig.tracking.stores`)."""

    #: names the server or database, so that spill files are replayed to the same place
    target: str

    def send_points(self, run_id: str, rows: Sequence[Row]) -> int:
        """Write ``(name, value, step, epoch, kind, recorded_at)`` rows (``recorded_at``
        an ISO 8601 string) all or nothing; return how many were written.

        :raises UnreachableError: nothing was written, try again later.
        :raises OutcomeUnknownError: may or may not have been written.
        :raises mlrig.errors.ValidationError: a bad point, nothing written.
        """

    def count_points(self, run_id: str) -> int:
        """How many points the run has (to settle an unknown outcome)."""


# --- the wire format ----------------------------------------------------------------------


class _IsoCache(dict[int, str]):
    """Millisecond -> ISO 8601 UTC text; a batch has few distinct milliseconds."""

    def __missing__(self, ms: int) -> str:
        text = datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
        self[ms] = text
        return text


def to_wire(rows: Sequence[Row]) -> list[Row]:
    """Buffered rows (``recorded_at`` a ``time.time()`` float) as rows to send: the time as
    ISO 8601 text, and a non-finite value as ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``
    (JSON has no such numbers; the server reads these strings back as floats)."""
    iso = _IsoCache()
    out = [(n, v, s, e, k, iso[int(t * 1000)]) for n, v, s, e, k, t in rows]
    try:
        finite = math.isfinite(math.fsum(r[1] for r in out))
    except OverflowError:
        finite = False
    if not finite:  # rare: a diverged loss; find which
        out = [(n, to_json(v), s, e, k, t) for n, v, s, e, k, t in out]
    return out


# --- batches and the spill file -----------------------------------------------------------


@dataclass
class _Batch:
    seq: int
    rows: list[Row]  # wire rows
    spilled_at: int | None = None  # byte offset of its line in the spill file


@dataclass
class _Counters:
    logged: int = 0
    sent: int = 0
    dropped: int = 0
    spilled: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)


#: spill files of the buffers still open in this process (replay_spilled leaves them)
_open_spills: set[Path] = set()


class _SpillFile:
    """Batches that did not fit in memory, one JSON line each, read back in order."""

    def __init__(self, folder: Path, run_id: str, target: str) -> None:
        self.folder = folder
        self.path = folder / f"{run_id}-{os.getpid()}-{uuid.uuid4().hex[:6]}{SPILL_SUFFIX}"
        _open_spills.add(self.path)
        self.run_id = run_id
        self.target = target
        self._read_at = 0
        self.pending = 0  # batches written and not read back yet

    def write(self, batch: _Batch) -> None:
        import orjson

        new = not self.path.exists()
        if new:
            self.folder.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as out:
            if new:
                head = {"run_id": self.run_id, "target": self.target}
                out.write(orjson.dumps(head) + b"\n")
                self._read_at = out.tell()
            out.write(orjson.dumps({"seq": batch.seq, "rows": batch.rows}) + b"\n")
            out.flush()
            os.fsync(out.fileno())
        self.pending += 1

    def peek(self) -> _Batch | None:
        import orjson

        if not self.pending:
            return None
        with self.path.open("rb") as src:
            src.seek(self._read_at)
            line = src.readline()
        record = orjson.loads(line)
        batch = _Batch(record["seq"], [tuple(r) for r in record["rows"]])
        batch.spilled_at = self._read_at + len(line)  # where the next one starts
        return batch

    def compact(self) -> None:
        """Drop the lines already sent, so that a replay sends only the rest."""
        if not self.pending or not self.path.exists():
            return
        data = self.path.read_bytes()
        head = data[: data.index(b"\n") + 1]
        if self._read_at > len(head):
            partial = self.path.with_name(self.path.name + ".tmp")
            partial.write_bytes(head + data[self._read_at :])
            partial.replace(self.path)
            self._read_at = len(head)

    def done(self, batch: _Batch) -> None:
        assert batch.spilled_at is not None
        self._read_at = batch.spilled_at
        self.pending -= 1
        if not self.pending:
            self.path.unlink(missing_ok=True)


# --- the buffer ---------------------------------------------------------------------------


class MetricBuffer:
    """Points of one run on their way to a :class:`PointSink`.

    :param sink: where they go.
    :param run_id: the run.
    :param flush_points: seal a batch when this many wait...
    :param flush_seconds: ...or this long after the last seal.
    :param max_buffered_points: queued points kept in memory at most; the oldest batches
        beyond it go to a spill file in ``spill_dir``.
    :param baseline: points the run already has (a resumed run), for unknown outcomes.
    """

    def __init__(
        self,
        sink: PointSink,
        run_id: str,
        *,
        flush_points: int = 10_000,
        flush_seconds: float = 2.0,
        max_buffered_points: int = 1_000_000,
        spill_dir: Path,
        baseline: int | Callable[[], int] = 0,
    ) -> None:
        self.sink = sink
        self.run_id = run_id
        self.flush_points = flush_points
        self.flush_seconds = flush_seconds
        self.max_buffered_points = max_buffered_points
        self.batch_size = max(1, min(flush_points, MAX_BATCH))
        #: the hot list: ``Run.log_metric`` appends ``(name, value, step, epoch, kind,
        #: time.time())`` here and nothing else
        self.points: list[Row] = []
        self.counters = _Counters()
        self._baseline = baseline
        self._queue: deque[_Batch] = deque()  # sealed, in memory, oldest first
        self._queued_points = 0
        self._spill = _SpillFile(spill_dir, run_id, sink.target)
        self._seq = 0
        self._acked = 0
        self._lock = threading.Condition()
        self._wake = threading.Event()
        self._stopping = False
        self._last_seal = time.monotonic()
        self._threads: list[threading.Thread] = []

    # --- life ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sealer and the sender threads (daemons)."""
        for name, target in (("sealer", self._seal_loop), ("sender", self._send_loop)):
            thread = threading.Thread(
                target=target, name=f"mlrig-{name}-{self.run_id[:8]}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def flush(self, timeout: float | None = None) -> bool:
        """Send every point logged so far; ``True`` once all are written, ``False`` when
        ``timeout`` seconds passed first (they stay queued)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        target = self._seal_all()
        with self._lock:
            while self.counters.sent + self.counters.dropped < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left if left is not None else 1.0)
        return True

    def close(self, timeout: float) -> int:
        """Flush (for at most ``timeout`` seconds), stop the threads; returns how many
        points were left unsent (kept in the spill file for :func:`replay_spilled`)."""
        done = self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=SEND_TIMEOUT + 5)  # a request in flight ends first
        if done:
            _open_spills.discard(self._spill.path)
            return 0
        # whatever is still in memory goes to the spill file
        with self._lock:
            while self._queue:
                batch = self._queue.popleft()
                self._queued_points -= len(batch.rows)
                self._spill.write(batch)
                self.counters.spilled += len(batch.rows)
            self._spill.compact()
            left = self.counters.logged - self.counters.sent - self.counters.dropped
        _open_spills.discard(self._spill.path)
        if left:
            log.warning(
                "mlrig: %s metric points of run %s could not be sent to %s; they are kept "
                "in %s and sent by the next run tracked to the same place "
                "(or mlrig.tracking.buffer.replay_spilled)",
                f"{left:,}",
                self.run_id,
                self.sink.target,
                self._spill.path,
            )
        return left

    @property
    def unsent(self) -> int:
        """Points logged and not written yet."""
        pending = len(self.points)
        return self.counters.logged + pending - self.counters.sent - self.counters.dropped

    # --- sealing ------------------------------------------------------------------------

    def _seal_loop(self) -> None:
        while not self._stopping:
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
            try:
                waiting = len(self.points)
                if waiting >= self.flush_points or (
                    waiting and time.monotonic() - self._last_seal >= self.flush_seconds
                ):
                    self._seal_all()
                else:
                    self._spill_overflow()
            except Exception as exc:  # never kill the thread (a full disk...)
                self._note(f"sealing failed: {type(exc).__name__}: {exc}")
                time.sleep(POLL_SECONDS)

    def _seal_all(self) -> int:
        """Move every waiting point into batches; returns how many points were logged."""
        with self._lock:
            points = self.points
            waiting = len(points)
            while waiting:
                take = min(waiting, self.batch_size)
                chunk = points[:take]
                del points[:take]  # appends meanwhile went to the end: untouched
                waiting -= take
                self._seq += 1
                self._queue.append(_Batch(self._seq, to_wire(chunk)))
                self._queued_points += take
                self.counters.logged += take
            self._last_seal = time.monotonic()
            self._spill_overflow()
            self._lock.notify_all()
            return self.counters.logged

    def _spill_overflow(self) -> None:
        with self._lock:
            while self._queued_points > self.max_buffered_points and len(self._queue) > 1:
                batch = self._queue.popleft()
                self._queued_points -= len(batch.rows)
                self._spill.write(batch)
                self.counters.spilled += len(batch.rows)

    # --- sending ------------------------------------------------------------------------

    def _next(self) -> _Batch | None:
        with self._lock:
            while True:
                if self._stopping:  # close() spills what is left
                    return None
                if self._spill.pending:
                    return self._spill.peek()
                if self._queue:
                    return self._queue[0]
                self._lock.wait(1.0)

    def _done(self, batch: _Batch, written: int, size: int) -> None:
        with self._lock:
            if batch.spilled_at is not None:
                self._spill.done(batch)
            elif self._queue and self._queue[0] is batch:
                self._queue.popleft()
                self._queued_points -= size
            self.counters.sent += written
            self.counters.dropped += size - written
            self._acked += written
            self._lock.notify_all()

    def _send_loop(self) -> None:
        backoff = BACKOFF_START
        while True:
            batch = self._next()
            if batch is None:
                return
            size = len(batch.rows)
            try:
                written = self._send(batch)
            except UnreachableError as exc:
                self.counters.retries += 1
                if self.counters.retries == 1 or backoff >= BACKOFF_MAX:
                    log.warning("mlrig: %s; retrying (points are kept)", exc)
                if not self._sleep(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except Exception as exc:  # a refusal retrying cannot fix: drop, say so
                self._note(f"{len(batch.rows):,} points dropped: {exc}")
                written = 0
            backoff = BACKOFF_START
            self._done(batch, written, size)

    def _sleep(self, seconds: float) -> bool:
        """Wait before a retry; ``False`` when the buffer is closing past its deadline."""
        with self._lock:
            if self._stopping:
                return False
            self._lock.wait(seconds)
            return not self._stopping

    def _send(self, batch: _Batch) -> int:
        from mlrig.errors import ValidationError

        try:
            return self.sink.send_points(self.run_id, batch.rows)
        except OutcomeUnknownError:
            expected = self._baseline_count() + self._acked
            try:
                have = self.sink.count_points(self.run_id)
            except Exception as exc:
                raise UnreachableError(str(exc)) from None
            if have >= expected + len(batch.rows):
                return len(batch.rows)  # it was written
            raise UnreachableError("the connection broke; sending the batch again") from None
        except ValidationError as exc:
            good = self._valid_rows(batch.rows)
            self._note(f"{len(batch.rows) - len(good):,} invalid points dropped: {exc}")
            batch.rows = good
            return self.sink.send_points(self.run_id, good) if good else 0

    def _baseline_count(self) -> int:
        if callable(self._baseline):
            self._baseline = self._baseline()
        return self._baseline

    @staticmethod
    def _valid_rows(rows: list[Row]) -> list[Row]:
        from mlrig.errors import ValidationError
        from mlrig.experiments.points import check_points

        good = []
        for row in rows:
            try:
                check_points([row])
            except ValidationError:
                continue
            good.append(row)
        return good

    def _note(self, message: str) -> None:
        self.counters.errors.append(message)
        log.warning("mlrig: run %s: %s", self.run_id, message)


# --- leftovers of earlier processes -------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def replay_spilled(sink: PointSink, spill_dir: Path) -> int:
    """Send the points that earlier processes spilled for ``sink.target`` and could not
    send before they ended; returns how many were written. Files of other targets stay.

    Each batch is sent once (a file's batches are removed from it as they go); a batch
    whose outcome is unknown is left for the next try.
    """
    import orjson

    written = 0
    if not spill_dir.is_dir():
        return 0
    for stale in spill_dir.glob(f"*{SPILL_SUFFIX}.replaying-*"):  # its replayer died
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                stale.rename(stale.with_name(stale.name.split(".replaying-")[0]))
    for path in sorted(spill_dir.glob(f"*{SPILL_SUFFIX}")):
        if path in _open_spills:
            continue  # a buffer of this process still uses it
        claimed = path.with_name(f"{path.name}.replaying-{os.getpid()}")
        try:
            path.rename(claimed)  # atomic: two processes never replay one file
        except OSError:
            continue
        try:
            head, *lines = claimed.read_bytes().splitlines(keepends=True)
            meta = orjson.loads(head)
        except (OSError, ValueError):
            claimed.rename(path)
            continue
        if meta.get("target") == sink.target:
            while lines:
                record = orjson.loads(lines[0])
                rows = [tuple(r) for r in record["rows"]]
                try:
                    written += sink.send_points(meta["run_id"], rows)
                except (UnreachableError, OutcomeUnknownError):
                    break
                except Exception as exc:  # refused (the run is gone...): not sent again
                    log.warning("mlrig: spilled points of run %s refused: %s", meta["run_id"], exc)
                lines.pop(0)
        if lines:
            claimed.write_bytes(head + b"".join(lines))
            claimed.rename(path)
        else:
            claimed.unlink(missing_ok=True)
    return written
