"""The tracking client's overhead: ``run.log_metric`` in a training loop, beside MLflow's
``mlflow.log_metric`` in the same run of this script.

    python benchmarks/bench_tracking_client.py                 # 1,000,000 calls, 3 rounds
    python benchmarks/bench_tracking_client.py --calls 20000 --rounds 1 --peer-calls 200 --json

**mlrig**: a server process (``mlrig``'s API under uvicorn on loopback, an SQLite file
in a temporary folder, a developer token) and a *client process* per round, a fresh
interpreter that times a loop of ``--calls`` iterations twice: bare (``value = i *
0.001``) and with ``run.log_metric("loss", value, step=i)`` (a run started against the
server by ``mlrig.start_run`` with ``MLRIG_URL``). The overhead is the difference of the
two wall times (the goal: under 2 s for 1,000,000 calls). Then it times ``run.end()``
(the buffer sends what is left, the run ends) and counts the points the server holds:
every one must be there (``lost`` is the difference). ``--embedded`` also times the
client against an embedded platform (no server: the points are written into the SQLite
file by the client's background thread, in the client's process).

**MLflow** (``--no-peer`` skips it), in its own virtual environment
(:func:`mlrig.testing.mlflow_venv.mlflow_python`, made the first time), against its own
``mlflow server --workers 1`` on an SQLite file: the same loops with
``mlflow.log_metric("loss", value, step=i)``, which sends one request per call, for
``--peer-calls`` calls (the per-call cost is multiplied out to ``--calls``), and with
``synchronous=False`` (MLflow's asynchronous logging, a background queue) for
``--peer-async-calls`` calls. Both servers are up at once and the clients take turns
round by round. Reported per system: the median over the rounds of the overhead per
call (µs) and for ``--calls`` calls (s), the CPU time the process spent per call (all
threads: the loop and the background sending; on a busy machine the wall time includes
waiting for a core, the CPU time does not), the time to end the run, and lost points.
``--check`` exits 1 when mlrig's overhead for ``--calls`` calls is over 2 s or a point
is lost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GOAL_OVERHEAD_S = 2.0
GOAL_CALLS = 1_000_000


# --- client processes -----------------------------------------------------------------


def _bare(calls: int) -> tuple[float, float]:
    """Wall and CPU seconds of the loop without logging."""
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(calls):
        value = i * 0.001  # noqa: F841 (the loop's own work)
    return time.perf_counter() - started, time.process_time() - cpu


def client_mlrig(calls: int) -> dict[str, Any]:
    """Time the loops with mlrig (MLRIG_URL/MLRIG_TOKEN, or MLRIG_CONFIG: embedded)."""
    import mlrig

    bare, bare_cpu = _bare(calls)
    run = mlrig.start_run("bench")
    log_metric = run.log_metric
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(calls):
        value = i * 0.001
        log_metric("loss", value, step=i)
    logged, logged_cpu = time.perf_counter() - started, time.process_time() - cpu
    started = time.perf_counter()
    run.end()
    ended = time.perf_counter() - started
    if os.environ.get("MLRIG_URL"):
        with mlrig.Client() as client:
            count = client.metrics(run.id, fields=["steps"])["count"]
    else:
        platform = mlrig.Platform.from_config()
        count = platform.experiments.metrics(run.id, fields=["steps"])["count"]
        platform.close()
    return {
        "calls": calls,
        "bare_s": bare,
        "logged_s": logged,
        "bare_cpu_s": bare_cpu,
        "logged_cpu_s": logged_cpu,
        "end_s": ended,
        "count": count,
    }


def client_mlflow(calls: int, url: str, *, asynchronous: bool) -> dict[str, Any]:
    """Time the loops with mlflow.log_metric (runs in MLflow's own environment)."""
    import mlflow

    mlflow.set_tracking_uri(url)
    mlflow.set_experiment("bench")
    bare, bare_cpu = _bare(calls)
    run = mlflow.start_run()
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(calls):
        value = i * 0.001
        mlflow.log_metric("loss", value, step=i, synchronous=not asynchronous)
    logged, logged_cpu = time.perf_counter() - started, time.process_time() - cpu
    started = time.perf_counter()
    mlflow.end_run()
    ended = time.perf_counter() - started
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    return {
        "calls": calls,
        "bare_s": bare,
        "logged_s": logged,
        "bare_cpu_s": bare_cpu,
        "logged_cpu_s": logged_cpu,
        "end_s": ended,
        "count": len(history),
        "version": mlflow.__version__,
    }


# --- the mlrig server -----------------------------------------------------------------


def serve_mlrig(home: Path, ready: Path) -> None:
    """Serve an mlrig platform under ``home``; write ``{"url", "token"}`` to ``ready``."""
    from mlrig.api import create_app
    from mlrig.testing.fixtures import make_platform, serve

    platform = make_platform(home)
    platform.security.create_user(name="bench", role="developer")
    token = platform.security.create_token(user="bench")["token"]
    with serve(create_app(platform)) as url:
        ready.write_text(json.dumps({"url": url, "token": token}))
        while True:
            time.sleep(3600)


@contextlib.contextmanager
def mlrig_server(home: Path) -> Iterator[dict[str, str]]:
    ready = home / "ready.json"
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(home)], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                msg = "the mlrig server did not start"
                raise SystemExit(msg)
            time.sleep(0.1)
        yield json.loads(ready.read_text())
    finally:
        proc.terminate()
        proc.wait(15)


