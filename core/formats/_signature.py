"""Input/output schemas inferred from a sample and what the model returned for it.

A schema is JSON: ``{"kind": "tensor", "dtype": "float32", "shape": [-1, 4]}`` (``-1`` is
the batch dimension), ``{"kind": "dataframe", "columns": [{"name": ..., "dtype": ...}],
"shape": [-1, 4]}``, or ``{"kind": "tensors", "items": [schema, ...]}`` for several
outputs. numpy is imported inside the functions.
"""

from __future__ import annotations

from typing import Any

from mlrig.errors import ValidationError

#: rows of the sample run through the model to infer the signature
SAMPLE_ROWS = 5


def is_dataframe(obj: Any) -> bool:
    """Whether ``obj`` is a pandas DataFrame (without importing pandas)."""
    cls = type(obj)
    return cls.__name__ == "DataFrame" and cls.__module__.split(".")[0] == "pandas"


def as_array(value: Any) -> Any:
    """``value`` (numpy, list, torch or TF tensor, DataFrame) as a numpy array."""
    import numpy as np

    if is_dataframe(value):
        return value.to_numpy()
    if hasattr(value, "detach"):  # torch.Tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)


def head(sample: Any, rows: int = SAMPLE_ROWS) -> Any:
    """The first ``rows`` rows of a sample (DataFrame, array, tensor or list)."""
    if is_dataframe(sample):
        return sample.iloc[:rows]
    if isinstance(sample, list | tuple):
        return type(sample)(sample[:rows])
    try:
        return sample[:rows]
    except (TypeError, IndexError, KeyError):
        return sample


def tensor_schema(value: Any) -> dict[str, Any]:
    """Schema of one tensor-like value: dtype and shape with ``-1`` as the batch size."""
    array = as_array(value)
    shape = [-1, *array.shape[1:]] if array.ndim else []
    return {"kind": "tensor", "dtype": str(array.dtype), "shape": [int(d) for d in shape]}


def input_schema(sample: Any) -> dict[str, Any]:
    """Schema of a model input sample: a DataFrame's columns, else a tensor."""
    if is_dataframe(sample):
        columns = [{"name": str(c), "dtype": str(t)} for c, t in sample.dtypes.items()]
        return {"kind": "dataframe", "columns": columns, "shape": [-1, len(columns)]}
    try:
        return tensor_schema(sample)
    except (TypeError, ValueError) as exc:
        msg = (
            f"cannot infer an input schema from a sample of type {type(sample).__name__}: "
            f"{exc}; pass a numpy array, a list of rows or a pandas DataFrame"
        )
        raise ValidationError(msg) from exc


def output_schema(output: Any) -> dict[str, Any]:
    """Schema of what the model returned: one tensor, or several."""
    if isinstance(output, dict):
        items = [{"name": str(k), **output_schema(v)} for k, v in output.items()]
        return {"kind": "tensors", "items": items}
    if isinstance(output, list | tuple) and output and not _is_scalar(output[0]):
        if not all(hasattr(o, "shape") for o in output):
            return tensor_schema(output)
        return {"kind": "tensors", "items": [tensor_schema(o) for o in output]}
    return tensor_schema(output)


def signature_from_run(sample: Any, output: Any) -> dict[str, Any]:
    """The signature of a model that returned ``output`` for ``sample``."""
    return {"inputs": input_schema(sample), "outputs": output_schema(output)}


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float | str | bool) or getattr(value, "ndim", 1) == 0
