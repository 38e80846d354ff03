"""Search spaces: typed parameters, conditions, parsing from JSON/TOML/YAML or Python.

A space maps parameter names to :data:`Param` values. A parameter may be *conditional*:
``when={"kernel": ("rbf", "poly")}`` makes it exist only when ``kernel`` is one of those
values (conditions name :class:`Choice` or :class:`Constant` parameters; several keys in
``when`` must all hold).

The file/dict form (what ``mlrig sweeps create --space FILE`` reads and the REST API
takes)::

    {
      "C":      {"type": "float", "low": 1e-3, "high": 1e3, "log": true},
      "depth":  {"type": "int", "low": 2, "high": 12, "step": 2},
      "kernel": {"type": "choice", "options": ["linear", "rbf"]},
      "gamma":  {"type": "float", "low": 1e-4, "high": 1, "log": true,
                 "when": {"kernel": "rbf"}},
      "max_iter": 200
    }

A bare value (``"max_iter": 200``) is a constant; ``{"type": "const", "value": ...}`` too
(the only way to give a list or an object as a constant: a bare list is refused as
ambiguous). In ``when``, a list means "any of these values".

The same space in Python (validated when built, with the same errors)::

    SearchSpace({
        "C": FloatRange(1e-3, 1e3, log=True),
        "depth": IntRange(2, 12, step=2),
        "kernel": Choice(("linear", "rbf")),
        "gamma": FloatRange(1e-4, 1, log=True, when={"kernel": "rbf"}),
        "max_iter": 200,                      # a bare value is a Constant
    })
    SearchSpace.of(C=FloatRange(1e-3, 1e3, log=True), max_iter=200)   # the same, by keyword

What strategies share (so that each does not reinvent it):

- :attr:`SearchSpace.order`: the names in dependency order (a parent before the
  parameters conditioned on it), otherwise in the given order.
- :meth:`SearchSpace.sample`: a random active point from a :class:`random.Random` or a
  ``numpy.random.Generator`` (anything with ``random() -> float in [0, 1)``).
- :meth:`SearchSpace.from_unit` / :meth:`SearchSpace.to_unit`: a point from / to
  coordinates in ``[0, 1]`` per parameter (log scale for log ranges, equal bins for steps,
  ints and choices), and per parameter :meth:`FloatRange.from_unit` etc.
- :meth:`SearchSpace.grid`: every distinct active point, lazily, in a fixed order;
  :meth:`SearchSpace.grid_size`: how many, exactly, without enumerating.
- :meth:`SearchSpace.key`: a canonical string of a point (to spot repeats).
"""

from __future__ import annotations

import copy
import heapq
import json
import math
import numbers
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

from mlrig.errors import MissingExtraError, ValidationError
from mlrig.validation import INT64_MAX, INT64_MIN, find_bad_text, json_problem

#: longest parameter name
MAX_NAME_LENGTH = 250
#: most parameters in one space
MAX_PARAMS = 1000
#: most options of one choice
MAX_OPTIONS = 10_000
#: most values a float range without step contributes to a grid
MAX_FLOAT_POINTS = 10_000
#: the most combinations of condition-relevant choices the analysis of a space tracks
MAX_CONDITION_STATES = 50_000
#: the parameter types of the dict form
TYPES = ("float", "int", "choice", "const")
_KEYS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "choice": ("type", "options", "when"),
    "const": ("type", "value", "when"),
}
_TYPE_WORDS = {
    "FloatRange": "a float range",
    "IntRange": "an int range",
    "Choice": "a choice",
    "Constant": "a constant",
}


class RandomSource(Protocol):
    """What :meth:`SearchSpace.sample` needs: ``random.Random`` and numpy's ``Generator``
    both have it."""

    def random(self) -> float: ...


def _fresh(value: Any) -> Any:
    """``value``, copied when it is mutable (a list or object option or constant)."""
    return copy.deepcopy(value) if isinstance(value, (list, dict)) else value


def _key(value: Any) -> Any:
    """A hashable identity of a JSON value: ``1`` and ``1.0`` are one, ``True`` is not ``1``."""
    if value is None:
        return ("z",)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, numbers.Real):
        return ("n", value if isinstance(value, (int, float)) else float(value))
    if isinstance(value, (list, tuple, dict)):
        return ("j", json.dumps(value, sort_keys=True, default=repr))
    return ("o", repr(value))


def _show(values: Sequence[Any], limit: int = 10) -> str:
    shown = ", ".join(json.dumps(v, default=repr)[:60] for v in values[:limit])
    return shown + (f", ... ({len(values):,} in all)" if len(values) > limit else "")


def _fail(name: str | None, message: str, **details: Any) -> ValidationError:
    where = f"parameter {name!r}: " if name is not None else ""
    extra = {"parameter": name} if name is not None else {}
    return ValidationError(where + message, details={**extra, **details})


# --- parameters ------------------------------------------------------------------------


def _unit(u: float) -> float:
    u = float(u)
    if not math.isfinite(u):
        return 0.5
    return min(max(u, 0.0), 1.0)


def _bin(u: float, n: int) -> int:
    """Which of ``n`` equal bins of ``[0, 1]`` holds ``u``."""
    return min(int(_unit(u) * n), n - 1)


def _step_count(low: float, high: float, step: float) -> int:
    """How many of ``low + k * step`` lie in ``[low, high]`` (exact; 0.3/0.1 gives 4)."""
    ratio = (Fraction(high) - Fraction(low)) / Fraction(step)
    k = math.floor(ratio)
    # 0.3 / 0.1 is 2.9999999999999998... in binary: a ratio within float error of an
    # integer is that integer
    if (k + 1) - ratio < Fraction(1, 10**9) + ratio * Fraction(1, 10**15):
        k += 1
    return k + 1


