"""What an MLflow import did (:class:`ImportSummary`) and the tags that tie imported
records to their MLflow originals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: the tag that ties an mlrig run to the MLflow run it came from
RUN_ID_TAG = "mlflow.run_id"
#: the tag that marks an imported version (the MLflow version number)
VERSION_TAG = "mlflow.version"
#: ``progress(phase, done, total)``: phase is ``runs`` or ``models``
Progress = Callable[[str, int, int], None]


@dataclass
class ImportSummary:
    """What an import did, for the CLI's summary and ``--json``."""

    source: str
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "experiments",
                "groups_created",
                "runs",
                "runs_imported",
                "runs_skipped",
                "runs_resumed",
                "runs_failed",
                "params",
                "tags",
                "datasets",
                "metric_points",
                "metric_points_skipped",
                "artifacts",
                "artifact_bytes",
                "models",
                "models_created",
                "versions",
                "versions_imported",
                "versions_skipped",
                "versions_not_converted",
                "versions_unreachable",
                "versions_failed",
                "aliases",
                "stages",
            ),
            0,
        )
    )
    warnings: list[str] = field(default_factory=list)
    #: MLflow run id -> mlrig run id, for every run of the store (new and earlier imports)
    runs: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, amount: int = 1) -> None:
        self.counts[key] += amount

    def warn(self, message: str) -> None:
        if len(self.warnings) < 200:
            self.warnings.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            **self.counts,
            "warnings": list(self.warnings),
            "runs_map": dict(self.runs),
        }
