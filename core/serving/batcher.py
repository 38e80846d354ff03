"""Adaptive micro-batching of prediction requests, with a bounded queue.

One :class:`MicroBatcher` per loaded model. ``await batcher.submit(x)`` hands it one
request's rows (a numpy batch) and returns that request's predictions and probabilities.

How batches form (no timer on the common path):

- The batcher runs one batch at a time. A request that finds it idle is scheduled at once
  (``loop.call_soon``), so every request the event loop read in the same pass joins it, and a
  lone request waits for nothing: the added latency is one loop callback.
- Requests that arrive while a batch runs wait, and the next batch takes all of them (up to
  ``max_batch_size`` rows; a single request larger than that runs alone, unsplit).
- It waits for more (at most ``max_latency_ms`` from the oldest request) only when more are
  known to be coming: the recent gap between arrivals is shorter than a batch run, so the next
  request would have waited for the model anyway. At 1 request/s it never waits.
- Beyond ``max_queue`` waiting requests, :meth:`MicroBatcher.submit` raises
  :class:`Overloaded` (429, with ``retry_after``) at once instead of piling up latency.

Where ``run`` executes (``mode``): ``"thread"``, one dedicated thread per batcher (the event
loop keeps reading requests while the model computes); ``"inline"``, in the event loop itself
(no thread hand-off, which costs more than a small model's whole prediction); ``"auto"`` (the
default), inline while a batch typically (median of the last 16) takes under
``inline_below_ms`` (5 ms), else the thread. Measured on the 2-core development machine
under load, with a scaler + logistic regression (about 1 ms a row there): the thread
hand-off added 0.6-1.8 ms at the median and 11 ms at p99 to a lone request (the worker
thread waits for a CPU), running inline 0.1 ms and 1.4 ms. A model slower than that runs in
the thread so that the event loop (other deployments, health checks, 429s) stays responsive.

A failing batch of several requests is retried one request at a time, so only the request at
fault gets its error (a ValidationError stays a 422 for that request alone).

The batcher belongs to one event loop: call :meth:`submit` and :meth:`close` from it (from
another thread: ``asyncio.run_coroutine_threadsafe(batcher.close(), loop)``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from mlrig.errors import MlrigError

__all__ = ["Closing", "MicroBatcher", "Overloaded"]

log = logging.getLogger(__name__)

#: what ``run`` returns for a batch: one prediction per row, probabilities per row or None
Result = tuple[Any, Any]
#: smoothing of the arrival-gap average
_ALPHA = 0.2
#: batches whose run times give the typical one (their median: a batch slowed down by a
#: preempted CPU on a busy machine must not flip the batcher into its thread)
_RECENT_RUNS = 16


class Overloaded(MlrigError):
    """The model's queue is full: retry after ``retry_after`` seconds (HTTP 429)."""

    code = "overloaded"
    http_status = 429

    def __init__(
        self, message: str, *, retry_after: int, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details={"retry_after": retry_after, **(details or {})})
        #: whole seconds, at least 1, for the ``Retry-After`` header
        self.retry_after = retry_after


class Closing(Overloaded):
    """The model is being unloaded (a rolling update finished): retry (HTTP 503)."""

    code = "unavailable"
    http_status = 503


class _Item:
    __slots__ = ("future", "rows", "x")

    def __init__(self, x: np.ndarray, future: asyncio.Future[Result]) -> None:
        self.x = x
        self.rows = len(x)
        self.future = future


