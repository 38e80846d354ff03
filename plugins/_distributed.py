"""Helpers shared by the distributed trainers (``torch-ddp``, ``tensorflow``).

Three jobs, no framework imported here:

- :func:`load_user_module`: the user's module from a file path (``path/to/train.py``) or an
  import string (``pkg.mod``), and :func:`require_function` for the functions it must have;
  both raise :class:`~mlrig.errors.ValidationError` (a failed experiment, not retried).
- the relay between the workers and the job process, over files in one directory of the
  job's workdir (:class:`RelayDir` names them): the lead worker appends metric lines
  (:meth:`WorkerRelay.log_metrics`), writes checkpoints atomically
  (:meth:`WorkerRelay.save_checkpoint`) and polls the stop file
  (:meth:`WorkerRelay.stop_requested`); any worker records a failure of the user's code
  (:meth:`WorkerRelay.record_error`). In the job process :class:`JobRelay` tails the metric
  lines into ``context.log_metrics``, hands new checkpoints to ``context.checkpoint``, writes
  the stop file when ``context.should_stop()`` and reads the errors back.
- :class:`ProcessGroup`: a launcher subprocess in its own session (``start_new_session``),
  whose whole process group is killed (SIGTERM, then SIGKILL after a grace period) on every
  exit path, so no orphan outlives the job; :func:`session_processes` lists what is left of
  a session (tests use it for the no-orphan check).

Files in a relay directory (all written atomically: a temporary file, then ``os.replace``;
metric lines are appended by one writer, one ``write`` per line):

    metrics.jsonl        {"metrics": {...}, "step": int|None, "epoch": int|None, "kind": str}
    checkpoint.bin       the latest checkpoint (framework bytes), with checkpoint.json beside
                         it: {"step": int, "epoch": int|None, "seq": int}
    stop                 present once the job asks the workers to stop
    error-RANK.json      {"rank", "message", "traceback", "permanent": bool}
    restarts.json        {"count": int} (the lead worker's view of the restarts so far)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from mlrig.errors import ValidationError

__all__ = [
    "JobRelay",
    "ProcessGroup",
    "RelayDir",
    "WorkerRelay",
    "atomic_write",
    "descendants",
    "die_with_parent",
    "find_user_module",
    "load_user_module",
    "require_function",
    "session_processes",
]


# --- the user's module ---------------------------------------------------------------------


def _is_path(text: str) -> bool:
    return text.endswith(".py") or os.sep in text or "/" in text


def find_user_module(
    spec: object, *, base: Path | None = None, importable: bool = True
) -> Path | None:
    """Check that the module ``spec`` names can be found, without running it: the file
    of a ``.py`` path (relative paths start at ``base``), ``None`` for an import string
    (whose top-level package must be installed, with ``importable``).

    :raises ValidationError: as :func:`load_user_module` does for a missing module.
    """
    if not isinstance(spec, str) or not spec.strip():
        msg = (
            "module must be a file path ('train.py') or an import string ('pkg.train'), "
            f"got {spec!r}"
        )
        raise ValidationError(msg)
    text = spec.strip()
    if _is_path(text):
        path = Path(text)
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        try:
            exists = path.is_file()
        except OSError as exc:  # a name too long for the file system, say
            msg = f"module file {text!r} cannot be read: {exc.strerror or exc}"
            raise ValidationError(msg) from None
        if not exists:
            msg = f"module file {text!r} does not exist (looked at {path})"
            raise ValidationError(msg)
        return path
    if not importable:
        return None
    top = text.partition(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        msg = f"importing module {text!r} failed: no module named {top!r} is installed"
        raise ValidationError(msg)
    return None


def load_user_module(spec: object, *, base: Path | None = None) -> ModuleType:
    """The module named by ``spec``: a ``.py`` file path (relative paths start at ``base``,
    default the current directory) or an import string like ``pkg.train``.

    A file is imported under a stable name (``mlrig_user_<stem>_<hash of the path>``),
    registered in ``sys.modules`` so that pickles of its classes load in this process.

    :raises ValidationError: ``spec`` is not a string, the file does not exist, or importing
        the module fails (its exception's message is in ours).
    """
    if not isinstance(spec, str) or not _is_path(spec.strip()):
        find_user_module(spec, base=base, importable=False)  # raises for a bad spec
    text = str(spec).strip()
    if _is_path(text):
        path = find_user_module(text, base=base)
        assert path is not None
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
        name = f"mlrig_user_{''.join(c if c.isalnum() else '_' for c in path.stem)}_{digest}"
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            msg = f"module file {text!r} cannot be imported"
            raise ValidationError(msg)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            msg = f"importing module {text!r} failed: {type(exc).__name__}: {exc}"
            raise ValidationError(msg) from None
        return module
    try:
        return importlib.import_module(text)
    except Exception as exc:
        msg = f"importing module {text!r} failed: {type(exc).__name__}: {exc}"
        raise ValidationError(msg) from None


def require_function(module: ModuleType, name: str, *, spec: str = "") -> Callable[..., Any]:
    """``module.name`` if it is callable.

    :raises ValidationError: naming the module and the missing function.
    """
    func = getattr(module, name, None)
    if not callable(func):
        where = spec or module.__name__
        msg = f"module {where!r} has no function {name}(params); define it there"
        raise ValidationError(msg)
    return func


# --- files ---------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class RelayDir:
    """The file names of one relay directory (see the module docstring)."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.bin"

    @property
    def checkpoint_meta(self) -> Path:
        return self.root / "checkpoint.json"

    @property
    def stop(self) -> Path:
        return self.root / "stop"

    @property
    def restarts(self) -> Path:
        return self.root / "restarts.json"

    def error(self, rank: int) -> Path:
        return self.root / f"error-{rank}.json"

    def errors(self) -> list[dict[str, Any]]:
        """The recorded errors, lowest rank first."""
        found = []
        for path in sorted(self.root.glob("error-*.json")):
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(path.read_text()))
        return sorted(found, key=lambda e: e.get("rank", 0))

    def checkpoint_info(self) -> dict[str, Any] | None:
        """checkpoint.json, or ``None`` when no checkpoint was written."""
        try:
            return json.loads(self.checkpoint_meta.read_text())
        except (OSError, ValueError):
            return None


