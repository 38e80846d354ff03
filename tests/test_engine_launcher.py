"""The local executor's fork server (``[executor.local] prefork``): a job forked from it is
the job a plain subprocess would be (working directory, environment, resources, output
files, exit status, its own process group), holds none of the worker's descriptors, and a
dead server costs its running jobs a clean failure, not a hang; a worker runs the same
runner jobs with prefork on and off."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from _distributions import make_distribution
from _processes import alive

from mlrig.backends import forget_loaded_backends, load_backend
from mlrig.contracts import JobSpec, Resources
from mlrig.db.models import TrainingExperiment, TrainingMetric
from mlrig.engine.allocator import Capacity
from mlrig.engine.launcher import ForkedJob
from mlrig.engine.worker import Worker
from mlrig.testing.fixtures import make_platform

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

JOB_MODULE = """
import os, signal, subprocess, sys, time
mode = sys.argv[1]
if mode == "report":
    import numpy
    print("cwd", os.getcwd())
    print("flag", os.environ.get("JOB_FLAG"), "leak", os.environ.get("WORKER_ONLY"))
    print("gpus", os.environ["CUDA_VISIBLE_DEVICES"])
    print("cpus", sorted(os.sched_getaffinity(0)))
    print("group", os.getpgid(0) == os.getpid(), "session", os.getsid(0) == os.getpid())
    print("args", sys.argv[1:], "path0", sys.path[0] == os.getcwd())
    print("sigterm", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    print("stdin", sys.stdin.read() == "")
    print("to stderr", file=sys.stderr)
    sys.exit(7)
if mode == "random":
    import numpy
    print(numpy.random.random())
if mode == "fds":
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            print(fd, os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
if mode == "tree":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print("pids", os.getpid(), child.pid, flush=True)
    time.sleep(60)
if mode == "sleep":
    print("sleeping", os.getpid(), flush=True)
    time.sleep(60)
"""

PROBE_TRAINER = '''
import os
from mlrig.contracts import Trainer, TrainResult


class Probe(Trainer):
    """Says which process started it, logs a metric and a checkpoint."""

    def train(self, ctx):
        print("parent", os.getppid(), flush=True)
        ctx.log_metrics({"value": float(ctx.params.get("x", 1))}, step=0)
        ctx.checkpoint({"step": 0}, force=True)
        return TrainResult(metrics={"value": float(ctx.params.get("x", 1))})
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder on PYTHONPATH with the job module and a trainer distribution (set before
    any fork server starts: the server's interpreter reads PYTHONPATH when it starts)."""
    folder = tmp_path_factory.mktemp("site")
    make_distribution(
        folder,
        "mlrig-launcher-probe",
        entry_points={"mlrig.trainers": {"probe": "mlrig_launcher_probe:Probe"}},
        modules={"mlrig_launcher_probe": PROBE_TRAINER, "launcher_job": JOB_MODULE},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        patch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
        forget_loaded_backends()
        yield folder
    forget_loaded_backends()


def is_plain(handle: object) -> bool:
    """Whether ``handle`` is the local executor's plain-subprocess handle. Looked up now,
    not imported: tests/test_backends.py drops the module from sys.modules, and the
    class of a module imported again is another class."""
    import mlrig.plugins.executor_local as executor_local

    return isinstance(handle, executor_local.LocalJobHandle)


def local_executor(**options):
    return load_backend("executors", "local").from_options(options, where="executor.local")


@pytest.fixture(scope="module")
def forking(site):
    """A local executor whose fork server is up (numpy preloaded, as a trainer's would be)."""
    executor = local_executor(preload=["numpy"])
    assert executor.prepare(timeout=120), "the fork server did not start"
    yield executor
    executor.close()


def job(tmp_path, mode, name="job", **kw):
    args = (mode,)
    return JobSpec(
        argv=(sys.executable, "-m", "launcher_job", *args),
        python_entry=("launcher_job", args),
        workdir=tmp_path / name,
        stdout_path=tmp_path / f"{name}.out",
        stderr_path=kw.pop("stderr_path", tmp_path / f"{name}.err"),
        **kw,
    )


def wait_for_text(path: Path, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.02)
    return path.read_text()


def test_a_forked_job_is_the_job_a_subprocess_would_be(forking, tmp_path, monkeypatch):
    """Same working directory, environment (the job's, not the server's), GPU mask, CPU
    affinity, session, arguments, fresh signal handlers, stdin, output and exit status as
    the plain subprocess of the same spec."""
    spec = dict(env={"JOB_FLAG": "yes"}, resources=Resources(cpus=(0,), gpus=(1, 3)))
    monkeypatch.setenv("WORKER_ONLY", "x")  # set after the server started
    forked = forking.launch(job(tmp_path / "forked", "report", **spec))
    plain = local_executor(prefork=False).launch(job(tmp_path / "plain", "report", **spec))
    assert isinstance(forked, ForkedJob) and is_plain(plain)
    assert forked.wait(60) == 7 and plain.wait(60) == 7
    outputs = {}
    for kind in ("forked", "plain"):
        out = (tmp_path / kind / "job.out").read_text().splitlines()
        assert out[0] == f"cwd {tmp_path / kind / 'job'}"
        outputs[kind] = out[1:]
        assert (tmp_path / kind / "job.err").read_text() == "to stderr\n"
    assert (
        outputs["forked"]
        == outputs["plain"]
        == [
            "flag yes leak x",
            "gpus 1,3",
            "cpus [0]",
            "group True session True",
            "args ['report'] path0 True",
            "sigterm True",
            "stdin True",
        ]
    )


def test_ctrl_c_at_the_worker_s_terminal_does_not_reach_the_server(forking, tmp_path):
    """The server has its own session (a terminal's SIGINT goes to the worker, which
    stops its jobs with SIGTERM so they checkpoint) and ignores SIGINT sent to it."""
    server = forking._server.server_pid
    assert os.getsid(server) == server != os.getsid(0)
    os.kill(server, signal.SIGINT)
    handle = forking.launch(job(tmp_path, "random"))
    assert isinstance(handle, ForkedJob) and handle.wait(60) == 0 and alive(server)


def test_forked_jobs_draw_their_own_random_numbers(forking, tmp_path):
    handles = [forking.launch(job(tmp_path, "random", name=f"r{i}")) for i in range(2)]
    assert [h.wait(60) for h in handles] == [0, 0]
    draws = {(tmp_path / f"r{i}.out").read_text() for i in range(2)}
    assert len(draws) == 2, "two children drew the server's NumPy numbers"


def test_a_forked_job_holds_none_of_the_worker_s_descriptors(forking, tmp_path):
    """The worker's open database connection and the server's socket do not reach it."""
    platform = make_platform(tmp_path / "home")
    try:
        with platform.db.session() as session:  # an open SQLite connection in this process
            session.get(TrainingExperiment, uuid.uuid4())
            handle = forking.launch(job(tmp_path, "fds", stderr_path=tmp_path / "job.out"))
            assert isinstance(handle, ForkedJob) and handle.wait(60) == 0
    finally:
        platform.close()
    lines = (tmp_path / "job.out").read_text().splitlines()
    fds = {int(line.split()[0]): line.split(None, 1)[1] for line in lines}
    log = str(tmp_path / "job.out")
    assert fds[0] == "/dev/null" and fds[1] == fds[2] == log
    others = {fd: target for fd, target in fds.items() if fd > 2 and "/proc/" not in target}
    assert others == {}, f"descriptors leaked into the job: {others}"


def test_terminate_ends_the_job_s_whole_process_group(forking, tmp_path):
    handle = forking.launch(job(tmp_path, "tree"))
    assert isinstance(handle, ForkedJob)
    text = wait_for_text(tmp_path / "job.out", "pids")
    job_pid, child_pid = (int(p) for p in text.split()[1:3])
    assert handle.pid == job_pid
    code = handle.terminate(grace_seconds=0.5)  # the job ignores SIGTERM: SIGKILL after
    assert code == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while alive(child_pid) or alive(job_pid):
        assert time.monotonic() < deadline, "the job's child outlived terminate()"
        time.sleep(0.05)


def test_a_killed_fork_server_fails_its_jobs_cleanly_and_is_replaced(site, tmp_path):
    """SIGKILL the server: its running job is killed and reported as killed (with a line
    saying why), the next job runs as a plain subprocess while a new server starts, and
    jobs are forked again once it is up."""
    executor = local_executor(preload=[])
    try:
        assert executor.prepare(timeout=120)
        server_pid = executor._server.server_pid
        running = executor.launch(job(tmp_path, "sleep", name="running"))
        assert isinstance(running, ForkedJob)
        job_pid = int(wait_for_text(tmp_path / "running.out", "sleeping").split()[1])
        os.kill(server_pid, signal.SIGKILL)
        assert running.wait(30) == -signal.SIGKILL
        assert not alive(job_pid)
        assert "fork server that started this job died" in (tmp_path / "running.out").read_text()

        fallback = executor.launch(job(tmp_path, "random", name="fallback"))
        assert is_plain(fallback)  # the new server is still starting
        assert fallback.wait(60) == 0
        assert executor.prepare(timeout=120)
        assert executor._server.server_pid != server_pid
        again = executor.launch(job(tmp_path, "random", name="again"))
        assert isinstance(again, ForkedJob) and again.wait(60) == 0
    finally:
        executor.close()
    assert not alive(server_pid)


# --- runner jobs through a real worker ------------------------------------------------------


def add_job(platform, name, x):
    with platform.db.session() as session:
        row = TrainingExperiment(
            name=name, trainer="probe", hyperparameters={"x": x}, max_attempts=1, seed=3
        )
        session.add(row)
        session.flush()
        platform.queue.record_created(session, row)
        job_id = row.id
    platform.queue.enqueue(job_id)
    return job_id


@pytest.mark.parametrize("prefork", [True, False], ids=["prefork", "subprocess"])
def test_a_worker_runs_runner_jobs_the_same_with_prefork_on_and_off(site, tmp_path, prefork):
    platform = make_platform(tmp_path / "home", executor={"local": {"prefork": prefork}})
    try:
        if prefork:
            assert platform.executor.prepare(timeout=120)
        ids = [add_job(platform, f"probe-{i}", i + 1) for i in range(3)]
        worker = Worker(platform, concurrency=2, capacity=Capacity(cpus=(0, 0)), lease_seconds=10)
        stop = threading.Event()
        timer = threading.Timer(120, stop.set)
        timer.start()
        try:
            assert worker.run(stop=stop, max_jobs=3, exit_when_idle=True) == 3
        finally:
            timer.cancel()
        expected_parent = platform.executor._server.server_pid if prefork else os.getpid()
        from mlrig.experiments.logs import LogStore

        logs = LogStore(platform.artifacts)
        for i, job_id in enumerate(ids):
            with platform.db.session() as session:
                row = session.get(TrainingExperiment, job_id)
                points = session.query(TrainingMetric).filter_by(experiment_id=job_id).all()
            assert row.status == "completed", row.status_detail
            assert row.configuration["result"]["metrics"] == {"value": float(i + 1)}
            assert row.last_checkpoint is not None
            assert [(p.metric_name, p.metric_value) for p in points] == [("value", i + 1.0)]
            log, _ = logs.read(str(job_id))
            assert b"attempt 1 with trainer 'probe'" in log and b"[mlrig] completed" in log
            assert f"parent {expected_parent}".encode() in log
    finally:
        platform.close()


def test_the_worker_claims_the_next_job_when_one_ends_not_at_its_next_poll(site, tmp_path):
    """With a 60 s poll interval, two jobs in a row on one slot still both run within the
    45 s the worker is given: its wait ends when a running job's process has ended."""
    platform = make_platform(tmp_path / "home", executor={"local": {"prefork": False}})
    try:
        ids = [add_job(platform, f"quick-{i}", i + 1) for i in range(2)]
        worker = Worker(
            platform,
            concurrency=1,
            capacity=Capacity(cpus=(0,)),
            lease_seconds=180,
            heartbeat_seconds=60,
            poll_seconds=60,
        )
        stop = threading.Event()
        timer = threading.Timer(45, stop.set)
        timer.start()
        try:
            done = worker.run(stop=stop, max_jobs=2)
        finally:
            timer.cancel()
        assert done == 2
        with platform.db.session() as session:
            statuses = [session.get(TrainingExperiment, i).status for i in ids]
        assert statuses == ["completed", "completed"]
    finally:
        platform.close()


def test_the_server_s_database_warm_up_connects_to_nothing(monkeypatch, tmp_path):
    import sqlite3
    import tempfile

    from mlrig.engine import launcher

    def refuse(*args, **kwargs):
        raise AssertionError("the fork server opened a database connection")

    monkeypatch.setattr(sqlite3, "connect", refuse)
    psycopg = pytest.importorskip("psycopg")
    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(refuse))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setitem(sys.modules, "psycopg", psycopg)  # the PostgreSQL engine too
    launcher._warm_database()  # raises (not suppressed here) when anything fails
    assert list(tmp_path.iterdir()) == []  # its never-opened SQLite folder is removed
