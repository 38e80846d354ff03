"""Sweeps: validation at create, the driver's steps (tell once, ask up to parallelism, end
with the best trial or a clear failure), stop, the time budget, two drivers at once, and a
real sweep of the sklearn trainer run by a real worker, its best model registered.

Most tests play the worker's part through the queue (claim, write the objective, complete
or fail), which is what a job process does, without starting processes; one test runs
real job processes.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from mlrig import datasets
from mlrig.db.models import MLModel, Sweep, SweepTrial, TrainingExperiment
from mlrig.engine.allocator import Capacity
from mlrig.engine.queue import utcnow
from mlrig.engine.worker import Worker
from mlrig.errors import ConflictError, NotFoundError, ValidationError
from mlrig.experiments.metrics import AttemptFence, write_points
from mlrig.security import Principal
from mlrig.testing.fixtures import make_platform

ACTOR = Principal(name="alice", role="admin")
IRIS = {"uri": str(datasets.path("iris")), "target": "species"}
SPACE = {
    "n_estimators": {"type": "int", "low": 2, "high": 30},
    "max_depth": {"type": "int", "low": 1, "high": 6},
}


def make_sweep(platform, name="sw", **kw):
    args = {
        "name": name,
        "trainer": "sklearn",
        "space": SPACE,
        "objective": "val_loss",
        "actor": ACTOR,
        "dataset": IRIS,
        "strategy": "random",
        "seed": 11,
        "max_trials": 4,
        "parallelism": 2,
    }
    args.update(kw)
    return platform.sweeps.create(**args)


def run_trial(platform, *, value=None, metric="val_loss", kind="validation", fail=None):
    """Play one job process: claim the next queued trial, report ``metric`` (unless
    ``value`` is None), then complete it (or fail it with ``fail``). Returns its id."""
    job = platform.queue.claim("sim-worker", lease_seconds=30)
    assert job is not None, "no trial queued"
    if value is not None:
        fence = AttemptFence(owner=job.owner, attempt=job.attempt)
        points = [(metric, value + 1.0, 0, 0, kind), (metric, value, 1, 1, kind)]
        write_points(platform.db, job.id, points, fence=fence)
    write_points(
        platform.db,
        job.id,
        [("accuracy", 0.5, 0, 0, "train")],
        fence=AttemptFence(owner=job.owner, attempt=job.attempt),
    )
    if fail:
        assert platform.queue.fail(job, fail, retry=False) == "failed"
    else:
        assert platform.queue.complete(job)
    return job.id


def sweep_rows(platform, sweep_id):
    with platform.db.session() as session:
        trials = session.scalars(
            select(SweepTrial).where(SweepTrial.sweep_id == uuid.UUID(sweep_id))
        ).all()
        children = session.scalar(
            select(func.count())
            .select_from(TrainingExperiment)
            .where(TrainingExperiment.parent_id == uuid.UUID(sweep_id))
        )
        sweep = session.get(Sweep, uuid.UUID(sweep_id))
        return list(trials), children, sweep


# --- bad input ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unchanged(tmp_path_factory):
    """One platform for the refused creates (each asserts that it is still empty)."""
    platform = make_platform(tmp_path_factory.mktemp("refused") / "home")
    yield platform
    platform.close()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"space": {}}, "empty"),
        (
            {
                "space": {
                    "kernel": {"type": "choice", "options": ["linear"]},
                    "gamma": {"type": "float", "low": 0.1, "high": 1, "when": {"kernel": "rbf"}},
                }
            },
            "gamma",
        ),
        ({"space": {"x": {"type": "float", "low": 2, "high": 1}}}, "x"),
        ({"direction": "up"}, "minimize"),
        ({"objective_kind": "holdout"}, "objective_kind"),
        ({"objective": ""}, "objective"),
        ({"max_trials": 0}, "max_trials"),
        ({"parallelism": 65}, "parallelism"),
        ({"max_seconds": 0}, "max_seconds"),
        ({"strategy": "annealing"}, "installed: grid, nevergrad, random"),
        ({"strategy_options": {"bogus": 1}}, "bogus"),
        ({"trainer": "nope"}, "unknown trainer"),
        ({"name": "bad name"}, "invalid experiment name"),
        ({"space": {"n_estimators": {"type": "choice", "options": [-5]}}}, "n_estimators"),
        ({"pruner": {"rule": "coinflip"}}, "coinflip"),
    ],
)
def test_bad_input_is_refused_at_create_naming_the_field(unchanged, change, needle):
    with pytest.raises(ValidationError) as caught:
        make_sweep(unchanged, **change)
    assert needle in caught.value.message
    assert unchanged.sweeps.list() == []
    assert unchanged.experiments.list() == []


def test_an_unknown_nevergrad_optimizer_lists_the_optimizers(platform):
    pytest.importorskip("nevergrad")
    pytest.importorskip("mlrig.plugins.search_nevergrad")
    with pytest.raises(ValidationError) as caught:
        make_sweep(platform, strategy="nevergrad", strategy_options={"optimizer": "NoSuchOpt"})
    assert "NoSuchOpt" in caught.value.message
    assert "NGOpt" in caught.value.message  # the registry's names are listed
    assert platform.sweeps.list() == []


def test_a_grid_of_a_billion_points_is_refused_with_its_count(platform):
    space = {f"p{i}": {"type": "int", "low": 1, "high": 10} for i in range(9)}
    with pytest.raises(ValidationError) as caught:
        make_sweep(platform, strategy="grid", space=space, trainer="sklearn", dry_run=True)
    assert "1,000,000,000" in caught.value.message
    assert platform.experiments.list() == []


def test_a_name_taken_by_an_experiment_is_a_conflict(platform):
    make_sweep(platform, name="taken")
    with pytest.raises(ConflictError):
        make_sweep(platform, name="taken")
    platform.experiments.create(name="plain-one", trainer="sklearn", actor=ACTOR)
    with pytest.raises(ConflictError):
        make_sweep(platform, name="plain-one")
    assert [g["name"] for g in platform.experiments.list_groups()] == ["taken"]


def test_dry_run_validates_and_creates_nothing(platform):
    view = make_sweep(
        platform,
        strategy="grid",
        space={"n_estimators": {"type": "choice", "options": [5, 10, 20]}, "max_depth": 3},
        max_trials=100,
        dry_run=True,
    )
    assert view["id"] is None and view["status"] == "dry_run"
    assert view["planned_trials"] == 3 and view["grid_points"] == 3
    assert platform.experiments.list() == []


# --- the driver -----------------------------------------------------------------------------


def test_a_sweep_queues_parallelism_trials_and_tells_each_once(db_platform):
    platform = db_platform
    view = make_sweep(platform, max_trials=5, parallelism=2)
    assert view["status"] == "running" and view["trials"]["queued"] == 2
    listed = {e["name"]: e for e in platform.experiments.list()}
    assert listed["sw"]["origin"] == "sweep"
    first = listed["sw-t0000"]
    assert first["origin"] == "engine" and first["group"] == "sw"
    assert first["parent_id"] == view["id"] and first["status"] == "queued"
    trial_exp = platform.experiments.get("sw-t0000")
    trial = platform.sweeps.trials(view["id"])[0]
    assert trial_exp["hyperparameters"] == trial["params"]
    # the sweep's own experiment (running, no lease) is never requeued nor failed as silent
    assert platform.queue.requeue_expired() == 0
    assert platform.experiments.expire_silent_runs(now=utcnow() + timedelta(days=30)) == 0
    assert platform.sweeps.get(view["id"])["status"] == "running"
    values = [0.9, 0.3, 0.5, 0.2, 0.7]
    for value in values:
        run_trial(platform, value=value)
        platform.sweeps.advance(owner="d1")
        platform.sweeps.advance(owner="d2")  # a second driver finds nothing to do twice
    assert platform.queue.claim("w", lease_seconds=5) is None
    done = platform.sweeps.get(view["id"])
    assert done["status"] == "completed", done["status_detail"]
    assert done["trials"] == {
        "total": 5,
        "queued": 0,
        "running": 0,
        "completed": 5,
        "failed": 0,
        "pruned": 0,
        "cancelled": 0,
    }
    assert done["best"]["value"] == pytest.approx(0.2)
    assert done["best"]["number"] == 3
    trials, children, sweep = sweep_rows(platform, view["id"])
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4] and children == 5
    assert all(t.told for t in trials) and sweep.trials_asked == 5
    results = platform.sweeps.results(view["id"])
    assert [p["best"] for p in results["best_so_far"]] == pytest.approx([0.9, 0.3, 0.3, 0.2, 0.2])
    # the sweep's experiment cannot be started, rerun or resumed as a job or a run
    with pytest.raises(ConflictError):
        platform.experiments.start(view["id"])
    with pytest.raises(ConflictError):
        platform.experiments.rerun(view["id"], actor=ACTOR)
    with pytest.raises(ConflictError, match="is a sweep"):
        platform.experiments.resume_run(view["id"], actor=ACTOR)
    with pytest.raises(ConflictError, match="is a sweep"):
        platform.experiments.heartbeat(view["id"])


def test_maximize_picks_the_largest(platform):
    view = make_sweep(platform, max_trials=3, parallelism=1, direction="maximize")
    for value in (0.4, 0.8, 0.6):
        run_trial(platform, value=value)
        platform.sweeps.advance(owner="d")
    done = platform.sweeps.get(view["id"])
    assert done["best"]["value"] == pytest.approx(0.8) and done["status"] == "completed"


def test_a_failed_trial_is_told_failed_and_the_sweep_goes_on(db_platform):
    platform = db_platform
    view = make_sweep(platform, max_trials=3, parallelism=1)
    run_trial(platform, fail="the trainer exploded")
    platform.sweeps.advance(owner="d")
    assert platform.sweeps.get(view["id"])["status"] == "running"
    run_trial(platform, value=0.4)
    platform.sweeps.advance(owner="d")
    run_trial(platform, value=0.6)
    platform.sweeps.advance(owner="d")
    done = platform.sweeps.get(view["id"])
    assert done["status"] == "completed"
    assert done["trials"]["failed"] == 1 and done["trials"]["completed"] == 2
    failed = platform.sweeps.trials(view["id"], state="failed")[0]
    assert failed["number"] == 0 and "the trainer exploded" in failed["detail"]
    assert done["best"]["number"] == 1


def test_an_objective_no_trial_reports_fails_the_sweep_saying_so(db_platform):
    platform = db_platform
    view = make_sweep(platform, objective="val_rmse", max_trials=10, parallelism=2)
    for _ in range(3):
        run_trial(platform, value=0.5, metric="val_loss")
        platform.sweeps.advance(owner="d")
    done = platform.sweeps.get(view["id"])
    assert done["status"] == "failed"
    assert done["status_detail"].startswith(
        "no trial reported the objective metric 'val_rmse' (validation); trials reported: "
    )
    assert "val_loss (validation)" in done["status_detail"]
    assert done["best"] is None and done["model_version_id"] is None
    trial = platform.sweeps.trials(view["id"])[0]
    assert trial["state"] == "failed"
    assert trial["detail"].startswith("reported no 'val_rmse' (validation) metric; it reported: ")
    # it failed after 3 such trials, not 10; the outstanding one was cancelled
    assert done["trials"]["total"] == 4 and done["trials"]["cancelled"] == 1
    assert platform.queue.claim("w", lease_seconds=5) is None


def test_stop_cancels_outstanding_trials(db_platform):
    platform = db_platform
    view = make_sweep(platform, max_trials=10, parallelism=3)
    run_trial(platform, value=0.5)
    running = platform.queue.claim("sim-worker", lease_seconds=30)
    assert running is not None
    stopped = platform.sweeps.stop(view["id"], actor=ACTOR)
    assert stopped["status"] == "cancelled" and "stopped by alice" in stopped["status_detail"]
    assert stopped["trials"]["cancelled"] == 2  # one queued, one running
    assert platform.queue.heartbeat(running, lease_seconds=30).held is False
    assert platform.sweeps.advance(owner="d") == 0
    _, children, sweep = sweep_rows(platform, view["id"])
    assert children == 3 and sweep.trials_asked == 3
    with pytest.raises(ConflictError):
        platform.sweeps.stop(view["id"], actor=ACTOR)


def test_stopping_the_sweep_as_an_experiment_cancels_its_trials_too(platform):
    view = make_sweep(platform, max_trials=10, parallelism=2)
    platform.experiments.stop(view["id"])
    platform.sweeps.advance(owner="d")
    assert platform.sweeps.get(view["id"])["trials"]["cancelled"] == 2
    assert platform.queue.claim("w", lease_seconds=5) is None


def test_a_spent_time_budget_asks_no_more_and_lets_outstanding_trials_finish(platform):
    view = make_sweep(platform, max_trials=50, parallelism=2, max_seconds=60)
    run_trial(platform, value=0.5)
    platform.sweeps.advance(owner="d")
    with platform.db.session() as session:  # an hour passed
        row = session.get(TrainingExperiment, uuid.UUID(view["id"]))
        row.started_at = row.started_at - timedelta(hours=1)
    run_trial(platform, value=0.4)
    platform.sweeps.advance(owner="d")
    assert platform.sweeps.get(view["id"])["status"] == "running"  # one still outstanding
    run_trial(platform, value=0.3)
    platform.sweeps.advance(owner="d")
    done = platform.sweeps.get(view["id"])
    assert done["status"] == "completed" and done["trials"]["total"] == 3
    assert done["best"]["value"] == pytest.approx(0.3)


def test_a_grid_ends_when_exhausted(platform):
    view = make_sweep(
        platform,
        strategy="grid",
        space={"n_estimators": {"type": "choice", "options": [5, 10, 20]}},
        max_trials=100,
        parallelism=2,
    )
    assert view["planned_trials"] == 3
    assert platform.sweeps.list()[0]["planned_trials"] == 3
    for value in (0.3, 0.1, 0.2):
        run_trial(platform, value=value)
        platform.sweeps.advance(owner="d")
    done = platform.sweeps.get(view["id"])
    assert done["status"] == "completed" and done["trials"]["total"] == 3
    assert done["best"]["params"] == {"n_estimators": 10}


def test_unknown_sweeps_are_not_found(platform):
    with pytest.raises(NotFoundError):
        platform.sweeps.get("nope")
    platform.experiments.create(name="plain", trainer="sklearn", actor=ACTOR)
    with pytest.raises(NotFoundError):
        platform.sweeps.get("plain")  # an experiment, not a sweep


def test_the_strategy_is_restored_only_when_another_process_saved(platform, tmp_path):
    view = make_sweep(platform, max_trials=6, parallelism=1)
    driver = platform.sweeps.driver
    before = driver.restores
    run_trial(platform, value=0.5)
    platform.sweeps.advance(owner="d")
    assert driver.restores == before  # this process made the last save: cached
    other = make_platform(tmp_path / "home")  # the same database, another "process"
    try:
        run_trial(other, value=0.4)
        other.sweeps.advance(owner="other")
        assert other.sweeps.driver.restores == 1
    finally:
        other.close()
    run_trial(platform, value=0.3)
    platform.sweeps.advance(owner="d")
    assert driver.restores == before + 1  # the saved version moved on: restored
    _, _, sweep = sweep_rows(platform, view["id"])
    assert sweep.trials_asked == 4


@pytest.mark.postgres
def test_two_drivers_at_once_on_postgresql_never_double_ask(tmp_path, pg_url):
    from mlrig.db import migrate

    migrate.upgrade(pg_url)
    home = tmp_path / "home"
    first = make_platform(home, database={"url": pg_url})
    second = make_platform(home, database={"url": pg_url})
    try:
        view = make_sweep(first, max_trials=12, parallelism=3)
        errors: list[BaseException] = []

        def drive(platform, barrier):
            try:
                barrier.wait(10)
                platform.sweeps.advance(owner=f"driver-{id(platform)}")
            except BaseException as exc:
                errors.append(exc)

        for _round in range(12):
            job = first.queue.claim("sim-worker", lease_seconds=30)
            if job is None:
                break
            write_points(
                first.db,
                job.id,
                [("val_loss", 0.5, 0, 0, "validation")],
                fence=AttemptFence(owner=job.owner, attempt=job.attempt),
            )
            first.queue.complete(job)
            barrier = threading.Barrier(2)
            threads = [threading.Thread(target=drive, args=(p, barrier)) for p in (first, second)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            with first.db.session() as session:
                live = session.scalar(
                    select(func.count())
                    .select_from(TrainingExperiment)
                    .where(
                        TrainingExperiment.parent_id == uuid.UUID(view["id"]),
                        TrainingExperiment.status.in_(("queued", "running")),
                    )
                )
            assert live <= 3
        assert errors == []
        trials, children, sweep = sweep_rows(first, view["id"])
        numbers = sorted(t.number for t in trials)
        assert numbers == list(range(12)) and children == 12 and sweep.trials_asked == 12
        assert first.sweeps.get(view["id"])["status"] == "completed"
    finally:
        first.close()
        second.close()


# --- a real sweep on a real worker ------------------------------------------------------------


def test_a_real_sweep_of_the_sklearn_trainer_registers_its_best_model(platform):
    view = make_sweep(
        platform,
        name="iris-sweep",
        space={
            "n_estimators": {"type": "int", "low": 2, "high": 12},
            "max_depth": {"type": "int", "low": 1, "high": 4},
        },
        objective="val_accuracy",
        direction="maximize",
        max_trials=3,
        parallelism=2,
        model_name="iris-best",
    )
    worker = Worker(
        platform,
        concurrency=2,
        capacity=Capacity(cpus=(0, 0)),
        lease_seconds=10,
        poll_seconds=0.05,
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        for _ in range(1200):
            if platform.sweeps.get(view["id"])["status"] != "running":
                break
            stop.wait(0.1)
    finally:
        stop.set()
        thread.join(30)
    done = platform.sweeps.get(view["id"])
    assert done["status"] == "completed", done["status_detail"]
    assert done["trials"]["completed"] == 3
    best = done["best"]
    assert 0 < best["value"] <= 1
    values = [t["value"] for t in platform.sweeps.trials(view["id"])]
    assert best["value"] == max(values)
    version = platform.registry.get_version("iris-best", done["model_version_id"])
    assert version["lineage"]["experiment"]["id"] == best["experiment_id"]
    assert version["tags"]["sweep_id"] == view["id"]
    assert version["tags"]["sweep"] == "iris-sweep"
    assert version["params"]["n_estimators"] == best["params"]["n_estimators"]
    assert platform.experiments.get(view["id"])["model_version_id"] == done["model_version_id"]
    # one version only (the trials' models were candidates), and no candidate left behind
    with platform.db.session() as session:
        assert session.scalar(select(func.count()).select_from(MLModel)) == 1
        keys = session.scalars(
            select(SweepTrial.candidate_key).where(SweepTrial.candidate_key.is_not(None))
        ).all()
    assert keys == []
    stored = list(platform.artifacts.list("experiments/"))
    assert not [k for k in stored if "candidate" in str(k)]


# --- pruned trials and candidates ---------------------------------------------------------------


def _context(platform, job, tmp_path):
    from mlrig.engine.context import JobContext
    from mlrig.engine.runner import load_experiment

    experiment = load_experiment(platform, job.id)
    assert experiment["sweep"]["trial_id"]
    return JobContext(platform, job, workdir=tmp_path, experiment=experiment)


def test_a_pruned_trial_is_told_its_value_and_its_candidate_never_registered(platform, tmp_path):
    from sklearn.dummy import DummyClassifier

    from mlrig.search.peers import mark_pruned
    from mlrig.search.pruning import Decision

    view = make_sweep(
        platform,
        max_trials=2,
        parallelism=2,
        pruner={"rule": "median", "warmup_steps": 0, "min_trials": 1},
        model_name="pruned-best",
    )
    features = [[1.0, 2.0], [2.0, 1.0], [1.5, 1.5]]
    model = DummyClassifier().fit(features, [0, 1, 0])
    outcomes = []
    for value, pruned in ((0.1, True), (0.4, False)):  # the pruned one has the lower loss
        job = platform.queue.claim("sim-worker", lease_seconds=30)
        context = _context(platform, job, tmp_path)
        context.log_metrics({"val_loss": value}, step=0, kind="validation")
        stored = context.register_model(model, sample=features[:2])
        assert stored["candidate"] is True and stored["id"] is None
        context.flush()
        also = None
        if pruned:
            decision = Decision(prune=True, rung=0, step=0, value=value)
            trial_id = context.sweep["trial_id"]

            def also(session, decision=decision, trial_id=trial_id):
                mark_pruned(session, trial_id, decision, decision.detail("val_loss"))

        result = {"pruned": {"rung": 0, "step": 0, "value": value}} if pruned else {}
        assert platform.queue.complete(job, result=result, also=also)
        outcomes.append(job.id)
    platform.sweeps.advance(owner="d")
    done = platform.sweeps.get(view["id"])
    assert done["status"] == "completed", done["status_detail"]
    assert done["trials"]["pruned"] == 1 and done["trials"]["completed"] == 1
    pruned_trial = platform.sweeps.trials(view["id"], state="pruned")[0]
    assert pruned_trial["value"] == pytest.approx(0.1) and pruned_trial["rung"] == 0
    assert pruned_trial["detail"].startswith("pruned at rung 0 (step 0)")
    # the best is the completed trial, not the pruned one's lower early value
    assert done["best"]["value"] == pytest.approx(0.4)
    version = platform.registry.get_version("pruned-best", done["model_version_id"])
    assert version["lineage"]["experiment"]["id"] == str(outcomes[1])
    with platform.db.session() as session:
        assert session.scalar(select(func.count()).select_from(MLModel)) == 1
        assert (
            session.scalars(
                select(SweepTrial.candidate_key).where(SweepTrial.candidate_key.is_not(None))
            ).all()
            == []
        )
    assert not [k for k in platform.artifacts.list("experiments/") if "candidate" in k]


def test_a_strategy_that_raises_fails_the_sweep_saying_so(platform, monkeypatch):
    from mlrig.plugins.search_random import RandomSearch

    view = make_sweep(platform, max_trials=5, parallelism=1)
    run_trial(platform, value=0.5)

    def broken(self, trial, value):
        raise ArithmeticError("the model went singular")

    monkeypatch.setattr(RandomSearch, "tell", broken)
    platform.sweeps.advance(owner="d")
    done = platform.sweeps.get(view["id"])
    assert done["status"] == "failed"
    assert (
        "the search strategy failed: ArithmeticError: the model went singular"
        in (done["status_detail"])
    )
    assert platform.queue.claim("w", lease_seconds=5) is None


def test_a_driver_dying_while_registering_the_best_model_registers_it_once(
    platform, tmp_path, monkeypatch
):
    from sklearn.dummy import DummyClassifier

    from mlrig.sweeps import candidates
    from mlrig.sweeps.driver import SweepDriver

    view = make_sweep(platform, max_trials=1, parallelism=1, model_name="once")
    features = [[1.0, 2.0], [2.0, 1.0], [1.5, 1.5]]
    job = platform.queue.claim("sim-worker", lease_seconds=30)
    context = _context(platform, job, tmp_path)
    context.log_metrics({"val_loss": 0.3}, step=0, kind="validation")
    context.register_model(DummyClassifier().fit(features, [0, 1, 0]), sample=features[:2])
    context.flush()
    assert platform.queue.complete(job)

    def dies_after_registering(self, sweep_id, owner):
        candidates.register_best(self.platform, sweep_id)  # then the process is killed

    monkeypatch.setattr(SweepDriver, "_register_and_finish", dies_after_registering)
    platform.sweeps.advance(owner="doomed")
    assert platform.sweeps.get(view["id"])["status"] == "running"  # its lease holds it
    monkeypatch.undo()
    with platform.db.session() as session:  # the lease of the dead driver expires
        sweep = session.get(Sweep, uuid.UUID(view["id"]))
        assert sweep.driver_owner == "doomed"
        sweep.driver_expires_at = utcnow() - timedelta(seconds=1)
    platform.sweeps.advance(owner="next")
    done = platform.sweeps.get(view["id"])
    assert done["status"] == "completed" and done["model_version_id"]
    with platform.db.session() as session:  # one version: the first one, found again
        assert session.scalar(select(func.count()).select_from(MLModel)) == 1
