"""Runs tracked from user code (``mlrig.start_run``): start one, then log params, tags,
datasets, artifacts and heartbeats, and end it. A run is an experiment
(``/experiments/{id}``) with ``origin = "tracking"``; run groups (``/groups``) are the
studies runs are grouped under (MLflow's experiments).

The app's lifespan runs the heartbeat sweep (:func:`sweep_silent_runs`): running tracked
runs whose script went silent for ``[tracking] heartbeat_timeout_seconds`` are failed.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict, Field, model_validator

from mlrig.api.background import thread_lifespan
from mlrig.api.deps import PlatformDep
from mlrig.api.middleware import body_class
from mlrig.api.openapi import errors
from mlrig.api.pagination import whole
from mlrig.api.schemas import Experiment, Out, Page, Timestamp
from mlrig.api.security import Reader, Writer
from mlrig.api.types import (
    Description,
    ExperimentName,
    InputModel,
    JsonObject,
    NonEmptyShortText,
    ShortText,
    TagKey,
    Tags,
    UtcDatetime,
)
from mlrig.experiments.run_files import MAX_PATH_LENGTH, PATH_PATTERN

log = logging.getLogger(__name__)

#: the longest wait between two sweeps for silent runs
SWEEP_MAX_SECONDS = 5.0
#: bytes of an uploaded artifact kept in memory before it spills to a temporary file
SPOOL_BYTES = 8 * 1024 * 1024


def sweep_interval(timeout: float) -> float:
    """Seconds between sweeps: a quarter of the heartbeat timeout, at most 5 s, at least
    0.2 s (so a run is failed at most ~timeout + interval after its last heartbeat)."""
    return max(0.2, min(SWEEP_MAX_SECONDS, timeout / 4))


def sweep_silent_runs(platform: Any, stop: threading.Event) -> None:
    """Until ``stop`` is set: fail silent tracked runs every few seconds (errors are
    logged, never fatal: the database may be briefly away)."""
    interval = sweep_interval(platform.experiments.heartbeat_timeout)
    while not stop.wait(interval):
        try:
            platform.experiments.expire_silent_runs()
        except Exception:
            log.warning("the sweep for silent tracked runs failed", exc_info=True)


sweep_lifespan = thread_lifespan(sweep_silent_runs, name="mlrig-run-sweep")

router = APIRouter(tags=["runs"], lifespan=sweep_lifespan)

Origin = Literal["tracking", "mlflow", "import"]
GroupName = Annotated[
    str, Field(min_length=1, max_length=255, pattern=r"^[^\u0000]*[^\s\u0000][^\u0000]*$")
]
ArtifactPath = Annotated[
    str,
    Path(
        description="Relative, /-separated path of the file in the run (plots/loss.png): no "
        "empty, . or .. part, no backslash or control character.",
        max_length=MAX_PATH_LENGTH,
        pattern=PATH_PATTERN,
    ),
]


#: run params: a JSON object whose keys have 1-250 characters
Params = Annotated[
    JsonObject,
    Field(json_schema_extra={"propertyNames": {"minLength": 1, "maxLength": 250}}),
]


# --- schemas ------------------------------------------------------------------------------


class RunStart(InputModel):
    name: ExperimentName | None = Field(
        default=None, description='Default: "<group or run>-<yyyymmdd-HHMMSS>-<4 hex>".'
    )
    group: GroupName | None = Field(default=None, description="The study, made on first use.")
    parent: Annotated[str, Field(min_length=1, max_length=255)] | None = Field(
        default=None, description="The id or name of the run it is nested in."
    )
    params: Params = Field(default_factory=dict)
    tags: Tags = Field(default_factory=dict)
    description: Description | None = None
    reproducibility: JsonObject = Field(
        default_factory=dict,
        description="git commit and dirty flag, Python and package versions, command line, seed...",
    )
    origin: Origin = "tracking"
    started_at: UtcDatetime | None = Field(default=None, description="Default: now.")


class RunParams(InputModel):
    params: Params = Field(description="Merged; a key logged again must keep its value.")


class RunTags(InputModel):
    tags: Tags = Field(description="Merged over the run's tags.")


class RunEnd(InputModel):
    status: Literal["completed", "failed", "killed"] = Field(
        default="completed", description="killed is stored as cancelled (detail: killed)."
    )
    error: Annotated[str, Field(max_length=10_000)] | None = Field(
        default=None, description="What went wrong (type: message)."
    )
    ended_at: UtcDatetime | None = Field(default=None, description="Default: now.")


class RunDataset(InputModel):
    """A name or a source is needed."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema: schema.update(
            anyOf=[
                {"required": [key], "properties": {key: {"type": "string"}}}
                for key in ("name", "source")
            ]
        ),
    )

    name: NonEmptyShortText | None = None
    source: NonEmptyShortText | None = Field(default=None, description="A URI or a path.")
    digest: ShortText | None = Field(default=None, description="sha256 of the data.")
    schema_: JsonObject | None = Field(default=None, alias="schema")
    rows: int | None = Field(default=None, ge=0, le=2**53 - 1)  # exact in JSON
    context: ShortText | None = Field(default=None, description="train, validation, test...")

    @model_validator(mode="before")
    @classmethod
    def _json_integer_rows(cls, data: Any) -> Any:
        # lax int() would take false for 0 and "3" for 3; JSON's 3.0 is the integer 3
        rows = data.get("rows") if isinstance(data, dict) else None
        if isinstance(rows, bool) or not isinstance(rows, (int, float, type(None))):
            raise ValueError("rows must be an integer")
        return data


