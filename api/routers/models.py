"""``/api/ml/models``: registered models, versions, artifacts, aliases and stages."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile, status
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from mlrig import validation as v
from mlrig.api.deps import PlatformDep
from mlrig.api.middleware import body_class
from mlrig.api.openapi import component, errors
from mlrig.api.pagination import offset_page, whole
from mlrig.api.schemas import (
    AliasDeleted,
    AliasSetResult,
    Artifact,
    Deleted,
    DeletedEntry,
    Evaluation,
    Model,
    Page,
    StageResult,
    Version,
    VersionComparison,
)
from mlrig.api.security import Deleter, Reader, Writer
from mlrig.api.types import (
    Cursor,
    Description,
    InputModel,
    JsonObject,
    MetricName,
    ModelName,
    NonEmptyShortText,
    Offset,
    Requirements,
    ShortText,
    TagFilters,
    Tags,
    UtcDatetime,
    VersionName,
    since_query,
)
from mlrig.db.models import STAGES
from mlrig.errors import ValidationError
from mlrig.registry.inputs import VERSION_TEXT_LENGTHS
from mlrig.registry.names import ALIAS_PATTERN
from mlrig.registry.search import MetricFilter, VersionQuery

router = APIRouter(prefix="/models", tags=["models"])

#: an alias in a path, as :func:`mlrig.registry.names.check_alias` accepts it
AliasPath = Annotated[
    str, Path(json_schema_extra={"pattern": ALIAS_PATTERN})  # check_alias says what is wrong
]
_METRIC_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,99}"
#: what :meth:`MetricFilter.parse` accepts (spaces: the schema says ASCII ones only)
METRIC_FILTER_PATTERN = (
    rf"^[ \t]*(metrics\.)?{_METRIC_NAME}[ \t]*(>=|<=|==|!=|>|<|=)[ \t]*"
    r"-?([0-9]{1,30}\.?[0-9]{0,30}|\.[0-9]{1,30})([eE][-+]?[0-9]{1,2})?[ \t]*$"
)
#: the sorts :class:`VersionQuery` accepts
SORT_PATTERN = rf"^(-?created_at|-?name|-?metrics\.{_METRIC_NAME})$"


class ModelCreate(InputModel):
    name: ModelName
    description: Description | None = None
    tags: Tags = Field(default_factory=dict)


class ModelUpdate(InputModel):
    description: Description | None = None
    tags: Tags | None = None


class DatasetRef(InputModel):
    uri: NonEmptyShortText
    hash: ShortText | None = None


class VersionMetadata(InputModel):
    """The ``metadata`` form field of a version upload (JSON)."""

    version: VersionName | None = None
    description: Description | None = None
    framework: Annotated[str, Field(max_length=VERSION_TEXT_LENGTHS["framework"])] | None = None
    model_type: Annotated[str, Field(max_length=VERSION_TEXT_LENGTHS["model_type"])] | None = None
    tags: Tags = Field(default_factory=dict)
    params: JsonObject = Field(default_factory=dict)
    metrics: Annotated[
        # strict: true is not the number 1 (the schema says number)
        dict[MetricName, Annotated[float, Field(strict=True, gt=-1e308, lt=1e308)]],
        Field(max_length=v.MAX_JSON_KEYS),
    ] = Field(default_factory=dict)
    signature: JsonObject | None = None
    requirements: Requirements = Field(default_factory=list)
    source_experiment_id: ShortText | None = None
    source_run: Annotated[str, Field(max_length=VERSION_TEXT_LENGTHS["source_run"])] | None = None
    parent_version: ShortText | None = None
    datasets: Annotated[list[DatasetRef], Field(max_length=v.MAX_DATASETS)] = Field(
        default_factory=list
    )
    code_version: Annotated[str, Field(max_length=VERSION_TEXT_LENGTHS["code_version"])] | None = (
        None
    )


class VersionUpdate(InputModel):
    """Only ``description`` and ``tags`` may change; any other field gets 409."""

    model_config = ConfigDict(extra="allow")
    description: Description | None = None
    tags: Tags | None = None


class AliasSet(InputModel):
    version: Annotated[str, Field(min_length=1, max_length=100)]


class StageChange(InputModel):
    stage: Literal[STAGES]  # type: ignore[valid-type]
    comment: Description | None = None


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
    tag: TagFilters = None,
    created_by: str | None = Query(default=None, description="User name."),
    created_after: UtcDatetime | None = since_query("Created at or after this time."),
    created_before: UtcDatetime | None = since_query("Created before this time."),
    metric: list[str] | None = Query(
        default=None,
        description="NAME OP NUMBER, OP one of > >= < <= = == !=, e.g. 'accuracy>0.9'.",
        json_schema_extra={"items": {"type": "string", "pattern": METRIC_FILTER_PATTERN}},
    ),
    sort: str = Query(
        default="-created_at",
        description="created_at, name, metrics.NAME; '-' descending.",
        json_schema_extra={"pattern": SORT_PATTERN},  # the service's message lists the sorts
    ),
    limit: int = Query(default=50, ge=1, le=1000),
    cursor: Cursor = None,
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


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Register a new model",
    responses=errors(409, e409="A model of that name exists."),
    response_model_exclude_unset=True,
)
def create_model(
    body: ModelCreate, request: Request, platform: PlatformDep, actor: Writer
) -> Model:
    model = platform.registry.create_model(
        name=body.name, description=body.description, tags=body.tags, actor=actor
    )
    request.state.audit_resource_id = model["id"]
    return model


@router.get("", summary="List models with filtering", response_model_exclude_unset=True)
def list_models(
    platform: PlatformDep,
    _: Reader,
    name_prefix: str | None = Query(default=None, description="Names starting with this."),
    q: str | None = Query(default=None, description="Names containing this."),
    tag: TagFilters = None,
    limit: int = Query(default=100, ge=1, le=1000),
    offset: Offset = 0,
    cursor: Cursor = None,
) -> Page[Model]:
    """One page, by name: ``{"items": [...], "next_cursor": ...}``."""
    tags = parse_tags(tag)
    return offset_page(  # type: ignore[return-value]
        lambda n, skip: platform.registry.list_models(
            name_prefix=name_prefix, name_contains=q, tag=tags, limit=n, offset=skip
        ),
        limit=limit,
        offset=offset,
        cursor=cursor,
    )


@router.get("/{id}", summary="Get model details", response_model_exclude_unset=True)
def get_model(id: str, platform: PlatformDep, _: Reader) -> Model:
    return platform.registry.get_model(id)


@router.put("/{id}", summary="Update model metadata", response_model_exclude_unset=True)
def update_model(id: str, body: ModelUpdate, platform: PlatformDep, _: Writer) -> Model:
    return platform.registry.update_model(id, description=body.description, tags=body.tags)


Force = Annotated[
    bool,
    Query(description="Delete even a version in production, aliased or deployed (admin only)."),
]


@router.delete(
    "/{id}",
    summary="Delete a model (soft, restorable; 409 while a version is in production, "
    "aliased or deployed)",
    responses=errors(409, e409="A version is in production, aliased or deployed."),
    response_model_exclude_unset=True,
)
def delete_model(id: str, platform: PlatformDep, actor: Deleter, force: Force = False) -> Deleted:
    return platform.registry.delete_model(id, actor=actor, force=force)


@router.post(
    "/{id}/restore",
    responses=errors(409, e409="It is not deleted: nothing to restore."),
    summary="Restore a deleted model with the versions deleted along with it",
    response_model_exclude_unset=True,
)
def restore_model(id: str, platform: PlatformDep, actor: Deleter) -> Model:
    return platform.registry.restore_model(id, actor=actor)


@router.get(
    "/-/deleted",
    summary="Deleted models and versions (restorable until purged)",
    responses=errors(404, e404="No live model of that name (`model`)."),
    response_model_exclude_unset=True,
)
def list_deleted(
    platform: PlatformDep,
    _: Reader,
    model: str | None = Query(default=None, description="Only this model's deleted versions."),
) -> Page[DeletedEntry]:
    """Deleted models, then deleted versions of live models, newest first; one page."""
    found = platform.registry.list_deleted(model)
    items = [{"kind": "model", **m} for m in found["models"]]
    items += [{"kind": "version", **v} for v in found["versions"]]
    return {"items": items, "next_cursor": None}  # type: ignore[return-value]


@router.post(
    "/{id}/versions",
    status_code=status.HTTP_201_CREATED,
    summary="Create a new model version (multipart: metadata + files)",
    dependencies=[body_class("upload")],  # bounded by [api] max_upload_bytes
    responses=errors(409, e409="The model already has that version."),
    response_model_exclude_unset=True,
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    # what the form really holds: metadata is a JSON part (VersionMetadata)
                    "schema": {
                        "type": "object",
                        "required": ["files"],
                        "properties": {
                            "files": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "string", "format": "binary"},
                                "description": "Artifact files; each filename is its path.",
                            },
                            "metadata": component(VersionMetadata),
                        },
                    },
                    "encoding": {"metadata": {"contentType": "application/json"}},
                }
            }
        }
    },
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
) -> Version:
    try:
        meta = VersionMetadata.model_validate(json.loads(metadata))
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in ("metadata", *first["loc"]))
        msg = f"{where}: {first['msg']}"
        raise ValidationError(msg, details={"error": str(exc)[:2000]}) from None
    except (json.JSONDecodeError, RecursionError) as exc:
        msg = f"metadata: not a valid VersionMetadata JSON object ({exc.__class__.__name__})"
        raise ValidationError(msg, details={"error": str(exc)[:2000]}) from None
    sources = {}
    for upload in files:
        if not upload.filename:
            msg = "every uploaded file needs a filename (its path inside the version)"
            raise ValidationError(msg)
        v.check_text(upload.filename, field="file name", max_length=v.MAX_SHORT_TEXT_LENGTH)
        sources[upload.filename] = upload.file
    data = meta.model_dump()
    version = platform.registry.create_version(id, files=sources, actor=actor, **data)
    request.state.audit_resource_id = version["id"]
    return version


@router.get("/{id}/versions", summary="List model versions", response_model_exclude_unset=True)
def list_versions(
    id: str, platform: PlatformDep, _: Reader, filters: VersionFilters
) -> Page[Version]:
    """One page of the model's versions: ``{"items": [...], "next_cursor": ...}``."""
    query = dataclasses.replace(filters, model_id=platform.registry.model_id(id))
    return platform.registry.search_versions(query)


