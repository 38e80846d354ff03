"""The ``tensorflow`` trainer through a real worker: experiments run as job processes that
start TensorFlow workers on loopback (MultiWorkerMirroredStrategy, one TF_CONFIG each).

A 2-worker run: the loss falls, both workers end with identical weights, the model is
registered and its ONNX export served by the ``onnx`` runtime equals Keras's predictions;
a worker killed mid-run (SIGKILL): the cluster relaunches and resumes from the backup (the
epoch count goes on); SIGTERM to the job: the backup is checkpointed and the next attempt
resumes from it; early stopping through ``should_stop()`` stops every worker after the
same epoch; bad input fails the experiment saying why, in bounded time, no process left.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlrig.db.models import TrainingExperiment, TrainingMetric
from mlrig.engine.allocator import Capacity
from mlrig.engine.worker import Worker
from mlrig.errors import ValidationError
from mlrig.security import Principal

pytestmark = pytest.mark.heavy

ADMIN = Principal(name="test", role="admin")

USER_MODULE = textwrap.dedent(
    """
    import json, os, time
    import numpy as np

    def _data(params):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(int(params.get("rows", 1024)), 8)).astype("float32")
        w = np.linspace(-1, 1, 8, dtype="float32")
        y = (np.tanh(x @ w) + 0.5).astype("float32")[:, None]
        return x, y

    def build_dataset(params):
        x, y = _data(params)
        if params.get("hang_on_worker") is not None:
            index = json.loads(os.environ.get("TF_CONFIG", "{}"))["task"]["index"]
            if index == params["hang_on_worker"]:
                time.sleep(3600)
        if params.get("slow_ms"):
            import tensorflow as tf

            def slow(a, b):
                time.sleep(params["slow_ms"] / 1000)
                return a

            def mapped(a, b):
                a = tf.py_function(slow, [a, b], tf.float32)
                a.set_shape((8,))
                return a, b

            return tf.data.Dataset.from_tensor_slices((x, y)).map(mapped)
        return x, y

    def build_model(params):
        import keras

        if params.get("raise"):
            raise RuntimeError("the builder refuses: " + params["raise"])
        model = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)]
        )
        model.compile(optimizer=keras.optimizers.SGD(params.get("lr", 0.05)), loss="mse")
        return model
    """
)


@pytest.fixture
def user_module(tmp_path: Path) -> str:
    path = tmp_path / "train_user.py"
    path.write_text(USER_MODULE)
    return str(path)


def _x(rows: int = 1024) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 8)).astype("float32")


def create(platform: Any, name: str, params: dict[str, Any], **kw: Any) -> dict[str, Any]:
    kw.setdefault("resources", {"cpus": params.get("workers", 2)})
    return platform.experiments.create(
        name=name,
        trainer="tensorflow",
        actor=ADMIN,
        hyperparameters=params,
        seed=7,
        checkpoint_interval_s=0,
        start=True,
        **kw,
    )


def run_worker(platform: Any, workdir: Path, *, timeout: float = 150, concurrency: int = 1):
    worker = Worker(
        platform,
        concurrency=concurrency,
        capacity=Capacity(cpus=(0, 1)),
        lease_seconds=15,
        workdir=workdir,
    )
    stop = threading.Event()
    thread = threading.Thread(
        target=worker.run, kwargs={"stop": stop, "exit_when_idle": True}, daemon=True
    )
    thread.start()
    return thread, stop, timeout


def wait(thread: threading.Thread, stop: threading.Event, timeout: float) -> None:
    thread.join(timeout)
    stop.set()
    thread.join(30)
    assert not thread.is_alive(), "the worker did not finish"


def run_dir(workdir: Path, experiment: dict[str, Any], attempt: int = 1) -> Path:
    return workdir / experiment["id"] / f"attempt-{attempt}" / "tf"


def tf_workers(marker: str) -> list[int]:
    """PIDs of live TensorFlow workers whose command line names ``marker`` (a /proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = next(
                line for line in (entry / "status").read_text().splitlines() if "State" in line
            )
        except (OSError, StopIteration):
            continue
        if "mlrig.plugins._tf_worker" in cmdline and marker in cmdline and "zombie" not in state:
            found.append(int(entry.name))
    return found


def assert_no_workers_left(marker: str) -> None:
    deadline = time.monotonic() + 10
    while tf_workers(marker):
        assert time.monotonic() < deadline, f"orphan TensorFlow workers: {tf_workers(marker)}"
        time.sleep(0.2)


def metric_points(platform: Any, experiment_id: str, name: str) -> list[tuple[int, float]]:
    with platform.db.session() as session:
        rows = session.query(TrainingMetric).filter_by(
            experiment_id=uuid.UUID(experiment_id), metric_name=name
        )
        return sorted((m.step, m.metric_value) for m in rows)


def output_log(workdir: Path, experiment: dict[str, Any], attempt: int = 1) -> str:
    return (workdir / experiment["id"] / f"attempt-{attempt}" / "output.log").read_text()


# --- a 2-worker run -------------------------------------------------------------------------


def test_two_workers_train_one_model_served_by_onnx_like_keras(platform, user_module, tmp_path):
    workdir = tmp_path / "work"
    params = {"module": user_module, "workers": 2, "epochs": 5, "dump_weights": True}
    experiment = create(platform, "tf-two", params)
    started = time.monotonic()
    wait(*run_worker(platform, workdir))
    elapsed = time.monotonic() - started
    done = platform.experiments.get("tf-two")
    assert done["status"] == "completed", done["status_detail"]
    folder = run_dir(workdir, experiment)
    # the strategy each worker built, from the TF_CONFIG the plugin wrote
    import tensorflow as tf

    for index in (0, 1):
        seen = json.loads((folder / f"started-{index}").read_text())
        assert seen["strategy"] == tf.distribute.MultiWorkerMirroredStrategy.__name__
        assert seen["replicas"] == 2 and seen["task"] == ["worker", index]
        assert [a.split(":")[0] for a in seen["cluster"]["worker"]] == ["127.0.0.1"] * 2
    losses = [v for _, v in metric_points(platform, experiment["id"], "loss")]
    assert len(losses) == 5 and losses[-1] < losses[0] / 2, losses
    assert [s for s, _ in metric_points(platform, experiment["id"], "val_loss")] == list(range(5))
    # every worker ended with the same weights (all-reduced gradients, not two models)
    first, second = np.load(folder / "weights-0.npz"), np.load(folder / "weights-1.npz")
    assert sorted(first) == sorted(second) and len(first) == 4
    for key in first:
        assert np.array_equal(first[key], second[key]), key
    # registered, and its ONNX export served by the onnx runtime equals Keras
    from mlrig.backends import load_backend

    version = platform.registry.get_version("tf-two", done["model_version_id"])
    assert version["lineage"]["experiment"]["id"] == experiment["id"]
    assert [a["path"] for a in version["artifacts"]][-1] == "model.onnx"
    download = tmp_path / "download"
    platform.registry.download_version("tf-two", version["version"], download)
    onnx = load_backend("runtimes", "onnx").from_options({}, where="runtimes.onnx")
    loaded = onnx.load(download, version)
    import keras

    model = keras.models.load_model(folder / "model.keras")
    x = _x(64)
    expected = np.asarray(model(x, training=False))
    served = np.asarray(loaded.predict(x), dtype="float32").reshape(expected.shape)
    assert np.allclose(served, expected, atol=1e-4, rtol=0), np.abs(served - expected).max()
    assert np.allclose(np.load(folder / "weights-0.npz")["w0"], model.get_weights()[0])
    assert_no_workers_left(str(workdir))
    print(f"2-worker run of 5 epochs: {elapsed:.1f} s from queue to completion")


def test_an_experiment_with_the_defaults_runs_one_worker_on_its_one_cpu(
    platform, user_module, tmp_path
):
    """No workers and no resources given: the job gets the default 1 CPU, and workers
    defaults to min(2, the job's CPUs) = 1 (it defaulted to 2 and failed, 2 > 1 CPU)."""
    workdir = tmp_path / "work"
    experiment = platform.experiments.create(
        name="tf-defaults",
        trainer="tensorflow",
        actor=ADMIN,
        hyperparameters={"module": user_module, "epochs": 2},
        seed=7,
        start=True,
    )
    wait(*run_worker(platform, workdir))
    done = platform.experiments.get("tf-defaults")
    assert done["status"] == "completed", done["status_detail"]
    assert done["model_version_id"]
    folder = run_dir(workdir, experiment)
    seen = json.loads((folder / "started-0").read_text())
    assert seen["replicas"] == 1 and seen["strategy"] == "MirroredStrategy", seen
    assert not (folder / "started-1").exists()
    assert len(metric_points(platform, experiment["id"], "loss")) == 2
    assert_no_workers_left(str(workdir))


def test_workers_defaults_to_at_most_two_and_the_job_s_cpus():
    from mlrig.plugins.trainer_tensorflow import check_params

    assert check_params({"module": "m"}, cpus=1)["workers"] == 1
    assert check_params({"module": "m"}, cpus=2)["workers"] == 2
    assert check_params({"module": "m"}, cpus=16)["workers"] == 2
    assert check_params({"module": "m"})["workers"] == 2  # at create time: the most it can be
    # given, it is kept (and the job refuses it when it has too few CPUs)
    assert check_params({"module": "m", "workers": 4}, cpus=1)["workers"] == 4
    # an odd global batch is fine for one worker
    assert check_params({"module": "m", "batch_size": 33}, cpus=1)["workers"] == 1


# --- a killed worker ------------------------------------------------------------------------


def test_a_killed_worker_relaunches_the_cluster_which_resumes_at_its_epoch(
    platform, user_module, tmp_path
):
    workdir = tmp_path / "work"
    epochs = 8
    params = {"module": user_module, "workers": 2, "epochs": epochs, "rows": 512, "slow_ms": 1}
    experiment = create(platform, "tf-killed", params)
    thread, stop, timeout = run_worker(platform, workdir)
    folder = run_dir(workdir, experiment)
    events = folder / "events.jsonl"
    deadline = time.monotonic() + 120
    while '"epoch": 1}' not in (events.read_text() if events.exists() else ""):
        assert time.monotonic() < deadline, "epoch 1 never ended"
        assert thread.is_alive(), "the worker ended before epoch 1"
        time.sleep(0.05)
    victim = int((folder / "pid-1").read_text())
    assert victim in tf_workers(str(workdir))  # the /proc scan sees the workers
    os.kill(victim, signal.SIGKILL)
    wait(thread, stop, timeout)
    done = platform.experiments.get("tf-killed")
    assert done["status"] == "completed", done["status_detail"]
    assert done["attempts"] == 1  # relaunched inside the job, not retried by the engine
    log = output_log(workdir, experiment)
    assert "worker 1 ended (killed by SIGKILL); relaunching the cluster (restart 1 of 3)" in log
    restored = [json.loads(line) for line in events.read_text().splitlines()]
    resumed = [e["epoch"] for e in restored if e["event"] == "restored"]
    assert len(resumed) == 1 and 2 <= resumed[0] < epochs, resumed
    # the epoch count went on: each epoch logged once, none from 0 again
    steps = [s for s, _ in metric_points(platform, experiment["id"], "loss")]
    assert steps == list(range(epochs)), steps
    epochs_run = [e["epoch"] for e in restored if e["event"] == "epoch"]
    assert epochs_run == list(range(epochs)), "an epoch ran twice or not at all"
    assert done["model_version_id"]
    assert_no_workers_left(str(workdir))


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


def test_sigterm_checkpoints_the_backup_and_the_next_attempt_resumes_from_it(
    platform, user_module, tmp_path
):
    """SIGTERM to the job process: the workers stop after their epoch, the backup goes into
    a checkpoint (the interval is not due: SIGTERM saves), the engine requeues the job, and
    attempt 2 (a new folder, as on another machine) resumes from the checkpoint."""
    workdir = tmp_path / "work"
    epochs = 8
    params = {"module": user_module, "workers": 2, "epochs": epochs, "rows": 512, "slow_ms": 1}
    experiment = create(platform, "tf-sigterm", params)
    with platform.db.session() as session:
        row = session.get(TrainingExperiment, uuid.UUID(experiment["id"]))
        row.checkpoint_interval_s = 3600  # only SIGTERM makes the checkpoint due
    thread, stop, timeout = run_worker(platform, workdir, timeout=200)
    folder = run_dir(workdir, experiment)
    events = folder / "events.jsonl"
    deadline = time.monotonic() + 120
    while '"epoch": 1}' not in (events.read_text() if events.exists() else ""):
        assert time.monotonic() < deadline, "epoch 1 never ended"
        assert thread.is_alive(), "the worker ended before epoch 1"
        time.sleep(0.05)
    job = _parent(int((folder / "pid-0").read_text()))
    os.kill(job, signal.SIGTERM)
    wait(thread, stop, timeout)
    done = platform.experiments.get("tf-sigterm")
    assert done["status"] == "completed", done["status_detail"]
    assert done["attempts"] == 2 and "resumed from checkpoint step" in done["status_detail"]
    first = output_log(workdir, experiment, 1)
    assert "asked the workers to stop after this epoch" in first
    assert "interrupted by SIGTERM" in first
    second = output_log(workdir, experiment, 2)
    assert "resuming from the checkpoint of epoch" in second
    resumed = [
        json.loads(line)["epoch"]
        for line in (run_dir(workdir, experiment, 2) / "events.jsonl").read_text().splitlines()
        if '"restored"' in line
    ]
    assert len(resumed) == 1 and 2 <= resumed[0] < epochs, resumed
    steps = [s for s, _ in metric_points(platform, experiment["id"], "loss")]
    assert steps == list(range(epochs)), steps
    assert done["model_version_id"]
    assert_no_workers_left(str(workdir))


# --- early stopping --------------------------------------------------------------------------


def test_early_stopping_stops_every_worker_after_the_same_epoch(platform, user_module, tmp_path):
    workdir = tmp_path / "work"
    params = {"module": user_module, "workers": 2, "epochs": 30, "lr": 0.0, "dump_weights": True}
    rule = {"monitor": "val_loss", "mode": "min", "patience": 1, "min_delta": 0.01}
    experiment = create(platform, "tf-stalls", params, early_stopping=rule)
    wait(*run_worker(platform, workdir))
    done = platform.experiments.get("tf-stalls")
    assert done["status"] == "completed", done["status_detail"]
    assert "early stopped" in done["status_detail"]
    steps = [s for s, _ in metric_points(platform, experiment["id"], "val_loss")]
    assert 2 <= len(steps) < 30, steps
    folder = run_dir(workdir, experiment)
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events if e["event"] in ("stopped", "saved")] == [
        "stopped",
        "saved",
    ]
    # both workers left fit (they wrote their weights); a disagreement would hang one
    assert (folder / "weights-0.npz").exists() and (folder / "weights-1.npz").exists()


