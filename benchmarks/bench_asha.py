"""ASHA on a sweep: the training steps a pruned sweep uses, and the best trial it finds,
beside the same sweep without pruning, both run through the job engine by a real worker.

    python benchmarks/bench_asha.py                   # 32 trials, 27 epochs, eta 3
    python benchmarks/bench_asha.py --smoke --json    # CI: 4 trials, 4 epochs

Each sweep trains scikit-learn's ``MLPClassifier`` with the ``sklearn`` trainer epoch by
epoch (``epochs``: one ``partial_fit`` per epoch, the training and validation metrics
logged at ``step = epoch``, a checkpoint, then ``should_stop()``), on sklearn's digits
(1,797 8x8 images, 10 classes; written to a CSV the trainer reads, 20 % held out),
maximising ``val_accuracy``. The space: ``learning_rate_init`` and ``alpha`` on a log
scale, ``hidden_layer_sizes`` (one layer, 8-128 units, log) and ``batch_size`` (16-256,
log). Both sweeps use the ``random`` strategy with the same seed, so they ask for the
same ``--trials`` points whatever the results told: the comparison is of the pruning
alone. ``--parallelism`` trials (2) run at once on a worker of that concurrency (one
thread of this process; every trial is its own job process), on a fresh SQLite platform.

The pruned sweep uses ``{"rule": "asha", "min_resource": 1, "max_resource": EPOCHS,
"reduction_factor": 3}``: rungs at steps 1, 3, 9 (and 27 with ``--epochs`` above 27).
Reported per sweep: the training steps used, that is the epochs the trials trained,
summed (a trial's last logged step + 1: a pruned trial stops after the step at which it
was judged), the best ``val_accuracy``, how many trials were pruned at each rung, and the
wall time. The goal (issue 12): ASHA uses under half the steps of the sweep without
pruning and its best is within 1 % of that sweep's best.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

OBJECTIVE = "val_accuracy"
SPACE: dict[str, Any] = {
    "learning_rate_init": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
    "alpha": {"type": "float", "low": 1e-6, "high": 0.1, "log": True},
    "hidden_layer_sizes": {"type": "int", "low": 8, "high": 128, "log": True},
    "batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
}
GOAL_STEP_RATIO = 0.5
GOAL_BEST_WITHIN = 0.01


def write_digits(path: Path) -> dict[str, str]:
    """sklearn's digits as a CSV (``p0``..``p63``, ``digit``); the trainer's dataset."""
    import pandas as pd
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    frame = pd.DataFrame(x / 16.0, columns=[f"p{j}" for j in range(x.shape[1])])
    frame["digit"] = y
    frame.to_csv(path, index=False)
    return {"uri": str(path), "target": "digit"}


def run_sweep(
    platform: Any, name: str, args: argparse.Namespace, dataset: dict[str, str], pruner: Any
) -> dict[str, Any]:
    """Create the sweep, run a worker until it ends; its figures."""
    from mlrig.engine.worker import Worker
    from mlrig.security import Principal

    actor = Principal(name="bench", role="admin")
    view = platform.sweeps.create(
        name=name,
        trainer="sklearn",
        space=SPACE,
        objective=OBJECTIVE,
        direction="maximize",
        strategy="random",
        seed=args.seed,
        max_trials=args.trials,
        parallelism=args.parallelism,
        pruner=pruner,
        hyperparameters={
            "estimator": "sklearn.neural_network.MLPClassifier",
            "epochs": args.epochs,
        },
        dataset=dataset,
        actor=actor,
    )
    worker = Worker(platform, concurrency=args.parallelism, lease_seconds=30, poll_seconds=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop}, daemon=True)
    started = time.perf_counter()
    thread.start()
    try:
        while platform.sweeps.get(view["id"])["status"] == "running":
            if time.perf_counter() - started > args.timeout:
                msg = f"sweep {name} still running after {args.timeout} s"
                raise SystemExit(msg)
            stop.wait(0.2)
    finally:
        stop.set()
        thread.join(60)
    wall = time.perf_counter() - started
    done = platform.sweeps.get(view["id"])
    if done["status"] != "completed":
        msg = f"sweep {name} ended {done['status']}: {done['status_detail']}"
        raise SystemExit(msg)
    trials = platform.sweeps.trials(view["id"])
    steps, rungs, values = 0, {}, []
    for trial in trials:
        history = platform.experiments.metrics(
            trial["experiment_id"], name=OBJECTIVE, kind="validation", fields=["steps", "values"]
        )["metrics"].get(OBJECTIVE, {"steps": [], "values": []})
        trained = max(history["steps"], default=-1) + 1
        steps += trained
        trial["epochs_trained"] = trained
        if trial["state"] == "pruned":
            rungs[str(trial["rung"])] = rungs.get(str(trial["rung"]), 0) + 1
        if trial["value"] is not None:
            values.append(trial["value"])
    return {
        "sweep": name,
        "pruner": done["pruner"],
        "trials": len(trials),
        "states": done["trials"],
        "steps": steps,
        "max_steps": args.trials * args.epochs,
        "best": done["best"]["value"] if done["best"] else None,
        "best_params": done["best"]["params"] if done["best"] else None,
        "best_number": done["best"]["number"] if done["best"] else None,
        "pruned_by_rung": dict(sorted(rungs.items())),
        "wall_s": round(wall, 2),
        "per_trial": [
            {
                "number": t["number"],
                "state": t["state"],
                "value": t["value"],
                "epochs_trained": t["epochs_trained"],
                "rung": t["rung"],
                "pruned_at_step": t["pruned_at_step"],
            }
            for t in trials
        ],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=27, help="max_resource")
    parser.add_argument("--eta", type=int, default=3, help="ASHA's reduction factor")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per sweep")
    parser.add_argument("--smoke", action="store_true", help="CI: 4 trials of 4 epochs")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    args = parser.parse_args(argv)
    if args.smoke:
        args.trials, args.epochs = 4, 4
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mlrig.testing.fixtures import make_platform

    pruner = {
        "rule": "asha",
        "min_resource": 1,
        "max_resource": args.epochs,
        "reduction_factor": args.eta,
    }
    with tempfile.TemporaryDirectory(prefix="mlrig-bench-asha-") as tmp:
        home = Path(tmp)
        platform = make_platform(home / "mlrig", datasets={"allowed_roots": [str(home)]})
        try:
            dataset = write_digits(home / "digits.csv")
            asha = run_sweep(platform, "asha", args, dataset, pruner)
            full = run_sweep(platform, "no-pruning", args, dataset, None)
        finally:
            platform.close()
    ratio = asha["steps"] / full["steps"]
    gap = (full["best"] - asha["best"]) / full["best"]
    report = {
        "trials": args.trials,
        "epochs": args.epochs,
        "parallelism": args.parallelism,
        "seed": args.seed,
        "sweeps": [asha, full],
        "step_ratio": round(ratio, 4),
        "best_gap": round(gap, 5),
        "goal": (
            f"ASHA under {GOAL_STEP_RATIO:.0%} of the steps, best within "
            f"{GOAL_BEST_WITHIN:.0%} of the sweep without pruning"
        ),
        "goal_met": ratio < GOAL_STEP_RATIO and gap <= GOAL_BEST_WITHIN,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.trials} trials of up to {args.epochs} epochs, {args.parallelism} at once")
        print(f"{'sweep':<11} {'steps':>7} {'best':>8} {'pruned by rung':<24} {'wall':>7}")
        for s in (asha, full):
            rungs = ", ".join(f"r{k}: {v}" for k, v in s["pruned_by_rung"].items()) or "-"
            print(
                f"{s['sweep']:<11} {s['steps']:>4}/{s['max_steps']:<4} {s['best']:>6.4f} "
                f"{rungs:<24} {s['wall_s']:>6.1f}s"
            )
        print(
            f"ASHA: {ratio:.1%} of the steps, best {gap:+.2%} below: "
            f"{'goal met' if report['goal_met'] else 'goal MISSED'}"
        )
    return 1 if args.check and not report["goal_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
