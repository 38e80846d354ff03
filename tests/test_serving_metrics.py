"""ServingMetrics and the ``prometheus`` monitor: names, labels and buckets by the
Prometheus conventions, an exposition prometheus-client's parser reads, and figures
aggregated across real replica processes (multiprocess mode)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlrig.serving.metrics import (
    LATENCY_BUCKETS,
    MULTIPROC_ENV,
    ServingMetrics,
    collect_directory,
    mark_dead,
    prepare_multiprocess,
    render_directory,
)

SAFETY_S = 60

EXPECTED = {
    # family name (as the parser reports it) -> (type, label names besides "le")
    "mlrig_predict_requests": ("counter", {"deployment", "version", "code"}),
    "mlrig_predict_latency_seconds": ("histogram", {"deployment", "version"}),
    "mlrig_predict_batch_size": ("histogram", {"deployment", "version"}),
    "mlrig_predict_in_flight": ("gauge", {"deployment"}),
    "mlrig_predict_errors": ("counter", {"deployment", "version", "kind"}),
    "mlrig_model_load_seconds": ("histogram", {"deployment", "version"}),
    "mlrig_inference_log_dropped": ("counter", set()),
}


def _families(body: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def _value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    family_name = re.sub(r"_(total|bucket|count|sum)$", "", sample_name)
    found = [
        s.value
        for s in families[family_name].samples
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (sample_name, labels, found)
    return found[0]


def _exercise(metrics: ServingMetrics) -> None:
    metrics.observe_request("churn", "3", 0.0004, 200)
    metrics.observe_request("churn", "3", 0.003, 200)
    metrics.observe_request("churn", "3", 12.0, 503)  # beyond the last bucket: +Inf
    metrics.observe_batch("churn", "3", 1)
    metrics.observe_batch("churn", "3", 24)
    metrics.in_flight_inc("churn")
    metrics.error("churn", "3", "overloaded")
    metrics.model_loaded("churn", "3", 1.7)
    metrics.log_dropped(4)


def test_names_labels_and_buckets_follow_the_conventions() -> None:
    metrics = ServingMetrics()
    _exercise(metrics)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    families = _families(body)
    assert set(families) == set(EXPECTED)
    for name, family in families.items():
        kind, labels = EXPECTED[name]
        assert family.type == kind, name
        assert re.fullmatch(r"mlrig_[a-z0-9_]+", name), name
        assert family.documentation, f"{name} has no HELP"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
            if kind == "counter":
                assert sample.name == f"{name}_total"  # counters end in _total
    # durations in the base unit, seconds; the latency buckets 0.5 ms .. 10 s
    bounds = sorted(
        float(s.labels["le"])
        for s in families["mlrig_predict_latency_seconds"].samples
        if s.name.endswith("_bucket")
    )
    assert bounds == [*LATENCY_BUCKETS, math.inf]
    assert bounds[0] == 0.0005 and bounds[-2] == 10.0
    assert "_created" not in body.decode()  # no per-series creation time clutter


def test_the_exposition_holds_what_was_observed() -> None:
    metrics = ServingMetrics()
    _exercise(metrics)
    families = _families(metrics.render()[0])
    ok = {"deployment": "churn", "version": "3", "code": "200"}
    assert _value(families, "mlrig_predict_requests_total", **ok) == 2
    assert _value(families, "mlrig_predict_requests_total", code="503") == 1
    latency = "mlrig_predict_latency_seconds_bucket"
    assert _value(families, latency, le="0.0005") == 1
    assert _value(families, latency, le="0.005") == 2
    assert _value(families, latency, le="10.0") == 2
    assert _value(families, latency, le="+Inf") == 3
    assert _value(families, "mlrig_predict_latency_seconds_count") == 3
    assert _value(families, "mlrig_predict_latency_seconds_sum") == pytest.approx(12.0034)
    assert _value(families, "mlrig_predict_batch_size_bucket", le="1.0") == 1
    assert _value(families, "mlrig_predict_batch_size_bucket", le="16.0") == 1
    assert _value(families, "mlrig_predict_batch_size_bucket", le="32.0") == 2
    assert _value(families, "mlrig_predict_batch_size_sum") == 25
    assert _value(families, "mlrig_predict_in_flight", deployment="churn") == 1
    assert _value(families, "mlrig_predict_errors_total", kind="overloaded") == 1
    assert _value(families, "mlrig_model_load_seconds_sum") == pytest.approx(1.7)
    assert _value(families, "mlrig_inference_log_dropped_total") == 4


def test_in_flight_counts_while_a_request_runs() -> None:
    metrics = ServingMetrics()
    with metrics.in_flight("a"), metrics.in_flight("a"):
        assert metrics.summary("a")["a"]["in_flight"] == 2
    assert metrics.summary("a")["a"]["in_flight"] == 0


def test_summary_per_deployment() -> None:
    metrics = ServingMetrics()
    for _ in range(99):
        metrics.observe_request("a", "1", 0.002, 200)
    metrics.observe_request("a", "1", 0.4, 500)
    metrics.error("a", "1", "internal")
    metrics.observe_request("b", "1", 0.002, 200)
    figures = metrics.summary()
    assert set(figures) == {"a", "b"}
    a = figures["a"]
    assert a["requests"] == 100 and a["errors"] == 1
    assert a["latency_seconds"]["p50"] == 0.0025  # the bucket's upper bound
    assert a["latency_seconds"]["p99"] == 0.0025
    assert metrics.summary("b")["b"]["requests"] == 1


def test_two_instances_do_not_collide() -> None:
    one, two = ServingMetrics(), ServingMetrics()
    one.observe_request("a", "1", 0.01, 200)
    assert two.summary() == {}


def test_forget_drops_a_deployments_series() -> None:
    metrics = ServingMetrics()
    metrics.observe_request("gone", "1", 0.01, 200)
    metrics.in_flight_inc("gone")
    metrics.observe_request("kept", "1", 0.01, 200)
    metrics.forget("gone")
    assert set(metrics.summary()) == {"kept"}
    metrics.observe_request("gone", "1", 0.01, 200)  # and it can come back
    assert metrics.summary("gone")["gone"]["requests"] == 1


# --- multiprocess -------------------------------------------------------------------

REPLICA = r"""
import sys
from mlrig.serving.metrics import ServingMetrics

