"""mlrig.sweeps.results: the best-so-far curve and parameter importances."""

from __future__ import annotations

import math
import random

import pytest

from mlrig.errors import ValidationError
from mlrig.search.space import Choice, Constant, FloatRange, IntRange, SearchSpace
from mlrig.sweeps.results import MIN_TRIALS, best_so_far, importances


def _trial(number, value, state="completed", at=None, **params):
    return {
        "number": number,
        "value": value,
        "state": state,
        "params": params,
        "completed_at": at or f"2026-01-01T00:00:{number:02d}+00:00",
    }


def test_best_so_far_follows_completion_order_not_numbers():
    trials = [
        _trial(0, 5.0, at="2026-01-01T00:00:09+00:00"),
        _trial(1, 3.0, at="2026-01-01T00:00:01+00:00"),
        _trial(2, 4.0, at="2026-01-01T00:00:05+00:00"),
    ]
    assert best_so_far(trials, "minimize") == [
        {"number": 1, "value": 3.0, "best": 3.0},
        {"number": 2, "value": 4.0, "best": 3.0},
        {"number": 0, "value": 5.0, "best": 3.0},
    ]
    assert [p["best"] for p in best_so_far(trials, "maximize")] == [3.0, 4.0, 5.0]


def test_best_so_far_counts_completed_trials_with_a_finite_value_only():
    trials = [
        _trial(0, 2.0),
        _trial(1, 0.5, state="pruned"),  # a value from an earlier step
        _trial(2, None, state="failed"),
        _trial(3, math.nan),
        _trial(4, 1.0),
        _trial(5, None, state="running", at=None),
    ]
    assert best_so_far(trials, "minimize") == [
        {"number": 0, "value": 2.0, "best": 2.0},
        {"number": 4, "value": 1.0, "best": 1.0},
    ]
    assert best_so_far([], "minimize") == []


def test_best_so_far_refuses_an_unknown_direction():
    with pytest.raises(ValidationError, match="'minimize' or 'maximize'"):
        best_so_far([_trial(0, 1.0)], "min")


SPACE = SearchSpace(
    params={
        "lr": FloatRange(1e-4, 1.0, log=True),
        "depth": IntRange(1, 10),
        "kernel": Choice(("linear", "rbf")),
        "gamma": FloatRange(0.0, 1.0, when={"kernel": ("rbf",)}),
        "max_iter": Constant(100),
    }
)


def _sample(n, objective, seed=0):
    rng = random.Random(seed)
    trials = []
    for number in range(n):
        point = {
            "lr": 10 ** rng.uniform(-4, 0),
            "depth": rng.randint(1, 10),
            "kernel": rng.choice(["linear", "rbf"]),
            "max_iter": 100,
        }
        if point["kernel"] == "rbf":
            point["gamma"] = rng.random()
        trials.append(_trial(number, objective(point), **point))
    return trials


def test_importances_find_the_parameter_that_drives_the_objective():
    trials = _sample(60, lambda p: math.log10(p["lr"]) ** 2)
    result = importances(SPACE, trials)
    assert result["method"].startswith(
        "permutation importance on a random-forest surrogate (sklearn RandomForestRegressor, "
        "60 trials)"
    )
    scores = result["params"]
    assert set(scores) == {"lr", "depth", "kernel", "gamma"}  # the constant is not scored
    assert math.isclose(sum(scores.values()), 1.0)
    assert scores["lr"] > 0.8 and next(iter(scores)) == "lr"
    assert "reason" not in result


def test_importances_score_a_choice_and_a_conditional_parameter():
    # the objective depends on the kernel and, for rbf only, on gamma (absent elsewhere)
    trials = _sample(80, lambda p: 1.0 if p["kernel"] == "linear" else p["gamma"] * 3)
    scores = importances(SPACE, trials)["params"]
    assert scores["kernel"] + scores["gamma"] > 0.8
    assert scores["lr"] < 0.1 and scores["depth"] < 0.1


def test_importances_need_enough_completed_trials():
    trials = _sample(MIN_TRIALS - 1, lambda p: p["depth"])
    trials.append(_trial(99, 1.0, state="pruned", depth=3))
    result = importances(SPACE, trials)
    assert result["params"] == {}
    assert f"{MIN_TRIALS - 1} completed trial(s)" in result["reason"]
    assert f"at least {MIN_TRIALS}" in result["reason"]
    assert result["method"].startswith("permutation importance on a random-forest surrogate")


def test_importances_of_a_flat_objective_say_why_there_are_none():
    result = importances(SPACE, _sample(10, lambda p: 0.5))
    assert result["params"] == {} and "same value" in result["reason"]


def test_importances_are_deterministic():
    trials = _sample(30, lambda p: p["depth"] + math.log10(p["lr"]))
    assert importances(SPACE, trials) == importances(SPACE, trials)


def test_importances_fit_the_most_recent_trials_only():
    from mlrig.sweeps.results import MAX_TRIALS

    trials = _sample(MAX_TRIALS + 20, lambda p: p["depth"])
    for trial in trials:
        trial["completed_at"] = f"2026-01-01T{trial['number'] // 3600:02d}:" + (
            f"{trial['number'] // 60 % 60:02d}:{trial['number'] % 60:02d}+00:00"
        )
    result = importances(SPACE, trials)
    assert f"{MAX_TRIALS} trials" in result["method"]
    assert f"the last {MAX_TRIALS} completed" in result["method"]
    assert next(iter(result["params"])) == "depth"
