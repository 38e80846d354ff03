"""The ``torch-ddp`` trainer: a user's PyTorch module trained with DistributedDataParallel
under torch elastic (``torch.distributed.run``, the machinery behind ``torchrun``).

The job process launches ``python -m torch.distributed.run`` in its own session, running
:mod:`mlrig.plugins._ddp_worker` on ``nproc_per_node`` ranks (c10d rendezvous, elastic
restarts up to ``max_restarts``), and supervises it: the lead rank's metric lines and
checkpoints come back through the relay (:mod:`mlrig.plugins._distributed`) into the
training context, ``should_stop()`` (early stopping, a stop request, SIGTERM) goes to the
ranks as a stop file, and at the end the final state dict is loaded into the user's model
here and registered (native artifact + ONNX export with a parity check).

Hyperparameters (everything else reaches the user's functions as ``params``):

``module`` (required) a ``.py`` path or an import string, with ``build_model(params)``
and ``build_dataset(params)`` (a torch Dataset, or ``(train, validation)``); optional
``loss(output, target)`` and ``step(model, batch) -> loss``. ``nproc_per_node`` (1),
``nnodes`` (1), ``rdzv_endpoint`` (default ``127.0.0.1:<free port>``), ``rdzv_timeout_s``
(60), ``max_restarts`` (3), ``epochs`` (1), ``batch_size`` (32), ``lr`` (1e-3),
``grad_accum`` (1), ``precision`` (fp32|bf16|fp16: GPU only), ``compile`` (false: GPU only),
``log_every_steps`` (10: the loss is logged, and a stop request seen, every N optimizer
steps and at each epoch's last one).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mlrig.contracts.trainer import PermanentError, Trainer, TrainingContext, TrainResult
from mlrig.errors import ValidationError
from mlrig.plugins._distributed import (
    JobRelay,
    ProcessGroup,
    atomic_write,
    find_user_module,
    load_user_module,
    require_function,
)

PRECISIONS = ("fp32", "bf16", "fp16")
RESERVED = (
    "module", "nproc_per_node", "nnodes", "rdzv_endpoint", "rdzv_timeout_s", "max_restarts",
    "epochs", "batch_size", "lr", "grad_accum", "precision", "compile", "log_every_steps",
)  # fmt: skip
#: seconds a launch may take to import torch and start before its rendezvous timeout runs
STARTUP_SLACK_S = 60.0
POLL_S = 0.2
#: the longest rendezvous wait a run may ask for (a day)
RDZV_TIMEOUT_MAX_S = 86400.0
NODE_CHECK_S = 2.0
#: seconds a node's launcher may take to end after its leader ended
NODE_EXIT_GRACE_S = 10.0
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: the job writes this file into the run folder when it was interrupted (SIGTERM): the lead
#: rank does not package a model nobody registers
NO_PACKAGE = "no-package"
#: files whose presence says an NVIDIA (or ROCm) driver is loaded
GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")


def _int(params: dict[str, Any], name: str, default: int, *, low: int, high: int) -> int:
    value = params.get(name, default)
    if type(value) is not int or not low <= value <= high:
        msg = f"{name} must be an integer from {low} to {high}, got {value!r}"
        raise ValidationError(msg)
    return value


def _number(
    params: dict[str, Any], name: str, default: float, *, low: float, high: float = float("inf")
) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        upto = "" if high == float("inf") else f" and at most {high:g}"
        msg = f"{name} must be a number above {low}{upto}, got {value!r}"
        raise ValidationError(msg)
    return float(value)


def parse_options(params: dict[str, Any]) -> dict[str, Any]:
    """The trainer's own hyperparameters, checked, with their defaults.

    :raises ValidationError: naming the bad value and what is allowed.
    """
    module = params.get("module")
    if not isinstance(module, str) or not module.strip():
        msg = (
            "the torch-ddp trainer needs hyperparameter module: a file path ('train.py') or "
            f"an import string ('pkg.train') with build_model and build_dataset, got {module!r}"
        )
        raise ValidationError(msg)
    precision = params.get("precision", "fp32")
    if precision not in PRECISIONS:
        msg = f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        raise ValidationError(msg)
    compile_ = params.get("compile", False)
    if type(compile_) is not bool:
        msg = f"compile must be true or false, got {compile_!r}"
        raise ValidationError(msg)
    endpoint = params.get("rdzv_endpoint")
    if endpoint is not None:
        host, _, port = str(endpoint).rpartition(":")
        if (
            not isinstance(endpoint, str)
            or not host
            or len(host) > 255
            or not host.isprintable()
            or any(c.isspace() for c in host)
            or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535)
        ):
            msg = f"rdzv_endpoint must be HOST:PORT, got {endpoint!r}"
            raise ValidationError(msg)
    return {
        "module": module.strip(),
        "nproc_per_node": _int(params, "nproc_per_node", 1, low=1, high=1024),
        "nnodes": _int(params, "nnodes", 1, low=1, high=1024),
        "max_restarts": _int(params, "max_restarts", 3, low=0, high=100),
        "epochs": _int(params, "epochs", 1, low=1, high=10**6),
        "batch_size": _int(params, "batch_size", 32, low=1, high=10**7),
        "grad_accum": _int(params, "grad_accum", 1, low=1, high=10**4),
        "log_every_steps": _int(params, "log_every_steps", 10, low=1, high=10**6),
        "rdzv_timeout_s": _number(params, "rdzv_timeout_s", 60, low=0, high=RDZV_TIMEOUT_MAX_S),
        "lr": _number(params, "lr", 1e-3, low=0),
        "precision": precision,
        "compile": compile_,
        "rdzv_endpoint": endpoint,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _is_local(host: str) -> bool:
    return host in LOCAL_HOSTS or host in (socket.gethostname(), socket.getfqdn())


def job_gpus() -> int:
    """How many GPUs this job may use, without importing torch: the devices in
    ``CUDA_VISIBLE_DEVICES`` (the executor sets it to the job's allocated GPUs; CUDA stops
    at the first invalid entry) or, when it is unset, the NVIDIA driver's GPUs
    (``/proc/driver/nvidia/gpus``); 0 where no GPU driver is loaded. The ranks confirm it
    with torch, and fail saying so when torch sees fewer CUDA devices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        gpus = Path("/proc/driver/nvidia/gpus")
        count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    else:
        count = 0
        for entry in visible.split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            count += 1
    if count and not any(Path(f).exists() for f in GPU_DRIVER_FILES):
        return 0
    return count


