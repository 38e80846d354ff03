"""Orchestration overhead per sweep trial through the queue, and the speed-up of 2 parallel
trials over 1.

    python benchmarks/bench_sweeps.py                    # 30 trials x 3 runs, prefork on/off
    python benchmarks/bench_sweeps.py --trials 10 --runs 1
    python benchmarks/bench_sweeps.py --smoke --json     # tiny: what the CI smoke test runs

Each run is a real sweep (``random`` strategy, SQLite in a temporary folder) of a trainer
with fixed, known work: ``bench-work`` (a tiny distribution this script writes into a
temporary folder put on ``PYTHONPATH``) spins a pure-Python loop of a fixed number of
iterations and reports how long that loop took (``train_s``, measured inside the job
process around the loop only) and the sweep's objective. A ``mlrig worker --max-jobs``
*process* runs the trials, as in production: each trial is a training
experiment on the queue, claimed, launched (forked from the fork server with ``prefork =
true``, a new interpreter with ``false``), trained, completed, told to the strategy by the
worker's sweep driver, which queues the next trial.

Before the sweep, two jobs of the same trainer run on the worker, untimed, and the script
waits until the worker's fork server (prefork; it starts on a worker's second job) has
imported its modules: the worker's and the server's start-up are not part of any trial
(the first jobs of a fresh worker run as plain subprocesses while its server starts;
``forked_trials`` says how many timed trials were forked).

**(a) overhead** (``overhead``): parallelism 1, ``--trials`` trials of about
``--work-ms`` of loop each, ``[executor.local] prefork`` on, then off. Per trial:
wall = time from the completion of trial ``--warmup`` to the completion of the last one,
divided by the trials in between, and overhead = wall - mean ``train_s`` of those trials:
everything a trial costs on top of its own work (the sweep driver telling the strategy
and queueing the next trial, the claim, the launch, the runner's start-up and its reads,
flushing the metrics, completing, the worker seeing the exit). The phases (means, ms)
come from the experiments' events and the trainer's own timestamps: ``start`` (claimed ->
loop started: launch, fork or interpreter and imports, config, the experiment the worker
handed over), ``finish`` (loop ended -> ``completed`` recorded: the job hands its outcome
to the worker and exits, the worker notices the exit and records the completion with the
last metric points and the reproducibility record in one transaction), ``turnaround``
(completed -> the next trial claimed: the sweep driver's step, the claim). Medians over
``--runs`` runs.

**(b) speed-up** (``speedup``): ``--cpu-trials`` trials of about ``--cpu-work-ms`` of
CPU-bound loop each, with parallelism 1 (a worker with 1 slot) and 2 (a worker with 2
slots and 2 CPUs, one per trial), prefork on; speed-up = wall(1) / wall(2), wall from the
first claim to the last completion. The loop is a fixed number of iterations, so the work
is the same whatever runs beside it; on a shared machine other processes take CPU too
(the 1-minute load average is reported).

Goal: overhead under 50 ms per trial (prefork on); ``--check`` exits 1 when it is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

GOAL_MS = 50.0
#: untimed jobs before a sweep: the worker's start, its fork server's start (on the 2nd)
WARM_UP_JOBS = 2
TRAINER = "bench-work"
TRAINER_MODULE = '''"""A trainer with fixed, known work: a pure-Python loop."""

import os
import time

from mlrig.contracts import Trainer, TrainResult


def forked():
    """1.0 when this process was forked by the fork server, else 0.0."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            return float(b"mlrig.engine.launcher" in fh.read())
    except OSError:
        return 0.0


def spin(loops):
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


class Work(Trainer):
    def train(self, ctx):
        loops = int(ctx.params.get("loops", 100000))
        x = float(ctx.params.get("x", 0.5))
        started = time.time()
        begin, cpu_begin = time.perf_counter(), time.process_time()
        spin(loops)
        train_s = time.perf_counter() - begin
        train_cpu_s = time.process_time() - cpu_begin
        ended = time.time()
        ctx.log_metrics({"objective": (x - 0.3) ** 2}, step=0, kind="validation")
        return TrainResult(
            metrics={
                "train_s": train_s,
                "train_cpu_s": train_cpu_s,
                "loop_started": started,
                "loop_ended": ended,
                "forked": forked(),
            }
        )
