"""Multi-node jobs: one experiment (the leader) and ``nnodes - 1`` node jobs of the engine.

A distributed trainer asked for ``nnodes > 1`` runs as the leader (node 0). It calls
:func:`start_nodes`, which creates (once) and queues the node experiments
``<name>-node1`` .. ``<name>-node<N-1>``, nested under the leader (``parent_id``), with
the leader's trainer, hyperparameters, resources and priority, and
``configuration["node"] = {"index", "count", "leader_id", "leader_attempt", "run",
"rendezvous"}``. Any worker that reaches the database claims them like any job; in each,
:func:`node_role` tells the trainer which node it is and where to meet the leader.

Each node needs a worker slot of its own *at the same time* as the leader: ``nnodes``
workers (one per machine, production) or one worker with ``--concurrency >= nnodes``
(tests). A node that stays queued is reported by :func:`watch_nodes` after the start
timeout, so the leader fails in bounded time instead of waiting forever.

Ends propagate through the queue (:mod:`mlrig.engine.queue` calls :func:`end_nodes` in
the transaction that takes the leader out of ``running``): when the leader completes,
fails, is cancelled or goes back to the queue for another attempt, its node jobs still
queued or running are cancelled (their workers kill them at the next heartbeat). The
leader's next attempt calls :func:`start_nodes` again, which requeues the same node
experiments with the new rendezvous: no duplicates. Nodes register no model (the leader
does) and are not sweep trials. :func:`cancel_orphaned_nodes` (run by every worker's
periodic sweep) is the backstop for a leader ended by a path that skipped the hook.
"""

from __future__ import annotations

import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import aliased

from mlrig.db.models import TrainingExperiment
from mlrig.db.types import as_utc, utcnow
from mlrig.engine import states

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mlrig.engine.context import JobContext

#: the node jobs' ``configuration`` key (on nodes) and the leader's (its nodes)
NODE_KEY = "node"
NODES_KEY = "nodes"
#: the states of a node job that still holds (or waits for) a slot
LIVE = frozenset({states.QUEUED, states.RUNNING})
#: how long the leader waits for every node to be claimed, unless told (seconds)
DEFAULT_START_TIMEOUT_S = 600.0
#: watch_nodes reads the database at most this often per leader attempt (seconds)
WATCH_INTERVAL_S = 1.0
MAX_NODES = 1024


@dataclass(frozen=True)
class NodeRole:
    """What a node job is: its ``index`` (1 .. ``count - 1``; the leader is 0), how many
    nodes the run has, the leader's experiment id and the rendezvous the leader chose
    (``{"endpoint": "host:port", ...}``, whatever the trainer put there)."""

    index: int
    count: int
    leader_id: str
    rendezvous: dict[str, Any]
    #: the leader attempt that (re)started this node
    leader_attempt: int = 0
    #: the token of that start (a new one each time the leader starts its nodes)
    run: str = ""


def _configuration(context: JobContext) -> dict[str, Any]:
    with context.platform.db.session() as session:
        found = session.scalar(
            select(TrainingExperiment.configuration).where(TrainingExperiment.id == context.job.id)
        )
    return dict(found or {})


# --- in a node job ---------------------------------------------------------------------


_roles: weakref.WeakKeyDictionary[Any, NodeRole | None] = weakref.WeakKeyDictionary()


def node_role(context: JobContext) -> NodeRole | None:
    """This job's role from ``configuration["node"]``; ``None`` for a leader or a
    single-node job. Read once per context (one small query): the role this attempt
    started with, even once a later run of the leader changed it."""
    try:
        return _roles[context]
    except (KeyError, TypeError):
        pass
    role = _read_role(context)
    try:
        _roles[context] = role
    except TypeError:  # a context that takes no weak reference: read each time
        pass
    return role


