"""Prometheus metrics of the data plane (``GET /metrics``), safe across replicas.

One :class:`ServingMetrics` per process. In a single process its metrics live in a
private :class:`~prometheus_client.CollectorRegistry` (tests and embedded servers don't
collide). ``mlrig serve`` runs several replica processes: the supervisor calls
:func:`prepare_multiprocess` before it starts them, every replica then writes its
figures to memory-mapped files in that folder (prometheus-client's multiprocess mode)
and :meth:`ServingMetrics.render` in any replica aggregates all of them, so whichever
replica Prometheus reaches answers for the whole server. The supervisor calls
:func:`mark_dead` for a replica that ended, so its in-flight gauge stops counting.

The request path calls :meth:`~ServingMetrics.observe_request`,
:meth:`~ServingMetrics.in_flight` and friends: label children are cached in plain dicts
so a call is a dict lookup plus prometheus-client's own increment.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import shutil
import threading
import weakref
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    exposition,
    values,
)
from prometheus_client.exposition import generate_latest

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "LOAD_BUCKETS",
    "MULTIPROC_ENV",
    "ServingMetrics",
    "collect_directory",
    "mark_dead",
    "multiprocess_dir",
    "prepare_multiprocess",
    "remove_multiprocess",
    "render_directory",
    "shared_metrics",
]

log = logging.getLogger(__name__)

#: the classic text format (every name here is a legacy-valid one, so the body is the
#: same in 0.0.4 and 1.0.0): what Prometheus 2 and 3 and every other scraper accept
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)

#: the environment variable prometheus-client reads for its multiprocess folder
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: request latency buckets (seconds): 0.5 ms to 10 s
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: rows per model call, powers of two up to 4096
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(13))
#: model download + load + warm-up time (seconds)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def multiprocess_dir() -> str | None:
    """The multiprocess folder in force in this process, or ``None``."""
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess(directory: str | os.PathLike[str], *, clean: bool = True) -> Path:
    """Make ``directory`` the metrics folder of this process and of every process it
    starts from now on (sets ``PROMETHEUS_MULTIPROC_DIR``); call it in the supervisor
    before the replicas start.

    :param clean: remove the files a previous run left there (counters would otherwise
        continue from old values, and dead replicas' gauges would still count).
    """
    path = Path(directory)
    if clean and path.is_dir():
        for name in glob.glob(os.path.join(path, "*.db")):
            os.remove(name)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def mark_dead(pid: int, directory: str | os.PathLike[str] | None = None) -> None:
    """A replica ended: drop its live gauges (in flight) from the aggregate; its counters
    and histograms stay, so totals never go down."""
    from prometheus_client import multiprocess

    path = str(directory) if directory is not None else multiprocess_dir()
    if path:
        multiprocess.mark_process_dead(pid, path)


def remove_multiprocess(directory: str | os.PathLike[str]) -> None:
    """Delete the metrics folder (the supervisor, at exit)."""
    shutil.rmtree(directory, ignore_errors=True)


def _ensure_value_class() -> None:
    # The *_created series (one per label set, a Unix time each) double the exposition
    # and are not written in multiprocess mode: off, so both modes answer the same.
    disable_created_metrics()
    # prometheus-client picks its value class when it is first imported; a process that
    # imported it before the variable was set (or kept it after it was unset) would pick
    # wrong. Metrics built after this call follow the variable.
    wanted = multiprocess_dir() is not None
    if wanted != bool(getattr(values.ValueClass, "_multiprocess", False)):
        values.ValueClass = values.get_value_class()


class ServingMetrics:
    """The data plane's metrics (names follow the Prometheus conventions):

    - ``mlrig_predict_requests_total{deployment,version,code}`` (counter)
    - ``mlrig_predict_latency_seconds{deployment,version}`` (histogram, 0.5 ms .. 10 s)
    - ``mlrig_predict_batch_size{deployment,version}`` (histogram of rows per model call)
    - ``mlrig_predict_in_flight{deployment}`` (gauge; summed over live replicas)
    - ``mlrig_predict_errors_total{deployment,version,kind}`` (counter)
    - ``mlrig_model_load_seconds{deployment,version}`` (histogram)
    - ``mlrig_inference_log_dropped_total`` (counter)

    :param registry: where the metrics are registered (default: a private registry).
    :param publish_seconds: multiprocess mode: how often this process writes its
        figures to the shared files. A memory-mapped write costs about 1.5 us (a lock,
        a pid check, a struct pack), three per request; the hot path adds to a dict
        instead and a background thread publishes the sums, so the aggregate lags by
        at most this (Prometheus scrapes every 15 s or so). :meth:`render`,
        :meth:`summary` and :meth:`close` publish first. In a single process the
        readers publish, no thread runs.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, publish_seconds: float = 0.25
    ) -> None:
        _ensure_value_class()
        self.multiprocess = multiprocess_dir() is not None
        self.publish_seconds = publish_seconds
        #: multiprocess mode: increments not yet written to the files (cell inc -> sum)
        #: increments not yet added to prometheus-client's values (cell inc -> sum): one
        #: lock and dict updates per call instead of a lock (and in multiprocess mode a
        #: memory-mapped write) per value; readers publish first
        self._pending: dict[Any, float] = {}
        self._pending_lock = threading.Lock()
        # multiprocess: a thread publishes to the shared files (other processes read
        # them); single process: every reader is in this process and publishes itself
        self._publisher: Any = None if self.multiprocess else _NO_THREAD
        self._closed = threading.Event()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "mlrig_predict_requests",
            "Predict requests answered, by deployment, version and HTTP status code.",
            ["deployment", "version", "code"],
            registry=reg,
        )
        self.latency = Histogram(
            "mlrig_predict_latency_seconds",
            "Time from a predict request's arrival to its answer, in seconds.",
            ["deployment", "version"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "mlrig_predict_batch_size",
            "Rows per model call (after micro-batching).",
            ["deployment", "version"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=reg,
        )
        self.in_flight_gauge = Gauge(
            "mlrig_predict_in_flight",
            "Predict requests being answered now.",
            ["deployment"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.errors = Counter(
            "mlrig_predict_errors",
            "Predict requests that failed, by kind (the error's code: validation_error, "
            "overloaded, not_found, payload_too_large...).",
            ["deployment", "version", "kind"],
            registry=reg,
        )
        self.load_seconds = Histogram(
            "mlrig_model_load_seconds",
            "Time to download, load and warm up a model version, in seconds.",
            ["deployment", "version"],
            buckets=LOAD_BUCKETS,
            registry=reg,
        )
        self.log_dropped_total = Counter(
            "mlrig_inference_log_dropped",
            "Inference records dropped because the log buffer was full.",
            registry=reg,
        )
        # Per label set, the increment functions of prometheus-client's value cells,
        # cached in plain dicts: a request pays a dict lookup and the cells' own locked
        # additions, not labels()' lock and checks nor observe()'s loop over the buckets.
        self._request_cells: dict[tuple[str, str, int], tuple[Any, Any, list[Any]]] = {}
        self._batch_cells: dict[tuple[str, str], tuple[Any, list[Any]]] = {}
        self._flight_cells: dict[str, Any] = {}
        self._error_cells: dict[tuple[str, str, str], Any] = {}
        self._dropped_inc = _counter_inc(self.log_dropped_total)
        self._cells_lock = threading.Lock()
        if self.multiprocess:
            _instances.add(self)

    # --- the hot path ---------------------------------------------------------------

    def observe_request(self, deployment: str, version: str, seconds: float, code: int) -> None:
        """One answered predict request: counted by status code, latency observed."""
        cell = self._request_cells.get((deployment, version, code))
        if cell is None:
            cell = self._request_cell(deployment, version, code)
        count, total, buckets = cell
        bucket = buckets[bisect_left(_LATENCY_BOUNDS, seconds)]
        with self._pending_lock:
            pending = self._pending
            pending[count] = pending.get(count, 0) + 1
            pending[total] = pending.get(total, 0) + seconds
            pending[bucket] = pending.get(bucket, 0) + 1
        if self._publisher is None:
            self._start_publisher()

    def observe_batch(self, deployment: str, version: str, size: int) -> None:
        """One model call over ``size`` rows."""
        cell = self._batch_cells.get((deployment, version))
        if cell is None:
            cell = self._batch_cell(deployment, version)
        total, buckets = cell
        bucket = buckets[bisect_left(_BATCH_BOUNDS, size)]
        with self._pending_lock:
            pending = self._pending
            pending[total] = pending.get(total, 0) + size
            pending[bucket] = pending.get(bucket, 0) + 1
        if self._publisher is None:
            self._start_publisher()

    @contextmanager
    def in_flight(self, deployment: str) -> Iterator[None]:
        """``with metrics.in_flight(deployment): ...`` counts a request while it runs."""
        add = self._flight_cells.get(deployment) or self._flight_cell(deployment)
        self._add(add, 1)
        try:
            yield
        finally:
            self._add(add, -1)

    def in_flight_inc(self, deployment: str) -> None:
        """A request started (pair with :meth:`in_flight_dec`; cheaper than the context
        manager on a hot path)."""
        self._add(self._flight_cells.get(deployment) or self._flight_cell(deployment), 1)

    def in_flight_dec(self, deployment: str) -> None:
        """A request ended."""
        self._add(self._flight_cells.get(deployment) or self._flight_cell(deployment), -1)

    def error(self, deployment: str, version: str, kind: str) -> None:
        """A failed request; ``kind`` is the error's code (``validation_error``,
        ``overloaded``...)."""
        key = (deployment, version, kind)
        inc = self._error_cells.get(key)
        if inc is None:
            with self._cells_lock:
                inc = self._error_cells.get(key)
                if inc is None:
                    inc = self._error_cells[key] = _counter_inc(self.errors.labels(*key))
        self._add(inc, 1)

    def model_loaded(self, deployment: str, version: str, seconds: float) -> None:
        """A model version was loaded and warmed in ``seconds`` (not a hot path)."""
        self.load_seconds.labels(deployment, version).observe(seconds)

    def log_dropped(self, n: int = 1) -> None:
        """``n`` inference records were dropped (the logger's ``on_drop``)."""
        if n > 0:
            self._add(self._dropped_inc, n)

    def _add(self, inc: Any, amount: float) -> None:
        with self._pending_lock:
            pending = self._pending
            pending[inc] = pending.get(inc, 0) + amount
        if self._publisher is None:
            self._start_publisher()

    # --- publishing ------------------------------------------------------------------

    def publish(self) -> None:
        """Add the increments held since the last publish to prometheus-client's values
        (in multiprocess mode: write them to the shared files). Readers of this class
        (:meth:`render`, :meth:`summary`, :meth:`collect_registry`) do it first; call it
        before reading :attr:`registry` directly."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for inc, amount in pending.items():
            if amount:
                inc(amount)

    def _start_publisher(self) -> None:
        with self._cells_lock:
            if self._publisher is not None or self._closed.is_set():
                return
            self._publisher = threading.Thread(
                target=self._publish_loop, name="mlrig-metrics-publish", daemon=True
            )
            self._publisher.start()

    def _publish_loop(self) -> None:
        while not self._closed.wait(self.publish_seconds):
            try:
                self.publish()
            except Exception:  # pragma: no cover - a full disk must not kill serving
                log.exception("serving metrics: publishing to the shared files failed")

    def _after_fork(self) -> None:
        # the publisher thread did not survive the fork: the child starts its own
        self._publisher = None
        self._pending_lock = threading.Lock()
        self._pending = {}

    def close(self) -> None:
        """Publish what is held and stop the publisher (a replica's shutdown)."""
        self._closed.set()
        if isinstance(self._publisher, threading.Thread):
            self._publisher.join(timeout=5)
        self.publish()

    def _request_cell(self, deployment: str, version: str, code: int) -> Any:
        with self._cells_lock:
            cell = self._request_cells.get((deployment, version, code))
            if cell is None:
                count = _counter_inc(self.requests.labels(deployment, version, str(code)))
                total, buckets = _histogram_incs(self.latency.labels(deployment, version))
                cell = self._request_cells[(deployment, version, code)] = (count, total, buckets)
            return cell

    def _batch_cell(self, deployment: str, version: str) -> Any:
        with self._cells_lock:
            cell = self._batch_cells.get((deployment, version))
            if cell is None:
                cell = _histogram_incs(self.batch_size.labels(deployment, version))
                self._batch_cells[(deployment, version)] = cell
            return cell

    def _flight_cell(self, deployment: str) -> Any:
        with self._cells_lock:
            add = self._flight_cells.get(deployment)
            if add is None:
                add = self._flight_cells[deployment] = _gauge_add(
                    self.in_flight_gauge.labels(deployment)
                )
            return add

    def forget(self, deployment: str) -> None:
        """Drop every series of ``deployment`` (it was deleted), in this process."""
        with self._cells_lock:
            for cache in (self._request_cells, self._batch_cells, self._error_cells):
                for key in [k for k in cache if k[0] == deployment]:
                    del cache[key]
            self._flight_cells.pop(deployment, None)
            for metric in (self.requests, self.latency, self.batch_size, self.errors):
                for labels in _label_sets(metric):
                    if labels[0] == deployment:
                        metric.remove(*labels)
            for labels in _label_sets(self.in_flight_gauge):
                if labels[0] == deployment:
                    self.in_flight_gauge.remove(*labels)

    # --- reading ----------------------------------------------------------------------

    def collect_registry(self) -> CollectorRegistry:
        """The registry to read: every replica's figures in multiprocess mode, else this
        process's."""
        self.publish()
        directory = multiprocess_dir() if self.multiprocess else None
        if directory is None:
            return self.registry
        return collect_directory(directory)

    def render(self) -> tuple[bytes, str]:
        """The text exposition for ``GET /metrics``: ``(body, content type)``."""
        return generate_latest(self.collect_registry()), CONTENT_TYPE

    def summary(self, deployment: str | None = None) -> dict[str, dict[str, Any]]:
        """The current figures by deployment (all replicas in multiprocess mode)::

            {"churn": {"requests": 120.0, "errors": 2.0, "in_flight": 1.0,
                       "latency_seconds": {"count", "sum", "p50", "p99"},
                       "batches": 80.0, "rows": 120.0}}

        Quantiles are estimated from the histogram buckets (their upper bounds).
        """
        figures: dict[str, dict[str, Any]] = {}
        buckets: dict[str, dict[float, float]] = {}

        def entry(name: str) -> dict[str, Any]:
            return figures.setdefault(
                name,
                {
                    "requests": 0.0,
                    "errors": 0.0,
                    "in_flight": 0.0,
                    "latency_seconds": {"count": 0.0, "sum": 0.0, "p50": None, "p99": None},
                    "batches": 0.0,
                    "rows": 0.0,
                },
            )

        for family in self.collect_registry().collect():
            for sample in family.samples:
                name = sample.labels.get("deployment")
                if name is None or (deployment is not None and name != deployment):
                    continue
                item = entry(name)
                metric, value = sample.name, sample.value
                if metric == "mlrig_predict_requests_total":
                    item["requests"] += value
                elif metric == "mlrig_predict_errors_total":
                    item["errors"] += value
                elif metric == "mlrig_predict_in_flight":
                    item["in_flight"] += value
                elif metric == "mlrig_predict_latency_seconds_count":
                    item["latency_seconds"]["count"] += value
                elif metric == "mlrig_predict_latency_seconds_sum":
                    item["latency_seconds"]["sum"] += value
                elif metric == "mlrig_predict_latency_seconds_bucket":
                    bound = float(sample.labels["le"])
                    per = buckets.setdefault(name, {})
                    per[bound] = per.get(bound, 0.0) + value
                elif metric == "mlrig_predict_batch_size_count":
                    item["batches"] += value
                elif metric == "mlrig_predict_batch_size_sum":
                    item["rows"] += value
        for name, per in buckets.items():
            latency = figures[name]["latency_seconds"]
            latency["p50"] = _quantile(per, 0.5)
            latency["p99"] = _quantile(per, 0.99)
        return figures


def collect_directory(directory: str | os.PathLike[str]) -> CollectorRegistry:
    """A registry aggregating the metric files of every process in ``directory``
    (counters and histograms summed, in-flight summed over live processes)."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return registry


def render_directory(directory: str | os.PathLike[str]) -> tuple[bytes, str]:
    """The text exposition of ``directory``'s aggregate (e.g. for the supervisor)."""
    return generate_latest(collect_directory(directory)), CONTENT_TYPE


_LATENCY_BOUNDS = (*LATENCY_BUCKETS, math.inf)
_BATCH_BOUNDS = (*BATCH_SIZE_BUCKETS, math.inf)


def _counter_inc(child: Any) -> Any:
    """The ``inc(amount)`` of a counter child's value cell (its public ``inc`` checks
    the sign and exemplars on every call)."""
    value = getattr(child, "_value", None)
    return value.inc if hasattr(value, "inc") else child.inc


def _gauge_add(child: Any) -> Any:
    value = getattr(child, "_value", None)
    return value.inc if hasattr(value, "inc") else child.inc


def _histogram_incs(child: Any) -> tuple[Any, list[Any]]:
    """``(sum.inc, [bucket.inc ...])`` of a histogram child, one bucket per bound of
    ``_upper_bounds`` (+Inf last); ``bisect_left`` over the bounds picks the bucket."""
    total = getattr(child, "_sum", None)
    buckets = getattr(child, "_buckets", None)
    if hasattr(total, "inc") and buckets and all(hasattr(b, "inc") for b in buckets):
        return total.inc, [bucket.inc for bucket in buckets]
    # another prometheus-client layout: its public observe() does the whole job (slower)
    return child.observe, [_ignore] * (len(LATENCY_BUCKETS) + len(BATCH_SIZE_BUCKETS) + 2)


def _ignore(amount: float) -> None:
    return None


def _label_sets(metric: Any) -> list[tuple[str, ...]]:
    lock = getattr(metric, "_lock", None)
    metrics = getattr(metric, "_metrics", {})
    if lock is None:  # pragma: no cover
        return list(metrics)
    with lock:
        return list(metrics)


def _quantile(cumulative: dict[float, float], q: float) -> float | None:
    """The upper bound of the first bucket holding quantile ``q`` (``None``: no data)."""
    bounds = sorted(cumulative)
    if not bounds:
        return None
    total = cumulative[bounds[-1]]
    if total <= 0:
        return None
    for bound in bounds:
        if cumulative[bound] >= q * total:
            return bound
    return bounds[-1]


_NO_THREAD = object()  # the publisher of a single-process instance: none is needed

#: multiprocess instances, reset in a forked child (their publisher thread stayed behind)
_instances: weakref.WeakSet[ServingMetrics] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for metrics in list(_instances):
        metrics._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)

_shared: ServingMetrics | None = None
_shared_lock = threading.Lock()


def shared_metrics() -> ServingMetrics:
    """The process's :class:`ServingMetrics` (made on first use): the data plane and the
    ``prometheus`` monitor use this one, so that in multiprocess mode one set of values
    per process writes to the folder."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = ServingMetrics()
    return _shared
