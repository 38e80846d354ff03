"""Search spaces: the dict/file/Python forms, every refused input, exact grid sizes."""

from __future__ import annotations

import itertools
import json
import math
import random
import sys

import pytest

from mlrig.errors import MissingExtraError, ValidationError
from mlrig.search.space import (
    Choice,
    Constant,
    FloatRange,
    IntRange,
    SearchSpace,
)

SVM = {
    "C": {"type": "float", "low": 1e-3, "high": 1e3, "log": True},
    "depth": {"type": "int", "low": 2, "high": 12, "step": 2},
    "kernel": {"type": "choice", "options": ["linear", "rbf", "poly"]},
    "gamma": {"type": "float", "low": 1e-4, "high": 1, "log": True, "when": {"kernel": "rbf"}},
    "degree": {"type": "int", "low": 2, "high": 5, "when": {"kernel": ["poly"]}},
    "max_iter": 200,
}


def space(raw: dict) -> SearchSpace:
    return SearchSpace.from_dict(raw)


def refused(raw: object, match: str) -> ValidationError:
    with pytest.raises(ValidationError, match=match) as err:
        SearchSpace.from_dict(raw)  # type: ignore[arg-type]
    return err.value


# --- parsing -------------------------------------------------------------------------------


def test_dict_form_parses_into_typed_params() -> None:
    s = space(SVM)
    assert s.params["C"] == FloatRange(1e-3, 1e3, log=True)
    assert s.params["depth"] == IntRange(2, 12, step=2)
    assert s.params["kernel"] == Choice(("linear", "rbf", "poly"))
    assert s.params["gamma"].when == {"kernel": ("rbf",)}
    assert s.params["degree"].when == {"kernel": ("poly",)}
    assert s.params["max_iter"] == Constant(200)
    assert s.names == list(SVM)
    assert s.is_conditional


def test_python_form_equals_the_dict_form() -> None:
    built = SearchSpace(
        {
            "C": FloatRange(1e-3, 1000, log=True),
            "depth": IntRange(2, 12, step=2),
            "kernel": Choice(["linear", "rbf", "poly"]),  # a list is fine
            "gamma": FloatRange(1e-4, 1, log=True, when={"kernel": "rbf"}),
            "degree": IntRange(2, 5, when={"kernel": ("poly",)}),
            "max_iter": 200,
        }
    )
    assert built == space(SVM)
    assert type(built.params["C"].high) is float
    assert SearchSpace.of(C=FloatRange(1, 2), n=3) == space(
        {"C": {"type": "float", "low": 1, "high": 2}, "n": 3}
    )


def test_python_conditions_may_be_sets() -> None:
    abc = Choice(("a", "b", "c"))
    a = SearchSpace({"k": abc, "x": IntRange(0, 1, when={"k": {"c", "a"}})})
    b = SearchSpace({"k": abc, "x": IntRange(0, 1, when={"k": ["a", "c"]})})
    assert a == b


def test_python_form_is_validated_too() -> None:
    with pytest.raises(ValidationError, match=r"parameter 'C': low .* greater than high"):
        SearchSpace({"C": FloatRange(2, 1)})


def test_constants_bare_and_explicit() -> None:
    s = space(
        {
            "a": 1,
            "b": "text",
            "c": None,
            "d": True,
            "e": {"type": "const", "value": [64, 32]},
            "f": {"type": "const", "value": {"nested": [1, {"x": None}]}},
        }
    )
    assert s.active({}) == {
        "a": 1,
        "b": "text",
        "c": None,
        "d": True,
        "e": [64, 32],
        "f": {"nested": [1, {"x": None}]},
    }
    assert s.grid_size() == 1


def test_round_trip_is_canonical() -> None:
    s = space(SVM)
    canonical = s.to_dict()
    assert SearchSpace.from_dict(canonical) == s
    assert SearchSpace.from_dict(json.loads(json.dumps(canonical))).to_dict() == canonical
    assert canonical["max_iter"] == {"type": "const", "value": 200}
    assert canonical["gamma"]["when"] == {"kernel": ["rbf"]}
    assert "step" not in canonical["C"] and "log" not in canonical["depth"]


