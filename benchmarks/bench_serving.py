"""Model serving: mlrig beside MLflow, BentoML and a raw ASGI app, same model, same load.

    python benchmarks/bench_serving.py                      # everything, medians of 3 runs
    python benchmarks/bench_serving.py --servers mlrig,raw --workers 1 --runs 1
    python benchmarks/bench_serving.py --tiny --json        # what CI runs (no peers, no network)

The model is the one every serving test uses (``mlrig.testing.serving``): sklearn's
breast cancer data (569 rows, 30 features), ``StandardScaler + LogisticRegression``. mlrig
serves the registered version (``model.joblib`` + ``model.onnx``; the ``auto`` runtime
picks ONNX) with ``mlrig serve --replicas N``; the peers serve the same fitted pipeline,
pickled:

- **raw ASGI** (``serving_peers/raw_asgi.py``): a hand-written ASGI app under uvicorn
  (``--workers N``) in mlrig's own environment: orjson, sklearn's ``predict_proba``, no
  framework: the issue's baseline, which mlrig's goal is to match;
- **raw ASGI + onnxruntime** (``raw-onnx``): the same app running the ONNX file mlrig
  serves (one intra-op thread): no goal, the floor of mlrig's own request overhead;
- **MLflow**: ``mlflow models serve --env-manager local -w N`` on the model saved with
  ``mlflow.sklearn.save_model``;
- **BentoML**: a minimal ``@bentoml.service`` (``serving_peers/bento_service.py``,
  ``workers=N``) under ``bentoml serve``.

MLflow and BentoML each live in a virtual environment of their own that the script
creates the first time under ``--peer-venvs`` (default ``~/.cache/mlrig-bench``), with
scikit-learn and numpy pinned to mlrig's so that the pickle loads; never in mlrig's.

Every server gets the same request bodies (``{"inputs": [[30 floats]]}``, or 100 rows)
on loopback (their predictions for 100 rows checked against the pipeline's first), and
per run the same measurements, each after ``--warmup`` untimed seconds:

1. ``rps_1row``: wrk (one thread, ``--connections`` 32, a Lua script for the POST body),
   1-row requests per second, closed loop; ``server_cpu_us_per_req``: the CPU time of
   the server's process tree over that run per request;
2. ``rows_per_s_100``: the same with 100-row requests, rows per second;
3. ``p50_ms``/``p99_ms`` at 1 connection (wrk, one request at a time, back to back);
4. ``open_p99_ms``: p99 of an open-loop run (``_openloop.py``) at ``--open-share`` (80 %)
   of the 1-row peak: a fixed request rate, each latency measured from the request's
   scheduled send time, so a stall counts for every request it delays. The open-loop
   client is Python, dearer per request than wrk, so the peak it takes 80 % of is the one
   its own closed loop reaches just before (``open_ref_rps``).

mlrig's main figure has authentication and inference logging off (as the raw app has
neither); ``--variants`` then measures mlrig at its better replica count without either,
with logging at 100 % sampling, with a bearer token (auth on), and with both (the default
config): 1-row throughput, the server's CPU time per request and the 1-connection
latency. Each figure is the median of ``--runs`` runs, taken in turns: every server of a
group is started first, then run 1 of each, run 2 of each..., so that a burst of load
from elsewhere on a shared machine hits all of them alike. The load generator runs on
the same cores as the servers, and says so.

``--tiny`` (CI): mlrig and the raw app only, 1 worker, 1 run of about a second per
measurement, no variants, no peer environments; without wrk it falls back to the Python
closed-loop client (``--load python`` picks it anywhere).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import settle, tree_cpu_seconds  # benchmarks/_common.py
from _openloop import closed_loop, open_loop  # benchmarks/_openloop.py

HERE = Path(__file__).resolve().parent
PEERS = HERE / "serving_peers"
DEFAULT_PEER_VENVS = Path.home() / ".cache" / "mlrig-bench"
SERVERS = ("mlrig", "raw", "raw-onnx", "mlflow", "bentoml")
#: the goals of issue 10 (1-row req/s and 100-row rows/s as multiples of MLflow's best)
GOAL_VS_MLFLOW = 5.0
GOAL_OPEN_P99_MS = 100.0
GOAL_P50_MS = 0.5
GOAL_LOGGING_LOSS = 0.10
DEPLOYMENT = "bc"
#: mlrig's variants: (label, inference logging at 100 %, authentication on)
BASE_VARIANT = "(logging off, auth off)"
VARIANTS = (
    (BASE_VARIANT, False, False),
    ("+logging", True, False),
    ("+auth", False, True),
    ("+logging +auth", True, True),
)


@dataclass
class Target:
    """One server under test: how to start it and where to send what."""

    system: str
    workers: int
    command: list[str]
    predict_path: str
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    headers: dict[str, str] = field(default_factory=dict)
    variant: str = ""
    version: str = ""
    #: the start of a line the server prints once fully up (mlrig's supervisor: "ready:",
    #: every replica loaded and warmed; the readiness path alone reaches only one replica)
    ready_line: str | None = None

    @property
    def label(self) -> str:
        unit = "replica" if self.system == "mlrig" else "worker"
        name = f"{self.system} {self.workers} {unit}{'s' if self.workers > 1 else ''}"
        return f"{name} {self.variant}".strip()


# --- the model and the peers' environments --------------------------------------------------


def request_bodies() -> tuple[bytes, bytes, Any]:
    """The 1-row and 100-row bodies, and the 100 rows (for the correctness check)."""
    import orjson

    from mlrig.testing.serving import breast_cancer_data

    x = breast_cancer_data().x
    return (
        orjson.dumps({"inputs": x[:1].tolist()}),
        orjson.dumps({"inputs": x[:100].tolist()}),
        x[:100],
    )


def save_pickle(path: Path) -> Any:
    """Pickle the benchmark's fitted pipeline for the peers; return it."""
    from mlrig.testing.serving import breast_cancer_estimator

    model = breast_cancer_estimator()
    path.write_bytes(pickle.dumps(model))
    return model


