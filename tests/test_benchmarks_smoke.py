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

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: the scripts this file runs; a new benchmark needs a smoke test here
SMOKE_TESTED = {"bench_startup.py", "bench_registry_search.py", "bench_artifacts.py"}


def run_benchmark(script: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``benchmarks/<script> ARGS --json`` and return its JSON output."""
    path = BENCHMARKS / script
    if not path.exists():
        pytest.skip(f"{script} is not in benchmarks/ (yet)")
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
