"""Contract of model runtimes, the servers' engines (entry-point group ``mlrig.runtimes``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from mlrig.contracts.base import Backend


class LoadedModel(ABC):
    """A model held in memory by a runtime, ready to predict."""

    @abstractmethod
    def predict(self, batch: Any) -> Any:
        """Predict a batch (rows of features); return one prediction per row."""

    def describe(self) -> dict[str, Any]:
        """Execution facts: providers, threads, device."""
        return {}


class ModelRuntime(Backend, ABC):
    """Load a registered model version from its artifact folder."""

    #: Artifact formats this runtime can load (``"sklearn"``, ``"onnx"``...).
    formats: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def load(self, path: Path, metadata: dict[str, Any]) -> LoadedModel:
        """Load the model stored in folder ``path``, described by ``metadata``."""
