"""Contract of monitors (entry-point group ``mlrig.monitors``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from mlrig.contracts.base import Backend


class Monitor(Backend, ABC):
    """Observe predictions and metrics of deployments; report findings and alerts."""

    @abstractmethod
    def observe(self, deployment_id: str, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
        """Take one served batch into account; must be cheap (called off the request path)."""

    @abstractmethod
    def report(self, deployment_id: str) -> dict[str, Any]:
        """The monitor's current findings for ``deployment_id`` (JSON-serialisable)."""
