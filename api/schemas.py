"""Response models: the shape of every JSON answer under ``/api/ml``.

They describe what the services return (the ``*_view`` functions), so the OpenAPI schema
tells clients, generated SDKs and fuzzers the real shape. Every model allows extra keys:
a field a service adds reaches the client before the schema names it, and is declared
here in the same change (the schemathesis run checks the schema against real answers).
Times are ISO 8601 strings with an offset, kept as the service wrote them.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from mlrig.db.models import STAGES
from mlrig.security.roles import ROLES

T = TypeVar("T")

Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Stage = Literal[STAGES]  # type: ignore[valid-type]
Role = Literal[ROLES]  # type: ignore[valid-type]
ExperimentStatus = Literal["created", "queued", "running", "completed", "failed", "cancelled"]


class Out(BaseModel):
    """Base of the response models: extra keys pass through."""

    model_config = ConfigDict(extra="allow")


# --- envelopes ----------------------------------------------------------------------


class Page(Out, Generic[T]):
    """One page of a list: ``next_cursor`` is null on the last page, else pass it as
    ``cursor`` to get the next one."""

    items: list[T]
    next_cursor: str | None = Field(description="Null on the last page.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable, e.g. not_found, validation_error.")
    message: str = Field(description="What is wrong and how to fix it, for a person.")
    details: dict[str, Any] = Field(description="Structured context; {} when none.")


class ErrorBody(BaseModel):
    """The one shape of every error answer."""

    error: ErrorDetail


# --- registry -----------------------------------------------------------------------


class Artifact(Out):
    path: str
    type: str
    size: int
    sha256: str | None
    compression: str | None
    encrypted: bool


class Lineage(Out):
    source_experiment_id: str | None
    source_run: str | None
    parent_version_id: str | None
    datasets: list[dict[str, Any]]
    code_version: str | None
    parent: dict[str, Any] | None = Field(default=None, description="On a single version.")
    experiment: dict[str, Any] | None = Field(default=None, description="On a single version.")
    derived: list[dict[str, Any]] = Field(default_factory=list)
    deployments: list[dict[str, Any]] = Field(default_factory=list)


class Version(Out):
    id: str
    model_id: str
    name: str = Field(description="The model's name.")
    version: str
    description: str | None
    framework: str | None
    model_type: str | None
    stage: str = Field(description=f"One of {', '.join(STAGES)}.")
    status: str
    tags: dict[str, str]
    params: dict[str, Any]
    metrics: dict[str, Any]
    signature: dict[str, Any] | None
    requirements: list[str]
    lineage: Lineage
    created_by: str | None
    created_at: Timestamp | None
    updated_at: Timestamp | None
    aliases: list[str] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list, description="On a single version.")


class VersionBrief(Out):
    version: str
    stage: str
    created_at: Timestamp | None


class Model(Out):
    id: str
    name: str
    description: str | None
    tags: dict[str, str]
    created_by: str | None
    created_at: Timestamp | None
    updated_at: Timestamp | None
    version_count: int | None = None
    latest_version: str | None = None
    aliases: dict[str, str] = Field(default_factory=dict, description="Alias -> version.")
    versions: list[VersionBrief] = Field(
        default_factory=list, description="On a single model: its live versions."
    )


class Deleted(Out):
    """What a delete removed (soft: restorable until purged)."""

    id: str
    name: str
    version: str | None = Field(default=None, description="A deleted version's name.")
    deleted: bool
    forced: bool | None = Field(
        default=None, description="An admin deleted a version in production, aliased or deployed."
    )
    versions: list[str] | None = Field(default=None, description="On a model: its versions.")
    removed_aliases: list[str] | None = Field(default=None, description="On a version.")
    deleted_at: Timestamp | None = None
    purge_after: Timestamp | None = Field(
        default=None, description="From then on `mlrig models purge` removes it for good."
    )


class DeletedEntry(Out):
    """A deleted model or version (``kind``), restorable until purged."""

    kind: Literal["model", "version"]
    id: str
    name: str
    version: str | None = None
    versions: int | None = Field(default=None, description="On a model: versions deleted with it.")
    stage: Stage | None = None
    deleted_at: Timestamp | None
    purge_after: Timestamp | None


class AliasSetResult(Out):
    model: str
    alias: str
    version: str
    previous: str | None


class AliasDeleted(Out):
    model: str
    alias: str
    deleted: bool


class ApprovalRequest(Out):
    id: str
    model: str
    version: str
    version_id: str
    target_stage: str
    status: Literal["pending", "approved", "rejected"]
    requested_by: str | None
    requested_at: Timestamp | None
    decided_by: str | None
    decided_at: Timestamp | None
    comment: str | None
    archived_versions: list[str] = Field(
        default_factory=list, description="After an approval: versions moved out of the stage."
    )


class StageResult(Out):
    """``moved`` (with from/to) or ``pending_approval`` (with the request)."""

    status: Literal["moved", "pending_approval"]
    version: str | None = None
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    request: ApprovalRequest | None = None


class Evaluation(Out):
    id: str
    model: str
    version: str
    dataset_uri: str
    dataset_hash: str | None
    runtime: str
    task: str
    runtime_info: dict[str, Any]
    metrics: dict[str, float]
    created_at: Timestamp | None


class VersionComparison(Out):
    model: str
    versions: list[dict[str, Any]] = Field(
        description="Per version: version, stage, aliases, registered_metrics, evaluation."
    )
    metrics: dict[str, dict[str, float | None]] = Field(description="Metric -> version -> value.")


# --- users, tokens, audit -----------------------------------------------------------


class User(Out):
    id: str
    name: str
    role: str = Field(description=f"One of {', '.join(ROLES)}.")
    email: str | None
    disabled: bool
    created_at: Timestamp | None


class Me(Out):
    name: str
    role: str


class Token(Out):
    id: str
    name: str
    user: str
    prefix: str
    created_at: Timestamp | None
    last_used_at: Timestamp | None
    expires_at: Timestamp | None
    revoked_at: Timestamp | None
    scopes: list[str] | None = Field(
        default=None,
        description="What the token may do within its user's role (null: all the role allows).",
    )


class NewToken(Token):
    token: str = Field(description="The secret, shown only in this answer.")


class AuditEntry(Out):
    id: str
    at: Timestamp
    actor: str
    action: str
    resource_type: str | None
    resource_id: str | None
    outcome: str
    request_id: str | None
    details: dict[str, Any]


# --- experiments --------------------------------------------------------------------


class ExperimentEvent(Out):
    old: str | None
    new: str
    detail: str | None
    at: Timestamp | None


class ExperimentSummary(Out):
    id: str
    name: str
    description: str | None
    trainer: str | None = Field(description="The engine's trainer (null for tracked runs).")
    status: ExperimentStatus
    status_detail: str | None
    priority: int
    attempts: int
    max_attempts: int
    model_name: str | None
    model_version_id: str | None = Field(
        default=None, description="The version the run registered (null until then)."
    )
    model_id: str | None = Field(
        default=None, deprecated=True, description="Old name of model_version_id."
    )
    created_by: str | None
    created_at: Timestamp | None
    queued_at: Timestamp | None
    started_at: Timestamp | None
    completed_at: Timestamp | None
    updated_at: Timestamp | None
    origin: Literal["engine", "tracking", "mlflow", "import", "sweep"] = Field(
        default="engine",
        description="engine: a job the engine runs; tracking: a script's run "
        "(mlrig.start_run); mlflow: made through the MLflow routes; import: mlrig import; "
        "sweep: a hyperparameter sweep (/sweeps; its trials are engine runs nested in it).",
    )
    group: str | None = Field(default=None, description="The run group (study) it is in.")
    parent_id: str | None = Field(default=None, description="The run it is nested in.")
    tags: dict[str, str] = Field(default_factory=dict)


class Experiment(ExperimentSummary):
    hyperparameters: dict[str, Any]
    dataset: dict[str, Any] | None
    resources: dict[str, Any]
    checkpoint_interval_s: int
    early_stopping: dict[str, Any] | None
    seed: int | None
    lease_owner: str | None
    heartbeat_at: Timestamp | None
    last_checkpoint: dict[str, Any] | None = Field(
        default=None, description="The trainer's last checkpoint (step, key, time)."
    )
    reproducibility: dict[str, Any]
    result: dict[str, Any] | None
    events: list[ExperimentEvent] = Field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Latest point per metric name (a non-finite value as "NaN", '
        '"Infinity" or "-Infinity").',
    )

    @field_serializer("metrics")
    def _wire_metrics(self, metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from mlrig.experiments.points import wire_value

        return {
            name: {**point, "value": wire_value(point.get("value"))}
            if isinstance(point.get("value"), float)
            else point
            for name, point in metrics.items()
        }


class MetricSeries(Out):
    """Columns of one metric's history; only the requested ``fields`` are present."""

    steps: list[int | None] | None = None
    values: list[float | Literal["NaN", "Infinity", "-Infinity"]] | None = None
    epochs: list[int | None] | None = None
    kinds: list[str | None] | None = None
    times: list[Timestamp] | None = None


