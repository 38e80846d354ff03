"""Every script in ``benchmarks/`` runs once at a tiny size, so that none of them rots.

These check that each benchmark runs and prints the JSON it documents, with positive
figures; they judge no goal (the machine is too noisy and the sizes too small). The
figures themselves are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlrig.experiments.metrics import HISTORY_FIELDS

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: the scripts this file runs; a new benchmark needs a smoke test here
SMOKE_TESTED = {
    "bench_startup.py",
    "bench_registry_search.py",
    "bench_artifacts.py",
    "bench_metrics_ingest.py",
    "bench_metric_history.py",
    "bench_scheduler.py",
    "bench_onnx_runtime.py",
    "bench_serving.py",
    "bench_tracking_client.py",
    "bench_cli.py",
    "bench_search.py",
    "bench_asha.py",
    "bench_sweeps.py",
    "bench_ddp.py",
    "bench_features.py",
}


def run_benchmark(script: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``benchmarks/<script> ARGS --json`` and return its JSON output."""
    path = BENCHMARKS / script
    assert path.exists(), f"{script} is not in benchmarks/"
    proc = subprocess.run(
        [sys.executable, str(path), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_every_benchmark_has_a_smoke_test():
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    assert scripts - SMOKE_TESTED == set(), "add a smoke test for each new benchmark"


def test_bench_startup():
    report = run_benchmark("bench_startup.py", "--runs", "2", "--warmup", "0")
    assert report["runs"] == 2 and positive(report["goal_ms"])
    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {"mlrig --help", "import mlrig", "python -c pass"}
    for row in rows.values():
        assert all(positive(row[k]) for k in ("min_ms", "median_ms", "p90_ms")), row
        assert row["min_ms"] <= row["median_ms"] <= row["p90_ms"]
    for name in ("mlrig --help", "import mlrig"):
        assert rows[name]["heavy_modules"] == [], rows[name]
        assert positive(rows[name]["modules_imported"])
    assert isinstance(rows["mlrig --help"]["goal_met"], bool)


@pytest.mark.parametrize(
    "database",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ],
)
def test_bench_registry_search(database: str, request: pytest.FixtureRequest):
    args = ["--versions", "300", "--queries", "5", "--databases", database]
    if database == "postgresql":
        # fails, saying so, when the server is down (see mlrig.testing.database)
        args += ["--postgres-url", request.getfixturevalue("postgres_admin_url")]
    report = run_benchmark("bench_registry_search.py", *args)
    assert positive(report["goal_p99_ms"])
    [db] = report["databases"]
    assert db["database"] == database
    assert db["versions"] == 300 and db["models"] == 200
    assert positive(db["bulk_insert"]["rows"]) and positive(db["bulk_insert"]["rows_per_s"])
    assert positive(db["registration"]["versions"])
    assert positive(db["registration"]["versions_per_s"])
    kinds = {k["kind"]: k for k in db["kinds"]}
    assert set(kinds) == {
        "prefix_framework",
        "metric_threshold",
        "tag_creator",
        "created_range",
        "sort_metric",
        "second_page",
        "model_versions",
    }
    for row in [*kinds.values(), db["overall"]]:
        for side in ("service", "http"):
            assert positive(row[side]["p50_ms"]) and positive(row[side]["p99_ms"]), row
        assert isinstance(row["goal_met"], bool)
    for row in kinds.values():
        assert row["plan"], f"no query plan captured for {row['kind']}"
    # every kind finds something, so none of them times an empty result
    assert all(positive(k["mean_items"]) for k in kinds.values()), kinds


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("local", id="local"),
        pytest.param("s3", id="s3", marks=pytest.mark.s3),
    ],
)
def test_bench_artifacts(backend: str):
    report = run_benchmark("bench_artifacts.py", "--size-mb", "4", "--backends", backend)
    assert positive(report["goal_peak_rss_mib"])
    assert {r["mode"] for r in report["results"]} == {"plain", "zstd+aes"}
    for row in report["results"]:
        assert row["backend"] == backend and row["size_mib"] == 4
        for key in ("stored_mib", "up_mib_s", "down_mib_s"):
            assert positive(row[key]), (key, row)
        for key in ("peak_rss_up_mib", "peak_rss_down_mib"):
            assert row[key] >= 0, (key, row)


