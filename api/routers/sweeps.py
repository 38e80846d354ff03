"""``/api/ml/sweeps``: hyperparameter sweeps (create, list, show, trials, results, stop).

A sweep is an experiment too (``origin = "sweep"``: ``GET /experiments?origin=sweep``
lists them, and each trial is an engine experiment nested in it, ``parent=<sweep>``), but
its settings, trials and results have routes of their own here: a sweep is made and read
as a whole, not through the experiment routes. The views are
:class:`mlrig.sweeps.service.SweepService`'s.

The app's lifespan runs the sweep driver (:func:`drive_sweeps`): every ``[search]
driver_interval_seconds`` it tells the strategies about trials that ended and queues the
next ones (the workers do the same; one process drives a sweep at a time).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import Field

from mlrig.api.background import thread_lifespan
from mlrig.api.deps import PlatformDep
from mlrig.api.openapi import errors
from mlrig.api.pagination import offset_page
from mlrig.api.routers.experiments import Kind, Resources
from mlrig.api.schemas import Page, Sweep, SweepResults, SweepTrial, TrialState
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
from mlrig.sweeps.driver import next_drive_interval
from mlrig.sweeps.service import MAX_PARALLELISM, MAX_SECONDS
from mlrig.validation import INT32_MAX

log = logging.getLogger(__name__)


# --- the driver -------------------------------------------------------------------------


def driver_owner() -> str:
    """How this server process appears as the driver of a sweep."""
    return f"server:{socket.gethostname()}:{os.getpid()}"


def drive_sweeps(platform: Any, stop: threading.Event) -> None:
    """Until ``stop`` is set: advance the running sweeps every ``[search]
    driver_interval_seconds``, less often while none runs (doubling up to
    ``IDLE_DRIVE_SECONDS``); errors are logged, never fatal (the database may be briefly
    away, or one sweep broken)."""
    owner = driver_owner()
    interval = platform.settings.search.driver_interval_seconds
    every: float | None = None  # backed off while no sweep runs (next_drive_interval)
    waited = 0.0
    # wakes every interval, so that a stop is seen at once; drives when the wait is over
    while not stop.wait(interval):
        waited += interval
        if waited < (every or interval):
            continue
        waited = 0.0
        try:
            sweeps = platform.sweeps
            sweeps.advance(owner=owner)
            every = next_drive_interval(sweeps.driver, every, interval)
        except Exception:
            log.warning("driving the sweeps failed (retried in %.1f s)", interval, exc_info=True)
            every = None


driver_lifespan = thread_lifespan(drive_sweeps, name="mlrig-sweep-driver")

router = APIRouter(prefix="/sweeps", tags=["sweeps"], lifespan=driver_lifespan)


# --- bodies -----------------------------------------------------------------------------

#: the statuses a sweep has (``running`` from its creation until it ends)
SweepStatus = Literal["running", "completed", "failed", "cancelled"]
ShortName = Annotated[str, Field(min_length=1, max_length=100)]
Step = Annotated[int, Field(ge=0, le=INT32_MAX)]


class MedianPruner(InputModel):
    """Stop a trial whose objective at a step is worse than the median of the other
    trials' at that step."""

    rule: Literal["median"] = Field(json_schema_extra={"enum": ["median"]})
    warmup_steps: Step = Field(default=0, description="Steps before any trial is judged.")
    min_trials: int = Field(
        default=5, ge=1, le=INT32_MAX, description="Peers that reported the step, at least."
    )
    interval: int = Field(default=1, ge=1, le=INT32_MAX, description="Judge every N steps.")


class AshaPruner(InputModel):
    """Asynchronous successive halving: at each rung (min_resource * reduction_factor **
    (k + min_early_stopping_rate) steps) only the best 1/reduction_factor go on."""

    rule: Literal["asha"] = Field(json_schema_extra={"enum": ["asha"]})
    min_resource: int = Field(default=1, ge=1, le=INT32_MAX, description="The first rung's step.")
    max_resource: int = Field(
        ge=1, le=INT32_MAX, description="The last step a trial trains to (its epochs)."
    )
    reduction_factor: int = Field(default=3, ge=2, le=100, description="eta.")
    min_early_stopping_rate: int = Field(default=0, ge=0, le=30)


Pruner = Annotated[MedianPruner | AshaPruner, Field(discriminator="rule")]