def test_integral_floats_are_accepted_as_int_bounds() -> None:
    assert space({"n": {"type": "int", "low": 1.0, "high": 1e3}}).params["n"] == IntRange(1, 1000)


def test_order_puts_parents_first() -> None:
    s = space(
        {
            "tol": {"type": "float", "low": 0, "high": 1, "when": {"shrink": True}},
            "shrink": {"type": "choice", "options": [True, False], "when": {"kernel": "rbf"}},
            "kernel": {"type": "choice", "options": ["rbf", "linear"]},
            "C": 1,
        }
    )
    assert s.order == ["kernel", "shrink", "tol", "C"]
    assert s.names == ["tol", "shrink", "kernel", "C"]


# --- refused input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({}, "empty: give at least one parameter"),
        ([1, 2], "must be an object mapping parameter names"),
        ({"x": {"type": ["float"]}}, r"parameter 'x': unknown type \['float'\]"),
        (
            {"x": {"type": "gaussian"}},
            r"parameter 'x': unknown type 'gaussian'; types are: float, int, choice, const",
        ),
        ({"x": {"low": 1}}, r"parameter 'x': an object needs a \"type\""),
        (
            {"x": {"type": "float", "low": 0, "high": 1, "scale": "log"}},
            r"parameter 'x': unknown key 'scale' for a float; "
            "its keys are: type, low, high, log, step, when",
        ),
        ({"x": {"type": "float", "low": 0}}, r"parameter 'x': a float needs 'high'"),
        ({"x": {"type": "choice"}}, r"parameter 'x': a choice needs 'options'"),
        ({"x": {"type": "const"}}, r"parameter 'x': a const needs 'value'"),
        (
            {"x": {"type": "float", "low": 2, "high": 1}},
            r"parameter 'x': low \(2.0\) is greater than high \(1.0\)",
        ),
        (
            {"x": {"type": "int", "low": 5, "high": 1}},
            r"parameter 'x': low \(5\) is greater than high \(1\)",
        ),
        (
            {"x": {"type": "float", "low": 0, "high": 1, "log": True}},
            r"parameter 'x': a log range needs low > 0, got low = 0.0",
        ),
        ({"x": {"type": "float", "low": -1, "high": 1, "log": True}}, "a log range needs low > 0"),
        (
            {"x": {"type": "int", "low": 0, "high": 10, "log": True}},
            r"parameter 'x': a log int range needs low >= 1",
        ),
        (
            {"x": {"type": "float", "low": 0, "high": 1, "step": 0}},
            r"parameter 'x': step must be > 0, got 0.0",
        ),
        ({"x": {"type": "float", "low": 0, "high": 1, "step": -0.1}}, "step must be > 0"),
        (
            {"x": {"type": "int", "low": 0, "high": 10, "step": 0}},
            r"parameter 'x': step must be an integer >= 1, got 0",
        ),
        (
            {"x": {"type": "float", "low": 0, "high": 1, "step": 2}},
            r"parameter 'x': step 2.0 is larger than the range 0.0 to 1.0",
        ),
        (
            {"x": {"type": "int", "low": 0, "high": 5, "step": 10}},
            r"parameter 'x': step 10 is larger than the range 0 to 5",
        ),
        (
            {"x": {"type": "float", "low": 1, "high": 10, "log": True, "step": 1}},
            "step and log cannot be combined",
        ),
        (
            {"x": {"type": "int", "low": 1, "high": 10, "log": True, "step": 2}},
            "step and log cannot be combined",
        ),
        (
            {"x": {"type": "float", "low": 0, "high": 1e300, "step": 1e-300}},
            "step 1e-300 is too small",
        ),
        (
            {"x": {"type": "float", "low": "0", "high": 1}},
            r"parameter 'x': low must be a number, got '0'",
        ),
        ({"x": {"type": "float", "low": True, "high": 1}}, "low must be a number, got True"),
        ({"x": {"type": "float", "low": 0, "high": 1, "log": "yes"}}, "log must be true or false"),
        (
            {"x": {"type": "int", "low": 0.5, "high": 3}},
            r"parameter 'x': low must be an integer, got 0.5",
        ),
        (
            {"x": {"type": "float", "low": math.nan, "high": 1}},
            r"parameter 'x': low must be a finite number, got nan",
        ),
        (
            {"x": {"type": "float", "low": 0, "high": math.inf}},
            "high must be a finite number, got inf",
        ),
        (
            {"x": {"type": "float", "low": 0, "high": 10**400}},
            "high must be a finite number, got a huge number",
        ),
        ({"x": {"type": "float", "low": -1.7e308, "high": 1.7e308}}, "too wide"),
        (
            {"x": {"type": "int", "low": 0, "high": 2**63}},
            r"parameter 'x': high must be an integer from -9223372036854775808 to "
            "9223372036854775807, got 9223372036854775808",
        ),
        ({"x": {"type": "int", "low": -(10**40), "high": 0}}, "got a huge int"),
        (
            {"x": {"type": "choice", "options": []}},
            r"parameter 'x': a choice needs at least one option; options is empty",
        ),
        ({"x": {"type": "choice", "options": "abc"}}, "options must be a list of values"),
        (
            {"x": {"type": "choice", "options": ["a", "b", "a"]}},
            r"parameter 'x': option 'a' appears twice \(at 0 and 2\)",
        ),
        ({"x": {"type": "choice", "options": [1, 1.0]}}, "appears twice"),
        (
            {"x": {"type": "choice", "options": [1, math.nan]}},
            r"parameter 'x': option \[1\] is not a storable JSON value: .*finite",
        ),
        ({"x": {"type": "choice", "options": ["ok", "bad\x00"]}}, "option \\[1\\] .*NUL"),
        ({"x": {"type": "choice", "options": [2**70]}}, "64 bits"),
        (
            {"x": {"type": "const", "value": math.inf}},
            r"parameter 'x': value is not a storable JSON value",
        ),
        ({"x": [1, 2, 3]}, r"parameter 'x': a bare list is ambiguous"),
        ({"x": 1.5, "y": math.nan}, r"parameter 'y': value is not a storable JSON value"),
    ],
)
def test_bad_parameters_are_refused(raw: object, match: str) -> None:
    refused(raw, match)