@router.get(
    "/{id}/versions/{version}",
    summary="Get a version with its lineage",
    response_model_exclude_unset=True,
)
def get_version(id: str, version: str, platform: PlatformDep, _: Reader) -> Version:
    return platform.registry.get_version(id, version)


@router.put(
    "/{id}/versions/{version}",
    summary="Edit a version's description or tags",
    responses=errors(409, e409="Another field than description or tags: versions are frozen."),
    response_model_exclude_unset=True,
)
def update_version(
    id: str, version: str, body: VersionUpdate, platform: PlatformDep, _: Writer
) -> Version:
    return platform.registry.update_version(
        id, version, description=body.description, tags=body.tags, frozen=body.model_extra
    )


@router.delete(
    "/{id}/versions/{version}",
    summary="Delete a version (soft, restorable; 409 while in production, aliased or deployed)",
    responses=errors(409, e409="The version is in production, aliased or deployed."),
    response_model_exclude_unset=True,
)
def delete_version(
    id: str, version: str, platform: PlatformDep, actor: Deleter, force: Force = False
) -> Deleted:
    return platform.registry.delete_version(id, version, actor=actor, force=force)


@router.post(
    "/{id}/versions/{version}/restore",
    responses=errors(409, e409="It is not deleted: nothing to restore."),
    summary="Restore a deleted version (its aliases stay removed)",
    response_model_exclude_unset=True,
)
def restore_version(id: str, version: str, platform: PlatformDep, actor: Deleter) -> Version:
    return platform.registry.restore_version(id, version, actor=actor)


