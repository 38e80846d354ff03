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
            }
        },
        modules={"mlrig_test_trainers": STEPS_TRAINER},
    )