def test_errors_name_the_parameter_in_details() -> None:
    err = refused({"alpha": {"type": "float", "low": 3, "high": 1}}, "alpha")
    assert err.details["parameter"] == "alpha"


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("", "parameter name is empty; names need 1 to 250 characters"),
        ("x" * 251, "has 251 characters; at most 250"),
        ("a\x00b", "contains a NUL character"),
        ("a\ud800b", "lone UTF-16 surrogate"),
    ],
)
def test_bad_names_are_refused(name: str, match: str) -> None:
    refused({name: 1}, match)


def test_non_string_names_are_refused() -> None:
    refused({1: 2}, "parameter names must be strings")  # type: ignore[dict-item]
    with pytest.raises(ValidationError, match="must be strings"):
        SearchSpace({("a",): FloatRange(0, 1)})  # type: ignore[dict-item]


def test_too_many_parameters() -> None:
    refused({f"p{i}": i for i in range(1001)}, "1,001 parameters; at most 1,000")


# --- conditions ------------------------------------------------------------------------------

KERNEL = {"type": "choice", "options": ["linear", "rbf"]}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (
            {
                "kernel": KERNEL,
                "gamma": {"type": "float", "low": 0, "high": 1, "when": {"kernal": "rbf"}},
            },
            r"parameter 'gamma': its condition names 'kernal', which is not a parameter of "
            "the space; parameters are: kernel, gamma",
        ),
        (
            {
                "C": {"type": "float", "low": 0, "high": 1},
                "g": {"type": "float", "low": 0, "high": 1, "when": {"C": 0.5}},
            },
            r"parameter 'g': its condition names 'C', which is a float range; "
            "conditions may only name a choice or a constant",
        ),
        (
            {
                "n": {"type": "int", "low": 0, "high": 3},
                "g": {"type": "int", "low": 0, "high": 1, "when": {"n": 1}},
            },
            "which is an int range",
        ),
        (
            {
                "kernel": KERNEL,
                "gamma": {"type": "float", "low": 0, "high": 1, "when": {"kernel": "poly"}},
            },
            r"parameter 'gamma': its condition kernel = \"poly\" can never hold: "
            r"'kernel' takes only \"linear\", \"rbf\"",
        ),
        (
            {
                "kernel": KERNEL,
                "gamma": {
                    "type": "float",
                    "low": 0,
                    "high": 1,
                    "when": {"kernel": ["rbf", "sigmoid"]},
                },
            },
            'kernel = "sigmoid" can never hold',
        ),
        (
            {"mode": "fast", "x": {"type": "int", "low": 0, "high": 1, "when": {"mode": "slow"}}},
            "'mode' takes only \"fast\"",
        ),
        (
            {
                "kernel": KERNEL,
                "gamma": {"type": "float", "low": 0, "high": 1, "when": {"kernel": []}},
            },
            "the condition on 'kernel' lists no values",
        ),
        (
            {"kernel": KERNEL, "gamma": {"type": "float", "low": 0, "high": 1, "when": "kernel"}},
            '"when" must map parameter names',
        ),
        (
            {"a": {"type": "choice", "options": [1, 2], "when": {"a": 1}}},
            r"parameter 'a': its condition names itself",
        ),
        (
            {
                "a": {"type": "choice", "options": [1, 2], "when": {"b": 1}},
                "b": {"type": "choice", "options": [1, 2], "when": {"a": 1}},
            },
            r"the conditions form a cycle: a -> b -> a",
        ),
        (
            {
                "x": 1,
                "a": {"type": "choice", "options": [1, 2], "when": {"c": 1}},
                "b": {"type": "choice", "options": [1, 2], "when": {"a": 1}},
                "c": {"type": "choice", "options": [1, 2], "when": {"b": 2}},
            },
            r"cycle: a -> c -> b -> a",
        ),
    ],
)
def test_bad_conditions_are_refused(raw: dict, match: str) -> None:
    refused(raw, match)