@router.get(
    "/{id}/versions/{version}/artifacts",
    summary="List a version's artifacts",
    response_model_exclude_unset=True,
)
def list_artifacts(id: str, version: str, platform: PlatformDep, _: Reader) -> Page[Artifact]:
    """Every artifact of the version (one page: ``next_cursor`` is always null)."""
    return whole(platform.registry.list_artifacts(id, version))  # type: ignore[return-value]


@router.get(
    "/{id}/versions/{version}/artifacts/{path:path}",
    summary="Download an artifact (streamed, verified)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The artifact's bytes as stored before compression/encryption.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "headers": {
                "Content-Length": {"schema": {"type": "integer", "minimum": 0}},
                "Content-Disposition": {"schema": {"type": "string"}},
                "X-Checksum-Sha256": {
                    "description": "SHA-256 of the bytes (empty when unknown).",
                    "schema": {"type": "string"},
                },
            },
        },
    },
)
def download_artifact(
    id: str, version: str, path: str, platform: PlatformDep, _: Reader
) -> StreamingResponse:
    info, stream = platform.registry.open_artifact(id, version, path)

    def chunks() -> Iterator[bytes]:
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


@router.put(
    "/{id}/aliases/{alias}",
    summary="Point an alias at a version",
    response_model_exclude_unset=True,
)
def set_alias(
    id: str, alias: AliasPath, body: AliasSet, platform: PlatformDep, actor: Writer
) -> AliasSetResult:
    return platform.lifecycle.set_alias(id, alias, body.version, actor=actor)


