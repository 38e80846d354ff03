"""What a sweep's trials say: the best-so-far curve and parameter importances.

Both read trial views (:mod:`mlrig.sweeps.service`: ``number``, ``params``, ``state``,
``value``, ``completed_at``) and count only **completed** trials with a finite value: a
pruned trial's value is from an earlier step (a lower fidelity) and a failed one has none.

Importances are the permutation importance of each parameter for a random-forest
surrogate (scikit-learn's ``RandomForestRegressor``, fitted on the completed trials'
encoded params -> objective value): how much the surrogate's R² drops when that
parameter's column is shuffled, clipped at 0 and normalised to sum 1. Encoding: numbers
as they are (``log`` ranges as log10), choices as their option's index (ordinal), and a
conditional parameter absent from a trial as a sentinel outside its range (-1 for a
choice, one range-width below ``low`` for a number). Constants are not scored.
scikit-learn is imported only when importances are computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["MIN_TRIALS", "best_so_far", "completion_order", "importances"]

#: completed trials with a value needed before importances are computed
MIN_TRIALS = 5
#: the most recent completed trials the surrogate is fitted on, at most (a bound on the
#: time a results view takes: about 1 s on a loaded 2-core machine, whatever the sweep)
MAX_TRIALS = 500
#: the surrogate's trees and the shuffles per parameter (100 trees and 10 shuffles took
#: 3-15 s for 20-2000 trials and moved no score by more than 0.01)
N_ESTIMATORS = 50
N_REPEATS = 5


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _scored(trials: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The completed trials with a finite value."""
    return [t for t in trials if t.get("state") == "completed" and _finite(t.get("value"))]


def completion_order(trials: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``trials`` by completion time (``completed_at``, ISO 8601 text or a datetime),
    then by number; a trial without a time goes last."""

    def key(trial: Mapping[str, Any]) -> tuple[int, str, int]:
        at = trial.get("completed_at")
        text = at.isoformat() if hasattr(at, "isoformat") else str(at or "")
        return (0 if at else 1, text, int(trial.get("number") or 0))

    return sorted(trials, key=key)


def best_so_far(trials: Iterable[Mapping[str, Any]], direction: str) -> list[dict[str, Any]]:
    """The best-so-far curve: ``[{"number", "value", "best"}]``, one point per completed
    trial with a finite value, in completion order; ``best`` is the best value among it
    and those before it (the smallest for ``minimize``, the largest for ``maximize``)."""
    if direction not in ("minimize", "maximize"):
        from mlrig.errors import ValidationError

        msg = f"direction {direction!r}: use 'minimize' or 'maximize'"
        raise ValidationError(msg, details={"field": "direction"})
    pick = min if direction == "minimize" else max
    curve: list[dict[str, Any]] = []
    best: float | None = None
    for trial in completion_order(_scored(trials)):
        value = float(trial["value"])
        best = value if best is None else pick(best, value)
        curve.append({"number": int(trial["number"]), "value": value, "best": best})
    return curve


def _method(count: int) -> str:
    return (
        "permutation importance on a random-forest surrogate "
        f"(sklearn RandomForestRegressor, {count} trials); choices encoded ordinally "
        "(option index), absent conditional parameters as a sentinel outside the range"
        + (f"; the last {MAX_TRIALS} completed" if count >= MAX_TRIALS else "")
    )


def _params_of(space: Any) -> Mapping[str, Any]:
    """The ``name -> Param`` of a :class:`~mlrig.search.space.SearchSpace` or its dict form."""
    params = getattr(space, "params", None)
    if params is not None:
        return params
    from mlrig.search.space import SearchSpace

    return SearchSpace.from_dict(space).params


def _column(param: Any, values: Sequence[Any]) -> list[float] | None:
    """One parameter's encoded column (``None``: not scored, a constant)."""
    from mlrig.search.space import Choice, Constant, FloatRange, IntRange

    if isinstance(param, Constant):
        return None
    if isinstance(param, Choice):
        options = list(param.options)

        def index(value: Any) -> float:
            for i, option in enumerate(options):  # 1 and True are different options
                if type(option) is type(value) and option == value:
                    return float(i)
            return -1.0

        return [-1.0 if value is _ABSENT else index(value) for value in values]
    if isinstance(param, (FloatRange, IntRange)):
        log = param.log and param.low > 0
        low = math.log10(param.low) if log else float(param.low)
        high = math.log10(param.high) if log else float(param.high)
        sentinel = low - max(high - low, 1.0)
        out = []
        for value in values:
            if value is _ABSENT or not _finite(value):
                out.append(sentinel)
            elif log:
                out.append(math.log10(value) if value > 0 else sentinel)
            else:
                out.append(float(value))
        return out
    return None


_ABSENT = object()


def importances(space: Any, trials: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Parameter importances: ``{"method": "...", "params": {name: score}}`` with the
    scores of the searched parameters (constants left out) summing to 1, largest first;
    or ``{"method", "params": {}, "reason"}`` when they cannot be computed (fewer than
    :data:`MIN_TRIALS` completed trials with a value, every value the same, or no
    parameter explaining the objective). ``space``: a ``SearchSpace`` or its dict form."""
    scored = completion_order(_scored(trials))[-MAX_TRIALS:]
    if len(scored) < MIN_TRIALS:
        return {
            "method": _method(len(scored)),
            "params": {},
            "reason": f"{len(scored)} completed trial(s) with a value: importances need "
            f"at least {MIN_TRIALS}",
        }
    names, columns = [], []
    for name, param in _params_of(space).items():
        column = _column(param, [(t.get("params") or {}).get(name, _ABSENT) for t in scored])
        if column is not None:
            names.append(name)
            columns.append(column)
    values = [float(t["value"]) for t in scored]
    if not names:
        reason = "the space has no searched parameter (constants only)"
        return {"method": _method(len(scored)), "params": {}, "reason": reason}
    if max(values) == min(values):
        reason = f"every one of the {len(scored)} completed trials got the same value"
        return {"method": _method(len(scored)), "params": {}, "reason": reason}
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    features = np.asarray(columns, dtype=float).T
    target = np.asarray(values, dtype=float)
    surrogate = RandomForestRegressor(n_estimators=N_ESTIMATORS, random_state=0, n_jobs=1)
    surrogate.fit(features, target)
    result = permutation_importance(
        surrogate, features, target, n_repeats=N_REPEATS, random_state=0, n_jobs=1
    )
    raw = [
        max(0.0, float(score)) if math.isfinite(score) else 0.0 for score in result.importances_mean
    ]
    total = sum(raw)
    if total <= 0:
        reason = "no parameter explains the objective (shuffling none changes the surrogate)"
        return {"method": _method(len(scored)), "params": {}, "reason": reason}
    scores = {name: score / total for name, score in zip(names, raw, strict=True)}
    ordered = dict(sorted(scores.items(), key=lambda item: -item[1]))
    return {"method": _method(len(scored)), "params": ordered}