def _short(x: float) -> float:
    """``x`` without the last-digit noise of ``low + k * step`` (0.30000000000000004)."""
    return float(f"{x:.15g}")


class _Steps(Sequence[float]):
    """The values of a float range with a step, made on demand (there may be 10**9)."""

    def __init__(self, param: FloatRange) -> None:
        self.param = param
        self.n = _step_count(param.low, param.high, param.step or 1.0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self.n))]
        if not -self.n <= k < self.n:
            raise IndexError(k)
        k %= self.n
        return min(_short(self.param.low + k * (self.param.step or 1.0)), self.param.high)


@dataclass(frozen=True)
class FloatRange:
    """A float in ``[low, high]``; ``log`` samples on a log scale (``low > 0``);
    ``step`` quantises it (``low + k * step``)."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def size(self, float_points: int | None = None) -> int | None:
        """Distinct values in a grid: every step, else ``float_points`` (``None``: infinite)."""
        if self.low == self.high:
            return 1
        if self.step is not None:
            return _step_count(self.low, self.high, self.step)
        return float_points

    def values(self, float_points: int | None = None) -> list[float]:
        """The grid values: each step; or ``float_points`` evenly spaced values (on a log
        scale for ``log``), both ends included (one point: the middle)."""
        if self.low == self.high:
            return [self.low]
        if self.step is not None:
            return _Steps(self)
        if float_points is None:
            msg = "a float range without step has no finite grid: give float_points or a step"
            raise ValidationError(msg)
        if float_points == 1:
            return [self.from_unit(0.5)]
        return [self.from_unit(k / (float_points - 1)) for k in range(float_points)]

    def from_unit(self, u: float) -> float:
        """The value at ``u`` in ``[0, 1]`` (clipped): linear or log, equal bins per step."""
        if self.low == self.high:
            return self.low
        if self.step is not None:
            k = _bin(u, _step_count(self.low, self.high, self.step))
            return min(_short(self.low + k * self.step), self.high)
        u = _unit(u)
        if self.log:
            a, b = math.log(self.low), math.log(self.high)
            value = _short(math.exp(a + u * (b - a)))  # exp(log(1e-3)) is 0.0010000000000000002
        else:
            value = self.low + u * (self.high - self.low)
        return min(max(value, self.low), self.high)

    def to_unit(self, value: float) -> float:
        """Where ``value`` lies in ``[0, 1]`` (the middle of its bin for a step)."""
        if self.low == self.high:
            return 0.5
        value = min(max(float(value), self.low), self.high)
        if self.step is not None:
            n = _step_count(self.low, self.high, self.step)
            k = min(max(round((value - self.low) / self.step), 0), n - 1)
            return (k + 0.5) / n
        if self.log:
            a, b = math.log(self.low), math.log(self.high)
            return _unit((math.log(value) - a) / (b - a))
        return _unit((value - self.low) / (self.high - self.low))


@dataclass(frozen=True)
class IntRange:
    """An integer in ``[low, high]``, both included, every ``step``-th one; ``log``
    samples on a log scale (``low >= 1``)."""

    low: int
    high: int
    log: bool = False
    step: int = 1
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """How many integers the range holds."""
        return (self.high - self.low) // self.step + 1

    def size(self, float_points: int | None = None) -> int:
        """Distinct values in a grid: every value; a log range with ``float_points``:
        that many log-spaced values, rounded, duplicates dropped."""
        if self.log and float_points is not None and float_points < self.count:
            return len(self.values(float_points))
        return self.count  # len() of a range of 2**63 values or more overflows

    def values(self, float_points: int | None = None) -> Sequence[int]:
        """The grid values (a lazy ``range`` unless log-spaced)."""
        if self.log and float_points is not None and float_points < self.count:
            if float_points == 1:
                return [self.from_unit(0.5)]
            a, b = math.log(self.low), math.log(self.high)
            picked = {
                round(math.exp(a + (b - a) * k / (float_points - 1))) for k in range(float_points)
            }
            return sorted(min(max(v, self.low), self.high) for v in picked)
        return range(self.low, self.high + 1, self.step)

    def from_unit(self, u: float) -> int:
        """The value at ``u`` in ``[0, 1]``: equal bins per value, or log-uniform on
        ``[low - 0.5, high + 0.5]`` rounded (each value gets its share of the log axis)."""
        if self.log and self.low != self.high:
            a, b = math.log(self.low - 0.5), math.log(self.high + 0.5)
            value = round(math.exp(a + _unit(u) * (b - a)))
            return min(max(value, self.low), self.high)
        return self.low + _bin(u, self.count) * self.step

    def to_unit(self, value: int) -> float:
        """Where ``value`` lies in ``[0, 1]`` (the middle of its share)."""
        value = min(max(int(value), self.low), self.high)
        if self.log and self.low != self.high:
            a, b = math.log(self.low - 0.5), math.log(self.high + 0.5)
            return _unit((math.log(value) - a) / (b - a))
        k = min(max(round((value - self.low) / self.step), 0), self.count - 1)
        return (k + 0.5) / self.count


@dataclass(frozen=True)
class Choice:
    """One of ``options`` (JSON values: usually strings, numbers, booleans, null)."""

    options: tuple[Any, ...]
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def size(self, float_points: int | None = None) -> int:
        """The number of options."""
        return len(self.options)

    def values(self, float_points: int | None = None) -> list[Any]:
        """The options, in order."""
        return [_fresh(v) for v in self.options]

    def from_unit(self, u: float) -> Any:
        """The option of ``u``'s bin (``n`` equal bins of ``[0, 1]``)."""
        return _fresh(self.options[_bin(u, len(self.options))])

    def index(self, value: Any) -> int:
        """The position of ``value`` among the options. :raises ValueError:"""
        wanted = _key(value)
        for i, option in enumerate(self.options):
            if _key(option) == wanted:
                return i
        raise ValueError(value)

    def to_unit(self, value: Any) -> float:
        """The middle of ``value``'s bin."""
        return (self.index(value) + 0.5) / len(self.options)