def _read_role(context: JobContext) -> NodeRole | None:
    node = _configuration(context).get(NODE_KEY)
    if not isinstance(node, dict):
        return None
    return NodeRole(
        index=int(node["index"]),
        count=int(node["count"]),
        leader_id=str(node["leader_id"]),
        rendezvous=dict(node.get("rendezvous") or {}),
        leader_attempt=int(node.get("leader_attempt") or 0),
        run=str(node.get("run") or ""),
    )


def leader_ended(context: JobContext) -> bool:
    """For a node job: whether its leader is gone (deleted), ended (completed, failed,
    cancelled) or no longer runs the attempt that started this node. A node trainer polls
    it while it waits (the queue cancels such nodes too; this is for the trainer to stop
    at once). ``False`` for a job that is not a node."""
    role = node_role(context)
    if role is None:
        return False
    with context.platform.db.session() as session:
        found = session.execute(
            select(TrainingExperiment.status, TrainingExperiment.configuration).where(
                TrainingExperiment.id == uuid.UUID(role.leader_id)
            )
        ).first()
    if found is None:
        return True
    status, config = found
    plan = (config or {}).get(NODES_KEY)
    if status != states.RUNNING or not isinstance(plan, dict) or plan.get("ended"):
        return True
    return plan.get("run") != role.run


# --- in the leader -----------------------------------------------------------------------


def _held_leader(session: Session, context: JobContext, *, lock: bool) -> TrainingExperiment:
    """The leader's row, if this attempt still holds it (else :class:`LeaseLostError`)."""
    from mlrig.engine.context import LeaseLostError

    job = context.job
    stmt = select(TrainingExperiment).where(
        TrainingExperiment.id == job.id,
        TrainingExperiment.lease_owner == job.owner,
        TrainingExperiment.attempts == job.attempt,
        TrainingExperiment.status == states.RUNNING,
    )
    if lock and context.platform.db.dialect == "postgresql":
        stmt = stmt.with_for_update()
    row = session.scalar(stmt)
    if row is None:
        msg = "this attempt lost the job; stopping"
        raise LeaseLostError(msg)
    return row


def _children(session: Session, leader_id: uuid.UUID, *, lock: bool, dialect: str) -> list[Any]:
    stmt = (
        select(TrainingExperiment)
        .where(TrainingExperiment.parent_id == leader_id, TrainingExperiment.origin == "engine")
        .order_by(TrainingExperiment.name)
    )
    if lock and dialect == "postgresql":
        stmt = stmt.with_for_update()
    return [
        r for r in session.scalars(stmt) if isinstance((r.configuration or {}).get(NODE_KEY), dict)
    ]


