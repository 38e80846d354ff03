"""The nevergrad strategy: the search contract suite, and what nevergrad adds (optimizer
names, the space mapping, failed trials, state replayed on restore)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from mlrig.backends import load_backend
from mlrig.errors import ConfigError, MissingExtraError, ValidationError
from mlrig.plugins.search_nevergrad import NevergradSearch
from mlrig.plugins.search_random import RandomSearch
from mlrig.search.space import SearchSpace
from mlrig.testing.search import (
    CONDITIONAL,
    MIXED,
    SearchStrategyContract,
    rebuilt,
    unit_objective,
)


def nevergrad_search(**options: object) -> NevergradSearch:
    return NevergradSearch.from_options(dict(options), where="search.nevergrad")


class TestNevergradContract(SearchStrategyContract):
    deterministic = True

    @pytest.fixture
    def strategy_factory(self):
        return nevergrad_search


# --- options -------------------------------------------------------------------------------


def test_loaded_through_the_entry_point() -> None:
    assert load_backend("search", "nevergrad") is NevergradSearch


def test_unknown_optimizer_lists_what_nevergrad_has() -> None:
    import nevergrad as ng

    with pytest.raises(ValidationError) as caught:
        nevergrad_search(optimizer="ngopt")
    error = caught.value
    names = sorted(ng.optimizers.registry)
    assert error.details["field"] == "optimizer"
    assert error.details["allowed"] == names
    assert error.details["close"][0] == "NGOpt"  # the case-folded match first
    assert len(error.details["close"]) > 1 and all(
        n.startswith("NGOpt") for n in error.details["close"]
    )
    assert "'ngopt'" in error.message
    assert "did you mean NGOpt" in error.message
    assert ", ".join(names) in error.message  # every name, sorted
    with pytest.raises(ValidationError, match="CMA, "):
        nevergrad_search(optimizer="no such thing")


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="optimiser"):
        nevergrad_search(optimiser="CMA")
    with pytest.raises(ConfigError, match="tell_failed_as"):
        nevergrad_search(tell_failed_as="ignore")


def test_missing_nevergrad_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "nevergrad", None)  # import nevergrad -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'mlrig\[nevergrad\]'"):
        nevergrad_search()


def test_importing_the_plugin_does_not_import_nevergrad() -> None:
    code = (
        "import sys, mlrig, mlrig.plugins.search_nevergrad\n"
        "assert 'nevergrad' not in sys.modules, 'imported nevergrad'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_sequential_optimizer_refuses_parallelism() -> None:
    strategy = nevergrad_search(optimizer="BFGS")  # scipy's, one point at a time
    with pytest.raises(ValidationError, match="parallelism"):
        strategy.start(MIXED, direction="minimize", seed=0, parallelism=2, budget=10)
    strategy.start(MIXED, direction="minimize", seed=0, parallelism=1, budget=10)


def test_optimizer_missing_its_package_says_so(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ax", None)  # AX imports ax-platform on its first ask
    strategy = nevergrad_search(optimizer="AX")
    strategy.start(MIXED, direction="minimize", seed=0, budget=10)
    with pytest.raises(ValidationError, match="'AX' needs a package that is not installed"):
        strategy.ask()


def test_a_space_of_constants_is_refused() -> None:
    space = SearchSpace.from_dict({"a": 1, "b": {"type": "choice", "options": ["only"]}})
    with pytest.raises(ValidationError, match="nothing for nevergrad to search"):
        nevergrad_search().start(space, direction="minimize", seed=0)


# --- the space --------------------------------------------------------------------------------


def test_space_mapping_and_values() -> None:
    """Each kind of parameter becomes the nevergrad parameter the docstring names, and
    decodes to a value of the space (ints int, steps on the grid, options themselves)."""
    space = SearchSpace.from_dict(
        {
            "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
            "frac": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
            "depth": {"type": "int", "low": 2, "high": 12, "step": 2},
            "width": {"type": "int", "low": 8, "high": 512, "log": True},
            "batch": {"type": "choice", "options": [64, 16, 32]},
            "act": {"type": "choice", "options": ["relu", None, True]},
            "fixed": {"type": "choice", "options": ["one"]},
            "epochs": 5,
        }
    )
    strategy = nevergrad_search(optimizer="RandomSearch")
    strategy.start(space, direction="minimize", seed=1, budget=60)
    kinds = {name: type(p).__name__ for name, p in strategy._optimizer.parametrization.items()}
    assert kinds == {
        "lr": "Log",
        "frac": "Scalar",
        "depth": "Scalar",
        "width": "Log",
        "batch": "TransitionChoice",
        "act": "Choice",
    }
    seen: dict[str, set] = {name: set() for name in space.params}
    for _ in range(60):
        trial = strategy.ask()
        assert space.validate(trial.params) == trial.params
        for name, value in trial.params.items():
            seen[name].add(value)
        strategy.tell(trial, 1.0)
    assert seen["frac"] <= {0.0, 0.1, 0.2, 0.3} and len(seen["frac"]) >= 3
    assert seen["depth"] <= {2, 4, 6, 8, 10, 12} and len(seen["depth"]) >= 4
    assert all(type(v) is int and 8 <= v <= 512 for v in seen["width"])
    assert seen["batch"] == {16, 32, 64}
    assert seen["act"] == {"relu", None, True}
    assert seen["fixed"] == {"one"} and seen["epochs"] == {5}


def test_conditional_space_never_yields_an_inactive_parameter() -> None:
    strategy = nevergrad_search(optimizer="TwoPointsDE")
    strategy.start(CONDITIONAL, direction="minimize", seed=4, parallelism=3, budget=60)
    kernels = set()
    for _ in range(60):
        trial = strategy.ask()
        assert CONDITIONAL.active(trial.params) == trial.params
        p = trial.params
        kernels.add(p["kernel"])
        assert ("gamma" in p) == (p["kernel"] == "rbf"), p
        assert ("tol" in p) == (p.get("shrinking") is True), p
        assert set(trial.extra.get("inactive", [])) == set(CONDITIONAL.params) - set(p)
        strategy.tell(trial, unit_objective(CONDITIONAL, p))
    assert kernels == {"linear", "rbf", "poly"}


# --- optimisation -------------------------------------------------------------------------


BOWL = SearchSpace.from_dict(
    {
        "x": {"type": "float", "low": -5.0, "high": 5.0},
        "y": {"type": "float", "low": -5.0, "high": 5.0},
    }
)


def bowl(p: dict) -> float:
    """Minimum 0 at (1, -2)."""
    return (p["x"] - 1.0) ** 2 + (p["y"] + 2.0) ** 2


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_ngopt_reaches_the_optimum_both_ways(direction: str) -> None:
    """100 evaluations, two at a time; random search gets within 0.25 of (1, -2) with
    probability ~0.6, NGOpt (nevergrad's default) well within it."""
    strategy = nevergrad_search()
    strategy.start(BOWL, direction=direction, seed=0, parallelism=2, budget=100)
    best = math.inf
    for _ in range(50):
        pair = [strategy.ask(), strategy.ask()]
        for trial in pair:
            loss = bowl(trial.params)
            best = min(best, loss)
            strategy.tell(trial, loss if direction == "minimize" else 10.0 - loss)
    assert best < 0.25**2, f"{direction}: best squared distance {best:.4f}"
    assert strategy.describe()["best"]["value"] == pytest.approx(
        best if direction == "minimize" else 10.0 - best
    )


@pytest.mark.parametrize("optimizer", ["NGOpt", "CMA", "TwoPointsDE", "RandomSearch", "OnePlusOne"])
def test_optimizers_by_name_ask_tell_and_restore(optimizer: str) -> None:
    original = nevergrad_search(optimizer=optimizer)
    original.start(MIXED, direction="maximize", seed=2, parallelism=2, budget=30)
    for _ in range(12):
        trial = original.ask()
        original.tell(trial, -unit_objective(MIXED, trial.params))
    outstanding = original.ask()
    copy = nevergrad_search()  # the saved optimizer wins over the options
    copy.restore(original.save())
    assert copy.describe()["optimizer"] == optimizer
    assert copy.describe()["restored_from"] == "log"
    for strategy in (original, copy):
        strategy.tell(rebuilt(outstanding), -unit_objective(MIXED, outstanding.params))
    for _ in range(3):
        a, b = original.ask(), copy.ask()
        assert (a.number, a.params) == (b.number, b.params)
        original.tell(a, 0.5)
        copy.tell(b, 0.5)
    assert original.save() == copy.save()


# --- failed trials ----------------------------------------------------------------------------


def test_failed_trials_told_as_the_worst_value_seen() -> None:
    strategy = nevergrad_search(optimizer="OnePlusOne")
    strategy.start(BOWL, direction="maximize", seed=0, parallelism=3, budget=20)
    a, b, c = strategy.ask(), strategy.ask(), strategy.ask()
    strategy.tell_failed(a, "crashed")  # no value yet: held back
    assert strategy._optimizer.num_tell == 0
    strategy.tell(b, 3.0)  # maximize: loss -3, then a told as that worst
    assert strategy._optimizer.num_tell == 2
    strategy.tell(c, math.nan)  # NaN: failed too, the worst loss is still -3
    assert strategy._optimizer.num_tell == 3
    losses = [e[2] for e in json.loads(strategy.save())["events"] if e[0] == "t"]
    assert losses == [-3.0, -3.0, -3.0]
    assert strategy.describe()["failed"] == 2


def test_failed_trials_skipped() -> None:
    strategy = nevergrad_search(optimizer="OnePlusOne", tell_failed_as="skip")
    strategy.start(BOWL, direction="minimize", seed=0, parallelism=2, budget=20)
    a, b = strategy.ask(), strategy.ask()
    strategy.tell_failed(a)
    strategy.tell(b, 1.5)
    assert strategy._optimizer.num_tell == 1
    assert strategy._optimizer.num_ask == 2  # nevergrad keeps going with an ask untold
    for _ in range(5):
        trial = strategy.ask()
        strategy.tell(trial, bowl(trial.params))


# --- state ------------------------------------------------------------------------------------


def _run(strategy: NevergradSearch, n: int) -> None:
    for _ in range(n):
        trial = strategy.ask()
        strategy.tell(trial, unit_objective(MIXED, trial.params))


def test_restore_continues_the_same_search_not_a_new_one() -> None:
    uninterrupted = nevergrad_search()
    uninterrupted.start(MIXED, direction="minimize", seed=9, parallelism=2, budget=40)
    interrupted = nevergrad_search()
    interrupted.start(MIXED, direction="minimize", seed=9, parallelism=2, budget=40)
    _run(uninterrupted, 10)
    _run(interrupted, 10)
    restarted = nevergrad_search()
    restarted.restore(interrupted.save())
    del interrupted
    fresh = nevergrad_search()
    fresh.start(MIXED, direction="minimize", seed=9, parallelism=2, budget=40)
    _run(fresh, 0)
    expected = [uninterrupted.ask() for _ in range(4)]
    got = [restarted.ask() for _ in range(4)]
    new = [fresh.ask() for _ in range(4)]
    assert [t.number for t in got] == [10, 11, 12, 13]
    assert [t.params for t in got] == [t.params for t in expected]
    assert [t.params for t in got] != [t.params for t in new]


def test_restore_in_another_process_continues(tmp_path) -> None:
    """The restart is another process with another hash seed (nevergrad keys some of its
    bookkeeping by random uids): the replay still gives the recorded asks."""
    original = nevergrad_search()
    original.start(MIXED, direction="minimize", seed=5, parallelism=3, budget=30)
    _run(original, 5)
    held = [original.ask(), original.ask()]
    (tmp_path / "state").write_bytes(original.save())
    original.tell(held[1], 0.25)
    original.tell_failed(held[0])
    expected = [original.ask().params for _ in range(3)]
    code = (
        "import json, sys\n"
        "from mlrig.contracts.search import Trial\n"
        "from mlrig.plugins.search_nevergrad import NevergradSearch\n"
        "s = NevergradSearch.from_options({}, where='search.nevergrad')\n"
        "s.restore(open(sys.argv[1], 'rb').read())\n"
        f"s.tell(Trial({held[1].number}, {{}}), 0.25)\n"
        f"s.tell_failed(Trial({held[0].number}, {{}}))\n"
        "print(json.dumps([s.ask().params for _ in range(3)]))\n"
        "print(s.describe()['restored_from'])\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "state")],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    ).stdout.splitlines()
    assert json.loads(out[0]) == json.loads(json.dumps(expected))
    assert out[1] == "log"


def test_a_log_that_does_not_replay_is_rebuilt_from_the_history() -> None:
    """A replayed ask that differs from the recorded one (another nevergrad version, say)
    must not tell results against the wrong points: the optimizer is rebuilt from the
    recorded points and losses instead, and the outstanding trials still work."""
    original = nevergrad_search(optimizer="TwoPointsDE")
    original.start(MIXED, direction="minimize", seed=1, parallelism=2, budget=30)
    _run(original, 6)
    outstanding = original.ask()
    state = json.loads(original.save())
    state["seed"] = 2  # the replay now asks other points than the log recorded
    copy = nevergrad_search()
    copy.restore(json.dumps(state).encode())
    assert copy.describe()["restored_from"] == "history"
    assert copy._optimizer.num_tell == 6  # every result told again, as points not asked
    copy.tell(rebuilt(outstanding), 0.1)
    _run(copy, 3)
    again = nevergrad_search()
    again.restore(copy.save())
    assert again.describe()["restored_from"] == "history"
    assert again.ask().number == copy.ask().number == 10


def test_damaged_state_is_refused() -> None:
    strategy = nevergrad_search()
    strategy.start(MIXED, direction="minimize", seed=1, parallelism=2, budget=10)
    strategy.ask()
    state = json.loads(strategy.save())
    state["events"] = []  # the ledger has an outstanding trial the log never asked
    with pytest.raises(ValidationError, match="damaged"):
        nevergrad_search().restore(json.dumps(state).encode())
    del state["space"]
    with pytest.raises(ValidationError, match="damaged"):
        nevergrad_search().restore(json.dumps(state).encode())
    random_state = RandomSearch.from_options({}, where="search.random")
    random_state.start(MIXED, direction="minimize", seed=1)
    with pytest.raises(ValidationError, match="not a saved nevergrad"):
        nevergrad_search().restore(random_state.save())


def test_state_stays_small() -> None:
    """The state is a log of about 20 bytes per parameter and trial (a pickled NGOpt is
    about 3 MB after 200 trials on 10 parameters; see the module docstring)."""
    space = SearchSpace.from_dict(
        {f"x{i}": {"type": "float", "low": -5.0, "high": 5.0} for i in range(5)}
    )
    strategy = nevergrad_search(optimizer="OnePlusOne")  # the log is the same for any
    strategy.start(space, direction="minimize", seed=0, budget=200)
    sizes = []
    for _ in range(200):
        trial = strategy.ask()
        strategy.tell(trial, sum(v * v for v in trial.params.values()))
        sizes.append(len(strategy.save()))
    # about 30 kB: 200 x (5 floats of ~20 characters + the ask and tell framing)
    assert sizes[-1] < 200 * (5 * 25 + 60), sizes[-1]
    assert sizes[-1] - sizes[99] < 1.1 * (sizes[99] - sizes[0])  # grows linearly, no more


def test_an_unseeded_search_keeps_the_seed_it_drew() -> None:
    original = nevergrad_search(optimizer="TwoPointsDE")
    original.start(MIXED, direction="minimize", seed=None, parallelism=2, budget=20)
    _run(original, 3)
    copy = nevergrad_search()
    copy.restore(original.save())
    assert copy.describe()["seed"] == original.describe()["seed"]
    assert [copy.ask().params for _ in range(2)] == [original.ask().params for _ in range(2)]
