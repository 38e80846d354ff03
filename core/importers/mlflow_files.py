"""Read an MLflow file store (a ``mlruns/`` folder) directly, as MLflow writes it.

Layout (``mlflow/store/tracking/file_store.py`` and ``model_registry/file_store.py``)::

    mlruns/<experiment id>/meta.yaml            name, artifact_location, lifecycle_stage
    mlruns/<experiment id>/tags/<key>           the value (keys may hold "/": subfolders)
    mlruns/<experiment id>/<run id>/meta.yaml   run_name, status (1-5), start_time...
    mlruns/<experiment id>/<run id>/params/<key>, tags/<key>
    mlruns/<experiment id>/<run id>/metrics/<key>   lines "<ms> <value> <step>"
    mlruns/<experiment id>/models/<model id>/       MLflow 3 logged models
    mlruns/models/<name>/meta.yaml, tags/, aliases/<alias> (the version number)
    mlruns/models/<name>/version-<n>/meta.yaml, tags/
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mlrig.importers._yaml import load_yaml
from mlrig.importers.mlflow_artifacts import LocalTree, local_path
from mlrig.importers.mlflow_records import (
    RUN_STATUS_NUMBERS,
    ArtifactTree,
    Experiment,
    MetricPoint,
    ModelVersion,
    RegisteredModel,
    Run,
    dataset_record,
    from_millis,
    metric_value,
)
from mlrig.importers.mlflow_resolve import ModelLocator

#: folders of an experiment that are not runs
RESERVED = {"tags", "datasets", "traces", "models"}
META = "meta.yaml"


def _values(folder: Path) -> dict[str, str]:
    """``{key: value}`` of the files below ``folder`` (a key's ``/`` is a subfolder)."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            found[path.relative_to(folder).as_posix()] = path.read_text(encoding="utf-8")
    return found


def _meta(folder: Path) -> dict[str, object]:
    path = folder / META
    if not path.is_file():
        return {}
    found = load_yaml(path)
    return found if isinstance(found, dict) else {}


def _text(value: object) -> str | None:
    return None if value in (None, "") else str(value)


class FileStoreSource(ModelLocator):
    """An MLflow ``mlruns/`` folder.

    :param root: the folder (``mlruns``).
    :param artifacts_root: where ``mlflow-artifacts:/`` URIs point (runs logged through
        a server that wrote its files elsewhere).
    """

    def __init__(self, root: Path, *, artifacts_root: Path | None = None) -> None:
        self.root = root
        self.uri = str(root)
        self.artifacts_root = artifacts_root
        self.base = root.parent
        self._run_dirs: dict[str, Path] = {}

    # --- tracking ---------------------------------------------------------------------

    def _experiment_dirs(self) -> Iterator[Path]:
        for child in sorted(self.root.iterdir()):
            if (
                child.is_dir()
                and child.name not in (".trash", "models")
                and (child / META).exists()
            ):
                yield child

    def experiments(self) -> list[Experiment]:
        found = []
        for folder in self._experiment_dirs():
            meta = _meta(folder)
            stage = str(meta.get("lifecycle_stage") or "active")
            if stage != "active":
                continue
            found.append(
                Experiment(
                    id=str(meta.get("experiment_id", folder.name)),
                    name=str(meta.get("name") or folder.name),
                    tags=_values(folder / "tags"),
                    artifact_location=_text(meta.get("artifact_location")),
                    lifecycle_stage=stage,
                    created_at=from_millis(meta.get("creation_time")),
                )
            )
        return found

    def runs(self, experiment: Experiment) -> Iterator[Run]:
        folder = self.root / experiment.id
        runs = []
        for child in folder.iterdir() if folder.is_dir() else []:
            if not child.is_dir() or child.name in RESERVED or not (child / META).exists():
                continue
            meta = _meta(child)
            stage = str(meta.get("lifecycle_stage") or "active")
            if stage != "active":
                continue
            status = meta.get("status", 1)
            run_id = str(meta.get("run_id") or meta.get("run_uuid") or child.name)
            self._run_dirs[run_id] = child
            runs.append(
                Run(
                    id=run_id,
                    experiment_id=experiment.id,
                    name=_text(meta.get("run_name")),
                    status=RUN_STATUS_NUMBERS.get(status, str(status))  # type: ignore[call-overload]
                    if isinstance(status, int)
                    else str(status),
                    start_time=from_millis(meta.get("start_time")),
                    end_time=from_millis(meta.get("end_time")),
                    artifact_uri=_text(meta.get("artifact_uri")),
                    user_id=_text(meta.get("user_id")),
                    lifecycle_stage=stage,
                    params=_values(child / "params"),
                    tags=_values(child / "tags"),
                    datasets=self._datasets(folder, child),
                )
            )
        runs.sort(key=lambda r: (r.start_time is None, r.start_time or 0, r.id))
        yield from runs

    @staticmethod
    def _datasets(experiment: Path, run: Path) -> list[dict[str, object]]:
        """``<run>/inputs/<id>/meta.yaml`` (source_type DATASET) -> the dataset in
        ``<experiment>/datasets/<source_id>/meta.yaml``."""
        found = []
        inputs = run / "inputs"
        for folder in sorted(inputs.iterdir()) if inputs.is_dir() else []:
            link = _meta(folder)
            if link.get("source_type") != "DATASET":
                continue
            dataset = _meta(experiment / "datasets" / str(link.get("source_id")))
            if not dataset:
                continue
            tags = link.get("tags") if isinstance(link.get("tags"), dict) else {}
            found.append(
                dataset_record(
                    name=dataset.get("name"),
                    digest=dataset.get("digest"),
                    source=dataset.get("source"),
                    schema=dataset.get("schema"),
                    profile=dataset.get("profile"),
                    context=tags.get("mlflow.data.context"),  # type: ignore[union-attr]
                )
            )
        return found

    def metric_history(self, run: Run) -> Iterator[MetricPoint]:
        folder = self._run_dirs.get(run.id, self.root / run.experiment_id / run.id) / "metrics"
        if not folder.is_dir():
            return
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            key = path.relative_to(folder).as_posix()
            for line in path.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) < 2:
                    continue
                step = int(parts[2]) if len(parts) >= 3 else 0
                yield MetricPoint(key, metric_value(parts[1]), from_millis(parts[0]), step)

    def run_artifacts(self, run: Run) -> ArtifactTree | None:
        tree = self.tree(run.artifact_uri)
        if isinstance(tree, LocalTree) and not tree.root.is_dir():
            # the store was moved: its runs' file URIs name the old place
            moved = self._run_dirs.get(run.id, self.root / run.experiment_id / run.id)
            return LocalTree(moved / "artifacts")
        return tree

    # --- the model registry -------------------------------------------------------------

    def registered_models(self) -> list[RegisteredModel]:
        folder = self.root / "models"
        found = []
        for child in sorted(folder.iterdir()) if folder.is_dir() else []:
            meta = _meta(child)
            if not meta:
                continue
            found.append(
                RegisteredModel(
                    name=str(meta.get("name") or child.name),
                    description=_text(meta.get("description")),
                    tags=_values(child / "tags"),
                    aliases={k: v.strip() for k, v in _values(child / "aliases").items()},
                )
            )
        return found

    def model_versions(self, model: RegisteredModel) -> list[ModelVersion]:
        folder = self.root / "models" / model.name
        versions = []
        for child in folder.glob("version-*"):
            meta = _meta(child)
            if not meta or str(meta.get("current_stage")) == "Deleted_Internal":
                continue
            versions.append(
                ModelVersion(
                    name=model.name,
                    version=str(meta.get("version") or child.name.removeprefix("version-")),
                    stage=str(meta.get("current_stage") or "None"),
                    description=_text(meta.get("description")),
                    source=_text(meta.get("source")),
                    storage_location=_text(meta.get("storage_location")),
                    run_id=_text(meta.get("run_id")),
                    status=str(meta.get("status") or "READY"),
                    tags=_values(child / "tags"),
                    created_at=from_millis(meta.get("creation_timestamp")),
                )
            )
        return sorted(versions, key=lambda v: int(v.version) if v.version.isdigit() else 0)

    # --- what ModelLocator asks -----------------------------------------------------------

    def run_artifact_uri(self, run_id: str) -> str | None:
        folder = self._run_dirs.get(run_id)
        if folder is None:
            for experiment in self._experiment_dirs():
                if (experiment / run_id / META).exists():
                    folder = experiment / run_id
                    break
        if folder is None:
            return None
        uri = _text(_meta(folder).get("artifact_uri"))
        if uri:
            path = local_path(uri, base=self.base)
            if path is None or path.is_dir():
                return uri
        return str(folder / "artifacts")

    def logged_model_location(self, model_id: str) -> str | None:
        for experiment in self._experiment_dirs():
            folder = experiment / "models" / model_id
            if (folder / META).exists():
                uri = _text(_meta(folder).get("artifact_location"))
                if uri:
                    path = local_path(uri, base=self.base)
                    if path is None or path.is_dir():
                        return uri
                return str(folder / "artifacts")
        return None

    def close(self) -> None:
        return None