# --- the engine's benchmarks: metric ingest, metric history, scheduler ---------------------
# bench_metrics_ingest.py runs MLflow beside mlrig, installing it into a virtual environment
# of its own the first time; the smoke run passes --no-peer, so CI never installs MLflow.

DATABASES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def _database_args(database: str, request: pytest.FixtureRequest) -> list[str]:
    args = ["--databases", database]
    if database == "postgresql":
        # fails, saying so, when the server is down (see mlrig.testing.database)
        args += ["--postgres-url", request.getfixturevalue("postgres_admin_url")]
    return args


@pytest.mark.parametrize("database", DATABASES)
def test_bench_metrics_ingest(database: str, request: pytest.FixtureRequest, tmp_path: Path):
    """mlrig's side only: ``--no-peer`` skips MLflow (no virtual environment, no install)."""
    venv = tmp_path / "mlflow-venv"
    report = run_benchmark(
        "bench_metrics_ingest.py",
        "--points",
        "2000",
        "--batch",
        "1000",
        "--no-peer",
        "--concurrency",
        "2",
        "--peer-venv",
        str(venv),
        *_database_args(database, request),
    )
    assert not venv.exists(), "--no-peer must not create MLflow's environment"
    assert report["peer"] is None
    assert positive(report["goal_points_per_s"]) and positive(report["goal_ratio"])
    [row] = report["results"]
    assert row["system"] == "mlrig" and row["database"] == database
    assert row["points"] == 2000 and row["batch"] == 1000 and row["batches"] == 2
    assert row["concurrency"] == 2
    for key in (
        "seconds",
        "median_points_per_s",
        "overall_points_per_s",
        "batch_p50_ms",
        "batch_p99_ms",
        "client_encode_p50_ms",
        "round_trip_median_points_per_s",
    ):
        assert positive(row[key]), (key, row)
    [comparison] = report["comparisons"]
    assert comparison["database"] == database and comparison["ratio"] is None
    assert comparison["mlrig_points_per_s"] == row["overall_points_per_s"]
    assert comparison["concurrency"] == 2
    assert isinstance(comparison["goal_met"], bool)


@pytest.mark.parametrize("database", DATABASES)
def test_bench_metric_history(database: str, request: pytest.FixtureRequest):
    report = run_benchmark(
        "bench_metric_history.py",
        "--points",
        "1000",
        "--batch",
        "500",
        "--fetches",
        "3",
        "--warmup",
        "1",
        # PostgreSQL fetches the default columns, SQLite only what a plot needs
        *(["--fields", "steps,values"] if database == "sqlite" else []),
        *_database_args(database, request),
    )
    assert positive(report["goal_ms"])
    [row] = report["databases"]
    assert row["database"] == database and row["points"] == 1000
    expected = ["steps", "values"] if database == "sqlite" else sorted(HISTORY_FIELDS)
    assert row["http_fields"] == expected
    assert row["stored_points"] == 2000 and row["fetches"] == 3
    assert positive(row["body_bytes"]) and positive(row["write"]["points_per_s"])
    for side in ("service", "http", "client_decode"):
        assert all(positive(row[side][k]) for k in ("p50_ms", "p99_ms", "mean_ms")), row
    assert isinstance(row["goal_met"], bool)


@pytest.mark.parametrize("database", DATABASES)
def test_bench_scheduler(database: str, request: pytest.FixtureRequest):
    report = run_benchmark(
        "bench_scheduler.py",
        "--jobs",
        "5",
        "--workers",
        "2",
        *_database_args(database, request),
        timeout=300,
    )
    assert positive(report["goal_ms"]) and report["workers"] == 2
    [row] = report["databases"]
    assert row["database"] == database
    queue = row["queue"]
    assert queue["jobs"] == 5 and positive(queue["per_job_ms"])
    for call in ("enqueue", "claim", "complete", "heartbeat"):
        assert positive(queue[call]["p50_ms"]) and positive(queue[call]["p99_ms"]), call
    assert isinstance(queue["goal_met"], bool)
    threads = row["queue_concurrent"]
    assert positive(threads["per_job_ms"]) and sum(threads["jobs_per_thread"]) == 5
    e2e = row["end_to_end"]
    assert e2e["jobs"] == 5 and e2e["workers"] == 2
    for key in ("wall_s", "wall_per_job_ms", "cpu_s_per_job", "python_start_ms"):
        assert positive(e2e[key]), (key, e2e)
    for phase in ("runner_startup", "finish", "claimed_to_completed"):
        assert positive(e2e["phases_mean_ms"][phase]), (phase, e2e)
    # the process start time has /proc's 10 ms resolution: launch may round to 0
    assert isinstance(e2e["phases_mean_ms"]["launch"], float)


