"""``/api/ml/models``: registered models, versions, artifacts, aliases and stages."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from mlrig.api.deps import PlatformDep
from mlrig.api.middleware import body_class
from mlrig.api.security import Reader, Writer
from mlrig.errors import ValidationError
from mlrig.registry.search import MetricFilter, VersionQuery

router = APIRouter(prefix="/models", tags=["models"])


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255)
    description: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class ModelUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = None
    tags: dict[str, str] | None = None


class DatasetRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uri: str
    hash: str | None = None


class VersionMetadata(BaseModel):
    """The ``metadata`` form field of a version upload (JSON)."""

    model_config = ConfigDict(extra="forbid")
    version: str | None = None
    description: str | None = None
    framework: str | None = None
    model_type: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    signature: dict[str, Any] | None = None
    requirements: list[str] = Field(default_factory=list)
    source_experiment_id: str | None = None
    source_run: str | None = None
    parent_version: str | None = None
    datasets: list[DatasetRef] = Field(default_factory=list)
    code_version: str | None = None


class VersionUpdate(BaseModel):
    """Only ``description`` and ``tags`` may change; any other field gets 409."""

    model_config = ConfigDict(extra="allow")
    description: str | None = None
    tags: dict[str, str] | None = None


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=100)


class StageChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str
    comment: str | None = Field(default=None, max_length=10_000)


def parse_tags(values: list[str] | None) -> dict[str, str]:
    """``key:value`` strings to a dict."""
    tags = {}
    for item in values or []:
        key, sep, value = item.partition(":")
        if not sep or not key:
            msg = f"invalid tag filter {item!r}: use key:value"
            raise ValidationError(msg)
        tags[key] = value
    return tags


def version_filters(
    framework: str | None = None,
    model_type: str | None = None,
    stage: str | None = None,
    tag: list[str] | None = Query(default=None, description="key:value, repeatable."),
    created_by: str | None = Query(default=None, description="User name."),
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    metric: list[str] | None = Query(default=None, description="e.g. 'accuracy>0.9'."),
    sort: str = Query(
        default="-created_at", description="created_at, name, metrics.NAME; '-' descending."
    ),
    limit: int = Query(default=50, ge=1, le=1000),
    cursor: str | None = Query(default=None, description="next_cursor of the previous page."),
) -> VersionQuery:
    """The version filters shared by the search routes (one model or all models)."""
    return VersionQuery(
        framework=framework,
        model_type=model_type,
        stage=stage,
        tags=parse_tags(tag),
        created_by=created_by,
        created_after=created_after,
        created_before=created_before,
        metrics=tuple(MetricFilter.parse(m) for m in metric or []),
        sort=sort,
        limit=limit,
        cursor=cursor,
    )


VersionFilters = Annotated[VersionQuery, Depends(version_filters)]


@router.post("", status_code=status.HTTP_201_CREATED, summary="Register a new model")
def create_model(body: ModelCreate, request: Request, platform: PlatformDep, actor: Writer) -> Any:
    model = platform.registry.create_model(
        name=body.name, description=body.description, tags=body.tags, actor=actor
    )
    request.state.audit_resource_id = model["id"]
    return model


@router.get("", summary="List models with filtering")
def list_models(
    platform: PlatformDep,
    _: Reader,
    name_prefix: str | None = Query(default=None, description="Names starting with this."),
    q: str | None = Query(default=None, description="Names containing this."),
    tag: list[str] | None = Query(default=None, description="key:value, repeatable."),
    limit: int = Query(default=100, ge=1, le=1000),
    offset: int = Query(default=0, ge=0),
) -> list[dict[str, Any]]:
    return platform.registry.list_models(
        name_prefix=name_prefix, name_contains=q, tag=parse_tags(tag), limit=limit, offset=offset
    )


@router.get("/{id}", summary="Get model details")
def get_model(id: str, platform: PlatformDep, _: Reader) -> Any:
    return platform.registry.get_model(id)


@router.put("/{id}", summary="Update model metadata")
def update_model(id: str, body: ModelUpdate, platform: PlatformDep, _: Writer) -> Any:
    return platform.registry.update_model(id, description=body.description, tags=body.tags)


@router.delete("/{id}", summary="Delete a model (soft; 409 while deployed)")
def delete_model(id: str, platform: PlatformDep, _: Writer) -> Any:
    return platform.registry.delete_model(id)


@router.post(
    "/{id}/versions",
    status_code=status.HTTP_201_CREATED,
    summary="Create a new model version (multipart: metadata + files)",
    dependencies=[body_class("upload")],  # bounded by [api] max_upload_bytes
)
def create_version(
    id: str,
    request: Request,
    platform: PlatformDep,
    actor: Writer,
    files: Annotated[
        list[UploadFile], File(description="Artifact files; the filename is the path.")
    ],
    metadata: Annotated[str, Form(description="VersionMetadata as JSON.")] = "{}",
) -> Any:
    try:
        meta = VersionMetadata.model_validate(json.loads(metadata))
    except (json.JSONDecodeError, PydanticValidationError) as exc:
        msg = f"metadata: not a valid VersionMetadata JSON object ({exc.__class__.__name__})"
        raise ValidationError(msg, details={"error": str(exc)[:2000]}) from None
    sources = {}
    for upload in files:
        if not upload.filename:
            msg = "every uploaded file needs a filename (its path inside the version)"
            raise ValidationError(msg)
        sources[upload.filename] = upload.file
    data = meta.model_dump()
    version = platform.registry.create_version(id, files=sources, actor=actor, **data)
    request.state.audit_resource_id = version["id"]
    return version


@router.get("/{id}/versions", summary="List model versions")
def list_versions(id: str, platform: PlatformDep, _: Reader, filters: VersionFilters) -> Any:
    """One page of the model's versions: ``{"items": [...], "next_cursor": ...}``."""
    query = dataclasses.replace(filters, model_id=platform.registry.model_id(id))
    return platform.registry.search_versions(query)


