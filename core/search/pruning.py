"""Pruning of sweep trials: the median stopping rule and ASHA.

A sweep's ``pruner`` is a rule dict, validated (and its defaults filled in) by
:func:`check_pruner`::

    {"rule": "median", "warmup_steps": 0, "min_trials": 5, "interval": 1}
    {"rule": "asha", "min_resource": 1, "max_resource": 100, "reduction_factor": 3,
     "min_early_stopping_rate": 0}

A *step* is the ``step`` a trainer logs its metrics with (the sklearn trainer's epochs:
0, 1, 2, ...). The rules here are pure: they get the trial's value, the values its peers
(the other trials of the same sweep) recorded at the same step, and the sweep's direction,
and return a :class:`Decision`. Reading the peers' values is
:func:`mlrig.search.peers.peer_values`; the training context
(:class:`mlrig.engine.context.JobContext`) calls both.

**Median stopping rule** (Golovin et al. 2017, Optuna's ``MedianPruner``): evaluated at
the steps ``warmup_steps + k * interval`` (k = 0, 1, ...). When at least ``min_trials``
peers reported the objective at that step, the trial is pruned if its best value so far
is worse than the median of the peers' values at that step (strictly: a tie continues).
With fewer peers it continues. The rung of a median decision is ``k``.

**ASHA** (asynchronous successive halving, Li et al. 2020; Optuna's
``SuccessiveHalvingPruner``): rung ``k`` (0, 1, ...) is at step
``min_resource * reduction_factor ** (k + min_early_stopping_rate)``, for the rungs below
``max_resource`` (a trial that reaches ``max_resource`` simply finishes). When a trial
logs the objective at a rung's step, the values recorded at that rung so far are its own
and those of every peer that logged the objective at that step (running, finished or
pruned: each trial's point at that step is its record of the rung, no other table). With
``n`` such values and ``eta = reduction_factor``, the trial continues if its value is
among the best ``n // eta`` of them (a tie with the last of those continues), else it is
pruned at that rung. A rung with fewer than ``eta`` values (``n // eta == 0``) cannot be
judged: the trial continues (ASHA would wait there; a trial cannot be paused, so it goes
on), which is why the first ``eta - 1`` trials to reach a rung always go on.

A NaN value at a step where a rule decides prunes the trial (it can no longer win).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from mlrig.errors import ValidationError

#: the pruning rules a sweep can use
RULES = ("median", "asha")
DIRECTIONS = ("minimize", "maximize")

_DEFAULTS: dict[str, dict[str, Any]] = {
    "median": {"warmup_steps": 0, "min_trials": 5, "interval": 1},
    "asha": {
        "min_resource": 1,
        "max_resource": None,
        "reduction_factor": 3,
        "min_early_stopping_rate": 0,
    },
}
#: the least value each integer key takes
_MINIMA = {
    "warmup_steps": 0,
    "min_trials": 1,
    "interval": 1,
    "min_resource": 1,
    "max_resource": 1,
    "reduction_factor": 2,
    "min_early_stopping_rate": 0,
}
#: the most each integer key takes: steps are 32-bit (the metric points' ``step``); the
#: REST schema has the same bounds, and they keep ``eta ** rate`` cheap to compute
_STEP_MAX = 2**31 - 1
_MAXIMA = {
    "warmup_steps": _STEP_MAX,
    "min_trials": _STEP_MAX,
    "interval": _STEP_MAX,
    "min_resource": _STEP_MAX,
    "max_resource": _STEP_MAX,
    "reduction_factor": 100,
    "min_early_stopping_rate": 30,
}


def _bad(key: str, message: str, **details: Any) -> ValidationError:
    return ValidationError(f"pruner.{key} {message}", details={"field": f"pruner.{key}", **details})


def check_pruner(rule: dict[str, Any] | None) -> dict[str, Any] | None:
    """The rule dict validated, with every key present (defaults filled in); ``None``
    (or an empty dict) for no pruning.

    :raises ValidationError: not a dict, an unknown rule or key, a value out of range
        (the message names the key and what is allowed).
    """
    if rule is None or rule == {}:
        return None
    if not isinstance(rule, dict):
        msg = f"pruner must be a table like {{rule = 'median'}}, got {rule!r}"
        raise ValidationError(msg, details={"field": "pruner"})
    name = rule.get("rule")
    if name not in RULES:
        raise _bad(
            "rule",
            f"must be one of {', '.join(map(repr, RULES))}, got {name!r}",
            allowed=list(RULES),
        )
    defaults = _DEFAULTS[name]
    unknown = sorted(set(rule) - set(defaults) - {"rule"})
    if unknown:
        raise _bad(
            unknown[0],
            f"is not a key of the {name!r} rule; its keys: {', '.join(sorted(defaults))}",
            allowed=sorted(defaults),
        )
    checked: dict[str, Any] = {"rule": name}
    for key, default in defaults.items():
        value = rule.get(key, default)
        if value is None and key == "max_resource":
            raise _bad(key, "is required: the last step a trial trains to (its number of epochs)")
        least, most = _MINIMA[key], _MAXIMA[key]
        if type(value) is not int or not least <= value <= most:
            raise _bad(
                key,
                f"must be an integer from {least} to {most}, got {value!r}",
                minimum=least,
                maximum=most,
            )
        checked[key] = value
    if name == "asha":
        first = (
            checked["min_resource"]
            * checked["reduction_factor"] ** checked["min_early_stopping_rate"]
        )
        if first >= checked["max_resource"]:
            raise _bad(
                "max_resource",
                f"must be greater than the first rung's step {first} (min_resource * "
                f"reduction_factor ** min_early_stopping_rate), got {checked['max_resource']}",
                minimum=first + 1,
            )
    return checked


@dataclass(frozen=True)
class Decision:
    """What a rule decided at one step: continue (``prune`` False) or prune at ``rung``."""

    prune: bool
    rung: int
    step: int
    value: float
    #: how many values took part (the peers, plus the trial itself for ASHA)
    compared: int = 0
    #: the value the trial had to reach (median, or ASHA's cut-off); None when not judged
    threshold: float | None = None
    reason: str = ""

    def as_outcome(self) -> dict[str, Any]:
        """``{"rung", "step", "value"}`` for the job's result (``outcome["pruned"]``)."""
        value = self.value if math.isfinite(self.value) else None  # JSON has no NaN
        return {"rung": self.rung, "step": self.step, "value": value}

    def detail(self, objective: str) -> str:
        """The status detail of a pruned trial: ``pruned at rung R (step S): ...``."""
        head = f"pruned at rung {self.rung} (step {self.step})"
        return f"{head}: {objective} {self.reason}" if self.reason else head