class MicroBatcher:
    """Gather concurrent requests to one model into batches; see the module docstring.

    ``run(batch)`` takes an ``(N, ...)`` array and returns ``(predictions, probabilities)``
    with N entries each (probabilities may be ``None``); lists or numpy arrays.
    ``on_batch(size, seconds)``, if set, is called after every batch (for metrics).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], Result],
        *,
        max_batch_size: int,
        max_latency_ms: float,
        max_queue: int,
        name: str = "",
        mode: str = "auto",
        inline_below_ms: float = 5.0,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_latency_ms < 0:
            msg = "max_batch_size and max_queue must be >= 1 and max_latency_ms >= 0"
            raise ValueError(msg)
        if mode not in ("auto", "inline", "thread"):
            msg = f"unknown batcher mode {mode!r}; expected auto, inline or thread"
            raise ValueError(msg)
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000
        self.max_queue = max_queue
        self.name = name
        self.mode = mode
        self.on_batch: Callable[[int, float], None] | None = None
        self._inline_below = inline_below_ms / 1000
        self._pending: deque[_Item] = deque()
        self._pending_rows = 0
        self._running = 0  # requests in the batch being run
        self._busy = False
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._idle: asyncio.Event | None = None
        self._run_time: float | None = None  # typical seconds per batch (median of recent)
        self._recent_runs: deque[float] = deque(maxlen=_RECENT_RUNS)
        self._gap_avg: float | None = None  # seconds between arrivals
        self._last_arrival = 0.0
        #: batches run, and requests they served (for tests and figures)
        self.batches = 0
        self.requests = 0

    # -- figures -------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        """Requests submitted and not answered yet (waiting or running)."""
        return len(self._pending) + self._running

    @property
    def inline(self) -> bool:
        """Whether the next batch runs in the event loop (else in the batcher's thread)."""
        if self.mode != "auto":
            return self.mode == "inline"
        return self._run_time is not None and self._run_time < self._inline_below

    # -- the request path ----------------------------------------------------------------

    async def submit(self, x: np.ndarray) -> Result:
        """Predict this request's rows ``x``; returns its (predictions, probabilities).

        Raises :class:`Overloaded` at once when ``max_queue`` requests are already waiting,
        :class:`Closing` once :meth:`close` was called, and whatever ``run`` raised for
        this request.
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        if self._closed:
            msg = f"model {self.name!r} is being unloaded; retry"
            raise Closing(msg, retry_after=1)
        if len(self._pending) >= self.max_queue:
            raise self._overloaded()
        now = time.perf_counter()
        if self._last_arrival:
            gap = now - self._last_arrival
            self._gap_avg = (
                gap if self._gap_avg is None else self._gap_avg + _ALPHA * (gap - self._gap_avg)
            )
        self._last_arrival = now
        future: asyncio.Future[Result] = loop.create_future()
        item = _Item(x, future)
        self._pending.append(item)
        self._pending_rows += item.rows
        if not self._busy:
            if self._scheduled is None:
                self._scheduled = loop.call_soon(self._flush)
            elif self._pending_rows >= self.max_batch_size and isinstance(
                self._scheduled, asyncio.TimerHandle
            ):
                self._scheduled.cancel()  # it was waiting for more: the batch is full now
                self._scheduled = loop.call_soon(self._flush, True)
        return await future

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pending or self._busy:
            msg = f"batcher {self.name!r} is used from two event loops"
            raise RuntimeError(msg)
        self._loop = loop
        self._idle = None

    def _overloaded(self) -> Overloaded:
        per_batch = self._run_time or 0.01
        drain = per_batch * (len(self._pending) / self.max_batch_size + 1)
        retry_after = max(1, math.ceil(drain))
        msg = (
            f"model {self.name!r} is overloaded: {len(self._pending)} requests are waiting "
            f"(the limit is [serving] max_queue = {self.max_queue}); retry in {retry_after} s"
        )
        return Overloaded(msg, retry_after=retry_after, details={"queue": len(self._pending)})

    def _flush(self, waited: bool = False) -> None:
        """Start the next batch (in the loop), unless one runs or waiting for more pays."""
        self._scheduled = None
        if self._busy:
            return
        while self._pending and self._pending[0].future.done():
            self._pending_rows -= self._pending.popleft().rows  # cancelled before its turn
        if not self._pending:
            self._set_idle()
            return
        if not waited and self._worth_waiting():
            delay = min(self.max_latency, 2 * (self._gap_avg or 0.0))
            self._scheduled = self._loop.call_later(delay, self._flush, True)
            return
        items = self._take()
        if not items:
            self._flush()
            return
        self._busy = True
        self._running = len(items)
        arrays = [item.x for item in items]
        if self.inline:
            self._finish(items, self._execute(arrays), inline=True)
        else:
            job = self._thread().submit(self._execute, arrays)
            loop = self._loop
            job.add_done_callback(
                lambda done: loop.call_soon_threadsafe(self._finish_job, items, done)
            )

    def _worth_waiting(self) -> bool:
        if not self.max_latency or self._gap_avg is None or self._run_time is None:
            return False
        if self._pending_rows >= self.max_batch_size:
            return False
        # the next request is due before a batch would end: it would wait for the model anyway
        return self._gap_avg < self._run_time and 2 * self._gap_avg <= self.max_latency

    def _take(self) -> list[_Item]:
        items: list[_Item] = []
        rows = 0
        pending = self._pending
        while pending:
            item = pending[0]
            if item.future.done():
                self._pending_rows -= pending.popleft().rows
                continue
            if items and rows + item.rows > self.max_batch_size:
                break
            items.append(pending.popleft())
            self._pending_rows -= item.rows
            rows += item.rows
        return items

    def _execute(self, arrays: list[np.ndarray]) -> tuple[list[Result | BaseException], float]:
        """Run one batch; on failure, each request alone. One outcome per request, seconds."""
        started = time.perf_counter()
        return self._outcomes(arrays), time.perf_counter() - started

    def _outcomes(self, arrays: list[np.ndarray]) -> list[Result | BaseException]:
        try:
            if len(arrays) == 1:
                return [self._run_checked(arrays[0])]
            predictions, probabilities = self._run_checked(np.concatenate(arrays))
        except Exception as exc:  # handed to the request(s) at fault
            if len(arrays) == 1:
                return [exc]
            outcomes: list[Result | BaseException] = []
            for x in arrays:
                try:
                    outcomes.append(self._run_checked(x))
                except Exception as single:
                    outcomes.append(single)
            return outcomes
        outcomes = []
        start = 0
        for x in arrays:
            end = start + len(x)
            outcomes.append(
                (
                    predictions[start:end],
                    None if probabilities is None else probabilities[start:end],
                )
            )
            start = end
        return outcomes

    def _run_checked(self, x: np.ndarray) -> Result:
        predictions, probabilities = self.run(x)
        if len(predictions) != len(x) or (
            probabilities is not None and len(probabilities) != len(x)
        ):
            msg = (
                f"model {self.name!r} returned {len(predictions)} predictions for a batch of "
                f"{len(x)} rows"
            )
            raise RuntimeError(msg)
        return predictions, probabilities

    def _finish_job(self, items: list[_Item], job: Future) -> None:
        try:
            done = job.result()
        except BaseException as exc:  # the thread itself failed
            done = ([exc] * len(items), 0.0)
        self._finish(items, done, inline=False)

    def _finish(
        self,
        items: list[_Item],
        done: tuple[list[Result | BaseException], float],
        *,
        inline: bool,
    ) -> None:
        outcomes, seconds = done
        recent = self._recent_runs
        recent.append(seconds)
        self._run_time = sorted(recent)[len(recent) // 2]
        for item, outcome in zip(items, outcomes, strict=True):
            if item.future.done():
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        self._busy = False
        self._running = 0
        self.batches += 1
        self.requests += len(items)
        if self.on_batch is not None:
            try:
                self.on_batch(sum(item.rows for item in items), seconds)
            except Exception:  # metrics must never break serving
                log.exception("on_batch hook of batcher %r failed", self.name)
        if self._pending:
            if self._scheduled is None:
                if inline:  # let the loop breathe (and no recursion) between inline batches
                    self._scheduled = self._loop.call_soon(self._flush)
                else:
                    self._flush()
        else:
            self._set_idle()

    def _thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"mlrig-batch-{self.name}")
        return self._executor

    def _set_idle(self) -> None:
        if self._idle is not None and not self._busy and not self._pending:
            self._idle.set()

    # -- shutdown ------------------------------------------------------------------------

    async def close(self) -> None:
        """Refuse new requests (:class:`Closing`), answer the waiting ones, stop the thread."""
        self._closed = True
        if self._busy or self._pending:
            if self._idle is None:
                self._idle = asyncio.Event()
            self._idle.clear()
            if not self._busy and self._scheduled is None:
                self._scheduled = asyncio.get_running_loop().call_soon(self._flush)
            while self._busy or self._pending:
                await self._idle.wait()
                self._idle.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
