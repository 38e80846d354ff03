"""The training engine: queue semantics on both databases, and a real worker running real
job processes (sklearn on the bundled iris data, checkpoints, early stopping, stop)."""

import threading
import time
import uuid

import pytest
from _jobs import add_job, job_row
from _processes import alive

from mlrig import datasets
from mlrig.db.models import ExperimentEvent, TrainingMetric
from mlrig.engine.allocator import Capacity
from mlrig.engine.worker import Worker

# --- the queue ---------------------------------------------------------------------------


def test_claims_by_priority_then_age(db_platform):
    low = add_job(db_platform, "low", priority=0)
    high_old = add_job(db_platform, "high-old", priority=5)
    high_new = add_job(db_platform, "high-new", priority=5)
    queue = db_platform.queue
    order = [queue.claim("w", lease_seconds=30).id for _ in range(3)]
    assert order == [high_old, high_new, low]
    assert queue.claim("w", lease_seconds=30) is None


def test_claim_skips_jobs_that_do_not_fit(db_platform):
    big = add_job(db_platform, "big", priority=9, resources={"gpus": 1})
    small = add_job(db_platform, "small")
    claimed = db_platform.queue.claim("w", lease_seconds=30, fits=lambda r: r.get("gpus", 0) == 0)
    assert claimed.id == small
    assert job_row(db_platform, big).status == "queued"


def test_fencing_and_requeue_after_a_lost_lease(db_platform):
    job_id = add_job(db_platform, max_attempts=2)
    queue = db_platform.queue
    first = queue.claim("w1", lease_seconds=0.01)
    time.sleep(0.05)
    assert queue.requeue_expired() == 1
    assert job_row(db_platform, job_id).status == "queued"
    second = queue.claim("w2", lease_seconds=30)
    assert second.attempt == 2
    # the first attempt is stale: it can neither complete nor checkpoint
    assert queue.complete(first) is False
    assert queue.save_checkpoint(first, {"step": 1}) is False
    assert queue.heartbeat(first, lease_seconds=30).held is False
    assert queue.complete(second, detail="done") is True
    row = job_row(db_platform, job_id)
    assert (row.status, row.status_detail, row.attempts) == ("completed", "done", 2)
    with db_platform.db.session() as session:
        events = [
            e.new_status
            for e in session.query(ExperimentEvent)
            .filter_by(experiment_id=job_id)
            .order_by(ExperimentEvent.at)
        ]
    assert events == ["created", "queued", "running", "queued", "running", "completed"]


def test_a_requeued_job_keeps_its_place_in_the_queue(db_platform):
    """A job whose worker died goes back to where it was (priority, then the time it was
    first queued), not behind the jobs queued since."""
    queue = db_platform.queue
    first = add_job(db_platform, "first")
    queue.claim("dead-worker", lease_seconds=0.01)
    later = [add_job(db_platform, f"later-{i}") for i in range(3)]
    time.sleep(0.05)
    assert queue.requeue_expired() == 1
    order = [queue.claim("w", lease_seconds=30).id for _ in range(4)]
    assert order == [first, *later]


def test_a_retried_job_keeps_its_place_in_the_queue(db_platform):
    queue = db_platform.queue
    first = add_job(db_platform, "first")
    claimed = queue.claim("w", lease_seconds=30)
    later = add_job(db_platform, "later")
    assert queue.fail(claimed, "flaky") == "queued"
    assert queue.claim("w", lease_seconds=30).id == first
    assert queue.claim("w", lease_seconds=30).id == later


def test_failures_retry_until_max_attempts(db_platform):
    job_id = add_job(db_platform, max_attempts=2)
    queue = db_platform.queue
    assert queue.fail(queue.claim("w", lease_seconds=30), "oops") == "queued"
    assert queue.fail(queue.claim("w", lease_seconds=30), "oops again") == "failed"
    row = job_row(db_platform, job_id)
    assert row.status == "failed" and "after 2 attempt(s): oops again" in row.status_detail


def test_cancel_revokes_the_lease(db_platform):
    job_id = add_job(db_platform)
    claimed = db_platform.queue.claim("w", lease_seconds=30)
    db_platform.queue.cancel(job_id)
    beat = db_platform.queue.heartbeat(claimed, lease_seconds=30)
    assert (beat.held, beat.status) == (False, "cancelled")
    assert db_platform.queue.complete(claimed) is False