@pytest.mark.heavy
def test_bench_onnx_runtime():
    args = ["--features", "8", "--hidden", "16", "--rows", "256", "--batches", "2"]
    report = run_benchmark("bench_onnx_runtime.py", *args, "--singles", "5", "--warmup", "1")
    assert report["model"] == "MLP 8-16-16-10" and report["rows_per_batch"] == 256
    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {"sklearn", "onnx cpu", "onnx cuda"}
    measured = [rows["sklearn"], rows["onnx cpu"]]
    if report["cuda_usable"]:
        measured.append(rows["onnx cuda"])
    else:
        assert rows["onnx cuda"]["skipped"]
    for row in measured:
        assert positive(row["batch_rows_per_s"]), row
        assert positive(row["single_row"]["p50_ms"]), row
        assert row["agreement"] > 0.95, row
    assert rows["onnx cpu"]["providers"] == ["CPUExecutionProvider"]


# --- serving: mlrig beside MLflow, BentoML and a raw ASGI app -------------------------------
# bench_serving.py installs MLflow and BentoML into virtual environments of their own; --tiny
# runs mlrig and the raw ASGI app only (no peer environment, no network), about a second of
# load each, with wrk when it is installed, else the script's Python closed-loop client.


def test_bench_serving(tmp_path: Path):
    venvs = tmp_path / "peer-venvs"
    report = run_benchmark("bench_serving.py", "--tiny", "--peer-venvs", str(venvs), timeout=300)
    assert not venvs.exists(), "--tiny must not create the peers' environments"
    assert report["load_generator"] in {"wrk", "python closed loop"}
    assert report["load_generator_shares_cpus"] is True and report["runs"] == 1
    rows = {(r["system"], r["workers"]): r for r in report["results"]}
    assert set(rows) == {("mlrig", 1), ("raw", 1)}
    for row in rows.values():
        # every request answered 200 (wrk counts non-2xx and socket errors)
        assert row["errors"] == 0, row
        for key in ("rps_1row", "rows_per_s_100", "p50_ms", "p99_ms", "open_rate", "open_p99_ms"):
            assert positive(row[key]), (key, row)
        assert row["p50_ms"] <= row["p99_ms"], row
    goals = {g["goal"]: g for g in report["goals"]}
    assert "rps_1row >= raw ASGI, 1 worker(s)" in goals
    assert all(isinstance(g["met"], bool) for g in goals.values())


def test_bench_tracking_client():
    """mlrig's side only (``--no-peer``: no MLflow environment): every point arrives."""
    report = run_benchmark(
        "bench_tracking_client.py", "--calls", "5000", "--rounds", "1", "--no-peer", timeout=300
    )
    (row,) = report["rows"]
    assert row["system"] == "mlrig" and row["calls"] == 5000 and row["lost"] == 0
    assert positive(row["cpu_us_per_call"]) and positive(row["end_s"])
    assert isinstance(report["goal_met"], bool)


def test_bench_cli():
    """One run of each command (``--tiny``: no MLflow environment), every one exits 0 and
    prints what was seeded (the script checks), embedded and against ``mlrig server``."""
    report = run_benchmark("bench_cli.py", "--tiny", timeout=300)
    rows = {r["command"]: r for r in report["results"]}
    for mode in ("embedded", "remote"):
        for command in ("models list", "experiments list"):
            row = rows[f"mlrig {command} ({mode})"]
            assert row["runs"] == 1 and positive(row["median_ms"]), row
    assert not any(c.startswith("mlflow") for c in rows)
    assert len(report["goals"]) == 4 and all(isinstance(g["met"], bool) for g in report["goals"])


# --- search strategies: bench_search.py ---------------------------------------------------
# --smoke: the three test functions, 5 evaluations, 1 seed, no digits task; Optuna only when
# its environment is cached already (the smoke run installs nothing).


def _bench_search():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_search
    finally:
        sys.path.remove(str(BENCHMARKS))
    return bench_search


