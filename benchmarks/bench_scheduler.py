"""Scheduler overhead per job: the queue alone, then real workers running no-op jobs.

    python benchmarks/bench_scheduler.py               # 1000 jobs, 4 workers, SQLite and PG
    python benchmarks/bench_scheduler.py --databases sqlite --jobs 200
    python benchmarks/bench_scheduler.py --jobs 5 --json

For each database (an SQLite file in a temporary folder; a fresh PostgreSQL database on
``--postgres-url``, created and dropped by this script), in a fresh database each:

**(a) queue** (``queue``): ``--jobs`` experiments are created (untimed), then the
``JobQueue`` calls a worker makes for a job are timed directly, in this process, with no
job processes: ``enqueue`` of every job, then ``claim`` -> ``complete`` one job after
another until the queue is empty. Each call is one transaction that records the state
change (an ``experiment_events`` row) and fires ``mlrig_experiment_state_changed``.
The figure to compare with the goal is ``per_job_ms``: (all enqueue + claim + complete
time) / jobs. One ``heartbeat`` per job is timed too and reported apart (a job gets one
per second of running). Then (``queue_concurrent``) the same cycle with ``--workers``
threads claiming and completing at once, as ``--workers`` workers would: per job, the
wall time / jobs.

**(b) end to end** (``end_to_end``): ``--jobs`` experiments with a no-op trainer (a tiny
distribution this script writes into a temporary folder put on ``PYTHONPATH``; its
entry point is ``bench-noop``) are queued, then ``--workers`` ``mlrig worker
--concurrency 1 --exit-when-idle`` *processes* run them all; each job runs, as always,
in its own process (``python -m mlrig.engine.runner``). Reported: wall time per job
(first claim to last completion / jobs), CPU seconds per job (all workers and job
processes), and the mean of each phase of a job's life, from its events and from
timestamps the trainer records: launch (claimed -> job process started), runner
start-up (process started -> trainer called: interpreter, imports, config, loading the
experiment), finish (trainer returned -> ``completed`` recorded: flush, reproducibility
record, ``complete``), and turnaround (completed -> the same worker's next claim:
process exit, the worker noticing it, its next ``claim``). These are dominated by
starting a Python process per job, which is no queue overhead; compare (a) with the
goal, not (b).

Goal: under 20 ms of scheduler overhead per job, i.e. (a) ``per_job_ms``; ``--check``
exits 1 when it is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

from _common import (  # benchmarks/_common.py
    add_database_options,
    chosen_databases,
    fresh_database,
    server_version,
    summary,
)

GOAL_MS = 20.0
TRAINER = "bench-noop"
TRAINER_MODULE = '''"""A trainer that does nothing but say when its process started and ran."""

import os
import time

from mlrig.contracts import Trainer, TrainResult


def _process_started():
    """Wall-clock time this process started (Linux /proc; 10 ms resolution)."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/stat") as fh:
        started_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    return time.time() - (uptime - started_ticks / ticks)


class Noop(Trainer):
    def train(self, ctx):
        return TrainResult(metrics={"process_started": _process_started(),
                                    "trainer_called": time.time()})
