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
import os
import shutil
import threading
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
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "LATENCY_BUCKETS",
    "LOAD_BUCKETS",
    "MULTIPROC_ENV",
    "ServingMetrics",
    "mark_dead",
    "multiprocess_dir",
    "prepare_multiprocess",
    "shared_metrics",
]

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
    _ensure_value_class()
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
    # imported it before the variable was set would keep per-process values. Metrics
    # built after this call write to the folder.
    if multiprocess_dir() and not getattr(values.ValueClass, "_multiprocess", False):
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
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        _ensure_value_class()
        self.multiprocess = multiprocess_dir() is not None
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
            "Predict requests that failed, by kind (the error code: validation, "
            "overloaded, not_found, internal...).",
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
        # label children by label values: a dict lookup instead of labels()' lock + checks
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._latency_children: dict[tuple[str, str], Any] = {}
        self._batch_children: dict[tuple[str, str], Any] = {}
        self._flight_children: dict[str, Any] = {}
        self._error_children: dict[tuple[str, str, str], Any] = {}
        self._children_lock = threading.Lock()

    # --- the hot path ---------------------------------------------------------------

    def observe_request(self, deployment: str, version: str, seconds: float, code: int) -> None:
        """One answered predict request: counted by status code, latency observed."""
        key = (deployment, version, str(code))
        child = self._request_children.get(key)
        if child is None:
            child = self._child(self._request_children, key, self.requests)
        child.inc()
        lkey = (deployment, version)
        timer = self._latency_children.get(lkey)
        if timer is None:
            timer = self._child(self._latency_children, lkey, self.latency)
        timer.observe(seconds)

    def observe_batch(self, deployment: str, version: str, size: int) -> None:
        """One model call over ``size`` rows."""
        key = (deployment, version)
        child = self._batch_children.get(key)
        if child is None:
            child = self._child(self._batch_children, key, self.batch_size)
        child.observe(size)

    @contextmanager
    def in_flight(self, deployment: str) -> Iterator[None]:
        """``with metrics.in_flight(deployment): ...`` counts a request while it runs."""
        gauge = self._flight(deployment)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def in_flight_inc(self, deployment: str) -> None:
        """A request started (pair with :meth:`in_flight_dec`; cheaper than the context
        manager on a hot path)."""
        self._flight(deployment).inc()

    def in_flight_dec(self, deployment: str) -> None:
        """A request ended."""
        self._flight(deployment).dec()

    def error(self, deployment: str, version: str, kind: str) -> None:
        """A failed request; ``kind`` is a short code (``validation``, ``overloaded``...)."""
        key = (deployment, version, kind)
        child = self._error_children.get(key)
        if child is None:
            child = self._child(self._error_children, key, self.errors)
        child.inc()

    def model_loaded(self, deployment: str, version: str, seconds: float) -> None:
        """A model version was loaded and warmed in ``seconds``."""
        self.load_seconds.labels(deployment, version).observe(seconds)

    def log_dropped(self, n: int = 1) -> None:
        """``n`` inference records were dropped (the logger's ``on_drop``)."""
        if n:
            self.log_dropped_total.inc(n)

    def _flight(self, deployment: str) -> Any:
        gauge = self._flight_children.get(deployment)
        if gauge is None:
            gauge = self._child(self._flight_children, deployment, self.in_flight_gauge)
        return gauge

    def _child(self, cache: dict[Any, Any], key: Any, metric: Any) -> Any:
        with self._children_lock:
            child = cache.get(key)
            if child is None:
                labels = key if isinstance(key, tuple) else (key,)
                child = cache[key] = metric.labels(*labels)
            return child

    def forget(self, deployment: str) -> None:
        """Drop every series of ``deployment`` (it was deleted), in this process."""
        with self._children_lock:
            for cache, metric in (
                (self._request_children, self.requests),
                (self._latency_children, self.latency),
                (self._batch_children, self.batch_size),
                (self._error_children, self.errors),
            ):
                for key in [k for k in cache if k[0] == deployment]:
                    del cache[key]
                    try:
                        metric.remove(*key)
                    except KeyError:
                        pass
            if self._flight_children.pop(deployment, None) is not None:
                try:
                    self.in_flight_gauge.remove(deployment)
                except KeyError:
                    pass

    # --- reading ----------------------------------------------------------------------

    def collect_registry(self) -> CollectorRegistry:
        """The registry to read: every replica's figures in multiprocess mode, else this
        process's."""
        if not self.multiprocess:
            return self.registry
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir())
        return registry

    def render(self) -> tuple[bytes, str]:
        """The text exposition for ``GET /metrics``: ``(body, content type)``."""
        return generate_latest(self.collect_registry()), CONTENT_TYPE_LATEST

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