def test_contradictory_conditions_are_refused() -> None:
    # 'mode' exists only for the linear kernel; 'tol' needs the rbf kernel and a mode: never
    err = refused(
        {
            "kernel": KERNEL,
            "mode": {"type": "choice", "options": ["a", "b"], "when": {"kernel": "linear"}},
            "tol": {"type": "float", "low": 0, "high": 1, "when": {"kernel": "rbf", "mode": "a"}},
        },
        r"parameter 'tol': can never be active: its conditions "
        r"\(kernel = \"rbf\" and mode = \"a\"\) never hold together",
    )
    assert err.details["parameter"] == "tol"


def test_contradiction_through_a_chain_is_refused() -> None:
    refused(
        {
            "a": {"type": "choice", "options": ["x", "y"]},
            "b": {"type": "const", "value": "on", "when": {"a": "x"}},
            "c": {"type": "choice", "options": [1, 2], "when": {"b": "on"}},
            "d": {"type": "int", "low": 0, "high": 1, "when": {"c": 1, "a": "y"}},
        },
        "parameter 'd': can never be active",
    )


def test_conditions_on_constants_and_several_parents() -> None:
    s = space(
        {
            "model": "svm",
            "kernel": {"type": "choice", "options": ["linear", "rbf"], "when": {"model": "svm"}},
            "scale": {"type": "choice", "options": [True, False]},
            "gamma": {
                "type": "float",
                "low": 0.1,
                "high": 1,
                "when": {"kernel": "rbf", "scale": False},
            },
        }
    )
    assert s.active({"kernel": "rbf", "scale": False, "gamma": 0.5}) == {
        "model": "svm",
        "kernel": "rbf",
        "scale": False,
        "gamma": 0.5,
    }
    assert s.active({"kernel": "rbf", "scale": True, "gamma": 0.5}) == {
        "model": "svm",
        "kernel": "rbf",
        "scale": True,
    }