def test_concurrent_claims_never_share_a_job(db_platform):
    ids = {add_job(db_platform, f"j{i}") for i in range(40)}
    taken: list[uuid.UUID] = []
    lock = threading.Lock()

    def claim_all(owner):
        while (job := db_platform.queue.claim(owner, lease_seconds=30)) is not None:
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(taken) == sorted(ids)


# --- a real worker --------------------------------------------------------------------------


def run_worker(platform, *, max_jobs=None, exit_when_idle=True, timeout=120, **kw):
    worker = Worker(
        platform,
        concurrency=kw.pop("concurrency", 2),
        capacity=kw.pop("capacity", Capacity(cpus=(0, 0, 0, 0))),
        lease_seconds=kw.pop("lease_seconds", 10),
        **kw,
    )
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        return worker.run(stop=stop, max_jobs=max_jobs, exit_when_idle=exit_when_idle)
    finally:
        timer.cancel()


def test_worker_runs_the_sklearn_trainer_end_to_end(platform):
    job_id = add_job(
        platform,
        "iris-rf",
        trainer="sklearn",
        params={"n_estimators": 20},
        dataset={"uri": str(datasets.path("iris")), "target": "species"},
    )
    assert run_worker(platform) == 1
    row = job_row(platform, job_id)
    assert row.status == "completed", row.status_detail
    version_id = row.configuration["result"]["model_version_id"]
    version = platform.registry.get_version("iris-rf", version_id)
    assert version["lineage"]["experiment"]["id"] == str(job_id)
    assert version["lineage"]["datasets"][0]["hash"]
    assert version["params"]["n_estimators"] == 20
    assert version["metrics"]["val_accuracy"] > 0.8
    repro = row.reproducibility
    assert repro["seed"] == 7 and repro["config_hash"] and repro["packages"]["scikit-learn"]
    # submitted from a folder outside any git repository: both facts recorded as unknown
    assert (repro["git_commit"], repro["git_dirty"]) == (None, None)
    with platform.db.session() as session:
        names = {
            m.metric_name for m in session.query(TrainingMetric).filter_by(experiment_id=job_id)
        }
    assert {"accuracy", "val_accuracy", "val_f1"} <= names
    from mlrig.experiments.logs import LogStore

    log, _ = LogStore(platform.artifacts).read(str(job_id))
    assert b"attempt 1 with trainer 'sklearn'" in log


def test_early_stopping_ends_a_stalled_run(platform):
    job_id = add_job(
        platform,
        "stalls",
        trainer="sklearn",
        params={
            "estimator": "sklearn.linear_model.SGDClassifier",
            "loss": "log_loss",
            "learning_rate": "constant",
            "eta0": 1e-7,
            "epochs": 40,
        },
        dataset={"uri": str(datasets.path("iris")), "target": "species"},
        early_stopping={"monitor": "val_loss", "mode": "min", "patience": 3, "min_delta": 0.01},
    )
    run_worker(platform)
    row = job_row(platform, job_id)
    assert row.status == "completed"
    assert "early stopped: val_loss did not improve" in row.status_detail
    with platform.db.session() as session:
        epochs = {
            m.epoch
            for m in session.query(TrainingMetric).filter_by(
                experiment_id=job_id, metric_name="val_loss"
            )
        }
    assert 3 <= len(epochs) < 40


def test_a_crashing_trainer_is_retried_then_failed(platform, test_trainers):
    job_id = add_job(platform, "crash", trainer="crashing", max_attempts=2)
    run_worker(platform)
    row = job_row(platform, job_id)
    assert (row.status, row.attempts) == ("failed", 2)
    assert "boom from the trainer" in row.status_detail


@pytest.mark.heavy
@pytest.mark.gpu
def test_a_gpu_job_gets_a_gpu_of_the_worker(platform, test_trainers):
    """The allocator hands the worker's GPU to the job that asked for one, and only to it."""
    wants = add_job(platform, "wants-gpu", trainer="cuda-report", resources={"gpus": 1})
    cpu_only = add_job(platform, "cpu-only", trainer="cuda-report")
    assert run_worker(platform, capacity=Capacity(cpus=(0, 0), gpus=(0,))) == 2
    seen = {}
    for job_id in (wants, cpu_only):
        assert job_row(platform, job_id).status == "completed", job_row(platform, job_id)
        with platform.db.session() as session:
            seen[job_id] = {
                m.metric_name: m.metric_value
                for m in session.query(TrainingMetric).filter_by(experiment_id=job_id)
            }
    assert seen[wants] == {"gpus_seen": 1.0, "cuda_sum": 64.0}
    assert seen[cpu_only] == {"gpus_seen": 0.0, "cuda_sum": 0.0}


