"""Per-feature statistics of a window of rows (what monitoring uses as its reference).

For each feature: ``rows``, ``count`` (non-null values), ``nulls`` (null or NaN); for
numbers ``min``, ``max``, ``mean``, ``std`` (sample, ddof 1, as pandas) and the quantiles
``p1 p5 p25 p50 p75 p95 p99`` (linear interpolation, as pandas); for categorical, text and
boolean features ``distinct`` and ``top`` (the most frequent values with their counts,
most frequent first, ties by value); booleans also get ``mean`` (the share of true).
Computed with ``pyarrow.compute`` over an Arrow table, without pandas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: the quantiles recorded, by name
QUANTILES: dict[str, float] = {
    "p1": 0.01,
    "p5": 0.05,
    "p25": 0.25,
    "p50": 0.5,
    "p75": 0.75,
    "p95": 0.95,
    "p99": 0.99,
}
#: how many most frequent values ``top`` keeps
TOP = 10


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def column_statistics(column: Any, dtype: str, *, top: int = TOP) -> dict[str, Any]:
    """Statistics of one Arrow array or chunked array of a feature of type ``dtype``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = len(column)
    nulls = column.null_count
    kind = column.type
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    if pa.types.is_floating(kind):
        nan = pc.sum(pc.is_nan(column)).as_py() or 0
        nulls += nan
        if nan:
            column = pc.if_else(pc.is_nan(column), pa.scalar(None, kind), column)
    out: dict[str, Any] = {"rows": rows, "count": rows - nulls, "nulls": nulls}
    live = pc.drop_null(column)
    if numeric and dtype != "categorical":
        values = pc.cast(live, pa.float64())
        if len(values):
            bounds = pc.min_max(values)
            out["min"] = _number(bounds["min"].as_py())
            out["max"] = _number(bounds["max"].as_py())
            out["mean"] = _number(pc.mean(values).as_py())
            out["std"] = _number(pc.stddev(values, ddof=1).as_py()) if len(values) > 1 else None
            points = pc.quantile(values, q=list(QUANTILES.values()), interpolation="linear")
            out["quantiles"] = {
                name: _number(v) for name, v in zip(QUANTILES, points.to_pylist(), strict=True)
            }
        else:
            out.update(min=None, max=None, mean=None, std=None, quantiles={})
        if dtype == "numerical":
            return out
    if pa.types.is_boolean(kind) and len(live):
        out["mean"] = _number(pc.mean(pc.cast(live, pa.float64())).as_py())
    counts = pc.value_counts(live)
    pairs = [(_plain(item["values"]), int(item["counts"])) for item in counts.to_pylist() if item]
    out["distinct"] = len(pairs)
    pairs.sort(key=lambda p: (-p[1], str(p[0])))
    out["top"] = [{"value": v, "count": c} for v, c in pairs[:top]]
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, str | bool | int) or value is None:
        return value
    if isinstance(value, float):
        return _number(value)
    return str(value)


def table_statistics(table: Any, dtypes: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Statistics of each feature (``name -> dtype``) that ``table`` has a column for."""
    return {
        name: column_statistics(table.column(name), dtype)
        for name, dtype in dtypes.items()
        if name in table.column_names
    }