def start_nodes(
    context: JobContext,
    *,
    nnodes: int,
    rendezvous: dict[str, Any],
    start_timeout_s: float | None = None,
) -> list[str]:
    """Leader only: create (first attempt) or reuse, then queue, the ``nnodes - 1`` node
    experiments ``<name>-node1`` .. nested under this one; return their ids by index.

    Idempotent: called again in the same attempt it changes nothing; called by a later
    attempt of the leader it requeues the same experiments (attempts reset) with the new
    ``rendezvous``, ending any of them still running for an older attempt.

    :param nnodes: how many nodes the run has, the leader included (2 .. 1024).
    :param rendezvous: JSON the nodes get in :attr:`NodeRole.rendezvous`
        (``{"endpoint": "host:port"}``; ``timeout_s`` there is the default start timeout).
    :param start_timeout_s: how long a node may stay queued before :func:`watch_nodes`
        reports it (default ``rendezvous["timeout_s"]``, else 600 s).
    :raises PermanentError: bad ``nnodes``, called from a node job, or a node's name is
        taken by another experiment.
    :raises LeaseLostError: this attempt no longer holds the leader.
    """
    from mlrig.contracts.trainer import PermanentError
    from mlrig.experiments import rules

    if isinstance(nnodes, bool) or not isinstance(nnodes, int) or not 2 <= nnodes <= MAX_NODES:
        msg = f"nnodes must be an integer from 2 to {MAX_NODES} for node jobs, got {nnodes!r}"
        raise PermanentError(msg)
    rendezvous = rules.check_json("rendezvous", dict(rendezvous))
    if start_timeout_s is None:
        raw = rendezvous.get("timeout_s")
        start_timeout_s = float(raw) if isinstance(raw, (int, float)) else DEFAULT_START_TIMEOUT_S
    queue = context.platform.queue
    db = context.platform.db
    attempt = context.job.attempt
    events: list[dict[str, Any]] = []
    with db.session() as session:
        db.begin_write(session)
        leader = _held_leader(session, context, lock=True)
        config = dict(leader.configuration or {})
        if isinstance(config.get(NODE_KEY), dict):
            msg = f"experiment {leader.name!r} is a node job: only its leader starts nodes"
            raise PermanentError(msg)
        existing = {
            int(r.configuration[NODE_KEY]["index"]): r
            for r in _children(session, leader.id, lock=True, dialect=db.dialect)
        }
        plan = config.get(NODES_KEY)
        same = (
            isinstance(plan, dict)
            and plan.get("attempt") == attempt
            and plan.get("count") == nnodes
            and not plan.get("ended")
        )
        run = str(plan["run"]) if same else uuid.uuid4().hex
        now = utcnow()
        ids: list[str] = []
        for index in range(1, nnodes):
            node = {
                "index": index,
                "count": nnodes,
                "leader_id": str(leader.id),
                "leader_attempt": attempt,
                "run": run,
                "rendezvous": rendezvous,
            }
            row = existing.get(index)
            if row is None:
                row = _new_node(session, leader, config, node, nnodes)
                events += queue.record_created(session, row)
            elif same and row.status in LIVE and row.configuration[NODE_KEY].get("run") == run:
                ids.append(str(row.id))  # already started by this attempt
                continue
            else:
                row.configuration = {**(row.configuration or {}), NODE_KEY: node}
                row.hyperparameters = dict(leader.hyperparameters or {})
                row.resources = dict(leader.resources or {})
                row.priority = leader.priority
            was = row.status
            # the leader's place in the queue (it waits for them): before what was queued
            # since at the same priority, in index order
            row.queued_at = (as_utc(leader.queued_at) or now) + timedelta(microseconds=index)
            row.lease_owner = None
            row.lease_expires_at = None
            row.completed_at = None
            # attempts go on counting (they fence a stale process of an earlier run out);
            # the run gets the leader's budget of attempts again
            row.max_attempts = (row.attempts or 0) + leader.max_attempts
            detail = f"node {index} of {nnodes} for attempt {attempt} of {leader.name!r}"
            if was == states.RUNNING:
                detail += " (its earlier run is ended)"
            events += queue.record_status(session, row, states.QUEUED, detail)
            ids.append(str(row.id))
        # nodes past a smaller nnodes of this attempt: not part of the run
        for index, row in existing.items():
            if index >= nnodes and row.status in LIVE:
                row.completed_at = now
                events += queue.record_status(
                    session, row, states.CANCELLED, f"not a node of attempt {attempt}"
                )
        leader.configuration = {
            **config,
            NODES_KEY: {
                "ids": ids,
                "count": nnodes,
                "attempt": attempt,
                "run": run,
                "started_at": plan["started_at"] if same else now.isoformat(),
                "start_timeout_s": float(start_timeout_s),
            },
        }
    queue._fire(events)
    return ids


