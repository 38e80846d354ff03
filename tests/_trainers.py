"""Small trainers installed as a real distribution for the engine tests."""

from __future__ import annotations

from pathlib import Path

from _distributions import make_distribution

STEPS_TRAINER = '''
import os, time
from mlrig.contracts import Trainer, TrainResult


class Steps(Trainer):
    """Counts steps, checkpointing after each; resumes from the last checkpoint."""

    def train(self, ctx):
        steps = int(ctx.params.get("steps", 5))
        pause = float(ctx.params.get("sleep", 0.02))
        state = ctx.restore() or {"step": -1}
        for step in range(state["step"] + 1, steps):
            time.sleep(pause)
            ctx.log_metrics({"value": float(step)}, step=step)
            ctx.checkpoint({"step": step}, force=True)
            if ctx.should_stop():
                break
        return TrainResult(metrics={"steps": float(steps)})


class Sleepy(Trainer):
    """Starts a child process, then sleeps: for stop and kill tests."""

    def train(self, ctx):
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print("child", child.pid, flush=True)
        print("job", os.getpid(), flush=True)
        time.sleep(120)
        return TrainResult()


class Crashing(Trainer):
    """Always fails."""

    def train(self, ctx):
        raise RuntimeError("boom from the trainer")


class KilledOnce(Trainer):
    """Logs points without checkpointing; its first attempt then dies by SIGKILL."""

    def train(self, ctx):
        import signal
        assert ctx.restore() is None  # it never checkpoints
        for step in range(4):
            ctx.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 4}, step=step, epoch=0)
            ctx.log_metrics({"loss": 2.0 / (step + 1)}, step=step, kind="validation")
        ctx.flush()
        if ctx.job.attempt == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return TrainResult(metrics={"loss": 0.25})


class Refusing(Trainer):
    """Fails with an error that retrying cannot fix."""

    def train(self, ctx):
        from mlrig import PermanentError
        raise PermanentError("the labels are all one class: nothing to learn")


class CudaReport(Trainer):
    """Logs how many CUDA devices the job process sees and a sum computed on one."""

    def train(self, ctx):
        import torch
        seen = torch.cuda.device_count()
        total = torch.ones(64, device="cuda").sum().item() if seen else 0.0
        ctx.log_metrics({"gpus_seen": float(seen), "cuda_sum": float(total)}, step=0)
        return TrainResult(metrics={"gpus_seen": float(seen)})

class MultiNode(Trainer):
    """A fake distributed trainer on :mod:`mlrig.engine.nodes`: the leader starts
    ``nnodes - 1`` node jobs and hosts a TCP barrier on 127.0.0.1; each node connects to
    the endpoint of its rendezvous, all meet, then each "trains" for ``steps`` steps.

    Params: nnodes, steps, sleep, start_timeout_s, node_sleep (a node's extra seconds),
    fail_node (that node fails at once), kill_leader_attempt (the leader SIGKILLs itself
    on that attempt, after starting its nodes), wait_nodes (the leader waits for them).
    """

    def train(self, ctx):
        import socket, signal
        from mlrig import PermanentError
        from mlrig.engine import nodes
        p = ctx.params
        role = nodes.node_role(ctx)
        print("job", os.getpid(), flush=True)
        steps, pause = int(p.get("steps", 3)), float(p.get("sleep", 0.05))
        if role is None:
            nnodes = int(p.get("nnodes", 2))
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen(16)
            server.settimeout(0.1)
            endpoint = f"127.0.0.1:{server.getsockname()[1]}"
            ids = nodes.start_nodes(
                ctx, nnodes=nnodes, rendezvous={"endpoint": endpoint},
                start_timeout_s=float(p.get("start_timeout_s", 60)),
            )
            print("nodes", " ".join(ids), flush=True)
            if ctx.job.attempt == int(p.get("kill_leader_attempt", 0)):
                os.kill(os.getpid(), signal.SIGKILL)
            joined = {}
            while len(joined) < nnodes - 1:
                why = nodes.watch_nodes(ctx)
                if why:
                    raise PermanentError(why)
                try:
                    conn, _ = server.accept()
                except socket.timeout:
                    continue
                conn.settimeout(10)
                joined[int(conn.recv(16).decode())] = conn
            for conn in joined.values():
                conn.sendall(b"go")
                conn.close()
            print("joined", sorted(joined), flush=True)
            for step in range(steps):
                time.sleep(pause)
                ctx.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
                why = nodes.watch_nodes(ctx)
                if why:
                    raise PermanentError(why)
            if p.get("wait_nodes", True):
                why = nodes.wait_nodes(ctx, timeout_s=60)
                if why:
                    raise PermanentError(why)
            return TrainResult(metrics={"nodes": float(nnodes)})
        if role.index == int(p.get("fail_node", -1)):
            raise PermanentError(f"node {role.index} broke on purpose")
        host, _, port = role.rendezvous["endpoint"].rpartition(":")
        deadline = time.monotonic() + 60
        while True:
            if nodes.leader_ended(ctx):
                raise PermanentError("the leader ended")
            try:
                sock = socket.create_connection((host, int(port)), timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        sock.sendall(str(role.index).encode())
        sock.settimeout(60)
        assert sock.recv(2) == b"go"
        end = time.monotonic() + steps * pause + float(p.get("node_sleep", 0))
        while time.monotonic() < end:
            time.sleep(0.1)
            if nodes.leader_ended(ctx):
                raise PermanentError("the leader ended")
        print("node done", role.index, flush=True)
        return TrainResult(metrics={"node": float(role.index)})
'''


def install_test_trainers(site: Path) -> Path:
    """Write the distribution under ``site``; put it on PYTHONPATH for job processes."""
    return make_distribution(
        site,
        "mlrig-test-trainers",
        entry_points={
            "mlrig.trainers": {
                "steps": "mlrig_test_trainers:Steps",
                "sleepy": "mlrig_test_trainers:Sleepy",
                "crashing": "mlrig_test_trainers:Crashing",
                "killed-once": "mlrig_test_trainers:KilledOnce",
                "refusing": "mlrig_test_trainers:Refusing",
                "cuda-report": "mlrig_test_trainers:CudaReport",
                "multi-node": "mlrig_test_trainers:MultiNode",
            }
        },
        modules={"mlrig_test_trainers": STEPS_TRAINER},
    )
