"""The ``local`` executor: each job is a process in its own session (process group).

Resource limits are applied in the child before it runs the job: an address-space
rlimit for memory, CPU affinity to the CPUs the allocator handed out, and
``CUDA_VISIBLE_DEVICES`` for the GPUs. Stopping a job signals the whole process group,
so processes the job started die with it.

A job that is a Python module of this interpreter (``JobSpec.python_entry``: the engine's
runner) is forked from a pre-warmed fork server (``prefork = true``, the default where
``os.fork`` exists; :mod:`mlrig.engine.launcher`), so it skips the interpreter start and
the imports. The job is a plain subprocess until the server is ready (it starts in the
background on the second such job: a worker that runs one job never pays for it), after
the server died three times in a row, when it has a memory limit (an address-space limit
would count the server's preloaded modules), and for any other command.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from mlrig.contracts.executor import Executor, JobHandle, JobSpec, Resources

if TYPE_CHECKING:
    from mlrig.engine.launcher import ForkServer

log = logging.getLogger("mlrig.engine")
#: what the bundled sklearn trainer imports in every job: the data, the estimators, and
#: the ONNX export and check of the model it registers (skl2onnx alone takes about 1 s)
SKLEARN_PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow",
    "sklearn",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.model_selection",
    "sklearn.metrics",
    "joblib",
    "skl2onnx",
    "onnxruntime",
)
#: a fork server that died this many times in a row is not started again
MAX_SERVER_FAILURES = 3
#: a fork server that has not imported its modules after this long is killed (seconds)
START_TIMEOUT = 300.0


class LocalExecutorOptions(BaseModel):
    """``[executor.local]`` options."""

    model_config = ConfigDict(extra="forbid")
    #: inherit the worker's environment (plus the job's own variables)
    inherit_env: bool = True
    #: kill a job when the process that launched it dies (Linux)
    die_with_parent: bool = True
    #: fork runner jobs from a pre-warmed server instead of starting an interpreter each
    prefork: bool = hasattr(os, "fork") and sys.platform != "darwin"
    #: modules the fork server imports besides mlrig's own (missing ones are skipped);
    #: never list torch/tensorflow unless the server may import them (no CUDA before fork)
    preload: list[str] = Field(default_factory=lambda: list(SKLEARN_PRELOAD))


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGKILL the job when the worker that started it dies (even by SIGKILL).

    Without it a killed worker leaves its job running while the job is requeued and run
    again elsewhere: two attempts at once.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _limit_resources(resources: Resources, die_with_parent: bool) -> None:
    """Runs in the child between fork and exec: apply memory and CPU limits."""
    if die_with_parent:
        _die_with_parent()
    if resources.memory_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (resources.memory_bytes, resources.memory_bytes))
    if resources.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(resources.cpus))


class LocalJobHandle(JobHandle):
    """A job running as a local process group."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def poll(self) -> int | None:
        return self._process.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self._process.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self, grace_seconds: float = 5.0) -> int | None:
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            time.sleep(0.02)
        # Children of the job may outlive its main process: kill the group either way.
        self._signal_group(signal.SIGKILL)
        return self._process.wait()