def test_stop_ends_the_process_tree_within_5s(platform, test_trainers, tmp_path):
    job_id = add_job(platform, "sleepy", trainer="sleepy")
    worker = Worker(
        platform,
        concurrency=1,
        capacity=Capacity(cpus=(0,)),
        lease_seconds=10,
        workdir=tmp_path / "work",
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop})
    thread.start()
    try:
        log = tmp_path / "work" / str(job_id) / "attempt-1" / "output.log"
        deadline = time.monotonic() + 60
        while "job" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.1)
        pids = {
            line.split()[0]: int(line.split()[1])
            for line in log.read_text().splitlines()
            if line.split()[:1] in (["child"], ["job"])
        }
        started = time.monotonic()
        platform.queue.cancel(job_id)
        while any(alive(pid) for pid in pids.values()):
            assert time.monotonic() - started < 5, "processes outlived the stop by 5 s"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
    assert job_row(platform, job_id).status == "cancelled"


def test_starting_a_running_job_does_not_requeue_it(db_platform):
    from mlrig.errors import ConflictError

    job_id = add_job(db_platform)
    claimed = db_platform.queue.claim("w", lease_seconds=30)
    with pytest.raises(ConflictError, match="is running"):
        db_platform.queue.enqueue(job_id)
    assert db_platform.queue.heartbeat(claimed, lease_seconds=30).held


# --- one point per (name, step, kind), permanent failures, who registered it ---------------


def _points(platform, job_id):
    with platform.db.session() as session:
        return [
            (m.metric_name, m.step, m.metric_type)
            for m in session.query(TrainingMetric).filter_by(experiment_id=job_id)
        ]


def test_a_job_killed_before_its_first_checkpoint_keeps_only_the_retry_s_points(
    db_platform, test_trainers
):
    """Attempt 1 logs 12 points and dies by SIGKILL before any checkpoint; attempt 2 logs
    them again: the history holds each (name, step, kind) once, not twice."""
    job_id = add_job(db_platform, "killed", trainer="killed-once")
    run_worker(db_platform)
    row = job_row(db_platform, job_id)
    assert (row.status, row.attempts) == ("completed", 2), row.status_detail
    with db_platform.db.session() as session:
        events = session.query(ExperimentEvent).filter_by(experiment_id=job_id).all()
    assert any("killed by SIGKILL" in (e.detail or "") for e in events)
    points = _points(db_platform, job_id)
    assert len(points) == 12 and len(set(points)) == 12, sorted(points)


def test_a_fenced_out_attempt_writes_no_points(db_platform):
    """An attempt that lost its job (requeued, now attempt 2) can no longer log points,
    so it cannot add points after the next attempt cleared them."""
    from mlrig.experiments.metrics import AttemptFence, AttemptLostError, write_points

    job_id = add_job(db_platform)
    queue = db_platform.queue
    first = queue.claim("w1", lease_seconds=0.01)
    time.sleep(0.05)
    queue.requeue_expired()
    second = queue.claim("w2", lease_seconds=30)
    with pytest.raises(AttemptLostError):
        write_points(
            db_platform.db, job_id, [("loss", 1.0, 0, 0, "train")], fence=AttemptFence("w1", 1)
        )
    fence = AttemptFence(second.owner, second.attempt)
    assert write_points(db_platform.db, job_id, [("loss", 1.0, 0, 0, "train")], fence=fence) == 1
    assert first.attempt == 1 and _points(db_platform, job_id) == [("loss", 0, "train")]


def test_epoch_training_logs_each_validation_point_once(platform):
    job_id = add_job(
        platform,
        "sgd-epochs",
        trainer="sklearn",
        params={"estimator": "sklearn.linear_model.SGDClassifier", "epochs": 4},
        dataset={"uri": str(datasets.path("iris")), "target": "species"},
    )
    run_worker(platform)
    assert job_row(platform, job_id).status == "completed"
    points = _points(platform, job_id)
    assert len(points) == len(set(points)), "a (name, step, kind) was logged twice"
    assert {s for n, s, k in points if n == "val_accuracy"} == {0, 1, 2, 3}


