"""Benchmark versions on a dataset (quality and speed) and compare them side by side.

Quality: accuracy, macro F1, ROC AUC and log loss for classification; RMSE, MAE and R2 for
regression. Speed: single-row latency (p50/p99) and batch throughput (rows/s) with the
chosen runtime. Results are stored with the version (``model_evaluations``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mlrig.backends import available_backends, load_backend
from mlrig.db.models import MLModel, ModelEvaluation
from mlrig.errors import ValidationError
from mlrig.registry.views import iso

if TYPE_CHECKING:
    import pandas as pd

    from mlrig.artifacts import ArtifactStore
    from mlrig.contracts import LoadedModel
    from mlrig.datasets.access import DatasetAccess
    from mlrig.registry.service import ModelRegistry

LATENCY_SAMPLES = 200
THROUGHPUT_SECONDS = 0.5


def read_dataset(
    uri: str, artifacts: ArtifactStore | None = None, *, access: DatasetAccess | None = None
) -> tuple[pd.DataFrame, str]:
    """A CSV or parquet dataset and the sha256 of its bytes, read within ``access``
    (default: the artifact store and the bundled datasets only; see
    :mod:`mlrig.datasets.access`)."""
    from mlrig.datasets.access import DatasetAccess

    access = access or DatasetAccess(artifacts=artifacts)
    return access.read_frame(uri)


def quality_metrics(task: str, y_true: Any, y_pred: Any, proba: Any = None) -> dict[str, float]:
    """The task's quality metrics (sklearn.metrics, imported here)."""
    import numpy as np
    from sklearn import metrics

    if task == "classification":
        out = {
            "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
            "f1": float(metrics.f1_score(y_true, y_pred, average="macro")),
        }
        if proba is not None:
            proba = np.asarray(proba, dtype=float)
            # float32 runtimes (ONNX) return rows that sum to 1 only within rounding
            proba = proba / np.clip(proba.sum(axis=1, keepdims=True), 1e-12, None)
            labels = np.arange(proba.shape[1])
            try:
                if proba.shape[1] == 2:
                    out["roc_auc"] = float(metrics.roc_auc_score(y_true, proba[:, 1]))
                else:
                    out["roc_auc"] = float(
                        metrics.roc_auc_score(y_true, proba, multi_class="ovr", labels=labels)
                    )
                out["log_loss"] = float(metrics.log_loss(y_true, proba, labels=labels))
            except ValueError:
                pass  # labels that are not 0..k-1, or a single class present
        return out
    if task == "regression":
        y_true = np.asarray(y_true, dtype=float)
        y_pred = np.asarray(y_pred, dtype=float).reshape(y_true.shape)
        return {
            "rmse": float(np.sqrt(metrics.mean_squared_error(y_true, y_pred))),
            "mae": float(metrics.mean_absolute_error(y_true, y_pred)),
            "r2": float(metrics.r2_score(y_true, y_pred)),
        }
    msg = f"unknown task {task!r}: classification or regression"
    raise ValidationError(msg)


def speed_metrics(model: LoadedModel, features: pd.DataFrame) -> dict[str, float]:
    """Single-row p50/p99 latency (ms) and batch throughput (rows/s)."""
    rows = [features.iloc[[i % len(features)]] for i in range(min(LATENCY_SAMPLES, 10_000))]
    model.predict(rows[0])  # warm-up: lazy initialisation is not latency
    latencies = []
    for row in rows:
        start = time.perf_counter()
        model.predict(row)
        latencies.append((time.perf_counter() - start) * 1000)
    latencies.sort()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < THROUGHPUT_SECONDS:
        model.predict(features)
        done += len(features)
    elapsed = time.perf_counter() - start
    return {
        "latency_p50_ms": statistics.median(latencies),
        "latency_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "batch_rows_per_s": done / elapsed,
        "batch_size": float(len(features)),
    }


def choose_runtime(version: dict[str, Any], requested: str | None) -> str:
    """The runtime to use: the requested one, else ONNX when exported and installed, else
    the framework's own."""
    if requested:
        return requested
    files = {a["path"] for a in version.get("artifacts", [])}
    installed = {b.name for b in available_backends("runtimes") if not b.missing}
    if "model.onnx" in files and "onnx" in installed:
        return "onnx"
    framework = version.get("framework")
    if framework in installed:
        return framework
    msg = (
        f"no runtime installed for framework {framework!r}; installed runtimes: "
        f"{', '.join(sorted(installed)) or 'none'}"
    )
    raise ValidationError(msg)


