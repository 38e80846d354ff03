"""The ``tensorflow`` trainer: a Keras model on ``tf.distribute``, as workers on loopback.

The job process (where the training context lives) starts ``workers`` worker processes
(:mod:`mlrig.plugins._tf_worker`) in a process group of their own, each with its
``TF_CONFIG`` (a cluster of 127.0.0.1 ports, its task index): ``MultiWorkerMirroredStrategy``
for two workers or more, ``MirroredStrategy`` for one. It relays the chief's epoch logs into
``log_metrics``, checkpoints the chief's ``BackupAndRestore`` folder through the context,
asks the workers to stop (a stop file they agree on) when ``should_stop()`` says so, and
relaunches the cluster when a worker dies (up to ``max_restarts``), which resumes at the
epoch after the last backup. At the end it registers the chief's model (``model.keras``,
SavedModel and ONNX through the registry's packaging, parity-checked).

Hyperparameters: ``module`` (file path or import string; required), ``workers``
(default ``min(2, the job's CPUs)``: 1 with the default ``cpus = 1``),
``epochs`` (10), ``batch_size`` (global, 32), ``validation_split`` (0.2, for arrays),
``max_restarts`` (3), ``startup_timeout_s`` (120), ``threads`` (TensorFlow threads per
worker, 1), ``dump_weights`` (false). Every hyperparameter reaches the user's functions.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mlrig.contracts.trainer import PermanentError, Trainer, TrainingContext, TrainResult
from mlrig.errors import MlrigError, ValidationError

#: the trainer's own hyperparameters with their defaults and checks
DEFAULTS: dict[str, Any] = {
    "workers": 2,  # at most: min(2, the job's CPUs) when not given (see check_params)
    "epochs": 10,
    "batch_size": 32,
    "validation_split": 0.2,
    "max_restarts": 3,
    "startup_timeout_s": 120,
    "threads": 1,
    "dump_weights": False,
}
#: the longest startup_timeout_s: a module that hangs while building holds its slot this long
MAX_STARTUP_TIMEOUT_S = 86_400
#: no run waits longer than this for its workers to import TensorFlow
IMPORT_TIMEOUT_S = 600
POLL_S = 0.1
#: how long the other workers may take to exit once one ended well and the model is saved
EXIT_GRACE_S = 60
EXIT_USER_ERROR = 3  # mlrig.plugins._tf_worker.EXIT_USER_ERROR (not imported: it is cheap)
MAX_WORKERS = 256


def _positive_int(params: dict[str, Any], name: str, *, minimum: int = 1) -> int:
    value = params.get(name, DEFAULTS[name])
    if type(value) is not int or value < minimum or value > 2**31 - 1:
        msg = f"{name} must be an integer of at least {minimum}, got {value!r}"
        raise ValidationError(msg)
    return value


def check_params(params: dict[str, Any], *, cpus: int | None = None) -> dict[str, Any]:
    """The trainer's options with defaults; :class:`ValidationError` for a bad one.

    ``workers`` not given: ``min(2, cpus)`` when the job's CPUs are known (at run time),
    so that a run with the default resources (1 CPU) works with one worker; at create time
    (``cpus`` unknown) the checks assume 2, the most it can be.
    """
    module = params.get("module")
    if not isinstance(module, str) or not module.strip():
        msg = (
            "the tensorflow trainer needs hyperparameter 'module': a file path (train.py) or "
            f"an import string (pkg.mod) with build_model(params) and build_dataset(params), "
            f"got {module!r}"
        )
        raise ValidationError(msg)
    options = {"module": module.strip()}
    for name in ("workers", "epochs", "batch_size", "threads", "startup_timeout_s"):
        options[name] = _positive_int(params, name)
    if "workers" not in params and cpus is not None:
        options["workers"] = max(1, min(DEFAULTS["workers"], cpus))
    options["max_restarts"] = _positive_int(params, "max_restarts", minimum=0)
    if options["startup_timeout_s"] > MAX_STARTUP_TIMEOUT_S:
        msg = (
            f"startup_timeout_s must be at most {MAX_STARTUP_TIMEOUT_S} (a day), "
            f"got {options['startup_timeout_s']}"
        )
        raise ValidationError(msg)
    if options["workers"] > MAX_WORKERS:
        msg = f"workers must be at most {MAX_WORKERS}, got {options['workers']}"
        raise ValidationError(msg)
    if options["batch_size"] % options["workers"]:
        msg = (
            f"batch_size ({options['batch_size']}, the global batch) must be a multiple of "
            f"workers ({options['workers']})"
        )
        raise ValidationError(msg)
    split = params.get("validation_split", DEFAULTS["validation_split"])
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 <= split < 1:
        msg = f"validation_split must be a fraction in [0, 1), got {split!r}"
        raise ValidationError(msg)
    options["validation_split"] = float(split)
    dump = params.get("dump_weights", False)
    if not isinstance(dump, bool):
        msg = f"dump_weights must be true or false, got {dump!r}"
        raise ValidationError(msg)
    options["dump_weights"] = dump
    return options


def job_cpus() -> int:
    """How many CPUs this job may use (the executor set its affinity to them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open until all are picked)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(ports: list[int], index: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """The ``TF_CONFIG`` of worker ``index`` (worker 0 is the chief)."""
    return {
        "cluster": {"worker": [f"{host}:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    }


def gpu_share(visible: str | None, workers: int, index: int) -> str | None:
    """Worker ``index``'s part of the job's GPUs (``CUDA_VISIBLE_DEVICES``, as the executor
    set it), split evenly; ``None``: leave it as it is (no GPUs, one worker, or fewer GPUs
    than workers: they share them)."""
    devices = [d for d in (visible or "").split(",") if d.strip()]
    if workers < 2 or len(devices) < workers:
        return None
    share = len(devices) // workers
    return ",".join(devices[index * share : (index + 1) * share])


class WorkerFailure(MlrigError):
    """A worker of the cluster died (not from the user's code): the cluster relaunches."""

    code = "worker_failure"


class Cluster:
    """The worker processes of one launch, in one process group, killed on every exit."""

    def __init__(self, run_dir: Path, workers: int, *, threads: int) -> None:
        self.run_dir = run_dir
        self.workers = workers
        self.threads = threads
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pgid: int | None = None

    def start(self) -> None:
        for stale in ("started-*", "joining-*", "ready-*", "error-*.json", "pid-*"):
            for path in self.run_dir.glob(stale):
                path.unlink()
        ports = free_ports(self.workers)
        for index in range(self.workers):
            env = dict(os.environ)
            env.update(
                TF_CONFIG=json.dumps(tf_config(ports, index)),
                TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONUNBUFFERED="1",
                OMP_NUM_THREADS=str(self.threads),
                MLRIG_TF_PARENT=str(os.getpid()),
            )
            if self.workers == 1:
                env.pop("TF_CONFIG")
            gpus = gpu_share(os.environ.get("CUDA_VISIBLE_DEVICES"), self.workers, index)
            if gpus is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpus
            log = (self.run_dir / f"worker-{index}.log").open("ab")
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "mlrig.plugins._tf_worker", str(self.run_dir)],
                    env=env,
                    cwd=self.run_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    process_group=0 if self.pgid is None else self.pgid,
                )
            finally:
                log.close()
            if self.pgid is None:
                self.pgid = proc.pid
            self.procs.append(proc)

    def count(self, prefix: str) -> int:
        return sum((self.run_dir / f"{prefix}-{i}").exists() for i in range(self.workers))

    def exits(self) -> list[int | None]:
        return [proc.poll() for proc in self.procs]

    def kill(self) -> None:
        """SIGKILL the group (nothing in it has state to save: backups are per epoch)."""
        if self.pgid is not None:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []
        self.pgid = None

    def log_tail(self, index: int, lines: int = 15) -> str:
        try:
            text = (self.run_dir / f"worker-{index}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class EventTail:
    """Reads the chief's ``events.jsonl`` as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]


def read_backup(backup_dir: Path) -> dict[str, Any] | None:
    """The last whole backup as ``{"folder", "epoch", "files": {name: bytes}}``."""
    from mlrig.plugins._tf_worker import read_latest

    for _ in range(3):  # the chief may replace it while it is read: read it again
        folder = read_latest(backup_dir)
        if folder is None:
            return None
        try:
            files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
            epoch = json.loads(files["training_metadata.json"])["epoch"]
        except (OSError, KeyError, ValueError):
            continue
        return {"folder": folder.name, "epoch": int(epoch), "files": files}
    return None


def write_backup(backup_dir: Path, backup: dict[str, Any]) -> None:
    """Put a checkpointed backup where the chief's ``BackupAndRestore`` reads it."""
    folder = backup_dir / backup["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in backup["files"].items():
        (folder / name).write_bytes(data)
    (backup_dir / "latest.json").write_text(json.dumps({"folder": backup["folder"]}))


class TensorflowTrainer(Trainer):
    """Train a Keras model with tf.distribute across worker processes; register it."""

    def check(self, *, params: dict[str, Any], dataset: dict[str, Any] | None) -> None:
        """At create time: the trainer's options. The user's module is not imported here
        (that runs its code): the workers report a missing builder when the job runs."""
        check_params(params)

    def train(self, context: TrainingContext) -> TrainResult:
        cpus = job_cpus()
        options = check_params(context.params, cpus=cpus)
        if options["workers"] > cpus:
            msg = (
                f"workers={options['workers']} is more than the {cpus} CPU(s) this job may "
                f"use: ask for resources cpus={options['workers']} or fewer workers"
            )
            raise PermanentError(msg)
        if options["threads"] > cpus:
            msg = (
                f"threads={options['threads']} (per worker) is more than the {cpus} CPU(s) "
                f"this job may use: ask for resources cpus={options['threads']} or fewer threads"
            )
            raise PermanentError(msg)
        run_dir = Path(context.workdir) / "tf"
        run_dir.mkdir(parents=True, exist_ok=True)
        self._write_spec(context, options, run_dir)
        restored = context.restore()
        if restored and restored.get("backup"):
            write_backup(run_dir / "backup", restored["backup"])
            print(f"[mlrig] resuming from the checkpoint of epoch {restored['epoch']}", flush=True)
        run = _Run(context, options, run_dir)
        final = run.supervise()
        if getattr(context, "interrupted", False):  # SIGTERM: the last backup is kept
            backup = read_backup(run_dir / "backup")
            if backup is not None:
                state = {
                    "backup": backup,
                    "epoch": backup["epoch"] - 1,
                    "step": backup["epoch"] - 1,
                }
                context.checkpoint(state)  # due: the context saves on SIGTERM
            return TrainResult(metrics=final)
        version = self._register(context, run_dir, final)
        shutil.rmtree(run_dir / "backup", ignore_errors=True)
        return TrainResult(metrics=final, model_version_id=version["id"])

    @staticmethod
    def _write_spec(context: TrainingContext, options: dict[str, Any], run_dir: Path) -> None:
        module = options["module"]
        if module.endswith(".py") or os.sep in module:
            path = Path(module)
            if not path.is_absolute():
                platform = getattr(context, "platform", None)
                base = platform.settings.resolve_path(module) if platform else path.resolve()
                path = Path(base)
            module = str(path)
        spec = {
            **options,
            "module": module,
            "params": dict(context.params),
            "seed": context.seed,
        }
        (run_dir / "spec.json").write_text(json.dumps(spec, default=str))

    @staticmethod
    def _register(context: TrainingContext, run_dir: Path, final: dict[str, float]) -> Any:
        import numpy as np

        from mlrig.formats._tensorflow import _tf

        _tf()
        import keras

        try:
            model = keras.models.load_model(run_dir / "model.keras")
        except (TypeError, ValueError):
            # custom layers: registered (keras.saving.register_keras_serializable) when the
            # user's module is imported; import it here too, then load again
            from mlrig.plugins._distributed import load_user_module

            spec = json.loads((run_dir / "spec.json").read_text())
            load_user_module(spec["module"])
            model = keras.models.load_model(run_dir / "model.keras")
        sample = np.load(run_dir / "sample.npy")
        return context.register_model(model, sample=sample, metrics=final)


class _Run:
    """The job process's side of one training run: launches, relays, relaunches."""

    def __init__(self, context: TrainingContext, options: dict[str, Any], run_dir: Path):
        self.context = context
        self.options = options
        self.run_dir = run_dir
        from mlrig.plugins._distributed import JobRelay

        self.relay = JobRelay(run_dir)
        self.events = EventTail(run_dir / "events.jsonl")
        self.final: dict[str, float] = {}
        self.restarts = 0
        self.saved = False
        self.stop_sent = False

    def supervise(self) -> dict[str, float]:
        while True:
            cluster = Cluster(
                self.run_dir, self.options["workers"], threads=self.options["threads"]
            )
            try:
                cluster.start()
                print(
                    f"[mlrig] started {cluster.workers} TensorFlow worker(s), process group "
                    f"{cluster.pgid}",
                    flush=True,
                )
                self._wait_ready(cluster)
                self._follow(cluster)
                return self.final
            except WorkerFailure as exc:
                self.restarts += 1
                if self.restarts > self.options["max_restarts"]:
                    msg = f"{exc}; gave up after {self.options['max_restarts']} restart(s)"
                    raise MlrigError(msg) from None
                print(
                    f"[mlrig] {exc}; relaunching the cluster (restart {self.restarts} of "
                    f"{self.options['max_restarts']})",
                    flush=True,
                )
            finally:
                cluster.kill()
                self._relay()

    def _failed(self, cluster: Cluster, *, before_ready: bool = False) -> None:
        """Raise for a worker that ended before the run did: its user error (permanent),
        or a :class:`WorkerFailure` (the cluster relaunches)."""
        exits = cluster.exits()
        for index, code in enumerate(exits):
            if code is not None and code < 0:  # killed: what the others raised follows
                raise WorkerFailure(f"worker {index} ended ({_describe_exit(code)})")
        permanent = [e for e in self.relay.errors() if e.get("permanent")]
        if permanent:
            cluster.kill()
            error = permanent[0]
            raise PermanentError(f"worker {error.get('rank')}: {error.get('message')}")
        for index, code in enumerate(exits):
            if code is None or (code == 0 and not before_ready):
                continue
            if code == 0 and cluster.count("ready") == cluster.workers:
                continue  # a fast run: it joined, trained and ended between two polls
            tail = cluster.log_tail(index)
            if tail:
                print(f"[mlrig] worker {index} output (last lines):\n{tail}", flush=True)
            raise WorkerFailure(f"worker {index} ended ({_describe_exit(code)})")

    def _wait_ready(self, cluster: Cluster) -> None:
        started = time.monotonic()
        first_up: float | None = None
        timeout = self.options["startup_timeout_s"]
        while cluster.count("ready") < cluster.workers:
            self._failed(cluster, before_ready=True)
            self._check_stop()
            now = time.monotonic()
            if first_up is None and cluster.count("started"):
                first_up = now
            late = first_up is not None and now - first_up > timeout
            if late or now - started > IMPORT_TIMEOUT_S:
                missing = [
                    i
                    for i in range(cluster.workers)
                    if not (self.run_dir / f"joining-{i}").exists()
                ]
                cluster.kill()
                msg = (
                    f"worker(s) {', '.join(map(str, missing or range(cluster.workers)))} did not "
                    f"join the cluster within {timeout} s (startup_timeout_s) of the first "
                    "worker starting"
                )
                raise PermanentError(msg)
            time.sleep(POLL_S)

    def _follow(self, cluster: Cluster) -> None:
        first_done: float | None = None
        while True:
            self._relay()
            exits = cluster.exits()
            if all(code == 0 for code in exits):
                self._relay()
                if not (self.run_dir / "model.keras").exists():
                    raise WorkerFailure("the workers ended without the chief saving the model")
                return
            if first_done is None and 0 in exits:
                first_done = time.monotonic()
            if self.saved and first_done and time.monotonic() - first_done > EXIT_GRACE_S:
                # the model is saved; a worker stuck on its way out is not waited for
                print(f"[mlrig] workers still running {EXIT_GRACE_S} s after the end: killed")
                cluster.kill()
                return
            if any(code is not None and code != 0 for code in exits):
                self._failed(cluster)
            time.sleep(POLL_S)

    def _check_stop(self) -> None:
        """Metric lines into the context; the stop file when ``should_stop()``."""
        self.relay.poll(self.context)
        if not self.stop_sent and self.relay.dir.stop.exists():
            self.stop_sent = True
            print("[mlrig] asked the workers to stop after this epoch", flush=True)

    def _relay(self) -> None:
        self._check_stop()
        for event in self.events.read():
            kind = event.get("event")
            if kind == "epoch":
                self._checkpoint(int(event["epoch"]))
            elif kind == "restored":
                print(f"[mlrig] the workers restored their backup: epoch {event['epoch']}")
            elif kind == "saved":
                self.saved = True
                self.final = dict(event.get("logs") or {})

    def _checkpoint(self, epoch: int) -> None:
        """The chief's backup after ``epoch`` through the context (when it is due)."""
        backup = read_backup(self.run_dir / "backup")
        if backup is not None and backup["epoch"] == epoch + 1:
            self.context.checkpoint({"backup": backup, "epoch": epoch, "step": epoch})
