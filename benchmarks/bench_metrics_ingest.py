"""Metric ingest through the REST batch endpoint, side by side with MLflow's ``log_batch``.

    python benchmarks/bench_metrics_ingest.py          # 1,000,000 points, SQLite and PG
    python benchmarks/bench_metrics_ingest.py --databases sqlite --points 200000
    python benchmarks/bench_metrics_ingest.py --points 2000 --batch 1000 --no-peer --json

**mlrig**: for each database (an SQLite file in a temporary folder; a fresh PostgreSQL
database on ``--postgres-url``, created and dropped by this script) the script builds a
platform, creates one experiment and a user with a bearer token, and serves the API with
uvicorn on loopback (``mlrig.testing.fixtures.serve``, one process). A client *process*
(this script, ``--client mlrig``) then sends ``--points`` points in batches of ``--batch``
to ``POST /api/ml/experiments/{id}/metrics`` with httpx, one request at a time; the time
of each request includes the client's ``orjson.dumps`` of the batch (mlrig depends on
orjson; its server decodes with it too), authentication, the
audit middleware, validation and the insert.

**MLflow** (the peer; ``--no-peer`` skips it): the script creates a virtual environment
of its own (``--peer-venv``, default ``~/.cache/mlrig-bench/mlflow-venv``) and installs
``mlflow`` and ``psycopg2-binary`` into it the first time (never into mlrig's
environment), starts ``mlflow server --workers 1`` on loopback with its backend store on
the same database kind (an SQLite file; a fresh PostgreSQL database), waits until the
server's processes are idle (it starts a job runner and several huey consumers that keep
both cores busy for seconds after ``/health`` answers), and runs the client
side (``--client mlflow``) with that environment's Python: ``MlflowClient.log_batch`` with
``--peer-batch`` metrics per call (1000, the most MLflow accepts). The ``Metric`` objects
and mlrig's point dicts are built before the clock starts; both clients serialise inside
the timed call.

Both servers are up at the same time and the two clients take turns: each sends its
points in ``--rounds`` rounds (mlrig's round 1, MLflow's round 1, mlrig's round 2...), so
that a shared, noisy machine weighs on both alike. Both sides log the same shape:
``--names`` metric names (``loss``, ``accuracy``...) in turn, steps counting up, so every
(name, step) is new; ``--warmup`` batches go first, untimed. ``--concurrency N`` keeps N
requests in flight on each side (N threads in each client process, each with its own
HTTP client), as N trainers logging at once would. Reported: the throughput (all points
over the wall time of all rounds, ``overall``), which the goals judge, and per request
the median points/s and p50/p99 ms; mlrig's throughput over MLflow's (``ratio``) and
that ratio round by round; for mlrig also the client's ``orjson.dumps`` time and the
median points/s of a request without it (``round_trip``). Goal: mlrig at least 100,000
points/s and at least 10x MLflow, on each database.
``--check`` exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import (  # benchmarks/_common.py
    add_database_options,
    chosen_databases,
    percentile,
    postgres_database,
    server_version,
    settle,
)

GOAL_POINTS_PER_S = 100_000
GOAL_RATIO = 10.0
DEFAULT_PEER_VENV = Path.home() / ".cache" / "mlrig-bench" / "mlflow-venv"
#: MLflow refuses more metrics than this in one log_batch call
MLFLOW_MAX_METRICS = 1000
NAMES = (
    "loss",
    "accuracy",
    "learning_rate",
    "grad_norm",
    "val_loss",
    "val_accuracy",
    "precision",
    "recall",
    "f1",
    "throughput",
    "auc",
    "mse",
    "mae",
    "r2",
    "epoch_time",
    "gpu_util",
)
PEER_PACKAGES = ("mlflow", "psycopg2-binary")


def point_fields(index: int, names: int) -> tuple[str, float, int, int]:
    """Name, value, step and epoch of the ``index``-th point (the same on both sides)."""
    step = index // names
    return NAMES[index % names], 1.0 / (1.0 + step) + (index % names) * 0.01, step, step // 1000


# --- the clients (separate processes) -------------------------------------------------


def _timed_batches(
    make_send: Any, batches: list[Any], warmup: int, concurrency: int = 1
) -> dict[str, Any]:
    """Send the batches with ``concurrency`` threads, each calling its own
    ``make_send()``-made ``send(batch)`` for the next unsent batch. Returned: per timed
    batch its size, its seconds and, when ``send`` returns one, the seconds it spent
    encoding the request; and the wall time of all timed batches (``wall_seconds``)."""
    sends = [make_send() for _ in range(concurrency)]
    for batch in batches[:warmup]:
        sends[0](batch)
    timed = batches[warmup:]
    results: list[tuple[int, float, float | None]] = []
    failures: list[BaseException] = []
    order = itertools.count()  # next() on it is atomic: each batch is sent once

    def sender(send: Any) -> None:
        try:
            while (index := next(order)) < len(timed) and not failures:
                start = time.perf_counter()
                encoding = send(timed[index])
                results.append((len(timed[index]), time.perf_counter() - start, encoding))
        except BaseException as exc:  # re-raised in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=sender, args=(send,)) for send in sends]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if failures:
        raise failures[0]
    return {
        "seconds": [r[1] for r in results],
        "counts": [r[0] for r in results],
        "encode_seconds": [r[2] for r in results if r[2] is not None],
        "wall_seconds": [wall],
    }


def client_mlrig(args: argparse.Namespace) -> dict[str, Any]:
    """Send the points to mlrig's batch endpoint; per-batch seconds (runs in mlrig's env)."""
    import httpx

    kinds = ("train", "validation")
    total = args.points + args.warmup * args.batch
    points = []
    for i in range(args.offset, args.offset + total):
        name, value, step, epoch = point_fields(i, args.names)
        points.append(
            {
                "name": name,
                "value": value,
                "step": step,
                "epoch": epoch,
                "kind": kinds[name.startswith("val_")],
            }
        )
    batches = [points[i : i + args.batch] for i in range(0, total, args.batch)]
    import orjson

    path = f"/api/ml/experiments/{args.experiment}/metrics"
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"}
    with contextlib.ExitStack() as clients:

        def make_send() -> Any:
            client = clients.enter_context(
                httpx.Client(base_url=args.url, headers=headers, timeout=300)
            )

            def send(batch: list[dict[str, Any]]) -> float:
                start = time.perf_counter()
                body = orjson.dumps({"points": batch})  # mlrig depends on orjson
                encoded = time.perf_counter()
                response = client.post(path, content=body)
                if response.status_code != 200:
                    msg = f"HTTP {response.status_code}: {response.text[:500]}"
                    raise SystemExit(msg)
                return encoded - start

            return send

        return _timed_batches(make_send, batches, args.warmup, args.concurrency)


def client_mlflow(args: argparse.Namespace) -> dict[str, Any]:
    """Log the points with MlflowClient.log_batch (runs in the peer's own venv)."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=args.url)
    run_id = args.run_id
    if run_id is None:
        experiment = client.create_experiment(f"bench-{uuid.uuid4().hex[:8]}")
        run_id = client.create_run(experiment).info.run_id
    total = args.points + args.warmup * args.batch
    base_ms = int(time.time() * 1000)
    metrics = []
    for i in range(args.offset, args.offset + total):
        name, value, step, _epoch = point_fields(i, args.names)
        metrics.append(Metric(key=name, value=value, timestamp=base_ms + i, step=step))
    batches = [metrics[i : i + args.batch] for i in range(0, total, args.batch)]

    def make_send() -> Any:
        own = MlflowClient(tracking_uri=args.url)  # one client per sending thread
        return lambda batch: own.log_batch(run_id, metrics=batch)

    report = _timed_batches(make_send, batches, args.warmup, args.concurrency)
    # A spot check that the points landed: the full history of the first metric so far.
    history = client.get_metric_history(run_id, NAMES[0])
    expected = len(range(0, args.offset + total, args.names))
    if len(history) != expected:
        msg = f"MLflow stored {len(history)} points of {NAMES[0]!r}, expected {expected}"
        raise SystemExit(msg)
    report["mlflow_version"] = mlflow.__version__
    report["run_id"] = run_id
    return report


# --- databases ------------------------------------------------------------------------


def postgres_version(url: str) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {str(row[0] if row else '?').split()[0]}"


# --- the two sides --------------------------------------------------------------------


def _client(
    python: str,
    args: argparse.Namespace,
    side: str,
    url: str,
    *,
    batch: int,
    points: int,
    offset: int,
    warmup: int,
    env: dict[str, str] | None = None,
    **extra: str | None,
) -> dict[str, Any]:
    command = [
        python,
        __file__,
        "--client",
        side,
        "--url",
        url,
        "--batch",
        str(batch),
        "--points",
        str(points),
        "--offset",
        str(offset),
        "--warmup",
        str(warmup),
        "--names",
        str(args.names),
        "--concurrency",
        str(args.concurrency),
    ]
    for key, value in extra.items():
        if value is not None:
            command += [f"--{key.replace('_', '-')}", value]
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, env=env, timeout=args.timeout
    )
    if done.returncode != 0:
        msg = f"the {side} client failed:\n{done.stderr[-3000:]}"
        raise SystemExit(msg)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(
    system: str,
    database: str,
    server: str,
    batch: int,
    concurrency: int,
    timed: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """One side's figures: ``overall_points_per_s`` (all points over the wall time of all
    rounds) is the throughput the goals are judged on; ``median_points_per_s`` is per
    request (what one client sees)."""
    seconds, counts = timed["seconds"], timed["counts"]
    rates = [n / s for n, s in zip(counts, seconds, strict=True)]
    ms = [s * 1000 for s in seconds]
    if timed.get("encode_seconds"):
        encode = timed["encode_seconds"]
        round_trips = [s - e for s, e in zip(seconds, encode, strict=True)]
        extra = {
            "client_encode_p50_ms": round(statistics.median(encode) * 1000, 2),
            "round_trip_median_points_per_s": round(
                statistics.median(n / s for n, s in zip(counts, round_trips, strict=True))
            ),
            **extra,
        }
    return {
        "system": system,
        "database": database,
        "server": server,
        "points": sum(counts),
        "batch": batch,
        "batches": len(counts),
        "concurrency": concurrency,
        "seconds": round(sum(timed["wall_seconds"]), 2),
        "median_points_per_s": round(statistics.median(rates)),
        "overall_points_per_s": round(sum(counts) / sum(timed["wall_seconds"])),
        "batch_p50_ms": round(statistics.median(ms), 2),
        "batch_p99_ms": round(percentile(ms, 99), 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine is shared: how busy
        **extra,
    }


class MlrigSide:
    """mlrig's server on one database, and the client rounds sent to it."""

    system = "mlrig"

    def __init__(
        self, database: str, args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack
    ) -> None:
        from mlrig.api import create_app
        from mlrig.db import migrate
        from mlrig.security import Principal
        from mlrig.testing.fixtures import make_platform, serve

        self.args, self.database, self.sent = args, database, 0
        if database == "sqlite":
            url = f"sqlite:///{tmp / 'mlrig-sqlite' / 'mlrig.db'}"
        else:
            url = stack.enter_context(postgres_database(args.postgres_url, "mlrig_bench_"))
            migrate.upgrade(url)
        self.platform = make_platform(tmp / f"mlrig-{database}", database={"url": url})
        stack.callback(self.platform.close)
        user = self.platform.security.create_user(name="bench", role="developer")
        self.token = self.platform.security.create_token(user="bench")["token"]
        actor = Principal("bench", "developer", uuid.UUID(user["id"]))
        self.experiment = self.platform.experiments.create(
            name="ingest", trainer="sklearn", actor=actor
        )["id"]
        self.server = server_version(self.platform.db)
        self.url = stack.enter_context(serve(create_app(self.platform)))

    def round(self, points: int, warmup: int) -> dict[str, Any]:
        timed = _client(
            sys.executable,
            self.args,
            "mlrig",
            self.url,
            batch=self.args.batch,
            points=points,
            offset=self.sent,
            warmup=warmup,
            experiment=self.experiment,
            token=self.token,
        )
        self.sent += points + warmup * self.args.batch
        return timed

    def check(self) -> None:
        from sqlalchemy import func, select

        from mlrig.db.models import TrainingMetric

        with self.platform.db.session() as session:
            stored = session.scalar(select(func.count()).select_from(TrainingMetric))
        if stored != self.sent:
            msg = f"mlrig stored {stored} points on {self.database}, expected {self.sent}"
            raise SystemExit(msg)


class MlflowSide:
    """``mlflow server`` on the same kind of database, and MlflowClient rounds sent to it."""

    system = "mlflow"

    def __init__(
        self,
        database: str,
        args: argparse.Namespace,
        tmp: Path,
        python: str,
        stack: contextlib.ExitStack,
    ) -> None:
        self.args, self.python, self.sent = args, python, 0
        self.run_id: str | None = None
        self.version: str | None = None
        root = tmp / f"mlflow-{database}"
        if database == "sqlite":
            backend = f"sqlite:///{root / 'mlflow.db'}"
            self.server = f"SQLite {sqlite3.sqlite_version} (MLflow's Python)"
        else:
            from sqlalchemy.engine import make_url

            url = stack.enter_context(postgres_database(args.postgres_url, "mlrig_bench_mlflow_"))
            backend = (
                make_url(url)
                .set(drivername="postgresql+psycopg2")
                .render_as_string(hide_password=False)
            )
            self.server = f"{postgres_version(url)} (psycopg2)"
        self.url = stack.enter_context(mlflow_server(Path(python).parent.parent, backend, root))

    def round(self, points: int, warmup: int) -> dict[str, Any]:
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        timed = _client(
            self.python,
            self.args,
            "mlflow",
            self.url,
            batch=self.args.peer_batch,
            points=points,
            offset=self.sent,
            warmup=warmup,
            env=env,
            run_id=self.run_id,
        )
        self.run_id, self.version = timed["run_id"], timed["mlflow_version"]
        self.sent += points + warmup * self.args.peer_batch
        return timed


def _split(total: int, batch: int, rounds: int) -> list[int]:
    """``total`` points in whole batches over ``rounds`` rounds (fewer if too few batches)."""
    batches = [min(batch, total - first) for first in range(0, total, batch)]
    per_round = [
        len(batches) // rounds + (1 if i < len(batches) % rounds else 0) for i in range(rounds)
    ]
    out, taken = [], 0
    for count in per_round:
        out.append(sum(batches[taken : taken + count]))
        taken += count
    return out


def run_database(
    database: str, args: argparse.Namespace, tmp: Path, python: str | None
) -> list[dict[str, Any]]:
    """Both servers up on ``database``; the clients take turns, ``--rounds`` each."""
    with contextlib.ExitStack() as stack:
        sides: list[Any] = [MlrigSide(database, args, tmp, stack)]
        if python:
            sides.append(MlflowSide(database, args, tmp, python, stack))
        plan = {
            "mlrig": _split(args.points, args.batch, args.rounds),
            "mlflow": _split(args.peer_points, args.peer_batch, args.rounds),
        }
        timed: dict[str, dict[str, list[float]]] = {
            side.system: {"seconds": [], "counts": [], "encode_seconds": [], "wall_seconds": []}
            for side in sides
        }
        rates: dict[str, list[float]] = {side.system: [] for side in sides}
        for number in range(args.rounds):
            for side in sides:
                points = plan[side.system][number]
                if not points:
                    continue
                got = side.round(points, args.warmup if number == 0 else 0)
                for key, values in timed[side.system].items():
                    values += got.get(key, [])
                rates[side.system].append(sum(got["counts"]) / sum(got["wall_seconds"]))
        sides[0].check()
        concurrency = args.concurrency
        rows = [_row("mlrig", database, sides[0].server, args.batch, concurrency, timed["mlrig"])]
        if python:
            peer = sides[1]
            rows.append(
                _row(
                    "mlflow",
                    database,
                    peer.server,
                    args.peer_batch,
                    concurrency,
                    timed["mlflow"],
                    mlflow_version=peer.version,
                )
            )
            ratios = [a / b for a, b in zip(rates["mlrig"], rates["mlflow"], strict=False)]
            rows[0]["round_ratios"] = [round(r, 1) for r in ratios]
        return rows


def ensure_peer_venv(venv: Path) -> str:
    """The Python of MLflow's own virtual environment, created the first time."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import mlflow, psycopg2"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return str(python)
    print(f"installing {', '.join(PEER_PACKAGES)} into {venv} (first run only)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES],
        check=True,
        stdout=sys.stderr,
    )
    return str(python)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(venv: Path, backend_uri: str, root: Path) -> Iterator[str]:
    """``mlflow server`` on a free loopback port (its own process group); yields its URL."""
    import httpx

    port = _free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = (root / "server.log").open("wb")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    proc = subprocess.Popen(
        [
            str(venv / "bin" / "mlflow"),
            "server",
            "--backend-store-uri",
            backend_uri,
            "--default-artifact-root",
            (root / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                tail = (root / "server.log").read_text(errors="replace")[-3000:]
                msg = f"mlflow server exited ({proc.returncode}):\n{tail}"
                raise SystemExit(msg)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                msg = "mlflow server did not answer /health within 180 s"
                raise SystemExit(msg)
            time.sleep(0.5)
        settle(proc.pid)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


# --- output ---------------------------------------------------------------------------


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for mine in (r for r in rows if r["system"] == "mlrig"):
        peer = next(
            (r for r in rows if r["system"] == "mlflow" and r["database"] == mine["database"]), None
        )
        ratio = (
            round(mine["overall_points_per_s"] / peer["overall_points_per_s"], 1) if peer else None
        )
        fast = mine["overall_points_per_s"] >= GOAL_POINTS_PER_S
        out.append(
            {
                "database": mine["database"],
                "concurrency": mine["concurrency"],
                "mlrig_points_per_s": mine["overall_points_per_s"],
                "mlflow_points_per_s": peer["overall_points_per_s"] if peer else None,
                "ratio": ratio,
                "round_ratios": mine.pop("round_ratios", None),
                "points_per_s_goal_met": fast,
                "ratio_goal_met": None if ratio is None else ratio >= GOAL_RATIO,
                "goal_met": fast and (ratio is None or ratio >= GOAL_RATIO),
            }
        )
    return out


def _table(report: dict[str, Any]) -> str:
    head = (
        f"{'system':<7} {'database':<10} {'points':>9} {'batch':>6} {'median pts/s':>13} "
        f"{'overall pts/s':>14} {'batch p50 ms':>13} {'p99 ms':>9} {'encode ms':>10} "
        f"{'round-trip pts/s':>17}"
    )
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        encode = r.get("client_encode_p50_ms")
        trip = r.get("round_trip_median_points_per_s")
        lines.append(
            f"{r['system']:<7} {r['database']:<10} {r['points']:>9} {r['batch']:>6} "
            f"{r['median_points_per_s']:>13,} {r['overall_points_per_s']:>14,} "
            f"{r['batch_p50_ms']:>13.1f} {r['batch_p99_ms']:>9.1f} "
            f"{'-' if encode is None else f'{encode:.1f}':>10} "
            f"{'-' if trip is None else f'{trip:,}':>17}"
        )
    lines.append(
        "encode ms: the client's orjson.dumps of a batch (p50), inside the timed call; "
        "round-trip pts/s: the median without it"
    )
    for c in report["comparisons"]:
        ratio = (
            f"{c['ratio']}x MLflow (by round: {', '.join(map(str, c['round_ratios']))})"
            if c["ratio"] is not None
            else "MLflow not run"
        )
        lines.append(
            f"{c['database']}: mlrig {c['mlrig_points_per_s']:,} points/s "
            f"({c['concurrency']} in flight), {ratio}; goal "
            f">= {GOAL_POINTS_PER_S:,} points/s and >= {GOAL_RATIO:.0f}x: "
            f"{'ok' if c['goal_met'] else 'MISSED'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="timed points (mlrig)")
    parser.add_argument("--batch", type=int, default=10_000, help="points per request (mlrig)")
    add_database_options(parser)
    parser.add_argument(
        "--names",
        type=int,
        default=10,
        choices=range(1, len(NAMES) + 1),
        metavar=f"1-{len(NAMES)}",
        help="metric names the points cycle over",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first, each side")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="requests in flight at once on each side (threads of its client process)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="the two clients take turns, each sending its points in this many "
        "rounds, so that both see the same load on a shared machine",
    )
    parser.add_argument(
        "--no-peer", action="store_true", help="skip MLflow (no virtual environment, no install)"
    )
    parser.add_argument(
        "--peer-venv",
        type=Path,
        default=DEFAULT_PEER_VENV,
        help="MLflow's own virtual environment (created the first time)",
    )
    parser.add_argument(
        "--peer-points",
        type=int,
        default=None,
        help="timed points for MLflow (default: --points, at most 100,000)",
    )
    parser.add_argument(
        "--peer-batch",
        type=int,
        default=MLFLOW_MAX_METRICS,
        help=f"metrics per log_batch call (MLflow's maximum: {MLFLOW_MAX_METRICS})",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="per client run, seconds")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--client", choices=("mlrig", "mlflow"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--experiment", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client == "mlrig":
        print(json.dumps(client_mlrig(args)))
        return 0
    if args.client == "mlflow":
        print(json.dumps(client_mlflow(args)))
        return 0
    databases = chosen_databases(parser, args)
    if min(args.points, args.batch, args.rounds, args.concurrency) < 1:
        parser.error("--points, --batch, --rounds and --concurrency must be at least 1")
    if not 1 <= args.peer_batch <= MLFLOW_MAX_METRICS:
        parser.error(f"--peer-batch must be 1-{MLFLOW_MAX_METRICS} (MLflow's limit)")
    if args.peer_points is None:
        args.peer_points = min(args.points, 100_000)
    python = None if args.no_peer else ensure_peer_venv(args.peer_venv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlrig-bench-") as tmp:
        for database in databases:
            rows += run_database(database, args, Path(tmp), python)
    report = {
        "goal_points_per_s": GOAL_POINTS_PER_S,
        "goal_ratio": GOAL_RATIO,
        "peer": None if args.no_peer else "mlflow",
        "results": rows,
        "comparisons": compare(rows),
    }
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 1 if args.check and not all(c["goal_met"] for c in report["comparisons"]) else 0


if __name__ == "__main__":
    sys.exit(main())
