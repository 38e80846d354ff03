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
            }
        },
        modules={"mlrig_test_trainers": STEPS_TRAINER},
    )
