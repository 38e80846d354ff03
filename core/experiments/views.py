"""Experiment rows to the plain dicts the API returns (ISO times, string UUIDs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mlrig.db.models import ExperimentEvent, TrainingExperiment


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def experiment_summary(row: TrainingExperiment, *, creator: str | None = None) -> dict[str, Any]:
    """What a listing shows of an experiment."""
    config = row.configuration or {}
    return {
        "id": str(row.id),
        "name": row.name,
        "description": row.description,
        "trainer": row.trainer,
        "status": row.status,
        "status_detail": row.status_detail,
        "priority": row.priority,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "model_name": config.get("model_name"),
        # the column is the spec's ``model_id``, but it holds the id of the registered
        # *version* (a row of ml_models); ``model_id`` stays for one release, deprecated
        "model_version_id": _str(row.model_id),
        "model_id": _str(row.model_id),
        "created_by": creator or config.get("submitted_by"),
        "created_at": iso(row.created_at),
        "queued_at": iso(row.queued_at),
        "started_at": iso(row.started_at),
        "completed_at": iso(row.completed_at),
        "updated_at": iso(row.updated_at),
        "origin": row.origin,
        "group": row.group_name,
        "parent_id": _str(row.parent_id),
        "tags": dict(row.tags or {}),
    }


def experiment_view(
    row: TrainingExperiment,
    *,
    creator: str | None = None,
    events: list[dict[str, Any]] | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An experiment with its configuration, state, timeline and latest metrics."""
    config = row.configuration or {}
    view = experiment_summary(row, creator=creator)
    view.update(
        {
            "hyperparameters": row.hyperparameters or {},
            "dataset": config.get("dataset"),
            "resources": row.resources or {},
            "checkpoint_interval_s": row.checkpoint_interval_s,
            "early_stopping": row.early_stopping,
            "seed": row.seed,
            "lease_owner": row.lease_owner,
            "heartbeat_at": iso(row.heartbeat_at),
            "last_checkpoint": row.last_checkpoint,
            "reproducibility": row.reproducibility or {},
            "result": config.get("result"),
        }
    )
    if events is not None:
        view["events"] = events
    if metrics is not None:
        view["metrics"] = metrics
    return view


def event_view(event: ExperimentEvent) -> dict[str, Any]:
    """One state change: ``{"old", "new", "detail", "at"}``."""
    return {
        "old": event.old_status,
        "new": event.new_status,
        "detail": event.detail,
        "at": iso(event.at),
    }
