"""The experiment service on SQLite and PostgreSQL: create/list/get/start/stop/rerun/compare,
validation, the events timeline, metric ingest and history, and the log store."""

import time
from datetime import datetime, timedelta, timezone

import pytest

from mlrig import datasets, hookimpl
from mlrig.errors import ConflictError, NotFoundError, ValidationError
from mlrig.experiments import LogStore, metrics
from mlrig.experiments import logs as logs_module
from mlrig.security import Principal

ACTOR = Principal(name="alice", role="developer")


class Recorder:
    """A hook plugin that remembers what it was told."""

    def __init__(self):
        self.states, self.batches = [], []

    @hookimpl
    def mlrig_experiment_state_changed(self, platform, event):
        self.states.append(event)

    @hookimpl
    def mlrig_metrics_logged(self, platform, experiment_id, count):
        self.batches.append((experiment_id, count))


@pytest.fixture
def recorder(db_platform):
    plugin = Recorder()
    db_platform.pm.register(plugin)
    yield plugin
    db_platform.pm.unregister(plugin)


def _create(platform, trainer, name="exp", **kw):
    return platform.experiments.create(name=name, trainer=trainer, actor=ACTOR, **kw)


# --- experiments -------------------------------------------------------------------------


def test_create_records_everything_and_fires_the_hook(db_platform, trainer, recorder):
    iris = str(datasets.path("iris"))  # where jobs may read from (the bundled datasets)
    params = {"estimator": "sklearn.svm.SVC", "C": 0.5, "kernel": "rbf"}
    view = _create(
        db_platform,
        trainer,
        hyperparameters=params,
        dataset={"uri": iris, "target": "species"},
        resources={"cpus": 2, "memory_mb": 512},
        priority=5,
        checkpoint_interval_s=60,
        early_stopping={"monitor": "val_loss", "patience": 2},
        max_attempts=2,
        model_name="iris-clf",
        description="baseline",
    )
    assert view["status"] == "created" and view["trainer"] == trainer
    assert view["resources"] == {"cpus": 2, "gpus": 0, "memory_mb": 512}
    assert view["early_stopping"] == {
        "monitor": "val_loss",
        "mode": "min",
        "patience": 2,
        "min_delta": 0.0,
        "kind": "validation",
    }
    assert view["dataset"] == {"uri": iris, "target": "species"}
    assert view["model_name"] == "iris-clf" and view["created_by"] == "alice"
    assert isinstance(view["seed"], int)
    assert view["reproducibility"] == {"seed": view["seed"], "seed_source": "random"}
    assert [(e["old"], e["new"]) for e in view["events"]] == [(None, "created")]
    assert recorder.states[-1]["new"] == "created"
    assert recorder.states[-1]["experiment_id"] == view["id"]
    assert view["metrics"] == {} and view["result"] is None
    assert db_platform.experiments.get("exp")["id"] == view["id"]
    assert db_platform.experiments.get(view["id"])["name"] == "exp"


def test_names_are_unique_and_lookups_fail_clearly(db_platform, trainer):
    _create(db_platform, trainer, seed=3)
    with pytest.raises(ConflictError, match="already exists"):
        _create(db_platform, trainer)
    with pytest.raises(NotFoundError, match="no experiment 'nope'"):
        db_platform.experiments.get("nope")
    with pytest.raises(NotFoundError):
        db_platform.experiments.start("6f1c1f0e-0000-4000-8000-000000000000")