def test_a_trained_version_is_created_by_the_experiment_s_creator(platform):
    platform.security.create_user(name="carol", role="developer")
    carol = platform.security.authenticate(platform.security.create_token(user="carol")["token"])
    platform.experiments.create(
        name="iris-carol",
        trainer="sklearn",
        actor=carol,
        hyperparameters={"n_estimators": 5},
        dataset={"uri": str(datasets.path("iris")), "target": "species"},
        start=True,
    )
    run_worker(platform)
    done = platform.experiments.get("iris-carol")
    assert done["status"] == "completed", done["status_detail"]
    assert done["model_version_id"] == done["result"]["model_version_id"]
    assert done["model_id"] == done["model_version_id"]  # the deprecated name, for a release
    version = platform.registry.get_version("iris-carol", done["model_version_id"])
    assert version["created_by"] == "carol"
    # over REST: the new name, and the old one (deprecated in the schema) for a release
    from fastapi.testclient import TestClient

    from mlrig.api import create_app

    token = platform.security.create_token(user="carol")["token"]
    with TestClient(create_app(platform)) as client:
        shown = client.get(
            "/api/ml/experiments/iris-carol", headers={"Authorization": f"Bearer {token}"}
        ).json()
        schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert shown["model_version_id"] == shown["model_id"] == done["model_version_id"]
    fields = schema["Experiment"]["properties"]
    assert fields["model_id"].get("deprecated") is True
    assert not fields["model_version_id"].get("deprecated")
    points = _points(platform, uuid.UUID(done["id"]))
    assert len(points) == len(set(points))


IRIS = str(datasets.path("iris"))
PERMANENT = [
    ("refusing", {}, None, "the labels are all one class"),
    # a missing file where datasets may be read from (the bundled datasets' folder)
    (
        "sklearn",
        {},
        {"uri": str(datasets.path("iris").parent / "gone.csv"), "target": "y"},
        "not found",
    ),
    ("sklearn", {}, {"uri": IRIS, "target": "label"}, "'label' is not a column"),
    (
        "sklearn",
        {"estimator": "sklearn.nope.Forest"},
        {"uri": IRIS, "target": "species"},
        "cannot be imported",
    ),
    ("sklearn", {"n_estimators": -1}, {"uri": IRIS, "target": "species"}, "bad parameter"),
    ("sklearn", {"depth": 3}, {"uri": IRIS, "target": "species"}, "no parameter 'depth'"),
]


def test_errors_retrying_cannot_fix_fail_at_once_with_the_reason(platform, test_trainers):
    jobs = {
        add_job(platform, f"doomed-{i}", trainer=t, params=p, dataset=d, max_attempts=3): why
        for i, (t, p, d, why) in enumerate(PERMANENT)
    }
    lines = []
    run_worker(platform, concurrency=3, echo=lines.append)
    for job_id, why in jobs.items():
        row = job_row(platform, job_id)
        assert (row.status, row.attempts) == ("failed", 1), (row.name, row.status_detail)
        assert "not retried" in row.status_detail and why in row.status_detail
        line = next(x for x in lines if x.startswith(f"{row.name} attempt 1 failed"))
        assert "cannot succeed by retrying" in line and why in line, line


# --- what the worker hands a job, and what a job hands back --------------------------------


def test_a_job_reads_the_experiment_its_worker_handed_it_only_for_its_attempt(
    db_platform, tmp_path, monkeypatch
):
    from mlrig.engine import runner

    job_id = add_job(db_platform, "handed", params={"steps": 2})
    job = db_platform.queue.claim("w1", lease_seconds=30)
    path = tmp_path / "experiment.json"
    assert runner.hand_over(path, job.experiment, job.attempt)
    monkeypatch.setenv(runner.EXPERIMENT_ENV, str(path))
    handed = runner.handed_experiment(job_id, job.attempt)
    loaded = runner.load_experiment(db_platform, job_id)
    assert handed is not None and "creator_name" not in handed
    assert {**handed, "creator_name": loaded["creator_name"]} == loaded
    assert runner.handed_experiment(job_id, job.attempt + 1) is None  # another attempt's
    assert runner.handed_experiment(uuid.uuid4(), job.attempt) is None
    path.write_text("{not json")
    assert runner.handed_experiment(job_id, job.attempt) is None  # the job reads its own


def _outcome(monkeypatch, path, job, points):
    from datetime import datetime, timezone

    from mlrig.engine import runner

    monkeypatch.setenv(runner.OUTCOME_ENV, str(path))
    closing = {
        "points": points,
        "at": datetime.now(timezone.utc).isoformat(),
        "supersede": True,
    }
    facts = {"seed": 7, "config_hash": "abc"}
    result = {"metrics": {"loss": 0.5}, "model_version_id": None, "resumed_from_step": None}
    assert runner._hand_outcome(job.id, job.attempt, None, result, facts, closing)


