"""Sweeps as plain dicts: create, list, show, stop, trials, results; ``advance`` drives
them. The API, the CLI and :class:`mlrig.Client` are thin layers over it.

Views (what every method returns, the REST API's bodies):

sweep::

    {"id", "name", "description", "status", "status_detail", "trainer", "strategy",
     "strategy_options", "objective", "objective_kind", "direction", "max_trials",
     "parallelism", "max_seconds", "pruner", "seed", "space", "template",
     "planned_trials",            # the grid's count (at most max_trials), else max_trials
     "trials": {"total", "queued", "running", "completed", "failed", "pruned",
                "cancelled"},
     "best": {"trial_id", "number", "experiment_id", "value", "params"} | None,
     "model_version_id", "created_by", "created_at", "started_at", "completed_at",
     "strategy_info"}             # SearchStrategy.describe() (list(): {"name"}, but
                                  # a grid's in full)

A dry run's view has ``"id": None`` and ``"status": "dry_run"``.

trial::

    {"id", "number", "experiment_id", "experiment_name", "params", "state", "value",
     "rung", "pruned_at_step", "detail", "duration_s", "created_at", "completed_at"}

results::

    {"sweep_id", "objective", "direction", "best": <as above>,
     "trials": [trial...],        # every trial, by number
     "best_so_far": [{"number", "value", "best"}],   # in completion order
     "importances": {"method", "params": {name: score}} | {"method", "params": {},
                     "reason": "..."}}

A sweep is an experiment of origin ``sweep`` (``mlrig experiments list`` shows it with
that origin) whose status is the sweep's: ``running`` from its creation until it ends
``completed``, ``failed`` or ``cancelled``. It holds no lease and is never queued, so the
engine never claims or requeues it. Its trials are ordinary engine experiments nested in
it (``parent_id``) and grouped under its name; :mod:`mlrig.sweeps.driver` makes them.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from mlrig import validation as v
from mlrig.db.models import Sweep, SweepTrial, TrainingExperiment
from mlrig.errors import ConfigError, ConflictError, NotFoundError, ValidationError
from mlrig.experiments import rules
from mlrig.experiments.views import iso

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mlrig.contracts.search import SearchStrategy
    from mlrig.platform import Platform
    from mlrig.search.space import SearchSpace
    from mlrig.security import Principal

View = dict[str, Any]
Views = list[dict[str, Any]]

DIRECTIONS = ("minimize", "maximize")
MAX_PARALLELISM = 64
#: the longest wall-time budget (30 days)
MAX_SECONDS = 30 * 86400
MAX_OBJECTIVE_LENGTH = 100
#: the sweep states that are final
ENDED = ("completed", "failed", "cancelled")
#: a trial's state while its experiment has not ended, by the experiment's status
_LIVE_STATES = {"created": "queued", "queued": "queued", "running": "running"}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _as_uuid(ref: object) -> uuid.UUID | None:
    if isinstance(ref, uuid.UUID):
        return ref
    try:
        return uuid.UUID(str(ref))
    except ValueError:
        return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def check_pruner(rule: object) -> dict[str, Any] | None:
    """A pruning rule, normalised by :func:`mlrig.search.pruning.check_pruner`."""
    if rule is None or rule == {}:
        return None
    try:
        from mlrig.search.pruning import check_pruner as check
    except ImportError:  # pragma: no cover - the pruning module is part of the package
        check = None
    if check is None:  # pragma: no cover
        if not isinstance(rule, dict) or rule.get("rule") not in ("median", "asha"):
            msg = f"pruner must be an object with rule 'median' or 'asha', got {rule!r}"
            raise ValidationError(msg, details={"field": "pruner"})
        return rules.check_json("pruner", rule)
    return check(rule)


def load_strategy(platform: Platform, name: str, options: dict[str, Any]) -> SearchStrategy:
    """The search strategy ``name`` built from ``options``; a bad name or option is a
    :class:`ValidationError` (the message lists what is installed / allowed)."""
    from mlrig.backends import backend_names, load_backend

    installed = backend_names("search")
    if name not in installed:
        msg = f"unknown search strategy {name!r}; installed: {', '.join(installed) or 'none'}"
        raise ValidationError(msg, details={"field": "strategy", "installed": installed})
    cls = load_backend("search", name)
    try:
        return cls.from_options(options, where=f"search.{name}")
    except ValidationError:
        raise
    except ConfigError as exc:  # an option the strategy's model refused: the user's input,
        # not the config file's ("config error: search.random.bogus: ..." misleads)
        reason = exc.message.removeprefix("config error: ")
        msg = f"bad strategy option: {reason}"
        raise ValidationError(msg, details={"field": "strategy_options"}) from None


#: the most trainer checks one create runs (a sample point and choices' options)
MAX_CHECKED_POINTS = 50


def _check_points(space: SearchSpace, sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The points the trainer's ``check`` sees at create: ``sample`` and, for each
    unconditional choice, ``sample`` with each of its other options (bounded)."""
    from mlrig.search.space import Choice

    points = [sample]
    for name, param in space.params.items():
        if not isinstance(param, Choice) or param.when or name not in sample:
            continue
        for option in param.options:
            if len(points) >= MAX_CHECKED_POINTS:
                return points
            if option != sample[name]:
                points.append(space.active({**sample, name: option}))
    return points


