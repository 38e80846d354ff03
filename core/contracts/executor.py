"""Contract of job executors (entry-point group ``mlrig.executors``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from mlrig.contracts.base import Backend


@dataclass(frozen=True)
class Resources:
    """What a job may use: the exact CPUs and GPUs the allocator handed it, and memory."""

    cpus: tuple[int, ...] = ()
    gpus: tuple[int, ...] = ()
    memory_bytes: int | None = None


@dataclass(frozen=True)
class JobSpec:
    """One process to run: command, working directory, environment, resources, log files.

    ``python_entry`` is ``(module, args)`` when ``argv`` is ``(python, "-m", module,
    *args)``: an executor may then run the module in an interpreter it keeps warm (the
    local executor forks it from a pre-warmed server) with the same working directory,
    environment, resources, files and exit status; any executor may ignore it and run
    ``argv``.
    """

    argv: tuple[str, ...]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    stdout_path: Path | None = None
    stderr_path: Path | None = None
    python_entry: tuple[str, tuple[str, ...]] | None = None


class JobHandle(ABC):
    """A running job, as returned by :meth:`Executor.launch`."""

    @property
    @abstractmethod
    def pid(self) -> int | None:
        """The operating-system id of the job's main process, where there is one."""

    @abstractmethod
    def poll(self) -> int | None:
        """The exit code once the job has ended, else ``None``."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds; return the exit code, or ``None`` if still running."""

    @abstractmethod
    def terminate(self, grace_seconds: float = 5.0) -> int | None:
        """End the job and every process it started: SIGTERM, then SIGKILL after the grace."""


class Executor(Backend, ABC):
    """Run job processes with the resources they were allocated."""

    @abstractmethod
    def launch(self, spec: JobSpec) -> JobHandle:
        """Start ``spec`` and return at once with a handle on it."""

    def close(self) -> None:
        """Release what the executor keeps between jobs (a warm interpreter, a
        connection). Jobs already launched are not waited for. Idempotent."""