def _pins() -> list[str]:
    """scikit-learn and numpy at mlrig's versions, so the peers load the same pickle."""
    import numpy
    import sklearn

    return [f"scikit-learn=={sklearn.__version__}", f"numpy=={numpy.__version__}"]


def ensure_venv(venv: Path, package: str, probe: str) -> Path:
    """The virtual environment ``venv`` with ``package`` and the pins, made the first time."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import {probe}, sklearn, numpy; print(sklearn.__version__)"]
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True, check=False)
        if found.returncode == 0 and _pins()[0].endswith(found.stdout.strip()):
            return venv
    print(f"installing {package} into {venv} (first run only)", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", package, *_pins()],
        check=True,
        stdout=sys.stderr,
    )
    return venv


def package_version(python: Path | str, module: str) -> str:
    out = subprocess.run(
        [str(python), "-c", f"import {module}; print({module}.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "?"


# --- mlrig's side ------------------------------------------------------------------------


def prepare_mlrig(home: Path) -> dict[str, str]:
    """A platform under ``home`` (SQLite, local storage) with the model registered and a
    deployment ``bc`` of it; returns the config path, a predict token and the runtime."""
    from mlrig.platform import Platform
    from mlrig.testing.serving import ACTOR, register_breast_cancer_model

    home.mkdir(parents=True, exist_ok=True)
    config = home / "mlrig.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{home / "mlrig.db"}"\n\n'
        f'[storage]\nbackend = "local"\n\n[storage.local]\nroot = "{home / "artifacts"}"\n\n'
        f'[serving]\ncache_dir = "{home / "serving-cache"}"\n'
    )
    platform = Platform.from_config(config)
    try:
        version = register_breast_cancer_model(platform, name=DEPLOYMENT)
        # the ONNX export as registered, for the raw ASGI + onnxruntime baseline
        files = platform.registry.download_version(DEPLOYMENT, version["version"], home / "v")
        onnx = next((str(f) for f in files if f.name == "model.onnx"), "")
        deployment = platform.deployments.create(
            name=DEPLOYMENT, model=DEPLOYMENT, version=version["version"], actor=ACTOR
        )
        if deployment.get("status") != "active":
            # a deployment starts "pending"; the data plane serves the non-inactive ones
            with contextlib.suppress(Exception):
                platform.deployments.update(DEPLOYMENT, status="active", actor=ACTOR)
        platform.security.create_user(name="bench", role="viewer")
        token = platform.security.create_token(user="bench", scopes=[f"predict:{DEPLOYMENT}"])
        return {
            "config": str(config),
            "token": token["token"],
            "runtime": str(deployment.get("resolved_runtime") or deployment.get("runtime")),
            "onnx": onnx,
        }
    finally:
        platform.close()


def mlrig_target(
    setup: dict[str, str], replicas: int, *, logging: bool, auth: bool, variant: str = ""
) -> Target:
    mlrig = Path(sys.executable).with_name("mlrig")
    return Target(
        system="mlrig",
        workers=replicas,
        command=[
            str(mlrig),
            "--config",
            setup["config"],
            "serve",
            "--replicas",
            str(replicas),
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--log-level",
            "warning",
        ],
        predict_path=f"/api/ml/deployments/{DEPLOYMENT}/predict",
        ready_path="/readyz",
        env={
            "MLRIG_SERVING__LOG_SAMPLE_RATE": "1.0" if logging else "0.0",
            "MLRIG_AUTH__ENABLED": "true" if auth else "false",
        },
        headers={"Authorization": f"Bearer {setup['token']}"} if auth else {},
        variant=variant,
        version=f"{setup['runtime']} runtime",
        ready_line="ready:",
    )


def raw_target(model: Path, workers: int, *, onnx: str = "") -> Target:
    """The raw ASGI app on the pickle, or with ``onnx`` on the ONNX export (1 thread)."""
    import uvicorn

    env = {"BENCH_ONNX": onnx, "BENCH_THREADS": "1"} if onnx else {"BENCH_MODEL": str(model)}
    return Target(
        system="raw-onnx" if onnx else "raw",
        workers=workers,
        command=[
            sys.executable,
            "-m",
            "uvicorn",
            "raw_asgi:app",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--workers",
            str(workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        predict_path="/predict",
        ready_path="/",
        env=env,
        cwd=PEERS,
        version=f"uvicorn {uvicorn.__version__}",
    )


def mlflow_target(venv: Path, model_dir: Path, workers: int) -> Target:
    return Target(
        system="mlflow",
        workers=workers,
        command=[
            str(venv / "bin" / "mlflow"),
            "models",
            "serve",
            "-m",
            str(model_dir),
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            "{port}",
            "-w",
            str(workers),
        ],
        predict_path="/invocations",
        ready_path="/ping",
        env={
            # mlflow runs `uvicorn` by name: its venv's bin first on PATH
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
        },
        version=package_version(venv / "bin" / "python", "mlflow"),
    )


def bentoml_target(venv: Path, model: Path, workers: int) -> Target:
    return Target(
        system="bentoml",
        workers=workers,
        command=[
            str(venv / "bin" / "bentoml"),
            "serve",
            "bento_service:BreastCancer",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
        ],
        predict_path="/predict",
        ready_path="/readyz",
        env={
            "BENCH_MODEL": str(model),
            "BENCH_WORKERS": str(workers),
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "BENTOML_DO_NOT_TRACK": "True",
            "DO_NOT_TRACK": "true",
        },
        cwd=PEERS,
        version=package_version(venv / "bin" / "python", "bentoml"),
    )


# --- running a server -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(target: Target, logs: Path, *, timeout: float = 180) -> Iterator[tuple[str, int]]:
    """Start ``target`` in a process group of its own, wait until its readiness path
    answers 200, yield its base URL and process id; stop the whole group afterwards."""
    import httpx

    port = free_port()
    command = [part.replace("{port}", str(port)) for part in target.command]
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{target.label.replace(' ', '-')}.log"
    env = {**os.environ, **target.env, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=target.cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise SystemExit(f"{target.label} exited ({proc.returncode}):\n{tail}")
            printed = target.ready_line is None or any(
                line.strip().startswith(target.ready_line)
                for line in log_path.read_text(errors="replace").splitlines()
            )
            with contextlib.suppress(httpx.HTTPError):
                if printed and httpx.get(url + target.ready_path, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise SystemExit(f"{target.label} not ready after {timeout:.0f} s:\n{tail}")
            time.sleep(0.2)
        settle(proc.pid, interval_s=0.5)
        yield url, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def check_answers(url: str, target: Target, body: bytes, expected: list[int]) -> None:
    """The server's predictions for the 100 rows equal the pipeline's own."""
    import httpx

    headers = {"Content-Type": "application/json", **target.headers}
    answer = httpx.post(url + target.predict_path, content=body, headers=headers, timeout=30)
    if answer.status_code != 200:
        raise SystemExit(f"{target.label}: {answer.status_code} {answer.text[:500]}")
    data = answer.json()
    predictions = data["predictions"] if isinstance(data, dict) else data
    if [int(p) for p in predictions] != expected:
        raise SystemExit(f"{target.label}: predictions differ from sklearn's")


# --- load generators --------------------------------------------------------------------

_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"errors\\": %d, "
    .. "\\"status_errors\\": %d, \\"p50_us\\": %f, \\"p99_us\\": %f, \\"max_us\\": %f}}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


class LoadGenerator:
    """Closed-loop load: wrk with a Lua script, or (no wrk: ``--tiny`` in CI) the Python
    closed-loop client of ``_openloop.py``."""

    def __init__(self, work: Path, wrk: str | None) -> None:
        self.work = work
        self.wrk = wrk
        self.name = "wrk" if wrk else "python closed loop"

    def run(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        connections: int,
        seconds: float,
    ) -> dict[str, float]:
        """requests/s, errors and latency p50/p99 (ms) of ``seconds`` of load."""
        if not self.wrk:
            result = closed_loop(
                url, body, connections=connections, seconds=seconds, headers=headers
            )
            return result.figures()
        script = self.work / f"wrk-{abs(hash((body, tuple(headers.items()))))}.lua"
        if not script.exists():
            lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
            script.write_text(_LUA.format(body=body.decode(), headers=lines))
        cmd = [
            self.wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=seconds + 60)
        line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            msg = f"wrk failed ({out.returncode}): {out.stdout[-500:]}{out.stderr[-500:]}"
            raise SystemExit(msg)
        raw = json.loads(line.removeprefix("WRKJSON "))
        seconds_run = raw["duration_us"] / 1e6
        return {
            "requests": raw["requests"],
            "rps": round(raw["requests"] / seconds_run),
            "errors": raw["errors"] + raw["status_errors"],
            "p50_ms": round(raw["p50_us"] / 1000, 3),
            "p99_ms": round(raw["p99_us"] / 1000, 3),
            "max_ms": round(raw["max_us"] / 1000, 3),
        }


def measure_run(
    url: str,
    pid: int,
    target: Target,
    bodies: tuple[bytes, bytes],
    load: LoadGenerator,
    args: argparse.Namespace,
    *,
    full: bool,
) -> dict[str, Any]:
    """One run of the measurements on a running server (``full``: all four, else the
    1-row throughput and 1-connection latency only)."""
    one, hundred = bodies
    endpoint = url + target.predict_path
    warm = args.warmup

    def closed(body: bytes, connections: int) -> dict[str, float]:
        """An untimed warm-up, then the timed run, with the server's CPU time over it."""
        if warm:
            load.run(endpoint, body, target.headers, connections=connections, seconds=warm)
        cpu = tree_cpu_seconds(pid)
        seconds = args.duration
        out = load.run(endpoint, body, target.headers, connections=connections, seconds=seconds)
        out["cpu_s"] = tree_cpu_seconds(pid) - cpu
        return out

    row: dict[str, Any] = {}
    peak = closed(one, args.connections)
    row["rps_1row"], row["errors"] = peak["rps"], peak["errors"]
    # server CPU per request: a figure the other users of a shared machine disturb less
    row["server_cpu_us_per_req"] = round(peak["cpu_s"] / max(1, peak["requests"]) * 1e6)
    single = closed(one, 1)
    row["p50_ms"], row["p99_ms"] = single["p50_ms"], single["p99_ms"]
    row["errors"] += single["errors"]
    if not full:
        return row
    batch = closed(hundred, args.connections)
    row["rows_per_s_100"] = batch["rps"] * 100
    row["errors"] += batch["errors"]
    # The open-loop client is Python: on 2 shared cores it takes more CPU from the server
    # than wrk does, so its 80 % is of the peak it reaches itself (closed loop, same
    # connections; reported as open_ref_rps), not of wrk's.
    reference = closed_loop(
        endpoint, one, connections=args.connections, seconds=args.duration, headers=target.headers
    ).figures()
    row["open_ref_rps"] = reference["rps"]
    rate = max(1.0, reference["rps"] * args.open_share)
    opened = open_loop(
        endpoint,
        one,
        rate=rate,
        seconds=args.duration,
        warmup_seconds=warm,
        connections=args.connections,
        headers=target.headers,
    ).figures()
    row["open_rate"] = opened["rate"]
    row["open_p50_ms"], row["open_p99_ms"] = opened["p50_ms"], opened["p99_ms"]
    row["open_dispatch_lag_p99_ms"] = opened["dispatch_lag_p99_ms"]
    row["open_max_backlog"] = opened["max_backlog"]
    row["errors"] += opened["errors"]
    return row


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the runs (errors: the sum)."""
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        merged[key] = sum(values) if key == "errors" else round(statistics.median(values), 3)
    merged["runs"] = len(runs)
    merged["rps_1row_runs"] = [r["rps_1row"] for r in runs]
    return merged


def bench_group(
    targets: list[Target],
    bodies: tuple[bytes, bytes],
    expected: tuple[bytes, list[int]],
    load: LoadGenerator,
    args: argparse.Namespace,
    logs: Path,
    *,
    full: bool = True,
) -> list[dict[str, Any]]:
    """Start every target (one after the other, each settled), then take the runs in
    turns: run 1 of each, run 2 of each... so that a burst of load from elsewhere on a
    shared machine hits every server's figures alike instead of one server's; the idle
    servers wait meanwhile. Returns one row per target, the median of its runs."""
    with contextlib.ExitStack() as stack:
        live = []
        for target in targets:
            print(f"-- starting {target.label}", file=sys.stderr)
            url, pid = stack.enter_context(running(target, logs))
            check_answers(url, target, *expected)
            live.append((target, url, pid))
        runs: dict[str, list[dict[str, Any]]] = {t.label: [] for t in targets}
        for turn in range(args.runs):
            for target, url, pid in live:
                print(f"-- run {turn + 1}/{args.runs}: {target.label}", file=sys.stderr)
                row = measure_run(url, pid, target, bodies, load, args, full=full)
                print(f"   {json.dumps(row)}", file=sys.stderr)
                runs[target.label].append(row)
    rows = []
    for target in targets:
        row = {"system": target.system, "workers": target.workers, "variant": target.variant}
        row.update(label=target.label, version=target.version, **median_row(runs[target.label]))
        rows.append(row)
    return rows


# --- report ------------------------------------------------------------------------------


def best(rows: list[dict[str, Any]], system: str, key: str = "rps_1row") -> dict[str, Any] | None:
    mine = [r for r in rows if r["system"] == system and not r["variant"] and key in r]
    return max(mine, key=lambda r: r[key]) if mine else None


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal of issue 10 that the rows can judge, with the figures it compares."""
    out: list[dict[str, Any]] = []
    mlrig, mlflow = best(rows, "mlrig"), best(rows, "mlflow")
    if mlrig and mlflow:
        for key in ("rps_1row", "rows_per_s_100"):
            top, peer = best(rows, "mlrig", key), best(rows, "mlflow", key)
            assert top and peer
            ratio = top[key] / peer[key]
            out.append(
                {
                    "goal": f"{key}: >= {GOAL_VS_MLFLOW:g}x MLflow's best",
                    "figure": f"{ratio:.1f}x ({top[key]:,.0f} vs {peer[key]:,.0f})",
                    "met": ratio >= GOAL_VS_MLFLOW,
                }
            )
    for r in rows:
        if r["system"] != "mlrig" or r["variant"]:
            continue
        raw = next((x for x in rows if x["system"] == "raw" and x["workers"] == r["workers"]), None)
        if raw:
            out.append(
                {
                    "goal": f"rps_1row >= raw ASGI, {r['workers']} worker(s)",
                    "figure": f"{r['rps_1row'] / raw['rps_1row']:.2f}x "
                    f"({r['rps_1row']:,.0f} vs {raw['rps_1row']:,.0f})",
                    "met": r["rps_1row"] >= raw["rps_1row"],
                }
            )
        if "open_p99_ms" in r:
            out.append(
                {
                    "goal": f"p99 < {GOAL_OPEN_P99_MS:g} ms at 80 % of peak, {r['label']}",
                    "figure": f"{r['open_p99_ms']} ms at {r['open_rate']:,} req/s",
                    "met": r["open_p99_ms"] < GOAL_OPEN_P99_MS,
                }
            )
        out.append(
            {
                "goal": f"unloaded p50 < {GOAL_P50_MS} ms, {r['label']}",
                "figure": f"{r['p50_ms']} ms",
                "met": r["p50_ms"] < GOAL_P50_MS,
            }
        )
    base = next((r for r in rows if r["variant"] == BASE_VARIANT), None)
    for variant, what in (("+logging", "inference logging at 100 %"), ("+auth", "auth on")):
        row = next((r for r in rows if r["variant"] == variant), None)
        if not (row and base):
            continue
        loss = 1 - row["rps_1row"] / base["rps_1row"]
        cpu = row["server_cpu_us_per_req"] / base["server_cpu_us_per_req"] - 1
        goal = "issue's goal" if variant == "+logging" else "no goal"
        out.append(
            {
                "goal": f"{what}: within 10 % of it off ({goal})",
                "figure": f"req/s {-loss:+.1%} ({row['rps_1row']:,.0f} vs "
                f"{base['rps_1row']:,.0f}), server CPU/request {cpu:+.1%}",
                "met": loss <= GOAL_LOGGING_LOSS,
            }
        )
    return out


def comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """mlrig's best against each peer's best, per figure (the ratio > 1: mlrig ahead;
    latencies: the peer's over mlrig's, so > 1 also means mlrig is faster)."""
    out = []
    for key, higher in (("rps_1row", True), ("rows_per_s_100", True), ("p50_ms", False)):
        mine = [r for r in rows if r["system"] == "mlrig" and not r["variant"] and key in r]
        if not mine:
            continue
        pick = max if higher else min
        top = pick(mine, key=lambda r: r[key])
        for peer in SERVERS[1:]:
            theirs = [r for r in rows if r["system"] == peer and key in r]
            if theirs and top[key] and (other := pick(theirs, key=lambda r: r[key]))[key]:
                ratio = top[key] / other[key] if higher else other[key] / top[key]
                out.append(
                    {
                        "figure": key,
                        "mlrig": top["label"],
                        "peer": other["label"],
                        "ratio": round(ratio, 2),
                    }
                )
    return out


def table(report: dict[str, Any]) -> str:
    head = (
        "| server | req/s 1 row, 32 conn | rows/s 100-row | p50 / p99 ms, 1 conn "
        "| open loop: p99 ms at req/s | server CPU µs/req | errors |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        rows = f"{r['rows_per_s_100']:,.0f}" if "rows_per_s_100" in r else "-"
        opened = f"{r['open_p99_ms']} at {r['open_rate']:,}" if "open_p99_ms" in r else "-"
        single = f"{r['p50_ms']} / {r['p99_ms']}"
        cpu = f"{r['server_cpu_us_per_req']:,.0f}"
        cells = [r["label"], f"{r['rps_1row']:,.0f}", rows, single, opened, cpu, str(r["errors"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| figure | mlrig (best) | peer (best) | mlrig's advantage |"]
    lines.append("|---|---|---|---:|")
    for c in report["comparisons"]:
        lines.append(f"| {c['figure']} | {c['mlrig']} | {c['peer']} | {c['ratio']}x |")
    lines += ["", "| goal | figure | met? |", "|---|---|---|"]
    for g in report["goals"]:
        lines.append(f"| {g['goal']} | {g['figure']} | {'yes' if g['met'] else '**no**'} |")
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------


def find_wrk(tiny: bool) -> str | None:
    """wrk's path; installed with apt-get when missing (not in ``--tiny``: no network)."""
    if found := shutil.which("wrk"):
        return found
    if tiny:
        return None
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("installing wrk (apt-get install -y wrk)", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], stdout=sys.stderr, check=False)
    if found := shutil.which("wrk"):
        return found
    raise SystemExit("wrk is missing: apt-get install -y wrk")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    parser.add_argument("--workers", default="1,2", help="worker / replica counts to try")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed seconds before each")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--open-share", type=float, default=0.8, help="open-loop rate / peak")
    parser.add_argument(
        "--variants",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mlrig with logging 100 %%, auth on, both",
    )
    parser.add_argument(
        "--load",
        choices=("wrk", "python"),
        default="wrk",
        help="closed-loop generator (python: the script's own client, when wrk is missing)",
    )
    parser.add_argument("--peer-venvs", type=Path, default=DEFAULT_PEER_VENVS)
    parser.add_argument(
        "--logging-only",
        action="store_true",
        help="only mlrig with inference logging off and on, at the first --workers count "
        "(no other server, no auth variants)",
    )
    parser.add_argument("--tiny", action="store_true", help="CI smoke size: mlrig + raw, 1 run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.tiny:
        args.servers, args.workers, args.runs = "mlrig,raw", "1", 1
        args.duration, args.warmup, args.variants = 0.5, 0.0, False
    args.server_list = [s for s in args.servers.split(",") if s]
    if unknown := set(args.server_list) - set(SERVERS):
        parser.error(f"unknown server {sorted(unknown)}: use {', '.join(SERVERS)}")
    args.worker_list = [int(w) for w in args.workers.split(",") if w]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_wrk = find_wrk(args.tiny) if args.load == "wrk" else None
    one, hundred, rows100 = request_bodies()
    with tempfile.TemporaryDirectory(prefix="mlrig-bench-serving-") as tmp:
        work = Path(tmp)
        model_pkl = work / "model.pkl"
        model = save_pickle(model_pkl)
        expected = (hundred, [int(p) for p in model.predict(rows100)])
        load = LoadGenerator(work, load_wrk)
        targets: list[Target] = []
        setup: dict[str, str] = {}
        for system in [] if args.logging_only else args.server_list:
            for workers in args.worker_list:
                if system == "mlrig":
                    setup = setup or prepare_mlrig(work / "mlrig")
                    targets.append(mlrig_target(setup, workers, logging=False, auth=False))
                elif system == "raw":
                    targets.append(raw_target(model_pkl, workers))
                elif system == "raw-onnx":
                    setup = setup or prepare_mlrig(work / "mlrig")
                    targets.append(raw_target(model_pkl, workers, onnx=setup["onnx"]))
                elif system == "mlflow":
                    venv = ensure_venv(args.peer_venvs / "serving-mlflow", "mlflow", "mlflow")
                    model_dir = work / "mlflow-model"
                    if not model_dir.exists():
                        save = [str(venv / "bin" / "python"), str(PEERS / "mlflow_save.py")]
                        subprocess.run([*save, str(model_pkl), str(model_dir)], check=True)
                    targets.append(mlflow_target(venv, model_dir, workers))
                else:
                    venv = ensure_venv(args.peer_venvs / "serving-bentoml", "bentoml", "bentoml")
                    targets.append(bentoml_target(venv, model_pkl, workers))
        logs = work / "logs"
        if args.logging_only:
            # only the logging figure: mlrig at the first --workers count, no main group
            setup = setup or prepare_mlrig(work / "mlrig")
            rows: list[dict[str, Any]] = []
            top: dict[str, Any] | None = {"workers": args.worker_list[0]}
            args.variants = True
        else:
            rows = bench_group(targets, (one, hundred), expected, load, args, logs)
            top = best(rows, "mlrig")
        if args.variants and top and setup:
            # a group of its own, mlrig's better replica count with and without each
            # feature, in turns: the differences are small beside a shared machine's noise
            group = [
                mlrig_target(setup, top["workers"], logging=logging, auth=auth, variant=variant)
                for variant, logging, auth in VARIANTS
                if not (args.logging_only and auth)
            ]
            rows += bench_group(group, (one, hundred), expected, load, args, logs, full=False)
    import sklearn

    report = {
        "model": "StandardScaler + LogisticRegression, breast_cancer (30 features)",
        "sklearn": sklearn.__version__,
        "cpus": os.cpu_count(),
        "load_generator": load.name,
        "load_generator_shares_cpus": True,
        "connections": args.connections,
        "duration_s": args.duration,
        "runs": args.runs,
        "open_share": args.open_share,
        "results": rows,
        "comparisons": comparisons(rows),
        "goals": goals(rows),
    }
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
