"""The search strategy contract suite.

A search strategy (entry-point group ``mlrig.search``) passes the contract by mixing
:class:`SearchStrategyContract` into a test class that provides a ``strategy_factory``
fixture: a callable returning a *fresh, unstarted* strategy each time it is called (the
suite builds several, to restore one's saved state into another, as a restarted server
does)::

    import pytest
    from mlrig.testing.search import SearchStrategyContract
    from my_package.search import MySearch

    class TestMySearch(SearchStrategyContract):
        deterministic = True      # same seed + same results -> same asks (and restores exactly)

        @pytest.fixture
        def strategy_factory(self):
            return lambda: MySearch.from_options({}, where="search.mine")

Run it like any test module (``python -m pytest -q tests/test_my_search.py``); the class
needs no pytest plugin. What it checks, as :class:`mlrig.contracts.search.SearchStrategy`
documents it:

- every ask is a valid *active* point of the space (``space.validate`` returns it
  unchanged: ints are ``int``, floats ``float``, conditional parameters present exactly
  where their condition holds), numbered 0, 1, 2... with JSON-serialisable params and
  extra;
- several asks outstanding at once (``parallelism``), distinct from each other, told out
  of order, some told as failed (``tell_failed``) or with NaN, and trials rebuilt from
  their JSON (as the sweep reads them back from the database) accepted by ``tell``;
- a tell of a trial that is not outstanding (never asked, told already) raises
  :class:`~mlrig.errors.ValidationError`; so do an unknown ``direction`` and
  ``restore()`` of bytes that are not a saved state;
- ``save()`` returns bytes after every step; ``restore()`` into a fresh instance
  continues: numbers go on, outstanding trials can still be told, and for a
  ``deterministic`` strategy the next asks are exactly those the original would have made;
  a ``finite`` strategy asks no point twice across a restore;
- with ``deterministic``: the same seed gives the same sequence; with ``seed_matters``
  another seed gives another one;
- with ``finite``: on a 6-point space every point is asked once, then ``ask()`` returns
  ``None`` (and keeps doing so); an ``exhaustive`` strategy's ``count()`` says 6;
- minimize and maximize both find a good point of a smooth 2-D function within
  :attr:`SearchStrategyContract.improvement_budget` trials (a bar that uniform random
  search clears with probability > 0.9999; the values told under ``maximize`` are
  ``1 - distance``, so a model-based strategy must follow ``direction`` to pass);
- ``describe()`` is JSON.

The spaces the suite uses are module constants (:data:`MIXED`, :data:`CONDITIONAL`,
:data:`TINY`, :data:`QUADRATIC`) that plugin authors may reuse in their own tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from mlrig.contracts.search import SearchStrategy, Trial
from mlrig.errors import ValidationError
from mlrig.search.space import FloatRange, IntRange, SearchSpace

#: every kind of parameter: log and linear floats, a float step, int step, log int, a
#: choice with a conditional branch, a constant
MIXED = SearchSpace.from_dict(
    {
        "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "momentum": {"type": "float", "low": 0.0, "high": 0.99},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
        "layers": {"type": "int", "low": 1, "high": 9, "step": 2},
        "width": {"type": "int", "low": 8, "high": 512, "log": True},
        "optimizer": {"type": "choice", "options": ["sgd", "adam"]},
        "beta1": {"type": "float", "low": 0.8, "high": 0.999, "when": {"optimizer": "adam"}},
        "epochs": 3,
    }
)

#: nested conditions: ``gamma`` only for rbf, ``degree`` and ``coef0`` only for poly,
#: ``shrinking`` for rbf and poly, ``tol`` only when shrinking is on
CONDITIONAL = SearchSpace.from_dict(
    {
        "kernel": {"type": "choice", "options": ["linear", "rbf", "poly"]},
        "C": {"type": "float", "low": 1e-2, "high": 1e2, "log": True},
        "gamma": {
            "type": "float",
            "low": 1e-4,
            "high": 1.0,
            "log": True,
            "when": {"kernel": "rbf"},
        },
        "degree": {"type": "int", "low": 2, "high": 5, "when": {"kernel": "poly"}},
        "coef0": {"type": "float", "low": 0.0, "high": 1.0, "when": {"kernel": ["poly"]}},
        "shrinking": {
            "type": "choice",
            "options": [True, False],
            "when": {"kernel": ["rbf", "poly"]},
        },
        "tol": {
            "type": "float",
            "low": 1e-5,
            "high": 1e-2,
            "log": True,
            "when": {"shrinking": True},
        },
    }
)

#: 6 points: 3 options x 2 integers
TINY = SearchSpace.from_dict(
    {
        "letter": {"type": "choice", "options": ["a", "b", "c"]},
        "n": {"type": "int", "low": 1, "high": 2},
    }
)

#: two floats in [0, 1]; :func:`quadratic` has its minimum 0 at (0.7, 0.2)
QUADRATIC = SearchSpace({"x": FloatRange(0.0, 1.0), "y": FloatRange(0.0, 1.0)})

SPACES = {"mixed": MIXED, "conditional": CONDITIONAL}


def quadratic(params: dict[str, Any]) -> float:
    """Squared distance to (0.7, 0.2)."""
    return (params["x"] - 0.7) ** 2 + (params["y"] - 0.2) ** 2


def unit_objective(space: SearchSpace, params: dict[str, Any]) -> float:
    """A smooth function of any point: squared distance of its unit coordinates to 0.3."""
    return sum((u - 0.3) ** 2 for u in space.to_unit(params).values())


def rebuilt(trial: Trial) -> Trial:
    """``trial`` as the sweep reads it back from the database: a new object from JSON."""
    return Trial(**json.loads(json.dumps(dataclasses.asdict(trial))))


class SearchStrategyContract:
    """Tests every :class:`~mlrig.contracts.search.SearchStrategy` must pass.

    Subclasses provide the ``strategy_factory`` fixture (a callable returning a fresh,
    unstarted strategy) and set the class attributes that describe the strategy.
    """

    #: same seed and same results give the same asks, and a restored strategy asks
    #: exactly what the original would have
    deterministic: bool = True
    #: another seed gives another sequence (false for a seed-independent grid)
    seed_matters: bool = True
    #: on a finite space the strategy asks each point once, then ``ask()`` returns None
    finite: bool = False
    #: trials the improvement tests may use (asked two at a time)
    improvement_budget: int = 60
    #: the improvement bar: the best squared distance to the optimum must be below it
    improvement_bar: float = 0.05
    #: asks of the generic tests
    asks: int = 20

    @pytest.fixture
    def strategy_factory(self) -> Callable[[], SearchStrategy]:
        """Override: a callable returning a fresh, unstarted strategy."""
        pytest.fail(
            "give the contract class a `strategy_factory` fixture: a callable returning a "
            "fresh, unstarted strategy (e.g. lambda: MySearch.from_options({}, where='x'))"
        )

    # --- helpers ------------------------------------------------------------------------

    def _start(
        self,
        factory: Callable[[], SearchStrategy],
        space: SearchSpace,
        *,
        direction: str = "minimize",
        seed: int | None = 0,
        parallelism: int = 1,
        budget: int | None = None,
    ) -> SearchStrategy:
        strategy = factory()
        strategy.start(
            space, direction=direction, seed=seed, parallelism=parallelism, budget=budget
        )  # type: ignore[arg-type]
        return strategy

    def _ask(self, strategy: SearchStrategy, space: SearchSpace, number: int) -> Trial:
        trial = strategy.ask()
        assert trial is not None, f"ask() #{number} returned None on an unbounded space"
        self._check_trial(trial, space, number)
        return trial

    def _check_trial(self, trial: Trial, space: SearchSpace, number: int) -> None:
        assert isinstance(trial, Trial)
        assert trial.number == number, f"trial numbers go 0, 1, 2...: expected {number}"
        assert space.validate(trial.params) == trial.params, trial.params
        assert space.active(trial.params) == trial.params, "params must hold active ones only"
        for name, value in trial.params.items():
            param = space.params[name]
            if isinstance(param, IntRange):
                assert type(value) is int, f"{name}: an int range gives int, got {value!r}"
            elif isinstance(param, FloatRange):
                assert type(value) is float, f"{name}: a float range gives float, got {value!r}"
        json.dumps(trial.params)
        json.dumps(trial.extra)

    def _save(self, strategy: SearchStrategy) -> bytes:
        state = strategy.save()
        assert isinstance(state, bytes), "save() returns bytes"
        return state

    def _restored(self, factory: Callable[[], SearchStrategy], state: bytes) -> SearchStrategy:
        strategy = factory()
        strategy.restore(state)
        return strategy

    # --- asks ---------------------------------------------------------------------------

    @pytest.mark.parametrize("space_name", sorted(SPACES))
    def test_asks_are_valid_active_points(self, strategy_factory: Any, space_name: str) -> None:
        space = SPACES[space_name]
        strategy = self._start(strategy_factory, space, budget=self.asks)
        for i in range(self.asks):
            trial = self._ask(strategy, space, i)
            strategy.tell(trial, unit_objective(space, trial.params))
            self._save(strategy)

    def test_conditional_parameters_respected(self, strategy_factory: Any) -> None:
        strategy = self._start(strategy_factory, CONDITIONAL, budget=40)
        kernels = set()
        for i in range(40):
            trial = self._ask(strategy, CONDITIONAL, i)
            p = trial.params
            kernels.add(p["kernel"])
            assert ("gamma" in p) == (p["kernel"] == "rbf"), p
            assert ("degree" in p) == ("coef0" in p) == (p["kernel"] == "poly"), p
            assert ("shrinking" in p) == (p["kernel"] in ("rbf", "poly")), p
            assert ("tol" in p) == (p.get("shrinking") is True), p
            strategy.tell(trial, unit_objective(CONDITIONAL, p))
        assert len(kernels) >= 2, f"40 asks explored only the kernels {kernels}"

    def test_several_outstanding_told_out_of_order(self, strategy_factory: Any) -> None:
        strategy = self._start(strategy_factory, MIXED, parallelism=4, budget=12)
        first = [self._ask(strategy, MIXED, i) for i in range(4)]
        keys = {MIXED.key(t.params) for t in first}
        assert len(keys) == 4, "outstanding asks must differ from each other"
        for index in (2, 0, 3):
            strategy.tell(first[index], unit_objective(MIXED, first[index].params))
        strategy.tell_failed(first[1], "the trial crashed")
        more = [self._ask(strategy, MIXED, 4 + i) for i in range(4)]
        for trial in reversed(more):
            strategy.tell(rebuilt(trial), unit_objective(MIXED, trial.params))
        self._ask(strategy, MIXED, 8)

    def test_failed_and_nan_results(self, strategy_factory: Any) -> None:
        strategy = self._start(strategy_factory, MIXED, parallelism=3, budget=10)
        trials = [self._ask(strategy, MIXED, i) for i in range(3)]
        strategy.tell_failed(trials[0], "out of memory")
        strategy.tell_failed(trials[1])
        strategy.tell(trials[2], math.nan)
        for i in range(3, 7):
            trial = self._ask(strategy, MIXED, i)
            strategy.tell(trial, unit_objective(MIXED, trial.params))
        json.dumps(strategy.describe())

    def test_tell_of_a_trial_not_outstanding_raises(self, strategy_factory: Any) -> None:
        strategy = self._start(strategy_factory, MIXED)
        trial = self._ask(strategy, MIXED, 0)
        strategy.tell(trial, 1.0)
        with pytest.raises(ValidationError, match="0"):
            strategy.tell(trial, 1.0)
        with pytest.raises(ValidationError):
            strategy.tell_failed(rebuilt(trial))
        with pytest.raises(ValidationError, match="99"):
            strategy.tell(Trial(number=99, params=trial.params), 1.0)

    def test_bad_direction_is_refused(self, strategy_factory: Any) -> None:
        with pytest.raises(ValidationError, match="direction"):
            self._start(strategy_factory, MIXED, direction="upwards")

    def test_describe_is_json(self, strategy_factory: Any) -> None:
        strategy = self._start(strategy_factory, MIXED)
        json.dumps(strategy.describe())
        trial = self._ask(strategy, MIXED, 0)
        strategy.tell(trial, 0.5)
        assert isinstance(strategy.describe(), dict)
        json.dumps(strategy.describe())

    def test_count_is_none_or_a_number(self, strategy_factory: Any) -> None:
        strategy = self._start(strategy_factory, TINY)
        count = strategy.count()
        assert count is None or (type(count) is int and count >= 0)
        if strategy.exhaustive:
            assert count == 6

    # --- save / restore -----------------------------------------------------------------

    def test_restore_garbage_raises(self, strategy_factory: Any) -> None:
        for garbage in (b"", b"not a saved state", b'{"format": "elsewhere"}', b"\xff\xfe"):
            with pytest.raises(ValidationError):
                strategy_factory().restore(garbage)

    def test_restore_right_after_start(self, strategy_factory: Any) -> None:
        original = self._start(strategy_factory, MIXED, seed=7)
        copy = self._restored(strategy_factory, self._save(original))
        a = self._ask(original, MIXED, 0)
        b = self._ask(copy, MIXED, 0)
        if self.deterministic:
            assert a.params == b.params

    @pytest.mark.parametrize("asked", [1, 5])
    def test_restore_in_a_fresh_instance_continues(self, strategy_factory: Any, asked: int) -> None:
        original = self._start(strategy_factory, MIXED, seed=3, parallelism=2, budget=40)
        trials = [self._ask(original, MIXED, i) for i in range(asked)]
        for trial in trials[:-1]:
            original.tell(trial, unit_objective(MIXED, trial.params))
            self._save(original)
        state = self._save(original)  # trials[-1] is outstanding
        copy = self._restored(strategy_factory, state)
        outstanding = trials[-1]
        value = unit_objective(MIXED, outstanding.params)
        copy.tell(rebuilt(outstanding), value)
        original.tell(outstanding, value)
        for i in range(asked, asked + 5):
            a = self._ask(original, MIXED, i)
            b = self._ask(copy, MIXED, i)  # numbers continue after a restore
            if self.deterministic:
                assert b.params == a.params, "a restored strategy asks what the original would"
            original.tell(a, unit_objective(MIXED, a.params))
            copy.tell(b, unit_objective(MIXED, b.params))
        # and again, from the restored one
        again = self._restored(strategy_factory, self._save(copy))
        c = self._ask(again, MIXED, asked + 5)
        d = self._ask(original, MIXED, asked + 5)
        if self.deterministic:
            assert c.params == d.params

    def test_outstanding_trials_survive_restore(self, strategy_factory: Any) -> None:
        original = self._start(strategy_factory, CONDITIONAL, parallelism=3, budget=10)
        trials = [self._ask(original, CONDITIONAL, i) for i in range(3)]
        copy = self._restored(strategy_factory, self._save(original))
        copy.tell(rebuilt(trials[1]), 0.5)
        copy.tell_failed(rebuilt(trials[0]), "cancelled")
        copy.tell(rebuilt(trials[2]), 0.25)
        with pytest.raises(ValidationError):
            copy.tell(rebuilt(trials[2]), 0.25)
        self._ask(copy, CONDITIONAL, 3)

    # --- seeds --------------------------------------------------------------------------

    def _sequence(self, factory: Any, seed: int, n: int = 8) -> list[dict[str, Any]]:
        strategy = self._start(factory, MIXED, seed=seed, budget=n)
        points = []
        for i in range(n):
            trial = self._ask(strategy, MIXED, i)
            strategy.tell(trial, unit_objective(MIXED, trial.params))
            points.append(trial.params)
        return points

    def test_same_seed_same_sequence(self, strategy_factory: Any) -> None:
        if not self.deterministic:
            pytest.skip("the strategy does not claim seeded reproducibility")
        assert self._sequence(strategy_factory, 11) == self._sequence(strategy_factory, 11)
        if self.seed_matters:
            assert self._sequence(strategy_factory, 11) != self._sequence(strategy_factory, 12)

    # --- finite spaces ------------------------------------------------------------------

    def test_exhaustion_returns_none(self, strategy_factory: Any) -> None:
        if not self.finite:
            pytest.skip("the strategy does not end on finite spaces")
        strategy = self._start(strategy_factory, TINY, parallelism=2)
        if strategy.exhaustive:
            assert strategy.count() == 6
        seen = []
        for i in range(6):
            trial = self._ask(strategy, TINY, i)
            seen.append(TINY.key(trial.params))
            strategy.tell(trial, float(i))
        assert len(set(seen)) == 6, "each point of a finite space is asked once"
        assert {TINY.key(p) for p in TINY.grid()} == set(seen)
        assert strategy.ask() is None
        assert strategy.ask() is None
        restored = self._restored(strategy_factory, self._save(strategy))
        assert restored.ask() is None

    def test_no_point_twice_across_restore(self, strategy_factory: Any) -> None:
        if not self.finite:
            pytest.skip("the strategy does not end on finite spaces")
        strategy = self._start(strategy_factory, TINY, seed=5)
        seen = []
        for i in range(3):
            trial = self._ask(strategy, TINY, i)
            seen.append(TINY.key(trial.params))
            strategy.tell(trial, float(i))
        strategy = self._restored(strategy_factory, self._save(strategy))
        for i in range(3, 6):
            trial = self._ask(strategy, TINY, i)
            seen.append(TINY.key(trial.params))
            strategy.tell(trial, float(i))
        assert len(set(seen)) == 6
        assert strategy.ask() is None

    # --- optimisation -------------------------------------------------------------------

    def _optimise(self, factory: Any, direction: str) -> float:
        """The best squared distance to the optimum found within the budget."""
        sign = 1.0 if direction == "minimize" else -1.0
        strategy = self._start(
            factory,
            QUADRATIC,
            direction=direction,
            seed=0,
            parallelism=2,
            budget=self.improvement_budget,
        )
        best = math.inf
        number = 0
        while number < self.improvement_budget:
            batch = []
            for _ in range(2):
                trial = strategy.ask()
                if trial is None:
                    break
                self._check_trial(trial, QUADRATIC, number)
                number += 1
                batch.append(trial)
            if not batch:
                break  # a finite strategy that asked every point
            for trial in reversed(batch):
                distance = quadratic(trial.params)
                best = min(best, distance)
                strategy.tell(trial, sign * distance + (0.0 if sign > 0 else 1.0))
        return best

    @pytest.mark.parametrize("direction", ["minimize", "maximize"])
    def test_finds_a_good_point(self, strategy_factory: Any, direction: str) -> None:
        best = self._optimise(strategy_factory, direction)
        assert best < self.improvement_bar, (
            f"{direction}: best squared distance {best:.4f} after "
            f"{self.improvement_budget} trials; uniform random search reaches "
            f"{self.improvement_bar} with probability > 0.9999"
        )


__all__ = [
    "CONDITIONAL",
    "MIXED",
    "QUADRATIC",
    "TINY",
    "SearchStrategyContract",
    "quadratic",
    "rebuilt",
    "unit_objective",
]
