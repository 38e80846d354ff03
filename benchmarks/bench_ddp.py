"""The ``torch-ddp`` trainer against plain ``torchrun`` on the same training, and 1 vs 2
process throughput on CPU.

    python benchmarks/bench_ddp.py                    # ~60 s runs, 3 runs, nproc 2 vs 1
    python benchmarks/bench_ddp.py --epochs 12 --runs 3     # ~30 s runs
    python benchmarks/bench_ddp.py --smoke --json     # CI: 2 tiny epochs, 1 run

One user module (written into a temporary folder): an MLP (``--features`` -> ``--hidden``
-> ``--hidden`` -> 1, Tanh) on synthetic regression data (``--samples`` rows from a seeded
generator), with its ``loss`` (mean squared error). The run length is set by ``--epochs``
(the default is about 60 s of plain ``torchrun`` at ``--nproc 2`` on the 2-core
development machine); ``--batch-size`` rows per rank per step, Adam, ``lr`` 1e-3.

**(a) through mlrig**: a training experiment with trainer ``torch-ddp``
(``nproc_per_node = --nproc``, ``resources = {"cpus": 2}``) on a fresh platform home
(SQLite, local artifacts, in a temporary folder), run by a real worker (in this process,
one slot, CPUs 0-1), which launches the job process, which launches ``python -m
torch.distributed.run`` on ``mlrig.plugins._ddp_worker``: wall = from the ``create``
call to the experiment's recorded ``completed`` event (the script polls every 0.5 s), so
it includes the queue, the job process's start, torchrun, the ranks' training with the
relay (metrics per step, checkpoints at each epoch's end), the final model's registration
(native artifact + ONNX export with its parity check). Before the timed runs,
``--warmup`` tiny untimed jobs start the worker's fork server and fill the page cache.

**(b) plain torchrun**: ``python -m torch.distributed.run --standalone --nproc-per-node
N`` on a standalone DDP script (``ddp_plain.py``, written beside the module) that imports
the same module and does the same work: ``gloo``, the same seed, ``DistributedSampler``
(shuffled, same seed), ``DataLoader`` of the same batch size, Adam, the same epochs, and
rank 0 saves the final state dict. Wall = the launcher process's.

Both sides run with ``OMP_NUM_THREADS = 2 // N`` (what the trainer picks for 2 CPUs).
mlrig and plain runs alternate; **overhead** = (a - b) / b per pair, median of ``--runs``
pairs (the ratio of the median walls too). **Throughput**: training samples per second
over all ranks, measured inside the ranks' loop (the trainer's ``samples_per_s`` metric;
the same count in the plain script), at ``nproc`` 1 (``--throughput-runs`` pairs) and
``--nproc`` (the overhead runs); speed-up = samples/s(N) / samples/s(1).

Goal (issue 13): overhead under 5 % of the wall time on a 60 s run; ``--check`` exits 1
when it is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

GOAL = 0.05
CPUS = 2
MODULE = '''"""The benchmark's user module: an MLP on synthetic regression data."""

import torch
from torch import nn
from torch.utils.data import TensorDataset


def build_model(params):
    features, hidden = int(params["features"]), int(params["hidden"])
    return nn.Sequential(
        nn.Linear(features, hidden), nn.Tanh(),
        nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, 1),
    )


def build_dataset(params):
    g = torch.Generator().manual_seed(0)
    features = int(params["features"])
    x = torch.randn(int(params["samples"]), features, generator=g)
    w = torch.randn(features, 1, generator=g)
    y = torch.tanh(x @ w).squeeze(1) + 0.05 * torch.randn(len(x), generator=g)
    return TensorDataset(x, y)


def loss(output, target):
    return nn.functional.mse_loss(output.squeeze(1), target)
'''
PLAIN = '''"""Plain DDP on the benchmark's module: what a user writes for torchrun."""

import importlib.util
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler


