"""Turning a request's batch (rows, arrays, records, a DataFrame) into model inputs.

Shared by the runtimes and by the ONNX export check, so that a batch is read the same way
everywhere. numpy (and pandas, for records) are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from typing import Any

from mlrig.errors import ValidationError
from mlrig.formats._signature import is_dataframe

__all__ = [
    "ONNX_DTYPES",
    "fit_shape",
    "is_dataframe",
    "is_records",
    "onnx_feeds",
    "signature_columns",
    "to_array",
    "to_frame",
]

#: ONNX tensor element type (as onnxruntime names it) -> numpy dtype name
ONNX_DTYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint64)": "uint64",
    "tensor(uint32)": "uint32",
    "tensor(uint16)": "uint16",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


def signature_columns(signature: Mapping[str, Any] | None) -> list[str] | None:
    """The input column names a signature records, if its input is a DataFrame."""
    inputs = (signature or {}).get("inputs") or {}
    if inputs.get("kind") != "dataframe":
        return None
    return [c["name"] for c in inputs.get("columns", [])]


def is_records(batch: Any) -> bool:
    """Whether ``batch`` is a list of ``{column: value}`` rows."""
    return isinstance(batch, Sequence) and bool(batch) and isinstance(batch[0], Mapping)


def to_frame(batch: Any, columns: Sequence[str] | None) -> Any:
    """``batch`` as a DataFrame with ``columns`` (records, rows or a DataFrame)."""
    import pandas

    if is_dataframe(batch):
        return batch if columns is None else _select(batch, columns)
    if is_records(batch):
        frame = pandas.DataFrame.from_records(list(batch))
        return frame if columns is None else _select(frame, columns)
    array = to_array(batch)
    try:
        return pandas.DataFrame(array, columns=list(columns) if columns else None)
    except ValueError as exc:
        msg = f"batch of shape {list(array.shape)} does not fit the columns {list(columns or [])}"
        raise ValidationError(msg) from exc


def to_array(batch: Any, columns: Sequence[str] | None = None, dtype: Any = None) -> Any:
    """``batch`` as a numpy array; records and DataFrames are ordered by ``columns``."""
    import numpy as np

    try:
        if is_dataframe(batch):
            frame = batch if columns is None else _select(batch, columns)
            return frame.to_numpy(dtype=dtype)
        if is_records(batch):
            names = list(columns) if columns is not None else list(batch[0])
            return np.asarray([[_field(row, n) for n in names] for row in batch], dtype=dtype)
        if hasattr(batch, "detach"):  # torch.Tensor
            batch = batch.detach().cpu().numpy()
        return np.asarray(batch, dtype=dtype)
    except (TypeError, ValueError) as exc:
        msg = f"cannot read the batch as an array of {dtype or 'numbers'}: {exc}"
        raise ValidationError(msg) from exc


def fit_shape(array: Any, shape: Sequence[Any], name: str) -> Any:
    """Reshape ``array`` to an input ``shape`` (``None``/str dims are free) if it differs."""
    if array.ndim == len(shape) and all(
        not isinstance(d, int) or d == n for d, n in zip(shape[1:], array.shape[1:], strict=False)
    ):
        return array
    fixed = shape[1:]
    # rows of the wrong width are refused, never re-cut into other rows (12 rows of 5
    # features are not 6 rows of 10); only a batch of another rank is reshaped
    if array.ndim != len(shape) and (
        all(isinstance(d, int) and d > 0 for d in fixed) and array.size % max(prod(fixed), 1) == 0
    ):
        return array.reshape((-1, *fixed))
    shown = [d if isinstance(d, int) else -1 for d in shape]
    msg = f"batch for input {name!r} has shape {list(array.shape)}; the model expects {shown}"
    raise ValidationError(msg)


def onnx_feeds(inputs: Sequence[Any], batch: Any, columns: Sequence[str] | None) -> dict:
    """Session feeds for onnxruntime ``inputs`` (``NodeArg``: name, type, shape).

    One input takes the whole batch (rows, array, records or DataFrame ordered by
    ``columns``). Several inputs take a mapping ``{input name: values}``, or records or
    a DataFrame with one column per input (as skl2onnx exports a mixed-type DataFrame).
    """
    if len(inputs) == 1 and not (isinstance(batch, Mapping) and inputs[0].name in batch):
        arg = inputs[0]
        array = to_array(batch, columns, ONNX_DTYPES.get(arg.type))
        return {arg.name: fit_shape(array, arg.shape, arg.name)}
    if is_records(batch) or is_dataframe(batch):
        batch = to_frame(batch, None)
    feeds = {}
    for arg in inputs:
        if arg.name not in batch:
            names = ", ".join(a.name for a in inputs)
            msg = f"batch has no values for model input {arg.name!r}; the inputs are: {names}"
            raise ValidationError(msg)
        array = to_array(batch[arg.name], None, ONNX_DTYPES.get(arg.type))
        feeds[arg.name] = fit_shape(array, arg.shape, arg.name)
    return feeds


def _select(frame: Any, columns: Sequence[str]) -> Any:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        names = ", ".join(map(repr, missing))
        msg = f"batch is missing column(s) {names}; expected {list(columns)}"
        raise ValidationError(msg)
    return frame[list(columns)]


def _field(row: Mapping[str, Any], name: str) -> Any:
    try:
        return row[name]
    except KeyError:
        msg = f"batch is missing column {name!r} in row {dict(row)!r}"
        raise ValidationError(msg) from None
