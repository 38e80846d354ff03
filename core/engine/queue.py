"""The job queue: experiments in the database, claimed by priority then age.

PostgreSQL claims with ``SELECT ... FOR UPDATE SKIP LOCKED``, so any number of workers on
any number of machines take distinct jobs without waiting on each other. SQLite has one
writer at a time: a claim is one ``BEGIN IMMEDIATE`` transaction.

A claimed job carries a lease (``lease_owner``, ``lease_expires_at``) that its worker
renews with heartbeats. ``attempts`` is the fencing token: every write a worker or a job
makes about a job names the attempt it holds, so a worker that lost its lease (it was
presumed dead and the job was requeued) can no longer complete, fail or checkpoint it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from mlrig.db.models import EngineWorker, ExperimentEvent, TrainingExperiment
from mlrig.engine import nodes, states
from mlrig.errors import ConflictError, NotFoundError

if TYPE_CHECKING:
    from mlrig.db import Database
    from mlrig.hooks import Hooks

#: how many queued candidates a claim looks at to find one that fits the free resources
CLAIM_WINDOW = 16


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker holds: run it, heartbeat it, then complete or fail it."""

    id: uuid.UUID
    name: str
    trainer: str | None
    attempt: int
    max_attempts: int
    resources: dict[str, Any]
    owner: str
    #: what the job needs of its experiment as the claim read it
    #: (:func:`mlrig.engine.runner.job_experiment`), handed to the job so that it does
    #: not read it again; ``None`` where the job was not claimed here
    experiment: dict[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat learnt: whether the lease is still held, and the job's status."""

    held: bool
    status: str | None


class JobQueue:
    """Enqueue, claim, heartbeat, complete, fail, cancel and requeue jobs."""

    def __init__(self, db: Database, hooks: Hooks) -> None:
        self.db = db
        self.hooks = hooks

    # --- state changes ----------------------------------------------------------------

    def _record(
        self,
        session: Session,
        job: TrainingExperiment,
        new: str,
        detail: str | None,
        events: list[dict[str, Any]],
        *,
        initial: bool = False,
    ) -> None:
        old = None if initial else job.status
        job.status = new
        job.status_detail = detail
        now = utcnow()
        session.add(
            ExperimentEvent(
                experiment_id=job.id, old_status=old, new_status=new, detail=detail, at=now
            )
        )
        events.append(
            {
                "experiment_id": str(job.id),
                "old": old,
                "new": new,
                "detail": detail,
                "at": now.isoformat(),
            }
        )

    def _recorder(
        self, events: list[dict[str, Any]]
    ) -> Callable[[Session, TrainingExperiment, str, str | None], None]:
        def record(session: Session, job: TrainingExperiment, new: str, detail: str | None) -> None:
            self._record(session, job, new, detail, events)

        return record

    def _end_nodes(
        self, session: Session, job: TrainingExperiment, new: str, events: list[dict[str, Any]]
    ) -> None:
        """A leader leaving ``running``: its node jobs end with it (:mod:`mlrig.engine.nodes`;
        no query for a job without nodes)."""
        nodes.end_nodes(session, job, new, self._recorder(events), dialect=self.db.dialect)

    def _fire(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.hooks.experiment_state_changed(event)

    def _job(
        self, session: Session, job_id: uuid.UUID, *, lock: bool = False
    ) -> TrainingExperiment:
        stmt = select(TrainingExperiment).where(TrainingExperiment.id == job_id)
        if lock and self.db.dialect == "postgresql":
            stmt = stmt.with_for_update()
        job = session.scalar(stmt)
        if job is None:
            msg = f"no experiment {str(job_id)!r}"
            raise NotFoundError(msg)
        return job

    def record_created(self, session: Session, job: TrainingExperiment) -> list[dict[str, Any]]:
        """Log the ``created`` event (``None -> created``) of a new experiment, in the
        caller's transaction; the caller fires the returned events after committing."""
        events: list[dict[str, Any]] = []
        self._record(session, job, states.CREATED, None, events, initial=True)
        return events

    def record_status(
        self, session: Session, job: TrainingExperiment, new: str, detail: str | None = None
    ) -> list[dict[str, Any]]:
        """Change ``job``'s status with its event row in the caller's transaction (a sweep
        records its own status and queues its trials so); the caller fires the returned
        events after committing."""
        events: list[dict[str, Any]] = []
        self._record(session, job, new, detail, events)
        return events

    def enqueue(self, job_id: uuid.UUID) -> dict[str, Any]:
        """Queue a created (or finished, to run it again) experiment."""
        events: list[dict[str, Any]] = []
        with self.db.session() as session:
            self.db.begin_write(session)
            job = self._job(session, job_id, lock=True)
            if job.status not in states.STARTABLE:
                msg = (
                    f"experiment {job.name!r} is {job.status}; only created, failed or "
                    "cancelled experiments can be started"
                )
                raise ConflictError(msg, details={"status": job.status})
            job.queued_at = utcnow()
            job.lease_owner = None
            job.lease_expires_at = None
            if job.status in states.FINAL:
                job.attempts = 0
                job.completed_at = None
            self._record(session, job, states.QUEUED, None, events)
        self._fire(events)
        return events[-1]

    def cancel(self, job_id: uuid.UUID, *, detail: str = "stop requested") -> dict[str, Any]:
        """Cancel a job; a running one is killed by its worker at the next heartbeat."""
        events: list[dict[str, Any]] = []
        with self.db.session() as session:
            self.db.begin_write(session)
            job = self._job(session, job_id, lock=True)
            if job.status in states.FINAL:
                msg = f"experiment {job.name!r} already {job.status}"
                raise ConflictError(msg)
            job.completed_at = utcnow()
            self._record(session, job, states.CANCELLED, detail, events)
            self._end_nodes(session, job, states.CANCELLED, events)
        self._fire(events)
        return events[0]

    # --- claiming -------------------------------------------------------------------------

    def claim(
        self,
        owner: str,
        *,
        lease_seconds: float,
        fits: Callable[[dict[str, Any]], bool] = lambda _resources: True,
    ) -> ClaimedJob | None:
        """Take the highest-priority, oldest queued job whose resources ``fits`` accepts."""
        events: list[dict[str, Any]] = []
        with self.db.session() as session:
            self.db.begin_write(session)
            stmt = (
                select(TrainingExperiment)
                .where(TrainingExperiment.status == states.QUEUED)
                .order_by(TrainingExperiment.priority.desc(), TrainingExperiment.queued_at)
                .limit(CLAIM_WINDOW)
            )
            if self.db.dialect == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            job = next((j for j in session.scalars(stmt) if fits(j.resources or {})), None)
            if job is None:
                return None
            now = utcnow()
            job.attempts = (job.attempts or 0) + 1
            job.lease_owner = owner
            job.lease_expires_at = now + timedelta(seconds=lease_seconds)
            job.heartbeat_at = now
            job.started_at = job.started_at or now
            detail = f"attempt {job.attempts} on {owner}"
            self._record(session, job, states.RUNNING, detail, events)
            from mlrig.engine.runner import job_experiment

            claimed = ClaimedJob(
                id=job.id,
                name=job.name,
                trainer=job.trainer,
                attempt=job.attempts,
                max_attempts=job.max_attempts,
                resources=dict(job.resources or {}),
                owner=owner,
                experiment=job_experiment(job),
            )
        self._fire(events)
        return claimed

    def _fenced(self, job_id: uuid.UUID, owner: str, attempt: int) -> Any:
        return (
            (TrainingExperiment.id == job_id)
            & (TrainingExperiment.lease_owner == owner)
            & (TrainingExperiment.attempts == attempt)
            & (TrainingExperiment.status == states.RUNNING)
        )

    def heartbeat(self, job: ClaimedJob, *, lease_seconds: float) -> Heartbeat:
        """Renew the lease; ``held`` is False once the job was cancelled or requeued."""
        now = utcnow()
        with self.db.session() as session:
            result = session.execute(
                update(TrainingExperiment)
                .where(self._fenced(job.id, job.owner, job.attempt))
                .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
            )
            if result.rowcount == 1:
                return Heartbeat(True, states.RUNNING)
            status = session.scalar(
                select(TrainingExperiment.status).where(TrainingExperiment.id == job.id)
            )
            return Heartbeat(False, status)

    def complete(
        self,
        job: ClaimedJob,
        *,
        detail: str | None = None,
        result: dict[str, Any] | None = None,
        also: Callable[[Session], None] | None = None,
    ) -> bool:
        """Mark the job completed, if this attempt still holds it. Returns whether it did.

        :param also: more writes for the same transaction (a pruned sweep trial's row)."""
        return self._finish(job, states.COMPLETED, detail, result=result, also=also)

    def fail(self, job: ClaimedJob, reason: str, *, retry: bool = True) -> str | None:
        """Record a failed attempt: requeue while attempts remain (and ``retry``), else fail.

        Returns the new status, or ``None`` if this attempt no longer held the job.
        """
        again = retry and job.attempt < job.max_attempts
        new = states.QUEUED if again else states.FAILED
        if again:
            detail = f"attempt {job.attempt} failed: {reason}; requeued"
        elif not retry:
            detail = f"failed on attempt {job.attempt}, not retried (cannot succeed): {reason}"
        else:
            detail = f"failed after {job.attempt} attempt(s): {reason}"
        return new if self._finish(job, new, detail) else None

    def _finish(
        self,
        job: ClaimedJob,
        new: str,
        detail: str | None,
        result: dict[str, Any] | None = None,
        also: Callable[[Session], None] | None = None,
    ) -> bool:
        events: list[dict[str, Any]] = []
        with self.db.session() as session:
            self.db.begin_write(session)
            stmt = select(TrainingExperiment).where(self._fenced(job.id, job.owner, job.attempt))
            if self.db.dialect == "postgresql":
                stmt = stmt.with_for_update()
            row = session.scalar(stmt)
            if row is None:
                return False
            now = utcnow()
            row.lease_owner = None
            row.lease_expires_at = None
            # A retried job keeps its queued_at (the time it was started): it keeps its
            # place in the queue instead of going behind everything queued since.
            if new != states.QUEUED:
                row.completed_at = now
            if result is not None:
                row.configuration = {**(row.configuration or {}), "result": result}
                if result.get("model_version_id"):
                    row.model_id = uuid.UUID(result["model_version_id"])
            self._record(session, row, new, detail, events)
            self._end_nodes(session, row, new, events)
            if also is not None:
                also(session)
        self._fire(events)
        return True

    def requeue_expired(self) -> int:
        """Send running jobs whose lease expired back to the queue (or fail them when out of
        attempts); on the way, cancel node jobs whose leader ended
        (:func:`mlrig.engine.nodes.cancel_orphaned_nodes`). Returns how many expired jobs
        it moved."""
        events: list[dict[str, Any]] = []
        now = utcnow()
        with self.db.session() as session:
            self.db.begin_write(session)
            stmt = select(TrainingExperiment).where(
                TrainingExperiment.status == states.RUNNING,
                TrainingExperiment.lease_expires_at < now,
            )
            if self.db.dialect == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            moved = 0
            for job in session.scalars(stmt):
                moved += 1
                owner = job.lease_owner
                job.lease_owner = None
                job.lease_expires_at = None
                if job.attempts < job.max_attempts:
                    # queued_at stays: the job keeps its place (priority, then the time
                    # it was first queued), it did nothing wrong when its worker died
                    self._record(
                        session,
                        job,
                        states.QUEUED,
                        f"lease of {owner} expired during attempt {job.attempts}; requeued",
                        events,
                    )
                else:
                    job.completed_at = now
                    self._record(
                        session,
                        job,
                        states.FAILED,
                        f"lease of {owner} expired on the last attempt "
                        f"({job.attempts}/{job.max_attempts})",
                        events,
                    )
                self._end_nodes(session, job, job.status, events)
            # the backstop for node jobs whose leader ended by a path without the hook
            nodes.cancel_orphaned_nodes(session, self._recorder(events), dialect=self.db.dialect)
        self._fire(events)
        return moved

    # --- workers --------------------------------------------------------------------------

    def worker_heartbeat(self, owner: str, *, ttl_seconds: float, concurrency: int) -> None:
        """Record that worker ``owner`` is alive for ``ttl_seconds`` more (its row is its
        own: no other writer). Rows of workers dead for a day are swept on the way."""
        now = utcnow()
        values = {"heartbeat_at": now, "expires_at": now + timedelta(seconds=ttl_seconds)}
        with self.db.session() as session:
            found = session.execute(
                update(EngineWorker).where(EngineWorker.id == owner).values(**values)
            )
            if found.rowcount == 0:
                host, _, rest = owner.partition(":")
                pid = rest.partition(":")[0]
                session.add(
                    EngineWorker(
                        id=owner,
                        hostname=host[:255],
                        pid=int(pid) if pid.isdigit() else 0,
                        concurrency=concurrency,
                        started_at=now,
                        **values,
                    )
                )
                session.execute(
                    delete(EngineWorker).where(EngineWorker.expires_at < now - timedelta(days=1))
                )

    def worker_stopped(self, owner: str) -> None:
        """Forget worker ``owner`` (it stopped cleanly)."""
        with self.db.session() as session:
            session.execute(delete(EngineWorker).where(EngineWorker.id == owner))

    def live_workers(self) -> int:
        """How many workers sent a heartbeat within their lease (0: queued jobs wait for
        a worker to start)."""
        with self.db.session() as session:
            return (
                session.scalar(
                    select(func.count())
                    .select_from(EngineWorker)
                    .where(EngineWorker.expires_at > utcnow())
                )
                or 0
            )

    # --- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, job: ClaimedJob, checkpoint: dict[str, Any]) -> bool:
        """Record ``checkpoint`` (key, step...) as the job's latest, if the attempt holds it."""
        with self.db.session() as session:
            result = session.execute(
                update(TrainingExperiment)
                .where(self._fenced(job.id, job.owner, job.attempt))
                .values(last_checkpoint=checkpoint)
            )
            return result.rowcount == 1
