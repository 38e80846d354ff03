"""The ``prometheus`` monitor: serving metrics for Prometheus (being built)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlrig.contracts.monitor import Monitor


class PrometheusMonitor(Monitor):
    """Counts served predictions per deployment."""

    def observe(self, deployment_id: str, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
        """Nothing yet."""

    def report(self, deployment_id: str) -> dict[str, Any]:
        return {}