@dataclass(frozen=True)
class Constant:
    """Always ``value`` (any JSON value)."""

    value: Any
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def size(self, float_points: int | None = None) -> int:
        return 1

    def values(self, float_points: int | None = None) -> list[Any]:
        return [_fresh(self.value)]

    def from_unit(self, u: float) -> Any:
        return _fresh(self.value)

    def to_unit(self, value: Any) -> float:
        return 0.5


Param = FloatRange | IntRange | Choice | Constant
_PARAM_TYPES = (FloatRange, IntRange, Choice, Constant)


# --- normalising and checking one parameter ---------------------------------------------


def _check_name(name: object, *, what: str = "parameter name") -> str:
    if not isinstance(name, str):
        msg = f"{what}s must be strings, got {name!r} ({type(name).__name__})"
        raise ValidationError(msg, details={"parameter": repr(name)})
    if not name:
        msg = f"a {what} is empty; names need 1 to {MAX_NAME_LENGTH} characters"
        raise ValidationError(msg, details={"parameter": name})
    problem = find_bad_text(name)
    if problem is not None:
        msg = f"{what} {name[:80]!r} {problem}; use plain text"
        raise ValidationError(msg, details={"parameter": name[:80]})
    if len(name) > MAX_NAME_LENGTH:
        msg = f"{what} {name[:40]!r}... has {len(name):,} characters; at most {MAX_NAME_LENGTH}"
        raise ValidationError(msg, details={"parameter": name[:80]})
    return name


def _json_value(name: str, value: Any, what: str) -> Any:
    problem = json_problem(value, max_depth=16, max_chars=64 * 1024)
    if problem is not None:
        where, why = problem
        raise _fail(name, f"{what}{where} is not a storable JSON value: {why}")
    return json.loads(json.dumps(value))  # plain lists and dicts, detached from the caller


def _float_bound(name: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, f"{key} must be a number, got {value!r}")
    try:
        number = float(value)
    except (OverflowError, ValueError):
        number = math.inf
    if not math.isfinite(number):
        shown = "a huge number" if isinstance(value, int) else repr(value)
        raise _fail(name, f"{key} must be a finite number, got {shown}")
    return number


def _int_bound(name: str, key: str, value: Any) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # 1e3 in JSON
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, f"{key} must be an integer, got {value!r}")
    if not INT64_MIN <= value <= INT64_MAX:
        shown = repr(value) if abs(value) < 10**30 else "a huge int"
        raise _fail(name, f"{key} must be an integer from {INT64_MIN} to {INT64_MAX}, got {shown}")
    return value


def _flag(name: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, f"{key} must be true or false, got {value!r}")
    return value


def _normalize_when(name: str, when: Any) -> dict[str, tuple[Any, ...]]:
    if when is None:
        return {}
    if not isinstance(when, Mapping):
        msg = f'"when" must map parameter names to a value or a list of values, got {when!r}'
        raise _fail(name, msg)
    out = {}
    for parent, values in when.items():
        _check_name(parent, what="condition parameter name")
        if isinstance(values, (set, frozenset)):  # Python: {"rbf", "poly"}, in a fixed order
            items = sorted(values, key=lambda v: json.dumps(v, sort_keys=True, default=repr))
        else:
            items = list(values) if isinstance(values, (list, tuple)) else [values]
        if not items:
            raise _fail(name, f"the condition on {parent!r} lists no values; give at least one")
        out[parent] = tuple(_json_value(name, v, f"condition value of {parent!r}") for v in items)
    return out


def _normalize_float(name: str, p: FloatRange, when: dict[str, tuple[Any, ...]]) -> FloatRange:
    low = _float_bound(name, "low", p.low)
    high = _float_bound(name, "high", p.high)
    log = _flag(name, "log", p.log)
    if low > high:
        raise _fail(name, f"low ({low!r}) is greater than high ({high!r}); low must be <= high")
    if not math.isfinite(high - low):
        raise _fail(
            name, f"the range {low!r} to {high!r} is too wide to sample (its width overflows)"
        )
    if log and low <= 0:
        raise _fail(name, f"a log range needs low > 0, got low = {low!r}; use a linear range")
    step = None
    if p.step is not None:
        step = _float_bound(name, "step", p.step)
        if step <= 0:
            raise _fail(name, f"step must be > 0, got {step!r}")
        if log:
            raise _fail(name, "step and log cannot be combined; drop one of them")
        if high > low and step > high - low:
            msg = f"step {step!r} is larger than the range {low!r} to {high!r}; use a smaller step"
            raise _fail(name, msg)
        if high > low and _step_count(low, high, step) > INT64_MAX:
            raise _fail(
                name, f"step {step!r} is too small: the range would hold more than 2**63 values"
            )
    return FloatRange(low, high, log=log, step=step, when=when)


