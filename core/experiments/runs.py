"""Tracked runs: experiments a script, a notebook, the MLflow-compatible routes or an
importer runs itself (``origin`` ``tracking``, ``mlflow`` or ``import``), not the engine.

A tracked run starts ``running`` (events ``created`` then ``running``, as the engine
records them), receives params, tags, metrics, datasets and artifacts, sends heartbeats,
and ends ``completed``, ``failed`` or ``killed``. ``killed`` (Ctrl-C, SIGTERM) is stored
as the status ``cancelled`` with the detail ``killed`` (the statuses are the spec's six).

A running tracked run whose script went silent for ``[tracking] heartbeat_timeout_seconds``
is marked ``failed`` by :meth:`TrackedRuns.expire_silent_runs`, which the API server and
the workers call every few seconds. Its silence is measured from ``heartbeat_at`` (the
engine's ``lease_expires_at`` stays empty, so the engine's requeue scan never sees it).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mlrig import validation as v
from mlrig.db.models import ExperimentEvent, TrainingExperiment
from mlrig.engine import states
from mlrig.errors import ConflictError, NotFoundError, ValidationError
from mlrig.experiments import rules
from mlrig.experiments.groups import name_stem

if TYPE_CHECKING:
    from mlrig.config import Settings
    from mlrig.db import Database
    from mlrig.engine.queue import JobQueue
    from mlrig.hooks import Hooks
    from mlrig.security import Principal

View = dict[str, Any]
Views = list[dict[str, Any]]

#: where a run can come from besides the engine
TRACKED_ORIGINS = ("tracking", "mlflow", "import")
#: a sweep's own record: the engine runs its trials, not the sweep
ORIGINS = ("engine", *TRACKED_ORIGINS, "sweep")
#: how a tracked run may end, and the status each is stored as
END_STATUSES = {
    "completed": states.COMPLETED,
    "failed": states.FAILED,
    "killed": states.CANCELLED,
}
#: the detail of a run the heartbeat sweep failed (a later end_run may overrule it)
SILENT_DETAIL = "no heartbeat for {seconds:g} s: the script was killed or lost its connection"
_SILENT_PREFIX = "no heartbeat for "
MAX_PARAM_KEY_LENGTH = 250
MAX_ERROR_LENGTH = 10_000
DATASET_KEYS = ("name", "source", "digest", "schema", "rows", "context")
DEFAULT_HEARTBEAT_TIMEOUT = 300.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _event(
    session: Session,
    row: TrainingExperiment,
    new: str,
    detail: str | None,
    events: list[dict[str, Any]],
    *,
    at: datetime,
    initial: bool = False,
) -> None:
    """Change the status of ``row`` with an event row, as the job queue records them."""
    old = None if initial else row.status
    row.status = new
    row.status_detail = detail
    session.add(
        ExperimentEvent(experiment_id=row.id, old_status=old, new_status=new, detail=detail, at=at)
    )
    events.append(
        {
            "experiment_id": str(row.id),
            "old": old,
            "new": new,
            "detail": detail,
            "at": at.isoformat(),
        }
    )


def check_params(params: object) -> dict[str, Any]:
    """Run parameters: a JSON object with keys of 1-250 characters."""
    if params is None:
        return {}
    checked = rules.check_json("params", params)  # type: ignore[arg-type]
    for key in checked:
        v.check_text(key, field="params key", min_length=1, max_length=MAX_PARAM_KEY_LENGTH)
    return checked


def check_dataset(dataset: object) -> dict[str, Any]:
    """A dataset record: ``{"name", "source", "digest", "schema", "rows", "context"}``,
    ``name`` or ``source`` required, the rest optional."""
    if not isinstance(dataset, Mapping):
        msg = 'dataset must be an object like {"name", "source", "digest", "schema", "rows"}'
        raise ValidationError(msg, details={"field": "dataset"})
    unknown = sorted(str(k) for k in dataset if k not in DATASET_KEYS)
    if unknown:
        msg = f"dataset: unknown keys {unknown}; allowed: {', '.join(DATASET_KEYS)}"
        raise ValidationError(msg, details={"field": "dataset"})
    checked = v.check_json(dict(dataset), field="dataset", max_bytes=64 * 1024)
    for key in ("name", "source", "digest", "context"):
        if checked.get(key) is not None:
            v.check_text(checked[key], field=f"dataset.{key}", max_length=v.MAX_SHORT_TEXT_LENGTH)
    if not checked.get("name") and not checked.get("source"):
        msg = "dataset needs a name or a source"
        raise ValidationError(msg, details={"field": "dataset"})
    rows = checked.get("rows")
    if rows is not None:
        v.check_int(rows, field="dataset.rows", low=0, high=2**53 - 1)
    return checked


def _check_origin(origin: object) -> str:
    if origin not in TRACKED_ORIGINS:
        msg = f"origin {origin!r} must be one of {', '.join(TRACKED_ORIGINS)}"
        raise ValidationError(msg, details={"field": "origin"})
    return origin  # type: ignore[return-value]


def _check_end_status(status: object) -> str:
    if status not in END_STATUSES:
        msg = f"status {status!r} must be one of {', '.join(END_STATUSES)}"
        raise ValidationError(msg, details={"field": "status"})
    return END_STATUSES[status]  # type: ignore[index]


def _time(value: object, field: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            msg = f"{field} {value!r} is not an ISO 8601 time"
            raise ValidationError(msg, details={"field": field}) from None
    return v.as_utc(value, field=field)


class TrackedRuns:
    """The tracked-run half of :class:`~mlrig.experiments.ExperimentService` (a mixin: it
    uses the service's database, queue, hooks, settings and lookups)."""

    db: Database
    queue: JobQueue
    hooks: Hooks
    settings: Settings | None

    if TYPE_CHECKING:  # provided by ExperimentService and RunGroups

        def _row(self, session: Session, ref: str | uuid.UUID) -> TrainingExperiment: ...
        def get(self, ref: str | uuid.UUID) -> View: ...
        def ensure_group(self, name: str, **kwargs: Any) -> View: ...

    @property
    def heartbeat_timeout(self) -> float:
        """Seconds of silence after which a running tracked run is failed."""
        if self.settings is None:
            return DEFAULT_HEARTBEAT_TIMEOUT
        return float(self.settings.tracking.heartbeat_timeout_seconds)

    def _locked(self, session: Session, ref: str | uuid.UUID) -> TrainingExperiment:
        """The run ``ref``, locked for a read-then-write (SQLite: the write lock)."""
        self.db.begin_write(session)
        row = self._row(session, ref)
        if self.db.dialect == "postgresql":
            session.refresh(row, with_for_update=True)
        return row

    def _fire(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.hooks.experiment_state_changed(event)

    @staticmethod
    def _require_tracked(row: TrainingExperiment, what: str) -> None:
        if row.origin == "sweep":  # its status is the sweep's: mlrig sweeps stop ends it
            msg = (
                f"experiment {row.name!r} is a sweep, run by its trials; only tracked runs "
                f"(mlrig.start_run) can be {what}"
            )
            raise ConflictError(msg, details={"experiment": str(row.id), "origin": row.origin})
        if row.origin == "engine":
            msg = (
                f"experiment {row.name!r} is run by the engine (trainer {row.trainer!r}); "
                f"only tracked runs (mlrig.start_run) can be {what}"
            )
            raise ConflictError(msg, details={"experiment": str(row.id), "origin": row.origin})

    # --- starting -------------------------------------------------------------------------

    def start_run(
        self,
        *,
        actor: Principal,
        name: str | None = None,
        group: str | None = None,
        parent: str | uuid.UUID | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        description: str | None = None,
        reproducibility: dict[str, Any] | None = None,
        origin: str = "tracking",
        started_at: datetime | str | None = None,
    ) -> View:
        """Start a tracked run: a new experiment, ``running`` now (or since ``started_at``,
        for imports), no trainer.

        :param name: default ``<group or "run">-<yyyymmdd-HHMMSS>-<4 hex>``.
        :param group: the study it belongs to, made on first use (:meth:`ensure_group`).
        :param parent: the run it is nested in (an id or a name).
        :param params: its parameters (more with :meth:`log_params`).
        :param reproducibility: git commit, Python and package versions, command line,
            seed... (an int ``seed`` also fills the experiment's seed).
        :param origin: ``tracking``, ``mlflow`` or ``import``.
        :raises ValidationError: a bad value.
        :raises NotFoundError: no such parent.
        :raises ConflictError: an experiment with this name exists.
        """
        origin = _check_origin(origin)
        since = _time(started_at, "started_at")
        fields = {
            "description": v.check_optional_text(
                description, field="description", max_length=v.MAX_DESCRIPTION_LENGTH
            ),
            "params": check_params(params),
            "tags": v.check_tags(tags or {}),
            "facts": rules.check_json("reproducibility", reproducibility or {}),
        }
        seed = fields["facts"].get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= v.INT64_MAX:
            seed = None
        group_name = None
        if group is not None:
            group_name = self.ensure_group(group)["name"]
        now = utcnow()
        if name is None:
            stamp = (since or now).strftime("%Y%m%d-%H%M%S")
            name = f"{name_stem(group_name)}-{stamp}-{secrets.token_hex(2)}"
        name = rules.check_name(name)
        events: list[dict[str, Any]] = []
        with self.db.session() as session:
            parent_id = None if parent is None else self._row(session, parent).id
            taken = session.scalar(
                select(TrainingExperiment.id).where(TrainingExperiment.name == name)
            )
            if taken is not None:
                msg = f"an experiment named {name!r} already exists; pick another name"
                raise ConflictError(msg, details={"name": name})
            start = since or now
            row = TrainingExperiment(
                id=uuid.uuid4(),
                name=name,
                description=fields["description"],
                trainer=None,
                hyperparameters=fields["params"],
                configuration={"submitted_by": actor.name},
                resources={},
                priority=0,
                attempts=1,
                max_attempts=1,
                checkpoint_interval_s=0,
                seed=seed,
                reproducibility=fields["facts"],
                created_by=actor.user_id,
                origin=origin,
                parent_id=parent_id,
                group_name=group_name,
                tags=fields["tags"],
                started_at=start,
                heartbeat_at=now,
                created_at=start,
            )
            session.add(row)
            try:
                session.flush()
            except Exception as exc:  # a concurrent start took the name since the check
                from sqlalchemy.exc import IntegrityError

                if not isinstance(exc, IntegrityError):
                    raise
                msg = f"an experiment named {name!r} was just created by another request"
                raise ConflictError(msg, details={"name": name}) from None
            _event(session, row, states.CREATED, None, events, at=start, initial=True)
            _event(session, row, states.RUNNING, f"tracked run ({origin})", events, at=start)
            key = row.id
        self._fire(events)
        return self.get(key)

    # --- params, tags, datasets -------------------------------------------------------------

    def log_params(self, ref: str | uuid.UUID, params: dict[str, Any], *, actor: Principal) -> View:
        """Add parameters to a tracked run (merged; logging a key again with the same value
        is a no-op).

        :raises ConflictError: a key logged before with another value (as MLflow), or an
            engine experiment (its hyperparameters are fixed at create).
        """
        checked = check_params(params)
        with self.db.session() as session:
            row = self._locked(session, ref)
            self._require_tracked(row, "given params")
            current = dict(row.hyperparameters or {})
            changed = sorted(k for k, val in checked.items() if k in current and current[k] != val)
            if changed:
                key = changed[0]
                msg = (
                    f"param {key!r} of run {row.name!r} is already {current[key]!r}; a param "
                    f"is logged once (got {checked[key]!r}); use a tag or a metric for "
                    "values that change"
                )
                raise ConflictError(msg, details={"param": key, "keys": changed})
            merged = rules.check_json("params", {**current, **checked})
            if merged != current:
                row.hyperparameters = merged
            key = row.id
        return self.get(key)

    def set_tags(self, ref: str | uuid.UUID, tags: dict[str, str], *, actor: Principal) -> View:
        """Set tags of a run (merged over its tags; any run, engine ones too)."""
        checked = v.check_tags(tags)
        with self.db.session() as session:
            row = self._locked(session, ref)
            merged = v.check_tags({**(row.tags or {}), **checked})
            row.tags = merged
            key = row.id
        return self.get(key)

    def delete_tag(self, ref: str | uuid.UUID, key: str) -> View:
        """Remove one tag of a run.

        :raises NotFoundError: the run has no such tag.
        """
        v.check_text(key, field="tag key", min_length=1, max_length=v.MAX_TAG_KEY_LENGTH)
        with self.db.session() as session:
            row = self._locked(session, ref)
            tags = dict(row.tags or {})
            if key not in tags:
                msg = f"run {row.name!r} has no tag {key!r}"
                raise NotFoundError(msg, details={"tag": key})
            del tags[key]
            row.tags = tags
            ident = row.id
        return self.get(ident)

    def log_dataset(self, ref: str | uuid.UUID, dataset: dict[str, Any]) -> View:
        """Record a dataset the run used in ``reproducibility["datasets"]`` (as the engine
        does); the same record twice is kept once."""
        record = check_dataset(dataset)
        with self.db.session() as session:
            row = self._locked(session, ref)
            facts = dict(row.reproducibility or {})
            datasets = list(facts.get("datasets") or [])
            if record not in datasets:
                if len(datasets) >= v.MAX_DATASETS:
                    msg = f"run {row.name!r} has {len(datasets)} datasets; at most {v.MAX_DATASETS}"
                    raise ValidationError(msg)
                datasets.append(record)
                facts["datasets"] = datasets
                row.reproducibility = rules.check_json("reproducibility", facts)
            key = row.id
        return self.get(key)

    # --- liveness and the end ---------------------------------------------------------------

    def heartbeat(self, ref: str | uuid.UUID) -> View:
        """Tell the server the run's script is alive.

        Returns ``{"id", "name", "status", "heartbeat_at", "timeout_seconds"}``.

        :raises ConflictError: the run is not running (ended, stopped, failed by the
            heartbeat sweep); ``details["status"]`` says what it is.
        """
        now = utcnow()
        with self.db.session() as session:
            row = self._row(session, ref)
            key, name = row.id, row.name
            found = session.execute(
                update(TrainingExperiment)
                .where(
                    TrainingExperiment.id == key,
                    TrainingExperiment.status == states.RUNNING,
                    TrainingExperiment.origin.not_in(("engine", "sweep")),
                )
                .values(heartbeat_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            if not found:
                self._require_tracked(row, "sent heartbeats")
                session.expire(row)
                status = row.status
                msg = f"run {name!r} is {status}, not running; resume it to log more"
                raise ConflictError(msg, details={"status": status, "experiment": str(key)})
        return {
            "id": str(key),
            "name": name,
            "status": states.RUNNING,
            "heartbeat_at": now.isoformat(),
            "timeout_seconds": self.heartbeat_timeout,
        }

    def end_run(
        self,
        ref: str | uuid.UUID,
        *,
        status: str = "completed",
        error: str | None = None,
        ended_at: datetime | str | None = None,
        actor: Principal | None = None,
    ) -> View:
        """End a tracked run: ``completed``, ``failed`` (``error``: what went wrong) or
        ``killed`` (stored as ``cancelled`` with the detail ``killed``).

        Ending a run again with its current status changes nothing (a retried request);
        a run the heartbeat sweep failed may still be ended by its script (it was only
        cut off), which overrules the sweep.

        :raises ConflictError: the run already ended otherwise, or is an engine job.
        """
        new = _check_end_status(status)
        error = v.check_optional_text(error, field="error", max_length=MAX_ERROR_LENGTH)
        end = _time(ended_at, "ended_at")
        if status == "killed":
            detail = "killed" if not error else f"killed: {error}"
        else:
            detail = error
        events: list[dict[str, Any]] = []
        with self.db.session() as session:
            row = self._locked(session, ref)
            self._require_tracked(row, "ended")
            key = row.id
            swept = row.status == states.FAILED and (row.status_detail or "").startswith(
                _SILENT_PREFIX
            )
            again = row.status == new and row.status in states.FINAL and not swept
            if row.status in states.FINAL and not swept and not again:
                msg = f"run {row.name!r} already ended {row.status}; resume it first"
                raise ConflictError(msg, details={"status": row.status})
            if row.status != states.RUNNING and not swept and not again:
                msg = f"run {row.name!r} is {row.status}; only a running run can be ended"
                raise ConflictError(msg, details={"status": row.status})
            if not again:
                at = end or utcnow()
                row.completed_at = at
                _event(session, row, new, detail, events, at=at)
        self._fire(events)
        return self.get(key)

    def resume_run(self, ref: str | uuid.UUID, *, actor: Principal | None = None) -> View:
        """Put an ended tracked run back to ``running`` (``mlrig.start_run(run_id=...)``);
        a running one just gets a heartbeat."""
        events: list[dict[str, Any]] = []
        with self.db.session() as session:
            row = self._locked(session, ref)
            self._require_tracked(row, "resumed")
            key = row.id
            now = utcnow()
            row.heartbeat_at = now
            if row.status != states.RUNNING:
                row.completed_at = None
                by = f" by {actor.name}" if actor is not None else ""
                _event(session, row, states.RUNNING, f"resumed{by}", events, at=now)
        self._fire(events)
        return self.get(key)

    def expire_silent_runs(self, now: datetime | None = None) -> int:
        """Fail the running tracked runs that sent no heartbeat for
        ``[tracking] heartbeat_timeout_seconds``. Returns how many it failed.

        One cheap read when none is silent (the usual case), so it can run every few
        seconds; each candidate is re-checked in the write, so a heartbeat that arrives
        meanwhile wins.
        """
        now = now or utcnow()
        timeout = self.heartbeat_timeout
        cutoff = now - timedelta(seconds=timeout)
        silent = (
            (TrainingExperiment.status == states.RUNNING)
            # only runs whose client sends heartbeats: the MLflow client has no such
            # thing (its runs stay running until ended, as on an MLflow server) and an
            # import writes finished history
            & (TrainingExperiment.origin == "tracking")
            & (TrainingExperiment.heartbeat_at < cutoff)
        )
        with self.db.session() as session:
            candidates = list(session.scalars(select(TrainingExperiment.id).where(silent)))
        if not candidates:
            return 0
        events: list[dict[str, Any]] = []
        detail = SILENT_DETAIL.format(seconds=timeout)
        with self.db.session() as session:
            self.db.begin_write(session)
            stmt = select(TrainingExperiment).where(silent, TrainingExperiment.id.in_(candidates))
            if self.db.dialect == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            for row in session.scalars(stmt):
                row.completed_at = now
                _event(session, row, states.FAILED, detail, events, at=now)
        self._fire(events)
        return len(events)