def _new_node(
    session: Session,
    leader: TrainingExperiment,
    config: dict[str, Any],
    node: dict[str, Any],
    nnodes: int,
) -> TrainingExperiment:
    from sqlalchemy.exc import IntegrityError

    from mlrig.contracts.trainer import PermanentError

    name = f"{leader.name}-node{node['index']}"
    row = TrainingExperiment(
        id=uuid.uuid4(),
        name=name,
        description=f"node {node['index']} of {nnodes} of {leader.name!r}",
        trainer=leader.trainer,
        hyperparameters=dict(leader.hyperparameters or {}),
        configuration={
            "dataset": config.get("dataset"),
            "model_name": config.get("model_name") or leader.name,
            "submitted_by": config.get("submitted_by"),
            NODE_KEY: node,
        },
        resources=dict(leader.resources or {}),
        priority=leader.priority,
        checkpoint_interval_s=leader.checkpoint_interval_s,
        max_attempts=leader.max_attempts,
        seed=leader.seed,
        reproducibility={
            "seed": leader.seed,
            "seed_source": "node",
            "leader_id": str(leader.id),
            "node": node["index"],
        },
        created_by=leader.created_by,
        origin="engine",
        parent_id=leader.id,
        group_name=leader.group_name,
    )
    msg = (
        f"cannot create node job {name!r}: an experiment of that name exists; rename "
        f"it or the leader {leader.name!r}"
    )
    if session.scalar(select(TrainingExperiment.id).where(TrainingExperiment.name == name)):
        raise PermanentError(msg)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # created since the look
        raise PermanentError(msg) from None
    return row


_watched: dict[tuple[uuid.UUID, int], tuple[float, str | None]] = {}


def watch_nodes(context: JobContext) -> str | None:
    """Leader: why the run cannot go on, or ``None``: a node job failed or was cancelled
    (its status detail), or one is still queued ``start_timeout_s`` after
    :func:`start_nodes` (too few free worker slots). Cheap to call in a loop: it reads
    the database at most every ``WATCH_INTERVAL_S``."""
    key = (context.job.id, context.job.attempt)
    now = time.monotonic()
    seen = _watched.get(key)
    if seen is not None and (seen[1] is not None or now - seen[0] < WATCH_INTERVAL_S):
        return seen[1]
    reason = _node_trouble(context)
    _watched[key] = (now, reason)
    return reason


def _node_trouble(context: JobContext) -> str | None:
    db = context.platform.db
    with db.session() as session:
        leader = session.get(TrainingExperiment, context.job.id)
        if leader is None:
            return None
        plan = (leader.configuration or {}).get(NODES_KEY)
        if (
            not isinstance(plan, dict)
            or plan.get("attempt") != context.job.attempt
            or plan.get("ended")
        ):
            return None
        ids = [uuid.UUID(i) for i in plan.get("ids") or []]
        rows = session.scalars(select(TrainingExperiment).where(TrainingExperiment.id.in_(ids)))
        nodes = sorted(rows, key=lambda r: r.name)
        started = datetime.fromisoformat(plan["started_at"])
        timeout = float(plan.get("start_timeout_s") or DEFAULT_START_TIMEOUT_S)
        count = int(plan.get("count") or len(ids) + 1)
        if len(nodes) < len(ids):
            return "a node job of this run was deleted"
        for row in nodes:
            if row.status == states.FAILED:
                return f"node job {row.name!r} failed: {row.status_detail}"
            if row.status == states.CANCELLED:
                return f"node job {row.name!r} was cancelled: {row.status_detail}"
        # how long each waiting node waits: since it was last queued (a node requeued
        # after a failed attempt of its own starts its wait again)
        waits = {
            r.name: (utcnow() - max(started, as_utc(r.updated_at) or started)).total_seconds()
            for r in nodes
            if r.status in (states.QUEUED, states.CREATED)
        }
        stuck = [name for name, waited in waits.items() if waited > timeout]
        if stuck:
            waited = max(waits[name] for name in stuck)
            return (
                f"node job(s) {', '.join(stuck)} still queued {waited:.0f} s after the leader "
                f"started them (start timeout {timeout:g} s): a run of {count} nodes needs "
                f"{count} worker slots free at once, each with the resources of a node "
                f"(start {count} workers, or one with --concurrency {count})"
            )
    return None