def _normalize_int(name: str, p: IntRange, when: dict[str, tuple[Any, ...]]) -> IntRange:
    low = _int_bound(name, "low", p.low)
    high = _int_bound(name, "high", p.high)
    log = _flag(name, "log", p.log)
    step = _int_bound(name, "step", p.step)
    if low > high:
        raise _fail(name, f"low ({low}) is greater than high ({high}); low must be <= high")
    if step <= 0:
        raise _fail(name, f"step must be an integer >= 1, got {step}")
    if log and low < 1:
        raise _fail(name, f"a log int range needs low >= 1, got low = {low}; use a linear range")
    if log and step != 1:
        raise _fail(name, "step and log cannot be combined; drop one of them")
    if high > low and step > high - low:
        msg = f"step {step} is larger than the range {low} to {high}; use a smaller step"
        raise _fail(name, msg)
    return IntRange(low, high, log=log, step=step, when=when)


def _normalize_choice(name: str, p: Choice, when: dict[str, tuple[Any, ...]]) -> Choice:
    if isinstance(p.options, (str, bytes, Mapping)) or not isinstance(p.options, Sequence):
        raise _fail(name, f"options must be a list of values, got {p.options!r}")
    if not p.options:
        raise _fail(name, "a choice needs at least one option; options is empty")
    if len(p.options) > MAX_OPTIONS:
        raise _fail(name, f"{len(p.options):,} options; at most {MAX_OPTIONS:,}")
    options = []
    seen: dict[Any, int] = {}
    for i, option in enumerate(p.options):
        value = _json_value(name, option, f"option [{i}]")
        key = _key(value)
        if key in seen:
            msg = (
                f"option {value!r} appears twice (at {seen[key]} and {i}); options must be distinct"
            )
            raise _fail(name, msg)
        seen[key] = i
        options.append(value)
    return Choice(tuple(options), when=when)


def _normalize(name: str, param: Any) -> Param:
    if not isinstance(param, _PARAM_TYPES):
        if isinstance(param, (list, tuple)):
            msg = (
                "a bare list is ambiguous: use Choice(...) / "
                '{"type": "choice", "options": [...]} for a choice, or Constant(...) / '
                '{"type": "const", "value": [...]} for a constant list'
            )
            raise _fail(name, msg)
        if isinstance(param, Mapping):
            msg = (
                "a bare object is not a parameter: build the space from its dict form with "
                "SearchSpace.from_dict, or use Constant({...}) for a constant object"
            )
            raise _fail(name, msg)
        param = Constant(param)
    when = _normalize_when(name, param.when)
    if isinstance(param, FloatRange):
        return _normalize_float(name, param, when)
    if isinstance(param, IntRange):
        return _normalize_int(name, param, when)
    if isinstance(param, Choice):
        return _normalize_choice(name, param, when)
    return Constant(_json_value(name, param.value, "value"), when=when)


def _parse_param(name: str, spec: Any) -> Any:
    """The dict form of one parameter as a (not yet normalised) :data:`Param`."""
    if isinstance(spec, (list, tuple)):
        return spec  # _normalize says why a bare list is refused
    if not isinstance(spec, Mapping):
        return Constant(spec)
    kind = spec.get("type")
    if kind is None:
        msg = (
            f'an object needs a "type" (one of {", ".join(TYPES)}); for a constant object '
            'write {"type": "const", "value": {...}}'
        )
        raise _fail(name, msg)
    if not isinstance(kind, str) or kind not in _KEYS:
        raise _fail(name, f"unknown type {kind!r}; types are: {', '.join(TYPES)}")
    unknown = [str(k) for k in spec if k not in _KEYS[kind]]
    if unknown:
        msg = f"unknown key {unknown[0]!r} for a {kind}; its keys are: {', '.join(_KEYS[kind])}"
        raise _fail(name, msg, key=unknown[0])
    required = {"float": ("low", "high"), "int": ("low", "high"), "choice": ("options",)}
    for key in required.get(kind, ("value",)):
        if key not in spec:
            raise _fail(name, f"a {kind} needs {key!r}; its keys are: {', '.join(_KEYS[kind])}")
    when = spec.get("when")
    if kind == "float":
        args = {k: spec[k] for k in ("log", "step") if k in spec}
        return FloatRange(spec["low"], spec["high"], when=when, **args)
    if kind == "int":
        args = {k: spec[k] for k in ("log", "step") if k in spec}
        return IntRange(spec["low"], spec["high"], when=when, **args)
    if kind == "choice":
        options = spec["options"]
        if not isinstance(options, list):
            raise _fail(name, f"options must be a list of values, got {options!r}")
        return Choice(tuple(options), when=when)
    return Constant(spec["value"], when=when)


def _describe_when(when: Mapping[str, tuple[Any, ...]]) -> str:
    parts = []
    for parent, values in when.items():
        if len(values) == 1:
            parts.append(f"{parent} = {json.dumps(values[0], default=repr)}")
        else:
            parts.append(f"{parent} in [{_show(values)}]")
    return " and ".join(parts)