def test_condition_values_compare_as_json() -> None:
    s = space(
        {
            "flag": {"type": "choice", "options": [True, 1, "1"]},
            "x": {"type": "int", "low": 0, "high": 1, "when": {"flag": 1.0}},
        }
    )
    assert "x" in s.active({"flag": 1, "x": 0})
    assert "x" not in s.active({"flag": True, "x": 0})
    assert "x" not in s.active({"flag": "1", "x": 0})


# --- points ----------------------------------------------------------------------------------


def test_active_drops_inactive_and_fills_constants() -> None:
    s = space(SVM)
    point = {"C": 1.0, "depth": 4, "kernel": "linear", "gamma": 0.1, "degree": 3}
    assert s.active(point) == {"C": 1.0, "depth": 4, "kernel": "linear", "max_iter": 200}


def test_validate_normalises() -> None:
    s = space({**SVM, "frac": {"type": "float", "low": 0, "high": 1, "step": 0.1}})
    point = {"C": 10, "depth": 5.0, "kernel": "rbf", "gamma": 0.5, "frac": 0.33}
    valid = s.validate(point)
    assert valid == {
        "C": 10.0,
        "depth": 6,
        "kernel": "rbf",
        "gamma": 0.5,
        "max_iter": 200,
        "frac": 0.3,
    }
    assert type(valid["C"]) is float and type(valid["depth"]) is int
    assert s.validate(valid) == valid


