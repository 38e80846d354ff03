"""The torch-ddp trainer on CPU through a real worker: torch elastic (torchrun) launching
two gloo ranks, the relay into the training context, elastic restart after a SIGKILLed
rank, bad input failing fast with no process left, ONNX parity of the registered model."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from _jobs import add_job as queue_job
from _jobs import job_row

from mlrig.db.models import TrainingExperiment, TrainingMetric
from mlrig.engine.allocator import Capacity
from mlrig.engine.worker import Worker

pytestmark = pytest.mark.heavy

MODULE = """
import time
import torch
from torch import nn
from torch.utils.data import TensorDataset


def build_model(params):
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def build_dataset(params):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(int(params.get("samples", 256)), 4, generator=g)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1).squeeze(1)
    n = len(x) * 3 // 4
    return TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:])


def step(model, batch):
    pause = float(PAUSE)
    if pause and model.training:
        time.sleep(pause)
    x, y = batch
    return nn.functional.mse_loss(model(x).squeeze(1), y)
"""


def write_module(folder: Path, name="train_mlp.py", pause=0.0, body=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(body if body is not None else MODULE.replace("PAUSE", repr(pause)))
    return path


def add_job(
    platform, name, params, *, resources=None, interval=0, max_attempts=1, early_stopping=None
):
    return queue_job(
        platform,
        name,
        trainer="torch-ddp",
        params=params,
        resources=resources or {"cpus": 2},
        max_attempts=max_attempts,
        interval=interval,
        early_stopping=early_stopping,
        seed=3,
    )


def points(platform, job_id, name, kind="train"):
    with platform.db.session() as session:
        rows = session.query(TrainingMetric).filter_by(
            experiment_id=job_id, metric_name=name, metric_type=kind
        )
        return sorted((m.step, m.metric_value) for m in rows)


def start_worker(platform, workdir, *, concurrency=1, cpus=(0, 1), gpus=()):
    worker = Worker(
        platform,
        concurrency=concurrency,
        capacity=Capacity(cpus=cpus, gpus=gpus),
        lease_seconds=20,
        workdir=workdir,
    )
    stop = threading.Event()
    thread = threading.Thread(
        target=worker.run, kwargs={"stop": stop, "exit_when_idle": True}, daemon=True
    )
    thread.start()
    return stop, thread


def run_jobs(platform, workdir, *, timeout=240, **kw):
    stop, thread = start_worker(platform, workdir, **kw)
    thread.join(timeout)
    stop.set()
    thread.join(30)
    assert not thread.is_alive(), "the worker did not finish in time"


def run_dir(workdir, job_id, attempt=1):
    return workdir / str(job_id) / f"attempt-{attempt}" / "ddp"


def leftovers(marker: str) -> list[str]:
    """Live processes whose command line names ``marker`` (a test's own run folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def torch_and_onnx_predictions(platform, version, module_path, final, tmp_path):
    """What torch (the user's model with the final weights) and the ``onnx`` runtime
    (the registered export, downloaded like the data plane does) predict."""
    import torch

    from mlrig.backends import load_backend
    from mlrig.plugins._distributed import load_user_module

    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(5))
    model = load_user_module(str(module_path)).build_model({})
    model.load_state_dict(torch.load(final))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    folder = tmp_path / f"download-{version['id']}"
    platform.registry.download_version(version["name"], version["version"], folder)
    runtime = load_backend("runtimes", "onnx").from_options({}, where="runtimes.onnx")
    served = runtime.load(folder, version)
    import numpy as np

    got = np.asarray(served.predict(x.numpy()), dtype=np.float32).reshape(expected.shape)
    return expected, got


