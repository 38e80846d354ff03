"""Rows to the plain dicts the API returns and the hooks receive."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mlrig.db.models import MLModel, ModelArtifact, RegisteredModel


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def artifact_view(artifact: ModelArtifact, prefix: str) -> dict[str, Any]:
    return {
        "path": artifact.storage_path[len(prefix) :],
        "type": artifact.artifact_type,
        "size": artifact.file_size,
        "sha256": artifact.checksum,
        "compression": artifact.compression,
        "encrypted": bool(artifact.encryption),
    }


def version_view(
    version: MLModel,
    *,
    creator: str | None = None,
    aliases: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    view = {
        "id": str(version.id),
        "model_id": str(version.registered_model_id),
        "name": version.name,
        "version": version.version,
        "description": version.description,
        "framework": version.framework,
        "model_type": version.model_type,
        "stage": version.stage,
        "status": version.status,
        "tags": version.tags or {},
        "params": version.params or {},
        "metrics": version.metrics or {},
        "signature": version.signature,
        "requirements": version.requirements or [],
        "lineage": {
            "source_experiment_id": _str(version.source_experiment_id),
            "source_run": version.source_run,
            "parent_version_id": _str(version.parent_version_id),
            "datasets": version.datasets or [],
            "code_version": version.code_version,
        },
        "created_by": creator,
        "created_at": iso(version.created_at),
        "updated_at": iso(version.updated_at),
    }
    if aliases is not None:
        view["aliases"] = aliases
    if artifacts is not None:
        view["artifacts"] = artifacts
    return view


def model_view(
    model: RegisteredModel,
    *,
    creator: str | None = None,
    latest: MLModel | None = None,
    version_count: int | None = None,
    aliases: dict[str, str] | None = None,
) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": str(model.id),
        "name": model.name,
        "description": model.description,
        "tags": model.tags or {},
        "created_by": creator,
        "created_at": iso(model.created_at),
        "updated_at": iso(model.updated_at),
    }
    if version_count is not None:
        view["version_count"] = version_count
    if latest is not None:
        view["latest_version"] = latest.version
    if aliases is not None:
        view["aliases"] = aliases
    return view


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
