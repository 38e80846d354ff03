"""Sweeps as plain dicts: create, list, show, stop, trials, results; ``advance`` drives
them. The API, the CLI and :class:`mlrig.Client` are thin layers over it.

Views (what every method returns, the REST API's bodies):

sweep::

    {"id", "name", "description", "status", "status_detail", "trainer", "strategy",
     "strategy_options", "objective", "objective_kind", "direction", "max_trials",
     "parallelism", "max_seconds", "pruner", "seed", "space", "template",
     "planned_trials",            # the grid's count, else max_trials
     "trials": {"total", "queued", "running", "completed", "failed", "pruned",
                "cancelled"},
     "best": {"trial_id", "number", "experiment_id", "value", "params"} | None,
     "model_version_id", "created_by", "created_at", "started_at", "completed_at",
     "strategy_info"}             # SearchStrategy.describe()

trial::

    {"id", "number", "experiment_id", "experiment_name", "params", "state", "value",
     "rung", "pruned_at_step", "detail", "duration_s", "created_at", "completed_at"}

results::

    {"sweep_id", "objective", "direction", "best": <as above>,
     "trials": [trial...],        # every trial, by number
     "best_so_far": [{"number", "value", "best"}],   # in completion order
     "importances": {"method", "params": {name: score}} | {"method", "params": {},
                     "reason": "..."}}
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlrig.platform import Platform
    from mlrig.security import Principal

View = dict[str, Any]
Views = list[dict[str, Any]]


class SweepService:
    """Sweeps over the platform's database, queue and experiments."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def create(
        self,
        *,
        name: str,
        trainer: str,
        space: dict[str, Any],
        objective: str,
        actor: Principal,
        direction: str = "minimize",
        objective_kind: str = "validation",
        strategy: str | None = None,
        strategy_options: dict[str, Any] | None = None,
        max_trials: int = 20,
        parallelism: int = 1,
        max_seconds: int | None = None,
        pruner: dict[str, Any] | None = None,
        hyperparameters: dict[str, Any] | None = None,
        dataset: dict[str, Any] | None = None,
        resources: dict[str, int] | None = None,
        priority: int = 0,
        max_attempts: int = 1,
        checkpoint_interval_s: int = 600,
        seed: int | None = None,
        model_name: str | None = None,
        description: str | None = None,
        dry_run: bool = False,
    ) -> View:
        """Validate everything and start the sweep (status ``running``; the first
        ``parallelism`` trials are queued at once). ``dry_run``: validate and return the
        view it would have (``planned_trials`` says a grid's count), creating nothing.

        :raises ValidationError: a bad space, strategy, option, objective, budget...
        :raises ConflictError: an experiment or sweep with this name exists.
        """
        raise NotImplementedError

    def list(self, *, status: str | None = None, limit: int = 100, offset: int = 0) -> Views:
        """Sweeps, newest first."""
        raise NotImplementedError

    def get(self, ref: str | uuid.UUID) -> View:
        """A sweep (an id, a unique id prefix or a name)."""
        raise NotImplementedError

    def trials(
        self, ref: str | uuid.UUID, *, state: str | None = None, limit: int = 1000, offset: int = 0
    ) -> Views:
        """A sweep's trials by number."""
        raise NotImplementedError

    def results(self, ref: str | uuid.UUID) -> View:
        """Best trial, all trials, best-so-far curve and parameter importances."""
        raise NotImplementedError

    def stop(self, ref: str | uuid.UUID, *, actor: Principal) -> View:
        """End the sweep now: cancel its queued and running trials; status
        ``cancelled``. Stopping an ended sweep is a :class:`ConflictError`."""
        raise NotImplementedError

    def advance(self, *, owner: str) -> int:
        """Drive every running sweep one step: tell the strategy about trials that
        ended, queue new trials while fewer than ``parallelism`` are outstanding and the
        budget allows, end sweeps whose budget is spent. Returns how many trials were
        told or queued. Safe to call from many processes at once (one drives a sweep at
        a time)."""
        return 0  # scaffolding: owner D implements the driver
