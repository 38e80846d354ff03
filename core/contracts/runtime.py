"""Contract of model runtimes, the servers' engines (entry-point group ``mlrig.runtimes``).

A runtime loads a model package folder into a :class:`LoadedModel`. The data plane then
calls :meth:`LoadedModel.warm_up` once with a sample shaped like the signature (before the
model takes traffic), and :meth:`LoadedModel.predict` (and ``predict_proba`` where the
model has it) with 2-D batches. It runs one model's calls in one thread at a time.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from mlrig.contracts.base import Backend

#: environment variable the serving supervisor sets: how many replica processes share
#: the machine (runtimes size their default thread pools by it)
REPLICAS_ENV = "MLRIG_SERVING_REPLICAS"


class LoadedModel(ABC):
    """A model held in memory by a runtime, ready to predict."""

    #: whether predicting N rows at once is cheaper than N single-row calls (the data plane
    #: micro-batches requests only for models where it helps)
    batching_helps: bool = True

    @abstractmethod
    def predict(self, batch: Any) -> Any:
        """Predict a batch (rows of features); return one prediction per row."""

    def warm_up(self, sample: Any) -> None:
        """Run ``sample`` (a batch shaped like the signature) through the model before it
        serves, so lazy initialisation (allocations, kernel selection, graph tracing) is
        not paid by the first request. The default predicts once."""
        self.predict(sample)

    def describe(self) -> dict[str, Any]:
        """Execution facts: providers, threads, device."""
        return {}

    def close(self) -> None:
        """Free what the model holds (sessions, GPU memory); the default does nothing."""
        return None


class ModelRuntime(Backend, ABC):
    """Load a registered model version from its artifact folder."""

    #: Artifact formats this runtime can load (``"sklearn"``, ``"onnx"``...).
    formats: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def load(self, path: Path, metadata: dict[str, Any]) -> LoadedModel:
        """Load the model stored in folder ``path``, described by ``metadata``."""


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, so a container's limit counts)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def serving_replicas() -> int:
    """How many serving replicas share the machine (``MLRIG_SERVING_REPLICAS``; default 1)."""
    try:
        return max(1, int(os.environ.get(REPLICAS_ENV, "1")))
    except ValueError:
        return 1


def default_threads() -> int:
    """Threads one model may use by default: the CPUs divided among the replicas, so N
    replicas on N cores do not oversubscribe them (each gets one)."""
    return max(1, cpu_count() // serving_replicas())
