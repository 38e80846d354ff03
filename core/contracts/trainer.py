"""Contract of trainers (entry-point group ``mlrig.trainers``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from mlrig.contracts.base import Backend
from mlrig.errors import MlrigError

MetricKind = Literal["train", "validation", "test"]


class TrainingContext(Protocol):
    """What the engine hands a trainer while a job runs."""

    params: dict[str, Any]
    workdir: Path
    #: ``{"uri": ..., "target": ...}`` as given to the experiment (may be empty)
    dataset: dict[str, Any]
    seed: int | None
    last_step: int | None

    def read_dataset(self, uri: str | None = None) -> Any:
        """Read a CSV/parquet dataset (default: ``dataset["uri"]``) through the storage
        layer as a pandas DataFrame, recording its hash for lineage."""

    def log_metrics(
        self,
        metrics: dict[str, float],
        *,
        step: int | None = None,
        epoch: int | None = None,
        kind: MetricKind = "train",
    ) -> None:
        """Record metric values; they are batched to the database."""

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Save ``state`` so that a resumed job can :meth:`restore` it."""

    def restore(self) -> dict[str, Any] | None:
        """The last checkpointed state, or ``None`` on a fresh start."""

    def should_stop(self) -> bool:
        """Whether early stopping (or a stop request) asks the trainer to end now."""

    def log_artifact(self, path: Path, *, name: str | None = None) -> str:
        """Store a file produced by the run; return its artifact key."""

    def register_model(self, model: Any, *, name: str, **metadata: Any) -> dict[str, Any]:
        """Register ``model`` as a registry version with lineage to this run."""


@dataclass
class TrainResult:
    """What a trainer returns: final metrics and, where it registered one, the version id."""

    metrics: dict[str, float] = field(default_factory=dict)
    model_version_id: str | None = None


class PermanentError(MlrigError):
    """A training failure that retrying cannot fix (a missing dataset, an unknown column,
    an estimator that does not import, a bad parameter).

    Raised by a trainer, it fails the experiment at once with its message, without using
    up the remaining attempts. :class:`~mlrig.errors.ValidationError` and
    :class:`~mlrig.errors.NotFoundError` raised while training count as permanent too;
    any other exception is retried while attempts remain.
    """

    code = "permanent_error"
    http_status = 422


class Trainer(Backend, ABC):
    """Run one training job: params in, metrics, checkpoints and a model out."""

    def check(self, *, params: dict[str, Any], dataset: dict[str, Any] | None) -> None:
        """Refuse, when an experiment is created, what can never train: unknown or bad
        hyperparameters, a missing required dataset... Cheap checks only (no data read).

        The default accepts everything. Raise :class:`~mlrig.errors.ValidationError`
        naming the bad value and what is allowed; the API answers 422, the CLI one line.
        """

    @abstractmethod
    def train(self, context: TrainingContext) -> TrainResult:
        """Train with ``context.params``, reporting through ``context``."""