def check_trained(platform, job_id, run, module_path, tmp_path, params_files="params-*.json"):
    """The checks every successful run passes: loss falls, identical replicas, the
    model registered, its ONNX export served by ``onnx`` equal to torch within 1e-4."""
    import numpy as np

    row = job_row(platform, job_id)
    assert row.status == "completed", row.status_detail
    epochs = points(platform, job_id, "epoch_loss")
    assert len(epochs) >= 3 and epochs[-1][1] < 0.5 * epochs[0][1], epochs
    assert points(platform, job_id, "val_loss", "validation")
    hashes = [json.loads(p.read_text()) for p in sorted(run.glob(params_files))]
    assert len(hashes) == 2 and hashes[0]["sha256"] == hashes[1]["sha256"], hashes
    result = row.configuration["result"]
    assert result["metrics"]["replicas_identical"] == 1.0
    version = platform.registry.get_version(row.name, result["model_version_id"])
    assert "model.onnx" in [a["path"] for a in version["artifacts"]], version["artifacts"]
    final = next(run.glob(params_files.replace("params-*.json", "final.pt")))
    expected, got = torch_and_onnx_predictions(platform, version, module_path, final, tmp_path)
    assert np.abs(expected - got).max() <= 1e-4
    return row


def test_two_ranks_on_cpu_train_identical_replicas_and_register_an_onnx_model(platform, tmp_path):
    module = write_module(tmp_path)
    params = {"module": str(module), "nproc_per_node": 2, "epochs": 6, "batch_size": 16,
              "lr": 0.05, "grad_accum": 2, "rdzv_timeout_s": 30,
              "log_every_steps": 1}  # fmt: skip
    job_id = add_job(platform, "ddp-mlp", params)
    work = tmp_path / "work"
    run_jobs(platform, work)
    run = run_dir(work, job_id)
    check_trained(platform, job_id, run, module, tmp_path)
    workers = [json.loads(p.read_text()) for p in run.glob("worker-*.json")]
    assert sorted(w["world"] for w in workers) == [2, 2]
    assert {w["backend"] for w in workers} == {"gloo"}  # CPU: gloo (nccl needs CUDA)
    # 192 training rows on 2 ranks, batches of 16, an optimizer step every 2: 3 per epoch
    assert [s for s, _ in points(platform, job_id, "loss")] == list(range(18))
    assert leftovers(str(run)) == []
    # the lead rank packaged the model (the job process imports no torch): the version
    # holds that package's files, byte for byte, with the ONNX parity check passed
    import hashlib

    manifest = json.loads((run / "package" / "mlrig-model.json").read_text())
    assert manifest["onnx"]["status"] == "ok" and manifest["onnx"]["check"]["status"] == "ok"
    assert manifest["native"]["program"]["status"] == "ok"
    row = job_row(platform, job_id)
    version = platform.registry.get_version(
        row.name, row.configuration["result"]["model_version_id"]
    )
    assert sorted(a["path"] for a in version["artifacts"]) == manifest["files"]
    folder = tmp_path / "registered"
    platform.registry.download_version(version["name"], version["version"], folder)
    for rel in manifest["files"]:
        digest = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
        assert digest == hashlib.sha256((run / "package" / rel).read_bytes()).hexdigest(), rel
    marks = json.loads((run / "timeline.json").read_text())
    assert marks["job_started"] <= marks["torchrun_started"] <= marks["ranks_exited"]
    assert marks["ranks_exited"] <= marks["registered"]
    assert marks["torch_in_job"] is False  # the job process never imported torch