'''


def install_trainer(site: Path) -> Path:
    """Write the trainer as an installed distribution under ``site``."""
    info = site / "mlrig_bench_work-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mlrig-bench-work\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(f"[mlrig.trainers]\n{TRAINER} = mlrig_bench_work:Work\n")
    (site / "mlrig_bench_work.py").write_text(TRAINER_MODULE)
    return site


def calibrate(work_ms: float) -> int:
    """Iterations of the trainer's loop that take about ``work_ms`` here (best of 3)."""
    namespace: dict[str, Any] = {}
    exec(TRAINER_MODULE.split("class Work")[0], namespace)  # the same spin()
    spin = namespace["spin"]
    probe = 200_000
    best = min(_timed(spin, probe) for _ in range(3))
    return max(1000, int(probe * work_ms / 1000 / best))


def _timed(fn: Any, arg: int) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


def _epoch(at: datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


# --- one sweep on one worker process ---------------------------------------------------


def run_sweep(
    tmp: Path,
    site: Path,
    *,
    trials: int,
    loops: int,
    parallelism: int,
    prefork: bool,
    timeout: float,
) -> dict[str, Any]:
    """Run a sweep of ``trials`` trials on one worker process: the trials' timelines in
    completion order (``trials``) and the CPU samples of the worker's tree (``cpu``)."""
    from sqlalchemy import select

    from mlrig.db.models import ExperimentEvent, TrainingExperiment
    from mlrig.security import Principal
    from mlrig.testing.fixtures import make_platform

    home = tmp / f"run-{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{home / 'mlrig.db'}"
    platform = make_platform(home)
    (home / "mlrig.toml").write_text(
        f'[database]\nurl = "{url}"\n[storage.local]\nroot = "{home / "artifacts"}"\n'
        f"[executor.local]\nprefork = {'true' if prefork else 'false'}\n"
        # the bench trainer needs none of the sklearn trainer's modules
        "preload = []\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p),
    }
    command = [
        sys.executable,
        "-m",
        "mlrig.cli",
        "worker",
        "--concurrency",
        str(parallelism),
        "--cpus",
        str(parallelism),
        "--max-jobs",
        str(trials + WARM_UP_JOBS),  # the warm-up jobs, then the trials
        "--quiet",
    ]
    worker = subprocess.Popen(
        command,
        cwd=home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        # jobs first: the worker's start and (prefork) its fork server's start, untimed
        warm_up(platform, worker, prefork=prefork, deadline=deadline)
        sampler = CpuSampler(worker.pid)
        sampler.start()
        sweep = platform.sweeps.create(
            name="bench",
            trainer=TRAINER,
            space={"x": {"type": "float", "low": 0.0, "high": 1.0}},
            objective="objective",
            actor=Principal(name="bench", role="admin"),
            strategy="random",
            seed=1,
            max_trials=trials,
            parallelism=parallelism,
            hyperparameters={"loops": loops},
            resources={"cpus": 1},
        )
        try:
            worker.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            msg = f"the worker did not finish {trials} trials within {timeout} s"
            raise SystemExit(msg) from None
        sampler.stop()
        if worker.returncode != 0:
            msg = f"the worker failed:\n{worker.stderr.read()[-3000:] if worker.stderr else ''}"
            raise SystemExit(msg)
        view = platform.sweeps.get(sweep["id"])
        if view["status"] != "completed" or view["trials"]["completed"] != trials:
            msg = f"the sweep did not complete its {trials} trials: {view['status_detail']}"
            raise SystemExit(msg)
        with platform.db.session() as session:
            rows = session.execute(
                select(TrainingExperiment.id, TrainingExperiment.configuration).where(
                    TrainingExperiment.parent_id == uuid.UUID(sweep["id"])
                )
            ).all()
            ids = [row.id for row in rows]
            events = session.execute(
                select(
                    ExperimentEvent.experiment_id, ExperimentEvent.new_status, ExperimentEvent.at
                ).where(ExperimentEvent.experiment_id.in_(ids))
            ).all()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        platform.close()
    timeline: dict[uuid.UUID, dict[str, Any]] = {}
    for row in rows:
        metrics = ((row.configuration or {}).get("result") or {}).get("metrics") or {}
        timeline[row.id] = {
            "train_s": metrics["train_s"],
            "train_cpu_s": metrics["train_cpu_s"],
            "loop_started": metrics["loop_started"],
            "loop_ended": metrics["loop_ended"],
            "forked": bool(metrics["forked"]),
        }
    for job_id, new, at in events:
        if new in ("running", "completed"):
            timeline[job_id]["claimed" if new == "running" else "completed"] = _epoch(at)
    return {
        "trials": sorted(timeline.values(), key=lambda t: t["completed"]),
        "cpu": sampler.samples,
    }


class CpuSampler(threading.Thread):
    """Samples the CPU seconds used so far by a process tree (every process of it that is
    alive, with what its ended children used) every ``interval`` seconds."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            at, used = time.time(), tree_cpu(self.root)
            if used is None:  # the worker exited
                return
            self.samples.append((at, *used))

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def tree_cpu(root: int) -> tuple[float, float, float] | None:
    """CPU seconds of the process tree under ``root`` (Linux /proc): the whole tree (every
    live process's utime + stime + cutime + cstime: a live process's cutime/cstime hold
    its children that ended and were reaped), ``root``'s own, and its fork server's own."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    own: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        used[pid] = sum(int(f) for f in fields[11:15]) / tick
        own[pid] = (int(fields[11]) + int(fields[12])) / tick
    if root not in parents:
        return None
    tree, grown = {root}, True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        grown = bool(children)
        tree |= children
    server = next((pid for pid in tree if parents[pid] == root and _is_fork_server(pid)), None)
    return (
        sum(used.get(pid, 0.0) for pid in tree),
        own[root],
        own[server] if server is not None else 0.0,
    )


def _is_fork_server(pid: int) -> bool:
    try:
        return b"mlrig.engine.launcher" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def cpu_at(samples: list[tuple[float, ...]], at: float, column: int = 1) -> float:
    """A sampled CPU figure at time ``at``, interpolated between samples."""
    before = max((s for s in samples if s[0] <= at), default=samples[0])
    after = min((s for s in samples if s[0] >= at), default=samples[-1])
    if after[0] == before[0]:
        return before[column]
    share = (at - before[0]) / (after[0] - before[0])
    return before[column] + (after[column] - before[column]) * share


def untimed(trials: list[dict[str, Any]], warmup: int, prefork: bool) -> int:
    """How many first trials to leave out: ``warmup``, and with prefork every trial up to
    the last one that ran as a plain subprocess (the fork server was still starting)."""
    if not prefork:
        return warmup
    plain = [i for i, t in enumerate(trials) if not t["forked"]]
    return max(warmup, plain[-1] + 1 if plain else 0)


def warm_up(
    platform: Any, worker: subprocess.Popen[str], *, prefork: bool, deadline: float
) -> None:
    """Run ``WARM_UP_JOBS`` jobs of the trainer on ``worker`` and wait until they completed
    and (with prefork) the worker's fork server has imported its modules (a child of the
    worker running ``mlrig.engine.launcher`` whose CPU time stopped growing; a worker
    starts its server on its second job)."""
    for i in range(WARM_UP_JOBS):
        _warm_up_job(platform, worker, f"warm-up-{i}", deadline)
    if not prefork:
        return
    last = None
    while True:
        used = _fork_server_cpu(worker.pid)
        if used is not None and used == last:
            return
        last = used
        if time.monotonic() > deadline:
            raise SystemExit("the worker's fork server did not become idle")
        time.sleep(0.5)


def _warm_up_job(platform: Any, worker: subprocess.Popen[str], name: str, deadline: float) -> None:
    from mlrig.db.models import TrainingExperiment

    with platform.db.session() as session:
        row = TrainingExperiment(
            name=name, trainer=TRAINER, hyperparameters={"loops": 1000}, max_attempts=1
        )
        session.add(row)
        session.flush()
        platform.queue.record_created(session, row)
        job_id = row.id
    platform.queue.enqueue(job_id)
    while True:
        if worker.poll() is not None:
            msg = (
                f"the worker exited early:\n{worker.stderr.read()[-3000:] if worker.stderr else ''}"
            )
            raise SystemExit(msg)
        with platform.db.session() as session:
            if session.get(TrainingExperiment, job_id).status == "completed":
                break
        if time.monotonic() > deadline:
            raise SystemExit("the warm-up job did not complete")
        time.sleep(0.1)


def _fork_server_cpu(parent: int) -> int | None:
    """CPU ticks of ``parent``'s fork server child, ``None`` while there is none."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) != parent:
                continue
            if b"mlrig.engine.launcher" in (entry / "cmdline").read_bytes():
                return int(stat[11]) + int(stat[12])
        except (OSError, IndexError, ValueError):
            continue
    return None


def overhead_of(runs: list[dict[str, Any]], warmup: int, prefork: bool) -> dict[str, Any]:
    """Per-trial wall, work, overhead and phases of parallelism-1 runs (medians of runs)."""
    per_run = []
    for run in runs:
        trials, samples = run["trials"], run["cpu"]
        skip = untimed(trials, warmup, prefork)
        if skip >= len(trials):
            msg = f"every trial ran before the fork server was up; run more than {len(trials)}"
            raise SystemExit(msg)
        steady = trials[skip:]
        wall = (steady[-1]["completed"] - trials[skip - 1]["completed"]) / len(steady)
        train = statistics.fmean(t["train_s"] for t in steady)
        # CPU of the worker, its fork server and the jobs, from the completion of trial
        # `skip` to that of the last but one (the worker exits right after the last)
        cpu_window = steady[:-1]
        begin, end = trials[skip - 1]["completed"], cpu_window[-1]["completed"]
        spent = [
            (cpu_at(samples, end, c) - cpu_at(samples, begin, c)) / len(cpu_window)
            for c in (1, 2, 3)
        ]
        cpu_per_trial = spent[0]
        train_cpu = statistics.fmean(t["train_cpu_s"] for t in cpu_window)
        claims = sorted(trials, key=lambda t: t["claimed"])
        turnaround = [b["claimed"] - a["completed"] for a, b in pairwise(claims)]
        per_run.append(
            {
                "wall_ms": wall * 1000,
                "train_ms": train * 1000,
                "overhead_ms": (wall - train) * 1000,
                "cpu_per_trial_ms": cpu_per_trial * 1000,
                "cpu_overhead_ms": (cpu_per_trial - train_cpu) * 1000,
                "cpu_worker_ms": spent[1] * 1000,
                "cpu_fork_server_ms": spent[2] * 1000,
                "cpu_job_ms": (spent[0] - spent[1] - spent[2]) * 1000,
                "start_ms": statistics.fmean(t["loop_started"] - t["claimed"] for t in steady)
                * 1000,
                "finish_ms": statistics.fmean(t["completed"] - t["loop_ended"] for t in steady)
                * 1000,
                "turnaround_ms": statistics.fmean(turnaround[skip - 1 :]) * 1000,
                "timed": len(steady),
                "forked": sum(t["forked"] for t in steady),
            }
        )
    return {
        key: round(statistics.median(r[key] for r in per_run), 1)
        for key in (
            "wall_ms",
            "train_ms",
            "overhead_ms",
            "cpu_per_trial_ms",
            "cpu_overhead_ms",
            "cpu_worker_ms",
            "cpu_fork_server_ms",
            "cpu_job_ms",
            "start_ms",
            "finish_ms",
            "turnaround_ms",
        )
    } | {
        "runs_overhead_ms": [round(r["overhead_ms"], 1) for r in per_run],
        "timed_trials": [r["timed"] for r in per_run],
        "forked_trials": [r["forked"] for r in per_run],
    }


def wall_of(trials: list[dict[str, Any]]) -> float:
    return max(t["completed"] for t in trials) - min(t["claimed"] for t in trials)


# --- the run --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30, help="trials per overhead run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each setting (medians)")
    parser.add_argument("--warmup", type=int, default=1, help="first trials not timed")
    parser.add_argument("--work-ms", type=float, default=50.0, help="each trial's loop")
    parser.add_argument("--cpu-trials", type=int, default=8, help="trials of the speed-up")
    parser.add_argument("--cpu-work-ms", type=float, default=1500.0, help="their loop")
    parser.add_argument("--timeout", type=float, default=1800, help="per worker, seconds")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the CI smoke test)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    args = parser.parse_args(argv)
    if args.smoke:
        args.trials, args.runs, args.warmup = 4, 1, 1
        args.work_ms, args.cpu_trials, args.cpu_work_ms = 10.0, 2, 200.0
    if args.trials <= args.warmup + 1 or args.warmup < 1 or args.runs < 1 or args.cpu_trials < 2:
        parser.error("need --trials > --warmup + 1, --warmup >= 1, --runs >= 1, --cpu-trials >= 2")
    with tempfile.TemporaryDirectory(prefix="mlrig-bench-sweeps-") as folder:
        tmp = Path(folder)
        site = install_trainer(tmp / "site")
        sys.path.insert(0, str(site))  # this process creates the sweeps: it checks the trainer
        loops = calibrate(args.work_ms)
        cpu_loops = calibrate(args.cpu_work_ms)
        report: dict[str, Any] = {
            "goal_ms": GOAL_MS,
            "trials": args.trials,
            "warmup": args.warmup,
            "runs": args.runs,
            "cpus": len(os.sched_getaffinity(0)),
            "overhead": [],
        }
        for prefork in (True, False):
            runs = [
                run_sweep(
                    tmp,
                    site,
                    trials=args.trials,
                    loops=loops,
                    parallelism=1,
                    prefork=prefork,
                    timeout=args.timeout,
                )
                for _ in range(args.runs)
            ]
            row = {"prefork": prefork, **overhead_of(runs, args.warmup, prefork)}
            row["goal_met"] = row["overhead_ms"] < GOAL_MS
            report["overhead"].append(row)
        walls = {}
        for parallelism in (1, 2):
            result = run_sweep(
                tmp,
                site,
                trials=args.cpu_trials,
                loops=cpu_loops,
                parallelism=parallelism,
                prefork=True,
                timeout=args.timeout,
            )
            trials = result["trials"]
            walls[parallelism] = {
                "wall_s": round(wall_of(trials), 2),
                "train_s_mean": round(statistics.fmean(t["train_s"] for t in trials), 3),
                "train_cpu_s_mean": round(statistics.fmean(t["train_cpu_s"] for t in trials), 3),
            }
        report["speedup"] = {
            "trials": args.cpu_trials,
            "parallelism_1": walls[1],
            "parallelism_2": walls[2],
            "speedup": round(walls[1]["wall_s"] / walls[2]["wall_s"], 2),
        }
        report["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2) if args.json else _table(report))
    on = next(r for r in report["overhead"] if r["prefork"])
    return 1 if args.check and not on["goal_met"] else 0


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"goal: under {report['goal_ms']:.0f} ms of orchestration per sweep trial on top of its "
        f"own work ({report['trials']} trials, first {report['warmup']} untimed, median of "
        f"{report['runs']} runs)"
    ]
    head = (
        f"{'prefork':<8} {'wall/trial':>11} {'work':>8} {'overhead':>9} {'start':>8} "
        f"{'finish':>8} {'turnaround':>11} {'CPU/trial':>10} {'CPU overhead':>13}  goal"
    )
    lines += [head, "-" * len(head)]
    for r in report["overhead"]:
        lines.append(
            f"{'on' if r['prefork'] else 'off':<8} {r['wall_ms']:>11.1f} {r['train_ms']:>8.1f} "
            f"{r['overhead_ms']:>9.1f} {r['start_ms']:>8.1f} {r['finish_ms']:>8.1f} "
            f"{r['turnaround_ms']:>11.1f} {r['cpu_per_trial_ms']:>10.1f} "
            f"{r['cpu_overhead_ms']:>13.1f}  {'ok' if r['goal_met'] else 'MISSED'}"
        )
    s = report["speedup"]
    lines.append(
        "(all in ms; CPU: the worker's, its fork server's and the jobs' CPU time per trial, "
        "and that minus the loop's own)"
    )
    lines.append(
        f"speed-up, {s['trials']} CPU-bound trials of {s['parallelism_1']['train_s_mean']:.2f} s: "
        f"parallelism 1 {s['parallelism_1']['wall_s']} s, 2 {s['parallelism_2']['wall_s']} s "
        f"-> x{s['speedup']} on {report['cpus']} CPUs (load average {report['load_avg_1m']})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