def test_the_worker_records_a_handed_over_completion_fenced_by_the_attempt(
    db_platform, tmp_path, monkeypatch
):
    """The completion a job left for its worker is recorded in one transaction with its
    last points and reproducibility facts, only while that attempt holds the job; the
    outcome of another attempt is refused."""
    from mlrig.engine.runner import record_handed_outcome
    from mlrig.experiments.metrics import AttemptFence, write_points

    job_id = add_job(db_platform, "handed-back")
    queue = db_platform.queue
    first = queue.claim("w1", lease_seconds=0.01)
    time.sleep(0.05)
    queue.requeue_expired()
    second = queue.claim("w2", lease_seconds=30)
    # an earlier attempt's point, which the completing attempt supersedes
    fence = AttemptFence(second.owner, second.attempt)
    write_points(db_platform.db, job_id, [("old", 1.0, 9, 0, "train")], fence=fence)
    stale = tmp_path / "stale.json"
    _outcome(monkeypatch, stale, first, [["loss", 0.5, 0, 0, "train"]])
    assert record_handed_outcome(db_platform, first, stale) == (
        False,
        "[mlrig] this attempt lost the job before completing it",
    )
    with pytest.raises(ValueError, match="another attempt"):
        record_handed_outcome(db_platform, second, stale)
    row = job_row(db_platform, job_id)
    assert row.status == "running" and _points(db_platform, job_id) == [("old", 9, "train")]
    assert record_handed_outcome(db_platform, second, tmp_path / "none.json") is None
    good = tmp_path / "outcome.json"
    _outcome(monkeypatch, good, second, [["loss", 0.5, 0, 0, "train"]])
    assert record_handed_outcome(db_platform, second, good) == (True, "[mlrig] completed")
    row = job_row(db_platform, job_id)
    assert row.status == "completed" and row.lease_owner is None
    assert row.configuration["result"]["metrics"] == {"loss": 0.5}
    assert row.reproducibility["config_hash"] == "abc"
    assert _points(db_platform, job_id) == [("loss", 0, "train")]
    # recorded once: a second try of the same outcome no longer holds the job
    assert record_handed_outcome(db_platform, second, good)[0] is False


def test_a_worker_job_leaves_its_completion_to_the_worker(db_platform, test_trainers):
    """End to end (both databases): the job exits after training, its worker records the
    completion, its points and facts, and says so in the job's output."""
    from mlrig.experiments.logs import LogStore

    job_id = add_job(db_platform, "steps-handed", params={"steps": 3, "sleep": 0.01})
    run_worker(db_platform)
    row = job_row(db_platform, job_id)
    assert (row.status, row.attempts) == ("completed", 1), row.status_detail
    assert row.configuration["result"]["metrics"] == {"steps": 3.0}
    assert row.reproducibility["config_hash"] and "python" in row.reproducibility
    assert sorted(_points(db_platform, job_id)) == [("value", s, "train") for s in range(3)]
    folder = db_platform.settings.resolve_path(".mlrig/work") / str(job_id) / "attempt-1"
    assert (folder / "outcome.json").exists() and (folder / "experiment.json").exists()
    log, _ = LogStore(db_platform.artifacts).read(str(job_id))
    assert log.rstrip().endswith(b"[mlrig] completed"), log[-300:]


def test_the_sweep_driver_rounds_back_off_while_no_sweep_runs(platform, monkeypatch):
    from mlrig.sweeps import driver as driver_module

    calls = []
    advance = platform.sweeps.advance

    def counted(*, owner):
        calls.append(owner)
        return advance(owner=owner)

    monkeypatch.setattr(platform.sweeps, "advance", counted)
    worker = Worker(platform)
    base = platform.settings.search.driver_interval_seconds
    worker._drive_sweeps(100.0, force=False)
    assert len(calls) == 1 and worker._drive_every == 2 * base
    worker._drive_sweeps(100.0 + 1.5 * base, force=False)  # within the backed-off interval
    assert len(calls) == 1
    for i in range(10):
        worker._drive_sweeps(200.0 + 10 * i, force=False)
    assert worker._drive_every == driver_module.IDLE_DRIVE_SECONDS
    worker._drive_sweeps(300.0, force=True)  # a job ended: driven at once
    assert len(calls) == 12
    monkeypatch.setattr(platform.sweeps.driver, "_due_sweeps", lambda: [])
    platform.sweeps.driver.idle = False
    monkeypatch.setattr(platform.sweeps, "advance", lambda *, owner: 0)
    worker._drive_sweeps(400.0, force=True)  # a sweep runs: the configured interval again
    assert worker._drive_every is None