class Evaluator:
    """Evaluate and compare versions of the registry."""

    def __init__(self, registry: ModelRegistry, datasets: DatasetAccess | None = None) -> None:
        self.registry = registry
        self.db = registry.db
        #: where the server may read datasets from (default: artifacts and bundled only)
        self.datasets = datasets

    def load(
        self, model_ref: str, version_ref: str, folder: Path, runtime: str | None = None
    ) -> tuple[dict[str, Any], str, LoadedModel]:
        """Download a version into ``folder`` and load it with a runtime."""
        from mlrig.formats import load_manifest

        version = self.registry.get_version(model_ref, version_ref)
        name = choose_runtime(version, runtime)
        self.registry.download_version(model_ref, version["id"], folder)
        runtime_backend = load_backend("runtimes", name).from_options({}, where=f"runtimes.{name}")
        return version, name, runtime_backend.load(folder, load_manifest(folder))

    def evaluate(
        self,
        model_ref: str,
        version_refs: list[str],
        *,
        dataset_uri: str,
        target: str,
        task: str | None = None,
        runtime: str | None = None,
        access: DatasetAccess | None = None,
    ) -> list[dict[str, Any]]:
        """Evaluate each version on the dataset; store and return the results.

        :param access: where the dataset may be read from, instead of :attr:`datasets`
            (the CLI's local operator may read any of their own files).
        """
        frame, digest = read_dataset(
            dataset_uri, self.registry.artifacts, access=access or self.datasets
        )
        if target not in frame.columns:
            columns = [str(c)[:64] for c in frame.columns[:50]]
            msg = f"target {target!r} is not a column of {dataset_uri}: {', '.join(columns)}"
            raise ValidationError(msg)
        features, labels = frame.drop(columns=[target]), frame[target]
        results = []
        for ref in version_refs:
            with tempfile.TemporaryDirectory(prefix="mlrig-eval-") as tmp:
                version, used, model = self.load(model_ref, ref, Path(tmp), runtime)
                kind = task or version.get("model_type") or "classification"
                predictions = model.predict(features)
                proba_fn = getattr(model, "predict_proba", None)
                proba = proba_fn(features) if kind == "classification" and proba_fn else None
                metrics = quality_metrics(kind, labels.to_numpy(), predictions, proba)
                metrics.update(speed_metrics(model, features))
                info = model.describe()
            results.append(self._store(version, dataset_uri, digest, used, kind, metrics, info))
        return results

    def _store(
        self,
        version: dict[str, Any],
        uri: str,
        digest: str,
        runtime: str,
        task: str,
        metrics: dict[str, float],
        info: dict[str, Any],
    ) -> dict[str, Any]:
        with self.db.session() as session:
            row = ModelEvaluation(
                model_version_id=uuid.UUID(version["id"]),
                dataset_uri=uri,
                dataset_hash=digest,
                runtime=runtime,
                metrics={**metrics},
            )
            session.add(row)
            session.flush()
            return {
                "id": str(row.id),
                "model": version["name"],
                "version": version["version"],
                "dataset_uri": uri,
                "dataset_hash": digest,
                "runtime": runtime,
                "task": task,
                "runtime_info": info,
                "metrics": metrics,
                "created_at": iso(row.created_at),
            }

    def compare(self, model_ref: str, version_refs: list[str]) -> dict[str, Any]:
        """Registered metrics and the latest evaluation of each version, side by side."""
        if len(version_refs) < 1:
            msg = "name at least one version to compare"
            raise ValidationError(msg)
        columns = []
        for ref in version_refs:
            version = self.registry.get_version(model_ref, ref)
            with self.db.session() as session:
                evaluation = session.scalar(
                    select(ModelEvaluation)
                    .join(MLModel, MLModel.id == ModelEvaluation.model_version_id)
                    .where(ModelEvaluation.model_version_id == uuid.UUID(version["id"]))
                    .order_by(ModelEvaluation.created_at.desc())
                    .limit(1)
                )
                latest = (
                    None
                    if evaluation is None
                    else {
                        "dataset_uri": evaluation.dataset_uri,
                        "runtime": evaluation.runtime,
                        "metrics": evaluation.metrics,
                        "created_at": iso(evaluation.created_at),
                    }
                )
            columns.append(
                {
                    "version": version["version"],
                    "stage": version["stage"],
                    "aliases": version["aliases"],
                    "registered_metrics": version["metrics"],
                    "evaluation": latest,
                }
            )
        names = sorted(
            {k for c in columns for k in c["registered_metrics"]}
            | {k for c in columns if c["evaluation"] for k in c["evaluation"]["metrics"]}
        )
        table = {name: {c["version"]: _metric(c, name) for c in columns} for name in names}
        return {"model": model_ref, "versions": columns, "metrics": table}


def _metric(column: dict[str, Any], name: str) -> float | None:
    """A version's figure for ``name``: evaluated if measured, else as registered."""
    evaluation = column["evaluation"]
    if evaluation and name in evaluation["metrics"]:
        return evaluation["metrics"][name]
    return column["registered_metrics"].get(name)
