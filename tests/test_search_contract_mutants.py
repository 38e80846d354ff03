"""The search strategy contract catches broken strategies: each mutant keeps most promises
but breaks one, and the contract test for that promise must fail on it (the honest random
and grid strategies pass the whole suite in tests/test_search_strategies.py)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from mlrig.contracts.search import Trial
from mlrig.plugins.search_grid import GridSearch
from mlrig.plugins.search_random import RandomSearch
from mlrig.testing.search import SearchStrategyContract


def run(test: str, factory: Any, *args: Any, **attrs: Any) -> None:
    contract = type("Contract", (SearchStrategyContract,), attrs)()
    getattr(contract, test)(factory, *args)


def random_search() -> RandomSearch:
    return RandomSearch.from_options({}, where="search.random")


class NewSeedOnRestore(RandomSearch):
    """Restores everything but the seed: a fresh start that keeps the numbers."""

    def restore(self, state: bytes) -> None:
        super().restore(state)
        self.seed += 1


class NumbersRestart(RandomSearch):
    """Forgets how many trials were asked."""

    def restore(self, state: bytes) -> None:
        super().restore(state)
        self.ledger.next_number = 0


class FullPoints(RandomSearch):
    """Asks points with every parameter, the inactive conditional ones too."""

    def ask(self) -> Trial | None:
        trial = super().ask()
        for name, param in self.space.params.items():
            trial.params.setdefault(name, param.from_unit(0.5))
        return trial


class TellsAnything(RandomSearch):
    """Accepts a tell for any trial, asked or not."""

    def tell(self, trial: Trial, value: float) -> None:
        self.ledger.outstanding.pop(trial.number, None)


class GridFromTheStart(GridSearch):
    """A restored grid starts again at its first point (numbers go on)."""

    def restore(self, state: bytes) -> None:
        super().restore(state)
        self._points = iter(self.space.grid(float_points=self.float_points))


class MinimizesAlways(RandomSearch):
    """A hill climber around the smallest value told so far, whatever the direction."""

    def ask(self) -> Trial | None:
        ledger = self.ledger
        best = getattr(self, "_best", None)
        if best is None:
            point = self.space.from_unit({})
        else:
            rng = random.Random(ledger.next_number)
            coords = {k: u + rng.gauss(0, 0.08) for k, u in self.space.to_unit(best[1]).items()}
            point = self.space.from_unit(coords)
        return ledger.new(point)

    def tell(self, trial: Trial, value: float) -> None:
        record = self.ledger.record(trial, value)
        best = getattr(self, "_best", None)
        if record is not None and (best is None or value < best[0]):
            self._best = (value, record["params"])


def test_restore_with_another_seed_is_caught() -> None:
    with pytest.raises(AssertionError, match="a restored strategy asks what the original would"):
        run(
            "test_restore_in_a_fresh_instance_continues",
            lambda: NewSeedOnRestore(RandomSearch.Options()),
            5,
        )


def test_numbers_that_restart_are_caught() -> None:
    with pytest.raises(AssertionError, match="trial numbers go 0, 1, 2"):
        run(
            "test_restore_in_a_fresh_instance_continues",
            lambda: NumbersRestart(RandomSearch.Options()),
            5,
        )


def test_inactive_parameters_are_caught() -> None:
    with pytest.raises(Exception, match="is not active in this point"):
        run(
            "test_asks_are_valid_active_points",
            lambda: FullPoints(RandomSearch.Options()),
            "conditional",
        )


def test_tells_of_unknown_trials_accepted_are_caught() -> None:
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        run(
            "test_tell_of_a_trial_not_outstanding_raises",
            lambda: TellsAnything(RandomSearch.Options()),
        )


def test_a_grid_that_repeats_after_restore_is_caught() -> None:
    factory = lambda: GridFromTheStart(GridSearch.Options())  # noqa: E731
    with pytest.raises(AssertionError):
        run("test_no_point_twice_across_restore", factory, finite=True, seed_matters=False)


def test_a_strategy_that_ignores_direction_is_caught() -> None:
    factory = lambda: MinimizesAlways(RandomSearch.Options())  # noqa: E731
    run("test_finds_a_good_point", factory, "minimize")  # it works when minimizing...
    with pytest.raises(AssertionError, match="maximize: best squared distance"):
        run("test_finds_a_good_point", factory, "maximize")  # ...and not when maximizing