def test_bench_search_functions_have_their_known_optima():
    """Branin, Hartmann6 and Rosenbrock-10D give their published minima at their minimisers,
    and no better value at points around them."""
    bench = _bench_search()
    for name, f in bench.FUNCTIONS.items():
        for point in f["argmin"]:
            assert f["fn"](point) == pytest.approx(f["optimum"], abs=1e-5), name
            for key in point:
                for delta in (-1e-3, 1e-3):
                    near = {**point, key: point[key] + delta}
                    assert f["fn"](near) > f["optimum"] - 1e-5, (name, key, delta)
    assert bench.branin({"x1": 9.42478, "x2": 2.475}) == pytest.approx(0.397887, abs=1e-5)
    assert bench.rosenbrock({f"x{j}": 0.0 for j in range(10)}) == 9.0
    assert bench.hartmann6({f"x{j}": 0.0 for j in range(6)}) > -3.32237


def test_bench_search():
    report = run_benchmark("bench_search.py", "--smoke", timeout=300)
    rows = {(r["problem"], r["strategy"]): r for r in report["rows"]}
    strategies = {"random", "nevergrad"}
    if not report["skipped"]:
        strategies.add("optuna")
    assert set(rows) == {
        (p, s) for p in ("branin", "hartmann6", "rosenbrock10") for s in strategies
    }
    for row in rows.values():
        assert row["evals"] == 5 and row["seeds"] == 1 and row["iqr"] == 0, row
        assert row["median_best"] >= row["optimum"] - 1e-6, row
        assert row["wins"] in (0, 1) and positive(row["ms_per_trial"]), row
        curve = row["median_curve"]
        assert len(curve) == 5 and curve == sorted(curve, reverse=True), row
        if row["strategy"] != "optuna":
            assert positive(row["state_bytes"]) and positive(row["restore_ms"]), row
    assert sum(rows[("branin", s)]["wins"] for s in strategies) >= 1
    assert isinstance(report["goal"]["met"], bool)


def test_bench_asha():
    """4 trials of up to 4 epochs with ASHA and without pruning, through a real worker:
    the same points asked (random, one seed), the unpruned sweep trains every epoch."""
    report = run_benchmark("bench_asha.py", "--smoke", timeout=600)
    asha, full = report["sweeps"]
    assert report["trials"] == 4 and report["epochs"] == 4
    assert asha["pruner"]["rule"] == "asha" and full["pruner"] is None
    assert full["steps"] == full["max_steps"] == 16 and full["pruned_by_rung"] == {}
    assert 0 < asha["steps"] <= full["steps"] and asha["trials"] == full["trials"] == 4
    assert sum(asha["pruned_by_rung"].values()) == asha["states"]["pruned"]
    for sweep in (asha, full):
        assert 0 < sweep["best"] <= 1 and positive(sweep["wall_s"]), sweep
        assert all(1 <= t["epochs_trained"] <= 4 for t in sweep["per_trial"]), sweep
    # the pruned trials stopped early; the others trained every epoch
    for trial in asha["per_trial"]:
        assert (trial["epochs_trained"] < 4) == (trial["state"] == "pruned"), trial
        if trial["state"] == "pruned":
            assert trial["epochs_trained"] == trial["pruned_at_step"] + 1 in (2, 4), trial
    assert report["step_ratio"] == round(asha["steps"] / full["steps"], 4)
    assert isinstance(report["goal_met"], bool)


def test_bench_sweeps():
    """4 trials with prefork on and off and 2 CPU-bound trials at parallelism 1 and 2,
    each a real sweep on a real worker process: every timed trial is counted, the forked
    ones only with prefork, and the overhead is the wall per trial minus the trial's loop."""
    report = run_benchmark("bench_sweeps.py", "--smoke", timeout=600)
    assert report["trials"] == 4 and report["warmup"] == 1 and positive(report["goal_ms"])
    on, off = report["overhead"]
    assert (on["prefork"], off["prefork"]) == (True, False)
    assert on["timed_trials"] == [3] and on["forked_trials"] == [3]
    assert off["timed_trials"] == [3] and off["forked_trials"] == [0]
    for row in (on, off):
        for key in ("wall_ms", "train_ms", "cpu_per_trial_ms", "cpu_job_ms", "start_ms"):
            assert positive(row[key]), (key, row)
        assert abs(row["overhead_ms"] - (row["wall_ms"] - row["train_ms"])) <= 0.2, row
        assert isinstance(row["goal_met"], bool)
    assert on["cpu_fork_server_ms"] >= 0 and off["cpu_fork_server_ms"] == 0
    speedup = report["speedup"]
    assert speedup["trials"] == 2 and positive(speedup["speedup"])
    for side in ("parallelism_1", "parallelism_2"):
        assert positive(speedup[side]["wall_s"]) and positive(speedup[side]["train_s_mean"])