def test_a_name_taken_between_the_check_and_the_insert_is_a_conflict(db_platform, trainer):
    """The race of two creates with one name: the unique index refuses the second."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from mlrig.db.models import TrainingExperiment

    raced = []

    def take_the_name_first(session, _context, _instances):
        if not raced and any(getattr(o, "name", None) == "race" for o in session.new):
            raced.append(True)
            with db_platform.db.session() as other:  # another request, committed first
                other.add(TrainingExperiment(name="race", trainer=trainer))

    event.listen(Session, "before_flush", take_the_name_first)
    try:
        with pytest.raises(ConflictError, match="just created by another request"):
            _create(db_platform, trainer, name="race")
    finally:
        event.remove(Session, "before_flush", take_the_name_first)
    assert raced
    assert [e["name"] for e in db_platform.experiments.list()] == ["race"]


INVALID = [
    ("trainer", "no-such-trainer", r"unknown trainer 'no-such-trainer'; installed trainers: "),
    ("resources", {"cpus": -1}, r"resources\.cpus must be an integer"),
    ("resources", {"gpus": 1.5}, r"resources\.gpus"),
    ("resources", {"disk": 3}, r"unknown keys \['disk'\]"),
    ("early_stopping", {"monitor": "val_loss", "mode": "sideways"}, "'min' or 'max'"),
    ("early_stopping", {"monitor": "val_loss", "patience": 0}, "positive integer"),
    ("early_stopping", {"monitor": "val_loss", "kind": "eval"}, "early_stopping.kind"),
    ("early_stopping", {"mode": "min"}, "must name a metric"),
    ("early_stopping", {"monitor": "l", "typo": 1}, "unknown keys"),
    ("early_stopping", "val_loss", "must be an object"),
    ("name", "has space", "invalid experiment name"),
    ("name", "6f1c1f0e-0000-4000-8000-000000000000", "looks like an id"),
    ("seed", -1, "seed must be an integer"),
    ("priority", 10**6, "priority must be"),
    ("max_attempts", 0, "max_attempts"),
    ("hyperparameters", {"lr": float("nan")}, "no NaN"),
    ("dataset", {"target": "y"}, "needs|with a 'uri'"),
    ("model_name", "bad/name", "invalid model name"),
]


def test_invalid_input_is_a_validation_error(platform, trainer):
    for field, value, match in INVALID:  # one platform for all cases: they never reach it
        kw = {"name": "ok", "trainer": trainer, field: value}
        with pytest.raises(ValidationError, match=match):
            platform.experiments.create(actor=ACTOR, **kw)
    assert platform.experiments.list() == []


def test_list_filters_and_pages(db_platform, trainer):
    for name in ("a1", "a2", "b1"):
        _create(db_platform, trainer, name=name)
    db_platform.experiments.start("a2")
    service = db_platform.experiments
    assert [e["name"] for e in service.list()] == ["b1", "a2", "a1"]
    assert [e["name"] for e in service.list(name_prefix="a")] == ["a2", "a1"]
    assert [e["name"] for e in service.list(status="queued")] == ["a2"]
    assert [e["name"] for e in service.list(limit=1, offset=1)] == ["a2"]
    assert service.list(trainer="other") == []
    with pytest.raises(ValidationError, match="unknown status 'done'"):
        service.list(status="done")


def test_start_stop_and_the_events_timeline(db_platform, trainer, recorder):
    _create(db_platform, trainer)
    service = db_platform.experiments
    assert service.start("exp")["status"] == "queued"
    with pytest.raises(ConflictError, match="only created, failed or cancelled"):
        service.start("exp")
    stopped = service.stop("exp")
    assert stopped["status"] == "cancelled" and stopped["status_detail"] == "stop requested"
    with pytest.raises(ConflictError, match="already cancelled"):
        service.stop("exp")
    assert service.start("exp")["status"] == "queued"  # a cancelled run can go again
    timeline = service.events("exp")
    assert [(e["old"], e["new"]) for e in timeline] == [
        (None, "created"),
        ("created", "queued"),
        ("queued", "cancelled"),
        ("cancelled", "queued"),
    ]
    assert all(datetime.fromisoformat(e["at"]).tzinfo for e in timeline)
    assert [e["new"] for e in recorder.states] == ["created", "queued", "cancelled", "queued"]
    assert service.status("exp") == "queued"


def test_create_with_start_queues_it(db_platform, trainer):
    view = _create(db_platform, trainer, start=True)
    assert view["status"] == "queued" and view["queued_at"]
    assert [e["new"] for e in view["events"]] == ["created", "queued"]


def test_rerun_copies_the_run_and_queues_it(db_platform, trainer):
    source = _create(
        db_platform,
        trainer,
        hyperparameters={"max_depth": 2},
        seed=42,
        dataset={"uri": str(datasets.path("iris")), "target": "species"},
        resources={"gpus": 1},
        early_stopping={"monitor": "val_loss"},
    )
    first = db_platform.experiments.rerun("exp", actor=ACTOR)
    assert first["name"] == "exp-rerun-1" and first["status"] == "queued"
    for key in (
        "trainer",
        "hyperparameters",
        "dataset",
        "resources",
        "seed",
        "early_stopping",
        "priority",
        "max_attempts",
        "checkpoint_interval_s",
    ):
        assert first[key] == source[key], key
    assert first["reproducibility"]["rerun_of"] == source["id"]
    second = db_platform.experiments.rerun(first["id"], actor=ACTOR)
    assert second["name"] == "exp-rerun-2"
    assert db_platform.experiments.rerun("exp", actor=ACTOR)["name"] == "exp-rerun-3"


def test_compare_puts_runs_side_by_side(db_platform, trainer):
    a = _create(db_platform, trainer, name="a", hyperparameters={"max_depth": 1, "verbose": 0})
    b = _create(db_platform, trainer, name="b", hyperparameters={"max_depth": 2, "verbose": 0})
    db_platform.experiments.log_metrics(
        "a",
        [
            ("acc", 0.5, 1, 0, "validation"),
            ("acc", 0.8, 2, 0, "validation"),
            ("loss", 0.3, 2, 0, "train"),
        ],
    )
    db_platform.experiments.log_metrics(b["id"], [("acc", 0.9, 5, 1, "validation")])
    data = db_platform.experiments.compare(["a", b["id"]])
    assert [e["id"] for e in data["experiments"]] == [a["id"], b["id"]]
    assert data["hyperparameters"] == {"max_depth": [1, 2], "verbose": [0, 0]}
    assert data["differing"] == ["max_depth"]
    assert data["metrics"] == {"loss": [0.3, None], "validation/acc": [0.8, 0.9]}
    with pytest.raises(ValidationError, match="2 to 50"):
        db_platform.experiments.compare(["a"])


# --- metrics -------------------------------------------------------------------------------


def test_metrics_round_trip_and_history_filters(db_platform, trainer, recorder):
    exp = _create(db_platform, trainer)
    service = db_platform.experiments
    written = service.log_metrics(
        "exp",
        [
            {"name": "loss", "value": 0.5, "step": 2, "epoch": 0, "kind": "train"},
            ("loss", 0.9, 1, 0, "train"),  # out of order: history comes back by step
            ["loss", 1, 3, 1, "train"],  # an int value is stored as a float
            {"name": "val_loss", "value": 0.7, "step": 3, "epoch": 1, "kind": "validation"},
            {"name": "note", "value": -2.25},
            ("loss", 0.25, 4, 1, "train", "2024-05-01T12:00:00+02:00"),
            ("odd\tname\\with\nescapes é", 1e-07, 0, None, None),
        ],
    )
    assert written == {"experiment_id": exp["id"], "written": 7}
    assert recorder.batches == [(exp["id"], 7)]
    data = service.metrics("exp")
    assert data["count"] == 7
    assert list(data["metrics"]) == ["loss", "note", "odd\tname\\with\nescapes é", "val_loss"]
    assert data["metrics"]["odd\tname\\with\nescapes é"]["values"] == [1e-07]
    loss = data["metrics"]["loss"]
    assert loss["steps"] == [1, 2, 3, 4] and loss["values"] == [0.9, 0.5, 1.0, 0.25]
    assert all(isinstance(v, float) for v in loss["values"])
    assert loss["epochs"] == [0, 0, 1, 1] and loss["kinds"] == ["train"] * 4
    assert datetime.fromisoformat(loss["times"][3]) == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
    assert datetime.fromisoformat(loss["times"][0]).tzinfo is not None
    assert data["metrics"]["note"] == {
        "steps": [None],
        "values": [-2.25],
        "epochs": [None],
        "kinds": [None],
        "times": data["metrics"]["note"]["times"],
    }
    assert list(service.metrics("exp", name="loss")["metrics"]) == ["loss"]
    assert list(service.metrics("exp", kind="validation")["metrics"]) == ["val_loss"]
    assert service.metrics("exp", name="loss", after_step=2)["metrics"]["loss"]["steps"] == [3, 4]
    assert service.metrics("exp", name="loss", limit=2)["metrics"]["loss"]["steps"] == [1, 2]
    assert service.metrics("exp", name="nope")["metrics"] == {}
    latest = service.latest_metrics("exp")
    assert latest["loss"]["value"] == 0.25 and latest["loss"]["step"] == 4
    assert latest["validation/val_loss"]["value"] == 0.7
    assert latest["note"]["value"] == -2.25 and latest["note"]["step"] is None
    assert service.get("exp")["metrics"] == latest


BAD_POINTS = [
    # non-finite values are kept (a diverged loss), but only as floats or the JSON texts
    ({"name": "loss", "value": "nan"}, r"points\[1\]\.value: 'nan' is not a number"),
    ({"name": "loss", "value": "inf"}, r'points\[1\]\.value: .* "Infinity"'),
    ({"name": "loss", "value": 1e10}, "within ±1e10"),
    ({"name": "loss", "value": "0.5"}, r"value: '0\.5' is not a number"),
    ({"name": "loss", "value": True}, "value: True is not a number"),
    ({"name": "loss"}, r"points\[1\]\.value: missing"),
    ({"name": "", "value": 1.0}, r"points\[1\]\.name"),
    ({"name": "x" * 101, "value": 1.0}, "at most 100 characters"),
    ({"name": 5, "value": 1.0}, r"points\[1\]\.name"),
    ({"name": "loss", "value": 1.0, "step": 1.5}, r"points\[1\]\.step: 1\.5"),
    ({"name": "loss", "value": 1.0, "step": -1}, r"step: -1 must be an integer"),
    ({"name": "loss", "value": 1.0, "epoch": "3"}, r"points\[1\]\.epoch"),
    ({"name": "loss", "value": 1.0, "step": 2**31}, "step"),
    ({"name": "loss", "value": 1.0, "kind": "eval"}, r"kind: 'eval' must be one of"),
    ({"name": "loss", "value": 1.0, "metric": "x"}, r"unknown keys \['metric'\]"),
    ({"name": "loss", "value": 1.0, "recorded_at": "0001-01-01T00:00:00+01:00"}, "out of range"),
    ({"name": "loss", "value": 1.0, "recorded_at": 5}, "not an ISO 8601 time"),
    ({"name": "lo\x00ss", "value": 1.0}, r"points\[1\]\.name contains a NUL"),
    ({"name": "lo\ud800ss", "value": 1.0}, r"points\[1\]\.name contains a lone"),
    ({"name": "loss", "value": 1.0, "recorded_at": "yesterday"}, "not an ISO 8601 time"),
    (("loss", 1.0), r"points\[1\]: \('loss', 1\.0\) is not a point"),
    ("loss", r"points\[1\]: 'loss' is not a point"),
    (None, "is not a point"),
]


@pytest.mark.parametrize(("point", "match"), BAD_POINTS)
def test_bad_points_are_refused_with_the_reason(point, match):
    with pytest.raises(ValidationError, match=match) as exc:
        metrics.check_points([{"name": "ok", "value": 1.0}, point])
    assert exc.value.details["index"] == 1


def test_numpy_scalars_and_huge_numbers():
    import numpy as np

    rows = metrics.check_points([("a", np.float32(0.5), np.int64(3), np.int32(1), "train")])
    assert rows[0][:5] == ("a", 0.5, 3, 1, "train") and type(rows[0][2]) is int
    with pytest.raises(ValidationError, match=r"value: 1000.* must be within ±1e10"):
        metrics.check_points([("a", 10**400, 1, 1, None)])
    with pytest.raises(ValidationError, match=r"step: np\.float64\(1\.5\)"):
        metrics.check_points([("a", 1.0, np.float64(1.5), 1, None)])


def test_a_bad_batch_writes_nothing(db_platform, trainer, recorder):
    exp = _create(db_platform, trainer)
    service = db_platform.experiments
    service.log_metrics("exp", [("loss", 1.0, 0, 0, "train")])
    good = [("loss", float(i), i, 0, "train") for i in range(1, 1000)]
    for bad in (("loss", 1e11, 1000, 0, "train"), ("loss", 1.0, 1000, 0, "bogus")):
        with pytest.raises(ValidationError, match=r"points\[999\]"):
            service.log_metrics("exp", [*good, bad])
    assert service.metrics("exp")["count"] == 1
    assert recorder.batches == [(exp["id"], 1)]
    assert service.log_metrics("exp", []) == {"experiment_id": exp["id"], "written": 0}
    with pytest.raises(NotFoundError):
        metrics.write_points(
            db_platform.db, "6f1c1f0e-0000-4000-8000-000000000000", [("loss", 1.0, 0, 0, "train")]
        )
    with pytest.raises(NotFoundError):
        service.log_metrics("no-such-experiment", [("loss", 1.0, 0, 0, "train")])


def test_bulk_ingest_and_history_of_many_points(db_platform, trainer):
    exp = _create(db_platform, trainer)
    points = [("loss", i / 7, i, i // 100, "train") for i in range(20_000)]
    assert metrics.write_points(db_platform.db, exp["id"], points) == 20_000
    history = metrics.read_history(db_platform.db, exp["id"], name="loss")["loss"]
    assert history["steps"] == list(range(20_000))
    assert history["values"][7] == pytest.approx(1.0)
    assert metrics.latest_values(db_platform.db, exp["id"])["loss"]["step"] == 19_999


def test_history_fields_pick_the_columns(db_platform, trainer):
    _create(db_platform, trainer)
    service = db_platform.experiments
    service.log_metrics("exp", [("loss", 0.5, 1, 0, "train"), ("acc", 0.9, 1, 0, "validation")])
    data = service.metrics("exp", fields=["values", "steps"])
    assert data["metrics"] == {
        "acc": {"steps": [1], "values": [0.9]},
        "loss": {"steps": [1], "values": [0.5]},
    }
    assert data["count"] == 2
    times = service.metrics("exp", name="acc", fields=["times"])["metrics"]["acc"]
    assert list(times) == ["times"] and times["times"][0].endswith("+00:00")
    assert list(service.metrics("exp", fields=None)["metrics"]["acc"]) == list(
        metrics.HISTORY_FIELDS
    )
    with pytest.raises(ValidationError, match=r"\['colour'\] are not history columns"):
        service.metrics("exp", fields=["steps", "colour"])
    with pytest.raises(ValidationError, match=r"\(none\)"):
        service.metrics("exp", fields=[" "])


def test_a_batch_without_times_is_stamped_with_one_time_of_now(db_platform, trainer):
    exp = _create(db_platform, trainer)
    before = datetime.now(timezone.utc)
    metrics.write_points(db_platform.db, exp["id"], [("a", 1.0, i, 0, "train") for i in range(50)])
    after = datetime.now(timezone.utc)
    times = {
        datetime.fromisoformat(t)
        for t in metrics.read_history(db_platform.db, exp["id"])["a"]["times"]
    }
    assert len(times) == 1  # PostgreSQL: the transaction's now(); SQLite: the batch's time
    [stamp] = times
    assert before - timedelta(seconds=1) <= stamp <= after + timedelta(seconds=1)


def test_concurrent_batches_all_land(db_platform, trainer):
    """Threads writing batches at once (SQLite: they take turns on the bulk-write lock)."""
    import threading

    exp = _create(db_platform, trainer)
    failures = []

    def writer(first):
        try:
            for batch in range(5):
                step = first + batch * 1000
                rows = [("loss", 0.5, step + i, 0, "train") for i in range(1000)]
                metrics.write_points(db_platform.db, exp["id"], rows)
        except Exception as exc:  # reported below, with the thread's start step
            failures.append((first, exc))

    threads = [threading.Thread(target=writer, args=(n * 100_000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    steps = metrics.read_history(db_platform.db, exp["id"], name="loss")["loss"]["steps"]
    assert len(steps) == 20_000 and len(set(steps)) == 20_000


def test_new_ids_are_time_ordered_uuids():
    import uuid

    ids = metrics.new_ids(3)
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert metrics.new_ids(1)[0][:12] >= ids[-1][:12]


# --- logs ----------------------------------------------------------------------------------


def test_log_store_appends_and_reads_by_offset(platform, monkeypatch):
    monkeypatch.setattr(logs_module, "MAX_CHUNK_BYTES", 4)
    key = "6f1c1f0e-0000-4000-8000-000000000001"
    store = LogStore(platform.artifacts)
    assert store.size(key) == 0 and store.read(key) == (b"", 0)
    assert store.append(key, b"hello ") == 6  # split in chunks of 4 bytes
    assert store.append(key, b"world\n") == 12
    assert [(c.start, c.end) for c in store.chunks(key)] == [(0, 4), (4, 6), (6, 10), (10, 12)]
    assert store.read(key) == (b"hello world\n", 12)
    assert store.read(key, 3, 5) == (b"lo wo", 8)
    assert store.read(key, 8) == (b"rld\n", 12)
    assert store.read(key, 12) == (b"", 12)
    assert store.read(key, 50) == (b"", 50)
    # a fresh store (another process) continues from the listing alone
    assert LogStore(platform.artifacts).append(key, b"more") == 16
    assert store.size(key) == 16 and store.read(key, 10)[0] == b"d\nmore"
    keys = list(platform.artifacts.list(f"experiments/{key}/logs/"))
    assert keys[0].endswith("/00000000-000000000000-000000000004")
    with pytest.raises(ValidationError, match="offset must be"):
        store.read(key, -1)
    with pytest.raises(ValidationError, match="limit must be"):
        store.read(key, 0, 0)
    with pytest.raises(ValidationError, match="not a UUID"):
        store.append("../etc", b"x")
    with pytest.raises(ValidationError, match="must be bytes"):
        store.append(key, "text")


def test_service_reads_logs_by_name(platform, trainer):
    exp = platform.experiments.create(name="exp", trainer=trainer, actor=ACTOR)
    platform.experiments.logs.append(exp["id"], b"epoch 1\nepoch 2\n")
    assert platform.experiments.read_logs("exp", 8) == (b"epoch 2\n", 16)
    with pytest.raises(NotFoundError):
        platform.experiments.read_logs("nope")


# --- CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli_run(tmp_path):
    """``mlrig --config ... ARGS`` through the real click group, in this process."""
    from click.testing import CliRunner

    from mlrig.cli.context import CliState
    from mlrig.cli.experiments import experiments
    from mlrig.cli.main import cli

    config = tmp_path / "mlrig.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "cli.db"}"\n'
        f'[storage.local]\nroot = "{tmp_path / "artifacts"}"\n'
        '[datasets]\nallowed_roots = ["."]\n'  # the test's own data files
    )
    if "experiments" not in cli.commands:
        cli.add_command(experiments, name="experiments")
    states = []

    def run(*args):
        state = CliState()
        states.append(state)
        return CliRunner().invoke(
            cli, ["--config", str(config), "experiments", *args], obj=state, catch_exceptions=False
        )

    yield run
    for state in states:
        if state._platform is not None:
            state._platform.close()


def test_cli_commands(cli_run, trainer, tmp_path):
    import json

    (tmp_path / "d.csv").write_text("x,y\n1,0\n")
    made = cli_run(
        "create",
        "c1",
        "--trainer",
        trainer,
        "--param",
        "estimator=sklearn.neural_network.MLPClassifier",
        "--param",
        "alpha=0.5",
        "--param",
        "activation=relu",
        "--param",
        "hidden_layer_sizes=[1,2]",
        "--data",
        str(tmp_path / "d.csv"),
        "--target",
        "y",
        "--cpus",
        "2",
        "--early-stopping",
        "monitor=val_loss,mode=max,patience=4,min_delta=0.01",
        "--seed",
        "9",
        "--json",
    )
    assert made.exit_code == 0, made.output
    view = json.loads(made.output)
    assert view["hyperparameters"] == {
        "estimator": "sklearn.neural_network.MLPClassifier",
        "alpha": 0.5,
        "activation": "relu",
        "hidden_layer_sizes": [1, 2],
    }
    assert view["early_stopping"] == {
        "monitor": "val_loss",
        "mode": "max",
        "patience": 4,
        "min_delta": 0.01,
        "kind": "validation",
    }
    assert view["resources"]["cpus"] == 2 and view["seed"] == 9
    bad = cli_run("create", "c2", "--trainer", trainer, "--early-stopping", "patience")
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output
    unknown = cli_run("create", "c2", "--trainer", "nope")
    assert unknown.exit_code == 1 and "unknown trainer 'nope'" in unknown.output
    assert "c1" in cli_run("list").output
    shown = cli_run("show", "c1").output
    assert "events" in shown
    # the new name only; the deprecated model_id stays in --json for a release
    assert "model_version_id:" in shown and "model_id:" not in shown
    shown_json = json.loads(cli_run("show", "c1", "--json").output)
    assert shown_json["model_version_id"] is None and "model_id" in shown_json
    assert "queued" in cli_run("start", "c1").output
    assert "cancelled" in cli_run("stop", "c1").output
    assert [e["new"] for e in json.loads(cli_run("events", "c1", "--json").output)] == [
        "created",
        "queued",
        "cancelled",
    ]
    rerun = cli_run("rerun", "c1")
    assert "c1-rerun-1" in rerun.output and "seed 9" in rerun.output
    compared = cli_run("compare", "c1", "c1-rerun-1", "--json")
    assert json.loads(compared.output)["differing"] == []
    assert "alpha" in cli_run("compare", "c1", "c1-rerun-1").output
    assert "0 points" in cli_run("metrics", "c1").output


def test_cli_wait_exit_codes_metrics_and_logs(cli_run, trainer, tmp_path):
    import threading
    import time

    from mlrig.platform import Platform

    for name in ("w1", "w2"):
        assert cli_run("create", name, "--trainer", trainer, "--max-attempts", "1").exit_code == 0
    platform = Platform.from_config(tmp_path / "mlrig.toml")
    exp = platform.experiments.get("w1")
    platform.experiments.log_metrics(
        "w1", [("loss", 0.5, 1, 0, "train"), ("loss", 0.25, 2, 0, "train")]
    )
    platform.experiments.logs.append(exp["id"], b"hello\nworld\n")

    def finish(complete):
        # claim once the CLI has queued it (a loaded machine can take over a second)
        deadline = time.monotonic() + 30
        job = None
        while job is None and time.monotonic() < deadline:
            time.sleep(0.2)
            job = platform.queue.claim("test-worker", lease_seconds=30)
        assert job is not None
        if complete:
            platform.queue.complete(job, detail="done")
        else:
            platform.queue.fail(job, "boom\nwith a second line", retry=False)

    for name, complete, code in (("w1", True, 0), ("w2", False, 1)):
        thread = threading.Thread(target=finish, args=(complete,))
        thread.start()
        result = cli_run("start", name, "--wait")
        thread.join()
        assert result.exit_code == code, result.output
        if complete:
            assert "completed loss=0.25" in result.output
        else:
            assert "failed: failed on attempt 1, not retried" in result.output
            assert "boom with a second line" in result.output
    metrics_out = cli_run("metrics", "w1", "--name", "loss").output
    assert "0.25" in metrics_out and "last 2 of 2" in metrics_out
    assert cli_run("logs", "w1").output == "hello\nworld\n"
    assert cli_run("logs", "w1", "-f", "--offset", "6").output == "world\n"
    platform.close()


# --- waiting without a worker, errors refused at create time -----------------------------


def test_wait_without_a_live_worker_says_how_to_start_one(run_cli, tmp_path, trainer):
    """`start --wait` with no worker at all: after a few seconds, one line saying so and
    how to start one, exit code 3 (docs/experiments.md); the experiment stays queued."""
    from mlrig.cli.experiments import EXIT_NO_WORKER, NO_WORKER_SECONDS
    from mlrig.platform import Platform

    (tmp_path / "mlrig.toml").write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "w.db"}"\n'
        f'[storage.local]\nroot = "{tmp_path / "artifacts"}"\n'
    )
    assert run_cli("experiments", "create", "lonely", "--trainer", trainer).exit_code == 0
    started = time.monotonic()
    result = run_cli("experiments", "start", "lonely", "--wait", timeout=60)
    waited = time.monotonic() - started
    assert result.exit_code == EXIT_NO_WORKER == 3, result.stderr
    assert "no worker is running" in result.stderr
    assert "`mlrig worker`" in result.stderr and "`mlrig server`" in result.stderr
    assert "Traceback" not in result.stderr
    assert NO_WORKER_SECONDS <= waited < NO_WORKER_SECONDS + 20
    platform = Platform.from_config(tmp_path / "mlrig.toml")
    assert platform.experiments.get("lonely")["status"] == "queued"
    platform.close()


def test_workers_are_known_alive_while_they_run(db_platform):
    import threading

    from mlrig.engine.allocator import Capacity
    from mlrig.engine.worker import Worker

    queue = db_platform.queue
    assert queue.live_workers() == 0
    worker = Worker(db_platform, capacity=Capacity(cpus=(0,)), lease_seconds=5)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while queue.live_workers() == 0:
            assert time.monotonic() < deadline, "the worker never recorded a heartbeat"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(20)
    assert queue.live_workers() == 0  # a clean stop removes it
    # a worker that died: its heartbeat expires
    queue.worker_heartbeat("host:1:dead", ttl_seconds=1.0, concurrency=1)
    assert queue.live_workers() == 1  # (a TTL long enough for a loaded machine)
    time.sleep(1.2)
    assert queue.live_workers() == 0


NOT_TRAINABLE = [
    ({"estimator": "sklearn.nope.Forest"}, None, "cannot be imported"),
    ({"estimator": "nopkg.Forest"}, None, "no package 'nopkg' is installed"),
    ({"estimator": 5}, None, "must be an import path"),
    ({"n_trees": 5}, None, "no parameter 'n_trees'"),
    ({"estimator": "sklearn.svm.SVC", "C": -1}, None, "bad parameter for SVC"),
    ({"n_estimators": "many"}, None, "bad parameter"),
    ({"test_size": 1.5}, None, "test_size must be"),
    ({"epochs": 0}, None, "epochs must be"),
    ({}, {"uri": str(datasets.path("iris").parent / "gone.csv"), "target": "y"}, "not found"),
    # the job could not read it ([datasets] bounds): refused now rather than at run time
    ({}, {"uri": "/etc/hostname", "target": "y"}, "outside the folders the server may read"),
    ({}, {"uri": "gs://bucket/d.csv", "target": "y"}, "scheme 'gs://' is not allowed"),
    ({}, {"uri": str(datasets.path("iris"))}, "needs the dataset's label column"),
]


@pytest.mark.parametrize(("params", "dataset", "message"), NOT_TRAINABLE)
def test_what_can_never_train_is_refused_at_create(platform, trainer, params, dataset, message):
    with pytest.raises(ValidationError, match=message):
        _create(platform, trainer, hyperparameters=params, dataset=dataset)
    assert platform.experiments.list() == []


def test_create_imports_no_package_but_scikit_learn(platform, trainer):
    """Importing runs a package's code: for an estimator outside scikit-learn the server
    checks that the package is installed, and only the job imports it."""
    import sys

    sys.modules.pop("this", None)  # the Zen of Python: importing it prints
    _create(platform, trainer, hyperparameters={"estimator": "this.Forest"})
    assert "this" not in sys.modules


def test_create_refusal_over_rest_and_the_cli(api_client, admin_headers, cli_run, trainer):
    response = api_client.post(
        "/api/ml/experiments",
        json={"name": "svc", "trainer": trainer, "hyperparameters": {"n_trees": 5}},
        headers=admin_headers,
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error" and "no parameter 'n_trees'" in error["message"]
    result = cli_run("create", "svc", "--trainer", trainer, "--param", "n_trees=5")
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no parameter 'n_trees'" in lines[0], result.output


def test_a_metric_time_before_the_year_1000_reads_back_as_sent(db_platform, trainer):
    """The fuzzer's find: SQLite's fast insert wrote year 78 as "78" (strftime), which
    read back as another time and broke the response schema."""
    _create(db_platform, trainer)
    db_platform.experiments.log_metrics(
        "exp", [{"name": "loss", "value": 1.0, "recorded_at": "0078-12-07T11:27:45.168237+00:00"}]
    )
    [at] = db_platform.experiments.metrics("exp")["metrics"]["loss"]["times"]
    assert str(at).startswith("0078-12-07") and "11:27:45.168237" in str(at)
