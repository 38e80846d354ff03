"""mlrig's runs and run groups as MLflow's JSON, and MLflow's values as mlrig's.

- An MLflow experiment is a run group; the group ``Default`` is MLflow's experiment
  ``"0"``, any other group's experiment id is its id (32 hex digits).
- An MLflow run is an experiment (any origin); its run id is the experiment's id in 32
  hex digits; its ``artifact_uri`` is ``mlflow-artifacts:/<experiment id>/<run id>/artifacts``.
- Statuses: running = ``RUNNING``, created/queued = ``SCHEDULED``, completed =
  ``FINISHED``, failed = ``FAILED``, cancelled = ``KILLED``.
- Times: MLflow's milliseconds since the epoch, mlrig's ISO 8601 in UTC.
- A run's MLflow name is its tag ``mlflow.runName`` when set (MLflow names need not be
  unique, mlrig's do), else its mlrig name. A nested run (tag ``mlflow.parentRunId``) is
  nested in mlrig too (``parent_id``). A run deleted through MLflow carries the tag
  :data:`DELETED_TAG` (mlrig has no run deletion; MLflow's is soft too).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

from mlrig.api.mlflow.errors import RESOURCE_DOES_NOT_EXIST, MlflowError
from mlrig.nonfinite import to_json

DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT_NAME = "Default"
RUN_NAME_TAG = "mlflow.runName"
#: the tag a nested MLflow run names its parent by (the mlrig run's ``parent_id`` too)
PARENT_TAG = "mlflow.parentRunId"
#: the tag that marks a run deleted through MLflow (hidden from MLflow's views of it)
DELETED_TAG = "mlrig.mlflow.deleted"
_HIDDEN_TAGS = frozenset({DELETED_TAG})

STATUS_TO_MLFLOW = {
    "created": "SCHEDULED",
    "queued": "SCHEDULED",
    "running": "RUNNING",
    "completed": "FINISHED",
    "failed": "FAILED",
    "cancelled": "KILLED",
}
#: MLflow's end statuses as :meth:`ExperimentService.end_run` names them
END_STATUS = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "killed"}
RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
#: MLflow's ViewType, as JSON carries it (names) or as numbers
VIEW_TYPES = {"ACTIVE_ONLY": 1, "DELETED_ONLY": 2, "ALL": 3, "1": 1, "2": 2, "3": 3}


def millis(value: str | datetime | None) -> int | None:
    """An ISO 8601 time (or datetime) as milliseconds since the epoch."""
    if value is None:
        return None
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return int(at.timestamp() * 1000)


def from_millis(value: int | None, *, field: str) -> datetime | None:
    """Milliseconds since the epoch as a UTC datetime (``None`` stays ``None``)."""
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        msg = f"{field} {value!r} is not a time in milliseconds since the epoch"
        raise invalid(msg) from None


def invalid(message: str) -> MlflowError:
    """An ``INVALID_PARAMETER_VALUE`` error (400)."""
    return MlflowError("INVALID_PARAMETER_VALUE", message)


def not_found(message: str) -> MlflowError:
    """A ``RESOURCE_DOES_NOT_EXIST`` error (404)."""
    return MlflowError(RESOURCE_DOES_NOT_EXIST, message, status=404)


def run_key(run_id: str | None) -> uuid.UUID:
    """The experiment id of an MLflow run id (32 hex digits, or a UUID with dashes)."""
    if not run_id:
        msg = "run_id is required"
        raise invalid(msg)
    try:
        return uuid.UUID(run_id)
    except ValueError:
        msg = f"no run with id {run_id!r}"
        raise not_found(msg) from None


def experiment_id_of(group: dict[str, Any] | None) -> str:
    """The MLflow experiment id of a group view (``"0"`` for ``Default`` or no group)."""
    if group is None or group["name"] == DEFAULT_EXPERIMENT_NAME:
        return DEFAULT_EXPERIMENT_ID
    return uuid.UUID(group["id"]).hex


def group_key(experiment_id: str | None) -> uuid.UUID | None:
    """The group id an MLflow experiment id names (``None`` for ``"0"``, the default)."""
    if experiment_id is None or experiment_id == "":
        msg = "experiment_id is required"
        raise invalid(msg)
    if experiment_id == DEFAULT_EXPERIMENT_ID:
        return None
    try:
        return uuid.UUID(experiment_id)
    except ValueError:
        msg = f"no experiment with id {experiment_id!r}"
        raise not_found(msg) from None


def pairs(mapping: dict[str, Any]) -> list[dict[str, str]]:
    """``{k: v}`` as MLflow's ``[{"key": k, "value": v}]``."""
    return [{"key": k, "value": v} for k, v in mapping.items()]


def unpairs(items: list[Any] | None, *, field: str) -> dict[str, str]:
    """MLflow's ``[{"key", "value"}]`` as a dict (the last value of a repeated key)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, value = item.key, item.value
        if not key:
            msg = f"{field}: every entry needs a key"
            raise invalid(msg)
        out[key] = "" if value is None else value
    return out


def param_text(value: Any) -> str:
    """A param as MLflow's string (mlrig keeps JSON values: ``0.1``, ``true``, lists)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def wire_value(value: Any) -> float | str:
    """A stored metric value as MLflow's JSON carries it (a missing one as ``"NaN"``)."""
    found = number(value)
    return "NaN" if found is None else metric_value(found)


#: a metric value as protobuf's JSON writes it (``"NaN"``, ``"Infinity"``...)
metric_value = to_json


