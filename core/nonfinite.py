"""Non-finite numbers on the JSON wire. JSON has no NaN or infinity, so mlrig's REST API,
its client, the tracking client and the MLflow routes all carry them as the texts
``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (what protobuf's JSON writes too)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["NON_FINITE_TEXT", "from_json", "to_json"]

#: the texts and the floats they stand for
NON_FINITE_TEXT = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def to_json(value: Any) -> Any:
    """``value`` for JSON: NaN and infinities as their texts, anything else (finite
    numbers, ``None``, a value that is not a number) unchanged."""
    try:
        if math.isfinite(value):
            return value
    except TypeError:
        return value
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def from_json(value: Any) -> Any:
    """The float a non-finite text stands for; anything else unchanged."""
    return NON_FINITE_TEXT.get(value, value) if type(value) is str else value
