"""Wall time of ``mlrig models list`` and ``mlrig experiments list``, embedded and against a
server, beside ``mlrig --help``, the interpreter's floor and MLflow's
``mlflow experiments search`` (issue 11: "commands that read the database answer fast").

    python benchmarks/bench_cli.py                 # 10 runs of each command, MLflow beside
    python benchmarks/bench_cli.py --runs 20 --json
    python benchmarks/bench_cli.py --no-mlflow     # mlrig only (no MLflow environment)
    python benchmarks/bench_cli.py --tiny          # CI smoke: 1 run each, no MLflow

One installation under a temporary folder (SQLite, local storage) holds 20 registered
models and 20 tracked runs; ``mlrig server`` serves it on loopback with an admin token.
Each command runs as a fresh process, first once untimed (the OS page cache and the
bytecode caches fill), then ``--runs`` times in turns (run 1 of every command, run 2 of
every command, ...), so that load from elsewhere on a shared machine hits all alike; the
figure is the median wall time from ``exec`` to exit. Every run must exit 0 and print
what was seeded.

- **embedded**: ``mlrig --config mlrig.toml models list`` opens the SQLite database itself;
- **remote**: ``mlrig --url URL --token TOKEN models list`` asks the server (no database,
  no SQLAlchemy in the CLI process);
- **floors**: ``python -c pass`` (the interpreter's start-up, which mlrig cannot remove)
  and ``python -c "import sqlalchemy.orm"`` (what the embedded commands need at least to
  read the database through the ORM);
- **MLflow** (its own virtual environment, ``mlrig.testing.mlflow_venv``, mlflow 3.17.2):
  ``mlflow experiments search`` with 20 experiments, against a SQLite store
  (``MLFLOW_TRACKING_URI=sqlite:///...``, like embedded) and against ``mlflow server`` on
  that store (like remote).

Goal: each mlrig command's median under 400 ms, embedded and remote. ``--check`` exits 1
when it is missed. ``PYTHONDONTWRITEBYTECODE`` is removed from the commands' environment:
an installed package has its bytecode cached, which is what a user runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GOAL_MS = 400.0
SEEDED = 20
#: the commands the goal is about (the others are floors and peers)
JUDGED = (
    "mlrig models list (embedded)",
    "mlrig experiments list (embedded)",
    "mlrig models list (remote)",
    "mlrig experiments list (remote)",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, headers: dict[str, str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLRIG_", "MLFLOW_")) and k != "PYTHONDONTWRITEBYTECODE"
    }
    env["COLUMNS"] = "200"  # rich sizes tables to the terminal: names are not cut
    env.update(extra or {})
    return env


def seed_mlrig(home: Path) -> tuple[Path, str]:
    """An installation under ``home`` with :data:`SEEDED` models and tracked runs;
    returns its config and an admin token."""
    from mlrig.platform import Platform
    from mlrig.security import Principal
    from mlrig.testing.cli_modes import write_config

    config = write_config(home)
    platform = Platform.from_config(config)
    try:
        actor = Principal(name="bench", role="admin")
        platform.security.create_user(name="bench-admin", role="admin")
        token = platform.security.create_token(user="bench-admin", name="bench")["token"]
        for i in range(SEEDED):
            platform.registry.create_model(
                name=f"bench-model-{i:02d}", description="seeded", actor=actor
            )
            run = platform.experiments.start_run(actor=actor, name=f"bench-run-{i:02d}")
            platform.experiments.end_run(run["id"], actor=actor)
        return config, token
    finally:
        platform.close()


@contextlib.contextmanager
def mlrig_server(config: Path, token: str, logs: Path) -> Iterator[str]:
    """``mlrig server`` on the installation, on a free loopback port; yields its URL."""
    port = _free_port()
    script = Path(sys.executable).with_name("mlrig")
    command = [str(script), "--config", str(config), "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning"]
    with (logs / "mlrig-server.log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_env())
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_http(f"{url}/api/ml/models", {"Authorization": f"Bearer {token}"})
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_MLFLOW_SEED = """
import sys, mlflow
mlflow.set_tracking_uri(sys.argv[1])
for i in range(int(sys.argv[2])):
    mlflow.create_experiment(f"bench-exp-{i:02d}")
