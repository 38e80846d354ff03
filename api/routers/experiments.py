"""``/api/ml/experiments``: training experiments, their metrics (batched ingest, history),
logs (streamed while the job runs), state timeline and comparisons."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
import orjson
from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import Field

from mlrig.api.deps import PlatformDep
from mlrig.api.middleware import body_class
from mlrig.api.openapi import errors
from mlrig.api.pagination import offset_page, whole
from mlrig.api.schemas import (
    Experiment,
    ExperimentComparison,
    ExperimentEvent,
    ExperimentSummary,
    MetricHistory,
    MetricsWritten,
    Page,
)
from mlrig.api.security import Reader, Writer
from mlrig.api.types import (
    DATASET_SCHEMA,
    Cursor,
    Description,
    ExperimentName,
    InputModel,
    JsonObject,
    MetricName,
    ModelName,
    Offset,
)
from mlrig.backends import usable_backend_names
from mlrig.engine.states import FINAL
from mlrig.errors import ValidationError
from mlrig.experiments.logs import DEFAULT_READ_BYTES, MAX_READ_BYTES
from mlrig.experiments.metrics import HISTORY_FIELDS, MAX_POINTS
from mlrig.experiments.points import NON_FINITE_TEXT, VALUE_LIMIT, wire_values
from mlrig.validation import INT32_MAX, INT64_MAX

router = APIRouter(prefix="/experiments", tags=["experiments"])

#: one column name of ``GET /{id}/metrics?fields=``
_FIELD = f"({'|'.join(HISTORY_FIELDS)})"

#: how often a followed log is polled for new bytes
FOLLOW_POLL_SECONDS = 0.5
Kind = Literal["train", "validation", "test"]


class Resources(InputModel):
    cpus: int = Field(default=1, ge=0, le=INT32_MAX)
    gpus: int = Field(default=0, ge=0, le=INT32_MAX)
    memory_mb: int = Field(default=0, ge=0, le=INT32_MAX, description="0: no memory limit.")


class EarlyStoppingRule(InputModel):
    monitor: MetricName = Field(description="Metric name, e.g. val_loss.")
    mode: Literal["min", "max"] = "min"
    patience: int = Field(
        default=3, ge=1, le=INT32_MAX, description="Evaluations without improvement."
    )
    min_delta: float = Field(default=0.0, ge=0, le=VALUE_LIMIT, allow_inf_nan=False)
    kind: Kind = "validation"


class ExperimentCreate(InputModel):
    name: ExperimentName
    trainer: Annotated[str, Field(min_length=1, max_length=100)] = Field(
        description="An installed trainer backend, e.g. sklearn.",
        # the schema lists what is installed where it is served (entry points, read once)
        json_schema_extra=lambda schema: schema.update(enum=usable_backend_names("trainers")),
    )
    description: Description | None = None
    hyperparameters: JsonObject = Field(default_factory=dict)
    dataset: JsonObject | None = Field(
        default=None,
        description='{"uri": "data/train.csv", "target": "label", ...}',
        json_schema_extra=DATASET_SCHEMA,
    )
    resources: Resources = Field(default_factory=Resources)
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first.")
    checkpoint_interval_s: int = Field(default=600, ge=0, le=7 * 86400)
    early_stopping: EarlyStoppingRule | None = None
    max_attempts: int = Field(default=3, ge=1, le=100)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="Default: random.")
    model_name: ModelName | None = Field(default=None, description="Default: the experiment name.")
    start: bool = Field(default=False, description="Queue it right away.")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create training experiment",
    responses=errors(409, e409="An experiment of that name exists."),
    response_model_exclude_unset=True,
)
def create_experiment(
    body: ExperimentCreate, request: Request, platform: PlatformDep, actor: Writer
) -> Experiment:
    fields = body.model_dump()
    view = platform.experiments.create(actor=actor, **fields)
    request.state.audit_resource_id = view["id"]
    return view


@router.get(
    "",
    summary="List experiments",
    responses=errors(404, e404="No run of the given parent."),
    response_model_exclude_unset=True,
)
def list_experiments(
    platform: PlatformDep,
    _: Reader,
    status: Literal["created", "queued", "running", "completed", "failed", "cancelled"]
    | None = None,
    name_prefix: str | None = Query(default=None, description="Names starting with this."),
    trainer: str | None = None,
    origin: Literal["engine", "tracking", "mlflow", "import", "sweep"] | None = None,
    group: str | None = Query(default=None, max_length=255, description="Runs of this group."),
    parent: str | None = Query(
        default=None, max_length=255, description="Runs nested in this one (id or name)."
    ),
    limit: int = Query(default=100, ge=1, le=1000),
    offset: Offset = 0,
    cursor: Cursor = None,
) -> Page[ExperimentSummary]:
    """One page, newest first: ``{"items": [...], "next_cursor": ...}``."""
    return offset_page(  # type: ignore[return-value]
        lambda n, skip: platform.experiments.list(
            status=status,
            name_prefix=name_prefix,
            trainer=trainer,
            origin=origin,
            group=group,
            parent=parent,
            limit=n,
            offset=skip,
        ),
        limit=limit,
        offset=offset,
        cursor=cursor,
    )


# Before /{id}: "compare" is not an experiment id.
@router.get(
    "/compare",
    summary="Compare experiments: hyperparameters and last metric values",
    responses=errors(404, e404="No experiment of one of the ids."),
    response_model_exclude_unset=True,
)
def compare_experiments(
    platform: PlatformDep,
    _: Reader,
    ids: list[str] = Query(
        description="2 to 50 ids or names: repeat the parameter (or separate by commas).",
        max_length=50,
        # Schema only (the service counts after splitting commas, with a better message):
        # 2 or more values, one experiment each, with something besides spaces.
        json_schema_extra={
            "minItems": 2,
            "items": {"type": "string", "pattern": r"^[^,\u0000]*[^,\s\u0000][^,\u0000]*$"},
        },
    ),
) -> ExperimentComparison:
    refs = [ref.strip() for value in ids for ref in value.split(",") if ref.strip()]
    return platform.experiments.compare(refs)


@router.get("/{id}", summary="Get experiment details", response_model_exclude_unset=True)
def get_experiment(id: str, platform: PlatformDep, _: Reader) -> Experiment:
    return platform.experiments.get(id)


@router.post(
    "/{id}/start",
    summary="Start training (queue the experiment)",
    responses=errors(409, e409="Already queued or running, or completed."),
    response_model_exclude_unset=True,
)
def start_experiment(id: str, platform: PlatformDep, _: Writer) -> Experiment:
    return platform.experiments.start(id)


@router.post(
    "/{id}/stop",
    summary="Stop training",
    responses=errors(409, e409="Already in a final state."),
    response_model_exclude_unset=True,
)
def stop_experiment(id: str, platform: PlatformDep, _: Writer) -> Experiment:
    return platform.experiments.stop(id)


@router.post(
    "/{id}/rerun",
    status_code=status.HTTP_201_CREATED,
    summary="Queue an identical run (same trainer, parameters, dataset, seed)",
    responses=errors(409),
    response_model_exclude_unset=True,
)
def rerun_experiment(id: str, request: Request, platform: PlatformDep, actor: Writer) -> Experiment:
    view = platform.experiments.rerun(id, actor=actor)
    request.state.audit_resource_id = view["id"]
    return view


@router.get(
    "/{id}/events", summary="State changes of an experiment", response_model_exclude_unset=True
)
def experiment_events(id: str, platform: PlatformDep, _: Reader) -> Page[ExperimentEvent]:
    """Every state change, oldest first (one page: ``next_cursor`` is always null)."""
    return whole(platform.experiments.events(id))  # type: ignore[return-value]


@router.get(
    "/{id}/metrics",
    summary="Get training metrics (columnar history per metric)",
    response_class=Response,  # orjson bytes; the schema below is what they hold
    responses={200: {"model": MetricHistory, "description": "The history, by metric name."}},
)
def get_metrics(
    id: str,
    platform: PlatformDep,
    _: Reader,
    name: str | None = Query(default=None, max_length=100, description="Only this metric."),
    kind: Kind | None = None,
    after_step: int | None = Query(
        default=None, ge=0, le=INT32_MAX, description="Only points after this step."
    ),
    limit: int | None = Query(
        default=None,
        ge=1,
        le=10_000_000,
        description="At most this many points (by name, then step).",
    ),
    fields: str | None = Query(
        default=None,
        # schema only: the service's message names the allowed columns
        json_schema_extra={"pattern": f"^{_FIELD}(,{_FIELD})*$"},
        description="Comma-separated columns to return, of steps, values, epochs, kinds, "
        "times (default: all). A plot needs steps,values: about half the time and bytes.",
        examples=["steps,values"],
    ),
) -> Response:
    data = platform.experiments.metrics(
        id,
        name=name,
        kind=kind,
        after_step=after_step,
        limit=limit,
        fields=None if fields is None else fields.split(","),
    )
    for series in data["metrics"].values():  # NaN and infinities as their JSON texts
        if "values" in series:
            series["values"] = wire_values(series["values"])
    # Straight to bytes with orjson: FastAPI's encoder would walk every point again, and
    # json.dumps takes 6x as long for a 100,000-point history (docs/benchmarks.md).
    return Response(orjson.dumps(data), media_type="application/json")


#: one point of a metrics batch, as :func:`mlrig.experiments.points.check_points` reads it
METRIC_POINT_SCHEMA = {
    "type": "object",
    "required": ["name", "value"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[^\\u0000]*$"},
        "value": {
            "oneOf": [
                {
                    "type": "number",
                    "exclusiveMinimum": -VALUE_LIMIT,
                    "exclusiveMaximum": VALUE_LIMIT,
                },
                {"enum": list(NON_FINITE_TEXT)},
            ],
            "description": 'A number, or "NaN", "Infinity", "-Infinity" (JSON has no '
            "non-finite numbers; the bare NaN and Infinity that Python's json writes are "
            "read too).",
        },
        "step": {"type": ["integer", "null"], "minimum": 0, "maximum": INT32_MAX},
        "epoch": {"type": ["integer", "null"], "minimum": 0, "maximum": INT32_MAX},
        "kind": {"enum": ["train", "validation", "test", None]},
        "recorded_at": {
            "type": ["string", "null"],
            "format": "date-time",
            "description": "ISO 8601 with a UTC offset; default: the time of the request.",
        },
    },
}

_NON_FINITE = re.compile(rb"[:\[,]\s*-?(NaN|Infinity)\b")


def _python_json(body: bytes) -> Any:
    """``body`` read as Python's ``json`` writes it (bare ``NaN``, ``Infinity``,
    ``-Infinity``), when it has those; else ``None``."""
    if not _NON_FINITE.search(body):
        return None
    import json

    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def parse_points(body: bytes) -> list[Any]:
    """The ``points`` of an ingest body, checked for shape only (the service checks each)."""
    try:
        data = orjson.loads(body)  # 3x json.loads on a 10,000-point batch
    except orjson.JSONDecodeError as exc:
        data = _python_json(body)  # the bare NaN and Infinity of Python's json.dumps
        if data is None:
            msg = f'the body is not valid JSON ({exc}); send {{"points": [...]}}'
            raise ValidationError(msg) from None
    if (
        not isinstance(data, dict)
        or set(data) != {"points"}
        or not isinstance(data["points"], list)
    ):
        msg = 'the body must be {"points": [{"name", "value", "step", "epoch", "kind"}, ...]}'
        raise ValidationError(msg)
    if len(data["points"]) > MAX_POINTS:
        msg = f"{len(data['points']):,} points: at most {MAX_POINTS:,} per request; split the batch"
        raise ValidationError(msg)
    return data["points"]


@router.post(
    "/{id}/metrics",
    summary="Log a batch of metric points (all or nothing)",
    dependencies=[body_class("metrics")],  # bounded by [api] max_metrics_body_bytes
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["points"],
                        "additionalProperties": False,
                        "properties": {
                            "points": {
                                "type": "array",
                                "maxItems": MAX_POINTS,
                                "items": METRIC_POINT_SCHEMA,
                            }
                        },
                    }
                }
            },
        }
    },
)
async def log_metrics(
    id: str, request: Request, platform: PlatformDep, _: Writer
) -> MetricsWritten:
    body = await request.body()
    points = await run_in_threadpool(parse_points, body)
    return await run_in_threadpool(platform.experiments.log_metrics, id, points)


@router.get(
    "/{id}/logs",
    summary="Get training logs (follow=true streams until the job ends)",
    response_class=Response,
    responses={
        200: {
            "description": "The log bytes from offset (UTF-8 text); with follow=true a "
            "stream that ends when the experiment reaches a final state or at timeout.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "headers": {
                "X-Next-Offset": {
                    "description": "The offset to ask for next (not on a followed stream).",
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        }
    },
)
def get_logs(
    id: str,
    platform: PlatformDep,
    _: Reader,
    offset: int = Query(default=0, ge=0, le=INT64_MAX, description="First byte to return."),
    limit: int = Query(default=DEFAULT_READ_BYTES, ge=1, le=MAX_READ_BYTES),
    follow: bool = Query(default=False, description="Stream new output until a final state."),
    timeout: float = Query(
        default=3600,
        gt=0,
        le=86400,
        description="Longest a followed stream stays open, in seconds.",
    ),
) -> Response:
    service = platform.experiments
    key = service.resolve(id)
    if not follow:
        data, next_offset = service.read_logs(key, offset, limit)
        return Response(
            data,
            media_type="text/plain; charset=utf-8",
            headers={"X-Next-Offset": str(next_offset)},
        )

    async def stream() -> AsyncIterator[bytes]:
        position = offset
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # The status first: a final state seen before an empty read means drained.
            state = await anyio.to_thread.run_sync(service.status, key)
            data, position = await anyio.to_thread.run_sync(service.read_logs, key, position, limit)
            if data:
                yield data
            elif state in FINAL:
                return
            else:
                await anyio.sleep(FOLLOW_POLL_SECONDS)

    return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")