class MetricHistory(Out):
    experiment_id: str
    count: int = Field(description="Points returned.")
    metrics: dict[str, MetricSeries]


class MetricsWritten(Out):
    experiment_id: str
    written: int


class ExperimentComparison(Out):
    experiments: list[dict[str, Any]] = Field(description="id, name, status, trainer.")
    hyperparameters: dict[str, list[Any]] = Field(description="Name -> value per experiment.")
    metrics: dict[str, list[float | Literal["NaN", "Infinity", "-Infinity"] | None]] = Field(
        description="Name -> last value each."
    )
    differing: list[str] = Field(description="Hyperparameters whose values differ.")

    @field_serializer("metrics")
    def _wire_metrics(self, metrics: dict[str, list[Any]]) -> dict[str, list[Any]]:
        from mlrig.experiments.points import wire_values

        return {name: wire_values(values) for name, values in metrics.items()}


# --- sweeps -------------------------------------------------------------------------

#: a number that may be non-finite on the wire (JSON has no NaN: mlrig.nonfinite)
WireFloat = float | Literal["NaN", "Infinity", "-Infinity"]
TrialState = Literal["queued", "running", "completed", "failed", "pruned", "cancelled"]


def _wire(value: Any) -> Any:
    from mlrig.nonfinite import to_json

    return to_json(value)