class WorkerRelay:
    """The workers' side of the relay (metrics and checkpoints: the lead worker only)."""

    def __init__(self, root: Path | str, *, rank: int) -> None:
        self.dir = RelayDir(Path(root))
        self.dir.root.mkdir(parents=True, exist_ok=True)
        self.rank = rank

    def log_metrics(
        self,
        metrics: dict[str, float],
        *,
        step: int | None = None,
        epoch: int | None = None,
        kind: str = "train",
    ) -> None:
        line = json.dumps(
            {
                "metrics": {k: float(v) for k, v in metrics.items()},
                "step": step,
                "epoch": epoch,
                "kind": kind,
            }
        )
        fd = os.open(self.dir.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def save_checkpoint(self, data: bytes, *, step: int, epoch: int | None = None) -> None:
        """Replace the checkpoint (bytes first, then its description)."""
        previous = self.dir.checkpoint_info() or {}
        atomic_write(self.dir.checkpoint, data)
        meta = {"step": step, "epoch": epoch, "seq": int(previous.get("seq", 0)) + 1}
        atomic_write(self.dir.checkpoint_meta, json.dumps(meta))

    def load_checkpoint(self) -> tuple[bytes, dict[str, Any]] | None:
        """The latest checkpoint's bytes and description, or ``None``."""
        info = self.dir.checkpoint_info()
        if info is None or not self.dir.checkpoint.exists():
            return None
        return self.dir.checkpoint.read_bytes(), info

    def stop_requested(self) -> bool:
        return self.dir.stop.exists()

    def record_error(self, exc: BaseException, *, permanent: bool, tb: str = "") -> None:
        """Record a failure for the job process (``permanent``: the user's code or input,
        which no restart can fix; the job fails at once with the message)."""
        record = {
            "rank": self.rank,
            "message": " ".join(f"{type(exc).__name__}: {exc}".split())[:1000],
            "traceback": tb[-4000:],
            "permanent": permanent,
        }
        with contextlib.suppress(OSError):
            atomic_write(self.dir.error(self.rank), json.dumps(record))


class JobRelay:
    """The job process's side: tail metrics into the context, pass checkpoints on, relay
    ``should_stop()``. Call :meth:`poll` in the supervision loop and once after the
    launcher ended."""

    def __init__(self, root: Path | str) -> None:
        self.dir = RelayDir(Path(root))
        self.dir.root.mkdir(parents=True, exist_ok=True)
        self._offset = 0
        self._partial = b""
        self._seen_seq = 0
        self.points = 0
        self.last_step: int | None = None
        self._max_step: dict[tuple[str, str], int] = {}

    def seed_checkpoint(self, data: bytes, *, step: int, epoch: int | None = None) -> None:
        """Write a restored checkpoint (``context.restore()``) before the launch, so the
        workers resume from it; it is not handed back to the context."""
        atomic_write(self.dir.checkpoint, data)
        atomic_write(self.dir.checkpoint_meta, json.dumps({"step": step, "epoch": epoch, "seq": 1}))
        self._seen_seq = 1

    def read_metrics(self) -> list[dict[str, Any]]:
        """The complete metric lines written since the last call."""
        try:
            with open(self.dir.metrics, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def poll(
        self,
        context: Any,
        *,
        pack: Callable[[bytes, dict[str, Any]], dict[str, Any]] | None = None,
        force_checkpoint: bool = False,
    ) -> None:
        """Metrics into ``context.log_metrics``; a new checkpoint into ``context.checkpoint``
        (``{"step", "epoch", "blob": bytes}``, or what ``pack(blob, info)`` makes; the
        context saves it when its interval is due, on SIGTERM or with ``force_checkpoint``);
        the stop file when ``context.should_stop()``."""
        for point in self.read_metrics():
            metrics = self._new_points(point)
            if not metrics:
                continue
            context.log_metrics(
                metrics,
                step=point.get("step"),
                epoch=point.get("epoch"),
                kind=point.get("kind") or "train",
            )
            self.points += 1
            if point.get("step") is not None:
                self.last_step = point["step"]
        info = self.dir.checkpoint_info()
        if info is not None and (info.get("seq", 0) > self._seen_seq or force_checkpoint):
            try:
                blob = self.dir.checkpoint.read_bytes()
            except OSError:
                blob = None
            if blob is not None:
                state = (
                    pack(blob, info)
                    if pack
                    else {"step": info.get("step"), "epoch": info.get("epoch"), "blob": blob}
                )
                if context.checkpoint(state, force=force_checkpoint):
                    self._seen_seq = info.get("seq", 0)
        if context.should_stop():
            self.request_stop()

    def _new_points(self, point: dict[str, Any]) -> dict[str, float]:
        """The values of a metric line past the last step seen for (name, kind): after an
        elastic restart the lead rank logs again the steps since its checkpoint, and the
        history keeps the first value of each."""
        step, kind = point.get("step"), point.get("kind") or "train"
        if step is None:
            return dict(point["metrics"])
        fresh = {}
        for name, value in point["metrics"].items():
            key = (name, kind)
            if step > self._max_step.get(key, -1):
                self._max_step[key] = step
                fresh[name] = value
        return fresh

    def request_stop(self) -> None:
        if not self.dir.stop.exists():
            atomic_write(self.dir.stop, "stop\n")

    def errors(self) -> list[dict[str, Any]]:
        return self.dir.errors()

    def restarts(self) -> int:
        try:
            return int(json.loads(self.dir.restarts.read_text()).get("count", 0))
        except (OSError, ValueError):
            return 0


# --- process groups ------------------------------------------------------------------------


class ProcessGroup:
    """A launcher subprocess in its own session; :meth:`kill` ends its whole group.

    Use as a context manager: leaving the block (normally, by an exception, or by
    ``SystemExit``) kills what is left of the group. SIGTERM first, SIGKILL after
    ``grace`` seconds; afterwards every process of the session found under /proc gets
    SIGKILL too (a worker that moved to its own group). The launcher gets
    ``parent_death_signal`` (Linux) if this process dies without cleaning up (SIGKILL);
    its workers should call :func:`die_with_parent` so they follow it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | str | None = None,
        stdout: Any = None,
        stderr: Any = None,
        grace: float = 5.0,
        parent_death_signal: int | None = signal.SIGTERM,
    ) -> None:
        self.argv = list(argv)
        self.grace = grace
        self.parent_death_signal = parent_death_signal
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # the launcher ends its workers on SIGTERM: also when this process is killed
            preexec_fn=self._preexec if parent_death_signal else None,
        )
        self.pid = self.proc.pid  # also the group's and the session's id

    def _preexec(self) -> None:
        if self.parent_death_signal:
            die_with_parent(self.parent_death_signal)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.kill()

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def terminate(self) -> None:
        """SIGTERM to the group (the launcher passes it on to its workers)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """End the group: SIGTERM, up to ``grace`` seconds, then SIGKILL to the group and
        to any process left in the session. Returns once the launcher is reaped."""
        # the launcher may start its workers in sessions of their own (torch elastic does)
        family = descendants(self.pid)
        if self.proc.poll() is None:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(self.grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid in [*session_processes(self.pid), *family]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: have the kernel send ``sig`` to this process when the thread that started it
    ends (its parent died, even by SIGKILL). Elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG


def _stat_fields(entry: Path) -> list[str]:
    # pid (comm) state ppid pgrp session ...: comm may hold spaces and parentheses
    return (entry / "stat").read_text().rpartition(")")[2].split()


def descendants(pid: int) -> list[int]:
    """The live processes below ``pid`` (children, their children...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry)
        except OSError:
            continue
        if len(fields) > 1 and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def session_processes(sid: int) -> list[int]:
    """The live (not zombie) processes whose session id is ``sid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...: comm may hold spaces and parentheses
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry.name))
    return found


def wait_until(predicate: Callable[[], bool], *, timeout: float, every: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