def test_a_killed_rank_restarts_the_group_from_the_checkpoint(platform, tmp_path):
    module = write_module(tmp_path, pause=0.08)
    params = {"module": str(module), "nproc_per_node": 2, "epochs": 4, "batch_size": 8,
              "lr": 0.03, "max_restarts": 2, "rdzv_timeout_s": 30,
              "log_every_steps": 1}  # fmt: skip
    job_id = add_job(platform, "ddp-killed", params)
    work = tmp_path / "work"
    stop, thread = start_worker(platform, work)
    run = run_dir(work, job_id)
    try:
        info = wait_for_checkpoint(run, 5)
        victim = json.loads((run / "worker-1.json").read_text())
        assert victim["restart"] == 0
        os.kill(victim["pid"], signal.SIGKILL)
        killed_after = info["step"]
        thread.join(180)
    finally:
        stop.set()
        thread.join(30)
    check_trained(platform, job_id, run, module, tmp_path)
    restarts = json.loads((run / "restarts.json").read_text())
    assert restarts["count"] >= 1, restarts
    first, resumed = restarts["starts"][0], restarts["starts"][-1]
    assert first["step"] == 0 and resumed["restart"] >= 1
    # the restarted group went on from the checkpoint, not from step 0
    assert resumed["step"] > killed_after >= 5, restarts
    assert points(platform, job_id, "resumed_step")
    row = job_row(platform, job_id)
    assert row.configuration["result"]["metrics"]["elastic_restarts"] >= 1
    # one point per step in the history: 192 rows on 2 ranks in batches of 8, 4 epochs
    assert [s for s, _ in points(platform, job_id, "loss")] == list(range(48))
    assert leftovers(str(run)) == []


