"""The random and grid strategies: the contract suite, and what each adds."""

from __future__ import annotations

import json

import pytest

from mlrig.backends import load_backend
from mlrig.contracts.search import SearchStrategy
from mlrig.errors import ConfigError, ValidationError
from mlrig.plugins.search_grid import GridSearch
from mlrig.plugins.search_random import RandomSearch
from mlrig.search.space import Choice, FloatRange, IntRange, SearchSpace
from mlrig.testing.search import CONDITIONAL, MIXED, TINY, SearchStrategyContract


def random_search(**options: object) -> RandomSearch:
    return RandomSearch.from_options(dict(options), where="search.random")


def grid_search(**options: object) -> GridSearch:
    return GridSearch.from_options(dict(options), where="search.grid")


class TestRandomContract(SearchStrategyContract):
    deterministic = True
    finite = True

    @pytest.fixture
    def strategy_factory(self):
        return random_search


class TestRandomRepeatsContract(SearchStrategyContract):
    """``unique = false``: plain independent draws, never exhausted."""

    deterministic = True
    finite = False

    @pytest.fixture
    def strategy_factory(self):
        return lambda: random_search(unique=False)


class TestGridContract(SearchStrategyContract):
    deterministic = True
    seed_matters = False
    finite = True
    # the grid of QUADRATIC at 5 float points has its best at distance^2 0.005
    improvement_budget = 60

    @pytest.fixture
    def strategy_factory(self):
        return grid_search


# --- both: entry points ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "cls"), [("random", RandomSearch), ("grid", GridSearch)])
def test_loaded_through_the_entry_point(name: str, cls: type) -> None:
    loaded = load_backend("search", name)
    assert loaded is cls
    assert issubclass(loaded, SearchStrategy)


@pytest.mark.parametrize("factory", [random_search, grid_search])
def test_unknown_option_is_refused(factory) -> None:
    with pytest.raises(ConfigError, match="shuffle"):
        factory(shuffle=True)


@pytest.mark.parametrize("factory", [random_search, grid_search])
def test_ask_before_start_says_so(factory) -> None:
    with pytest.raises(ValidationError, match="start"):
        factory().ask()


@pytest.mark.parametrize("factory", [random_search, grid_search])
def test_start_takes_the_dict_form(factory) -> None:
    strategy = factory()
    strategy.start(TINY.to_dict(), direction="minimize", seed=1)
    assert strategy.ask().params in list(TINY.grid())


def test_restore_of_another_strategys_state_is_refused() -> None:
    grid = grid_search()
    grid.start(TINY, direction="minimize", seed=None)
    with pytest.raises(ValidationError, match="random"):
        random_search().restore(grid.save())


# --- random ------------------------------------------------------------------------------


def test_random_same_seed_same_asks_whatever_is_told() -> None:
    a, b = random_search(), random_search()
    a.start(MIXED, direction="minimize", seed=42)
    b.start(MIXED, direction="maximize", seed=42)
    for i in range(10):
        ta, tb = a.ask(), b.ask()
        assert ta.params == tb.params
        a.tell(ta, float(i))
        b.tell_failed(tb)


def test_random_covers_every_point_of_a_finite_space_once() -> None:
    space = SearchSpace({"a": Choice(tuple(range(7))), "b": IntRange(0, 2)})
    strategy = random_search()
    strategy.start(space, direction="minimize", seed=0)
    assert strategy.count() == 21
    points = [strategy.ask().params for _ in range(21)]
    assert sorted((p["a"], p["b"]) for p in points) == [(a, b) for a in range(7) for b in range(3)]
    assert strategy.ask() is None


def test_random_without_unique_may_repeat_and_never_ends() -> None:
    strategy = random_search(unique=False)
    strategy.start(TINY, direction="minimize", seed=0)
    assert strategy.count() is None
    keys = [TINY.key(strategy.ask().params) for _ in range(30)]
    assert len(set(keys)) == 6  # every point, some of them several times


def test_random_continuous_space_has_no_count_and_remembers_nothing() -> None:
    strategy = random_search()
    strategy.start(MIXED, direction="minimize", seed=0)
    assert strategy.count() is None
    for _ in range(50):
        strategy.ask()
    assert json.loads(strategy.save())["seen"] == []


def test_random_without_seed_picks_one_and_keeps_it() -> None:
    strategy = random_search()
    strategy.start(MIXED, direction="minimize", seed=None)
    seed = strategy.describe()["seed"]
    assert isinstance(seed, int)
    restored = random_search()
    restored.restore(strategy.save())
    assert restored.describe()["seed"] == seed
    assert restored.ask().params == strategy.ask().params


def test_random_samples_log_ranges_on_a_log_scale() -> None:
    space = SearchSpace({"lr": FloatRange(1e-6, 1.0, log=True)})
    strategy = random_search()
    strategy.start(space, direction="minimize", seed=0)
    values = [strategy.ask().params["lr"] for _ in range(600)]
    below = sum(v < 1e-3 for v in values)  # half of the log axis
    assert 240 < below < 360