def _embedded_config(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    config = home / "mlrig.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{home / "mlrig.db"}"\n'
        f'[storage]\nbackend = "local"\n[storage.local]\nroot = "{home / "artifacts"}"\n'
    )
    return config


# --- driving ----------------------------------------------------------------------------


def _run_client(python: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLRIG_", "MLFLOW_"))}
    proc = subprocess.run(
        [python, __file__, *args],
        env={**clean, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", **env},
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        msg = f"client {args[:2]} failed:\n{proc.stderr[-3000:]}"
        raise SystemExit(msg)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(system: str, results: list[dict[str, Any]], target_calls: int) -> dict[str, Any]:
    per_call = [(r["logged_s"] - r["bare_s"]) / r["calls"] for r in results]
    median = statistics.median(per_call)
    cpu = statistics.median((r["logged_cpu_s"] - r["bare_cpu_s"]) / r["calls"] for r in results)
    return {
        "system": system,
        "calls": results[0]["calls"],
        "rounds": len(results),
        "overhead_us_per_call": round(median * 1e6, 3),
        f"overhead_s_for_{target_calls}": round(median * target_calls, 3),
        "cpu_us_per_call": round(cpu * 1e6, 3),
        "end_s": round(statistics.median(r["end_s"] for r in results), 3),
        "lost": sum(r["calls"] - r["count"] for r in results),
        **({"version": results[0]["version"]} if "version" in results[0] else {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=GOAL_CALLS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peer-calls", type=int, default=2000, help="synchronous MLflow calls")
    parser.add_argument("--peer-async-calls", type=int, default=20_000)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--embedded", action="store_true", help="also time embedded mlrig")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_mlrig(Path(args.serve), Path(args.serve) / "ready.json")
        return 0
    if args.client:
        if args.client == "mlrig":
            result = client_mlrig(args.calls)
        else:
            result = client_mlflow(args.calls, args.url, asynchronous=args.client == "mlflow-async")
        print(json.dumps(result))
        return 0

    results: dict[str, list[dict[str, Any]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="mlrig-bench-tracking-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        root = Path(tmp)
        server = stack.enter_context(mlrig_server(root / "mlrig"))
        embedded = _embedded_config(root / "embedded") if args.embedded else None
        peer_python = peer_url = None
        if not args.no_peer:
            sys.path.insert(0, str(Path(__file__).parent))
            from bench_metrics_ingest import mlflow_server

            from mlrig.testing.mlflow_venv import mlflow_python

            peer_python = str(mlflow_python())
            backend = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
            peer_url = stack.enter_context(
                mlflow_server(Path(peer_python).parent.parent, backend, root / "mlflow")
            )
        calls = str(args.calls)
        for _ in range(args.rounds):
            env = {"MLRIG_URL": server["url"], "MLRIG_TOKEN": server["token"]}
            results.setdefault("mlrig", []).append(
                _run_client(sys.executable, ["--client", "mlrig", "--calls", calls], env)
            )
            if embedded is not None:
                results.setdefault("mlrig-embedded", []).append(
                    _run_client(
                        sys.executable,
                        ["--client", "mlrig", "--calls", calls],
                        {"MLRIG_CONFIG": str(embedded)},
                    )
                )
            if peer_python is not None:
                for mode, count in (
                    ("mlflow", args.peer_calls),
                    ("mlflow-async", args.peer_async_calls),
                ):
                    results.setdefault(mode, []).append(
                        _run_client(
                            peer_python,
                            ["--client", mode, "--calls", str(count), "--url", peer_url],
                            {"PYTHONPATH": ""},
                        )
                    )
    rows = [_row(system, runs, args.calls) for system, runs in results.items()]
    mine = rows[0]
    met = mine[f"overhead_s_for_{args.calls}"] * GOAL_CALLS / args.calls < GOAL_OVERHEAD_S
    report = {"rows": rows, "goal_met": met and mine["lost"] == 0}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for row in rows:
            print(
                f"{row['system']:>14}: {row['overhead_us_per_call']:8.3f} µs/call, "
                f"{row[f'overhead_s_for_{args.calls}']:9.3f} s for {args.calls:,} calls "
                f"(CPU of all threads {row['cpu_us_per_call']:.3f} µs/call) "
                f"(measured over {row['calls']:,} x {row['rounds']}), end {row['end_s']:.3f} s, "
                f"lost {row['lost']}"
            )
        print("goal met" if report["goal_met"] else "goal MISSED")
    return 1 if args.check and not report["goal_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
