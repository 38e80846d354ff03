"""A pre-warmed launcher for job processes: a fork server (``[executor.local] prefork``).

Starting ``python -m mlrig.engine.runner`` costs about a second before the trainer runs:
the interpreter, then the imports of mlrig, SQLAlchemy, pydantic and the trainer's own
modules (scikit-learn and pandas, over a second more). A fork server pays that once per
worker: a single-threaded Python process, started with the worker's interpreter and
environment, that imports those modules and then forks one child per job.

The child is the job process, as the plain one would be: its own session and process group
(``setsid``, so signalling the group ends the job and whatever it started), the job's
working directory, environment (the whole of it, not merged over the server's), CPU
affinity and stdout/stderr files, default signal handlers, a parent-death signal (the
server's: the server has one on the worker, so a job still dies with its worker), fresh
NumPy seeds; then it runs the entry module as ``python -m MODULE ARGS`` would and exits
with its status. The server reports each child's exit status to the worker over a socket.

After forking the first job of a worker's settings (``MLRIG_SETTINGS_JSON``), the server
builds that platform once (:func:`mlrig.engine.runner.prepare_platform`: settings parsed,
plugins, the engine, the schema check, the job's statements compiled) and closes its
connections again, so later children start with it; a child whose settings differ, or
that finds the installed plugins changed, builds its own as a plain job would.

What it never does: hold a database connection while it forks (so no connection is shared
across a fork; the server is a fresh interpreter, so none of the worker's descriptors
reach it either), or import torch or tensorflow unless they are listed in ``preload``: a
process that initialised CUDA cannot fork safely (see docs/configuration.md). Modules read their
environment variables when imported; the server imports with the worker's environment,
and it is restarted when a job's interpreter-level variables (``PYTHON*``, ``LD_*``,
``OMP_*``, thread-count variables of the numeric libraries) differ from its own. Children
share the server's string hash seed (fixed when an interpreter starts).

If the server dies, its running jobs are killed (their process groups; with the parent-death
signal they die anyway) and reported as killed by SIGKILL, with a line in their output
saying why; the worker records a failed attempt and retries them as after any kill.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlrig.contracts.executor import JobHandle

log = logging.getLogger("mlrig.engine")

#: imported by every fork server: what ``mlrig.engine.runner`` needs before the trainer
CORE_PRELOAD = (
    "numpy",  # the runner seeds NumPy's generator when an experiment has a seed
    "mlrig.engine.runner",
    "mlrig.engine.context",
    "mlrig.engine.queue",
    "mlrig.platform",
    "mlrig.db",
    "mlrig.db.models",
    "mlrig.db.migrate",
    "mlrig.db.migrations",
    "mlrig.experiments",
    "mlrig.experiments.metrics",
    "mlrig.artifacts",
    "mlrig.tracking.reproducibility",
    "mlrig.plugins.storage_local",
    "mlrig.plugins.trainer_sklearn",
    "sqlalchemy.orm",
    # create_engine imports the dialect and its driver on first use
    "sqlalchemy.dialects.sqlite",
    "sqlite3",
    "sqlalchemy.dialects.postgresql.psycopg",
    "psycopg",
    "stevedore.driver",
)
#: environment variables an interpreter or a native library reads when it starts or loads:
#: a job whose values differ from the server's needs a server started with its own
STARTUP_PREFIXES = (
    "PYTHON",
    "LD_",
    "OMP_",
    "OPENBLAS_",
    "MKL_",
    "VECLIB_",
    "NUMEXPR_",
    "MALLOC_",
    "GOTO_",
)
#: never preloaded implicitly: a process that initialised CUDA cannot fork safely
GPU_MODULES = ("torch", "tensorflow", "jax")
PR_SET_PDEATHSIG = 1
#: the last jobs whose CPU time and page faults :attr:`ForkServer.usage` keeps
USAGE_KEPT = 1000
#: the server's ``sys.path[0]`` (its working directory, as ``python -m`` set it)
_SERVER_PATH: list[str | None] = [None]
#: what the server's scan of the entry points was for (``installed_state()``)
_INSTALLED: list[Any] = [None]
#: the server's threadpoolctl controller (BLAS/OpenMP pools), when scikit-learn is loaded
_POOLS: list[Any] = [None]
#: entry module -> (spec, code) as the server first read it, for the children to run
#: (with ``PYTHONDONTWRITEBYTECODE`` every ``runpy`` run would compile the source again)
_ENTRY_CODE: dict[str, tuple[Any, Any]] = {}
#: settings JSON -> when building its platform last failed (monotonic), retried later
_PREPARE_FAILED: dict[str, float] = {}
#: seconds before a platform that could not be built is tried again
PREPARE_RETRY_SECONDS = 60.0
#: the variable a worker hands its settings down in (``mlrig.config.INHERITED_ENV``)
_SETTINGS_ENV = "MLRIG_SETTINGS_JSON"


class LauncherError(Exception):
    """The fork server could not start a job (it died, refused, or did not answer)."""


#: start-up variables a child applies itself (its streams are rebuilt per job)
PER_JOB = ("PYTHONUNBUFFERED",)


def startup_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of ``env`` that must match the server's for a job to be forked from it."""
    return {k: v for k, v in env.items() if k.startswith(STARTUP_PREFIXES) and k not in PER_JOB}


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the (thread that started its) parent dies."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _gone(pid: int) -> bool:
    """The process has ended: no such process, or a zombie (PID 1 in a container may not
    reap the orphans of a dead server)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return not os.path.exists(f"/proc/{pid}")


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# --- the worker's side ---------------------------------------------------------------------


class ForkedJob(JobHandle):
    """A job forked by a :class:`ForkServer`: the same semantics as a plain subprocess."""

    #: :meth:`wait` returns as soon as the server reports the exit (a condition, no polling)
    wakes_on_exit = True

    def __init__(self, server: ForkServer, pid: int) -> None:
        self._server = server
        self._pid = pid
        self._code: int | None = None

    @property
    def pid(self) -> int | None:
        return self._pid

    def poll(self) -> int | None:
        return self._seen(self._server.exit_code(self._pid))

    def wait(self, timeout: float | None = None) -> int | None:
        return self._seen(self._server.wait_exit(self._pid, timeout))

    def _seen(self, code: int | None) -> int | None:
        if code is not None and self._code is None:
            self._code = code
            self._server.forget(self._pid)  # this handle remembers it now
        return self._code

    def terminate(self, grace_seconds: float = 5.0) -> int | None:
        _killpg(self._pid, signal.SIGTERM)
        self.wait(grace_seconds)
        # children of the job may outlive its main process: kill the group either way
        _killpg(self._pid, signal.SIGKILL)
        code = self.wait(60.0)
        return -signal.SIGKILL if code is None else code


class ForkServer:
    """One fork server process and the thread that reads its reports.

    :param preload: modules to import before forking, besides :data:`CORE_PRELOAD`
        (missing ones are skipped and listed in :attr:`missing`).
    :param env: the server's environment (the jobs' startup variables come from it).
    :param die_with_parent: the server (and so its jobs) dies with the thread that
        started it, like a plain job does.
    """

    def __init__(
        self,
        *,
        preload: Sequence[str] = (),
        env: Mapping[str, str],
        die_with_parent: bool = True,
    ) -> None:
        self.preload = tuple(preload)
        self.env = dict(env)
        self.key = startup_env(env)
        self.die_with_parent = die_with_parent
        self._home: str | None = None
        self._started = time.monotonic()
        self.missing: dict[str, str] = {}
        #: pid -> {"cpu_s", "page_faults"} of the jobs that ended (their rusage)
        self.usage: dict[int, dict[str, float]] = {}
        self.server_pid: int | None = None
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._ready = False
        self._dead = False
        self._closing = False
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._exits: dict[int, int] = {}
        self._running: dict[int, str | None] = {}  # pid -> its stdout file (for a note)
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- state --

    @property
    def ready(self) -> bool:
        return self._ready and not self._dead

    @property
    def dead(self) -> bool:
        return self._dead

    @property
    def died_unexpectedly(self) -> bool:
        return self._dead and not self._closing

    def started_for(self) -> float:
        """Seconds since :meth:`start`."""
        return time.monotonic() - self._started

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)

    # -- life --

    def start(self) -> None:
        """Start the server process; returns at once (see :meth:`wait_ready`)."""
        import tempfile

        # an empty working directory: ``python -m`` puts it first on sys.path, where it
        # adds nothing (the worker's may hold modules or an editable install's metadata)
        self._home = tempfile.mkdtemp(prefix="mlrig-fork-server-")
        self._started = time.monotonic()
        ours, theirs = socket.socketpair()
        command = [
            sys.executable,
            "-m",
            "mlrig.engine.launcher",
            str(theirs.fileno()),
            str(os.getpid()),
            "1" if self.die_with_parent else "0",
            ",".join(self.preload),
        ]
        try:
            self._proc = subprocess.Popen(
                command,
                env=self.env,
                cwd=self._home,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                # a terminal's Ctrl-C reaches the worker, which stops its jobs with
                # SIGTERM (they checkpoint); it must not kill the server and them first
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            self._dead = True
            self._remove_home()
            raise
        finally:
            theirs.close()
        self._sock = ours
        threading.Thread(target=self._read_reports, name="mlrig-fork-server", daemon=True).start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the server has imported its modules; ``False`` if it died or the
        timeout passed first."""
        with self._cond:
            self._cond.wait_for(lambda: self._ready or self._dead, timeout)
            return self.ready

    def close(self) -> None:
        """Stop the server (its jobs die with it when they have the parent-death signal)."""
        self._closing = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    def kill(self) -> None:
        """End a server that misbehaves; its jobs are then reported as killed."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    # -- jobs --

    def spawn(
        self,
        *,
        module: str,
        args: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        stdout: Path | None,
        stderr: Path | None,
        cpus: Sequence[int] = (),
        timeout: float = 10.0,
    ) -> ForkedJob:
        """Fork a job; returns once the server has forked it (its pid is known)."""
        with self._cond:
            if not self.ready:
                msg = "the fork server is not running"
                raise LauncherError(msg)
            self._next_id += 1
            request_id = self._next_id
        request = {
            "id": request_id,
            "module": module,
            "args": list(args),
            "cwd": str(cwd),
            "env": dict(env),
            "stdout": str(stdout) if stdout else None,
            "stderr": str(stderr) if stderr else None,
            "cpus": list(cpus),
            "die_with_parent": self.die_with_parent,
        }
        line = json.dumps(request).encode() + b"\n"
        try:
            with self._send_lock:
                assert self._sock is not None
                self._sock.sendall(line)
        except OSError as exc:
            msg = f"the fork server is gone: {exc}"
            raise LauncherError(msg) from None
        with self._cond:
            self._cond.wait_for(lambda: request_id in self._replies or self._dead, timeout)
            reply = self._replies.pop(request_id, None)
            if reply is None:
                msg = "the fork server died" if self._dead else "the fork server did not answer"
                raise LauncherError(msg)
            if "error" in reply:
                raise LauncherError(reply["error"])
            pid = int(reply["pid"])
            if self._dead and pid not in self._exits:
                # the server died after forking it, before this job was registered
                _killpg(pid, signal.SIGKILL)
                self._exits[pid] = -signal.SIGKILL
            elif pid not in self._exits:
                self._running[pid] = request["stdout"]
            return ForkedJob(self, pid)

    def forget(self, pid: int) -> None:
        """Drop an exit status its handle has taken (a worker runs jobs for weeks)."""
        with self._cond:
            self._exits.pop(pid, None)

    def exit_code(self, pid: int) -> int | None:
        with self._cond:
            return self._exits.get(pid)

    def wait_exit(self, pid: int, timeout: float | None) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits, timeout)
            return self._exits.get(pid)

    # -- the reader thread --

    def _read_reports(self) -> None:
        assert self._sock is not None
        buffer = b""
        try:
            while True:
                try:
                    data = self._sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._on_report(json.loads(line))
        finally:
            self._on_server_gone()

    def _on_report(self, report: dict[str, Any]) -> None:
        with self._cond:
            if "exit" in report:
                pid = int(report["exit"])
                self._exits[pid] = int(report["code"])
                self._running.pop(pid, None)
                self.usage[pid] = {k: report[k] for k in ("cpu_s", "page_faults") if k in report}
                if len(self.usage) > USAGE_KEPT:
                    self.usage.pop(next(iter(self.usage)))
            elif "ready" in report:
                self._remove_home()
                self.server_pid = int(report["ready"])
                self.missing = dict(report.get("missing") or {})
                if report.get("gpu_modules"):
                    log.warning(
                        "fork server %s imported %s without being asked to (preload): a job "
                        "that uses CUDA may fail in a forked process; set [executor.local] "
                        "prefork = false if it does",
                        self.server_pid,
                        ", ".join(report["gpu_modules"]),
                    )
                self._ready = True
            else:
                self._replies[int(report["id"])] = report
            self._cond.notify_all()

    def _remove_home(self) -> None:
        if self._home is not None:
            import shutil

            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

    def _on_server_gone(self) -> None:
        """The server exited: kill what it still ran and report those jobs as killed."""
        with self._cond:
            self._dead = True
            orphans = dict(self._running)
            self._cond.notify_all()
        for pid in orphans:
            _killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(not _gone(pid) for pid in orphans) and time.monotonic() < deadline:
            time.sleep(0.01)
        for stdout in orphans.values():
            if stdout:
                with contextlib.suppress(OSError), open(stdout, "a") as fh:
                    fh.write("[mlrig] the fork server that started this job died; job killed\n")
        with self._cond:
            for pid in orphans:
                self._exits.setdefault(pid, -signal.SIGKILL)
                self._running.pop(pid, None)
            self._cond.notify_all()
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
        if self._sock is not None:
            self._sock.close()
        self._remove_home()


# --- the server's side ---------------------------------------------------------------------


def _preload(names: Sequence[str]) -> dict[str, str]:
    """Import the modules (core first); return ``{name: error}`` of those that failed."""
    import importlib

    missing: dict[str, str] = {}
    for name in (*CORE_PRELOAD, *names):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional package: skip it, say so
            missing[name] = f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(Exception):  # the ORM's one-time set-up, no connection
        from sqlalchemy.orm import configure_mappers

        configure_mappers()
    with contextlib.suppress(Exception):  # package metadata lookups (cached by mtime)
        from mlrig.engine.runner import _package_versions

        _package_versions()
    with contextlib.suppress(Exception):
        _scan_entry_points()
    with contextlib.suppress(Exception):
        _warm_database()
    with contextlib.suppress(Exception):  # cached by the module: the same machine for all
        import platform

        platform.platform()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # its first call sets up the legacy generator (~80 ms)
    if numpy is not None:
        with contextlib.suppress(Exception):  # finds the BLAS/OpenMP libraries once
            from threadpoolctl import ThreadpoolController

            _POOLS[0] = ThreadpoolController()
    return missing


def _warm_database() -> None:
    """What a job's first engine and first statements set up once per process, done here
    without connecting: an engine of each preloaded dialect (the dialect's and the pool's
    set-up) and the job's primary-key reads compiled against it (the ORM's and the
    compiler's per-class set-up; the compiled statements themselves are cached per engine,
    so each job still compiles its own). The engines are disposed of unused."""
    import shutil
    import tempfile
    import uuid

    from sqlalchemy import select

    from mlrig.db import Database
    from mlrig.db.models import TrainingExperiment, User

    folder = tempfile.mkdtemp(prefix="mlrig-fork-server-warm-")
    urls = [f"sqlite:///{folder}/never-opened.db"]
    if "psycopg" in sys.modules:
        urls.append("postgresql+psycopg://mlrig@localhost/never-opened")
    try:
        for url in urls:
            db = Database(url)
            for model in (TrainingExperiment, User):
                select(model).where(model.id == uuid.uuid4()).compile(dialect=db.engine.dialect)
            db.engine.dispose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _scan_entry_points() -> None:
    """Read the installed entry points once, for every child: mlrig's backends and hook
    plugins (metadata only, nothing imported) and stevedore's per-namespace lists, which
    it keeps for the life of a process. A child checks that the installed distributions
    are still those (:func:`_check_entry_points`)."""
    from stevedore import _cache
    from stevedore.extension import ExtensionManager

    from mlrig import backends

    backends.available_backends()
    backends.entry_points(backends.HOOKS_GROUP)
    for namespace in backends.KINDS.values():
        eps = list(_cache.get_group_all(namespace))
        ExtensionManager.ENTRY_POINT_CACHE.setdefault(namespace, eps)
    _INSTALLED[0] = backends.installed_state()


def _check_entry_points() -> None:
    """A distribution was installed or removed since the server scanned: scan anew (and
    build the platform anew: its plugin manager came from the old scan)."""
    if _INSTALLED[0] is None:
        return
    from mlrig import backends

    if backends.installed_state() != _INSTALLED[0]:
        backends.forget_loaded_backends()
        runner = sys.modules.get("mlrig.engine.runner")
        if runner is not None:
            runner.forget_prepared_platform()


def _prepare(request: dict[str, Any]) -> None:
    """After forking a runner job: have its platform ready for the next ones (see
    :func:`mlrig.engine.runner.prepare_platform`). A failure (the database away) is
    said once on the server's stderr and tried again after ``PREPARE_RETRY_SECONDS``;
    meanwhile jobs build their own platform, as plain ones do."""
    import gc

    with contextlib.suppress(Exception):
        _read_entry_code(request["module"])
    text = (request.get("env") or {}).get(_SETTINGS_ENV)
    if request.get("module") != "mlrig.engine.runner" or not text:
        return
    failed = _PREPARE_FAILED.get(text)
    if failed is not None and time.monotonic() - failed < PREPARE_RETRY_SECONDS:
        return
    from mlrig.engine import runner

    try:
        runner.prepare_platform(text)
    except Exception as exc:
        if failed is None:
            print(f"[mlrig] fork server: jobs build their own platform: {exc}", file=sys.stderr)
        _PREPARE_FAILED[text] = time.monotonic()
        return
    _PREPARE_FAILED.pop(text, None)
    gc.freeze()  # the platform's objects too: fewer pages copied per child


def _read_entry_code(module: str) -> None:
    """Server: compile an entry module (not a package) once, like a preloaded module."""
    if module in _ENTRY_CODE:
        return
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.loader is None or spec.submodule_search_locations is not None:
        return
    code = spec.loader.get_code(module)  # type: ignore[attr-defined]
    if code is not None:
        _ENTRY_CODE[module] = (spec, code)


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def serve(sock: socket.socket, parent: int, with_parent: bool, preload: Sequence[str]) -> None:
    """The server loop: fork a child per request, report each child's exit status."""
    import gc
    import selectors

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when jobs stop
    if with_parent:
        die_with_parent()
        if os.getppid() != parent:  # the worker died before the signal was set
            return
    _SERVER_PATH[0] = sys.path[0] if sys.path else None
    missing = _preload(preload)
    gc.freeze()  # imported objects out of the collector's way: fewer pages copied per child
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    # a GPU framework pulled in by another module: CUDA must not be initialised before fork
    gpu = [m for m in GPU_MODULES if m in sys.modules and m not in preload]
    _send(sock, {"ready": os.getpid(), "missing": missing, "gpu_modules": gpu})
    inherited = (sock, wake_r, wake_w)
    buffer = b""
    while True:
        for key, _ in selector.select():
            if key.fileobj == wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                _reap(sock)
                continue
            data = sock.recv(65536)
            if not data:  # the worker closed us or is gone
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                _send(sock, _fork(request, selector, inherited))
                _prepare(request)  # for the next job, while this one starts
        _reap(sock)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        report = {
            "exit": pid,
            "code": os.waitstatus_to_exitcode(status),
            # what the job cost, for benchmarks and debugging
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 6),
            "page_faults": usage.ru_minflt,
        }
        _send(sock, report)


