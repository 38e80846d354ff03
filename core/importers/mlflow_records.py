"""What an MLflow store holds, as read from any of its three forms (a ``mlruns/`` folder,
an SQL database, a tracking server's REST API): plain records, and the one protocol each
reader implements. Nothing here imports mlflow."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import BinaryIO, Protocol

#: MLflow's run statuses (the file store writes them as these numbers)
RUN_STATUS_NUMBERS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
#: the largest float: the SQL store writes +-inf as +-this
FLOAT_MAX = 1.7976931348623157e308


def from_millis(value: object) -> datetime | None:
    """An MLflow time (milliseconds since the epoch) as an aware UTC datetime."""
    if value in (None, "", 0):
        return None
    try:
        return datetime.fromtimestamp(int(value) / 1000, tz=timezone.utc)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def metric_value(value: object) -> float:
    """A stored metric value as the float MLflow logged (``"NaN"``, ``"Infinity"`` and
    the SQL store's +-max for infinities included)."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("nan", "+nan", "-nan"):
            return math.nan
        if lowered in ("inf", "+inf", "infinity", "+infinity"):
            return math.inf
        if lowered in ("-inf", "-infinity"):
            return -math.inf
    number = float(value)  # type: ignore[arg-type]
    if number >= FLOAT_MAX:
        return math.inf
    if number <= -FLOAT_MAX:
        return -math.inf
    return number


def dataset_record(
    *,
    name: object,
    digest: object,
    source: object,
    schema: object,
    profile: object,
    context: object = None,
) -> dict[str, object]:
    """An MLflow dataset input as mlrig's run dataset record (``{"name", "source",
    "digest", "schema", "rows", "context"}``). MLflow keeps the source, schema and
    profile as JSON text: the source's ``uri`` (or the text), the parsed schema and the
    profile's ``num_rows`` are kept."""
    import json

    def parsed(text: object) -> object:
        if not isinstance(text, str) or not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    where = parsed(source)
    if isinstance(where, dict):
        where = where.get("uri") or where.get("url") or where.get("path") or source
    record: dict[str, object] = {
        "name": None if name is None else str(name)[:1000],
        "source": None if source in (None, "") else str(where or source)[:1000],
        "digest": None if digest is None else str(digest)[:1000],
    }
    schema_value = parsed(schema)
    if schema_value is not None:
        record["schema"] = schema_value
    facts = parsed(profile)
    facts = facts if isinstance(facts, dict) else {}
    rows = facts.get("num_rows")
    shape = facts.get("features_shape")  # a NumPy dataset's profile
    if rows is None and isinstance(shape, list) and shape:
        rows = shape[0]
    if isinstance(rows, int) and rows >= 0:
        record["rows"] = rows
    if context:
        record["context"] = str(context)[:1000]
    return {k: x for k, x in record.items() if x is not None}


@dataclass
class Experiment:
    """An MLflow experiment (an mlrig run group)."""

    id: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    artifact_location: str | None = None
    lifecycle_stage: str = "active"
    created_at: datetime | None = None


@dataclass
class Run:
    """An MLflow run with its params and tags (metrics are read per run: they are many)."""

    id: str
    experiment_id: str
    name: str | None
    status: str
    start_time: datetime | None
    end_time: datetime | None
    artifact_uri: str | None
    user_id: str | None = None
    lifecycle_stage: str = "active"
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    #: the metric names, where a reader learns them with the run (REST)
    metric_keys: list[str] = field(default_factory=list)
    #: the datasets it used (``mlflow.log_input``), as mlrig records them
    datasets: list[dict[str, object]] = field(default_factory=list)


@dataclass(frozen=True)
class MetricPoint:
    """One logged value of a metric."""

    key: str
    value: float
    timestamp: datetime | None
    step: int


@dataclass(frozen=True)
class ArtifactFile:
    """A file of a run's (or a model's) artifacts: its path below the root and size."""

    path: str
    size: int | None


@dataclass
class RegisteredModel:
    """An MLflow registered model with its aliases (alias -> version number)."""

    name: str
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelVersion:
    """A version of a registered model, and where its files are."""

    name: str
    version: str
    stage: str = "None"
    description: str | None = None
    source: str | None = None
    storage_location: str | None = None
    run_id: str | None = None
    status: str = "READY"
    tags: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None


class ArtifactTree(Protocol):
    """The files below one artifact root (a run's, a model version's)."""

    def files(self) -> Iterator[ArtifactFile]:
        """Every file, recursively, with a ``/``-separated path below the root."""
        ...

    def open(self, path: str) -> BinaryIO:
        """A binary stream of the file ``path`` (below the root)."""
        ...


class MlflowSource(Protocol):
    """A readable MLflow store. Each reader (files, SQL, REST) implements this."""

    #: how the store was named (for messages and the import tags)
    uri: str

    def experiments(self) -> list[Experiment]:
        """The live experiments (deleted ones are not imported)."""
        ...

    def runs(self, experiment: Experiment) -> Iterator[Run]:
        """The live runs of ``experiment``, oldest first, with params and tags."""
        ...

    def metric_history(self, run: Run) -> Iterator[MetricPoint]:
        """Every point of every metric of ``run``."""
        ...

    def run_artifacts(self, run: Run) -> ArtifactTree | None:
        """The run's artifacts, or None when they are where this reader cannot go."""
        ...

    def registered_models(self) -> list[RegisteredModel]:
        """The registered models with their aliases."""
        ...

    def model_versions(self, model: RegisteredModel) -> list[ModelVersion]:
        """The versions of ``model``, by number."""
        ...

    def version_artifacts(self, version: ModelVersion) -> ArtifactTree | None:
        """The files of a model version (its MLmodel folder), or None when unreachable."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