# --- bad input -------------------------------------------------------------------------------


def test_bad_input_fails_the_experiment_saying_why_with_no_process_left(
    platform, user_module, tmp_path
):
    workdir = tmp_path / "work"
    no_builder = tmp_path / "no_builder.py"
    no_builder.write_text("def build_dataset(params):\n    return [[0.0]], [0.0]\n")
    cases = {
        "tf-no-builder": (
            {"module": str(no_builder), "workers": 1},
            "has no function build_model(params)",
        ),
        "tf-raises": (
            {"module": user_module, "workers": 2, "raise": "no GPU today"},
            "build_model(params) raised RuntimeError: the builder refuses: no GPU today",
        ),
        "tf-too-many": (
            {"module": user_module, "workers": 3, "batch_size": 30},
            "workers=3 is more than the 2 CPU(s) this job may use",
        ),
        "tf-never-up": (
            {"module": user_module, "workers": 2, "hang_on_worker": 1, "startup_timeout_s": 5},
            "worker(s) 1 did not join the cluster within 5 s",
        ),
    }
    for name, (params, _) in cases.items():
        cpus = 2 if name == "tf-too-many" else params["workers"]
        create(platform, name, params, resources={"cpus": cpus}, max_attempts=3)
    started = time.monotonic()
    wait(*run_worker(platform, workdir, timeout=240))
    elapsed = time.monotonic() - started
    for name, (_, why) in cases.items():
        done = platform.experiments.get(name)
        assert (done["status"], done["attempts"]) == ("failed", 1), (name, done["status_detail"])
        assert why in done["status_detail"], (name, done["status_detail"])
    assert_no_workers_left(str(workdir))
    assert elapsed < 150, f"four bad experiments took {elapsed:.0f} s to fail"