def _worse(value: float, other: float, direction: str) -> bool:
    return value > other if direction == "minimize" else value < other


def _finite(values: list[float]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        msg = f"direction must be 'minimize' or 'maximize', got {direction!r}"
        raise ValidationError(msg, details={"field": "direction", "allowed": list(DIRECTIONS)})


class MedianStoppingRule:
    """Prune a trial whose best value so far is worse than the median of its peers' values
    at the same step (see the module docstring)."""

    #: the trial's value compared is its best so far
    compares_best = True

    def __init__(self, *, warmup_steps: int = 0, min_trials: int = 5, interval: int = 1) -> None:
        self.warmup_steps = warmup_steps
        self.min_trials = min_trials
        self.interval = interval

    def evaluates(self, step: int) -> bool:
        """Whether the rule decides at ``step``."""
        return step >= self.warmup_steps and (step - self.warmup_steps) % self.interval == 0

    def rung(self, step: int) -> int:
        return (step - self.warmup_steps) // self.interval

    def decide(
        self, value: float, peers: list[float], direction: str, *, step: int
    ) -> Decision | None:
        """The decision at ``step`` (``None`` where the rule does not evaluate).

        :param value: the trial's best value so far (the context keeps it).
        :param peers: the other trials' values at ``step``.
        """
        _check_direction(direction)
        if not self.evaluates(step):
            return None
        rung = self.rung(step)
        if math.isnan(value):
            return Decision(True, rung, step, value, reason="is NaN")
        values = _finite(peers)
        if len(values) < self.min_trials:
            return Decision(False, rung, step, value, compared=len(values))
        median = statistics.median(values)
        prune = _worse(value, median, direction)
        reason = (
            f"{value:.6g} (best so far) is worse than the median {median:.6g} of "
            f"{len(values)} other trials at this step"
        )
        return Decision(prune, rung, step, value, len(values), median, reason if prune else "")


class ASHA:
    """Asynchronous successive halving (see the module docstring)."""

    #: the trial's value compared is the one at the rung's step
    compares_best = False

    def __init__(
        self,
        *,
        min_resource: int = 1,
        max_resource: int,
        reduction_factor: int = 3,
        min_early_stopping_rate: int = 0,
    ) -> None:
        self.min_resource = min_resource
        self.max_resource = max_resource
        self.eta = reduction_factor
        self.min_early_stopping_rate = min_early_stopping_rate
        self.rungs: dict[int, int] = {}  # step -> rung
        k = 0
        while (
            step := min_resource * reduction_factor ** (k + min_early_stopping_rate)
        ) < max_resource:
            self.rungs[step] = k
            k += 1

    def rung_steps(self) -> list[int]:
        """The steps of the rungs, rung 0 first."""
        return list(self.rungs)

    def evaluates(self, step: int) -> bool:
        return step in self.rungs

    def decide(
        self, value: float, peers: list[float], direction: str, *, step: int
    ) -> Decision | None:
        """The decision at ``step`` (``None`` where it is no rung).

        :param value: the trial's value at ``step``.
        :param peers: the values the other trials recorded at this rung (their points at
            ``step``).
        """
        _check_direction(direction)
        rung = self.rungs.get(step)
        if rung is None:
            return None
        if math.isnan(value):
            return Decision(True, rung, step, value, reason="is NaN")
        values = [*_finite(peers), value]
        keep = len(values) // self.eta
        if keep == 0:  # too few values at this rung to judge: go on
            return Decision(False, rung, step, value, compared=len(values))
        ranked = sorted(values, reverse=direction == "maximize")
        cutoff = ranked[keep - 1]
        prune = _worse(value, cutoff, direction)
        reason = (
            f"{value:.6g} is not in the best 1/{self.eta} ({keep} of {len(values)}) of the "
            f"values at this rung (cut-off {cutoff:.6g})"
        )
        return Decision(prune, rung, step, value, len(values), cutoff, reason if prune else "")


def make_rule(rule: dict[str, Any]) -> MedianStoppingRule | ASHA:
    """The rule object of a checked rule dict (:func:`check_pruner`)."""
    checked = check_pruner(rule)
    if checked is None:
        msg = "pruner: no rule given"
        raise ValidationError(msg, details={"field": "pruner"})
    options = {k: v for k, v in checked.items() if k != "rule"}
    if checked["rule"] == "median":
        return MedianStoppingRule(**options)
    return ASHA(**options)