@router.get("/{id}/versions/{version}", summary="Get a version with its lineage")
def get_version(id: str, version: str, platform: PlatformDep, _: Reader) -> Any:
    return platform.registry.get_version(id, version)


@router.put("/{id}/versions/{version}", summary="Edit a version's description or tags")
def update_version(
    id: str, version: str, body: VersionUpdate, platform: PlatformDep, _: Writer
) -> Any:
    return platform.registry.update_version(
        id, version, description=body.description, tags=body.tags, frozen=body.model_extra
    )


@router.delete("/{id}/versions/{version}", summary="Delete a version (soft; 409 while deployed)")
def delete_version(id: str, version: str, platform: PlatformDep, _: Writer) -> Any:
    return platform.registry.delete_version(id, version)


@router.get("/{id}/versions/{version}/artifacts", summary="List a version's artifacts")
def list_artifacts(id: str, version: str, platform: PlatformDep, _: Reader) -> Any:
    return platform.registry.list_artifacts(id, version)


@router.get(
    "/{id}/versions/{version}/artifacts/{path:path}",
    summary="Download an artifact (streamed, verified)",
)
def download_artifact(
    id: str, version: str, path: str, platform: PlatformDep, _: Reader
) -> StreamingResponse:
    info, stream = platform.registry.open_artifact(id, version, path)

    def chunks() -> Any:
        with stream:
            while chunk := stream.read(1024 * 1024):
                yield chunk

    filename = path.rsplit("/", 1)[-1].replace('"', "")
    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(info["size"]),
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Checksum-Sha256": info["sha256"] or "",
        },
    )


@router.put("/{id}/aliases/{alias}", summary="Point an alias at a version")
def set_alias(id: str, alias: str, body: AliasSet, platform: PlatformDep, actor: Writer) -> Any:
    return platform.lifecycle.set_alias(id, alias, body.version, actor=actor)


@router.delete("/{id}/aliases/{alias}", summary="Remove an alias")
def delete_alias(id: str, alias: str, platform: PlatformDep, actor: Writer) -> Any:
    return platform.lifecycle.delete_alias(id, alias, actor=actor)


@router.post(
    "/{id}/versions/{version}/stage",
    summary="Move a version to a stage (production: opens an approval request)",
)
def change_stage(
    id: str, version: str, body: StageChange, platform: PlatformDep, actor: Writer
) -> Any:
    return platform.lifecycle.transition(id, version, body.stage, actor=actor, comment=body.comment)


class EvaluationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset_uri: str = Field(min_length=1, description="CSV or parquet, a path or fsspec URL.")
    target: str = Field(min_length=1, description="The label column.")
    task: Literal["classification", "regression"] | None = None
    runtime: str | None = Field(default=None, description="Default: onnx if exported.")


@router.post(
    "/{id}/versions/{version}/evaluations",
    status_code=status.HTTP_201_CREATED,
    summary="Benchmark a version on a dataset (quality and speed)",
)
def evaluate_version(
    id: str, version: str, body: EvaluationRequest, platform: PlatformDep, _: Writer
) -> Any:
    return platform.evaluator.evaluate(
        id,
        [version],
        dataset_uri=body.dataset_uri,
        target=body.target,
        task=body.task,
        runtime=body.runtime,
    )[0]


@router.get("/{id}/compare", summary="Compare versions side by side")
def compare_versions(
    id: str,
    platform: PlatformDep,
    _: Reader,
    versions: list[str] = Query(description="Versions to compare, repeatable."),
) -> Any:
    return platform.evaluator.compare(id, versions)
