"""The ``local`` executor: each job is a subprocess in its own session (process group).

Resource limits are applied in the child before it runs the job: an address-space
rlimit for memory, CPU affinity to the CPUs the allocator handed out, and
``CUDA_VISIBLE_DEVICES`` for the GPUs. Stopping a job signals the whole process group,
so processes the job started die with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack

from pydantic import BaseModel, ConfigDict

from mlrig.contracts.executor import Executor, JobHandle, JobSpec, Resources


class LocalExecutorOptions(BaseModel):
    """``[executor.local]`` options."""

    model_config = ConfigDict(extra="forbid")
    #: inherit the worker's environment (plus the job's own variables)
    inherit_env: bool = True
    #: kill a job when the process that launched it dies (Linux)
    die_with_parent: bool = True


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
    """Run jobs as subprocesses of this machine, with rlimits, CPU affinity and GPU masks."""

    Options = LocalExecutorOptions

    def launch(self, spec: JobSpec) -> LocalJobHandle:
        env = dict(os.environ) if self.options.inherit_env else {}
        env.update(spec.env)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec.resources.gpus)
        spec.workdir.mkdir(parents=True, exist_ok=True)
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
