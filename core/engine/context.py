"""The :class:`JobContext` a trainer gets: metrics, checkpoints, early stopping, artifacts,
model registration. It lives in the job's own process (see :mod:`mlrig.engine.runner`).
"""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
import signal
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlrig.engine.early_stopping import EarlyStopping
from mlrig.errors import MlrigError
from mlrig.experiments.metrics import (
    AttemptFence,
    AttemptLostError,
    check_points,
    drop_points,
    insert_checked,
    write_points,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mlrig.engine.queue import ClaimedJob
    from mlrig.platform import Platform
    from mlrig.search.pruning import ASHA, Decision, MedianStoppingRule

METRIC_KINDS = ("train", "validation", "test")
#: metric points are written when this many are buffered, or after FLUSH_SECONDS
FLUSH_POINTS = 1000
FLUSH_SECONDS = 1.0


class LeaseLostError(MlrigError):
    """This attempt no longer holds the job (cancelled, or requeued after a lost lease)."""

    code = "lease_lost"
    http_status = 409


class TrialPruning:
    """A sweep trial's pruning: the rule, the objective it watches and the trial's best
    value so far (what the median rule compares)."""

    def __init__(self, sweep: dict[str, Any]) -> None:
        from mlrig.search.pruning import make_rule

        self.sweep_id = sweep["id"]
        self.trial_id = sweep.get("trial_id")
        self.objective: str = sweep["objective"]
        self.kind: str = sweep.get("objective_kind") or "validation"
        self.direction: str = sweep.get("direction") or "minimize"
        self.rule: MedianStoppingRule | ASHA = make_rule(sweep["pruner"])
        self.best: float | None = None

    def observe(self, value: float) -> float:
        """Take the value into the best so far; return the value the rule compares."""
        if math.isnan(value):
            return value
        if self.best is None or (value < self.best) == (self.direction == "minimize"):
            self.best = value
        return self.best if self.rule.compares_best else value


class JobContext:
    """What a trainer reports through. See :class:`mlrig.contracts.TrainingContext`."""

    def __init__(
        self, platform: Platform, job: ClaimedJob, *, workdir: Path, experiment: dict[str, Any]
    ) -> None:
        self.platform = platform
        self.job = job
        self.workdir = workdir
        self.experiment_id = str(job.id)
        self.name = experiment["name"]
        self.params: dict[str, Any] = dict(experiment.get("hyperparameters") or {})
        self.dataset: dict[str, Any] = dict(experiment.get("dataset") or {})
        self.seed: int | None = experiment.get("seed")
        self.model_name: str = experiment.get("model_name") or experiment["name"]
        self.checkpoint_interval = float(experiment.get("checkpoint_interval_s") or 0)
        self.early_stopping = EarlyStopping.from_rule(experiment.get("early_stopping"))
        self._last_checkpoint: dict[str, Any] | None = experiment.get("last_checkpoint")
        self._last_saved = time.monotonic()
        self._buffer: list[tuple[Any, ...]] = []
        #: whether this attempt dropped the points of earlier ones it logs again
        self._superseded = False
        self._last_flush = time.monotonic()
        self._sigterm = False
        self.last_metrics: dict[str, float] = {}
        self.last_step: int | None = None
        self.last_epoch: int | None = None
        self.resumed_from_step: int | None = None
        #: metric values dropped because they were NaN or infinite
        self.skipped_points = 0
        self.datasets: list[dict[str, str | None]] = []
        self.model_version_id: str | None = None
        self.created_by: uuid.UUID | None = experiment.get("created_by")
        #: the creator's name; looked up when first needed if the experiment lacks it
        #: (a job handed its experiment by the worker reads no user row it may not need)
        self._creator_name: str | None = experiment.get("creator_name")
        self._creator_known = "creator_name" in experiment
        self._submitted_by: str | None = experiment.get("submitted_by")
        self._closing_points = 0
        self._closing: dict[str, Any] = {}
        #: configuration["sweep"] of a sweep's trial (mlrig.sweeps), else None
        self.sweep: dict[str, Any] | None = experiment.get("sweep") or None
        self._pruning = self._make_pruning(self.sweep)
        #: the pruner's decision once it pruned this trial (should_stop is then True)
        self.pruned: Decision | None = None

    @staticmethod
    def _make_pruning(sweep: dict[str, Any] | None) -> TrialPruning | None:
        if not sweep or not sweep.get("pruner"):
            return None
        try:
            return TrialPruning(sweep)
        except (MlrigError, KeyError, TypeError) as exc:  # pruning must never fail a job
            print(f"[mlrig] no pruning for this trial: {exc}", flush=True)
            return None

    @property
    def creator_name(self) -> str | None:
        """Who created the experiment (what it registers is theirs, not the worker's)."""
        if not self._creator_known:
            name = self._submitted_by
            if self.created_by is not None:
                from mlrig.db.models import User

                with self.platform.db.session() as session:
                    user = session.get(User, self.created_by)
                    name = user.name if user is not None else name
            self._creator_name, self._creator_known = name, True
        return self._creator_name

    @creator_name.setter
    def creator_name(self, value: str | None) -> None:
        self._creator_name, self._creator_known = value, True

    # --- signals ------------------------------------------------------------------------

    def install_signal_handler(self) -> None:
        """SIGTERM: checkpoint at the next chance and stop (the worker's grace period)."""
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, _signum: int, _frame: Any) -> None:
        self._sigterm = True

    # --- metrics ---------------------------------------------------------------------------

    def log_metrics(
        self,
        metrics: dict[str, float],
        *,
        step: int | None = None,
        epoch: int | None = None,
        kind: str = "train",
    ) -> None:
        """Record metric values (batched to the database)."""
        if kind not in METRIC_KINDS:
            msg = f"metric kind must be one of {', '.join(METRIC_KINDS)}, got {kind!r}"
            raise MlrigError(msg)
        for name, raw in metrics.items():
            value = float(raw)
            stopper = self.early_stopping
            if stopper and name == stopper.monitor and kind == stopper.kind:
                stopper.update(value, step if step is not None else epoch)
            if not math.isfinite(value):
                # a diverging run (NaN loss) must not fail on the way to the database,
                # which keeps finite values only; early stopping saw it above
                self.skipped_points += 1
                continue
            self._buffer.append((name, value, step, epoch, kind))
            self.last_metrics[name] = value
        self.last_step = step if step is not None else self.last_step
        self.last_epoch = epoch if epoch is not None else self.last_epoch
        if len(self._buffer) >= FLUSH_POINTS or time.monotonic() - self._last_flush > FLUSH_SECONDS:
            self.flush()
        if self._pruning is not None:
            self._check_pruning(metrics, step if step is not None else epoch, kind)

    def _check_pruning(self, metrics: dict[str, float], step: int | None, kind: str) -> None:
        """At a step where the sweep's pruning rule decides: write this trial's points (so
        the peers see them), read the peers' values at the step, decide. A failure to read
        them never fails the job: training goes on."""
        pruning = self._pruning
        assert pruning is not None
        if self.pruned is not None or kind != pruning.kind or pruning.objective not in metrics:
            return
        if step is None:
            return
        reported = float(metrics[pruning.objective])
        compared = pruning.observe(reported)
        if not pruning.rule.evaluates(step):
            return
        self.flush()
        try:
            from mlrig.search.peers import peer_values

            peers = peer_values(
                self.platform.db,
                sweep_id=pruning.sweep_id,
                experiment_id=self.job.id,
                metric=pruning.objective,
                kind=pruning.kind,
                step=step,
            )
        except Exception as exc:  # pruning must never fail a job
            text = " ".join(str(exc).split())[:300]
            print(f"[mlrig] pruning check at step {step} skipped: {text}", flush=True)
            return
        decision = pruning.rule.decide(compared, peers, pruning.direction, step=step)
        if decision is not None and decision.prune:
            # the trial's value is the one it reported last (the median compares its best)
            self.pruned = dataclasses.replace(decision, value=reported)
            print(f"[mlrig] {decision.detail(pruning.objective)}", flush=True)

    def record_pruned(self, session: Session) -> None:
        """Mark this trial's ``sweep_trials`` row pruned, in the transaction completing the
        job (:meth:`mlrig.engine.queue.JobQueue.complete`'s ``also``)."""
        pruning = self._pruning
        if self.pruned is None or pruning is None or not pruning.trial_id:
            return
        from mlrig.search.peers import mark_pruned

        mark_pruned(session, pruning.trial_id, self.pruned, self.pruned.detail(pruning.objective))

    @property
    def _fence(self) -> AttemptFence:
        return AttemptFence(owner=self.job.owner, attempt=self.job.attempt)

    def _supersede(self, *, after_step: int | None) -> None:
        """Once per attempt, before its first point: drop what earlier attempts logged
        that this one logs again (after its checkpoint; everything on a fresh start), so
        the history holds one point per (name, step, kind), the surviving attempt's."""
        if self._superseded:
            return
        try:
            drop_points(self.platform.db, self.job.id, after_step=after_step, fence=self._fence)
        except AttemptLostError:
            msg = "this attempt lost the job; stopping"
            raise LeaseLostError(msg) from None
        self._superseded = True

    def flush(self, *, closing: bool = False) -> None:
        """Write buffered metric points now (``closing``: the attempt completed, so what
        earlier attempts logged goes even when this one logged nothing)."""
        if not self._buffer:
            if closing:
                self._supersede(after_step=None)
            return
        self._supersede(after_step=None)
        points, self._buffer = self._buffer, []
        try:
            count = write_points(self.platform.db, self.job.id, points, fence=self._fence)
        except AttemptLostError:
            msg = "this attempt lost the job; stopping"
            raise LeaseLostError(msg) from None
        self._last_flush = time.monotonic()
        self.platform.hooks.metrics_logged(self.experiment_id, count)

    def closing_writes(self) -> Callable[[Session], None]:
        """The attempt's last flush (:meth:`flush` with ``closing``) as writes for the
        transaction that completes the job (:meth:`JobQueue.complete`'s ``also``, which
        holds the job's row fenced by this attempt): the points still buffered, and what
        earlier attempts logged when this one has not superseded it yet. So the last
        points and the completion commit together or not at all, in one transaction
        instead of three. The points are checked here, before anything is written
        (:class:`~mlrig.errors.ValidationError` as from :meth:`flush`); call
        :meth:`closed` once the transaction committed."""
        points, self._buffer = self._buffer, []
        now = datetime.now(timezone.utc)
        rows = check_points(points, now=now) if points else []
        supersede = not self._superseded
        key = self.job.id
        self._closing = {
            "points": [list(row[:5]) for row in rows],
            "at": now.isoformat(),
            "supersede": supersede,
        }

        def write(session: Session) -> None:
            write_closing(session, key, rows, supersede=supersede, batch_time=now)

        self._closing_points = len(rows)
        return write

    def closing_record(self) -> dict[str, Any]:
        """What :meth:`closing_writes` writes, as JSON (:func:`closing_from_record` turns
        it back into the writes, in the worker that records a handed-over completion)."""
        return dict(self._closing)

    def closed(self) -> None:
        """The completing transaction with :meth:`closing_writes` committed."""
        self._superseded = True
        self._last_flush = time.monotonic()
        count, self._closing_points = self._closing_points, 0
        if count:
            self.platform.hooks.metrics_logged(self.experiment_id, count)

    # --- checkpoints -------------------------------------------------------------------------

    def checkpoint(self, state: dict[str, Any], *, force: bool = False) -> bool:
        """Save ``state`` if ``force``, on SIGTERM, or once ``checkpoint_interval`` passed
        since the last save. Call it every step; returns whether it saved."""
        due = time.monotonic() - self._last_saved >= self.checkpoint_interval
        if not (force or due or self._sigterm):
            return False
        self.flush()
        step = state.get("step", self.last_step)
        payload = {
            "state": state,
            "step": step,
            "epoch": self.last_epoch,
            "early_stopping": self.early_stopping.state() if self.early_stopping else None,
            "pruning": {"best": self._pruning.best} if self._pruning else None,
        }
        buffer = io.BytesIO()
        pickle.dump(payload, buffer, protocol=pickle.HIGHEST_PROTOCOL)
        name = f"{self.job.attempt:03d}-{uuid.uuid4().hex}.pkl"
        key = f"experiments/{self.experiment_id}/checkpoints/{name}"
        stored = self.platform.artifacts.put(key, buffer.getvalue())
        record = {
            "key": key,
            "sha256": stored.sha256,
            "size": stored.size,
            "step": step,
            "epoch": self.last_epoch,
            "attempt": self.job.attempt,
            "at": time.time(),
        }
        if not self.platform.queue.save_checkpoint(self.job, record):
            self.platform.artifacts.delete(key)
            msg = "this attempt lost the job; stopping"
            raise LeaseLostError(msg)
        previous, self._last_checkpoint = self._last_checkpoint, record
        if previous and previous.get("key") != key:
            self.platform.artifacts.delete(previous["key"])
        self._last_saved = time.monotonic()
        return True

    def restore(self) -> dict[str, Any] | None:
        """The last checkpointed state, or ``None`` on a fresh start.

        Metric points a lost attempt wrote after that checkpoint are removed, so the
        resumed run's history has no duplicates (on a fresh start, the first points this
        attempt writes replace all of the earlier attempts').
        """
        record = self._last_checkpoint
        if not record:
            return None
        raw = self.platform.artifacts.get_bytes(record["key"], expected_sha256=record["sha256"])
        payload = pickle.loads(raw)  # our own checkpoint, read back from our own store
        step = payload.get("step")
        if self.early_stopping:
            self.early_stopping.load(payload.get("early_stopping"))
        if self._pruning and payload.get("pruning"):
            self._pruning.best = payload["pruning"].get("best")
        if step is not None:
            self._supersede(after_step=step)
        else:  # a checkpoint without a step: which points follow it is unknown, keep all
            self._superseded = True
        self.resumed_from_step = step
        self.last_step, self.last_epoch = step, payload.get("epoch")
        return payload["state"]

    # --- control -------------------------------------------------------------------------

    def should_stop(self) -> bool:
        """Whether early stopping, the sweep's pruner (or a SIGTERM) asks the trainer to
        end now."""
        return (
            self._sigterm
            or self.pruned is not None
            or bool(self.early_stopping and self.early_stopping.triggered)
        )

    @property
    def stopped_early(self) -> bool:
        """Whether pruning or early stopping ended the run (it still completes)."""
        return self.pruned is not None or bool(
            self.early_stopping and self.early_stopping.triggered
        )

    @property
    def interrupted(self) -> bool:
        """Whether a SIGTERM asked this attempt to end (it must not count as completed)."""
        return self._sigterm

    @property
    def stop_reason(self) -> str | None:
        if self.pruned is not None and self._pruning is not None:
            return self.pruned.detail(self._pruning.objective)
        if self.early_stopping and self.early_stopping.triggered:
            return self.early_stopping.reason()
        return "stopped by SIGTERM" if self._sigterm else None

    # --- outputs ---------------------------------------------------------------------------

    def read_dataset(self, uri: str | None = None) -> Any:
        """Read a CSV/parquet dataset (default: the experiment's) through the storage layer;
        its hash goes into the lineage of the model and the reproducibility record."""
        from mlrig.registry.evaluation import read_dataset

        uri = uri or self.dataset.get("uri")
        if not uri:
            msg = "this experiment has no dataset: create it with --data URI --target COLUMN"
            raise MlrigError(msg)
        if "://" not in uri and not Path(uri).is_absolute():
            # the job runs in its own folder: a relative path means the config's folder
            uri = str(self.platform.settings.resolve_path(uri))
        frame, digest = read_dataset(uri, access=self.platform.datasets)  # [datasets] bounds
        self.record_dataset(uri, digest)
        return frame

    def record_dataset(self, uri: str, digest: str | None) -> None:
        """Note a dataset the run read (for lineage and reproducibility)."""
        entry = {"uri": uri, "hash": digest}
        if entry not in self.datasets:
            self.datasets.append(entry)

    def log_artifact(self, path: Path, *, name: str | None = None) -> str:
        """Store a file the run produced; return its key in the artifact store."""
        key = f"experiments/{self.experiment_id}/artifacts/{name or Path(path).name}"
        self.platform.artifacts.put(key, Path(path))
        return key

    def register_model(
        self, model: Any, *, name: str | None = None, sample: Any = None, **metadata: Any
    ) -> dict[str, Any]:
        """Register ``model`` as a new version with lineage to this experiment."""
        from mlrig.engine.nodes import node_role
        from mlrig.registry.packaging import register_model
        from mlrig.security import Principal

        if node_role(self) is not None:  # one of several nodes (mlrig.engine.nodes)
            from mlrig.contracts.trainer import PermanentError

            msg = f"{self.name!r} is a node job of a multi-node run: its leader registers the model"
            raise PermanentError(msg)
        self.flush()
        metadata.setdefault(
            "params",
            {k: v for k, v in self.params.items() if isinstance(v, (str, int, float, bool))},
        )
        metadata.setdefault("metrics", dict(self.last_metrics))
        metadata.setdefault("datasets", list(self.datasets))
        if self.sweep is not None:  # a sweep's trial: a candidate, registered if best
            from mlrig.sweeps.candidates import store_candidate

            return store_candidate(self, model, name=name, sample=sample, **metadata)
        version = register_model(
            self.platform,
            model,
            name=name or self.model_name,
            # the experiment's creator registers it (created_by), whoever runs the job
            actor=Principal(
                name=self.creator_name or f"experiment:{self.name}",
                role="developer",
                user_id=self.created_by,
            ),
            sample=sample,
            source_experiment_id=self.experiment_id,
            source_run=f"attempt-{self.job.attempt}",
            **metadata,
        )
        self.model_version_id = version["id"]
        return version


def write_closing(
    session: Session,
    key: uuid.UUID,
    rows: list[tuple[Any, ...]],
    *,
    supersede: bool,
    batch_time: datetime,
) -> None:
    """An attempt's last flush in the transaction completing its job: what earlier
    attempts logged goes (``supersede``), then the checked ``rows`` are inserted."""
    if supersede:
        from sqlalchemy import delete

        from mlrig.db.models import TrainingMetric

        session.execute(delete(TrainingMetric).where(TrainingMetric.experiment_id == key))
    insert_checked(session, key, rows, batch_time=batch_time)


def closing_from_record(
    key: uuid.UUID, record: dict[str, Any]
) -> tuple[Callable[[Session], None], int]:
    """:meth:`JobContext.closing_record` back into the writes (the points checked again)
    and how many points they write."""
    at = datetime.fromisoformat(record["at"])
    points = [tuple(point) for point in record.get("points") or ()]
    rows = check_points(points, now=at) if points else []
    supersede = bool(record.get("supersede"))

    def write(session: Session) -> None:
        write_closing(session, key, rows, supersede=supersede, batch_time=at)

    return write, len(rows)
