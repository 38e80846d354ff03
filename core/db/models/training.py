"""Training: experiments (which are also the job queue), their metrics and state
changes, and AutoML jobs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, Numeric, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from mlrig.db.models.base import Base, created_at, json_object, updated_at, uuid_pk
from mlrig.db.types import JSONType, UTCDateTime, utcnow

#: The states of a training experiment.
EXPERIMENT_STATUSES = ("created", "queued", "running", "completed", "failed", "cancelled")


class TrainingExperiment(Base):
    """A training run (the spec's ``training_experiments``) and its job-queue entry.

    Workers claim ``queued`` rows by ``priority`` (highest first), then ``queued_at``
    (oldest first), holding a lease (``lease_owner``, ``lease_expires_at``) that they
    renew with heartbeats; an expired lease sends the job back to the queue.
    """

    __tablename__ = "training_experiments"

    # --- the spec's columns
    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ml_models.id"))
    status: Mapped[str] = mapped_column(
        String(50), nullable=True, default="created", server_default="created"
    )
    configuration: Mapped[dict[str, Any]] = json_object()
    hyperparameters: Mapped[dict[str, Any]] = json_object()
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = created_at(nullable=True)
    updated_at: Mapped[datetime] = updated_at(nullable=True)
    # --- the training engine
    trainer: Mapped[str | None] = mapped_column(String(255))
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status_detail: Mapped[str | None] = mapped_column(Text)
    resources: Mapped[dict[str, Any]] = json_object(nullable=False)
    checkpoint_interval_s: Mapped[int] = mapped_column(Integer, default=600, server_default="600")
    early_stopping: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    last_checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    reproducibility: Mapped[dict[str, Any]] = json_object(nullable=False)
    # --- tracking (migration 0007): runs from user code, nested and grouped
    #: ``engine`` (a job the engine runs), ``tracking`` (a script's run), ``mlflow`` (made
    #: through the MLflow-compatible routes) or ``import`` (brought in by ``mlrig import``)
    origin: Mapped[str] = mapped_column(String(20), default="engine", server_default="engine")
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_experiments.id", ondelete="SET NULL"), index=True
    )
    #: the study a run belongs to (``start_run(experiment=...)``; a sweep's trials)
    group_name: Mapped[str | None] = mapped_column(String(255), index=True)
    tags: Mapped[dict[str, Any]] = json_object(nullable=False)


class RunGroup(Base):
    """The study runs are grouped under (``start_run(experiment="churn")``; MLflow's
    experiment); runs name it by ``group_name``."""

    __tablename__ = "run_groups"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[dict[str, Any]] = json_object(nullable=False)
    created_at: Mapped[datetime] = created_at()
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


Index("uq_run_groups_name", RunGroup.name, unique=True)


class RunArtifact(Base):
    """A file a run logged (``run.log_artifact``), stored by the artifact store."""

    __tablename__ = "run_artifacts"

    id: Mapped[uuid.UUID] = uuid_pk()
    experiment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("training_experiments.id", ondelete="CASCADE")
    )
    #: the path under the run, ``/``-separated (``plots/loss.png``)
    path: Mapped[str] = mapped_column(String(1024))
    storage_key: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: sha256 of the plain bytes
    checksum: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = created_at()


Index(
    "uq_run_artifacts_experiment_id_path", RunArtifact.experiment_id, RunArtifact.path, unique=True
)


Index("idx_training_experiments_model_id", TrainingExperiment.model_id)
# Experiments are looked up by name: two with one name would make that ambiguous.
Index("uq_training_experiments_name", TrainingExperiment.name, unique=True)
Index("idx_training_experiments_status", TrainingExperiment.status)
# The claim query: WHERE status = 'queued' ORDER BY priority DESC, queued_at.
Index(
    "ix_training_experiments_claim",
    TrainingExperiment.status,
    TrainingExperiment.priority.desc(),
    TrainingExperiment.queued_at,
)
# The requeue scan: running jobs whose lease has expired.
Index(
    "ix_training_experiments_lease",
    TrainingExperiment.status,
    TrainingExperiment.lease_expires_at,
)


class TrainingMetric(Base):
    """One metric point of an experiment (the spec's ``training_metrics``)."""

    __tablename__ = "training_metrics"

    id: Mapped[uuid.UUID] = uuid_pk()
    experiment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_experiments.id", ondelete="CASCADE")
    )
    epoch: Mapped[int | None] = mapped_column(Integer)
    step: Mapped[int | None] = mapped_column(Integer)
    metric_name: Mapped[str] = mapped_column(String(100))
    metric_value: Mapped[float | None] = mapped_column(Numeric(20, 10, asdecimal=False))
    metric_type: Mapped[str | None] = mapped_column(String(50))
    recorded_at: Mapped[datetime] = mapped_column(
        UTCDateTime, nullable=True, default=utcnow, server_default=func.now()
    )


Index("idx_training_metrics_experiment_epoch", TrainingMetric.experiment_id, TrainingMetric.epoch)
# A metric's history: WHERE experiment_id = ? AND metric_name = ? ORDER BY step.
Index(
    "ix_training_metrics_experiment_name_step",
    TrainingMetric.experiment_id,
    TrainingMetric.metric_name,
    TrainingMetric.step,
)


class ExperimentEvent(Base):
    """A state change of an experiment, with its time and a reason."""

    __tablename__ = "experiment_events"
    __table_args__ = (Index("ix_experiment_events_experiment_at", "experiment_id", "at"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    experiment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("training_experiments.id", ondelete="CASCADE")
    )
    old_status: Mapped[str | None] = mapped_column(String(50))
    new_status: Mapped[str] = mapped_column(String(50))
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, server_default=func.now())


class EngineWorker(Base):
    """A live ``mlrig worker`` (or a server's embedded one), by its heartbeat.

    Each worker refreshes its row while it runs and removes it when it stops; a row whose
    ``expires_at`` passed belongs to a worker that died. Waiting commands use it to say
    that no worker will ever pick a queued job up.
    """

    __tablename__ = "engine_workers"

    #: the worker id jobs name as their ``lease_owner`` (host:pid:suffix)
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: the last heartbeat plus the worker's lease: silent past it, the worker is dead
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


Index("ix_engine_workers_expires_at", EngineWorker.expires_at)


class AutoMLJob(Base):
    """An AutoML search (the spec's ``automl_jobs``)."""

    __tablename__ = "automl_jobs"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(255))
    task_type: Mapped[str] = mapped_column(String(100))
    dataset_config: Mapped[dict[str, Any]] = json_object()
    target_column: Mapped[str | None] = mapped_column(String(255))
    optimization_metric: Mapped[str | None] = mapped_column(String(100))
    time_budget_minutes: Mapped[int | None] = mapped_column(
        Integer, default=60, server_default="60"
    )
    status: Mapped[str] = mapped_column(
        String(50), nullable=True, default="queued", server_default="queued"
    )
    best_model_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ml_models.id"))
    results: Mapped[dict[str, Any]] = json_object()
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = created_at(nullable=True)
    updated_at: Mapped[datetime] = updated_at(nullable=True)


Index("idx_automl_jobs_status", AutoMLJob.status)
Index("idx_automl_jobs_created_at", AutoMLJob.created_at.desc())