def trial_seed(seed: int | None, number: int) -> int | None:
    """The seed of trial ``number``: derived from the sweep's, distinct per trial."""
    if seed is None:
        return None
    import hashlib

    digest = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


class SweepService:
    """Sweeps over the platform's database, queue and experiments."""

    def __init__(self, platform: Platform) -> None:
        from mlrig.sweeps.driver import SweepDriver

        self.platform = platform
        self.driver = SweepDriver(self)

    @property
    def db(self) -> Any:
        return self.platform.db

    # --- creating -----------------------------------------------------------------------

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
        max_attempts: int = 2,
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
        from mlrig.search.space import SearchSpace

        settings = self.platform.settings
        if not isinstance(space, dict):
            msg = "space must be an object of parameter name -> range, choice or value"
            raise ValidationError(msg, details={"field": "space"})
        parsed = SearchSpace.from_dict(space)
        if direction not in DIRECTIONS:
            msg = f"direction must be 'minimize' or 'maximize', got {direction!r}"
            raise ValidationError(msg, details={"field": "direction"})
        if objective_kind not in rules.METRIC_KINDS:
            msg = (
                f"objective_kind must be one of {', '.join(rules.METRIC_KINDS)}, "
                f"got {objective_kind!r}"
            )
            raise ValidationError(msg, details={"field": "objective_kind"})
        v.check_text(objective, field="objective", min_length=1, max_length=MAX_OBJECTIVE_LENGTH)
        fields = {
            "name": rules.check_name(name),
            "trainer": rules.check_trainer(trainer),
            "description": v.check_optional_text(
                description, field="description", max_length=v.MAX_DESCRIPTION_LENGTH
            ),
            "hyperparameters": rules.check_json("hyperparameters", hyperparameters or {}),
            "dataset": rules.check_dataset(dataset),
            "resources": rules.check_resources(resources),
            "priority": rules.check_int("priority", priority, low=-1000, high=1000),
            "checkpoint_interval_s": rules.check_int(
                "checkpoint_interval_s", checkpoint_interval_s, low=0, high=7 * 86400
            ),
            "early_stopping": None,
            "max_attempts": rules.check_int("max_attempts", max_attempts, low=1, high=100),
            "model_name": rules.check_model_name(model_name),
        }
        max_trials = rules.check_int(
            "max_trials", max_trials, low=1, high=settings.search.max_trials
        )
        parallelism = rules.check_int("parallelism", parallelism, low=1, high=MAX_PARALLELISM)
        if max_seconds is not None:
            max_seconds = rules.check_int("max_seconds", max_seconds, low=1, high=MAX_SECONDS)
        checked_pruner = check_pruner(pruner)
        sweep_seed, seed_source = rules.check_seed(seed)
        strategy_name = strategy or settings.search.backend
        options = {
            **settings.search.backend_options(strategy_name),
            **rules.check_json("strategy_options", strategy_options or {}),
        }
        # the trials' merged hyperparameters must fit the experiments' bounds: checked
        # before the strategy starts (nevergrad takes a minute over 1000 parameters)
        rules.check_json(
            "hyperparameters", {**fields["hyperparameters"], **dict.fromkeys(parsed.names)}
        )
        started, sample, grid_points = self._start_strategy(
            strategy_name, options, parsed, direction, sweep_seed, parallelism, max_trials
        )
        # what would fail every trial is refused now: the trainer's check of a sample
        # point, and of every option of each choice (one the sample missed fails too)
        for point in _check_points(parsed, sample):
            self.platform.experiments._check_trainable(
                {
                    **fields,
                    "hyperparameters": rules.check_json(
                        "hyperparameters", {**fields["hyperparameters"], **point}
                    ),
                }
            )
        template = {
            "trainer": fields["trainer"],
            "hyperparameters": fields["hyperparameters"],
            "dataset": fields["dataset"],
            "resources": fields["resources"],
            "priority": fields["priority"],
            "max_attempts": fields["max_attempts"],
            "checkpoint_interval_s": fields["checkpoint_interval_s"],
            "model_name": fields["model_name"],
        }
        planned = min(grid_points, max_trials) if grid_points is not None else max_trials
        settings_row = {
            "template": template,
            "space": parsed.to_dict(),
            "strategy": strategy_name,
            "strategy_options": options,
            "objective": objective,
            "objective_kind": objective_kind,
            "direction": direction,
            "max_trials": max_trials,
            "parallelism": parallelism,
            "max_seconds": max_seconds,
            "pruner": checked_pruner,
            "seed": sweep_seed,
        }
        if dry_run:
            return {
                "id": None,
                "name": fields["name"],
                "description": fields["description"],
                "status": "dry_run",
                "status_detail": None,
                "trainer": fields["trainer"],
                **{k: val for k, val in settings_row.items() if k != "template"},
                "template": template,
                "planned_trials": planned,
                "grid_points": grid_points,
                "trials": dict.fromkeys(("total", *_STATE_KEYS), 0),
                "best": None,
                "model_version_id": None,
                "created_by": actor.name,
                "created_at": None,
                "started_at": None,
                "completed_at": None,
                "strategy_info": started.describe(),
            }
        with self.db.session() as session:  # before the group is made for the name
            self._check_free(session, fields["name"])
        # the trials are grouped under the sweep's name (a run group, made on first use)
        self.platform.experiments.ensure_group(fields["name"])
        sweep_id = self._insert(
            fields, settings_row, started.save(), actor, sweep_seed, seed_source
        )
        self.driver.step(sweep_id, owner=f"create:{actor.name}")
        return self.get(sweep_id)

    def _start_strategy(
        self,
        name: str,
        options: dict[str, Any],
        space: SearchSpace,
        direction: str,
        seed: int,
        parallelism: int,
        max_trials: int,
    ) -> tuple[SearchStrategy, dict[str, Any], int | None]:
        """Start the strategy once (a bad optimizer, an oversized grid fail here); return
        it unasked (restarted from its first state), a sample point, the grid's size."""
        limit = self.platform.settings.search.max_grid_points
        strategy = load_strategy(self.platform, name, options)
        if strategy.exhaustive and "max_points" in getattr(
            type(strategy).Options, "model_fields", {}
        ):
            # an exhaustive strategy refuses a grid over the limit in start(), with its count
            options.setdefault("max_points", limit)
            strategy = load_strategy(self.platform, name, options)
        strategy.start(
            space, direction=direction, seed=seed, parallelism=parallelism, budget=max_trials
        )  # type: ignore[arg-type]
        grid_points = strategy.count() if strategy.exhaustive else None
        if grid_points is not None and grid_points > limit:
            raise _grid_too_large(grid_points, limit)
        first = strategy.save()
        trial = strategy.ask()
        if trial is None:
            msg = "the search space has no point to try (the strategy proposed none)"
            raise ValidationError(msg, details={"field": "space"})
        fresh = load_strategy(self.platform, name, options)
        fresh.restore(first)
        return fresh, dict(trial.params), grid_points

    @staticmethod
    def _check_free(session: Session, name: str) -> None:
        taken = session.scalar(select(TrainingExperiment.id).where(TrainingExperiment.name == name))
        if taken is not None:
            msg = f"an experiment named {name!r} already exists; pick another name"
            raise ConflictError(msg, details={"name": name})

    def _insert(
        self,
        fields: dict[str, Any],
        settings_row: dict[str, Any],
        state: bytes,
        actor: Principal,
        seed: int,
        seed_source: str,
    ) -> uuid.UUID:
        from sqlalchemy.exc import IntegrityError

        queue = self.platform.queue
        events: list[dict[str, Any]] = []
        with self.db.session() as session:
            self._check_free(session, fields["name"])
            now = utcnow()
            row = TrainingExperiment(
                id=uuid.uuid4(),
                name=fields["name"],
                description=fields["description"],
                trainer=fields["trainer"],
                hyperparameters=fields["hyperparameters"],
                configuration={
                    "dataset": fields["dataset"],
                    "model_name": fields["model_name"],
                    "submitted_by": actor.name,
                    "kind": "sweep",
                },
                resources={},
                priority=fields["priority"],
                attempts=0,
                max_attempts=1,
                checkpoint_interval_s=0,
                seed=seed,
                reproducibility={"seed": seed, "seed_source": seed_source},
                created_by=actor.user_id,
                origin="sweep",
                group_name=fields["name"],
                started_at=now,
            )
            session.add(row)
            try:
                session.flush()
            except IntegrityError:
                msg = f"an experiment named {fields['name']!r} was just created; pick another"
                raise ConflictError(msg, details={"name": fields["name"]}) from None
            events += queue.record_created(session, row)
            strategy = settings_row["strategy"]
            events += queue.record_status(session, row, "running", f"searching with {strategy}")
            session.add(Sweep(id=row.id, strategy_state=state, state_version=1, **settings_row))
            key = row.id
        for event in events:
            self.platform.hooks.experiment_state_changed(event)
        return key

    # --- reading ------------------------------------------------------------------------

    def _sweep_row(
        self, session: Session, ref: str | uuid.UUID
    ) -> tuple[TrainingExperiment, Sweep]:
        key = _as_uuid(ref)
        row = None
        if key is not None:
            row = session.get(TrainingExperiment, key)
        if row is None and not isinstance(ref, uuid.UUID):
            row = session.scalar(
                select(TrainingExperiment).where(
                    TrainingExperiment.name == str(ref), TrainingExperiment.origin == "sweep"
                )
            )
            if row is None:
                from mlrig.db.lookup import find_by_id_prefix

                found = find_by_id_prefix(
                    session,
                    TrainingExperiment.id,
                    ref,
                    where=[TrainingExperiment.origin == "sweep"],
                    what="sweep",
                )
                row = session.get(TrainingExperiment, found) if found is not None else None
        sweep = session.get(Sweep, row.id) if row is not None else None
        if row is None or sweep is None:
            msg = f"no sweep {str(ref)!r} (an id or a name); see: mlrig sweeps list"
            raise NotFoundError(msg, details={"sweep": str(ref)})
        return row, sweep

    def resolve(self, ref: str | uuid.UUID) -> uuid.UUID:
        """The id of the sweep ``ref``."""
        with self.db.session() as session:
            return self._sweep_row(session, ref)[0].id

    def list(self, *, status: str | None = None, limit: int = 100, offset: int = 0) -> Views:
        """Sweeps, newest first."""
        allowed = ("running", *ENDED)
        if status is not None and status not in allowed:
            msg = f"unknown sweep status {status!r}; use one of {', '.join(allowed)}"
            raise ValidationError(msg, details={"field": "status"})
        if not 1 <= limit <= 1000 or not 0 <= offset <= v.INT64_MAX:
            msg = f"limit must be 1-1000 and offset >= 0, got limit={limit}, offset={offset}"
            raise ValidationError(msg)
        stmt = (
            select(TrainingExperiment, Sweep)
            .join(Sweep, Sweep.id == TrainingExperiment.id)
            .order_by(TrainingExperiment.created_at.desc())
        )
        if status is not None:
            stmt = stmt.where(TrainingExperiment.status == status)
        with self.db.session() as session:
            pairs = session.execute(stmt.limit(limit).offset(offset)).all()
            # a grid's count is its planned trials: restored (cheap for a grid); others not
            return [
                self._view(session, row, sweep, describe=_exhaustive(sweep.strategy))
                for row, sweep in pairs
            ]

    def get(self, ref: str | uuid.UUID) -> View:
        """A sweep (an id, a unique id prefix or a name)."""
        with self.db.session() as session:
            row, sweep = self._sweep_row(session, ref)
            return self._view(session, row, sweep, describe=True)

    def trials(
        self, ref: str | uuid.UUID, *, state: str | None = None, limit: int = 1000, offset: int = 0
    ) -> Views:
        """A sweep's trials by number."""
        from mlrig.db.models import TRIAL_STATES

        if state is not None and state not in TRIAL_STATES:
            msg = f"unknown trial state {state!r}; use one of {', '.join(TRIAL_STATES)}"
            raise ValidationError(msg, details={"field": "state"})
        if not 1 <= limit <= 10_000 or not 0 <= offset <= v.INT64_MAX:
            msg = f"limit must be 1-10000 and offset >= 0, got limit={limit}, offset={offset}"
            raise ValidationError(msg)
        with self.db.session() as session:
            row, _ = self._sweep_row(session, ref)
            views = self._trial_views(session, row.id)
        if state is not None:
            views = [t for t in views if t["state"] == state]
        return views[offset : offset + limit]

    def _trial_views(self, session: Session, sweep_id: uuid.UUID) -> Views:
        pairs = session.execute(
            select(SweepTrial, TrainingExperiment)
            .outerjoin(TrainingExperiment, TrainingExperiment.id == SweepTrial.experiment_id)
            .where(SweepTrial.sweep_id == sweep_id)
            .order_by(SweepTrial.number)
        ).all()
        return [trial_view(t, e) for t, e in pairs]

    def _view(
        self, session: Session, row: TrainingExperiment, sweep: Sweep, *, describe: bool
    ) -> View:
        counts = dict.fromkeys(_STATE_KEYS, 0)
        pairs = session.execute(
            select(SweepTrial.state, SweepTrial.told, TrainingExperiment.status, func.count())
            .outerjoin(TrainingExperiment, TrainingExperiment.id == SweepTrial.experiment_id)
            .where(SweepTrial.sweep_id == sweep.id)
            .group_by(SweepTrial.state, SweepTrial.told, TrainingExperiment.status)
        ).all()
        for state, told, status, count in pairs:
            key = trial_state(state, told, status)
            counts[key] = counts.get(key, 0) + count
        best = None
        if sweep.best_trial_id is not None:
            trial = session.get(SweepTrial, sweep.best_trial_id)
            if trial is not None:
                best = best_view(trial)
        creator = None
        if row.created_by is not None:
            from mlrig.db.models import User

            creator = session.scalar(select(User.name).where(User.id == row.created_by))
        grid_points = None
        info: dict[str, Any] = {"name": sweep.strategy}
        if describe:
            info, grid_points = self.driver.describe(sweep)
        planned = sweep.max_trials if grid_points is None else min(grid_points, sweep.max_trials)
        return {
            "id": str(row.id),
            "name": row.name,
            "description": row.description,
            "status": row.status,
            "status_detail": row.status_detail,
            "trainer": row.trainer,
            "strategy": sweep.strategy,
            "strategy_options": dict(sweep.strategy_options or {}),
            "objective": sweep.objective,
            "objective_kind": sweep.objective_kind,
            "direction": sweep.direction,
            "max_trials": sweep.max_trials,
            "parallelism": sweep.parallelism,
            "max_seconds": sweep.max_seconds,
            "pruner": sweep.pruner,
            "seed": sweep.seed,
            "space": dict(sweep.space or {}),
            "template": dict(sweep.template or {}),
            "planned_trials": planned,
            "grid_points": grid_points,
            "trials": {"total": sum(counts.values()), **counts},
            "best": best,
            "model_version_id": _str(sweep.model_version_id),
            "created_by": creator or (row.configuration or {}).get("submitted_by"),
            "created_at": iso(row.created_at),
            "started_at": iso(row.started_at),
            "completed_at": iso(row.completed_at),
            "strategy_info": info,
        }

    def results(self, ref: str | uuid.UUID) -> View:
        """Best trial, all trials, best-so-far curve and parameter importances."""
        from mlrig.search.space import SearchSpace
        from mlrig.sweeps import results as computed

        with self.db.session() as session:
            row, sweep = self._sweep_row(session, ref)
            trials = self._trial_views(session, row.id)
            best = None
            if sweep.best_trial_id is not None:
                found = session.get(SweepTrial, sweep.best_trial_id)
                best = best_view(found) if found is not None else None
            direction, objective, space = sweep.direction, sweep.objective, sweep.space
        return {
            "sweep_id": str(row.id),
            "objective": objective,
            "direction": direction,
            "best": best,
            "trials": trials,
            "best_so_far": computed.best_so_far(trials, direction),
            "importances": computed.importances(SearchSpace.from_dict(space), trials),
        }

    # --- stopping and driving -----------------------------------------------------------

    def stop(self, ref: str | uuid.UUID, *, actor: Principal) -> View:
        """End the sweep now: cancel its queued and running trials; status
        ``cancelled``. Stopping an ended sweep is a :class:`ConflictError`."""
        key = self.resolve(ref)
        self.driver.stop(key, detail=f"stopped by {actor.name}")
        return self.get(key)

    def advance(self, *, owner: str) -> int:
        """Drive every running sweep one step: tell the strategy about trials that
        ended, queue new trials while fewer than ``parallelism`` are outstanding and the
        budget allows, end sweeps whose budget is spent. Returns how many trials were
        told or queued. Safe to call from many processes at once (one drives a sweep at
        a time)."""
        return self.driver.advance(owner=owner)