def wait_for_checkpoint(run, step, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"no checkpoint at step {step} or later"
        try:
            info = json.loads((run / "checkpoint.json").read_text())
        except (OSError, ValueError):
            info = None
        if info and info["step"] >= step and (run / "worker-1.json").exists():
            return info
        time.sleep(0.05)


def test_sigterm_checkpoints_and_the_next_attempt_resumes_from_it(platform, tmp_path):
    """A worker shutting down SIGTERMs the job: the ranks stop at the same step, the lead
    checkpoints, the context stores it; the next attempt (another worker) resumes there."""
    module = write_module(tmp_path, pause=0.08)
    params = {"module": str(module), "nproc_per_node": 2, "epochs": 4, "batch_size": 8,
              "lr": 0.03, "rdzv_timeout_s": 30, "log_every_steps": 1}  # fmt: skip
    job_id = add_job(platform, "ddp-sigterm", params, interval=3600, max_attempts=2)
    work = tmp_path / "work"
    stop, thread = start_worker(platform, work)
    first = run_dir(work, job_id)
    try:
        wait_for_checkpoint(first, 5)
    finally:
        stop.set()
        thread.join(60)
    row = job_row(platform, job_id)
    assert row.status == "queued", row.status_detail
    saved = row.last_checkpoint["step"]
    assert saved >= 5
    run_jobs(platform, work)
    check_trained(platform, job_id, run_dir(work, job_id, attempt=2), module, tmp_path)
    row = job_row(platform, job_id)
    assert row.configuration["result"]["resumed_from_step"] == saved
    starts = json.loads((run_dir(work, job_id, attempt=2) / "restarts.json").read_text())
    assert starts["starts"][0]["step"] == saved + 1
    assert [s for s, _ in points(platform, job_id, "loss")] == list(range(48))
    assert leftovers(str(work)) == []


def test_a_killed_job_process_leaves_no_rank_behind(platform, tmp_path):
    """SIGKILL to the job process (no cleanup runs): torchrun gets SIGTERM from the
    kernel (parent-death signal) and ends its ranks, which follow it if it dies."""
    module = write_module(tmp_path, pause=0.2)
    params = {"module": str(module), "nproc_per_node": 2, "epochs": 5, "batch_size": 8}
    job_id = add_job(platform, "ddp-job-killed", params)
    work = tmp_path / "work"
    stop, thread = start_worker(platform, work)
    run = run_dir(work, job_id)
    try:
        wait_for_checkpoint(run, 1)
        rank = json.loads((run / "worker-0.json").read_text())["pid"]
        launcher = parent_of(rank)
        job = parent_of(launcher)
        assert f"{run}" in Path(f"/proc/{launcher}/cmdline").read_text()
        os.kill(job, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while leftovers(str(run)):
            assert time.monotonic() < deadline, leftovers(str(run))
            time.sleep(0.1)
        thread.join(60)
    finally:
        stop.set()
        thread.join(30)
    assert job_row(platform, job_id).status == "failed"


def test_early_stopping_stops_every_rank_at_the_same_step(platform, tmp_path):
    """should_stop() (here early stopping on val_loss) reaches the ranks: they stop
    together, the run completes early and still registers its model. The stop is
    asynchronous (the job polls every 0.2 s): a few more steps run after the trigger."""
    module = write_module(tmp_path, pause=0.05)
    params = {"module": str(module), "nproc_per_node": 2, "epochs": 40, "batch_size": 32,
              "lr": 1e-9}  # fmt: skip
    rule = {"monitor": "val_loss", "mode": "min", "patience": 2, "min_delta": 0.01}
    job_id = add_job(platform, "ddp-stalls", params, early_stopping=rule)
    work = tmp_path / "work"
    run_jobs(platform, work)
    row = job_row(platform, job_id)
    assert row.status == "completed", row.status_detail
    assert "early stopped: val_loss did not improve" in row.status_detail
    epochs = points(platform, job_id, "val_loss", "validation")
    assert 3 <= len(epochs) < 15, epochs  # of 40
    run = run_dir(work, job_id)
    hashes = {json.loads(p.read_text())["sha256"] for p in run.glob("params-*.json")}
    steps = {json.loads(p.read_text())["step"] for p in run.glob("params-*.json")}
    assert len(hashes) == 1 and len(steps) == 1, (hashes, steps)
    assert row.configuration["result"]["model_version_id"]


def test_two_nodes_on_loopback_are_two_engine_jobs(platform, tmp_path):
    """nnodes=2: the leader job queues a node job (mlrig.engine.nodes), both run torchrun
    against the leader's c10d store on 127.0.0.1; the same checks as on one node, the
    replicas compared across both jobs' folders."""
    pytest.importorskip("mlrig.engine.nodes", reason="mlrig.engine.nodes (node jobs) missing")
    module = write_module(tmp_path)
    params = {"module": str(module), "nnodes": 2, "nproc_per_node": 1, "epochs": 6,
              "batch_size": 16, "lr": 0.05, "grad_accum": 2, "rdzv_timeout_s": 60,
              "log_every_steps": 2}  # fmt: skip
    job_id = add_job(platform, "ddp-2nodes", params, resources={"cpus": 1})
    work = tmp_path / "work"
    run_jobs(platform, work, concurrency=2, timeout=300)
    with platform.db.session() as session:
        rows = session.query(TrainingExperiment).all()
        jobs = {row.id: (row.name, row.status, row.status_detail) for row in rows}
    assert len(jobs) == 2, jobs
    assert jobs[job_id][1] == "completed", jobs
    # the leader waits for its node job to complete before it ends (which would cancel it)
    (node,) = [row for key, row in jobs.items() if key != job_id]
    assert node[:2] == ("ddp-2nodes-node1", "completed"), node
    check_trained(platform, job_id, work, module, tmp_path, "*/attempt-1/ddp/params-*.json")
    workers = [json.loads(p.read_text()) for p in work.glob("*/attempt-1/ddp/worker-*.json")]
    assert sorted(w["world"] for w in workers) == [2, 2]
    # the lead rank is the leader job's, whatever rank c10d gave it
    leads = {w["lead"] for w in workers}
    assert len(leads) == 1
    assert (run_dir(work, job_id) / f"worker-{leads.pop()}.json").exists()
    # 3 optimizer steps an epoch, the loss logged every 2nd step and at each epoch's last
    logged = [s for s in range(18) if s % 2 == 0 or s % 3 == 2]
    assert [s for s, _ in points(platform, job_id, "loss")] == logged
    assert leftovers(str(work)) == []


def test_a_node_job_that_never_starts_fails_the_leader_in_bounded_time(platform, tmp_path):
    """nnodes=2 on a worker with one slot: the node job stays queued, the leader fails
    after about rdzv_timeout_s saying why, the node job is cancelled, no rank is left."""
    pytest.importorskip("mlrig.engine.nodes", reason="mlrig.engine.nodes (node jobs) missing")
    module = write_module(tmp_path)
    params = {"module": str(module), "nnodes": 2, "rdzv_timeout_s": 5}
    add_job(platform, "ddp-alone", params, resources={"cpus": 1}, max_attempts=2)
    work = tmp_path / "work"
    started = time.monotonic()
    run_jobs(platform, work, concurrency=1, timeout=120)
    elapsed = time.monotonic() - started
    with platform.db.session() as session:
        rows = {r.name: (r.status, r.attempts, r.status_detail)
                for r in session.query(TrainingExperiment)}  # fmt: skip
    status, attempts, detail = rows["ddp-alone"]
    assert (status, attempts) == ("failed", 1), rows
    assert "ddp-alone-node1 still queued" in detail or "rendezvous at 127.0.0.1:" in detail, detail
    assert rows["ddp-alone-node1"][0] == "cancelled", rows
    assert elapsed < 70, f"{elapsed:.0f} s"
    assert leftovers(str(work)) == []


def parent_of(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


RAISES = """
def build_model(params):
    raise ValueError("width 7 is not supported by this builder")


def build_dataset(params):
    return []
"""
NO_BUILDER = """
def build_dataset(params):
    return []
"""


def test_bad_input_fails_the_experiment_saying_why_with_no_process_left(platform, tmp_path):
    from mlrig.testing.fixtures import free_port

    good = write_module(tmp_path)
    cases = {
        "no-builder": (
            {"module": str(write_module(tmp_path, "nobuild.py", body=NO_BUILDER))},
            {"cpus": 1},
            "has no function build_model",
        ),
        "raises": (
            {"module": str(write_module(tmp_path, "raises.py", body=RAISES))},
            {"cpus": 1},
            "ValueError: width 7 is not supported by this builder",
        ),
        "too-many-ranks": (
            {"module": str(good), "nproc_per_node": 2},
            {"cpus": 1},
            "nproc_per_node=2 is more than the 1 CPU(s) this job may use",
        ),
        "nobody-answers": (
            {
                "module": str(good),
                "rdzv_endpoint": f"127.0.0.2:{free_port()}",
                "rdzv_timeout_s": 3,
            },
            {"cpus": 1},
            "rendezvous at 127.0.0.2:",
        ),
    }
    jobs = {add_job(platform, name, p, resources=r, max_attempts=3): (name, why)
            for name, (p, r, why) in cases.items()}  # fmt: skip
    work = tmp_path / "work"
    started = time.monotonic()
    run_jobs(platform, work, concurrency=2, timeout=150)
    elapsed = time.monotonic() - started
    for job_id, (name, why) in jobs.items():
        row = job_row(platform, job_id)
        assert (row.status, row.attempts) == ("failed", 1), (name, row.status_detail)
        assert why in row.status_detail, (name, row.status_detail)
    assert elapsed < 120, f"4 bad experiments took {elapsed:.0f} s"
    assert leftovers(str(work)) == []


def test_check_refuses_bad_options_at_create():
    from mlrig.errors import ValidationError
    from mlrig.plugins.trainer_torch_ddp import TorchDDPTrainer

    trainer = TorchDDPTrainer.from_options({}, where="trainers.torch-ddp")
    trainer.check(params={"module": "train.py", "nproc_per_node": 2}, dataset=None)
    bad = [
        ({}, "needs hyperparameter module"),
        ({"module": "t.py", "nproc_per_node": 0}, "nproc_per_node must be an integer"),
        ({"module": "t.py", "nproc_per_node": "2"}, "nproc_per_node must be an integer"),
        ({"module": "t.py", "nnodes": 1.5}, "nnodes must be an integer"),
        ({"module": "t.py", "precision": "fp8"}, "precision must be one of fp32, bf16, fp16"),
        ({"module": "t.py", "compile": "yes"}, "compile must be true or false"),
        ({"module": "t.py", "rdzv_endpoint": "nohost"}, "rdzv_endpoint must be HOST:PORT"),
        ({"module": "t.py", "rdzv_timeout_s": -1}, "rdzv_timeout_s must be a number"),
    ]
    for params, why in bad:
        with pytest.raises(ValidationError, match=why):
            trainer.check(params=params, dataset=None)


def test_the_job_counts_its_gpus_without_torch(monkeypatch, tmp_path):
    """The job process picks nccl or gloo from the GPUs it was given (the executor's
    CUDA_VISIBLE_DEVICES), and only where a GPU driver is loaded."""
    from mlrig.plugins import trainer_torch_ddp as ddp

    driver = tmp_path / "nvidia-version"
    monkeypatch.setattr(ddp, "GPU_DRIVER_FILES", (str(driver),))
    cases = {"": 0, "0": 1, "0,1": 2, " 2 , 3 ": 2, "0,-1,1": 1, "-1": 0}
    for visible, count in cases.items():
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert ddp.job_gpus() == 0, visible  # no driver: CPU whatever the mask says
        driver.write_text("NVRM")
        assert ddp.job_gpus() == count, visible
        driver.unlink()


def test_a_rank_told_to_use_cuda_without_it_fails_for_good_saying_why(monkeypatch, tmp_path):
    """The ranks confirm the job's choice with torch: nccl chosen, no CUDA device seen ->
    a permanent error naming the GPUs given and what to do (the job fails at once)."""
    import torch

    from mlrig.plugins._ddp_worker import Rank
    from mlrig.plugins._distributed import RelayDir, WorkerRelay

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    rank = Rank.__new__(Rank)
    rank.spec, rank.local_rank = {"cuda": True, "gpus": 1}, 0
    rank.relay = WorkerRelay(tmp_path, rank=0)
    with pytest.raises(RuntimeError, match=r"given 1 GPU\(s\).*sees 0 CUDA device"):
        rank._confirm_cuda()
    (error,) = RelayDir(tmp_path).errors()
    assert error["permanent"] is True
    assert "install a CUDA build of torch, or run the job without gpus" in error["message"]


def test_importing_the_trainer_imports_no_torch():
    import subprocess
    import sys

    script = "import sys, mlrig.plugins.trainer_torch_ddp; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


GPU_MODULE = """
import torch
from torch import nn
from torch.utils.data import TensorDataset


def build_model(params):
    width = int(params.get("width", 1024))
    return nn.Sequential(nn.Linear(64, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                         nn.Linear(width, 1))


def build_dataset(params):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(int(params.get("samples", 65536)), 64, generator=g)
    y = x[:, :8].sum(dim=1)
    return TensorDataset(x, y)
"""


@pytest.mark.gpu
def test_one_gpu_bf16_and_compile_against_fp32(platform, tmp_path):
    """On a CUDA machine: nccl, one rank on the job's GPU, bf16 autocast + torch.compile
    against fp32 on the same model; both train and register; samples/s are printed."""
    module = write_module(tmp_path, "gpu_mlp.py", body=GPU_MODULE)
    base = {"module": str(module), "epochs": 2, "batch_size": 1024, "lr": 1e-3}
    jobs = {
        "fp32": add_job(platform, "gpu-fp32", base, resources={"cpus": 1, "gpus": 1}),
        "bf16+compile": add_job(
            platform, "gpu-bf16", {**base, "precision": "bf16", "compile": True},
            resources={"cpus": 1, "gpus": 1},
        ),
    }  # fmt: skip
    run_jobs(platform, tmp_path / "work", cpus=(0, 1), gpus=(0,), timeout=500)
    rates = {}
    for name, job_id in jobs.items():
        row = job_row(platform, job_id)
        assert row.status == "completed", (name, row.status_detail)
        epochs = points(platform, job_id, "epoch_loss")
        assert epochs[-1][1] < epochs[0][1], (name, epochs)
        rates[name] = points(platform, job_id, "samples_per_s")[-1][1]
        spec = json.loads((run_dir(tmp_path / "work", job_id) / "spec.json").read_text())
        assert spec["cuda"] is True
    print(f"samples/s: {rates}")