class Heartbeat(Out):
    id: str
    name: str
    status: str
    heartbeat_at: Timestamp
    timeout_seconds: float


class RunArtifact(Out):
    path: str
    size_bytes: int
    checksum: str = Field(description="sha256 of the bytes.")
    created_at: Timestamp | None


class RunGroup(Out):
    id: str
    name: str
    description: str | None
    tags: dict[str, str]
    runs: int = Field(description="Runs in the group.")
    created_at: Timestamp | None
    deleted_at: Timestamp | None = None


class GroupCreate(InputModel):
    name: GroupName
    description: Description | None = None
    tags: Tags = Field(default_factory=dict)


class GroupUpdate(InputModel):
    name: GroupName | None = Field(default=None, description="Rename it (its runs follow).")
    description: Description | None = None
    tags: Tags | None = Field(default=None, description="Merged over the group's tags.")


RUN_ERRORS = errors(404, 409, e409="The run is not in a state that allows it.")


# --- runs ---------------------------------------------------------------------------------


@router.post(
    "/runs",
    status_code=status.HTTP_201_CREATED,
    summary="Start a tracked run (running now; end it with POST /experiments/{id}/end)",
    responses=errors(404, 409, e404="No such parent run.", e409="A run of that name exists."),
    response_model_exclude_unset=True,
)
def start_run(body: RunStart, request: Request, platform: PlatformDep, actor: Writer) -> Experiment:
    view = platform.experiments.start_run(actor=actor, **body.model_dump())
    request.state.audit_resource_id = view["id"]
    return view


@router.post(
    "/experiments/{id}/params",
    summary="Log params of a tracked run",
    responses=RUN_ERRORS,
    response_model_exclude_unset=True,
)
def log_params(id: str, body: RunParams, platform: PlatformDep, actor: Writer) -> Experiment:
    return platform.experiments.log_params(id, body.params, actor=actor)


@router.post(
    "/experiments/{id}/tags",
    summary="Set tags of a run",
    responses=errors(404),
    response_model_exclude_unset=True,
)
def set_tags(id: str, body: RunTags, platform: PlatformDep, actor: Writer) -> Experiment:
    return platform.experiments.set_tags(id, body.tags, actor=actor)


@router.delete(
    "/experiments/{id}/tags/{key:path}",
    summary="Delete a tag of a run",
    responses=errors(404, e404="No such run, or it has no such tag."),
    response_model_exclude_unset=True,
)
def delete_tag(
    id: str, key: Annotated[TagKey, Path()], platform: PlatformDep, _: Writer
) -> Experiment:
    return platform.experiments.delete_tag(id, key)


@router.post(
    "/experiments/{id}/heartbeat",
    summary="Tell the server a tracked run's script is alive",
    responses=errors(404, 409, e409="The run is not running (details.status says what it is)."),
)
def heartbeat(id: str, platform: PlatformDep, _: Writer) -> Heartbeat:
    return platform.experiments.heartbeat(id)


@router.post(
    "/experiments/{id}/end",
    summary="End a tracked run: completed, failed or killed",
    responses=RUN_ERRORS,
    response_model_exclude_unset=True,
)
def end_run(id: str, body: RunEnd, platform: PlatformDep, actor: Writer) -> Experiment:
    return platform.experiments.end_run(id, actor=actor, **body.model_dump())


@router.post(
    "/experiments/{id}/resume",
    summary="Put an ended tracked run back to running",
    responses=RUN_ERRORS,
    response_model_exclude_unset=True,
)
def resume_run(id: str, platform: PlatformDep, actor: Writer) -> Experiment:
    return platform.experiments.resume_run(id, actor=actor)