class LocalExecutor(Executor):
    """Run jobs as processes of this machine, with rlimits, CPU affinity and GPU masks."""

    Options = LocalExecutorOptions
    #: its jobs run on this machine, in the folder the worker gave them: they can leave
    #: their outcome there for the worker to record (:data:`mlrig.engine.runner.OUTCOME_ENV`)
    shares_workdir = True

    def __init__(self, options: BaseModel) -> None:
        super().__init__(options)
        self._lock = threading.Lock()
        self._server: ForkServer | None = None
        self._server_failures = 0
        self._runner_jobs = 0

    def launch(self, spec: JobSpec) -> JobHandle:
        env = dict(os.environ) if self.options.inherit_env else {}
        env.update(spec.env)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec.resources.gpus)
        spec.workdir.mkdir(parents=True, exist_ok=True)
        forked = self._fork(spec, env)
        if forked is not None:
            return forked
        with ExitStack() as files:
            stdout = files.enter_context(spec.stdout_path.open("ab")) if spec.stdout_path else None
            stderr = files.enter_context(spec.stderr_path.open("ab")) if spec.stderr_path else None
            process = subprocess.Popen(
                list(spec.argv),
                cwd=spec.workdir,
                env=env,
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=(lambda: _limit_resources(spec.resources, self.options.die_with_parent))
                if sys.platform != "win32"
                else None,
            )
        return LocalJobHandle(process)

    # --- the fork server ----------------------------------------------------------------

    def prepare(self, timeout: float | None = None) -> bool:
        """Start the fork server now (it otherwise starts on the first runner job) and
        wait up to ``timeout`` seconds for it; whether runner jobs are now forked."""
        if not self.options.prefork:
            return False
        env = dict(os.environ) if self.options.inherit_env else {}
        with self._lock:
            server = self._server_for(env)
        return server is not None and server.wait_ready(timeout)

    def _fork(self, spec: JobSpec, env: dict[str, str]) -> JobHandle | None:
        """The job forked from the server, or ``None``: run it as a plain subprocess."""
        from mlrig.engine.launcher import LauncherError

        entry = spec.python_entry
        if (
            not self.options.prefork
            or entry is None
            or spec.argv[:1] != (sys.executable,)
            or spec.resources.memory_bytes
        ):
            return None
        with self._lock:
            self._runner_jobs += 1
            if self._server is None and self._runner_jobs < 2:
                return None  # a worker that runs one job never pays for a server
            server = self._server_for(env)
            if server is None or not server.ready:
                return None
            try:
                handle = server.spawn(
                    module=entry[0],
                    args=entry[1],
                    cwd=spec.workdir,
                    env=env,
                    stdout=spec.stdout_path,
                    stderr=spec.stderr_path,
                    cpus=spec.resources.cpus,
                )
            except LauncherError as exc:
                log.warning("fork server: %s; running the job as a subprocess", exc)
                server.kill()
                return None
            self._server_failures = 0
            return handle

    def _server_for(self, env: dict[str, str]) -> ForkServer | None:
        """The fork server for jobs with this environment: started (in the background)
        when there is none, replaced when it died or (once idle) when the job's start-up
        variables differ from its own. Holds ``self._lock``."""
        from mlrig.engine.launcher import ForkServer, startup_env

        server = self._server
        if server is not None and not server.ready and server.started_for() > START_TIMEOUT:
            log.warning("fork server not ready after %.0f s; killing it", START_TIMEOUT)
            server.kill()  # its reader thread marks it dead: counted below, next time
        if server is not None and server.dead:
            if server.died_unexpectedly:
                self._server_failures += 1
                log.warning(
                    "fork server %s exited (%d in a row)", server.server_pid, self._server_failures
                )
            server = self._server = None
        if server is not None and server.key != startup_env(env):
            if server.running:
                return None  # its jobs need it; this one runs as a subprocess
            server.close()
            server = self._server = None
        if server is None:
            if self._server_failures >= MAX_SERVER_FAILURES:
                return None
            server_env = {**env, "CUDA_VISIBLE_DEVICES": ""}  # the server never sees a GPU
            server = ForkServer(
                preload=self.options.preload,
                env=server_env,
                die_with_parent=self.options.die_with_parent,
            )
            try:
                server.start()
            except OSError as exc:
                log.warning("fork server did not start: %s", exc)
                self._server_failures += 1
                return None
            self._server = server
        return server

    def close(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.close()

    def __del__(self) -> None:
        server: Any = self.__dict__.get("_server")
        if server is not None:
            try:
                server.close()
            except Exception:  # interpreter shutdown: the server sees EOF and exits anyway
                pass