class SweepTrialCounts(Out):
    """Trials by state (``total``: all the strategy asked for)."""

    total: int
    queued: int
    running: int
    completed: int
    failed: int
    pruned: int
    cancelled: int


class SweepBest(Out):
    """The best completed trial so far."""

    trial_id: str
    number: int
    experiment_id: str | None
    value: WireFloat
    params: dict[str, Any]

    @field_serializer("value")
    def _wire_value(self, value: Any) -> Any:
        return _wire(value)


class Sweep(Out):
    """A hyperparameter sweep: its settings, progress and best trial."""

    id: str | None = Field(description="Null in a dry run's answer (nothing was created).")
    name: str
    description: str | None
    status: Literal["running", "completed", "failed", "cancelled", "dry_run"] = Field(
        description="running from its creation until it ends; dry_run in a dry run's answer."
    )
    status_detail: str | None
    trainer: str
    strategy: str
    strategy_options: dict[str, Any]
    objective: str = Field(description="The metric the trials report.")
    objective_kind: str
    direction: Literal["minimize", "maximize"]
    max_trials: int
    parallelism: int
    max_seconds: int | None = Field(description="Wall-time budget (null: trials only).")
    pruner: dict[str, Any] | None
    seed: int | None
    space: dict[str, Any] = Field(description="The search space (canonical form).")
    template: dict[str, Any] = Field(description="What every trial is made from.")
    planned_trials: int | None = Field(
        description="A grid's count (at most max_trials), else max_trials."
    )
    grid_points: int | None = Field(
        default=None, description="A dry run of a grid: the grid's full count."
    )
    trials: SweepTrialCounts
    best: SweepBest | None
    model_version_id: str | None = Field(description="Registered from the best trial.")
    created_by: str | None
    created_at: Timestamp | None
    started_at: Timestamp | None
    completed_at: Timestamp | None
    strategy_info: dict[str, Any] = Field(description="What the strategy says of itself.")