def test_random_explores_conditional_branches_in_proportion() -> None:
    strategy = random_search()
    strategy.start(CONDITIONAL, direction="minimize", seed=0)
    kernels = [strategy.ask().params["kernel"] for _ in range(300)]
    for kernel in ("linear", "rbf", "poly"):
        assert 70 < kernels.count(kernel) < 130


def test_random_describe_reports_best() -> None:
    strategy = random_search()
    strategy.start(TINY, direction="maximize", seed=0)
    trials = [strategy.ask() for _ in range(3)]
    for value, trial in zip([1.0, 5.0, 3.0], trials, strict=True):
        strategy.tell(trial, value)
    info = strategy.describe()
    assert info["strategy"] == "random"
    assert info["best"]["value"] == 5.0
    assert info["best"]["params"] == trials[1].params
    assert (info["asked"], info["told"], info["outstanding"]) == (3, 3, 0)


def test_bad_seed_is_refused() -> None:
    with pytest.raises(ValidationError, match="seed"):
        random_search().start(TINY, direction="minimize", seed=-1)


# --- grid --------------------------------------------------------------------------------


def test_grid_count_before_the_first_ask_and_order() -> None:
    space = SearchSpace(
        {
            "kernel": Choice(("linear", "rbf")),
            "gamma": FloatRange(0.1, 10.0, log=True, when={"kernel": "rbf"}),
            "C": IntRange(1, 2),
        }
    )
    strategy = grid_search(float_points=3)
    strategy.start(space, direction="minimize", seed=None)
    assert strategy.count() == 8  # linear x 2 C + rbf x 3 gamma x 2 C
    points = []
    while (trial := strategy.ask()) is not None:
        points.append(trial.params)
    assert points == [
        {"kernel": "linear", "C": 1},
        {"kernel": "linear", "C": 2},
        {"kernel": "rbf", "gamma": 0.1, "C": 1},
        {"kernel": "rbf", "gamma": 0.1, "C": 2},
        {"kernel": "rbf", "gamma": 1.0, "C": 1},
        {"kernel": "rbf", "gamma": 1.0, "C": 2},
        {"kernel": "rbf", "gamma": 10.0, "C": 1},
        {"kernel": "rbf", "gamma": 10.0, "C": 2},
    ]


def test_grid_of_a_billion_points_is_refused_with_its_count() -> None:
    space = SearchSpace({f"x{i}": IntRange(1, 10) for i in range(9)})
    with pytest.raises(
        ValidationError, match=r"grid of 1,000,000,000 points.*limit 100,000"
    ) as err:
        grid_search().start(space, direction="minimize", seed=None)
    assert err.value.details["count"] == 10**9
    assert err.value.details["limit"] == 100_000


def test_grid_limit_is_an_option() -> None:
    with pytest.raises(ValidationError, match="grid of 6 points is larger than the limit 5"):
        grid_search(max_points=5).start(TINY, direction="minimize", seed=None)
    strategy = grid_search(max_points=6)
    strategy.start(TINY, direction="minimize", seed=None)
    assert strategy.count() == 6


def test_grid_float_points_option() -> None:
    space = SearchSpace({"x": FloatRange(0.0, 1.0)})
    strategy = grid_search(float_points=11)
    strategy.start(space, direction="minimize", seed=None)
    assert strategy.count() == 11
    assert [strategy.ask().params["x"] for _ in range(3)] == [0.0, 0.1, 0.2]
    with pytest.raises(ConfigError, match="float_points"):
        grid_search(float_points=0)


def test_grid_restore_continues_at_the_position() -> None:
    strategy = grid_search()
    strategy.start(MIXED, direction="minimize", seed=None)
    full = list(MIXED.grid(float_points=5))
    for i in range(100):
        strategy.tell(strategy.ask(), float(i))
    restored = grid_search()
    restored.restore(strategy.save())
    trial = restored.ask()
    assert trial.number == 100
    assert trial.params == full[100]
    assert trial.extra == {"index": 100}
    assert restored.count() == len(full) == MIXED.grid_size(float_points=5)
    assert [restored.ask().params for _ in range(50)] == full[101:151]


def test_grid_restore_far_into_a_large_grid() -> None:
    space = SearchSpace({f"x{i}": IntRange(0, 9) for i in range(9)})
    strategy = grid_search(max_points=10**9)
    strategy.start(space, direction="minimize", seed=None)
    state = json.loads(strategy.save())
    state["ledger"]["next_number"] = 987_654_321  # as if that many were asked
    restored = grid_search()
    restored.restore(json.dumps(state).encode())
    trial = restored.ask()
    assert trial.number == 987_654_321
    assert trial.params == {f"x{i}": int(d) for i, d in enumerate("987654321")}
