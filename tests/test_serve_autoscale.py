"""The autoscaling policy of ``mlrig serve`` (pure: time and load are passed in)."""

from __future__ import annotations

import random

import pytest

from mlrig.serving.autoscale import AutoscalePolicy, ReplicaSample


def policy(**overrides: float) -> AutoscalePolicy:
    options = {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_in_flight": 4.0,
        "target_p99_ms": 100.0,
        "scale_up_window_seconds": 2.0,
        "scale_down_cooldown_seconds": 5.0,
        **overrides,
    }
    return AutoscalePolicy(**options)  # type: ignore[arg-type]


def load(total: float, replicas: int, p99: float | None = 10.0) -> list[ReplicaSample]:
    """``total`` in-flight requests spread evenly over ``replicas``."""
    return [ReplicaSample(in_flight=total / replicas, p99_ms=p99, requests=100)] * replicas


def run(
    p: AutoscalePolicy,
    start: float,
    end: float,
    total: float,
    count: int,
    *,
    step: float = 0.5,
    p99: float | None = 10.0,
) -> tuple[int, list[tuple[float, int]]]:
    """Feed the policy every ``step`` seconds, applying its answers; returns the final
    count and the (time, new count) changes."""
    changes = []
    now = start
    while now < end:
        wanted = p.decide(now, load(total, count, p99), current=count)
        if wanted != count:
            changes.append((now, wanted))
            count = wanted
        now += step
    return count, changes


def test_a_load_step_scales_up_within_the_window_to_the_needed_count():
    p = policy()
    count, changes = run(p, 0, 10, total=2, count=1)
    assert changes == []
    # The step: 12 requests in flight on one replica (target 4 per replica).
    count, changes = run(p, 10, 20, total=12, count=1)
    assert changes[0] == (12.0, 3)  # the window (2 s) after the step, ceil(12 / 4)
    assert count == 3 and len(changes) == 1  # then it holds


def test_a_spike_shorter_than_the_window_changes_nothing():
    p = policy()
    _, changes = run(p, 0, 1.5, total=40, count=1)
    _, later = run(p, 1.5, 30, total=2, count=1)
    assert changes == [] and later == []


def test_latency_above_target_adds_a_replica_after_the_window():
    p = policy()
    count, changes = run(p, 0, 2.4, total=1, count=1, p99=250.0)
    assert changes == [(2.0, 2)] and count == 2
    assert "p99 250.0 ms" in p.reason


def test_scale_down_waits_for_the_cooldown_and_goes_one_step_at_a_time():
    p = policy()
    count, changes = run(p, 0, 30, total=1, count=3)
    # Quiet from t=0: the first step at the cooldown (5 s), the next a cooldown later.
    assert changes == [(5.0, 2), (10.0, 1)]
    assert count == 1


def test_scale_down_after_a_scale_up_waits_a_full_cooldown():
    p = policy()
    count, changes = run(p, 0, 2.5, total=12, count=1)
    assert changes == [(2.0, 3)]
    count, changes = run(p, 2.5, 7.0, total=0.5, count=count)
    assert changes == []  # the cooldown runs from the last change (t=2), not from quiet
    count, changes = run(p, 7.0, 8.0, total=0.5, count=count)
    assert changes == [(7.5, 2)]


def test_constant_load_causes_no_scale_events():
    p = policy()
    rng = random.Random(7)
    count, now, changes = 3, 0.0, []
    # 10 requests in flight (+-20 %) on 3 replicas: 3.3 per replica, under the target; on
    # 2 it would be 5, over the low watermark, so neither up nor down for an hour.
    while now < 3600:
        total = 10 * rng.uniform(0.8, 1.2)
        wanted = p.decide(now, load(total, count, p99=rng.uniform(5, 40)), current=count)
        if wanted != count:
            changes.append((now, wanted))
            count = wanted
        now += 0.5
    assert changes == []


def test_from_a_cold_start_constant_load_settles_after_one_event():
    p = policy()
    rng = random.Random(3)
    count, now, changes = 1, 0.0, []
    while now < 600:
        wanted = p.decide(now, load(10 * rng.uniform(0.9, 1.1), count), current=count)
        if wanted != count:
            changes.append(wanted)
            count = wanted
        now += 0.5
    assert changes == [3]


def test_bounds_are_never_crossed():
    p = policy(max_replicas=3)
    count, changes = run(p, 0, 60, total=500, count=1)
    assert count == 3 and [c for _, c in changes] == [3]
    count, changes = run(p, 60, 600, total=0, count=3)
    assert count == 1 and [c for _, c in changes] == [2, 1]
    assert p.decide(601, load(0, 1), current=1) == 1  # at min: stays


def test_a_count_outside_the_bounds_is_corrected_at_once():
    p = policy(min_replicas=2, max_replicas=3)
    assert p.decide(0, load(5, 5), current=5) == 3
    assert p.decide(1, load(1, 1), current=1) == 2


def test_fixed_bounds_disable_scaling_and_bad_bounds_are_refused():
    assert not policy(min_replicas=2, max_replicas=2).enabled
    assert policy().enabled
    with pytest.raises(ValueError, match="min <= max"):
        policy(min_replicas=3, max_replicas=2)