class SweepTrial(Out):
    """One trial: the params the strategy asked for and what came of them."""

    id: str
    number: int
    experiment_id: str | None
    experiment_name: str | None
    params: dict[str, Any]
    state: TrialState
    value: WireFloat | None = Field(description="The objective (a pruned trial: its last).")
    rung: int | None = Field(description="Pruned trials: the rung they stopped at.")
    pruned_at_step: int | None
    detail: str | None
    duration_s: float | None
    created_at: Timestamp | None
    completed_at: Timestamp | None

    @field_serializer("value")
    def _wire_value(self, value: Any) -> Any:
        return _wire(value)


class BestSoFarPoint(Out):
    number: int
    value: WireFloat
    best: WireFloat

    @field_serializer("value", "best")
    def _wire_value(self, value: Any) -> Any:
        return _wire(value)


class SweepImportances(Out):
    method: str = Field(description="How the scores were computed.")
    params: dict[str, float] = Field(description="Parameter -> score; the scores sum to 1.")
    reason: str | None = Field(default=None, description="Why there are no scores.")


class SweepResults(Out):
    sweep_id: str
    objective: str
    direction: Literal["minimize", "maximize"]
    best: SweepBest | None
    trials: list[SweepTrial] = Field(description="Every trial, by number.")
    best_so_far: list[BestSoFarPoint] = Field(description="In completion order.")
    importances: SweepImportances


# --- health -------------------------------------------------------------------------


class Health(Out):
    version: str | None = Field(default=None, description="With a token only.")
    status: Literal["ok", "degraded", "error"]
    checks: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per component; details need a token."
    )


# --- deployments --------------------------------------------------------------------

DeploymentStatus = Literal["pending", "deploying", "active", "inactive", "failed"]
Environment = Literal["development", "staging", "production"]


class DeploymentReplicas(Out):
    min: int = Field(description="Replicas kept at least (autoscaling floor).")
    max: int = Field(description="Replicas at most (autoscaling ceiling).")


class DeploymentBatching(Out):
    max_batch_size: int = Field(description="Rows per micro-batch at most.")
    max_latency_ms: float = Field(description="Longest wait for more rows (ms).")


class DeploymentTraffic(Out):
    version: str
    version_id: str
    percent: float = Field(description="Share of requests this canary answers (0-100).")


class DeploymentShadow(Out):
    version: str
    version_id: str


class DeploymentFeatures(Out):
    refs: list[str] = Field(description="Feature references (view:name): the model's columns.")
    entity_keys: list[str] = Field(description="The key fields each request row sends.")
    request_fields: list[str] = Field(
        description="Request-time values, columns after the features."
    )
    fill_value: float | dict[str, float] | None = Field(
        description="What a missing feature value becomes (null: the request is refused, 422)."
    )


class Deployment(Out):
    """A model version served at an endpoint."""

    id: str
    name: str
    model: str | None = Field(description="The model's name.")
    model_id: str | None = Field(description="The registered model's id.")
    version: str = Field(description="The primary version (what the alias points at now).")
    version_id: str | None
    alias: str | None = Field(description="The alias followed (null: a pinned version).")
    runtime: str = Field(description="'auto' or a runtime name, as asked.")
    resolved_runtime: str | None = Field(description="The runtime serving the primary.")
    environment: Environment | None
    status: DeploymentStatus
    status_reason: str | None = Field(description="Why it failed, stopped or kept a version.")
    replicas: DeploymentReplicas
    batching: DeploymentBatching
    resources: dict[str, Any]
    traffic: list[DeploymentTraffic] = Field(description="Canary versions and their share.")
    shadow: DeploymentShadow | None = Field(description="Gets a copy of every request.")
    allow_nan: bool = Field(description="Whether NaN inputs are accepted.")
    features: DeploymentFeatures | None = Field(
        default=None,
        description="Feature-backed: requests send entity keys, the online store the features.",
    )
    endpoint_url: str = Field(description="Where predictions are answered (POST).")
    created_by: str | None
    created_at: Timestamp | None
    updated_at: Timestamp | None
    deployed_at: Timestamp | None = Field(description="When it last became active.")
    deleted_at: Timestamp | None = Field(default=None, description="Set on a deleted one.")