def _fork(request: dict[str, Any], selector: Any, inherited: tuple[Any, ...]) -> dict[str, Any]:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    server = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:
        return {"id": request["id"], "error": f"fork failed: {exc}"}
    if pid == 0:  # the job process: never returns
        code = 1
        try:
            selector.close()
            code = _child(request, server, inherited)
        except BaseException:  # set-up failed: say why in the job's output
            with contextlib.suppress(Exception):
                import traceback

                traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    return {"id": request["id"], "pid": pid}


def _child(request: dict[str, Any], server: int, inherited: tuple[Any, ...]) -> int:
    """Become the job's process, run the entry module, return its exit status."""
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():  # the handlers of a fresh interpreter
        with contextlib.suppress(OSError, ValueError):
            if sig == signal.SIGINT:
                signal.signal(sig, signal.default_int_handler)
            elif callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
    for held in inherited:  # the server's socket and wake-up pipe
        with contextlib.suppress(OSError):
            held.close() if isinstance(held, socket.socket) else os.close(held)
    os.setsid()
    if request["die_with_parent"]:
        die_with_parent()
        if os.getppid() != server:  # the server died before the signal was set
            return 1
    cpus = request.get("cpus") or []
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    _redirect(request.get("stdout"), request.get("stderr"))
    if sys.path and sys.path[0] == _SERVER_PATH[0]:
        sys.path[0] = request["cwd"]  # ``python -m`` puts the working directory first
    _check_entry_points()
    _fresh_numeric_state(len(set(cpus)))
    return _run_module(request["module"], request["args"])


