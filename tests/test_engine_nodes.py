"""Multi-node jobs (:mod:`mlrig.engine.nodes`): a leader experiment starts its node jobs,
nested under it; they run on the engine's workers at the same time, meet at the leader's
rendezvous (a TCP barrier on 127.0.0.1 in the fake trainer), and end with the leader."""

import json
import threading
import time
import uuid

import pytest
from _jobs import add_job, job_row
from _processes import alive
from sqlalchemy import select, update

from mlrig.db.models import ExperimentEvent, TrainingExperiment
from mlrig.engine import nodes
from mlrig.engine.allocator import Capacity
from mlrig.engine.context import JobContext
from mlrig.engine.worker import Worker


def add_leader(platform, name="ddp", *, params=None, resources=None, priority=0, attempts=3):
    return add_job(
        platform,
        name,
        trainer="multi-node",
        priority=priority,
        params={"nnodes": 3, **(params or {})},
        configuration={"model_name": name},
        resources=resources,
        max_attempts=attempts,
    )


def children(platform, job_id):
    with platform.db.session() as session:
        return list(
            session.scalars(
                select(TrainingExperiment)
                .where(TrainingExperiment.parent_id == job_id)
                .order_by(TrainingExperiment.name)
            )
        )


def context_of(platform, claimed, tmp_path):
    return JobContext(platform, claimed, workdir=tmp_path, experiment={"name": claimed.name})


def claim(platform, job_id, owner="w"):
    """Claim ``job_id`` (the only queued job the test wants now)."""
    job = platform.queue.claim(owner, lease_seconds=30)
    assert job is not None and job.id == job_id, job
    return job


class WorkerThread:
    def __init__(self, platform, tmp_path, *, concurrency=3, timeout=120):
        self.lines = []
        self.worker = Worker(
            platform,
            concurrency=concurrency,
            capacity=Capacity(cpus=(0, 0, 0, 0)),
            lease_seconds=10,
            workdir=tmp_path / "work",
            echo=self.lines.append,
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self.worker.run, kwargs={"stop": self.stop, "exit_when_idle": True}
        )
        self.timer = threading.Timer(timeout, self.stop.set)

    def __enter__(self):
        self.timer.start()
        self.thread.start()
        return self

    def join(self, timeout=120):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not finish"

    def __exit__(self, *exc):
        self.stop.set()
        self.timer.cancel()
        self.thread.join(60)


