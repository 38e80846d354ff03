"""The sweep driver: one step of every running sweep, exactly once under crashes.

Every server (its lifespan loop) and every worker (:meth:`Worker._drive_sweeps`) calls
:meth:`SweepDriver.advance` every ``[search] driver_interval_seconds`` and after a job
ended. A step of one sweep is ONE database transaction that holds the sweep's row
(PostgreSQL ``SELECT ... FOR UPDATE``; SQLite's write lock, ``BEGIN IMMEDIATE``):

1. the strategy is restored from ``sweeps.strategy_state`` (a per-process cache keyed by
   the sweep and its ``state_version`` skips the unpickling when this process made the
   last save);
2. trials whose experiment ended and that were not told yet are told (``completed``: the
   last point, highest step, of the objective metric of the objective kind; ``pruned``:
   the value it was pruned with; ``failed``/``cancelled``, or completed without the
   objective: ``tell_failed``), each marked ``told`` in this transaction;
3. while fewer than ``parallelism`` trials are outstanding, fewer than ``max_trials``
   were asked and the wall-time budget is not spent, the strategy is asked: each trial
   gets its ``sweep_trials`` row and its experiment, queued, in this transaction;
4. the strategy's state is saved with ``state_version + 1`` and the transaction commits.

So a crash anywhere loses the whole step or none of it: a trial number's row and
experiment are made at most once (the unique ``(sweep_id, number)`` index backs it), a
trial is told at most once, and the saved state is always the one that asked and was
told exactly what the rows say. Two drivers at once wait on the row lock, and the second
sees what the first committed.

A sweep ends once nothing is outstanding and no more trials will be asked (``max_trials``
asked, the time budget spent, or the strategy has no more points): ``completed`` with its
best trial, whose model candidate is then registered (outside the lock: the registry
writes on its own; a short driver lease in ``driver_owner``/``driver_expires_at`` keeps
other drivers from registering it twice, and a crash before the version is recorded is
healed by finding the version by its sweep tag); or ``failed`` when no trial reported
the objective. When ``min(3, max_trials)`` trials completed without reporting the
objective and none did, the sweep fails at once (its outstanding trials are cancelled)
instead of spending its whole budget on a misnamed metric.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import defer

from mlrig.db.models import Sweep, SweepTrial, TrainingExperiment, TrainingMetric
from mlrig.db.types import as_utc, utcnow
from mlrig.engine import states
from mlrig.errors import ConflictError, NotFoundError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mlrig.contracts.search import SearchStrategy
    from mlrig.sweeps.service import SweepService

#: a completed trial that did not report the objective: the detail starts so
NO_OBJECTIVE = "reported no "
#: how many such trials (and none with the objective) fail the sweep early
EARLY_FAIL_TRIALS = 3
#: how long the driver that registers a sweep's best model holds it (seconds)
REGISTER_LEASE_SECONDS = 300
#: strategies a process keeps restored (running sweeps, and the ones last viewed)
CACHE_SIZE = 64
#: how often a process looks for live trials of ended sweeps (seconds)
TIDY_SECONDS = 2.0
#: while no sweep runs, a process's driving rounds back off (doubling) up to this many
#: seconds; a running sweep found brings them back to ``[search] driver_interval_seconds``
#: (a new sweep asks its first trials itself, so nothing waits on the back-off)
IDLE_DRIVE_SECONDS = 5.0
#: how often a process looks for candidates left in ended sweeps (seconds)
LEFTOVER_SECONDS = 30.0
_LIVE = ("created", "queued", "running")


def next_drive_interval(driver: Any, every: float | None, interval: float) -> float | None:
    """The wait before a process's next driving round, after one that just ran: ``None``
    (the configured ``interval``) while a sweep runs; doubled, up to
    :data:`IDLE_DRIVE_SECONDS`, while none does (``driver.idle``)."""
    if not getattr(driver, "idle", False):
        return None
    return max(interval, min(2 * (every or interval), IDLE_DRIVE_SECONDS))


def better(value: float, than: float | None, direction: str) -> bool:
    """Whether ``value`` beats ``than`` (``None``: nothing yet); NaN never does."""
    if value is None or not math.isfinite(value):
        return False
    if than is None or not math.isfinite(than):
        return True
    return value < than if direction == "minimize" else value > than


class StrategyError(Exception):
    """The strategy's ask, tell or save raised: a bug or a state it cannot go on from,
    which every retry would repeat, so the sweep fails saying so."""


def _call(method: Any, *args: Any) -> Any:
    try:
        return method(*args)
    except Exception as exc:
        from mlrig.engine.runner import one_line

        raise StrategyError(one_line(exc)) from exc


@dataclass
class _After:
    """What a step leaves to do once it committed."""

    events: list[dict[str, Any]] = field(default_factory=list)
    cancel: list[uuid.UUID] = field(default_factory=list)
    register: bool = False
    cleanup: bool = False
    count: int = 0


class SweepDriver:
    """Steps sweeps; one per :class:`~mlrig.sweeps.service.SweepService`."""

    def __init__(self, service: SweepService) -> None:
        self.service = service
        self.platform = service.platform
        #: sweep id -> (state_version, the strategy as that version left it)
        self._cache: dict[uuid.UUID, tuple[int, SearchStrategy]] = {}
        self._cache_lock = threading.Lock()
        #: how many strategies this process restored from their saved state (tests)
        self.restores = 0
        self._leftovers_at = -LEFTOVER_SECONDS
        self._tidied_at = -TIDY_SECONDS
        #: whether the last :meth:`advance` found no running sweep (a worker's rounds
        #: back off meanwhile)
        self.idle = False

    @property
    def db(self) -> Any:
        return self.platform.db

    # --- the strategy ---------------------------------------------------------------------

    def _restore(self, sweep: Sweep) -> SearchStrategy:
        from mlrig.sweeps.service import load_strategy

        # not installed here (a worker without the extra): an error, the sweep left to others
        strategy = load_strategy(self.platform, sweep.strategy, dict(sweep.strategy_options or {}))
        try:
            strategy.restore(sweep.strategy_state or b"")
        except Exception as exc:  # every retry would fail the same way: the sweep fails
            from mlrig.engine.runner import one_line

            msg = f"its saved state could not be restored: {one_line(exc)}"
            raise StrategyError(msg) from exc
        self.restores += 1
        return strategy

    def _take(self, sweep: Sweep) -> SearchStrategy:
        """The strategy at the sweep's saved version, taken out of the cache (a step
        that does not commit must not leave a strategy ahead of the database)."""
        with self._cache_lock:
            cached = self._cache.pop(sweep.id, None)
        if cached is not None and cached[0] == sweep.state_version:
            return cached[1]
        return self._restore(sweep)

    def _warm(self, sweep_id: uuid.UUID, version: int | None = None) -> None:
        """Restore a stale cached strategy before taking the lock: a long search's restore
        (nevergrad replays its log) must not hold the sweep, or SQLite's write lock. A
        strategy cached at ``version`` (just read) is warm: no read. (Either way the
        locked step checks the version it finds and restores again when it moved.)"""
        if version is not None:
            with self._cache_lock:
                cached = self._cache.get(sweep_id)
            if cached is not None and cached[0] == version:
                return
        with self.db.session() as session:
            version = session.scalar(select(Sweep.state_version).where(Sweep.id == sweep_id))
            with self._cache_lock:
                cached = self._cache.get(sweep_id)
            if version is None or (cached is not None and cached[0] == version):
                return
            sweep = session.get(Sweep, sweep_id)
            if sweep is None:
                return
            version, settings = sweep.state_version, sweep
            strategy = self._restore(settings)
        self._keep(sweep_id, version, strategy)

    def _keep(self, sweep_id: uuid.UUID, version: int, strategy: SearchStrategy) -> None:
        with self._cache_lock:
            self._cache.pop(sweep_id, None)
            self._cache[sweep_id] = (version, strategy)
            while len(self._cache) > CACHE_SIZE:  # the least recently kept go first
                self._cache.pop(next(iter(self._cache)))

    def forget(self, sweep_id: uuid.UUID) -> None:
        with self._cache_lock:
            self._cache.pop(sweep_id, None)

    def describe(self, sweep: Sweep) -> tuple[dict[str, Any], int | None]:
        """The strategy's ``describe()`` and, for a grid, its ``count()``."""
        with self._cache_lock:
            cached = self._cache.get(sweep.id)
        if cached is not None and cached[0] == sweep.state_version:
            strategy = cached[1]
        else:
            try:
                strategy = self._restore(sweep)
            except Exception as exc:  # a view must show even when the plugin is missing
                return {"name": sweep.strategy, "error": str(exc)}, None
            self._keep(sweep.id, sweep.state_version, strategy)
        try:
            info = {"name": sweep.strategy, **(strategy.describe() or {})}
            return info, strategy.count() if strategy.exhaustive else None
        except Exception as exc:  # informational: a driver may be stepping this copy
            return {"name": sweep.strategy, "error": str(exc)}, None

    # --- locking --------------------------------------------------------------------------

    def _lock(self, session: Session, sweep_id: uuid.UUID) -> tuple[Sweep, TrainingExperiment]:
        self.db.begin_write(session)
        stmt = select(Sweep).where(Sweep.id == sweep_id)
        if self.db.dialect == "postgresql":
            stmt = stmt.with_for_update()
        sweep = session.scalar(stmt)
        row = session.get(TrainingExperiment, sweep_id) if sweep is not None else None
        if sweep is None or row is None:
            msg = f"no sweep {sweep_id}"
            raise NotFoundError(msg, details={"sweep": str(sweep_id)})
        return sweep, row

    # --- advancing ------------------------------------------------------------------------

    def advance(self, *, owner: str) -> int:
        """One step of every running sweep; cancel the live trials of sweeps that ended
        (stopped as an experiment, or failed early) and drop their leftover candidates.
        Returns how many trials were told or queued."""
        due = self._due_sweeps()  # sets self.idle
        done, errors = 0, []
        for sweep_id, version in due:
            try:
                done += self._step(sweep_id, owner=owner, version=version)
            except Exception as exc:  # one broken sweep must not stop the others
                errors.append(exc)
        now = time.monotonic()
        if now - self._tidied_at >= TIDY_SECONDS:
            self._tidied_at = now
            try:
                self._tidy_ended()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return done

    def _due_sweeps(self) -> list[tuple[uuid.UUID, int]]:
        """The running sweeps that have something to do now (:meth:`_due`) with their
        ``state_version``, oldest first: two cheap unlocked reads for all of them (their
        settings, and the statuses of the trials not told yet)."""
        now = utcnow()
        with self.db.session() as session:
            sweeps = session.execute(
                select(
                    Sweep.id,
                    Sweep.parallelism,
                    Sweep.trials_asked,
                    Sweep.max_trials,
                    Sweep.max_seconds,
                    Sweep.driver_owner,
                    Sweep.driver_expires_at,
                    Sweep.state_version,
                    TrainingExperiment.started_at,
                )
                .join(TrainingExperiment, TrainingExperiment.id == Sweep.id)
                .where(TrainingExperiment.status == states.RUNNING)
                .order_by(TrainingExperiment.created_at)
            ).all()
            self.idle = not sweeps
            if not sweeps:
                return []
            statuses: dict[uuid.UUID, list[str | None]] = {s.id: [] for s in sweeps}
            for sweep_id, status in session.execute(
                select(SweepTrial.sweep_id, TrainingExperiment.status)
                .select_from(SweepTrial)
                .outerjoin(TrainingExperiment, TrainingExperiment.id == SweepTrial.experiment_id)
                .where(SweepTrial.sweep_id.in_(list(statuses)), SweepTrial.told.is_(False))
            ):
                statuses[sweep_id].append(status)
        return [(s.id, s.state_version) for s in sweeps if self._due(s, s, statuses[s.id], now)]

    def _needs_step(self, sweep_id: uuid.UUID) -> bool:
        """A cheap unlocked read: does the sweep have anything to do now?"""
        now = utcnow()
        with self.db.session() as session:
            # the settings only: the strategy's state is read when it must be restored
            sweep = session.get(Sweep, sweep_id, options=[defer(Sweep.strategy_state)])
            row = session.get(TrainingExperiment, sweep_id)
            if sweep is None or row is None or row.status != states.RUNNING:
                return False
            statuses = list(
                session.scalars(
                    select(TrainingExperiment.status)
                    .select_from(SweepTrial)
                    .outerjoin(
                        TrainingExperiment, TrainingExperiment.id == SweepTrial.experiment_id
                    )
                    .where(SweepTrial.sweep_id == sweep_id, SweepTrial.told.is_(False))
                )
            )
            return self._due(sweep, row, statuses, now)

    def _due(self, sweep: Any, row: Any, statuses: list[str | None], now: datetime) -> bool:
        """Whether a running sweep has something to do: not held by the driver registering
        its best model, and a trial ended (tell it), or none outstanding (ask the first
        ones, or end), or room for more within the budget. ``sweep`` and ``row``: the
        sweep's and its experiment's values (rows, or one row with both)."""
        held = as_utc(sweep.driver_expires_at)
        if sweep.driver_owner is not None and held is not None and held > now:
            return False  # its best model is being registered
        if any(s not in _LIVE for s in statuses):
            return True  # a trial ended: tell it
        outstanding = len(statuses)
        if outstanding == 0:
            return True  # ask the first ones, or end
        return outstanding < sweep.parallelism and not self._budget_spent(sweep, row, now)

    @staticmethod
    def _budget_spent(sweep: Any, row: Any, now: datetime) -> bool:
        """No more trials: ``max_trials`` asked or the wall-time budget spent."""
        if sweep.trials_asked >= sweep.max_trials:
            return True
        started = as_utc(row.started_at)
        return bool(
            sweep.max_seconds is not None
            and started is not None
            and now >= started + timedelta(seconds=sweep.max_seconds)
        )

    def step(self, sweep_id: uuid.UUID, *, owner: str) -> int:
        """One step of one sweep (see the module docstring). Returns how many trials
        were told or queued."""
        if not self._needs_step(sweep_id):
            return 0
        return self._step(sweep_id, owner=owner)

    def _step(self, sweep_id: uuid.UUID, *, owner: str, version: int | None = None) -> int:
        """:meth:`step` of a sweep found due (``version``: its ``state_version`` as read
        then: a cached strategy of that version needs no read to be warm)."""
        try:
            self._warm(sweep_id, version)
        except StrategyError as exc:
            self._fail(sweep_id, f"the search strategy failed: {exc}")
            return 0
        after = _After()
        kept: tuple[int, SearchStrategy] | None = None
        with self.db.session() as session:
            sweep, row = self._lock(session, sweep_id)
            now = utcnow()
            held = as_utc(sweep.driver_expires_at)
            if row.status != states.RUNNING or (
                sweep.driver_owner is not None and held is not None and held > now
            ):
                return 0
            try:
                strategy = self._take(sweep)
                kept = self._locked_step(session, sweep, row, strategy, owner, now, after)
            except StrategyError as exc:
                failure = exc  # this step rolls back; the sweep is failed below
                session.rollback()
            else:
                failure = None
        if failure is not None:
            self._fail(sweep_id, f"the search strategy failed: {failure}")
            return 0
        # committed: the strategy in memory is the saved one
        if kept is not None:
            self._keep(sweep_id, *kept)
        self._fire(after.events)
        for job_id in after.cancel:
            self._cancel(job_id, "the sweep ended")
        if after.register:
            self._register_and_finish(sweep_id, owner)
        elif after.cleanup:
            self.cleanup(sweep_id)
        if after.register or after.cleanup:  # it ended: nothing more to ask
            self.forget(sweep_id)
        return after.count

    def _locked_step(
        self,
        session: Session,
        sweep: Sweep,
        row: TrainingExperiment,
        strategy: SearchStrategy,
        owner: str,
        now: datetime,
        after: _After,
    ) -> tuple[int, SearchStrategy] | None:
        from mlrig.contracts.search import Trial

        pending = session.execute(
            select(SweepTrial, TrainingExperiment)
            .outerjoin(TrainingExperiment, TrainingExperiment.id == SweepTrial.experiment_id)
            .where(SweepTrial.sweep_id == sweep.id, SweepTrial.told.is_(False))
            .order_by(SweepTrial.number)
        ).all()
        changed = False
        outstanding = 0
        for trial, experiment in pending:
            if experiment is not None and experiment.status in _LIVE:
                outstanding += 1
                continue
            kind, value, detail = settle(session, sweep, trial, experiment)
            point = Trial(
                number=trial.number, params=dict(trial.params or {}), extra=dict(trial.extra or {})
            )
            if kind in ("completed", "pruned") and value is not None:
                _call(strategy.tell, point, value)
            else:
                _call(strategy.tell_failed, point, detail)
            record_outcome(trial, experiment, kind, value, detail, now)
            if kind == "completed" and better(value, sweep.best_value, sweep.direction):
                sweep.best_trial_id, sweep.best_value = trial.id, value
            changed = True
            after.count += 1
        if changed and self._objective_missing(session, sweep):
            detail = self._no_objective_detail(session, sweep)
            after.events += self.platform.queue.record_status(session, row, states.FAILED, detail)
            row.completed_at = now
            after.cancel += [e.id for t, e in pending if e is not None and e.status in _LIVE]
            after.cleanup = True
            return self._save(sweep, strategy) if changed else None
        exhausted = False
        while outstanding < sweep.parallelism and not self._budget_spent(sweep, row, now):
            point = _call(strategy.ask)
            if point is None:
                exhausted = True
                break
            after.events += self._queue_trial(session, sweep, row, point, now)
            sweep.trials_asked += 1
            outstanding += 1
            changed = True
            after.count += 1
        kept = self._save(sweep, strategy) if changed else None
        if outstanding == 0 and (exhausted or self._budget_spent(sweep, row, now)):
            self._end(session, sweep, row, owner, now, after)
        return kept

    @staticmethod
    def _save(sweep: Sweep, strategy: SearchStrategy) -> tuple[int, SearchStrategy]:
        sweep.strategy_state = _call(strategy.save)
        sweep.state_version = (sweep.state_version or 0) + 1
        return sweep.state_version, strategy

    def _queue_trial(
        self,
        session: Session,
        sweep: Sweep,
        row: TrainingExperiment,
        point: Any,
        now: datetime,
    ) -> list[dict[str, Any]]:
        """The trial's row and its experiment, queued, in the step's transaction."""
        from mlrig.sweeps.service import trial_seed

        template = dict(sweep.template or {})
        params = dict(point.params)
        name = f"{row.name}-t{point.number:04d}"
        if session.scalar(select(TrainingExperiment.id).where(TrainingExperiment.name == name)):
            name = f"{name}-{uuid.uuid4().hex[:6]}"  # someone took the name: keep going
        trial_id = uuid.uuid4()
        seed = trial_seed(sweep.seed, point.number)
        config = row.configuration or {}
        experiment = TrainingExperiment(
            id=uuid.uuid4(),
            name=name,
            description=f"trial {point.number} of sweep {row.name}",
            trainer=template["trainer"],
            hyperparameters={**(template.get("hyperparameters") or {}), **params},
            configuration={
                "dataset": template.get("dataset"),
                "model_name": template.get("model_name") or row.name,
                "submitted_by": config.get("submitted_by"),
                "sweep": {
                    "id": str(sweep.id),
                    "trial_id": str(trial_id),
                    "number": point.number,
                    "objective": sweep.objective,
                    "objective_kind": sweep.objective_kind,
                    "direction": sweep.direction,
                    "pruner": sweep.pruner,
                },
            },
            resources=dict(template.get("resources") or {}),
            priority=template.get("priority", 0),
            checkpoint_interval_s=template.get("checkpoint_interval_s", 600),
            max_attempts=template.get("max_attempts", 1),
            seed=seed,
            reproducibility={
                "seed": seed,
                "seed_source": "sweep",
                "sweep_id": str(sweep.id),
                "trial": point.number,
            },
            created_by=row.created_by,
            origin="engine",
            parent_id=row.id,
            group_name=row.group_name or row.name,
        )
        session.add(experiment)
        session.flush()  # the trial's row refers to it (no ORM relationship orders them)
        session.add(
            SweepTrial(
                id=trial_id,
                sweep_id=sweep.id,
                number=point.number,
                experiment_id=experiment.id,
                params=params,
                extra=dict(point.extra or {}),
                state="queued",
            )
        )
        session.flush()  # a second row for this number fails the whole step here
        queue = self.platform.queue
        events = queue.record_created(session, experiment)
        # trials asked together are claimed in ask order (the queue orders by queued_at)
        experiment.queued_at = now + timedelta(microseconds=point.number % 1_000_000)
        events += queue.record_status(session, experiment, states.QUEUED, None)
        return events

    # --- ending ---------------------------------------------------------------------------

    def _objective_missing(self, session: Session, sweep: Sweep) -> bool:
        """Enough trials completed without the objective, and none reported it."""
        if sweep.best_trial_id is not None:
            return False
        counts = dict(
            session.execute(
                select(SweepTrial.state, func.count())
                .where(SweepTrial.sweep_id == sweep.id, SweepTrial.told.is_(True))
                .group_by(SweepTrial.state)
            ).all()
        )
        if counts.get("pruned"):
            return False
        missing = session.scalar(
            select(func.count())
            .select_from(SweepTrial)
            .where(
                SweepTrial.sweep_id == sweep.id,
                SweepTrial.state == "failed",
                SweepTrial.detail.startswith(NO_OBJECTIVE),
            )
        )
        return (missing or 0) >= min(EARLY_FAIL_TRIALS, sweep.max_trials)

    def _no_objective_detail(self, session: Session, sweep: Sweep) -> str:
        ids = list(
            session.scalars(
                select(SweepTrial.experiment_id).where(
                    SweepTrial.sweep_id == sweep.id, SweepTrial.experiment_id.is_not(None)
                )
            )
        )
        reported = reported_metrics(session, ids)
        failed = session.execute(
            select(SweepTrial.number, SweepTrial.detail)
            .where(
                SweepTrial.sweep_id == sweep.id,
                SweepTrial.state.in_(("failed", "cancelled")),
                SweepTrial.told.is_(True),
            )
            .order_by(SweepTrial.number)
        ).all()
        msg = (
            f"no trial reported the objective metric {sweep.objective!r} "
            f"({sweep.objective_kind}); trials reported: {', '.join(reported) or 'nothing'}"
        )
        others = [(n, d) for n, d in failed if not (d or "").startswith(NO_OBJECTIVE)]
        if others:
            number, detail = others[0]
            msg += f"; {len(others)} trial(s) failed (trial {number}: {detail or 'no detail'})"
        return msg[:4000]

    def _end(
        self,
        session: Session,
        sweep: Sweep,
        row: TrainingExperiment,
        owner: str,
        now: datetime,
        after: _After,
    ) -> None:
        queue = self.platform.queue
        if sweep.best_trial_id is None:
            pruned = session.scalar(
                select(SweepTrial)
                .where(
                    SweepTrial.sweep_id == sweep.id,
                    SweepTrial.state == "pruned",
                    SweepTrial.value.is_not(None),
                )
                .order_by(
                    SweepTrial.value.asc()
                    if sweep.direction == "minimize"
                    else SweepTrial.value.desc()
                )
                .limit(1)
            )
            if pruned is not None:  # every trial that reported was pruned: no model
                note = f"every trial was pruned; the best pruned one is trial {pruned.number}"
                after.events += queue.record_status(session, row, states.COMPLETED, note)
                row.completed_at = now
                after.cleanup = True
                return
            detail = self._no_objective_detail(session, sweep)
            after.events += queue.record_status(session, row, states.FAILED, detail)
            row.completed_at = now
            after.cleanup = True
            return
        best = session.get(SweepTrial, sweep.best_trial_id)
        if best is not None and best.candidate_key and sweep.model_version_id is None:
            # registered outside this transaction; the lease keeps other drivers off it
            sweep.driver_owner = owner[:255]
            sweep.driver_expires_at = now + timedelta(seconds=REGISTER_LEASE_SECONDS)
            after.register = True
            return
        after.events += queue.record_status(
            session, row, states.COMPLETED, self._summary(sweep, best)
        )
        row.completed_at = now
        after.cleanup = True

    @staticmethod
    def _summary(sweep: Sweep, best: SweepTrial | None, note: str | None = None) -> str:
        if best is None:
            return "completed"
        text = f"best trial {best.number}: {sweep.objective} = {best.value:.6g}"
        return f"{text}; {note}" if note else text

    def _register_and_finish(self, sweep_id: uuid.UUID, owner: str) -> None:
        """Register the best trial's candidate (once: an earlier attempt's version is
        found by its sweep tag), then complete the sweep."""
        from mlrig.sweeps import candidates

        version_id, note = None, None
        try:
            version_id = candidates.register_best(self.platform, sweep_id)
        except Exception as exc:  # the sweep completes anyway; its best trial is known
            from mlrig.engine.runner import one_line

            note = f"its model could not be registered: {one_line(exc)}"
        events: list[dict[str, Any]] = []
        with self.db.session() as session:
            sweep, row = self._lock(session, sweep_id)
            if row.status != states.RUNNING:  # stopped meanwhile: keep the link only
                if version_id is not None and sweep.model_version_id is None:
                    sweep.model_version_id = version_id
                return
            sweep.driver_owner = sweep.driver_expires_at = None
            best = session.get(SweepTrial, sweep.best_trial_id) if sweep.best_trial_id else None
            if version_id is not None:
                sweep.model_version_id = version_id
                row.model_id = version_id
                note = f"model version {version_id} registered"
            events += self.platform.queue.record_status(
                session, row, states.COMPLETED, self._summary(sweep, best, note)
            )
            row.completed_at = utcnow()
        self._fire(events)
        self.cleanup(sweep_id)

    def cleanup(self, sweep_id: uuid.UUID) -> int:
        """Delete the candidates of an ended sweep, keeping only the best one of a
        completed sweep whose model could not be registered. Returns how many."""
        from mlrig.sweeps.candidates import delete_candidates

        return delete_candidates(self.platform, sweep_id)

    def _fail(self, sweep_id: uuid.UUID, detail: str) -> None:
        """End a running sweep ``failed``, cancelling its live trials."""
        try:
            self.stop(sweep_id, detail=detail, status=states.FAILED)
        except ConflictError:  # it ended meanwhile
            pass

    def stop(self, sweep_id: uuid.UUID, *, detail: str, status: str = states.CANCELLED) -> None:
        """Cancel the sweep, then its queued and running trials (the strategy is told
        nothing more)."""
        events: list[dict[str, Any]] = []
        with self.db.session() as session:
            sweep, row = self._lock(session, sweep_id)
            if row.status != states.RUNNING:
                msg = f"sweep {row.name!r} already {row.status}"
                raise ConflictError(msg, details={"status": row.status})
            events += self.platform.queue.record_status(session, row, status, detail[:4000])
            row.completed_at = utcnow()
            sweep.driver_owner = sweep.driver_expires_at = None
            live = list(
                session.scalars(
                    select(TrainingExperiment.id)
                    .join(SweepTrial, SweepTrial.experiment_id == TrainingExperiment.id)
                    .where(SweepTrial.sweep_id == sweep_id, TrainingExperiment.status.in_(_LIVE))
                )
            )
        self.forget(sweep_id)
        self._fire(events)
        for job_id in live:
            self._cancel(job_id, "the sweep was stopped")
        self.cleanup(sweep_id)

    def _tidy_ended(self) -> None:
        """Trials still live in a sweep that ended (stopped through ``mlrig experiments
        stop``, a crash between a step and its cancels) are cancelled; candidates left
        in ended sweeps (a trial that stored one as its sweep ended) are deleted (that
        scan at most every :data:`LEFTOVER_SECONDS`)."""
        from sqlalchemy.orm import aliased

        parent = aliased(TrainingExperiment)
        with self.db.session() as session:
            # few jobs are live: the status index finds them, the parent join keeps
            # those of ended sweeps
            live = list(
                session.scalars(
                    select(TrainingExperiment.id)
                    .join(parent, parent.id == TrainingExperiment.parent_id)
                    .where(
                        TrainingExperiment.status.in_(_LIVE),
                        parent.origin == "sweep",
                        parent.status.in_(states.FINAL),
                    )
                )
            )
            leftovers: set[uuid.UUID] = set()
            now = time.monotonic()
            if now - self._leftovers_at >= LEFTOVER_SECONDS:
                self._leftovers_at = now
                ended = select(TrainingExperiment.id).where(
                    TrainingExperiment.origin == "sweep",
                    TrainingExperiment.status.in_(states.FINAL),
                )
                leftovers = set(
                    session.scalars(
                        select(SweepTrial.sweep_id)
                        .where(
                            SweepTrial.candidate_key.is_not(None), SweepTrial.sweep_id.in_(ended)
                        )
                        .distinct()
                    )
                )
        for job_id in live:
            self._cancel(job_id, "the sweep ended")
        for sweep_id in leftovers:
            self.cleanup(sweep_id)

    # --- helpers --------------------------------------------------------------------------

    def _cancel(self, job_id: uuid.UUID, detail: str) -> None:
        try:
            self.platform.queue.cancel(job_id, detail=detail)
        except (ConflictError, NotFoundError):  # it ended meanwhile
            pass

    def _fire(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            self.platform.hooks.experiment_state_changed(event)


# --- trials' outcomes ---------------------------------------------------------------------


def last_value(session: Session, experiment_id: uuid.UUID, name: str, kind: str) -> float | None:
    """The last point (highest step, then epoch, then the latest written) of metric
    ``name`` of ``kind``."""
    from mlrig.experiments.metrics import stored_value

    order = func.coalesce(TrainingMetric.step, TrainingMetric.epoch, -1)
    found = session.execute(
        select(TrainingMetric.metric_value)
        .where(
            TrainingMetric.experiment_id == experiment_id,
            TrainingMetric.metric_name == name,
            TrainingMetric.metric_type == kind,
        )
        .order_by(order.desc(), TrainingMetric.recorded_at.desc())
        .limit(1)
    ).first()
    if found is None:
        return None
    postgres = session.get_bind().dialect.name == "postgresql"
    value = stored_value(found[0], postgres=postgres)  # NaN/inf in their stored forms
    return float(value)


def reported_metrics(session: Session, experiment_ids: list[uuid.UUID]) -> list[str]:
    """The metrics these experiments reported, as ``name (kind)``, sorted."""
    if not experiment_ids:
        return []
    pairs = session.execute(
        select(TrainingMetric.metric_name, TrainingMetric.metric_type)
        .where(TrainingMetric.experiment_id.in_(experiment_ids))
        .distinct()
    ).all()
    return sorted(f"{name} ({kind or 'train'})" for name, kind in pairs)[:50]


def settle(
    session: Session, sweep: Sweep, trial: SweepTrial, experiment: TrainingExperiment | None
) -> tuple[str, float | None, str | None]:
    """What an ended trial came to: ``(state, value, detail)``."""
    if experiment is None:
        return "cancelled", None, "its experiment was deleted"
    result = (experiment.configuration or {}).get("result") or {}
    pruned = result.get("pruned") or None
    if experiment.status == states.COMPLETED:
        value = last_value(session, experiment.id, sweep.objective, sweep.objective_kind)
        if trial.state == "pruned" or pruned:
            if trial.value is not None:
                value = trial.value
            elif isinstance(pruned, dict) and pruned.get("value") is not None:
                value = float(pruned["value"])
            if value is not None and not math.isfinite(value):
                value = None
            return "pruned", value, trial.detail or experiment.status_detail
        if value is None:
            reported = reported_metrics(session, [experiment.id])
            detail = (
                f"{NO_OBJECTIVE}{sweep.objective!r} ({sweep.objective_kind}) metric; it "
                f"reported: {', '.join(reported) or 'nothing'}"
            )
            return "failed", None, detail
        if not math.isfinite(value):
            return "failed", None, f"its {sweep.objective!r} is {value}"
        return "completed", value, None
    if experiment.status == states.FAILED:
        return "failed", None, experiment.status_detail
    return "cancelled", None, experiment.status_detail


def record_outcome(
    trial: SweepTrial,
    experiment: TrainingExperiment | None,
    state: str,
    value: float | None,
    detail: str | None,
    now: datetime,
) -> None:
    trial.told = True
    trial.state = state
    trial.value = value
    trial.detail = detail
    if experiment is not None:
        pruned = ((experiment.configuration or {}).get("result") or {}).get("pruned")
        if isinstance(pruned, dict):
            trial.rung = trial.rung if trial.rung is not None else pruned.get("rung")
            if trial.pruned_at_step is None:
                trial.pruned_at_step = pruned.get("step")
        started, ended = as_utc(experiment.started_at), as_utc(experiment.completed_at)
        trial.completed_at = ended or now
        if started is not None:
            trial.duration_s = max(0.0, ((ended or now) - started).total_seconds())
    else:
        trial.completed_at = now