def _redirect(stdout: str | None, stderr: str | None) -> None:
    """stdin from /dev/null, stdout/stderr to the job's files (appending), and new Python
    streams over them, buffered as ``python`` would buffer them (``PYTHONUNBUFFERED``)."""
    import io

    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    opened: dict[str, int] = {}
    for target, path in ((1, stdout), (2, stderr)):
        if not path:
            continue
        if path not in opened:
            opened[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(opened[path], target)
    for fd in opened.values():
        os.close(fd)
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    streams = []
    for fd, old in ((1, sys.__stdout__), (2, sys.__stderr__)):
        raw: Any = io.FileIO(fd, "w", closefd=False)
        binary = raw if unbuffered else io.BufferedWriter(raw)
        streams.append(
            io.TextIOWrapper(
                binary,
                encoding=getattr(old, "encoding", None) or "utf-8",
                errors="backslashreplace" if fd == 2 else getattr(old, "errors", None),
                line_buffering=fd == 2 or os.isatty(fd),
                write_through=unbuffered,
            )
        )
    sys.stdout = sys.__stdout__ = streams[0]
    sys.stderr = sys.__stderr__ = streams[1]
    sys.stdin = sys.__stdin__ = open(0, closefd=False)


def _fresh_numeric_state(cpus: int) -> None:
    """What a fresh interpreter would have: NumPy's global generator seeded anew (every
    child would otherwise draw the server's numbers; ``random`` reseeds itself at fork),
    BLAS/OpenMP pools sized to the CPUs the job was given (they were sized in the server)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    if cpus and _POOLS[0] is not None:
        with contextlib.suppress(Exception):
            _POOLS[0].limit(limits=cpus)


def _run_module(module: str, args: Sequence[str]) -> int:
    """``python -m MODULE ARGS`` in this process: the exit status it would have."""
    import atexit
    import runpy
    import traceback

    sys.argv = [module, *args]
    code = 0
    try:
        if module in _ENTRY_CODE:
            _run_code(*_ENTRY_CODE[module])
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_status(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]  # join non-daemon threads
    atexit._run_exitfuncs()
    return code


def _run_code(spec: Any, code: Any) -> None:
    """What ``runpy.run_module(..., run_name="__main__", alter_sys=True)`` does, with the
    code the server compiled: a fresh ``__main__`` module, ``sys.argv[0]`` its file."""
    import builtins
    import types

    main = types.ModuleType("__main__")
    main.__dict__.update(
        __file__=spec.origin,
        __cached__=spec.cached,
        __loader__=spec.loader,
        __package__=spec.parent,
        __spec__=spec,
        __builtins__=builtins,
    )
    sys.modules["__main__"] = main
    sys.argv[0] = spec.origin
    exec(code, main.__dict__)


def _exit_status(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> None:
    """``python -m mlrig.engine.launcher FD PARENT_PID DIE_WITH_PARENT PRELOAD``."""
    args = sys.argv[1:] if argv is None else argv
    fd, parent, with_parent, preload = args
    sock = socket.socket(fileno=int(fd))
    try:
        serve(sock, int(parent), with_parent == "1", [p for p in preload.split(",") if p])
    except (BrokenPipeError, ConnectionResetError):  # the worker went away
        pass


if __name__ == "__main__":
    main()