"""


@contextlib.contextmanager
def mlflow_setup(work: Path, logs: Path) -> Iterator[dict[str, Any]]:
    """MLflow's environment, a SQLite store with :data:`SEEDED` experiments and
    ``mlflow server`` on it; yields the binaries and URIs."""
    from mlrig.testing.mlflow_venv import mlflow_python

    python = mlflow_python()
    binary = python.with_name("mlflow")
    store = f"sqlite:///{(work / 'mlflow.db').as_posix()}"
    subprocess.run([str(python), "-c", _MLFLOW_SEED, store, str(SEEDED)], check=True, env=_env())
    port = _free_port()
    command = [str(binary), "server", "--backend-store-uri", store, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    with (logs / "mlflow-server.log").open("wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_http(f"{url}/health", {}, timeout=120)
            version = subprocess.run(
                [str(python), "-c", "import mlflow; print(mlflow.__version__)"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            yield {"binary": binary, "store": store, "url": url, "version": version}
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def commands(
    config: Path, token: str, url: str, mlflow: dict[str, Any] | None
) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """label -> (argv, environment, a string its output must contain)."""
    mlrig = str(Path(sys.executable).with_name("mlrig"))
    local = ["--config", str(config)]
    remote = ["--url", url, "--token", token]
    out: dict[str, tuple[list[str], dict[str, str], str]] = {
        "python -c pass": ([sys.executable, "-c", "pass"], _env(), ""),
        "python -c 'import sqlalchemy.orm'": (
            [sys.executable, "-c", "import sqlalchemy.orm"],
            _env(),
            "",
        ),
        "mlrig --help": ([mlrig, "--help"], _env(), "Usage"),
        "mlrig models list (embedded)": ([mlrig, *local, "models", "list"], _env(), "bench-model"),
        "mlrig experiments list (embedded)": (
            [mlrig, *local, "experiments", "list"],
            _env(),
            "bench-run",
        ),
        "mlrig models list (remote)": ([mlrig, *remote, "models", "list"], _env(), "bench-model"),
        "mlrig experiments list (remote)": (
            [mlrig, *remote, "experiments", "list"],
            _env(),
            "bench-run",
        ),
    }
    if mlflow:
        search = [str(mlflow["binary"]), "experiments", "search"]
        out["mlflow experiments search (sqlite store)"] = (
            search,
            _env({"MLFLOW_TRACKING_URI": mlflow["store"]}),
            "bench-exp",
        )
        out["mlflow experiments search (server)"] = (
            search,
            _env({"MLFLOW_TRACKING_URI": mlflow["url"]}),
            "bench-exp",
        )
    return out


def run_once(argv: list[str], env: dict[str, str], cwd: Path, expect: str) -> float:
    """One run's wall time in ms; the command must exit 0 and print ``expect``."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0 or expect not in proc.stdout:
        msg = f"{' '.join(argv[:6])}... exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
        raise SystemExit(msg)
    return elapsed


def measure(
    cmds: dict[str, tuple[list[str], dict[str, str], str]], runs: int, cwd: Path
) -> dict[str, list[float]]:
    """Each command once untimed, then ``runs`` timed runs in turns."""
    for argv, env, expect in cmds.values():
        run_once(argv, env, cwd, expect)
    times: dict[str, list[float]] = {label: [] for label in cmds}
    for _ in range(runs):
        for label, (argv, env, expect) in cmds.items():
            times[label].append(run_once(argv, env, cwd, expect))
    return times


def report(times: dict[str, list[float]], meta: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for label, values in times.items():
        rows.append(
            {
                "command": label,
                "median_ms": round(statistics.median(values), 1),
                "min_ms": round(min(values), 1),
                "max_ms": round(max(values), 1),
                "runs": len(values),
            }
        )
    medians = {r["command"]: r["median_ms"] for r in rows}
    goals = [
        {"command": c, "median_ms": medians[c], "goal_ms": GOAL_MS, "met": medians[c] < GOAL_MS}
        for c in JUDGED
        if c in medians
    ]
    ratios = {}
    for mine, peer in (
        ("mlrig experiments list (embedded)", "mlflow experiments search (sqlite store)"),
        ("mlrig experiments list (remote)", "mlflow experiments search (server)"),
    ):
        if mine in medians and peer in medians:
            ratios[f"{peer} / {mine}"] = round(medians[peer] / medians[mine], 2)
    return {**meta, "results": rows, "goals": goals, "mlflow_over_mlrig": ratios}


def table(data: dict[str, Any]) -> str:
    lines = [
        f"{data['runs']} runs per command in turns, median wall ms "
        f"(load average {data['load_average']}, {data['cpus']} CPUs)",
        "",
        "| command | median ms | min ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for r in data["results"]:
        lines.append(f"| {r['command']} | {r['median_ms']:,} | {r['min_ms']:,} | {r['max_ms']:,} |")
    lines += ["", "| goal: median < 400 ms | median ms | met? |", "|---|---:|---|"]
    for g in data["goals"]:
        lines.append(f"| {g['command']} | {g['median_ms']:,} | {'yes' if g['met'] else '**no**'} |")
    if data["mlflow_over_mlrig"]:
        lines += ["", "| MLflow's time / mlrig's | ratio |", "|---|---:|"]
        lines += [f"| {k} | {v}x |" for k, v in data["mlflow_over_mlrig"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command")
    parser.add_argument("--mlflow", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--tiny", action="store_true", help="CI smoke: 1 run, no MLflow")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    if args.tiny:
        args.runs, args.mlflow = 1, False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mlrig-bench-cli-") as tmp:
        work = Path(tmp)
        logs = work / "logs"
        logs.mkdir()
        cwd = work / "cwd"  # no mlrig.toml here: the commands read only what they are given
        cwd.mkdir()
        config, token = seed_mlrig(work / "home")
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(mlrig_server(config, token, logs))
            mlflow = stack.enter_context(mlflow_setup(work, logs)) if args.mlflow else None
            times = measure(commands(config, token, url, mlflow), args.runs, cwd)
    meta = {
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": sys.version.split()[0],
        "mlflow": mlflow["version"] if mlflow else None,
    }
    data = report(times, meta)
    print(json.dumps(data, indent=2) if args.json else table(data))
    if args.check and not all(g["met"] for g in data["goals"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