@router.post(
    "/experiments/{id}/datasets",
    summary="Record a dataset a run used (name, source, digest, schema, rows)",
    responses=errors(404),
    response_model_exclude_unset=True,
)
def log_dataset(id: str, body: RunDataset, platform: PlatformDep, _: Writer) -> Experiment:
    record = body.model_dump(by_alias=True, exclude_none=True)
    return platform.experiments.log_dataset(id, record)


# --- run artifacts ------------------------------------------------------------------------


@router.get(
    "/experiments/{id}/artifacts",
    summary="List the files a run logged",
    responses=errors(404),
)
def list_run_artifacts(
    id: str,
    platform: PlatformDep,
    _: Reader,
    prefix: str | None = Query(
        default=None,
        max_length=MAX_PATH_LENGTH,
        description="Only paths starting with this (plots/).",
    ),
) -> Page[RunArtifact]:
    """Every file (one page: ``next_cursor`` is always null)."""
    return whole(platform.experiments.list_run_artifacts(id, prefix))  # type: ignore[return-value]


@router.put(
    "/experiments/{id}/artifacts/{path:path}",
    summary="Upload a file of a run (the raw body; the same path replaces it)",
    dependencies=[body_class("upload")],  # bounded by [api] max_upload_bytes
    responses=errors(404),
    openapi_extra={
        "requestBody": {
            "required": False,  # an empty body is an empty file
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_run_artifact(
    id: str, path: ArtifactPath, request: Request, platform: PlatformDep, _: Writer
) -> RunArtifact:
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    try:
        async for chunk in request.stream():
            if len(chunk) > 65536:
                await run_in_threadpool(spool.write, chunk)
            else:
                spool.write(chunk)
        spool.seek(0)
        return await run_in_threadpool(platform.experiments.put_run_artifact, id, path, spool)
    finally:
        spool.close()


@router.get(
    "/experiments/{id}/artifacts/{path:path}",
    summary="Download a file of a run (streamed, verified)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file's bytes.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "headers": {
                "Content-Length": {"schema": {"type": "integer", "minimum": 0}},
                "X-Checksum-Sha256": {"schema": {"type": "string"}},
            },
        },
        **errors(404),
    },
)
def download_run_artifact(
    id: str, path: ArtifactPath, platform: PlatformDep, _: Reader
) -> StreamingResponse:
    record = platform.experiments.run_artifact(id, path)
    pieces, size = platform.experiments.open_run_artifact(id, path)
    filename = path.rsplit("/", 1)[-1].replace('"', "").replace("\\", "")
    return StreamingResponse(
        pieces,
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{_ascii(filename)}"',
            "X-Checksum-Sha256": record["checksum"],
        },
    )


def _ascii(name: str) -> str:
    """A header-safe file name (latin-1 only: Starlette encodes headers so)."""
    return name.encode("ascii", "replace").decode("ascii").replace("?", "_") or "file"


# --- groups -------------------------------------------------------------------------------


@router.get("/groups", summary="List run groups (studies)", tags=["groups"])
def list_groups(
    platform: PlatformDep,
    _: Reader,
    include_deleted: bool = Query(default=False, description="Deleted groups too."),
) -> Page[RunGroup]:
    """Every group, oldest first (one page: ``next_cursor`` is always null)."""
    return whole(platform.experiments.list_groups(include_deleted=include_deleted))  # type: ignore[return-value]


@router.post(
    "/groups",
    status_code=status.HTTP_201_CREATED,
    summary="Make a run group (or get the existing one of that name)",
    tags=["groups"],
)
def ensure_group(body: GroupCreate, platform: PlatformDep, _: Writer) -> RunGroup:
    return platform.experiments.ensure_group(
        body.name, description=body.description, tags=body.tags
    )


GroupRef = Annotated[str, Path(max_length=255, description="The group's name or id.")]


@router.get("/groups/{name}", summary="Get a run group", tags=["groups"], responses=errors(404))
def get_group(name: GroupRef, platform: PlatformDep, _: Reader) -> RunGroup:
    return platform.experiments.get_group(name)


@router.patch(
    "/groups/{name}",
    summary="Rename a run group or change its description and tags",
    tags=["groups"],
    responses=errors(404, 409, e409="Another group has that name."),
)
def update_group(name: GroupRef, body: GroupUpdate, platform: PlatformDep, _: Writer) -> RunGroup:
    return platform.experiments.update_group(name, **body.model_dump())


@router.delete(
    "/groups/{name}",
    summary="Delete a run group (softly: its runs stay)",
    tags=["groups"],
    responses=errors(404),
)
def delete_group(name: GroupRef, platform: PlatformDep, _: Writer) -> RunGroup:
    return platform.experiments.delete_group(name)