def main(module_path, spec_path, out_dir):
    spec = json.loads(open(spec_path).read())
    loaded = importlib.util.spec_from_file_location("bench_user", module_path)
    user = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(user)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    params, seed = spec["params"], spec["seed"]
    torch.manual_seed(seed)
    model = user.build_model(params)
    data = user.build_dataset(params)
    torch.manual_seed(seed + rank)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    ddp = DDP(model)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(data, batch_size=spec["batch_size"], sampler=sampler)
    began, began_at, samples = time.monotonic(), time.time(), 0
    for epoch in range(spec["epochs"]):
        sampler.set_epoch(epoch)
        ddp.train()
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = user.loss(ddp(x), y)
            loss.backward()
            optimizer.step()
            samples += len(x)
    train_s = time.monotonic() - began
    ended_at = time.time()
    if rank == 0:
        torch.save(model.state_dict(), os.path.join(out_dir, "final.pt"))
        result = {"samples_per_s": samples * world / train_s, "train_s": train_s,
                  "loss": float(loss.detach()), "began_at": began_at, "ended_at": ended_at}
        with open(os.path.join(out_dir, "result.json"), "w") as fh:
            json.dump(result, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
'''


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


class Bench:
    """The module, the plain script, the platform and its worker, in ``folder``."""

    def __init__(self, folder: Path, args: argparse.Namespace) -> None:
        from mlrig.engine.allocator import Capacity
        from mlrig.engine.worker import Worker
        from mlrig.security import Principal
        from mlrig.testing.fixtures import make_platform

        self.folder = folder
        self.args = args
        self.module = folder / "bench_mlp.py"
        self.module.write_text(MODULE)
        self.plain = folder / "ddp_plain.py"
        self.plain.write_text(PLAIN)
        self.actor = Principal(name="bench", role="admin")
        self.platform = make_platform(folder / "mlrig")
        self.worker = Worker(
            self.platform,
            concurrency=1,
            capacity=Capacity(cpus=tuple(range(CPUS)), gpus=()),
            lease_seconds=30,
            poll_seconds=0.05,
            workdir=folder / "work",
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self.worker.run, kwargs={"stop": self.stop}, daemon=True
        )
        self.thread.start()
        self.count = 0

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        self.platform.close()

    def params(self, *, samples: int | None = None) -> dict[str, Any]:
        a = self.args
        return {"features": a.features, "hidden": a.hidden, "samples": samples or a.samples}

    def run_mlrig(self, nproc: int, epochs: int, *, samples: int | None = None) -> dict[str, Any]:
        """One experiment through the worker: wall from create to completed, and the
        ranks' samples/s (the trainer's ``samples_per_s`` metric)."""
        self.count += 1
        hyper = {
            "module": str(self.module),
            "nproc_per_node": nproc,
            "epochs": epochs,
            "batch_size": self.args.batch_size,
            "lr": 1e-3,
            "max_restarts": 0,
            **self.params(samples=samples),
        }
        os.environ["OMP_NUM_THREADS"] = str(max(1, CPUS // nproc))
        started, submitted = time.perf_counter(), time.time()
        view = self.platform.experiments.create(
            name=f"ddp-bench-{self.count}",
            trainer="torch-ddp",
            actor=self.actor,
            hyperparameters=hyper,
            resources={"cpus": CPUS},
            max_attempts=1,
            seed=7,
            start=True,
        )
        while True:
            status = self.platform.experiments.get(view["id"])["status"]
            if status in ("completed", "failed", "cancelled"):
                break
            if time.perf_counter() - started > self.args.timeout:
                msg = f"experiment {view['id']} still {status} after {self.args.timeout} s"
                raise SystemExit(msg)
            time.sleep(0.5)  # seldom: this process shares the CPUs with the run
        done = self.platform.experiments.get(view["id"])
        if status != "completed":
            raise SystemExit(f"the mlrig run ended {status}: {done.get('status_detail')}")
        history = self.platform.experiments.metrics(
            view["id"], name="samples_per_s", fields=["steps", "values"]
        )["metrics"]["samples_per_s"]
        rate = history["values"][-1]
        train_s = (samples or self.args.samples) * epochs / rate
        at = {e["new"]: _epoch(e["at"]) for e in done["events"]}
        wall = at["completed"] - submitted  # the recorded completion, not this poll
        final = self.folder / "work" / str(view["id"]) / "attempt-1" / "ddp" / "final.pt"
        phases = {  # submit -> claimed, the ranks' loop, the loop's end -> completed
            "queue_s": round(at["running"] - submitted, 3),
            "train_s": round(train_s, 3),
            "end_s": round(at["completed"] - final.stat().st_mtime, 3),
        }
        phases["start_s"] = round(wall - train_s - phases["queue_s"] - phases["end_s"], 3)
        timeline = mlrig_timeline(final.parent, submitted, at)
        return {"wall_s": round(wall, 3), "samples_per_s": round(rate, 1), "phases": phases,
                "timeline_s": timeline}  # fmt: skip

    def run_plain(self, nproc: int, epochs: int) -> dict[str, Any]:
        """``torchrun --standalone`` on the plain script: the launcher's wall and the
        samples/s rank 0 measured."""
        self.count += 1
        out = self.folder / f"plain-{self.count}"
        out.mkdir()
        spec = {"params": self.params(), "seed": 7, "lr": 1e-3, "epochs": epochs,
                "batch_size": self.args.batch_size}  # fmt: skip
        (out / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, CPUS // nproc))}
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}",
            str(self.plain), str(self.module), str(out / "spec.json"), str(out),
        ]  # fmt: skip
        started, launched = time.perf_counter(), time.time()
        proc = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=self.args.timeout,
            check=False,
            start_new_session=True,
        )
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"plain torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        result = json.loads((out / "result.json").read_text())
        rate = result["samples_per_s"]
        train_s = self.args.samples * epochs / rate
        phases = {"train_s": round(train_s, 3), "rest_s": round(wall - train_s, 3)}
        timeline = {
            "start_s": round(result["began_at"] - launched, 3),
            "train_s": round(result["ended_at"] - result["began_at"], 3),
            "end_s": round(launched + wall - result["ended_at"], 3),
        }
        return {"wall_s": round(wall, 3), "samples_per_s": round(rate, 1), "phases": phases,
                "timeline_s": timeline}  # fmt: skip


#: the marks of one mlrig run, in order: (name, where it comes from)
MARKS = ("submitted", "claimed", "job_started", "torchrun_started", "first_step", "last_step",
         "packaged", "ranks_exited", "registered", "completed")  # fmt: skip


def mlrig_timeline(run: Path, submitted: float, at: dict[str, float]) -> dict[str, float]:
    """Seconds between the marks of one run (``MARKS``; a mark that run lacks is skipped):
    the engine's events (``running`` = claimed, ``completed``), the job process's
    ``timeline.json``, the lead rank's first step (``restarts.json``) and last step
    (``final.pt`` written) and its model package (``package/mlrig-model.json`` written)."""
    stamps: dict[str, float] = {"submitted": submitted, "claimed": at["running"]}
    with contextlib.suppress(OSError, ValueError):
        stamps.update(json.loads((run / "timeline.json").read_text()))
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        stamps["first_step"] = json.loads((run / "restarts.json").read_text())["starts"][0]["at"]
    stamps["last_step"] = (run / "final.pt").stat().st_mtime
    with contextlib.suppress(OSError):
        stamps["packaged"] = (run / "package" / "mlrig-model.json").stat().st_mtime
    stamps["completed"] = at["completed"]
    present = [m for m in MARKS if m in stamps]
    return {f"{a}->{b}": round(stamps[b] - stamps[a], 3) for a, b in itertools.pairwise(present)}


def _epoch(text: str) -> float:
    at = datetime.fromisoformat(text)
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


def median(values: list[float], digits: int = 3) -> float:
    return round(statistics.median(values), digits)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=24, help="sets the run length")
    parser.add_argument("--samples", type=int, default=65536, help="training rows")
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64, help="rows per rank per step")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the overhead runs")
    parser.add_argument("--runs", type=int, default=3, help="mlrig/plain pairs at --nproc")
    parser.add_argument("--throughput-runs", type=int, default=1, help="pairs at nproc 1 (0: none)")
    parser.add_argument("--warmup", type=int, default=1, help="tiny untimed mlrig jobs")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--smoke", action="store_true", help="CI: 2 epochs of 512 rows, 1 run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.samples, args.hidden, args.runs = 2, 512, 32, 1
        args.throughput_runs, args.warmup = 1, 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="mlrig-bench-ddp-") as tmp:
        bench = Bench(Path(tmp), args)
        try:
            for _ in range(args.warmup):
                bench.run_mlrig(args.nproc, 1, samples=256)
            pairs = []
            for _ in range(args.runs):
                pairs.append((bench.run_mlrig(args.nproc, args.epochs),
                              bench.run_plain(args.nproc, args.epochs)))  # fmt: skip
            singles = []
            for _ in range(args.throughput_runs):
                singles.append((bench.run_mlrig(1, args.epochs), bench.run_plain(1, args.epochs)))
        finally:
            bench.close()
    overheads = [(m["wall_s"] - p["wall_s"]) / p["wall_s"] for m, p in pairs]
    mlrig_wall = median([m["wall_s"] for m, _ in pairs])
    plain_wall = median([p["wall_s"] for _, p in pairs])
    overhead = median(overheads, 4)

    def rates(rows: list[tuple[dict[str, Any], dict[str, Any]]], nproc: int) -> dict[str, Any]:
        return {
            "nproc": nproc,
            "mlrig_samples_per_s": median([m["samples_per_s"] for m, _ in rows], 1),
            "plain_samples_per_s": median([p["samples_per_s"] for _, p in rows], 1),
            "mlrig_wall_s": median([m["wall_s"] for m, _ in rows]),
            "plain_wall_s": median([p["wall_s"] for _, p in rows]),
        }

    many = rates(pairs, args.nproc)
    one = rates(singles, 1) if singles else None

    def timelines(side: int) -> dict[str, float]:
        keys = [
            k
            for k in pairs[0][side]["timeline_s"]
            if all(k in r[side]["timeline_s"] for r in pairs)
        ]
        return {k: median([r[side]["timeline_s"][k] for r in pairs]) for k in keys}

    def fixed(side: int) -> list[float]:  # wall minus the ranks' loop (first -> last step)
        train = "first_step->last_step" if side == 0 else "train_s"
        return [round(r[side]["wall_s"] - r[side]["timeline_s"][train], 3) for r in pairs]

    speedups = (
        {
            "speedup_mlrig": round(many["mlrig_samples_per_s"] / one["mlrig_samples_per_s"], 3),
            "speedup_plain": round(many["plain_samples_per_s"] / one["plain_samples_per_s"], 3),
        }
        if one
        else {}
    )
    report = {
        "epochs": args.epochs,
        "samples": args.samples,
        "model": f"MLP {args.features}-{args.hidden}-{args.hidden}-1",
        "batch_size": args.batch_size,
        "nproc": args.nproc,
        "runs": args.runs,
        "cpus": CPUS,
        "load_average": [load_before, load_average()],
        "overhead": {
            "mlrig_wall_s": [m["wall_s"] for m, _ in pairs],
            "plain_wall_s": [p["wall_s"] for _, p in pairs],
            "per_run": [round(o, 4) for o in overheads],
            "mlrig_wall_s_median": mlrig_wall,
            "plain_wall_s_median": plain_wall,
            "median": overhead,
            "of_medians": round((mlrig_wall - plain_wall) / plain_wall, 4),
            "seconds": round(mlrig_wall - plain_wall, 3),
            "mlrig_phases_s": {
                k: median([m["phases"][k] for m, _ in pairs]) for k in pairs[0][0]["phases"]
            },
            "plain_phases_s": {
                k: median([p["phases"][k] for _, p in pairs]) for k in pairs[0][1]["phases"]
            },
            # the marks of each run (mlrig_timeline) and the fixed cost: wall - the loop
            "mlrig_timeline_s": timelines(0),
            "plain_timeline_s": timelines(1),
            "mlrig_fixed_s": fixed(0),
            "plain_fixed_s": fixed(1),
            "extra_fixed_s_median": median(
                [m - p for m, p in zip(fixed(0), fixed(1), strict=True)]
            ),
        },
        "throughput": {
            "nproc_1": one,
            f"nproc_{args.nproc}": many,
            **speedups,
        },
        "goal": f"torch-ddp wall under {GOAL:.0%} above plain torchrun's on a 60 s run",
        "goal_met": overhead < GOAL,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        o, t = report["overhead"], report["throughput"]
        print(
            f"{report['model']}, {args.samples} rows, {args.epochs} epochs, batches of "
            f"{args.batch_size} per rank, load average {load_before} -> {load_average()}"
        )
        print(f"nproc {args.nproc}, {args.runs} run(s): wall mlrig / plain torchrun, overhead")
        for m, p, ov in zip(o["mlrig_wall_s"], o["plain_wall_s"], o["per_run"], strict=True):
            print(f"  {m:8.2f} s  {p:8.2f} s  {ov:+.1%}")
        print(
            f"median: {mlrig_wall:.2f} s vs {plain_wall:.2f} s, overhead {overhead:+.1%} "
            f"({o['seconds']:+.2f} s): {'goal met' if report['goal_met'] else 'goal MISSED'}"
        )
        mp, pp = o["mlrig_phases_s"], o["plain_phases_s"]
        print(
            f"where the time goes (medians): mlrig queue {mp['queue_s']:.2f} s, start "
            f"{mp['start_s']:.2f} s, training {mp['train_s']:.2f} s, end {mp['end_s']:.2f} s; "
            f"plain training {pp['train_s']:.2f} s, start+end {pp['rest_s']:.2f} s"
        )
        print("mlrig timeline (medians): " + ", ".join(
            f"{k} {v:.2f} s" for k, v in o["mlrig_timeline_s"].items()))  # fmt: skip
        print("plain timeline (medians): " + ", ".join(
            f"{k} {v:.2f} s" for k, v in o["plain_timeline_s"].items()))  # fmt: skip
        print(
            f"fixed cost (wall - loop): mlrig {o['mlrig_fixed_s']} s, plain {o['plain_fixed_s']}"
            f" s; mlrig's extra: {o['extra_fixed_s_median']:+.2f} s (median)"
        )
        if one is None:
            return 1 if args.check and not report["goal_met"] else 0
        print(f"{'samples/s':<10} {'nproc 1':>10} {f'nproc {args.nproc}':>10} {'speed-up':>9}")
        for side in ("mlrig", "plain"):
            a, b = one[f"{side}_samples_per_s"], many[f"{side}_samples_per_s"]
            print(f"{side:<10} {a:>10.0f} {b:>10.0f} {t[f'speedup_{side}']:>8.2f}x")
    return 1 if args.check and not report["goal_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