@pytest.mark.heavy
def test_bench_ddp():
    """2 tiny epochs through the ``torch-ddp`` trainer on a real worker and through plain
    ``torchrun --standalone``, at 2 processes and at 1: both walls and the ranks' samples/s
    parse and are positive, the overhead is the pair's relative difference."""
    report = run_benchmark("bench_ddp.py", "--smoke", timeout=600)
    assert report["epochs"] == 2 and report["samples"] == 512 and report["runs"] == 1
    assert report["nproc"] == 2 and report["model"] == "MLP 32-32-32-1"
    over = report["overhead"]
    [mlrig_wall], [plain_wall] = over["mlrig_wall_s"], over["plain_wall_s"]
    assert positive(mlrig_wall) and positive(plain_wall)
    assert over["median"] == pytest.approx((mlrig_wall - plain_wall) / plain_wall, abs=1e-3)
    assert over["mlrig_wall_s_median"] == mlrig_wall and over["plain_wall_s_median"] == plain_wall
    rates = report["throughput"]
    for key in ("nproc_1", "nproc_2"):
        row = rates[key]
        for field in ("mlrig_samples_per_s", "plain_samples_per_s", "mlrig_wall_s", "plain_wall_s"):
            assert positive(row[field]), (key, field, row)
    for side in ("mlrig", "plain"):
        expected = (
            rates["nproc_2"][f"{side}_samples_per_s"] / rates["nproc_1"][f"{side}_samples_per_s"]
        )
        assert rates[f"speedup_{side}"] == pytest.approx(expected, rel=1e-2)
    assert isinstance(report["goal_met"], bool)


# --- the feature store beside Feast: bench_features.py ---------------------------------------
# --tiny --no-peer: 200 drivers, 20 requests per figure, 2,000 training rows, mlrig's side only
# (Feast's environment is neither made nor used).


@pytest.mark.parametrize(
    "store",
    [
        pytest.param("sql-sqlite", id="sql-sqlite"),
        pytest.param("sql-postgresql", id="sql-postgresql", marks=pytest.mark.postgres),
        pytest.param("redis", id="redis"),
    ],
)
def test_bench_features(store: str, request: pytest.FixtureRequest, tmp_path: Path):
    venv = tmp_path / "feast-venv"
    args = ["--tiny", "--no-peer", "--feast-venv", str(venv), "--stores", store]
    if store == "sql-postgresql":
        args += ["--postgres-url", request.getfixturevalue("postgres_admin_url")]
    report = run_benchmark("bench_features.py", *args, timeout=300)
    assert not venv.exists(), "--no-peer must not create Feast's environment"
    assert report["feast"] is None and report["feast_version"] is None
    assert report["features_online"] == 50 and report["requests"] == 20
    [row] = report["mlrig"]["stores"]
    assert row["store"] == store and "error" not in row, row
    mat = row["materialize"]
    assert mat["source_rows"] == 200 * 5 * 5 and mat["keys_written"] == 200 * 5
    assert positive(mat["rows_per_s"]) and positive(mat["seconds"])
    for side in ("in_process", "http"):
        for batch in ("1", "100"):
            figures = row[side][batch]
            assert positive(figures["p50_ms"]) and figures["p50_ms"] <= figures["p99_ms"], figures
            # every driver exists and every value is live: 50 values per driver asked
            assert figures["check"]["values"] == 50 * int(batch), figures
    online = report["online"]
    assert len(online) == 4 and all(r["feast_p99_ms"] is None for r in online)
    assert all(r["goal_met"] is False for r in online)  # no Feast figure to beat
    [training] = report["training"]
    assert training["rows"] == 2000 and positive(training["seconds"])
    assert positive(training["peak_rss_mib"]) and positive(training["non_null"])
    assert isinstance(training["goal_met"], bool)
