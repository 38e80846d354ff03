"""Training experiments: create, list, show, start, stop, rerun and compare them; their
metrics and logs. The job queue (:mod:`mlrig.engine.queue`) owns every state change."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mlrig import validation as v
from mlrig.db.lookup import find_by_id_prefix
from mlrig.db.models import EXPERIMENT_STATUSES, ExperimentEvent, TrainingExperiment, User
from mlrig.errors import ConflictError, NotFoundError, ValidationError
from mlrig.experiments import metrics, points, rules
from mlrig.experiments.groups import RunGroups
from mlrig.experiments.logs import DEFAULT_READ_BYTES, LogStore
from mlrig.experiments.run_files import RunFiles
from mlrig.experiments.runs import ORIGINS, TrackedRuns
from mlrig.experiments.views import event_view, experiment_summary, experiment_view

if TYPE_CHECKING:
    from mlrig.artifacts import ArtifactStore
    from mlrig.config import Settings
    from mlrig.db import Database
    from mlrig.engine.queue import JobQueue
    from mlrig.hooks import Hooks
    from mlrig.security import Principal

View = dict[str, Any]
Views = list[dict[str, Any]]
#: the most experiments one comparison takes
MAX_COMPARE = 50
_RERUN_SUFFIX = re.compile(r"-rerun-(\d+)$")


def _as_uuid(ref: str | uuid.UUID) -> uuid.UUID | None:
    if isinstance(ref, uuid.UUID):
        return ref
    try:
        return uuid.UUID(str(ref))
    except ValueError:
        return None


class ExperimentService(TrackedRuns, RunGroups, RunFiles):
    """Experiments as plain dicts; the API and the CLI are thin layers over it.

    Tracked runs (:mod:`mlrig.experiments.runs`), their groups
    (:mod:`mlrig.experiments.groups`) and files (:mod:`mlrig.experiments.run_files`) are
    mixed in: one service for every kind of run.

    :param db: the database.
    :param queue: the job queue, which records every state change and fires its hook.
    :param artifacts: where logs (and checkpoints) live.
    :param hooks: the hook facade (``experiment_state_changed``, ``metrics_logged``).
    """

    def __init__(
        self,
        db: Database,
        queue: JobQueue,
        artifacts: ArtifactStore,
        hooks: Hooks,
        *,
        settings: Settings | None = None,
    ) -> None:
        self.db = db
        self.queue = queue
        self.artifacts = artifacts
        self.hooks = hooks
        self.settings = settings
        self.logs = LogStore(artifacts)

    # --- lookups ------------------------------------------------------------------------

    def _row(self, session: Session, ref: str | uuid.UUID) -> TrainingExperiment:
        key = _as_uuid(ref)
        if key is not None:
            row = session.get(TrainingExperiment, key)
        else:
            row = session.scalar(
                select(TrainingExperiment)
                .where(TrainingExperiment.name == str(ref))
                .order_by(TrainingExperiment.created_at.desc())
                .limit(1)
            )
            if row is None:  # a unique id prefix, as tables show ids truncated
                key = find_by_id_prefix(session, TrainingExperiment.id, ref, what="experiment")
                row = session.get(TrainingExperiment, key) if key is not None else None
        if row is None:
            msg = f"no experiment {str(ref)!r} (an id or a name); see: mlrig experiments list"
            raise NotFoundError(msg, details={"experiment": str(ref)})
        return row

    def resolve(self, ref: str | uuid.UUID) -> uuid.UUID:
        """The id of the experiment ``ref`` (an id or a name)."""
        with self.db.session() as session:
            return self._row(session, ref).id

    def status(self, ref: str | uuid.UUID) -> str:
        """The experiment's current status (one small query, for pollers)."""
        key = _as_uuid(ref) or self.resolve(ref)
        with self.db.session() as session:
            found = session.scalar(
                select(TrainingExperiment.status).where(TrainingExperiment.id == key)
            )
        if found is None:
            msg = f"no experiment {str(ref)!r}; see: mlrig experiments list"
            raise NotFoundError(msg, details={"experiment": str(ref)})
        return found

    def _creators(self, session: Session, rows: Iterable[TrainingExperiment]) -> dict[Any, str]:
        ids = {r.created_by for r in rows if r.created_by is not None}
        if not ids:
            return {}
        return dict(session.execute(select(User.id, User.name).where(User.id.in_(ids))).all())

    def _events(self, session: Session, key: uuid.UUID) -> Views:
        rows = session.scalars(
            select(ExperimentEvent)
            .where(ExperimentEvent.experiment_id == key)
            .order_by(ExperimentEvent.at)
        )
        return [event_view(e) for e in rows]

    # --- creating -----------------------------------------------------------------------

    def create(
        self,
        *,
        name: str,
        trainer: str,
        actor: Principal,
        description: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        dataset: dict[str, Any] | None = None,
        resources: dict[str, int] | None = None,
        priority: int = 0,
        checkpoint_interval_s: int = 600,
        early_stopping: dict[str, Any] | None = None,
        max_attempts: int = 3,
        seed: int | None = None,
        model_name: str | None = None,
        start: bool = False,
    ) -> View:
        """Create an experiment (``created``; ``queued`` too with ``start=True``).

        :param trainer: an installed trainer backend (``mlrig plugins list``).
        :param dataset: ``{"uri": ..., "target": ...}`` plus anything the trainer reads.
        :param resources: ``{"cpus", "gpus", "memory_mb"}``, non-negative integers.
        :param early_stopping: ``{"monitor", "mode", "patience", "min_delta", "kind"}``.
        :param seed: recorded for reruns; a random one is drawn when not given.
        :param model_name: the registry model the trainer registers (default: ``name``).
        :raises ValidationError: a bad value (the message says which and what is allowed).
        :raises ConflictError: an experiment with this name exists.
        """
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
            "early_stopping": rules.check_early_stopping(early_stopping),
            "max_attempts": rules.check_int("max_attempts", max_attempts, low=1, high=100),
            "model_name": rules.check_model_name(model_name),
        }
        fields["seed"], source = rules.check_seed(seed)
        self._check_trainable(fields)
        return self._create(
            fields, actor, {"seed": fields["seed"], "seed_source": source}, start=start
        )

    def _check_trainable(self, fields: dict[str, Any]) -> None:
        """What would fail every attempt is refused now, not after a worker tried: a
        dataset the job may not read (``[datasets]`` bounds, the rule the job reads
        under), a local one that does not exist, and what the trainer's ``check``
        refuses."""
        from mlrig.backends import load_backend

        dataset = fields["dataset"]
        if dataset is not None and self.settings is not None:
            from mlrig.datasets.access import DatasetAccess

            DatasetAccess.from_settings(self.settings, self.artifacts).check(dataset["uri"])
            rules.check_dataset_exists(dataset["uri"], self.settings.resolve_path)
        name = fields["trainer"]
        trainer = load_backend("trainers", name).from_options({}, where=f"trainers.{name}")
        trainer.check(params=fields["hyperparameters"], dataset=dataset)

    def _create(
        self, fields: dict[str, Any], actor: Principal, facts: dict[str, Any], *, start: bool
    ) -> View:
        with self.db.session() as session:
            taken = session.scalar(
                select(TrainingExperiment.id).where(TrainingExperiment.name == fields["name"])
            )
            if taken is not None:
                msg = (
                    f"an experiment named {fields['name']!r} already exists; pick another "
                    f"name, or run it again: mlrig experiments rerun {fields['name']}"
                )
                raise ConflictError(msg, details={"name": fields["name"]})
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
                },
                resources=fields["resources"],
                priority=fields["priority"],
                checkpoint_interval_s=fields["checkpoint_interval_s"],
                early_stopping=fields["early_stopping"],
                max_attempts=fields["max_attempts"],
                seed=fields["seed"],
                reproducibility=facts,
                created_by=actor.user_id,
            )
            session.add(row)
            try:
                session.flush()  # the event row refers to it
            except IntegrityError:  # a concurrent create took the name since the check
                msg = (
                    f"an experiment named {fields['name']!r} was just created by another "
                    "request; pick another name"
                )
                raise ConflictError(msg, details={"name": fields["name"]}) from None
            events = self.queue.record_created(session, row)
        for event in events:
            self.hooks.experiment_state_changed(event)
        if start:
            self.queue.enqueue(row.id)
        return self.get(row.id)

    def rerun(self, ref: str | uuid.UUID, *, actor: Principal) -> View:
        """Queue a new experiment identical to ``ref`` (trainer, hyperparameters, dataset,
        resources, seed, rules), named ``<name>-rerun-N``."""
        self._engine_only(ref, "rerun by the engine")
        with self.db.session() as session:
            source = self._row(session, ref)
            base = _RERUN_SUFFIX.sub("", source.name)
            siblings = session.scalars(
                select(TrainingExperiment.name).where(
                    TrainingExperiment.name.startswith(f"{base}-rerun-", autoescape=True)
                )
            )
            numbers = [
                int(m.group(1))
                for n in siblings
                if (m := _RERUN_SUFFIX.search(n)) and n == f"{base}-rerun-{m.group(1)}"
            ]
            config = source.configuration or {}
            fields = {
                "name": f"{base}-rerun-{max(numbers, default=0) + 1}",
                "trainer": rules.check_trainer(source.trainer),
                "description": source.description,
                "hyperparameters": dict(source.hyperparameters or {}),
                "dataset": config.get("dataset"),
                "resources": dict(source.resources or {}),
                "priority": source.priority,
                "checkpoint_interval_s": source.checkpoint_interval_s,
                "early_stopping": source.early_stopping,
                "max_attempts": source.max_attempts,
                "model_name": config.get("model_name"),
                "seed": source.seed,
            }
            facts = {"seed": source.seed, "seed_source": "rerun", "rerun_of": str(source.id)}
        return self._create(fields, actor, facts, start=True)

    # --- reading ------------------------------------------------------------------------

    def get(self, ref: str | uuid.UUID) -> View:
        """An experiment with its events timeline, latest metric values, last checkpoint,
        reproducibility record and result."""
        with self.db.session() as session:
            row = self._row(session, ref)
            creators = self._creators(session, [row])
            events = self._events(session, row.id)
        return experiment_view(
            row,
            creator=creators.get(row.created_by),
            events=events,
            metrics=metrics.latest_values(self.db, row.id),
        )

    def list(
        self,
        *,
        status: str | None = None,
        name_prefix: str | None = None,
        trainer: str | None = None,
        origin: str | None = None,
        group: str | None = None,
        parent: str | uuid.UUID | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Views:
        """Experiments, newest first; ``origin`` (engine, tracking, mlflow, import),
        ``group`` (a run group's name) and ``parent`` (the runs nested in that one)
        filter them."""
        if status is not None and status not in EXPERIMENT_STATUSES:
            msg = f"unknown status {status!r}; use one of {', '.join(EXPERIMENT_STATUSES)}"
            raise ValidationError(msg)
        if origin is not None and origin not in ORIGINS:
            msg = f"unknown origin {origin!r}; use one of {', '.join(ORIGINS)}"
            raise ValidationError(msg)
        if not 1 <= limit <= 1000 or not 0 <= offset <= v.INT64_MAX:
            msg = f"limit must be 1-1000 and offset >= 0, got limit={limit}, offset={offset}"
            raise ValidationError(msg)
        stmt = select(TrainingExperiment).order_by(TrainingExperiment.created_at.desc())
        if status is not None:
            stmt = stmt.where(TrainingExperiment.status == status)
        if name_prefix:
            stmt = stmt.where(TrainingExperiment.name.startswith(name_prefix, autoescape=True))
        if trainer:
            stmt = stmt.where(TrainingExperiment.trainer == trainer)
        if origin is not None:
            stmt = stmt.where(TrainingExperiment.origin == origin)
        if group:  # empty: no filter, as name_prefix
            stmt = stmt.where(TrainingExperiment.group_name == group)
        with self.db.session() as session:
            if parent:
                stmt = stmt.where(TrainingExperiment.parent_id == self._row(session, parent).id)
            rows = session.scalars(stmt.limit(limit).offset(offset)).all()
            creators = self._creators(session, rows)
        return [experiment_summary(r, creator=creators.get(r.created_by)) for r in rows]

    def events(self, ref: str | uuid.UUID) -> Views:
        """The state changes of an experiment, oldest first."""
        with self.db.session() as session:
            return self._events(session, self._row(session, ref).id)

    def compare(self, refs: Sequence[str | uuid.UUID]) -> View:
        """Hyperparameters and the last value of each metric, side by side.

        Returns ``{"experiments": [...], "hyperparameters": {name: [value per
        experiment]}, "metrics": {name: [...]}, "differing": [hyperparameter names]}``.
        """
        if not 2 <= len(refs) <= MAX_COMPARE:
            msg = f"compare takes 2 to {MAX_COMPARE} experiments, got {len(refs)}"
            raise ValidationError(msg)
        with self.db.session() as session:
            rows = [self._row(session, ref) for ref in refs]
        latest = [metrics.latest_values(self.db, row.id) for row in rows]
        params = sorted({k for row in rows for k in (row.hyperparameters or {})})
        names = sorted({k for values in latest for k in values})
        table = {p: [(row.hyperparameters or {}).get(p) for row in rows] for p in params}
        return {
            "experiments": [
                {
                    "id": str(r.id),
                    "name": r.name,
                    "status": r.status,
                    "trainer": r.trainer,
                    "origin": r.origin,
                    "group": r.group_name,
                }
                for r in rows
            ],
            "hyperparameters": table,
            "metrics": {n: [v[n]["value"] if n in v else None for v in latest] for n in names},
            "differing": [p for p, values in table.items() if any(v != values[0] for v in values)],
        }

    # --- state changes ------------------------------------------------------------------

    def _engine_only(self, ref: str | uuid.UUID, what: str) -> uuid.UUID:
        with self.db.session() as session:
            row = self._row(session, ref)
            if row.origin == "sweep":
                msg = (
                    f"experiment {row.name!r} is a sweep: the engine runs its trials, not "
                    f"the sweep, so it cannot be {what}; start a new sweep (mlrig sweeps "
                    "create) or rerun one of its trials"
                )
                raise ConflictError(msg, details={"origin": row.origin})
            if row.origin != "engine":
                msg = (
                    f"experiment {row.name!r} is a tracked run (origin {row.origin}), not a "
                    f"job of the engine: it cannot be {what}; resume it from its script "
                    "(mlrig.start_run(run_id=...))"
                )
                raise ConflictError(msg, details={"origin": row.origin})
            node = (row.configuration or {}).get("node")
            if isinstance(node, dict):  # one node of a multi-node run (mlrig.engine.nodes)
                leader = session.get(TrainingExperiment, _as_uuid(node.get("leader_id")))
                name = leader.name if leader is not None else node.get("leader_id")
                msg = (
                    f"experiment {row.name!r} is node {node.get('index')} of the multi-node "
                    f"run {name!r}: it cannot be {what} on its own; start or rerun {name!r}, "
                    "which starts its nodes"
                )
                raise ConflictError(msg, details={"leader": str(node.get("leader_id"))})
            return row.id

    def start(self, ref: str | uuid.UUID) -> View:
        """Queue a created, failed or cancelled experiment (:class:`ConflictError` else,
        and for tracked runs: the engine has nothing to run)."""
        self.queue.enqueue(self._engine_only(ref, "queued"))
        return self.get(ref)

    def stop(self, ref: str | uuid.UUID) -> View:
        """Cancel an experiment; a running one is ended by its worker within seconds."""
        self.queue.cancel(self.resolve(ref))
        return self.get(ref)

    # --- metrics and logs ---------------------------------------------------------------

    def log_metrics(self, ref: str | uuid.UUID, points: Iterable[metrics.Point]) -> View:
        """Write a batch of metric points (all or nothing) and fire ``metrics_logged``."""
        key = _as_uuid(ref) or self.resolve(ref)
        count = metrics.write_points(self.db, key, points)
        if count:
            self.hooks.metrics_logged(str(key), count)
        return {"experiment_id": str(key), "written": count}

    def metrics(
        self,
        ref: str | uuid.UUID,
        *,
        name: str | None = None,
        kind: str | None = None,
        after_step: int | None = None,
        limit: int | None = None,
        fields: Iterable[str] | None = None,
    ) -> View:
        """``{"experiment_id", "count", "metrics": history}`` (see
        :func:`mlrig.experiments.metrics.read_history`)."""
        chosen = metrics.history_fields(fields)  # a bad field fails before any lookup
        if name is not None:
            v.check_text(name, field="name", max_length=points.MAX_NAME_LENGTH)
        if after_step is not None:
            v.check_int(after_step, field="after_step", low=0, high=v.INT32_MAX)
        if limit is not None:
            v.check_int(limit, field="limit", low=1, high=v.INT64_MAX)
        key = self.resolve(ref)
        history = metrics.read_history(
            self.db, key, name=name, kind=kind, after_step=after_step, limit=limit, fields=chosen
        )
        count = sum(len(series[chosen[0]]) for series in history.values())
        return {"experiment_id": str(key), "count": count, "metrics": history}

    def latest_metrics(self, ref: str | uuid.UUID) -> dict[str, Any]:
        """The last point of each metric (see :func:`metrics.latest_values`)."""
        return metrics.latest_values(self.db, self.resolve(ref))

    def read_logs(
        self, ref: str | uuid.UUID, offset: int = 0, limit: int = DEFAULT_READ_BYTES
    ) -> tuple[bytes, int]:
        """Log bytes from ``offset``, and the offset to read next."""
        key = _as_uuid(ref) or self.resolve(ref)
        return self.logs.read(key, offset, limit)