def test_check_refuses_bad_options_at_create(platform):
    bad = [
        ({}, "needs hyperparameter 'module'"),
        ({"module": "m", "workers": 0}, "workers must be an integer of at least 1"),
        ({"module": "m", "epochs": 1.5}, "epochs must be an integer"),
        ({"module": "m", "batch_size": 33}, "must be a multiple of workers (2)"),
        ({"module": "m", "validation_split": 1}, "validation_split must be a fraction"),
        ({"module": "m", "max_restarts": -1}, "max_restarts must be an integer of at least 0"),
    ]
    for params, why in bad:
        with pytest.raises(ValidationError, match=None) as raised:
            platform.experiments.create(
                name="tf-bad", trainer="tensorflow", actor=ADMIN, hyperparameters=params
            )
        assert why in str(raised.value), (params, str(raised.value))


def test_tf_config_names_every_worker_on_loopback():
    from mlrig.plugins.trainer_tensorflow import free_ports, tf_config

    ports = free_ports(3)
    assert len(set(ports)) == 3
    config = tf_config(ports, 2)
    assert config == {
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": 2},
    }


def test_each_worker_gets_its_share_of_the_job_s_gpus():
    from mlrig.plugins.trainer_tensorflow import gpu_share

    assert [gpu_share("0,1,2,3", 2, i) for i in (0, 1)] == ["0,1", "2,3"]
    assert [gpu_share("4,5", 2, i) for i in (0, 1)] == ["4", "5"]
    assert gpu_share("0", 2, 1) is None  # fewer GPUs than workers: shared as they are
    assert gpu_share("0,1", 1, 0) is None  # one worker: MirroredStrategy over all of them
    assert gpu_share(None, 2, 0) is None and gpu_share("", 2, 0) is None