requests, render, publish = int(sys.argv[1]), sys.argv[2] == "render", sys.argv[3] == "now"
metrics = ServingMetrics()
for i in range(requests):
    metrics.observe_request("churn", "3", 0.002, 200)
metrics.observe_request("churn", "3", 0.5, 422)
metrics.error("churn", "3", "validation")
metrics.observe_batch("churn", "3", requests)
metrics.in_flight_inc("churn")
if publish:
    metrics.publish()  # else the background publisher writes them within 0.25 s
print("ready", flush=True)
if render:
    body, _ = metrics.render()
    sys.stdout.write(body.decode())
    print("END", flush=True)
sys.stdin.readline()
metrics.close()
"""


def _replica(
    directory: Path, requests: int, *, render: bool, publish: bool = True
) -> subprocess.Popen[str]:
    env = {**os.environ, MULTIPROC_ENV: str(directory)}
    argv = [str(requests), "render" if render else "-", "now" if publish else "later"]
    return subprocess.Popen(
        [sys.executable, "-c", REPLICA, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_until(proc: subprocess.Popen[str], last: str) -> str:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        if line.strip() == last:
            return "".join(lines)
        lines.append(line)
    pytest.fail(f"replica {proc.pid} ended before printing {last!r}: {''.join(lines)}")


def _end(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(SAFETY_S) == 0


def test_replicas_aggregate_in_multiprocess_mode(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    first = _replica(directory, 3, render=False, publish=False)
    second = None
    try:
        _read_until(first, "ready")
        # its figures reach the files through the background publisher
        deadline = time.monotonic() + SAFETY_S
        while _ok_requests(collect_directory(directory)) != 3:
            assert time.monotonic() < deadline, "the replica never published its figures"
            time.sleep(0.05)
        second = _replica(directory, 5, render=True)
        _read_until(second, "ready")
        # what the second replica serves on /metrics covers both processes
        families = _families(_read_until(second, "END").encode())
        assert _value(families, "mlrig_predict_requests_total", code="200") == 8
        assert _value(families, "mlrig_predict_requests_total", code="422") == 2
        assert _value(families, "mlrig_predict_latency_seconds_count") == 10
        assert _value(families, "mlrig_predict_latency_seconds_bucket", le="0.0025") == 8
        assert _value(families, "mlrig_predict_errors_total", kind="validation") == 2
        assert _value(families, "mlrig_predict_batch_size_sum") == 8
        assert _value(families, "mlrig_predict_in_flight", deployment="churn") == 2  # livesum
        # a replica ends: its in-flight requests stop counting, its totals stay
        _end(first)
        mark_dead(first.pid, directory)
        families = _families(render_directory(directory)[0])
        assert _value(families, "mlrig_predict_in_flight", deployment="churn") == 1
        assert _value(families, "mlrig_predict_requests_total", code="200") == 8
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                _end(proc)
    assert second is not None
    mark_dead(second.pid, directory)
    assert _ok_requests(collect_directory(directory)) == 8


def _ok_requests(registry: Any) -> float | None:
    return registry.get_sample_value(
        "mlrig_predict_requests_total", {"deployment": "churn", "version": "3", "code": "200"}
    )


def test_prepare_multiprocess_sets_the_folder_and_clears_old_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, "placeholder")  # restored after the test
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"old")
    (directory / "keep.txt").write_text("not a metrics file")
    assert prepare_multiprocess(directory) == directory
    assert os.environ[MULTIPROC_ENV] == str(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["keep.txt"]


# --- the prometheus monitor ---------------------------------------------------------


def test_the_bundled_prometheus_monitor() -> None:
    from mlrig.backends import load_backend

    cls = load_backend("monitors", "prometheus")
    from_config = cls.from_options({}, where="monitors.prometheus")
    assert from_config.report("nothing-yet")["requests"] == 0

    metrics = ServingMetrics()
    monitor = cls(metrics=metrics)
    monitor.observe("churn", [[1.0], [2.0], [3.0]], [0, 1, 0], version="3")
    metrics.observe_request("churn", "3", 0.001, 200)
    report = monitor.report("churn")
    assert report["deployment"] == "churn"
    assert report["batches"] == 1 and report["rows"] == 3 and report["requests"] == 1
    body, _ = monitor.render()
    assert _value(_families(body), "mlrig_predict_batch_size_sum", deployment="churn") == 3