def number(value: Any) -> float | None:
    """A stored metric value as a float (``"NaN"``/``"Infinity"`` strings too)."""
    if value is None:
        return None
    return float(value)


def experiment_json(group: dict[str, Any]) -> dict[str, Any]:
    """A group view as MLflow's ``Experiment``."""
    created = millis(group.get("created_at"))
    experiment_id = experiment_id_of(group)
    experiment = {
        "experiment_id": experiment_id,
        "name": group["name"],
        "artifact_location": f"mlflow-artifacts:/{experiment_id}",
        "lifecycle_stage": "deleted" if group.get("deleted_at") else "active",
        "creation_time": created,
        "last_update_time": created,
        "tags": pairs(group.get("tags") or {}),
    }
    return {k: v for k, v in experiment.items() if v is not None}


def run_name(view: dict[str, Any]) -> str:
    """The MLflow name of a run."""
    return (view.get("tags") or {}).get(RUN_NAME_TAG) or view["name"]


def is_deleted(view: dict[str, Any]) -> bool:
    """Whether the run was deleted through MLflow."""
    return (view.get("tags") or {}).get(DELETED_TAG) == "true"


def run_info_json(view: dict[str, Any], experiment_id: str) -> dict[str, Any]:
    """An experiment view as MLflow's ``RunInfo``."""
    run_id = uuid.UUID(view["id"]).hex
    info: dict[str, Any] = {
        "run_id": run_id,
        "run_uuid": run_id,
        "run_name": run_name(view),
        "experiment_id": experiment_id,
        "user_id": view.get("created_by") or "",
        "status": STATUS_TO_MLFLOW.get(view["status"], "RUNNING"),
        "start_time": millis(view.get("started_at") or view.get("created_at")),
        "artifact_uri": f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts",
        "lifecycle_stage": "deleted" if is_deleted(view) else "active",
    }
    if view.get("completed_at") and view["status"] not in ("running", "created", "queued"):
        info["end_time"] = millis(view["completed_at"])
    return info


def run_json(view: dict[str, Any], experiment_id: str) -> dict[str, Any]:
    """A full experiment view (with ``metrics``) as MLflow's ``Run``."""
    latest = view.get("metrics") or {}
    metrics = [
        {
            "key": key,
            "value": wire_value(point["value"]),
            "timestamp": millis(point.get("recorded_at")),
            "step": point.get("step") or 0,
        }
        for key, point in latest.items()
    ]
    params = [
        {"key": k, "value": param_text(v)} for k, v in (view.get("hyperparameters") or {}).items()
    ]
    tags = dict(view.get("tags") or {})
    tags.setdefault(RUN_NAME_TAG, view["name"])
    for hidden in _HIDDEN_TAGS:
        tags.pop(hidden, None)
    datasets = ((view.get("reproducibility") or {}).get("datasets")) or []
    return {
        "info": run_info_json(view, experiment_id),
        "data": {"metrics": metrics, "params": params, "tags": pairs(tags)},
        "inputs": {"dataset_inputs": [dataset_input_json(d) for d in datasets]},
    }


def dataset_input_json(record: dict[str, Any]) -> dict[str, Any]:
    """A run's dataset record as MLflow's ``DatasetInput``."""
    schema = record.get("schema")
    dataset = {
        "name": record.get("name") or record.get("source") or "dataset",
        "digest": record.get("digest") or "",
        "source_type": record.get("source_type") or "external",
        "source": record.get("source") or "",
    }
    if schema is not None:
        dataset["schema"] = schema if isinstance(schema, str) else json.dumps(schema)
    if record.get("rows") is not None:
        dataset["profile"] = json.dumps({"num_rows": record["rows"]})
    tags = (
        [{"key": "mlflow.data.context", "value": record["context"]}]
        if record.get("context")
        else []
    )
    return {"tags": tags, "dataset": dataset}


def dataset_record(dataset: Any, tags: dict[str, str]) -> dict[str, Any]:
    """MLflow's ``DatasetInput`` as a run's dataset record (see
    :meth:`ExperimentService.log_dataset`)."""
    record: dict[str, Any] = {"name": dataset.name}
    if dataset.source:
        record["source"] = dataset.source
    if dataset.digest:
        record["digest"] = dataset.digest
    if dataset.schema_:
        try:
            record["schema"] = json.loads(dataset.schema_)
        except ValueError:
            record["schema"] = dataset.schema_
    if dataset.profile:
        try:
            rows = json.loads(dataset.profile).get("num_rows")
        except (ValueError, AttributeError):
            rows = None
        if isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0:
            record["rows"] = rows
    if tags.get("mlflow.data.context"):
        record["context"] = tags["mlflow.data.context"]
    return record


def run_record(view: dict[str, Any], experiment_id: str) -> dict[str, Any]:
    """What a run search filters and sorts on."""
    info = run_info_json(view, experiment_id)
    tags = dict(view.get("tags") or {})
    tags.setdefault(RUN_NAME_TAG, view["name"])
    latest = view.get("metrics") or {}
    return {
        "view": view,
        "experiment_id": experiment_id,
        "metrics": {k: number(p["value"]) for k, p in latest.items()},
        "params": {k: param_text(v) for k, v in (view.get("hyperparameters") or {}).items()},
        "tags": tags,
        "attributes": {
            "run_id": info["run_id"],
            "run_name": info["run_name"],
            "status": info["status"],
            "start_time": info.get("start_time"),
            "end_time": info.get("end_time"),
            "user_id": info["user_id"],
            "artifact_uri": info["artifact_uri"],
            "lifecycle_stage": info["lifecycle_stage"],
        },
    }