def wait_for(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def pids(tmp_path, job_id):
    found = []
    for log in (tmp_path / "work" / str(job_id)).glob("attempt-*/output.log"):
        found += [int(x.split()[1]) for x in log.read_text().splitlines() if x.startswith("job ")]
    return found


# --- end to end on a worker with 3 slots --------------------------------------------------


def test_a_leader_of_three_runs_with_two_node_jobs_nested_under_it(
    db_platform, test_trainers, tmp_path
):
    leader = add_leader(
        db_platform, params={"steps": 3, "lr": 0.1}, resources={"cpus": 1}, priority=4
    )
    with WorkerThread(db_platform, tmp_path) as worker:
        worker.join()
    done = job_row(db_platform, leader)
    assert done.status == "completed", (done.status_detail, worker.lines)
    nodes_ = children(db_platform, leader)
    assert [n.name for n in nodes_] == ["ddp-node1", "ddp-node2"]
    endpoints = set()
    for index, node in enumerate(nodes_, start=1):
        assert node.status == "completed", node.status_detail
        assert (node.trainer, node.hyperparameters) == ("multi-node", done.hyperparameters)
        assert (node.resources, node.priority, node.seed) == ({"cpus": 1}, 4, 7)
        role = node.configuration["node"]
        assert (role["index"], role["count"], role["leader_id"]) == (index, 3, str(leader))
        endpoints.add(role["rendezvous"]["endpoint"])
        assert node.model_id is None and "sweep" not in node.configuration
        assert node.configuration["result"]["metrics"] == {"node": float(index)}
    assert len(endpoints) == 1 and endpoints.pop().startswith("127.0.0.1:")
    assert done.configuration["nodes"]["ids"] == [str(n.id) for n in nodes_]
    # the experiment views list the nodes as the leader's nested runs
    listed = db_platform.experiments.list(parent="ddp")
    assert sorted(x["name"] for x in listed) == ["ddp-node1", "ddp-node2"]
    assert {x["parent_id"] for x in listed} == {str(leader)}
    assert db_platform.experiments.get("ddp-node1")["parent_id"] == str(leader)


def test_the_cli_lists_the_node_jobs_under_their_leader(platform, test_trainers, tmp_path, run_cli):
    from mlrig.config import INHERITED_ENV

    leader = add_leader(platform, params={"nnodes": 2, "steps": 1})
    with WorkerThread(platform, tmp_path) as worker:
        worker.join()
    assert job_row(platform, leader).status == "completed", worker.lines
    env = {INHERITED_ENV: platform.settings.to_json()}
    shown = run_cli("experiments", "list", "--parent", "ddp", "--json", env=env)
    assert shown.exit_code == 0, shown.stderr
    assert [(x["name"], x["status"]) for x in json.loads(shown.stdout)] == [
        ("ddp-node1", "completed")
    ]


def test_a_retried_leader_reuses_its_node_jobs(platform, test_trainers, tmp_path):
    """Attempt 1 of the leader starts its nodes then dies by SIGKILL: the nodes are
    cancelled with it, attempt 2 requeues the same two experiments, and all complete."""
    leader = add_leader(platform, params={"kill_leader_attempt": 1, "steps": 2})
    with WorkerThread(platform, tmp_path) as worker:
        worker.join()
    done = job_row(platform, leader)
    assert (done.status, done.attempts) == ("completed", 2), (done.status_detail, worker.lines)
    nodes_ = children(platform, leader)
    assert [n.name for n in nodes_] == ["ddp-node1", "ddp-node2"]
    assert all(n.status == "completed" for n in nodes_), [n.status_detail for n in nodes_]
    assert all(n.configuration["node"]["leader_attempt"] == 2 for n in nodes_)
    with platform.db.session() as session:
        details = [
            e.detail or ""
            for e in session.scalars(
                select(ExperimentEvent).where(ExperimentEvent.experiment_id == nodes_[0].id)
            )
        ]
    assert any("attempt 1 ended; its next attempt restarts" in d for d in details), details
    assert any("for attempt 2 of 'ddp'" in d for d in details), details


def test_cancelling_the_leader_cancels_its_nodes_and_ends_their_processes(
    platform, test_trainers, tmp_path
):
    leader = add_leader(platform, params={"node_sleep": 120})
    with WorkerThread(platform, tmp_path):
        wait_for(
            lambda: (
                [n.status for n in children(platform, leader)] == ["running"] * 2
                and all(pids(tmp_path, n.id) for n in children(platform, leader))
            ),
            what="both nodes running",
        )
        jobs = [
            p
            for job in [leader, *(n.id for n in children(platform, leader))]
            for p in pids(tmp_path, job)
        ]
        assert len(jobs) == 3
        platform.experiments.stop("ddp")
        # in the same transaction as the leader's cancel
        nodes_ = children(platform, leader)
        assert [n.status for n in nodes_] == ["cancelled"] * 2
        assert all("leader 'ddp' cancelled" in n.status_detail for n in nodes_)
        started = time.monotonic()
        wait_for(lambda: not any(alive(p) for p in jobs), timeout=10, what="processes to end")
        assert time.monotonic() - started < 10


def test_a_failing_node_fails_the_leader_with_its_reason(platform, test_trainers, tmp_path):
    leader = add_leader(platform, params={"fail_node": 2})
    with WorkerThread(platform, tmp_path) as worker:
        worker.join()
    done = job_row(platform, leader)
    assert done.status == "failed", worker.lines
    assert "node job 'ddp-node2' failed" in done.status_detail
    assert "node 2 broke on purpose" in done.status_detail
    assert done.attempts == 1  # the run cannot succeed: not retried
    statuses = {n.name: n.status for n in children(platform, leader)}
    assert statuses == {"ddp-node1": "cancelled", "ddp-node2": "failed"}


def test_nodes_that_find_no_free_slot_fail_the_leader_in_bounded_time(
    platform, test_trainers, tmp_path
):
    """3 nodes on a worker with 2 slots: node 2 never starts; the leader says why within
    its start timeout, and nothing is left queued or running."""
    leader = add_leader(platform, params={"start_timeout_s": 3})
    started = time.monotonic()
    with WorkerThread(platform, tmp_path, concurrency=2) as worker:
        worker.join()
    assert time.monotonic() - started < 40
    done = job_row(platform, leader)
    assert done.status == "failed", worker.lines
    assert "ddp-node2 still queued" in done.status_detail
    assert "needs 3 worker slots free at once" in done.status_detail
    assert {n.status for n in children(platform, leader)} == {"cancelled"}


def test_a_leader_that_ends_leaves_no_running_node(platform, test_trainers, tmp_path):
    leader = add_leader(platform, params={"wait_nodes": False, "node_sleep": 120, "nnodes": 2})
    with WorkerThread(platform, tmp_path) as worker:
        worker.join(60)
    assert job_row(platform, leader).status == "completed", worker.lines
    (node,) = children(platform, leader)
    assert (node.status, node.status_detail) == ("cancelled", "leader 'ddp' completed")
    assert not any(alive(p) for p in pids(tmp_path, node.id))


# --- the queue's side, on both databases ---------------------------------------------------


def test_start_nodes_is_idempotent_per_leader_attempt(db_platform, tmp_path):
    leader = add_leader(db_platform)
    first = claim(db_platform, leader)
    ctx = context_of(db_platform, first, tmp_path)
    assert nodes.node_role(ctx) is None
    ids = nodes.start_nodes(ctx, nnodes=3, rendezvous={"endpoint": "127.0.0.1:1"})
    assert nodes.start_nodes(ctx, nnodes=3, rendezvous={"endpoint": "127.0.0.1:1"}) == ids
    assert len(children(db_platform, leader)) == 2
    assert nodes.watch_nodes(ctx) is None
    # node 1 runs; the leader's attempt fails: its nodes are cancelled, the leader requeued
    node1 = db_platform.queue.claim("w1", lease_seconds=30)
    assert str(node1.id) == ids[0]
    node_ctx = context_of(db_platform, node1, tmp_path)
    role = nodes.node_role(node_ctx)
    assert (role.index, role.count, role.leader_id) == (1, 3, str(leader))
    assert role.rendezvous == {"endpoint": "127.0.0.1:1"} and not nodes.leader_ended(node_ctx)
    assert db_platform.queue.fail(first, "boom") == "queued"
    assert [n.status for n in children(db_platform, leader)] == ["cancelled"] * 2
    assert db_platform.queue.heartbeat(node1, lease_seconds=30).held is False
    assert nodes.leader_ended(node_ctx)
    # attempt 2: the same experiments, queued again with the new rendezvous
    second = claim(db_platform, leader)
    ctx2 = context_of(db_platform, second, tmp_path)
    assert nodes.start_nodes(ctx2, nnodes=3, rendezvous={"endpoint": "127.0.0.1:2"}) == ids
    again = children(db_platform, leader)
    assert [n.status for n in again] == ["queued"] * 2 and len(again) == 2
    assert {n.configuration["node"]["rendezvous"]["endpoint"] for n in again} == {"127.0.0.1:2"}
    # attempts go on counting (a stale process stays fenced out), with a fresh budget
    assert [n.attempts for n in again] == [1, 0]
    assert {n.max_attempts - n.attempts for n in again} == {3}
    # the stale attempt can no longer start nodes
    from mlrig.engine.context import LeaseLostError

    with pytest.raises(LeaseLostError):
        nodes.start_nodes(ctx, nnodes=3, rendezvous={"endpoint": "127.0.0.1:1"})


def test_node_failures_and_cancels_reach_the_leader_s_watch(db_platform, tmp_path):
    leader = add_leader(db_platform)
    ctx = context_of(db_platform, claim(db_platform, leader), tmp_path)
    ids = nodes.start_nodes(ctx, nnodes=3, rendezvous={"endpoint": "h:1"})
    node = db_platform.queue.claim("w1", lease_seconds=30)
    db_platform.queue.fail(node, "out of memory", retry=False)
    nodes._watched.clear()
    why = nodes.watch_nodes(ctx)
    assert why.startswith("node job 'ddp-node1' failed") and "out of memory" in why
    nodes.stop_nodes(ctx, reason="giving up")
    assert job_row(db_platform, uuid.UUID(ids[1])).status == "cancelled"
    assert "giving up" in job_row(db_platform, uuid.UUID(ids[1])).status_detail


def test_a_node_whose_leader_ended_without_the_hook_is_cancelled_by_the_sweep(
    db_platform, tmp_path
):
    """The backstop: a leader marked ended behind the queue's back (a crash, a manual
    update) still takes its nodes down at the next sweep of any worker."""
    leader = add_leader(db_platform)
    ctx = context_of(db_platform, claim(db_platform, leader), tmp_path)
    nodes.start_nodes(ctx, nnodes=2, rendezvous={"endpoint": "h:1"})
    node = db_platform.queue.claim("w1", lease_seconds=30)
    with db_platform.db.session() as session:
        session.execute(
            update(TrainingExperiment)
            .where(TrainingExperiment.id == leader)
            .values(status="failed")
        )
    assert nodes.leader_ended(context_of(db_platform, node, tmp_path))
    assert db_platform.queue.requeue_expired() == 0  # no lease expired...
    (found,) = children(db_platform, leader)
    assert (found.status, found.status_detail) == ("cancelled", "leader 'ddp' failed")


def test_bad_calls_are_refused(db_platform, tmp_path):
    from mlrig import PermanentError

    leader = add_leader(db_platform)
    ctx = context_of(db_platform, claim(db_platform, leader), tmp_path)
    with pytest.raises(PermanentError, match="nnodes must be an integer from 2"):
        nodes.start_nodes(ctx, nnodes=1, rendezvous={})
    add_leader(db_platform, "ddp-node1")  # a name the node would take
    with pytest.raises(PermanentError, match="'ddp-node1': an experiment of that name exists"):
        nodes.start_nodes(ctx, nnodes=2, rendezvous={})
    assert children(db_platform, leader) == []


def test_a_node_job_registers_no_model(db_platform, tmp_path):
    from mlrig import PermanentError

    leader = add_leader(db_platform)
    ctx = context_of(db_platform, claim(db_platform, leader), tmp_path)
    nodes.start_nodes(ctx, nnodes=2, rendezvous={"endpoint": "h:1"})
    node = context_of(db_platform, db_platform.queue.claim("w1", lease_seconds=30), tmp_path)
    with pytest.raises(PermanentError, match="its leader registers the model"):
        node.register_model(object())


def test_a_restarted_leader_starts_a_new_run_of_its_nodes(db_platform, tmp_path):
    """A leader that failed and is started again (attempts back to 1) requeues its nodes
    with a new run token: a node of the old run sees its leader ended."""
    leader = add_leader(db_platform, attempts=1)
    first = claim(db_platform, leader)
    ctx = context_of(db_platform, first, tmp_path)
    ids = nodes.start_nodes(ctx, nnodes=2, rendezvous={"endpoint": "h:1"})
    old_node = context_of(db_platform, db_platform.queue.claim("w1", lease_seconds=30), tmp_path)
    old_run = nodes.node_role(old_node).run
    assert db_platform.queue.fail(first, "boom") == "failed"
    assert job_row(db_platform, uuid.UUID(ids[0])).status == "cancelled"
    db_platform.experiments.start("ddp")
    again = claim(db_platform, leader)
    assert again.attempt == 1
    ctx2 = context_of(db_platform, again, tmp_path)
    assert nodes.start_nodes(ctx2, nnodes=2, rendezvous={"endpoint": "h:2"}) == ids
    new_node = context_of(db_platform, db_platform.queue.claim("w1", lease_seconds=30), tmp_path)
    assert nodes.node_role(new_node).run != old_run
    assert nodes.leader_ended(old_node) and not nodes.leader_ended(new_node)


def test_node_jobs_take_their_leader_s_place_in_the_queue(db_platform, tmp_path):
    """A job queued after the leader (same priority) waits behind the leader's nodes: the
    leader is running and cannot go on without them."""
    leader = add_leader(db_platform)
    ctx = context_of(db_platform, claim(db_platform, leader), tmp_path)
    later = add_leader(db_platform, "later")
    ids = nodes.start_nodes(ctx, nnodes=3, rendezvous={"endpoint": "h:1"})
    order = [str(db_platform.queue.claim("w", lease_seconds=30).id) for _ in range(3)]
    assert order == [*ids, str(later)]


def test_a_node_job_cannot_be_started_or_rerun_on_its_own(db_platform, tmp_path):
    from mlrig.errors import ConflictError

    leader = add_leader(db_platform)
    ctx = context_of(db_platform, claim(db_platform, leader), tmp_path)
    nodes.start_nodes(ctx, nnodes=2, rendezvous={"endpoint": "h:1"})
    nodes.stop_nodes(ctx, reason="test")
    with pytest.raises(ConflictError, match="is node 1 of the multi-node run 'ddp'"):
        db_platform.experiments.start("ddp-node1")
    with pytest.raises(ConflictError, match="start or rerun 'ddp'"):
        db_platform.experiments.rerun("ddp-node1", actor=None)
