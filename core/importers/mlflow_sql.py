"""Read an MLflow SQL store (``sqlite:///mlflow.db``, or PostgreSQL/MySQL) directly, with
plain queries on MLflow's tables (``mlflow/store/tracking/dbmodels/models.py``,
``model_registry/dbmodels/models.py``): experiments, experiment_tags, runs, params, tags,
metrics (NaN as ``is_nan``, infinities as +-max float), registered_models,
registered_model_tags, registered_model_aliases, model_versions, model_version_tags and
logged_models (MLflow 3)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from mlrig.errors import ValidationError
from mlrig.importers.mlflow_records import (
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


def _pairs(rows: Any) -> dict[str, str]:
    return {str(k): "" if v is None else str(v) for k, v in rows}


class SqlStoreSource(ModelLocator):
    """An MLflow database, read with SQLAlchemy (no mlflow import).

    :param url: the database URL MLflow was given (``sqlite:///mlflow.db``).
    :param artifacts_root: where ``mlflow-artifacts:/`` URIs point (default
        ``mlartifacts`` beside a SQLite file, where ``mlflow server`` puts them).
    """

    def __init__(self, url: str, *, artifacts_root: Path | None = None) -> None:
        self.uri = url
        parsed = make_url(url)
        self.base = Path.cwd()
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if not database or not Path(database).is_file():
                msg = f"no MLflow database at {database!r} (from {url!r})"
                raise ValidationError(msg)
            self.base = Path(database).resolve().parent
        self.artifacts_root = artifacts_root
        self.engine = create_engine(url)
        try:
            self.tables = set(inspect(self.engine).get_table_names())
        except Exception as exc:
            self.engine.dispose()
            msg = f"cannot read the MLflow database {url!r}: {exc}"
            raise ValidationError(msg) from exc
        if not {"experiments", "runs"} <= self.tables:
            self.engine.dispose()
            msg = f"{url!r} is not an MLflow database (no experiments and runs tables)"
            raise ValidationError(msg)

    def _rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params))

    # --- tracking ---------------------------------------------------------------------

    def experiments(self) -> list[Experiment]:
        tags: dict[str, dict[str, str]] = defaultdict(dict)
        if "experiment_tags" in self.tables:
            for exp_id, key, value in self._rows(
                "SELECT experiment_id, key, value FROM experiment_tags"
            ):
                tags[str(exp_id)][str(key)] = "" if value is None else str(value)
        return [
            Experiment(
                id=str(row[0]),
                name=str(row[1]),
                tags=tags.get(str(row[0]), {}),
                artifact_location=row[2],
                lifecycle_stage=str(row[3] or "active"),
                created_at=from_millis(row[4]),
            )
            for row in self._rows(
                "SELECT experiment_id, name, artifact_location, lifecycle_stage, creation_time "
                "FROM experiments WHERE lifecycle_stage IS NULL OR lifecycle_stage = 'active' "
                "ORDER BY experiment_id"
            )
        ]

    def runs(self, experiment: Experiment) -> Iterator[Run]:
        rows = self._rows(
            "SELECT run_uuid, name, status, start_time, end_time, artifact_uri, user_id, "
            "lifecycle_stage FROM runs WHERE experiment_id = :exp AND "
            "(lifecycle_stage IS NULL OR lifecycle_stage = 'active') ORDER BY start_time, run_uuid",
            exp=int(experiment.id),
        )
        for row in rows:
            run_id = str(row[0])
            yield Run(
                id=run_id,
                experiment_id=experiment.id,
                name=row[1],
                status=str(row[2] or "FINISHED"),
                start_time=from_millis(row[3]),
                end_time=from_millis(row[4]),
                artifact_uri=row[5],
                user_id=row[6],
                lifecycle_stage=str(row[7] or "active"),
                params=_pairs(
                    self._rows("SELECT key, value FROM params WHERE run_uuid = :r", r=run_id)
                ),
                tags=_pairs(
                    self._rows("SELECT key, value FROM tags WHERE run_uuid = :r", r=run_id)
                ),
                datasets=self._datasets(run_id),
            )

    def _datasets(self, run_id: str) -> list[dict[str, object]]:
        if not {"inputs", "datasets"} <= self.tables:
            return []
        contexts: dict[str, str] = {}
        if "input_tags" in self.tables:
            contexts = dict(
                self._rows(
                    "SELECT t.input_uuid, t.value FROM input_tags t JOIN inputs i "
                    "ON i.input_uuid = t.input_uuid WHERE i.destination_id = :r "
                    "AND t.name = 'mlflow.data.context'",
                    r=run_id,
                )
            )
        return [
            dataset_record(
                name=row[1],
                digest=row[2],
                source=row[3],
                schema=row[4],
                profile=row[5],
                context=contexts.get(row[0]),
            )
            for row in self._rows(
                "SELECT i.input_uuid, d.name, d.digest, d.dataset_source, d.dataset_schema, "
                "d.dataset_profile FROM inputs i JOIN datasets d ON d.dataset_uuid = i.source_id "
                "WHERE i.source_type = 'DATASET' AND i.destination_type = 'RUN' "
                "AND i.destination_id = :r ORDER BY i.input_uuid",
                r=run_id,
            )
        ]

    def metric_history(self, run: Run) -> Iterator[MetricPoint]:
        for key, value, timestamp, step, is_nan in self._rows(
            "SELECT key, value, timestamp, step, is_nan FROM metrics WHERE run_uuid = :r "
            "ORDER BY key, step, timestamp",
            r=run.id,
        ):
            number = math.nan if is_nan else metric_value(value)
            yield MetricPoint(str(key), number, from_millis(timestamp), int(step or 0))

    def run_artifacts(self, run: Run) -> ArtifactTree | None:
        return self.tree(run.artifact_uri)

    # --- the model registry -------------------------------------------------------------

    def registered_models(self) -> list[RegisteredModel]:
        if "registered_models" not in self.tables:
            return []
        tags: dict[str, dict[str, str]] = defaultdict(dict)
        if "registered_model_tags" in self.tables:
            for name, key, value in self._rows(
                "SELECT name, key, value FROM registered_model_tags"
            ):
                tags[name][key] = "" if value is None else str(value)
        aliases: dict[str, dict[str, str]] = defaultdict(dict)
        if "registered_model_aliases" in self.tables:
            for name, alias, version in self._rows(
                "SELECT name, alias, version FROM registered_model_aliases"
            ):
                aliases[name][alias] = str(version)
        return [
            RegisteredModel(
                name=name, description=description, tags=tags[name], aliases=aliases[name]
            )
            for name, description in self._rows(
                "SELECT name, description FROM registered_models ORDER BY name"
            )
        ]

    def model_versions(self, model: RegisteredModel) -> list[ModelVersion]:
        tags: dict[str, dict[str, str]] = defaultdict(dict)
        if "model_version_tags" in self.tables:
            for version, key, value in self._rows(
                "SELECT version, key, value FROM model_version_tags WHERE name = :n",
                n=model.name,
            ):
                tags[str(version)][key] = "" if value is None else str(value)
        columns = {c["name"] for c in inspect(self.engine).get_columns("model_versions")}
        location = "storage_location" if "storage_location" in columns else "NULL"
        found = []
        for row in self._rows(
            "SELECT version, current_stage, description, source, run_id, status, "
            f"creation_time, {location} FROM model_versions WHERE name = :n "
            "AND (current_stage IS NULL OR current_stage != 'Deleted_Internal') ORDER BY version",
            n=model.name,
        ):
            found.append(
                ModelVersion(
                    name=model.name,
                    version=str(row[0]),
                    stage=str(row[1] or "None"),
                    description=row[2],
                    source=row[3],
                    run_id=row[4],
                    status=str(row[5] or "READY"),
                    created_at=from_millis(row[6]),
                    storage_location=row[7],
                    tags=tags.get(str(row[0]), {}),
                )
            )
        return found

    # --- what ModelLocator asks -----------------------------------------------------------

    def run_artifact_uri(self, run_id: str) -> str | None:
        rows = self._rows("SELECT artifact_uri FROM runs WHERE run_uuid = :r", r=run_id)
        return rows[0][0] if rows else None

    def logged_model_location(self, model_id: str) -> str | None:
        if "logged_models" not in self.tables:
            return None
        rows = self._rows(
            "SELECT artifact_location FROM logged_models WHERE model_id = :m", m=model_id
        )
        return rows[0][0] if rows else None

    def close(self) -> None:
        self.engine.dispose()
