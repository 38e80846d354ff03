"""The ``prometheus`` monitor: the data plane's Prometheus metrics as a monitor backend.

It shares the process's :func:`mlrig.serving.metrics.shared_metrics`, the same metrics
``GET /metrics`` exposes (request count, latency histogram, batch size, in flight,
errors, model load time, dropped inference records; across replicas in multiprocess
mode). :meth:`observe` counts a served batch; :meth:`report` reads the figures back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mlrig.contracts.monitor import Monitor

if TYPE_CHECKING:
    from pydantic import BaseModel

    from mlrig.serving.metrics import ServingMetrics


class PrometheusMonitor(Monitor):
    """Prometheus metrics of served predictions, per deployment and version.

    :param metrics: the metrics to feed and read (default: the process's shared ones).
    """

    def __init__(self, options: BaseModel | None = None, *, metrics: ServingMetrics | None = None):
        from mlrig.contracts.base import NoOptions

        super().__init__(options if options is not None else NoOptions())
        if metrics is None:
            from mlrig.serving.metrics import shared_metrics

            metrics = shared_metrics()
        self.metrics = metrics

    def observe(
        self,
        deployment_id: str,
        inputs: Sequence[Any],
        outputs: Sequence[Any],
        *,
        version: str = "",
    ) -> None:
        """Count one served batch of ``len(inputs)`` rows (``mlrig_predict_batch_size``)."""
        self.metrics.observe_batch(deployment_id, version, len(inputs))

    def report(self, deployment_id: str) -> dict[str, Any]:
        """The deployment's current figures (all replicas in multiprocess mode)::

        {"deployment", "requests", "errors", "in_flight", "batches", "rows",
         "latency_seconds": {"count", "sum", "p50", "p99"}}; zeros before any request.
        """
        figures = self.metrics.summary(deployment_id).get(deployment_id)
        if figures is None:
            figures = {
                "requests": 0.0,
                "errors": 0.0,
                "in_flight": 0.0,
                "latency_seconds": {"count": 0.0, "sum": 0.0, "p50": None, "p99": None},
                "batches": 0.0,
                "rows": 0.0,
            }
        return {"deployment": deployment_id, **figures}

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric: ``(body, content type)``."""
        return self.metrics.render()