def wait_nodes(context: JobContext, *, timeout_s: float = 60.0) -> str | None:
    """Leader, at the end of a run that went well: wait up to ``timeout_s`` for every
    node job to end; return why one did not complete (``None``: all completed). Call it
    before the leader returns, as the leader's end cancels nodes still running."""
    db = context.platform.db
    deadline = time.monotonic() + timeout_s
    while True:
        with db.session() as session:
            plan = (session.get(TrainingExperiment, context.job.id).configuration or {}).get(
                NODES_KEY
            ) or {}
            ids = [uuid.UUID(i) for i in plan.get("ids") or []]
            rows = list(
                session.execute(
                    select(
                        TrainingExperiment.name,
                        TrainingExperiment.status,
                        TrainingExperiment.status_detail,
                    ).where(TrainingExperiment.id.in_(ids))
                )
            )
        for name, status, detail in rows:
            if status in (states.FAILED, states.CANCELLED):
                return f"node job {name!r} {status}: {detail}"
        live = [name for name, status, _ in rows if status not in states.FINAL]
        if not live:
            return None
        if time.monotonic() >= deadline:
            return f"node job(s) {', '.join(live)} still running {timeout_s:g} s after the leader"
        time.sleep(0.2)


def stop_nodes(context: JobContext, *, reason: str) -> None:
    """Cancel this leader's node jobs still queued or running, saying ``reason``."""
    db = context.platform.db
    events: list[dict[str, Any]] = []
    with db.session() as session:
        db.begin_write(session)
        if db.dialect == "postgresql":
            session.scalar(
                select(TrainingExperiment.id)
                .where(TrainingExperiment.id == context.job.id)
                .with_for_update()
            )
        for row in _children(session, context.job.id, lock=True, dialect=db.dialect):
            if row.status in LIVE or row.status == states.CREATED:
                row.completed_at = utcnow()
                events += context.platform.queue.record_status(
                    session, row, states.CANCELLED, f"stopped by the leader: {reason}"[:2000]
                )
    context.platform.queue._fire(events)


# --- the queue's hooks -------------------------------------------------------------------


def end_nodes(
    session: Session,
    leader: TrainingExperiment,
    new: str,
    record: Callable[[Session, TrainingExperiment, str, str | None], None],
    *,
    dialect: str,
) -> None:
    """In the transaction taking ``leader`` out of ``running`` (to ``new``): cancel its
    node jobs still queued or running. Does nothing (no query) for a job that started
    no nodes."""
    plan = (leader.configuration or {}).get(NODES_KEY)
    if not isinstance(plan, dict):
        return
    # this start of the nodes is over: the next attempt starts them again
    leader.configuration = {**leader.configuration, NODES_KEY: {**plan, "ended": True}}
    if new == states.QUEUED:
        why = (
            f"leader {leader.name!r} attempt {leader.attempts} ended; its next attempt "
            "restarts the nodes"
        )
    else:
        why = f"leader {leader.name!r} {new}"
    for row in _children(session, leader.id, lock=True, dialect=dialect):
        if row.status in LIVE:
            row.completed_at = utcnow()
            record(session, row, states.CANCELLED, why)


def cancel_orphaned_nodes(
    session: Session,
    record: Callable[[Session, TrainingExperiment, str, str | None], None],
    *,
    dialect: str,
) -> int:
    """Cancel node jobs still queued or running whose leader ended (one query). Returns
    how many it cancelled."""
    leader = aliased(TrainingExperiment)
    stmt = (
        select(TrainingExperiment, leader.name, leader.status)
        .join(leader, leader.id == TrainingExperiment.parent_id)
        .where(
            TrainingExperiment.origin == "engine",
            TrainingExperiment.status.in_(tuple(LIVE)),
            leader.origin == "engine",
            leader.status.in_(tuple(states.FINAL)),
        )
    )
    if dialect == "postgresql":
        stmt = stmt.with_for_update(of=TrainingExperiment, skip_locked=True)
    moved = 0
    for row, name, status in session.execute(stmt).all():
        if not isinstance((row.configuration or {}).get(NODE_KEY), dict):
            continue
        row.completed_at = utcnow()
        record(session, row, states.CANCELLED, f"leader {name!r} {status}")
        moved += 1
    return moved