def allowed_cpus(context: Any) -> int:
    """The CPUs this job may use: its resources' ``cpus`` when given, else its affinity."""
    resources = getattr(getattr(context, "job", None), "resources", None) or {}
    cpus = resources.get("cpus")
    if isinstance(cpus, int) and cpus > 0:
        return cpus
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class TorchDDPTrainer(Trainer):
    """Train a user's torch module on ``nproc_per_node`` x ``nnodes`` ranks; register it."""

    def check(self, *, params: dict[str, Any], dataset: dict[str, Any] | None) -> None:
        """At create time: the trainer's options (types and ranges, ``module`` given). The
        module itself is imported when the job runs (importing runs its code)."""
        parse_options(params)

    def train(self, context: TrainingContext) -> TrainResult:
        options = parse_options(context.params)
        if options["nnodes"] == 1 or _node_role(context) is not None:
            return self._train(context, options)
        try:  # the leader of several nodes: its nodes end with it
            return self._train(context, options)
        except BaseException as exc:
            from mlrig.engine.nodes import stop_nodes

            with contextlib.suppress(Exception):
                stop_nodes(context, reason=f"the leader failed: {exc}"[:500])
            raise

    def _train(self, context: TrainingContext, options: dict[str, Any]) -> TrainResult:
        # torch is not imported here: the ranks do, and the lead rank packages the model
        timeline = {"job_started": time.time()}
        user_params = {k: v for k, v in context.params.items() if k not in RESERVED}
        base = Path(os.environ.get("MLRIG_ORIGIN_DIR") or Path.cwd())
        find_user_module(options["module"], base=base)  # its builders: checked by the ranks
        nproc = options["nproc_per_node"]
        gpus = job_gpus()
        cuda = gpus > 0
        if cuda and nproc > gpus:
            msg = (
                f"nproc_per_node={nproc} is more than the {gpus} GPU(s) "
                "this job may use: lower it or ask for more gpus in the resources"
            )
            raise ValidationError(msg)
        cpus = allowed_cpus(context)
        if not cuda and nproc > cpus:
            msg = (
                f"nproc_per_node={nproc} is more than the {cpus} CPU(s) this job may use: "
                f"lower it or ask for resources cpus={nproc}"
            )
            raise ValidationError(msg)
        if not cuda and (options["precision"] != "fp32" or options["compile"]):
            what = "compile=true" if options["compile"] else f"precision={options['precision']}"
            msg = f"{what} needs a CUDA GPU and this job has none: use fp32 without compile on CPU"
            raise ValidationError(msg)

        run_dir = Path(context.workdir) / "ddp"
        relay = JobRelay(run_dir)
        restored = context.restore()
        if restored and restored.get("blob"):
            relay.seed_checkpoint(
                restored["blob"], step=restored["step"], epoch=restored.get("epoch")
            )
        leader, endpoint, is_host = self._rendezvous(context, options)
        spec = {
            **{
                k: options[k]
                for k in ("module", "epochs", "batch_size", "lr", "grad_accum", "log_every_steps")
            },
            "precision": options["precision"],
            "compile": options["compile"],
            "params": user_params,
            "base": str(base),
            "seed": context.seed or 0,
            "checkpoint_interval_s": getattr(context, "checkpoint_interval", 0),
            "cuda": cuda,
            "gpus": gpus,
            "leader_node": leader,
            # the lead rank packages the model for the registry (a sweep's trial keeps the
            # model object as its candidate: packaged here, as before)
            "package": leader and getattr(context, "sweep", None) is None,
        }
        (run_dir / "spec.json").write_text(json.dumps(spec))
        timeout = options["rdzv_timeout_s"]
        argv = [
            sys.executable, "-m", "torch.distributed.run",
            f"--nnodes={options['nnodes']}", f"--nproc-per-node={nproc}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={self._run_id(context)}",
            f"--rdzv-conf=is_host={str(is_host).lower()},join_timeout={int(max(1, timeout))},"
            f"read_timeout={int(max(1, timeout))}",
            f"--max-restarts={options['max_restarts']}", "--monitor-interval=0.1",
            f"--log-dir={run_dir / 'logs'}",
            "--module", "mlrig.plugins._ddp_worker", str(run_dir),
        ]  # fmt: skip
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, cpus // nproc)))
        env["PYTHONUNBUFFERED"] = "1"
        print(f"[mlrig] torch-ddp: {' '.join(argv[1:])}", flush=True)
        log = run_dir / "torchrun.log"
        started = time.monotonic()
        timeline["torchrun_started"] = time.time()
        with open(log, "wb") as out, ProcessGroup(argv, env=env, stdout=out, stderr=out) as group:
            tail = _Tail(log)
            while group.poll() is None:
                time.sleep(POLL_S)
                tail.copy()
                relay.poll(context)
                if context.interrupted and not (run_dir / NO_PACKAGE).exists():
                    atomic_write(run_dir / NO_PACKAGE, "interrupted\n")  # no model to package
                permanent = [e for e in relay.errors() if e.get("permanent")]
                if permanent:
                    group.kill()
                    tail.copy()
                    raise PermanentError(f"rank {permanent[0]['rank']}: {permanent[0]['message']}")
                why = self._node_failure(context, leader, options)
                if why:
                    # a leader that completed ended its ranks, and so ends ours: let the
                    # launcher see that; anything else stops the run now
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        if not leader and group.wait(NODE_EXIT_GRACE_S) == 0:
                            break
                    group.kill()
                    raise PermanentError(why)
                joined = any(run_dir.glob("worker-*.json"))
                if not joined and time.monotonic() - started > timeout + STARTUP_SLACK_S:
                    group.kill()
                    msg = f"rendezvous at {endpoint} not reached within {timeout:g} s"
                    raise PermanentError(msg)
            code = group.poll()
            tail.copy()
        timeline["ranks_exited"] = time.time()
        relay.poll(context, force_checkpoint=context.interrupted)
        if code != 0:
            raise self._failure(code, relay, log, endpoint, options)
        restarts = relay.restarts()
        metrics = {"elastic_restarts": float(restarts)}
        if context.interrupted:
            return TrainResult(metrics=metrics)
        hashes = {json.loads(p.read_text())["sha256"] for p in run_dir.glob("params-*.json")}
        metrics["replicas_identical"] = 1.0 if len(hashes) == 1 else 0.0
        if not leader:  # a node job: the leader registers the model
            return TrainResult(metrics=metrics)
        if options["nnodes"] > 1:  # the leader's end cancels nodes still running
            from mlrig.engine.nodes import wait_nodes

            why = wait_nodes(context, timeout_s=NODE_EXIT_GRACE_S * 3)
            if why:  # every rank passed the final barrier: the model is whole
                print(f"[mlrig] torch-ddp: {why}", flush=True)
        context.log_metrics(metrics, step=relay.last_step)
        from mlrig.formats import MANIFEST, read_package

        package = run_dir / "package"
        if spec["package"] and (package / MANIFEST).is_file():  # what the lead rank wrote
            version = context.register_model(read_package(package))
        else:  # a sweep's trial, or the lead rank could not package it: the same error here
            model, sample = self._final_model(run_dir, base, user_params)
            version = context.register_model(model, sample=sample)
        timeline["registered"] = time.time()
        timeline["torch_in_job"] = "torch" in sys.modules  # False unless packaged here
        atomic_write(run_dir / "timeline.json", json.dumps(timeline))
        return TrainResult(metrics=metrics, model_version_id=version["id"])

    @staticmethod
    def _final_model(run_dir: Path, base: Path, user_params: dict[str, Any]) -> tuple[Any, Any]:
        """The user's model with the final weights, and the sample (numpy), or ``None``."""
        import torch

        module = load_user_module(json.loads((run_dir / "spec.json").read_text())["module"],
                                  base=base)  # fmt: skip
        build_model = require_function(module, "build_model")
        model = build_model(dict(user_params))
        model.load_state_dict(torch.load(run_dir / "final.pt", map_location="cpu"))
        model.eval()
        sample = None
        if (run_dir / "sample.pt").exists():
            sample = torch.load(run_dir / "sample.pt", map_location="cpu").numpy()
        return model, sample

    # --- rendezvous and nodes ------------------------------------------------------------

    @staticmethod
    def _run_id(context: Any) -> str:
        role = _node_role(context)
        return str(role.leader_id if role else getattr(context, "experiment_id", "mlrig"))

    @staticmethod
    def _rendezvous(context: Any, options: dict[str, Any]) -> tuple[bool, str, bool]:
        """(whether this job leads, the endpoint, whether it hosts the c10d store)."""
        role = _node_role(context)
        if role is not None:  # a node job: join the leader's rendezvous
            return False, str(role.rendezvous["endpoint"]), False
        endpoint = options["rdzv_endpoint"]
        if endpoint is None:
            host = "127.0.0.1" if options["nnodes"] == 1 else _node_host()
            endpoint = f"{host}:{_free_port()}"
        is_host = _is_local(endpoint.rpartition(":")[0])
        if options["nnodes"] > 1:
            from mlrig.engine.nodes import start_nodes

            # a node job not started by the rendezvous timeout fails the run (watch_nodes)
            start_nodes(
                context,
                nnodes=options["nnodes"],
                rendezvous={"endpoint": endpoint},
                start_timeout_s=options["rdzv_timeout_s"],
            )
        return True, endpoint, is_host

    def _node_failure(self, context: Any, leader: bool, options: dict[str, Any]) -> str | None:
        """Why the run cannot go on: a node job failed (leader), or the leader ended (a
        node). Asked of the database every NODE_CHECK_S."""
        if options["nnodes"] == 1:
            return None
        now = time.monotonic()
        if now - getattr(self, "_node_checked", 0.0) < NODE_CHECK_S:
            return None
        self._node_checked = now
        from mlrig.engine.nodes import leader_ended, watch_nodes

        if leader:
            return watch_nodes(context)
        return "the leader job ended" if leader_ended(context) else None

    @staticmethod
    def _failure(
        code: int, relay: JobRelay, log: Path, endpoint: str, options: dict[str, Any]
    ) -> Exception:
        errors = relay.errors()
        text = log.read_text(errors="replace")[-20000:] if log.exists() else ""
        if "Rendezvous" in text and ("Timeout" in text or "ConnectionError" in text):
            msg = (
                f"rendezvous at {endpoint} failed within {options['rdzv_timeout_s']:g} s "
                "(nobody answered, or too few nodes joined)"
            )
            return PermanentError(msg)
        if errors:
            first = errors[0]
            return RuntimeError(
                f"torchrun exited with {code} after {options['max_restarts']} restart(s); "
                f"rank {first['rank']}: {first['message']}"
            )
        lines = [line for line in text.splitlines() if line.strip()]
        return RuntimeError(f"torchrun exited with {code}: {' | '.join(lines[-3:])[:800]}")


def _node_role(context: Any) -> Any:
    try:
        from mlrig.engine.nodes import node_role
    except ImportError:
        return None
    return node_role(context)


def _node_host() -> str:
    """The address other nodes reach this one at: the hostname's (127.0.0.1 when it does
    not resolve); give rdzv_endpoint to choose another."""
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    return "127.0.0.1"


class _Tail:
    """Copies what the launcher wrote to its log onto this job's stdout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def copy(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except OSError:
            return
        if chunk:
            self.offset += len(chunk)
            sys.stdout.buffer.write(chunk) if hasattr(sys.stdout, "buffer") else None
            sys.stdout.flush()