@router.delete(
    "/{id}/aliases/{alias}", summary="Remove an alias", response_model_exclude_unset=True
)
def delete_alias(id: str, alias: AliasPath, platform: PlatformDep, actor: Writer) -> AliasDeleted:
    return platform.lifecycle.delete_alias(id, alias, actor=actor)


@router.post(
    "/{id}/versions/{version}/stage",
    summary="Move a version to a stage (production: opens an approval request)",
    responses=errors(409, e409="Already in that stage, or a request is pending."),
    response_model_exclude_unset=True,
)
def change_stage(
    id: str, version: str, body: StageChange, platform: PlatformDep, actor: Writer
) -> StageResult:
    return platform.lifecycle.transition(id, version, body.stage, actor=actor, comment=body.comment)


class EvaluationRequest(InputModel):
    dataset_uri: NonEmptyShortText = Field(description="CSV or parquet, a path or fsspec URL.")
    target: NonEmptyShortText = Field(description="The label column.")
    task: Literal["classification", "regression"] | None = None
    runtime: ShortText | None = Field(default=None, description="Default: onnx if exported.")


@router.post(
    "/{id}/versions/{version}/evaluations",
    status_code=status.HTTP_201_CREATED,
    summary="Benchmark a version on a dataset (quality and speed)",
    response_model_exclude_unset=True,
)
def evaluate_version(
    id: str, version: str, body: EvaluationRequest, platform: PlatformDep, _: Writer
) -> Evaluation:
    return platform.evaluator.evaluate(
        id,
        [version],
        dataset_uri=body.dataset_uri,
        target=body.target,
        task=body.task,
        runtime=body.runtime,
    )[0]


@router.get(
    "/{id}/compare", summary="Compare versions side by side", response_model_exclude_unset=True
)
def compare_versions(
    id: str,
    platform: PlatformDep,
    _: Reader,
    versions: list[str] = Query(description="Versions to compare, repeatable.", max_length=50),
) -> VersionComparison:
    return platform.evaluator.compare(id, versions)
