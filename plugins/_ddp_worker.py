"""One rank of the ``torch-ddp`` trainer: ``torchrun ... -m mlrig.plugins._ddp_worker RUN_DIR``.

Started by torch elastic (``torch.distributed.run``), which the job process of
:mod:`mlrig.plugins.trainer_torch_ddp` launches; torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT and TORCHELASTIC_RESTART_COUNT. Each rank:

1. joins the process group (``gloo`` on CPU, ``nccl`` on GPU) and agrees on the lead rank:
   the first rank whose node is the leader job's and whose local rank is 0 (an
   ``all_gather`` of that flag; c10d gives ranks in join order, so the leader job's ranks
   are not necessarily 0..n-1);
2. loads the user's module and builds the model and dataset (a failure there is recorded
   in ``error-RANK.json`` as permanent: the job fails at once, no restart fixes it);
3. resumes from the checkpoint: the lead reads ``checkpoint.bin`` from its relay directory
   and broadcasts it, so every rank on every node starts from the same state and step;
4. trains with ``DistributedSampler`` + ``DistributedDataParallel``, gradient accumulation,
   autocast (bf16/fp16, GPU only) and ``torch.compile`` (GPU only); each step the lead
   broadcasts whether the job asked to stop (the ``stop`` file), so every rank stops at the
   same step; the lead writes metrics and, every checkpoint interval and when stopping,
   the checkpoint (model + optimizer + step/epoch);
5. at the end the lead saves ``final.pt`` (the state dict) and ``sample.pt`` (a few
   inputs); every rank writes ``params-RANK.json``, a hash of its parameters.

Files in RUN_DIR besides the relay's (:mod:`mlrig.plugins._distributed`): ``spec.json``
(written by the job), ``worker-RANK.json`` ({"pid", "restart", "local_rank", "lead"},
once the rank joined), ``restarts.json`` ({"count", "starts": [{"restart", "step"}]}).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from mlrig.plugins._distributed import (
    WorkerRelay,
    atomic_write,
    die_with_parent,
    load_user_module,
    require_function,
)

EXIT_USER_ERROR = 3


def _batch_parts(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and "x" in batch and "y" in batch:
        return batch["x"], batch["y"]
    msg = "a batch must be (inputs, targets) or {'x': ..., 'y': ...}; define step(model, batch)"
    raise TypeError(msg)


def _to(value: Any, device: Any) -> Any:
    if hasattr(value, "to"):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def default_loss(output: Any, target: Any) -> Any:
    """Cross-entropy for integer targets, mean squared error otherwise."""
    import torch.nn.functional as F

    if not target.is_floating_point():
        return F.cross_entropy(output, target)
    if output.shape != target.shape and output.numel() == target.numel():
        target = target.reshape(output.shape)
    return F.mse_loss(output, target)


def param_hash(module: Any) -> str:
    """sha256 over the parameters and buffers, in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Rank:
    """The state of one rank; :meth:`run` trains."""

    def __init__(self, run_dir: Path) -> None:
        import torch
        import torch.distributed as dist

        self.run_dir = run_dir
        self.spec: dict[str, Any] = json.loads((run_dir / "spec.json").read_text())
        self.rank = int(os.environ["RANK"])
        self.world = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        self.relay = WorkerRelay(run_dir, rank=self.rank)
        cuda = bool(self.spec.get("cuda"))
        if cuda:
            self._confirm_cuda()
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            store=self._store(),
            rank=self.rank,
            world_size=self.world,
        )
        self.cuda = cuda
        flag = 1 if self.spec.get("leader_node", True) and self.local_rank == 0 else 0
        flags = [None] * self.world
        dist.all_gather_object(flags, flag)
        self.lead = flags.index(1) if 1 in flags else 0
        self.is_lead = self.rank == self.lead
        if self.is_lead:
            self.relay = WorkerRelay(run_dir, rank=self.rank)
        info = {"pid": os.getpid(), "restart": self.restart, "local_rank": self.local_rank,
                "lead": self.lead, "world": self.world,
                "backend": dist.get_backend()}  # fmt: skip
        atomic_write(run_dir / f"worker-{self.rank}.json", json.dumps(info))

    def _confirm_cuda(self) -> None:
        """The job chose nccl from the GPUs it was given (without importing torch): check
        that torch sees a CUDA device for this rank, else fail for good, saying why."""
        import torch

        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if self.local_rank < seen:
            return
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        msg = (
            f"the job was given {self.spec.get('gpus')} GPU(s) (CUDA_VISIBLE_DEVICES="
            f"{visible!r}), so the ranks use nccl, but torch {torch.__version__} sees "
            f"{seen} CUDA device(s) for local rank {self.local_rank}"
            + (" (a CPU-only build of torch, or no working CUDA driver)" if not seen else "")
            + ": install a CUDA build of torch, or run the job without gpus"
        )
        exc = RuntimeError(msg)
        self.relay.record_error(exc, permanent=True)
        raise exc

    def _store(self) -> Any:
        """The launcher's store under a prefix of this restart: after an elastic restart,
        the keys the previous group left there (gloo's pair addresses) would make the new
        group connect to dead peers and hang."""
        from datetime import timedelta

        import torch.distributed as dist

        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            self.world,
            is_master=not agent and self.rank == 0,
            timeout=timedelta(seconds=float(self.spec.get("rdzv_timeout_s") or 60) + 60),
            multi_tenant=True,
        )
        return dist.PrefixStore(f"mlrig/restart-{self.restart}", store)

    # --- building ------------------------------------------------------------------------

    def build(self) -> None:
        import torch

        spec = self.spec
        params = dict(spec.get("params") or {})
        seed = int(spec.get("seed") or 0)
        torch.manual_seed(seed)  # the same initial weights everywhere (DDP broadcasts too)
        module = load_user_module(spec["module"], base=Path(spec.get("base") or "."))
        build_model = require_function(module, "build_model", spec=spec["module"])
        build_dataset = require_function(module, "build_dataset", spec=spec["module"])
        self.user = module
        self.model = build_model(params)
        if not isinstance(self.model, torch.nn.Module):
            msg = f"build_model returned a {type(self.model).__name__}, not a torch.nn.Module"
            raise TypeError(msg)
        data = build_dataset(params)
        if isinstance(data, tuple) and len(data) == 2:
            self.train_set, self.val_set = data
        else:
            self.train_set, self.val_set = data, None
        self.loss_fn = getattr(module, "loss", None) or default_loss
        self.step_fn = getattr(module, "step", None)
        # from here the ranks differ: shuffling, dropout... (seed per rank)
        torch.manual_seed(seed + self.rank)

    # --- checkpoints ---------------------------------------------------------------------

    def _state_bytes(self, step: int, epoch: int, batch: int) -> bytes:
        import torch

        buffer = io.BytesIO()
        state = {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": step,
            "epoch": epoch,
            "batch": batch,
        }
        torch.save(state, buffer)
        return buffer.getvalue()

    def _resume(self) -> tuple[int, int, int]:
        """Load the lead's checkpoint on every rank; return (step, epoch, batch) to start
        at: the step after the checkpoint's, in its epoch, after its batch."""
        import torch
        import torch.distributed as dist

        blob: list[Any] = [None]
        if self.is_lead:
            found = self.relay.load_checkpoint()
            blob = [found[0] if found else None]
        dist.broadcast_object_list(blob, src=self.lead, device=self.device if self.cuda else None)
        if blob[0] is None:
            return 0, 0, 0
        state = torch.load(io.BytesIO(blob[0]), map_location=self.device, weights_only=False)
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        return int(state["step"]) + 1, int(state["epoch"]), int(state["batch"])

    def _record_start(self, step: int) -> None:
        path = self.run_dir / "restarts.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {"count": 0, "starts": []}
        record["count"] = self.restart
        record["starts"].append({"restart": self.restart, "step": step, "at": time.time()})
        atomic_write(path, json.dumps(record))

    # --- training ------------------------------------------------------------------------

    def run(self) -> None:
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        spec = self.spec
        epochs = int(spec.get("epochs", 1))
        batch_size = int(spec.get("batch_size", 32))
        accum = max(1, int(spec.get("grad_accum", 1)))
        log_every = max(1, int(spec.get("log_every_steps", 1)))
        interval = float(spec.get("checkpoint_interval_s") or 0)
        precision = spec.get("precision", "fp32")
        seed = int(spec.get("seed") or 0)

        self.raw_model = self.model.to(self.device)
        self.optimizer = torch.optim.Adam(
            self.raw_model.parameters(), lr=float(spec.get("lr", 1e-3))
        )
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and self.cuda else None
        start_step, start_epoch, start_batch = self._resume()
        if self.is_lead:
            self._record_start(start_step)
            if start_step:
                self.relay.log_metrics({"resumed_step": start_step - 1}, step=start_step - 1)
        ddp = DDP(self.raw_model, device_ids=[self.local_rank] if self.cuda else None)
        forward = torch.compile(ddp) if spec.get("compile") and self.cuda else ddp
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        autocast = (
            (lambda: torch.autocast("cuda", dtype=dtype))
            if dtype is not None and self.cuda
            else (lambda: torch.autocast("cpu", enabled=False))
        )
        sampler = DistributedSampler(
            self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True, seed=seed
        )
        loader = DataLoader(self.train_set, batch_size=batch_size, sampler=sampler)
        step = start_step
        last_saved = began = time.monotonic()
        samples = 0
        stop = torch.zeros(1, device=self.device)
        stopped = False
        epoch = start_epoch
        for epoch in range(start_epoch, epochs):
            sampler.set_epoch(epoch)
            ddp.train()
            total, count = 0.0, 0
            skip = start_batch if epoch == start_epoch else 0
            self.optimizer.zero_grad(set_to_none=True)
            batches = len(loader)
            for index, batch in enumerate(loader):
                if index < skip:
                    continue
                batch = _to(batch, self.device)
                boundary = (index + 1) % accum == 0 or index + 1 == batches
                sync = ddp.no_sync() if not boundary else contextlib.nullcontext()
                with sync, autocast():
                    if self.step_fn is not None:
                        loss = self.step_fn(forward, batch)
                    else:
                        inputs, target = _batch_parts(batch)
                        loss = self.loss_fn(forward(inputs), target)
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                total += float(loss.detach())
                count += 1
                samples += len(_batch_parts(batch)[0]) if self.step_fn is None else batch_size
                if not boundary:
                    continue
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                # every rank takes the same steps, so they agree on which ones sync: the
                # broadcast and the metric line cost a collective and the job's CPU per step
                if step % log_every == 0 or index + 1 == batches:
                    if self.is_lead:
                        self.relay.log_metrics(
                            {"loss": float(loss.detach())}, step=step, epoch=epoch
                        )
                        stop.fill_(1.0 if self.relay.stop_requested() else 0.0)
                    dist.broadcast(stop, src=self.lead)
                    stopped = bool(stop.item())
                due = time.monotonic() - last_saved >= interval
                if self.is_lead and (due or stopped):
                    data = self._state_bytes(step, epoch, index + 1)
                    self.relay.save_checkpoint(data, step=step, epoch=epoch)
                    last_saved = time.monotonic()
                step += 1
                if stopped:
                    break
            if self.is_lead and count:
                self.relay.log_metrics({"epoch_loss": total / count}, step=step - 1, epoch=epoch)
            if self.val_set is not None:
                self._validate(ddp, batch_size, step - 1, epoch)
            if self.is_lead and not stopped:  # the epoch's end: resume at the next one
                data = self._state_bytes(step - 1, epoch + 1, 0)
                self.relay.save_checkpoint(data, step=step - 1, epoch=epoch + 1)
                last_saved = time.monotonic()
            if stopped:
                break
        if self.is_lead and samples:
            rate = samples * self.world / max(time.monotonic() - began, 1e-9)
            self.relay.log_metrics({"samples_per_s": rate}, step=step - 1)
        self._finish(step)

    def _validate(self, ddp: Any, batch_size: int, step: int, epoch: int) -> None:
        import torch
        import torch.distributed as dist
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(
            self.val_set, num_replicas=self.world, rank=self.rank, shuffle=False
        )
        loader = DataLoader(self.val_set, batch_size=batch_size, sampler=sampler)
        ddp.eval()
        sums = torch.zeros(2, device=self.device, dtype=torch.float64)
        with torch.no_grad():
            for batch in loader:
                batch = _to(batch, self.device)
                if self.step_fn is not None:
                    loss = self.step_fn(self.raw_model, batch)
                    size = 1
                else:
                    inputs, target = _batch_parts(batch)
                    loss = self.loss_fn(self.raw_model(inputs), target)
                    size = len(target)
                sums[0] += float(loss) * size
                sums[1] += size
        dist.all_reduce(sums)
        if self.is_lead and sums[1] > 0:
            value = float(sums[0] / sums[1])
            self.relay.log_metrics({"val_loss": value}, step=step, epoch=epoch, kind="validation")

    def _finish(self, step: int) -> None:
        import torch
        import torch.distributed as dist

        atomic_write(
            self.run_dir / f"params-{self.rank}.json",
            json.dumps({"rank": self.rank, "sha256": param_hash(self.raw_model), "step": step}),
        )
        sample = None
        if self.is_lead:
            buffer = io.BytesIO()
            torch.save({k: v.cpu() for k, v in self.raw_model.state_dict().items()}, buffer)
            atomic_write(self.run_dir / "final.pt", buffer.getvalue())
            count = min(8, len(self.train_set))
            first = [self.train_set[i] for i in range(count)]
            try:
                sample = torch.stack([_batch_parts(item)[0] for item in first]).cpu()
            except TypeError:
                sample = None
            if sample is not None:
                buffer = io.BytesIO()
                torch.save(sample, buffer)
                atomic_write(self.run_dir / "sample.pt", buffer.getvalue())
        dist.barrier()
        dist.destroy_process_group()
        if self.is_lead and self.spec.get("package"):  # while the other ranks exit
            state = {k: v.detach().cpu() for k, v in self.raw_model.state_dict().items()}
            self._package(state, sample)

    def _package(self, state: dict[str, Any], sample: Any) -> None:
        """The model the job registers, packaged as the registry stores it (native artifact,
        ``torch.export`` program, ONNX export with its parity check: ``package_model``) into
        RUN_DIR/package: the user's model built again on CPU with the final weights, in eval
        mode, the sample as numpy, as the job process did before. Written into a temporary
        folder renamed at the end; when it fails the job packages the model itself (and
        fails there with the same error, if it is one)."""
        import shutil

        from mlrig.formats import package_model

        if (self.run_dir / "no-package").exists():  # the job was interrupted
            return
        target = self.run_dir / "package"
        tmp = self.run_dir / f".package.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            build_model = require_function(self.user, "build_model", spec=self.spec["module"])
            model = build_model(dict(self.spec.get("params") or {}))
            model.load_state_dict(state)
            model.eval()
            rows = sample.numpy() if sample is not None else None
            package_model(model, tmp, sample=rows)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                atomic_write(self.run_dir / "package-error.txt", traceback.format_exc()[-4000:])


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import record

    args = sys.argv[1:] if argv is None else argv
    run_dir = Path(args[0])

    @record
    def _main() -> int:
        parent = os.getppid()
        die_with_parent()  # the launcher's agent died: so does this rank
        if os.getppid() != parent:
            return 1
        rank = Rank(run_dir)
        try:
            rank.build()
        except Exception as exc:  # the user's module or builders: no restart can fix it
            rank.relay.record_error(exc, permanent=True, tb=traceback.format_exc())
            raise
        try:
            rank.run()
        except Exception as exc:
            rank.relay.record_error(exc, permanent=False, tb=traceback.format_exc())
            raise
        return 0

    return _main()


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown (torch, onnx and onnxruntime
    take a second or more to unload, on the run's critical path: the launcher waits for
    every rank): stdio and logging flushed; everything the rank wrote is already on disk
    (``atomic_write`` syncs) and the process group is destroyed."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    code = main()
    if code == 0:
        exit_now(0)
    raise SystemExit(code)