_STATE_KEYS = ("queued", "running", "completed", "failed", "pruned", "cancelled")


def _exhaustive(name: str) -> bool:
    try:
        from mlrig.backends import load_backend

        return bool(getattr(load_backend("search", name), "exhaustive", False))
    except Exception:  # a plugin missing here: the view shows it without its count
        return False


def _grid_too_large(size: int, limit: int) -> ValidationError:
    msg = (
        f"the grid has {size:,} points, more than [search] max_grid_points ({limit:,}); "
        "use fewer values (a step on float ranges, fewer choices) or another strategy"
    )
    return ValidationError(msg, details={"field": "space", "grid_points": size, "limit": limit})


def trial_state(state: str, told: bool, status: str | None) -> str:
    """What a trial is now: its recorded state once settled (or pruned), else its
    experiment's status."""
    if told or state not in ("queued", "running") or status is None:
        return state
    return _LIVE_STATES.get(status, status)


def trial_view(trial: SweepTrial, experiment: TrainingExperiment | None) -> View:
    """One trial (see the module docstring)."""
    status = experiment.status if experiment is not None else None
    duration = trial.duration_s
    if duration is None and experiment is not None and experiment.started_at is not None:
        end = experiment.completed_at or utcnow()
        duration = max(0.0, (end - experiment.started_at).total_seconds())
    return {
        "id": str(trial.id),
        "number": trial.number,
        "experiment_id": _str(trial.experiment_id),
        "experiment_name": experiment.name if experiment is not None else None,
        "params": dict(trial.params or {}),
        "state": trial_state(trial.state, trial.told, status),
        "value": trial.value,
        "rung": trial.rung,
        "pruned_at_step": trial.pruned_at_step,
        "detail": trial.detail,
        "duration_s": duration,
        "created_at": iso(trial.created_at),
        "completed_at": iso(trial.completed_at),
    }


def best_view(trial: SweepTrial) -> View:
    return {
        "trial_id": str(trial.id),
        "number": trial.number,
        "experiment_id": _str(trial.experiment_id),
        "value": trial.value,
        "params": dict(trial.params or {}),
    }