@pytest.mark.parametrize(
    ("point", "match"),
    [
        (
            {"C": 1, "depth": 2, "kernel": "linear", "colour": 1},
            "unknown parameter 'colour'; the space has: C, depth",
        ),
        ({"depth": 2, "kernel": "linear"}, r"parameter 'C': is missing from the point"),
        ({"C": 1, "depth": 2, "kernel": "rbf"}, r"parameter 'gamma': is missing"),
        (
            {"C": 1, "depth": 2, "kernel": "linear", "gamma": 0.1},
            r"parameter 'gamma': is not active in this point: it exists only when kernel = \"rbf\"",
        ),
        (
            {"C": 1e4, "depth": 2, "kernel": "linear"},
            r"parameter 'C': must be from 0.001 to 1000.0, got 10000.0",
        ),
        ({"C": "1", "depth": 2, "kernel": "linear"}, "parameter 'C': must be a number"),
        ({"C": math.nan, "depth": 2, "kernel": "linear"}, "must be a finite number"),
        (
            {"C": 1, "depth": 2.5, "kernel": "linear"},
            r"parameter 'depth': must be an integer, got 2.5",
        ),
        ({"C": 1, "depth": True, "kernel": "linear"}, "must be an integer, got True"),
        (
            {"C": 1, "depth": 14, "kernel": "linear"},
            r"parameter 'depth': must be from 2 to 12, got 14",
        ),
        (
            {"C": 1, "depth": 2, "kernel": "sigmoid"},
            r"parameter 'kernel': 'sigmoid' is not one of its options: "
            r"\"linear\", \"rbf\", \"poly\"",
        ),
        (
            {"C": 1, "depth": 2, "kernel": "linear", "max_iter": 300},
            r"parameter 'max_iter': is the constant 200, got 300",
        ),
    ],
)
def test_validate_refuses(point: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        space(SVM).validate(point)


def test_sample_gives_valid_active_points_reproducibly() -> None:
    s = space(SVM)
    first = [s.sample(random.Random(3)) for _ in range(1)] + [s.sample(random.Random(4))]
    again = [s.sample(random.Random(3)), s.sample(random.Random(4))]
    assert first == again
    rng = random.Random(0)
    kernels = set()
    for _ in range(200):
        point = s.sample(rng)
        assert s.validate(point) == point
        kernels.add(point["kernel"])
        assert ("gamma" in point) == (point["kernel"] == "rbf")
    assert kernels == {"linear", "rbf", "poly"}
    assert s.sample(5) == s.sample(random.Random(5))


def test_sample_takes_a_numpy_generator() -> None:
    numpy = pytest.importorskip("numpy")
    s = space(SVM)
    a = s.sample(numpy.random.default_rng(1))
    assert a == s.sample(numpy.random.default_rng(1))
    assert s.validate(a) == a


def test_unit_cube_round_trip() -> None:
    s = space({**SVM, "frac": {"type": "float", "low": 0, "high": 1, "step": 0.25}})
    rng = random.Random(1)
    for _ in range(100):
        point = s.sample(rng)
        coords = s.to_unit(point)
        assert set(coords) == set(point)
        assert all(0.0 <= u <= 1.0 for u in coords.values())
        back = s.from_unit(coords)
        assert back["kernel"] == point["kernel"] and back["depth"] == point["depth"]
        assert back["frac"] == point["frac"]
        assert math.isclose(back["C"], point["C"], rel_tol=1e-9)
    ends = s.from_unit({name: 0.0 for name in s.names})
    assert (ends["C"], ends["depth"], ends["kernel"]) == (0.001, 2, "linear")
    assert s.from_unit([1.0] * len(s.names))["C"] == 1000.0


def test_log_int_from_unit_covers_every_value() -> None:
    p = IntRange(1, 4, log=True)
    values = {p.from_unit(k / 1000) for k in range(1001)}
    assert values == {1, 2, 3, 4}


def test_key_is_canonical() -> None:
    s = space(SVM)
    a = {"C": 1.0, "depth": 2, "kernel": "linear", "gamma": 0.5}
    b = {"kernel": "linear", "depth": 2, "C": 1.0}
    assert s.key(a) == s.key(b)


# --- grid ------------------------------------------------------------------------------------


def test_grid_size_counts_conditional_branches() -> None:
    s = space(SVM)
    # C: 5, depth: 6 (2, 4, .., 12), kernel: linear 1 + rbf 5 (gamma) + poly 4 (degree)
    assert s.grid_size(float_points=5) == 5 * 6 * (1 + 5 + 4)
    assert len(list(s.grid(float_points=5))) == 300
    assert s.grid_size(float_points=1) == 1 * 6 * (1 + 1 + 4)


def test_grid_size_without_float_points_names_the_float() -> None:
    with pytest.raises(ValidationError, match="parameter 'C': is a float range without step"):
        space(SVM).grid_size()
    with pytest.raises(ValidationError, match="float_points must be an integer from 1 to 10,000"):
        space(SVM).grid_size(float_points=0)


def test_grid_size_of_steps_and_ints() -> None:
    s = space(
        {
            "a": {"type": "float", "low": 0, "high": 1, "step": 0.1},  # 11
            "b": {
                "type": "float",
                "low": 0,
                "high": 0.3,
                "step": 0.1,
            },  # 4 (0.3 / 0.1 < 3 in floats)
            "c": {"type": "int", "low": 0, "high": 10, "step": 3},  # 0 3 6 9
            "d": {"type": "int", "low": -5, "high": 5},  # 11
            "e": {"type": "float", "low": 2, "high": 2},  # 1
        }
    )
    assert s.grid_size() == 11 * 4 * 4 * 11
    assert [p["b"] for p in itertools.islice(s.grid(), 0, 4 * 4 * 11, 4 * 11)] == [
        0.0,
        0.1,
        0.2,
        0.3,
    ]


def test_grid_size_of_a_log_int_counts_distinct_rounded_values() -> None:
    p = IntRange(1, 1000, log=True)
    assert p.size(4) == 4 and list(p.values(4)) == [1, 10, 100, 1000]
    assert IntRange(1, 3, log=True).size(5) == 3  # 1, 1.3, 1.7, 2.3, 3 -> 1, 2, 3
    assert space({"n": {"type": "int", "low": 1, "high": 1000, "log": True}}).grid_size() == 1000


def test_a_billion_point_grid_is_counted_without_enumerating() -> None:
    s = space({f"x{i}": {"type": "int", "low": 1, "high": 10} for i in range(9)})
    assert s.grid_size() == 10**9
    huge = space(
        {
            "x": {"type": "int", "low": 0, "high": 2**62},
            "y": {"type": "float", "low": 0, "high": 1e9, "step": 1e-3},
            "k": {"type": "choice", "options": list(range(100))},
            "z": {"type": "int", "low": 0, "high": 10**12, "when": {"k": [0, 1]}},
        }
    )
    assert huge.grid_size() == (2**62 + 1) * (10**12 + 1) * (98 + 2 * (10**12 + 1))
    assert next(iter(huge.grid())) == {"x": 0, "y": 0.0, "k": 0, "z": 0}
    last = huge.grid_size() - 1
    assert huge.grid_point(last) == {"x": 2**62, "y": 1e9, "k": 99}
    assert huge.grid_point(10**12) == {"x": 0, "y": 0.0, "k": 0, "z": 10**12}
    assert huge.grid_point(10**12 + 1) == {"x": 0, "y": 0.0, "k": 1, "z": 0}
    assert huge.grid_point(2 * (10**12 + 1) + 5) == {"x": 0, "y": 0.0, "k": 7}
    assert s.grid_point(10**9 - 1) == {f"x{i}": 10 for i in range(9)}
    assert s.grid_point(123_456_789) == {f"x{i}": int(d) + 1 for i, d in enumerate("123456789")}
    with pytest.raises(IndexError):
        s.grid_point(10**9)


def _random_space(rng: random.Random) -> SearchSpace:
    raw: dict = {}
    choices: list[tuple[str, list]] = []
    for i in range(rng.randint(1, 6)):
        name = f"p{i}"
        kind = rng.choice(["choice", "choice", "int", "float", "const"])
        if kind == "choice":
            spec: dict = {"type": "choice", "options": list(range(rng.randint(1, 3)))}
        elif kind == "int":
            spec = {"type": "int", "low": 0, "high": rng.randint(0, 3)}
        elif kind == "float":
            spec = {
                "type": "float",
                "low": 0,
                "high": 1,
                **({"step": 0.5} if rng.random() < 0.5 else {}),
            }
        else:
            spec = {"type": "const", "value": rng.choice(["x", "y"])}
        parents = rng.sample(choices, k=min(len(choices), rng.choice([0, 0, 1, 1, 2])))
        if parents:
            spec["when"] = {p: rng.sample(opts, k=rng.randint(1, len(opts))) for p, opts in parents}
        raw[name] = spec
        if kind == "choice":
            choices.append((name, spec["options"]))
        elif kind == "const":
            choices.append((name, [spec["value"]]))
    return SearchSpace.from_dict(raw)


def test_grid_size_matches_enumeration_on_random_conditional_spaces() -> None:
    rng = random.Random(12)
    checked = 0
    while checked < 150:
        try:
            s = _random_space(rng)
        except ValidationError as exc:
            assert "can never be active" in exc.message
            continue
        points = list(s.grid(float_points=3))
        keys = {s.key(p) for p in points}
        assert len(keys) == len(points), "the grid yields each point once"
        assert s.grid_size(float_points=3) == len(points)
        for p in points:
            assert s.validate(p) == p
        # brute force: every full assignment, reduced to its active point
        values = {n: list(p.values(3)) for n, p in s.params.items()}
        brute = {
            s.key(dict(zip(values, combo, strict=True)))
            for combo in itertools.product(*values.values())
        }
        assert brute == keys
        for k in {0, len(points) // 3, len(points) // 2, len(points) - 1}:  # random access
            assert s.grid_point(k, float_points=3) == points[k]
            assert list(s.grid(float_points=3, start=k)) == points[k:]
        checked += 1


def test_too_entangled_conditions_are_refused() -> None:
    raw: dict = {f"c{i}": {"type": "choice", "options": list(range(4))} for i in range(10)}
    raw["x"] = {"type": "int", "low": 0, "high": 1, "when": {f"c{i}": [0, 1] for i in range(10)}}
    raw["y"] = {"type": "int", "low": 0, "high": 1, "when": {f"c{i}": [0, 2] for i in range(10)}}
    refused(raw, "too entangled")


# --- files -----------------------------------------------------------------------------------

TOML = """
max_iter = 200

[C]
type = "float"
low = 1e-3
high = 1e3
log = true

[depth]
type = "int"
low = 2
high = 12
step = 2

[kernel]
type = "choice"
options = ["linear", "rbf", "poly"]

[gamma]
type = "float"
low = 1e-4
high = 1.0
log = true
when = { kernel = "rbf" }

[degree]
type = "int"
low = 2
high = 5
when = { kernel = ["poly"] }
"""

YAML = """
C: {type: float, low: 1e-3, high: 1e3, log: true}  # 1e-3: a float, as in YAML 1.2
depth: {type: int, low: 2, high: 12, step: 2}
kernel: {type: choice, options: [linear, rbf, poly]}
gamma:
  type: float
  low: 1.0e-4
  high: 1
  log: true
  when: {kernel: rbf}
degree: {type: int, low: 2, high: 5, when: {kernel: [poly]}}
max_iter: 200
"""


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("space.json", json.dumps(SVM)),
        ("space.toml", TOML),
        ("space.yaml", YAML),
        ("space.YML", YAML),
    ],
)
def test_files_in_each_format(tmp_path, name: str, text: str) -> None:
    if name.lower().endswith((".yaml", ".yml")):
        pytest.importorskip("yaml")
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert SearchSpace.load(path) == space(SVM)
    assert SearchSpace.load(str(path)) == space(SVM)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("s.json", '{"C": ', r"s.json: the search space is not valid JSON"),
        ("s.toml", "C = [", r"s.toml: the search space is not valid TOML"),
        (
            "s.json",
            '{"C": {"type": "float", "low": 2, "high": 1}}',
            r"s.json: parameter 'C': low \(2.0\) is greater",
        ),
        ("s.json", '{"C": NaN}', r"s.json: parameter 'C': value is not a storable JSON value"),
        ("s.json", "[]", "must be an object mapping parameter names"),
        ("s.txt", "{}", r"unknown extension; use .json, .toml, .yaml or .yml"),
    ],
)
def test_bad_files(tmp_path, name: str, text: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValidationError, match=match) as err:
        SearchSpace.load(path)
    assert err.value.details["file"] == str(path)


