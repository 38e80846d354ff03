"""Hyperparameter sweeps (migration 0008).

A sweep is an experiment (``training_experiments.origin = 'sweep'``, its status the
sweep's) with one ``sweeps`` row of its own settings and strategy state, and one
``sweep_trials`` row per trial the strategy asked for. Each trial runs as an engine
experiment nested in the sweep (``parent_id``, ``group_name`` = the sweep's name).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from mlrig.db.models.base import Base, created_at, json_object, updated_at, uuid_pk
from mlrig.db.types import GUID, JSONType, UTCDateTime

#: the states of one trial of a sweep
TRIAL_STATES = ("queued", "running", "completed", "failed", "pruned", "cancelled")


class Sweep(Base):
    """The settings and strategy state of a sweep; ``id`` is its experiment's id."""

    __tablename__ = "sweeps"

    id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("training_experiments.id", ondelete="CASCADE"), primary_key=True
    )
    #: what every trial is made from: trainer, hyperparameters (the base the trial's
    #: params are merged over), dataset, resources, priority, max_attempts,
    #: checkpoint_interval_s, model_name
    template: Mapped[dict[str, Any]] = json_object(nullable=False)
    #: the canonical dict form of the search space (SearchSpace.to_dict)
    space: Mapped[dict[str, Any]] = json_object(nullable=False)
    strategy: Mapped[str] = mapped_column(String(100))
    strategy_options: Mapped[dict[str, Any]] = json_object(nullable=False)
    #: SearchStrategy.save(), written in the transaction of every ask and tell
    strategy_state: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: bumped with every save: a driver holding an older copy reloads it
    state_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    objective: Mapped[str] = mapped_column(String(100))
    objective_kind: Mapped[str] = mapped_column(
        String(20), default="validation", server_default="validation"
    )
    direction: Mapped[str] = mapped_column(String(10))
    max_trials: Mapped[int] = mapped_column(Integer)
    parallelism: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: wall-time budget from the sweep's start, in seconds (None: trials only)
    max_seconds: Mapped[int | None] = mapped_column(Integer)
    #: {"rule": "median" | "asha", ...} (mlrig.search.pruning)
    pruner: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    trials_asked: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: the sweep_trials row of the best trial so far (no foreign key: the two tables
    #: would refer to each other)
    best_trial_id: Mapped[uuid.UUID | None] = mapped_column(GUID)
    best_value: Mapped[float | None] = mapped_column(Double)
    #: the version registered from the best trial when the sweep ended
    model_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ml_models.id", ondelete="SET NULL")
    )
    #: which process drives the sweep now (a lease, as jobs have)
    driver_owner: Mapped[str | None] = mapped_column(String(255))
    driver_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class SweepTrial(Base):
    """One trial a sweep's strategy asked for, and what came of it."""

    __tablename__ = "sweep_trials"

    id: Mapped[uuid.UUID] = uuid_pk()
    sweep_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    #: the strategy's Trial.number
    number: Mapped[int] = mapped_column(Integer)
    experiment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_experiments.id", ondelete="SET NULL"), index=True
    )
    params: Mapped[dict[str, Any]] = json_object(nullable=False)
    #: the strategy's Trial.extra
    extra: Mapped[dict[str, Any]] = json_object(nullable=False)
    state: Mapped[str] = mapped_column(String(20), default="queued", server_default="queued")
    #: the objective's value (the last reported one for a pruned trial)
    value: Mapped[float | None] = mapped_column(Double)
    #: pruned trials: the rung (0-based) and the step they stopped at
    rung: Mapped[int | None] = mapped_column(Integer)
    pruned_at_step: Mapped[int | None] = mapped_column(Integer)
    #: whether the strategy has been told this trial's outcome (exactly once)
    told: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    #: why it failed or was pruned
    detail: Mapped[str | None] = mapped_column(Text)
    #: artifact key of the trial's model, kept for registering the best one
    candidate_key: Mapped[str | None] = mapped_column(String(1024))
    duration_s: Mapped[float | None] = mapped_column(Double)
    created_at: Mapped[datetime] = created_at()
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


Index("uq_sweep_trials_sweep_id_number", SweepTrial.sweep_id, SweepTrial.number, unique=True)
Index("ix_sweep_trials_sweep_id_state", SweepTrial.sweep_id, SweepTrial.state)