class SweepCreate(InputModel):
    """What ``SweepService.create`` takes: the search, its budget, and the trial template."""

    name: ExperimentName
    trainer: ShortName = Field(
        description="An installed trainer backend, e.g. sklearn.",
        json_schema_extra=lambda schema: schema.update(enum=usable_backend_names("trainers")),
    )
    space: JsonObject = Field(
        min_length=1,
        description='The search space: {"C": {"type": "float", "low": 0.001, "high": 1000, '
        '"log": true}, "kernel": {"type": "choice", "options": ["linear", "rbf"]}, ...} '
        "(docs/sweeps.md).",
    )
    objective: MetricName = Field(description="The metric to optimise, e.g. val_loss.")
    direction: Literal["minimize", "maximize"] = "minimize"
    objective_kind: Kind = Field(
        default="validation", description="Which kind of the metric counts."
    )
    strategy: ShortName | None = Field(
        default=None,
        description="A search strategy (default: [search] backend).",
        json_schema_extra=lambda schema: schema.update(
            anyOf=[{"enum": usable_backend_names("search"), "type": "string"}, {"type": "null"}]
        ),
    )
    strategy_options: JsonObject | None = Field(
        default=None, description='The strategy\'s options, e.g. {"optimizer": "NGOpt"}.'
    )
    max_trials: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="Trials at most (and at most the server's [search] max_trials).",
    )
    parallelism: int = Field(
        default=1, ge=1, le=MAX_PARALLELISM, description="Trials running at once."
    )
    max_seconds: int | None = Field(
        default=None, ge=1, le=MAX_SECONDS, description="Wall-time budget from the start."
    )
    pruner: Pruner | None = Field(
        default=None,
        description='{"rule": "median", ...} or {"rule": "asha", "max_resource": N, ...} '
        "(docs/sweeps.md).",
    )
    hyperparameters: JsonObject = Field(
        default_factory=dict, description="The base every trial's params are merged over."
    )
    dataset: JsonObject | None = Field(
        default=None,
        description='{"uri": "data/train.csv", "target": "label", ...}',
        json_schema_extra=DATASET_SCHEMA,
    )
    resources: Resources = Field(default_factory=Resources, description="Per trial.")
    priority: int = Field(default=0, ge=-1000, le=1000, description="Of every trial.")
    max_attempts: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Per trial: 2 retries a trial once when its worker dies (from its checkpoint).",
    )
    checkpoint_interval_s: int = Field(default=600, ge=0, le=7 * 86400)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="Default: random.")
    model_name: ModelName | None = Field(
        default=None, description="Where the best trial's model is registered (default: NAME)."
    )
    description: Description | None = None
    dry_run: bool = Field(
        default=False,
        description="Validate and answer the sweep it would be (a grid's count in "
        "planned_trials), creating nothing (200, not 201).",
    )


# --- routes -----------------------------------------------------------------------------


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a sweep (its first trials are queued at once)",
    responses={
        200: {"model": Sweep, "description": "dry_run: the sweep it would be, not created."},
        **errors(409, e409="An experiment or sweep of that name exists."),
    },
    response_model_exclude_unset=True,
)
def create_sweep(
    body: SweepCreate, request: Request, response: Response, platform: PlatformDep, actor: Writer
) -> Sweep:
    fields = body.model_dump()
    view = platform.sweeps.create(actor=actor, **fields)
    if body.dry_run:
        response.status_code = status.HTTP_200_OK  # nothing was created
    else:
        request.state.audit_resource_id = view["id"]
    return view  # type: ignore[return-value]


@router.get("", summary="List sweeps", response_model_exclude_unset=True)
def list_sweeps(
    platform: PlatformDep,
    _: Reader,
    status: SweepStatus | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    offset: Offset = 0,
    cursor: Cursor = None,
) -> Page[Sweep]:
    """One page, newest first: ``{"items": [...], "next_cursor": ...}``."""
    return offset_page(  # type: ignore[return-value]
        lambda n, skip: platform.sweeps.list(status=status, limit=n, offset=skip),
        limit=limit,
        offset=offset,
        cursor=cursor,
    )


@router.get(
    "/{id}",
    summary="Get a sweep (id, id prefix or name)",
    responses=errors(404),
    response_model_exclude_unset=True,
)
def get_sweep(id: str, platform: PlatformDep, _: Reader) -> Sweep:
    return platform.sweeps.get(id)  # type: ignore[return-value]


@router.get(
    "/{id}/trials",
    summary="List a sweep's trials, by number",
    responses=errors(404),
    response_model_exclude_unset=True,
)
def sweep_trials(
    id: str,
    platform: PlatformDep,
    _: Reader,
    state: TrialState | None = None,
    limit: int = Query(default=1000, ge=1, le=10_000),
    offset: Offset = 0,
    cursor: Cursor = None,
) -> Page[SweepTrial]:
    """One page: ``{"items": [...], "next_cursor": ...}``."""
    key = platform.sweeps.get(id)["id"]  # a 404 before paging
    return offset_page(  # type: ignore[return-value]
        lambda n, skip: platform.sweeps.trials(key, state=state, limit=n, offset=skip),
        limit=limit,
        offset=offset,
        cursor=cursor,
    )


@router.get(
    "/{id}/results",
    summary="A sweep's results: best trial, every trial, best-so-far, importances",
    responses=errors(404),
    response_model_exclude_unset=True,
)
def sweep_results(id: str, platform: PlatformDep, _: Reader) -> SweepResults:
    return platform.sweeps.results(id)  # type: ignore[return-value]


@router.post(
    "/{id}/stop",
    summary="Stop a sweep: cancel its queued and running trials",
    responses=errors(404, 409, e409="The sweep has ended already."),
    response_model_exclude_unset=True,
)
def stop_sweep(id: str, platform: PlatformDep, actor: Writer) -> Sweep:
    return platform.sweeps.stop(id, actor=actor)  # type: ignore[return-value]