def test_bad_yaml(tmp_path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "s.yaml"
    path.write_text("C: [unclosed", encoding="utf-8")
    with pytest.raises(ValidationError, match="not valid YAML"):
        SearchSpace.load(path)
    path.write_text("when: 2020-01-01", encoding="utf-8")
    with pytest.raises(
        ValidationError, match="parameter 'when': value is not a storable JSON value: a date"
    ):
        SearchSpace.load(path)


def test_yaml_aliases_are_refused() -> None:
    pytest.importorskip("yaml")
    bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    with pytest.raises(
        ValidationError, match=r"not valid YAML: aliases \(\*name\) are not allowed"
    ):
        SearchSpace.parse(bomb, format="yaml")


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ValidationError, match="does not exist"):
        SearchSpace.load(tmp_path / "nope.json")


def test_yaml_without_pyyaml_says_what_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ImportError
    path = tmp_path / "s.yaml"
    path.write_text("x: 1", encoding="utf-8")
    with pytest.raises(MissingExtraError, match="needs PyYAML: pip install pyyaml"):
        SearchSpace.load(path)


def test_parse_text() -> None:
    assert SearchSpace.parse(json.dumps(SVM), format="json") == space(SVM)
    with pytest.raises(ValidationError, match="unknown search space format 'xml'"):
        SearchSpace.parse("<x/>", format="xml")