'''


# --- databases and jobs ---------------------------------------------------------------


def create_jobs(platform: Any, count: int, prefix: str) -> list[uuid.UUID]:
    """``count`` experiments in state ``created`` (straight through the ORM, as the
    service would leave them; the trainer is not looked up)."""
    from mlrig.db.models import TrainingExperiment

    with platform.db.session() as session:
        rows = [
            TrainingExperiment(
                name=f"{prefix}-{i:05d}",
                trainer=TRAINER,
                max_attempts=1,
                hyperparameters={},
                checkpoint_interval_s=0,
                resources={"cpus": 1},
            )
            for i in range(count)
        ]
        session.add_all(rows)
        session.flush()
        for row in rows:
            platform.queue.record_created(session, row)
        return [row.id for row in rows]


def _ms(call: Callable[[], Any], into: list[float]) -> Any:
    start = time.perf_counter()
    result = call()
    into.append((time.perf_counter() - start) * 1000)
    return result


# --- (a) the queue alone --------------------------------------------------------------


def queue_overhead(platform: Any, jobs: int) -> dict[str, Any]:
    """enqueue, then claim -> heartbeat -> complete, one job at a time, timed per call."""
    queue = platform.queue
    ids = create_jobs(platform, jobs, "queue")
    enqueue: list[float] = []
    claim: list[float] = []
    heartbeat: list[float] = []
    complete: list[float] = []
    for job_id in ids:
        _ms(lambda job_id=job_id: queue.enqueue(job_id), enqueue)
    done = 0
    while done < jobs:
        job = _ms(lambda: queue.claim("bench-a", lease_seconds=30), claim)
        if job is None:
            msg = f"the queue ran dry after {done} of {jobs} jobs"
            raise SystemExit(msg)
        _ms(lambda job=job: queue.heartbeat(job, lease_seconds=30), heartbeat)
        if not _ms(lambda job=job: queue.complete(job, result={"metrics": {}}), complete):
            msg = f"complete() refused {job.name}"
            raise SystemExit(msg)
        done += 1
    total = sum(enqueue) + sum(claim) + sum(complete)
    return {
        "jobs": jobs,
        "enqueue": summary(enqueue),
        "claim": summary(claim),
        "complete": summary(complete),
        "heartbeat": summary(heartbeat),
        "per_job_ms": round(total / jobs, 2),
        "goal_met": total / jobs < GOAL_MS,
    }


def queue_concurrent(platform: Any, jobs: int, workers: int) -> dict[str, Any]:
    """``workers`` threads claim and complete ``jobs`` queued jobs at once."""
    queue = platform.queue
    ids = create_jobs(platform, jobs, "threads")
    for job_id in ids:
        queue.enqueue(job_id)
    counts = [0] * workers
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            while (job := queue.claim(f"bench-t{index}", lease_seconds=30)) is not None:
                queue.complete(job, result={"metrics": {}})
                counts[index] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    seconds = time.perf_counter() - start
    if errors or sum(counts) != jobs:
        msg = f"{sum(counts)} of {jobs} jobs done by the threads; errors: {errors[:3]!r}"
        raise SystemExit(msg)
    return {
        "jobs": jobs,
        "threads": workers,
        "seconds": round(seconds, 2),
        "per_job_ms": round(seconds * 1000 / jobs, 2),
        "jobs_per_thread": counts,
    }


# --- (b) real workers -----------------------------------------------------------------


def install_trainer(site: Path) -> Path:
    """Write the no-op trainer as an installed distribution under ``site``."""
    info = site / "mlrig_bench_trainers-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mlrig-bench-trainers\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(
        f"[mlrig.trainers]\n{TRAINER} = mlrig_bench_trainers:Noop\n"
    )
    (site / "mlrig_bench_trainers.py").write_text(TRAINER_MODULE)
    return site


def _epoch(at: datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


def _python_start_ms(runs: int = 5) -> float:
    """Median wall time of ``python -c pass``: the floor of any job process."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def _start_workers(count: int, home: Path, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    command = [
        sys.executable,
        "-m",
        "mlrig.cli",
        "worker",
        "--concurrency",
        "1",
        "--exit-when-idle",
        "--quiet",
    ]
    return [
        subprocess.Popen(
            command,
            cwd=home,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for _ in range(count)
    ]


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for proc in workers:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for proc in workers:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def end_to_end(
    platform: Any, url: str, home: Path, site: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Run ``args.jobs`` no-op jobs on ``args.workers`` worker processes."""
    from sqlalchemy import select

    from mlrig.db.models import ExperimentEvent, TrainingExperiment

    (home / "mlrig.toml").write_text(
        f'[database]\nurl = "{url}"\n[storage.local]\nroot = "{home / "artifacts"}"\n'
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p),
    }
    ids = create_jobs(platform, args.jobs, "e2e")
    for job_id in ids:
        platform.queue.enqueue(job_id)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    workers = _start_workers(args.workers, home, env)
    try:
        for proc in workers:
            proc.wait(max(1.0, args.timeout - (time.perf_counter() - start)))
    except subprocess.TimeoutExpired:
        msg = f"the workers did not finish {args.jobs} jobs within {args.timeout} s"
        raise SystemExit(msg) from None
    finally:
        _stop(workers)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    failed = [
        p.stderr.read().decode(errors="replace")[-2000:]
        for p in workers
        if p.returncode != 0 and p.stderr
    ]
    if failed:
        msg = f"a worker failed:\n{failed[0]}"
        raise SystemExit(msg)
    with platform.db.session() as session:
        rows = session.execute(
            select(
                TrainingExperiment.id, TrainingExperiment.status, TrainingExperiment.configuration
            ).where(TrainingExperiment.id.in_(ids))
        ).all()
        events = session.execute(
            select(
                ExperimentEvent.experiment_id,
                ExperimentEvent.new_status,
                ExperimentEvent.detail,
                ExperimentEvent.at,
            ).where(ExperimentEvent.experiment_id.in_(ids))
        ).all()
    status = {row.id: row.status for row in rows}
    if sorted(set(status.values())) != ["completed"]:
        bad = {k: v for k, v in status.items() if v != "completed"}
        msg = f"{len(bad)} jobs did not complete: {list(bad.items())[:5]}"
        raise SystemExit(msg)
    return {
        "jobs": args.jobs,
        "workers": args.workers,
        "worker_kind": "mlrig worker processes (--concurrency 1), one process per job",
        "wall_s": round(wall, 2),
        "cpu_s_per_job": round(
            (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / args.jobs, 3
        ),
        "python_start_ms": _python_start_ms(),
        **phases(rows, events, args.jobs),
    }


def phases(rows: list[Any], events: list[Any], jobs: int) -> dict[str, Any]:
    """Per-job phases from the events and the trainer's own timestamps."""
    timeline: dict[uuid.UUID, dict[str, Any]] = {}
    for job_id, new, detail, at in events:
        entry = timeline.setdefault(job_id, {})
        if new == "running":
            if "claimed" in entry:
                msg = f"job {job_id} was claimed twice"
                raise SystemExit(msg)
            entry["claimed"] = _epoch(at)
            entry["owner"] = (detail or "").rsplit(" on ", 1)[-1]
        elif new in ("queued", "completed"):
            entry[new] = _epoch(at)
    for row in rows:
        found = ((row.configuration or {}).get("result") or {}).get("metrics") or {}
        timeline[row.id]["process_started"] = found["process_started"]
        timeline[row.id]["trainer_called"] = found["trainer_called"]
    spans: dict[str, list[float]] = {
        "queue_wait": [],
        "launch": [],
        "runner_startup": [],
        "finish": [],
        "turnaround": [],
        "claimed_to_completed": [],
    }
    for t in timeline.values():
        spans["queue_wait"].append(t["claimed"] - t["queued"])
        spans["launch"].append(t["process_started"] - t["claimed"])
        spans["runner_startup"].append(t["trainer_called"] - t["process_started"])
        spans["finish"].append(t["completed"] - t["trainer_called"])
        spans["claimed_to_completed"].append(t["completed"] - t["claimed"])
    by_owner: dict[str, list[dict[str, Any]]] = {}
    for t in timeline.values():
        by_owner.setdefault(t["owner"], []).append(t)
    for owned in by_owner.values():
        owned.sort(key=lambda t: t["claimed"])
        spans["turnaround"] += [b["claimed"] - a["completed"] for a, b in pairwise(owned)]
    first = min(t["claimed"] for t in timeline.values())
    last = max(t["completed"] for t in timeline.values())
    return {
        "first_claim_to_last_completion_s": round(last - first, 2),
        "wall_per_job_ms": round((last - first) * 1000 / jobs, 1),
        "phases_mean_ms": {
            k: round(statistics.fmean(v) * 1000, 1) if v else None for k, v in spans.items()
        },
        "phases_p50_ms": {
            k: round(statistics.median(v) * 1000, 1) if v else None for k, v in spans.items()
        },
    }


# --- the run --------------------------------------------------------------------------


def run_database(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from mlrig.testing.fixtures import make_platform

    report: dict[str, Any] = {"database": kind}
    with fresh_database(kind, tmp / f"{kind}-queue", args.postgres_url) as url:
        platform = make_platform(tmp / f"{kind}-queue" / "home", database={"url": url})
        try:
            report["server"] = server_version(platform.db)
            report["queue"] = queue_overhead(platform, args.jobs)
            report["queue_concurrent"] = queue_concurrent(platform, args.jobs, args.workers)
        finally:
            platform.close()
    report["load_avg_1m"] = round(os.getloadavg()[0], 2)  # the machine is shared
    if args.no_processes:
        return report
    site = tmp / "site" if (tmp / "site").exists() else install_trainer(tmp / "site")
    with fresh_database(kind, tmp / f"{kind}-e2e", args.postgres_url) as url:
        home = tmp / f"{kind}-e2e" / "home"
        platform = make_platform(home, database={"url": url})
        try:
            report["end_to_end"] = end_to_end(platform, url, home, site, args)
        finally:
            platform.close()
    return report


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"goal: scheduler overhead under {report['goal_ms']:.0f} ms per job = (a) "
        "enqueue + claim + complete per job"
    ]
    head = (
        f"{'database':<11} {'jobs':>5} {'enqueue p50':>12} {'claim p50':>10} "
        f"{'complete p50':>13} {'heartbeat p50':>14} {'(a) per job':>12} "
        f"{'threads/job':>12}  goal"
    )
    lines += [head, "-" * len(head)]
    for r in report["databases"]:
        q, c = r["queue"], r["queue_concurrent"]
        lines.append(
            f"{r['database']:<11} {q['jobs']:>5} {q['enqueue']['p50_ms']:>12.2f} "
            f"{q['claim']['p50_ms']:>10.2f} {q['complete']['p50_ms']:>13.2f} "
            f"{q['heartbeat']['p50_ms']:>14.2f} {q['per_job_ms']:>12.2f} "
            f"{c['per_job_ms']:>12.2f}  {'ok' if q['goal_met'] else 'MISSED'}"
        )
    lines.append(
        f"(all in ms; threads/job: wall per job with {report['workers']} threads claiming at once)"
    )
    for r in report["databases"]:
        e = r.get("end_to_end")
        if not e:
            continue
        mean = e["phases_mean_ms"]
        lines.append(
            f"(b) {r['database']}: {e['jobs']} no-op jobs on {e['workers']} worker processes: "
            f"{e['wall_per_job_ms']} ms wall per job, {e['cpu_s_per_job'] * 1000:.0f} ms CPU "
            f"per job; mean per job: launch {mean['launch']} ms, runner start-up "
            f"{mean['runner_startup']} ms, finish {mean['finish']} ms, turnaround "
            f"{mean['turnaround']} ms (python -c pass: {e['python_start_ms']} ms)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in each part")
    parser.add_argument("--workers", type=int, default=4, help="workers (threads in (a))")
    add_database_options(parser)
    parser.add_argument(
        "--no-processes",
        action="store_true",
        help="only (a), the queue; no worker or job processes",
    )
    parser.add_argument(
        "--timeout", type=float, default=3600, help="longest the workers may take in (b), seconds"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    args = parser.parse_args(argv)
    kinds = chosen_databases(parser, args)
    if args.jobs < 1 or args.workers < 1:
        parser.error("--jobs and --workers must be at least 1")
    with tempfile.TemporaryDirectory(prefix="mlrig-bench-") as tmp:
        report = {
            "goal_ms": GOAL_MS,
            "workers": args.workers,
            "databases": [run_database(kind, args, Path(tmp)) for kind in kinds],
        }
    print(json.dumps(report, indent=2) if args.json else _table(report))
    missed = [r for r in report["databases"] if not r["queue"]["goal_met"]]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