# --- the space ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    """A validated space: parameter names (in the given order) to :data:`Param`.

    Building one validates it (``SearchSpace({...})``, :meth:`of`, :meth:`from_dict`,
    :meth:`load` alike); values that are not parameters become :class:`Constant`.
    """

    params: Mapping[str, Param]

    def __post_init__(self) -> None:
        raw = self.params
        if not isinstance(raw, Mapping):
            msg = f"a search space maps parameter names to parameters, got {type(raw).__name__}"
            raise ValidationError(msg, details={"field": "space"})
        if not raw:
            msg = "the search space is empty: give at least one parameter"
            raise ValidationError(msg, details={"field": "space"})
        if len(raw) > MAX_PARAMS:
            msg = f"the search space has {len(raw):,} parameters; at most {MAX_PARAMS:,}"
            raise ValidationError(msg, details={"field": "space"})
        params: dict[str, Param] = {}
        for name, param in raw.items():
            params[_check_name(name)] = _normalize(name, param)
        object.__setattr__(self, "params", params)
        self._analyse()

    # --- building ---------------------------------------------------------------------

    @classmethod
    def of(cls, **params: Any) -> SearchSpace:
        """``SearchSpace.of(C=FloatRange(1e-3, 1e3, log=True), max_iter=200)``."""
        return cls(params)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SearchSpace:
        """Parse and validate the dict form (see the module docstring).

        :raises ValidationError: an empty space, an unknown type or key, ``low > high``,
            a log range that reaches 0, an empty choice, a condition on a parameter that
            does not exist or is not a choice/constant, a condition value that parameter
            cannot take, a cycle of conditions... The message names the parameter and
            says what is allowed; ``details={"parameter": name}``.
        """
        if isinstance(raw, SearchSpace):
            return raw
        if not isinstance(raw, Mapping):
            msg = (
                "a search space must be an object mapping parameter names to parameters, "
                f"got {type(raw).__name__}"
            )
            raise ValidationError(msg, details={"field": "space"})
        parsed = {}
        for name, spec in raw.items():
            parsed[_check_name(name)] = _parse_param(name, spec)
        return cls(parsed)

    @classmethod
    def parse(cls, text: str, *, format: str) -> SearchSpace:
        """Parse ``text`` in ``format`` (``json``, ``toml`` or ``yaml``)."""
        format = format.lower().lstrip(".")
        if format == "yml":
            format = "yaml"
        try:
            if format == "json":
                data = json.loads(text)
            elif format == "toml":
                if sys.version_info >= (3, 11):
                    import tomllib
                else:  # pragma: no cover
                    import tomli as tomllib
                data = tomllib.loads(text)
            elif format == "yaml":
                try:
                    import yaml
                except ImportError:
                    msg = (
                        "reading a YAML search space needs PyYAML: pip install pyyaml "
                        "(or write the space as JSON or TOML)"
                    )
                    raise MissingExtraError(msg, details={"missing": ["pyyaml"]}) from None
                data = yaml.load(text, Loader=_yaml_loader(yaml))  # a SafeLoader subclass
            else:
                msg = f"unknown search space format {format!r}; formats are: json, toml, yaml"
                raise ValidationError(msg, details={"field": "format"})
        except (ValidationError, MissingExtraError):
            raise
        except Exception as exc:  # each parser has its own error class
            msg = f"the search space is not valid {format.upper()}: {str(exc)[:300]}"
            raise ValidationError(msg, details={"field": "space"}) from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Read a ``.json``, ``.toml`` or ``.yaml``/``.yml`` file (YAML needs PyYAML)."""
        path = Path(path)
        formats = {".json": "json", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}
        fmt = formats.get(path.suffix.lower())
        if fmt is None:
            msg = (
                f"search space file {str(path)!r}: unknown extension; "
                "use .json, .toml, .yaml or .yml"
            )
            raise ValidationError(msg, details={"file": str(path)})
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            msg = f"search space file {str(path)!r} does not exist"
            raise ValidationError(msg, details={"file": str(path)}) from None
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"cannot read search space file {str(path)!r}: {exc}"
            raise ValidationError(msg, details={"file": str(path)}) from None
        try:
            return cls.parse(text, format=fmt)
        except ValidationError as exc:
            raise ValidationError(
                f"{path.name}: {exc.message}", details={**exc.details, "file": str(path)}
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """The canonical dict form; ``from_dict(to_dict())`` gives an equal space."""
        out: dict[str, Any] = {}
        for name, p in self.params.items():
            if isinstance(p, FloatRange):
                spec: dict[str, Any] = {"type": "float", "low": p.low, "high": p.high}
                if p.log:
                    spec["log"] = True
                if p.step is not None:
                    spec["step"] = p.step
            elif isinstance(p, IntRange):
                spec = {"type": "int", "low": p.low, "high": p.high}
                if p.log:
                    spec["log"] = True
                if p.step != 1:
                    spec["step"] = p.step
            elif isinstance(p, Choice):
                spec = {"type": "choice", "options": [_fresh(v) for v in p.options]}
            else:
                spec = {"type": "const", "value": _fresh(p.value)}
            if p.when:
                spec["when"] = {parent: [_fresh(v) for v in vs] for parent, vs in p.when.items()}
            out[name] = spec
        return out

    # --- structure --------------------------------------------------------------------

    def _analyse(self) -> None:
        params = self.params
        names = list(params)
        children: dict[str, list[str]] = defaultdict(list)
        cond_keys: dict[str, dict[str, frozenset[Any]]] = {}
        for name, p in params.items():
            keys = {}
            for parent, values in p.when.items():
                if parent not in params:
                    msg = (
                        f"its condition names {parent!r}, which is not a parameter of the space; "
                        f"parameters are: {', '.join(names[:20])}"
                    )
                    raise _fail(name, msg, condition=parent)
                if parent == name:
                    raise _fail(
                        name, "its condition names itself; a parameter cannot depend on itself"
                    )
                target = params[parent]
                if not isinstance(target, (Choice, Constant)):
                    msg = (
                        f"its condition names {parent!r}, which is "
                        f"{_TYPE_WORDS[type(target).__name__]}; conditions may only name a "
                        "choice or a constant"
                    )
                    raise _fail(name, msg, condition=parent)
                allowed = target.options if isinstance(target, Choice) else (target.value,)
                allowed_keys = {_key(v) for v in allowed}
                for value in values:
                    if _key(value) not in allowed_keys:
                        msg = (
                            f"its condition {parent} = {json.dumps(value, default=repr)} can never "
                            f"hold: {parent!r} takes only {_show(list(allowed))}"
                        )
                        raise _fail(name, msg, condition=parent)
                keys[parent] = frozenset(_key(v) for v in values)
                children[parent].append(name)
            cond_keys[name] = keys
        object.__setattr__(self, "_cond_keys", cond_keys)
        object.__setattr__(self, "_order", self._topological(names, cond_keys))
        object.__setattr__(
            self,
            "_children",
            {p: [c for c in self._order if c in cs] for p, cs in children.items()},
        )
        _total, active = self._count({n: 1 for n in names})
        for name in self._order:
            if name not in active:
                msg = (
                    f"can never be active: its conditions ({_describe_when(params[name].when)}) "
                    "never hold together, because a parameter they name is itself inactive "
                    "whenever it would take that value; fix the conditions"
                )
                raise _fail(name, msg)

    @staticmethod
    def _topological(
        names: list[str], cond_keys: dict[str, dict[str, frozenset[Any]]]
    ) -> list[str]:
        index = {n: i for i, n in enumerate(names)}
        waiting = {n: len(cond_keys[n]) for n in names}
        dependents: dict[str, list[str]] = defaultdict(list)
        for n in names:
            for parent in cond_keys[n]:
                dependents[parent].append(n)
        ready = [index[n] for n in names if waiting[n] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            name = names[heapq.heappop(ready)]
            order.append(name)
            for child in dependents[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, index[child])
        if len(order) < len(names):
            left = {n for n in names if waiting[n] > 0}
            # walk parents from any leftover parameter until one repeats: that is a cycle
            path: list[str] = []
            node = min(left, key=index.__getitem__)
            while node not in path:
                path.append(node)
                node = next(p for p in cond_keys[node] if p in left)
            cycle = [*path[path.index(node) :], node]
            msg = (
                "the conditions form a cycle: "
                + " -> ".join(cycle)
                + "; a parameter cannot (indirectly) depend on itself"
            )
            raise _fail(cycle[0], msg, cycle=cycle)
        return order

    @property
    def order(self) -> list[str]:
        """The names in dependency order: parents before the parameters they condition."""
        return list(self._order)  # type: ignore[attr-defined]

    @property
    def names(self) -> list[str]:
        """The names in the given order."""
        return list(self.params)

    @property
    def is_conditional(self) -> bool:
        """Whether any parameter has a condition."""
        return any(p.when for p in self.params.values())

    def _holds(self, name: str, values: Mapping[str, Any]) -> bool:
        for parent, keys in self._cond_keys[name].items():  # type: ignore[attr-defined]
            if parent not in values or _key(values[parent]) not in keys:
                return False
        return True

    def _count(
        self, sizes: Mapping[str, int], fixed: Mapping[str, Any] | None = None
    ) -> tuple[int, set[str]]:
        """Sum over the combinations of condition-relevant values (variable elimination in
        dependency order; the values of a parent are grouped by which conditions they
        satisfy): the number of distinct active points when each other parameter counts
        ``sizes[name]`` values, and the parameters that can be active at all. ``fixed``
        pins parameters to one value (``_SKIP``: absent): then it counts the points that
        agree with it."""
        fixed = fixed or {}
        order: list[str] = self._order  # type: ignore[attr-defined]
        children: dict[str, list[str]] = self._children  # type: ignore[attr-defined]
        cond_keys: dict[str, dict[str, frozenset[Any]]] = self._cond_keys  # type: ignore[attr-defined]
        position = {n: i for i, n in enumerate(order)}
        last_use = {p: max(position[c] for c in cs) for p, cs in children.items()}
        slot = {p: {c: j for j, c in enumerate(cs)} for p, cs in children.items()}
        frontier: list[str] = []
        states: dict[tuple[Any, ...], int] = {(): 1}
        active: set[str] = set()
        for i, name in enumerate(order):
            param = self.params[name]
            parents = [(frontier.index(p), slot[p][name]) for p in cond_keys[name]]
            structural = name in children
            classes: Counter[tuple[bool, ...]] = Counter()
            pinned = name in fixed
            if structural:
                if pinned:
                    values = () if fixed[name] is _SKIP else (fixed[name],)
                elif isinstance(param, Choice):
                    values = param.options
                else:
                    values = (param.value,)  # type: ignore[union-attr]
                for v in values:
                    k = _key(v)
                    classes[tuple(k in cond_keys[c][name] for c in children[name])] += 1
            size = (0 if fixed[name] is _SKIP else 1) if pinned else sizes[name]
            absent = 1 if not pinned or fixed[name] is _SKIP else 0
            new: dict[tuple[Any, ...], int] = defaultdict(int)
            for state, weight in states.items():
                if len(new) > MAX_CONDITION_STATES:
                    raise _entangled()
                if all(state[f] is not None and state[f][s] for f, s in parents):
                    active.add(name)
                    if structural:
                        for signature, count in classes.items():
                            new[(*state, signature)] += weight * count
                    elif size:
                        new[state] += weight * size
                elif absent:
                    new[(*state, None) if structural else state] += weight
            if structural:
                frontier.append(name)
            done = [j for j, p in enumerate(frontier) if last_use[p] == i]
            if done:
                keep = [j for j in range(len(frontier)) if j not in done]
                merged: dict[tuple[Any, ...], int] = defaultdict(int)
                for state, weight in new.items():
                    merged[tuple(state[j] for j in keep)] += weight
                frontier = [frontier[j] for j in keep]
                new = merged
            if len(new) > MAX_CONDITION_STATES:
                raise _entangled()
            states = new
        return sum(states.values()), active

    # --- points -----------------------------------------------------------------------

    def _ordered(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {n: values[n] for n in self.params if n in values}

    def active(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """``point`` without the conditional parameters whose condition does not hold
        (conditions evaluated in dependency order); constants filled in."""
        out: dict[str, Any] = {}
        for name in self._order:  # type: ignore[attr-defined]
            if not self._holds(name, out):
                continue
            param = self.params[name]
            if isinstance(param, Constant):
                out[name] = _fresh(param.value)
            elif name in point:
                out[name] = point[name]
        return self._ordered(out)

    def validate(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """Check a point (every active parameter present and in range, nothing else);
        return it normalised (ints as ``int``, steps snapped). :raises ValidationError:"""
        if not isinstance(point, Mapping):
            msg = f"a point must be an object of parameter values, got {type(point).__name__}"
            raise ValidationError(msg, details={"field": "point"})
        unknown = [k for k in point if k not in self.params]
        if unknown:
            msg = (
                f"unknown parameter {str(unknown[0])[:80]!r}; the space has: "
                f"{', '.join(list(self.params)[:20])}"
            )
            raise ValidationError(msg, details={"parameter": str(unknown[0])[:80]})
        out: dict[str, Any] = {}
        for name in self._order:  # type: ignore[attr-defined]
            param = self.params[name]
            if not self._holds(name, out):
                if name in point:
                    condition = _describe_when(param.when)
                    msg = f"is not active in this point: it exists only when {condition}"
                    raise _fail(name, msg)
                continue
            if isinstance(param, Constant):
                if name in point and _key(point[name]) != _key(param.value):
                    shown = json.dumps(param.value, default=repr)[:80]
                    msg = f"is the constant {shown}, got {point[name]!r}"
                    raise _fail(name, msg)
                out[name] = _fresh(param.value)
            elif name not in point:
                raise _fail(name, "is missing from the point")
            else:
                out[name] = _check_value(name, param, point[name])
        return self._ordered(out)

    def key(self, point: Mapping[str, Any]) -> str:
        """A canonical string of ``point``'s active values: equal for equal points."""
        return json.dumps(self.active(point), sort_keys=True, separators=(",", ":"), default=repr)

    def sample(self, rng: RandomSource | int | None = None) -> dict[str, Any]:
        """A random active point: one ``rng.random()`` per parameter, always the same
        number of draws (so a seeded sequence does not depend on the branch taken).
        ``rng`` is a :class:`random.Random`, a ``numpy.random.Generator``, or a seed."""
        if rng is None or isinstance(rng, int):
            rng = random.Random(rng)
        coords = {name: float(rng.random()) for name in self.params}
        return self.from_unit(coords)

    def from_unit(self, coords: Mapping[str, float] | Sequence[float]) -> dict[str, Any]:
        """The active point at unit-cube ``coords`` (a mapping by name, or a sequence in
        :attr:`names` order); a missing coordinate counts as 0.5 (the middle)."""
        if not isinstance(coords, Mapping):
            coords = dict(zip(self.params, coords, strict=False))
        out: dict[str, Any] = {}
        for name in self._order:  # type: ignore[attr-defined]
            if self._holds(name, out):
                out[name] = self.params[name].from_unit(coords.get(name, 0.5))
        return self._ordered(out)

    def to_unit(self, point: Mapping[str, Any]) -> dict[str, float]:
        """The unit-cube coordinates of ``point``'s active parameters (validated first)."""
        valid = self.validate(point)
        return {name: self.params[name].to_unit(value) for name, value in valid.items()}

    def _values(self, float_points: int | None) -> dict[str, Sequence[Any]]:
        _check_float_points(float_points)
        out = {}
        for name, param in self.params.items():
            if param.size(float_points) is None:
                raise _no_grid(name)
            out[name] = param.values(float_points)
        return out

    def grid_size(self, *, float_points: int | None = None) -> int:
        """The number of distinct active points of the full grid (exact, as a Python
        int, computed without enumerating; conditions taken into account). A float range
        without ``step`` counts ``float_points`` values; with ``float_points=None`` it
        makes the grid infinite and :class:`ValidationError` says which parameter."""
        _check_float_points(float_points)
        sizes = {}
        for name, param in self.params.items():
            size = param.size(float_points)
            if size is None:
                raise _no_grid(name)
            sizes[name] = size
        total, _active = self._count(sizes)
        return total

    def grid(self, *, float_points: int | None = 5, start: int = 0) -> Iterator[dict[str, Any]]:
        """Every distinct active point of the grid, lazily, in a fixed order: the first
        parameter of :attr:`order` varies slowest; a conditional parameter only branches
        where it is active. Yields :meth:`grid_size` points, from the ``start``-th one
        (reached without walking the points before it)."""
        values = self._values(float_points)
        return self._walk(values, start)

    def grid_point(self, index: int, *, float_points: int | None = 5) -> dict[str, Any]:
        """The ``index``-th point of :meth:`grid` (computed, not enumerated).
        :raises IndexError: outside ``0 .. grid_size - 1``."""
        return next(self.grid(float_points=float_points, start=index))

    def _descend(
        self, values: dict[str, Sequence[Any]], index: int
    ) -> list[tuple[str, int | None]]:
        """The position of the ``index``-th grid point at each depth of :attr:`order`:
        ``(name, k)`` with ``k`` the value's index, ``None`` where the name is inactive."""
        sizes = {name: len(v) for name, v in values.items()}
        total = self._count(sizes)[0]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < total:
            raise IndexError(f"grid index {index!r} is outside 0 .. {total - 1}")
        children: dict[str, list[str]] = self._children  # type: ignore[attr-defined]
        fixed: dict[str, Any] = {}
        point: dict[str, Any] = {}
        path: list[tuple[str, int | None]] = []
        for name in self._order:  # type: ignore[attr-defined]
            if not self._holds(name, point):
                fixed[name] = _SKIP
                path.append((name, None))
                continue
            vals = values[name]
            if name not in children:  # nothing depends on it: every value counts the same
                fixed[name] = vals[0]
                per = self._count(sizes, fixed)[0]
                k, index = divmod(index, per)
            else:
                for k in range(len(vals)):  # a choice or constant: a few values
                    fixed[name] = vals[k]
                    below = self._count(sizes, fixed)[0]
                    if index < below:
                        break
                    index -= below
            fixed[name] = point[name] = vals[k]
            path.append((name, k))
        return path

    def _walk(self, values: dict[str, Sequence[Any]], start: int) -> Iterator[dict[str, Any]]:
        order: list[str] = self._order  # type: ignore[attr-defined]
        point: dict[str, Any] = {}
        last = len(order) - 1

        def options(i: int, first: int = 0) -> Iterator[Any]:
            vals = values[order[i]]
            return (vals[j] for j in range(first, len(vals)))

        if start == 0:
            stack = [options(0) if self._holds(order[0], point) else iter((_SKIP,))]
        else:  # each depth's iterator just past the start point's value (the last: at it)
            stack = []
            for depth, (name, k) in enumerate(self._descend(values, start)):
                if k is None:
                    stack.append(iter((_SKIP,)) if depth == last else iter(()))
                else:
                    point[name] = values[name][k]
                    stack.append(options(depth, k if depth == last else k + 1))
        while stack:
            depth = len(stack) - 1
            name = order[depth]
            value = next(stack[-1], _END)
            if value is _END:
                stack.pop()
                point.pop(name, None)
                continue
            if value is _SKIP:
                point.pop(name, None)
            else:
                point[name] = value
            if depth == last:
                yield {n: _fresh(point[n]) for n in self.params if n in point}
            else:
                nxt = order[depth + 1]
                stack.append(options(depth + 1) if self._holds(nxt, point) else iter((_SKIP,)))


_END = object()
_SKIP = object()


_FLOAT_1_2 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


def _yaml_loader(yaml: Any) -> type:
    """PyYAML's SafeLoader that also reads ``1e-3`` as a float (YAML 1.2 does; PyYAML's
    YAML 1.1 resolver wants ``1.0e-3`` and would hand the space the string ``"1e-3"``),
    and refuses aliases."""

    def compose_node(self: Any, parent: Any, index: Any) -> Any:
        # an alias repeats a node by reference: nine nested ones make 10**9 values
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            msg = "aliases (*name) are not allowed in a search space; write the values out"
            raise yaml.composer.ComposerError(None, None, msg, mark)
        return yaml.SafeLoader.compose_node(self, parent, index)

    loader = type("SpaceLoader", (yaml.SafeLoader,), {"compose_node": compose_node})
    loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))
    return loader


def _entangled() -> ValidationError:
    msg = (
        f"the conditions of this space are too entangled to analyse (more than "
        f"{MAX_CONDITION_STATES:,} combinations of the choices they name); "
        "condition fewer parameters on more choices"
    )
    return ValidationError(msg, details={"field": "space"})


def _check_float_points(float_points: Any) -> None:
    if float_points is not None and (
        isinstance(float_points, bool)
        or not isinstance(float_points, int)
        or not 1 <= float_points <= MAX_FLOAT_POINTS
    ):
        msg = (
            f"float_points must be an integer from 1 to {MAX_FLOAT_POINTS:,}, got {float_points!r}"
        )
        raise ValidationError(msg, details={"field": "float_points"})


def _no_grid(name: str) -> ValidationError:
    msg = (
        "is a float range without step: a grid needs a step on it, or "
        "float_points (how many values to take from each such range)"
    )
    return _fail(name, msg)


def _check_value(name: str, param: Param, value: Any) -> Any:
    if isinstance(param, Choice):
        try:
            return _fresh(param.options[param.index(value)])
        except ValueError:
            msg = f"{value!r} is not one of its options: {_show(list(param.options))}"
            raise _fail(name, msg) from None
    if isinstance(param, IntRange):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _fail(name, f"must be an integer, got {value!r}")
        value = int(value)
        if not param.low <= value <= param.high:
            raise _fail(name, f"must be from {param.low} to {param.high}, got {value}")
        k = min(round((value - param.low) / param.step), param.count - 1)
        return param.low + k * param.step
    assert isinstance(param, FloatRange)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, f"must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise _fail(name, f"must be a finite number, got {value!r}")
    low, high = param.low, param.high
    if (number < low and not math.isclose(number, low, rel_tol=1e-9)) or (
        number > high and not math.isclose(number, high, rel_tol=1e-9)
    ):
        raise _fail(name, f"must be from {low!r} to {high!r}, got {number!r}")
    number = min(max(number, low), high)
    if param.step is not None:
        n = _step_count(low, high, param.step)
        k = min(max(round((number - low) / param.step), 0), n - 1)
        number = min(_short(low + k * param.step), high)
    return number
