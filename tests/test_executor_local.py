"""The local executor: environment, CPU affinity, memory limit, killing a process tree."""

import sys
import time

import pytest
from _processes import alive

from mlrig.backends import load_backend
from mlrig.contracts import JobSpec, Resources


@pytest.fixture
def executor():
    return load_backend("executors", "local").from_options({}, where="executor.local")


def _spec(tmp_path, code, **kw):
    return JobSpec(
        argv=(sys.executable, "-c", code),
        workdir=tmp_path / "job",
        stdout_path=tmp_path / "out.log",
        stderr_path=tmp_path / "err.log",
        **kw,
    )


def test_runs_in_its_workdir_with_env_and_resources(executor, tmp_path):
    code = (
        "import os; print(os.getcwd()); print(os.environ['CUDA_VISIBLE_DEVICES']);"
        "print(os.environ['JOB_FLAG']); print(sorted(os.sched_getaffinity(0)))"
    )
    handle = executor.launch(
        _spec(tmp_path, code, env={"JOB_FLAG": "yes"}, resources=Resources(cpus=(0,), gpus=(1, 3)))
    )
    assert handle.wait(30) == 0
    out = (tmp_path / "out.log").read_text().splitlines()
    assert out == [str(tmp_path / "job"), "1,3", "yes", "[0]"]


def test_memory_limit_is_enforced(executor, tmp_path):
    code = "b = bytearray(400 * 1024 * 1024); print('allocated')"
    handle = executor.launch(_spec(tmp_path, code, resources=Resources(memory_bytes=200 * 1024**2)))
    assert handle.wait(30) != 0
    assert "MemoryError" in (tmp_path / "err.log").read_text()
    assert "allocated" not in (tmp_path / "out.log").read_text()


def test_terminate_ends_the_whole_tree_within_5s(executor, tmp_path):
    code = (
        "import subprocess, sys, time, signal;"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "print(child.pid, flush=True); time.sleep(60)"
    )
    handle = executor.launch(_spec(tmp_path, code))
    deadline = time.monotonic() + 20
    while not (tmp_path / "out.log").read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child_pid = int((tmp_path / "out.log").read_text().split()[0])
    started = time.monotonic()
    code = handle.terminate(grace_seconds=1.0)
    assert time.monotonic() - started < 5
    assert code is not None and code < 0
    time.sleep(0.2)
    assert not alive(child_pid)


_CUDA_REPORT = (
    "import os, torch;"
    "print(os.environ['CUDA_VISIBLE_DEVICES'] or '-'); print(torch.cuda.device_count());"
    "print(int(torch.ones(64, device='cuda').sum().item()) if torch.cuda.device_count() else 0)"
)


@pytest.mark.heavy
@pytest.mark.gpu
def test_a_job_sees_exactly_the_gpus_it_was_given(executor, tmp_path):
    """GPU 0 handed out: torch in the job sees one device and computes on it; none: zero."""
    given = executor.launch(_spec(tmp_path / "given", _CUDA_REPORT, resources=Resources(gpus=(0,))))
    assert given.wait(120) == 0, (tmp_path / "given" / "err.log").read_text()
    assert (tmp_path / "given" / "out.log").read_text().split() == ["0", "1", "64"]

    withheld = executor.launch(_spec(tmp_path / "none", _CUDA_REPORT, resources=Resources()))
    assert withheld.wait(120) == 0, (tmp_path / "none" / "err.log").read_text()
    assert (tmp_path / "none" / "out.log").read_text().split() == ["-", "0", "0"]
