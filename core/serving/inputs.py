"""Checking a parsed request against a model version's input signature.

:class:`InputSchema` is built once per loaded model from the signature the packager recorded
(``{"inputs": {"kind": "tensor", "dtype", "shape"}}`` or ``{"kind": "dataframe", "columns":
[{"name", "dtype"}], "shape"}``, see :mod:`mlrig.formats._signature`). Its
:meth:`~InputSchema.to_batch` turns a :class:`~mlrig.serving.wire.ParsedRequest` into the
numpy batch the runtime takes: shape ``(N, F)`` (or ``(N, ...)`` for a tensor signature of
more dimensions) in the signature's dtype, named values put in the signature's column order.
Anything that does not fit is a :class:`~mlrig.errors.ValidationError` (422) whose message
and ``details["expected"]`` name the signature.

This is the request path: numpy only (no pandas), one array conversion for well-formed
input; the slow, precise checks run only to explain a refusal or for null values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from mlrig.errors import ValidationError
from mlrig.serving.wire import V2_DATATYPES, ParsedRequest

__all__ = ["InputSchema"]

#: column names shown in a message before "..." (details hold them all)
_SHOWN_COLUMNS = 8
#: column orders remembered per schema (clients send one or two orders, not thousands)
_ORDER_CACHE = 64
_NUMBERS = frozenset("biuf")
#: Python types of the values an object batch may hold for a numeric model
_SCALARS = frozenset({int, float, bool, type(None)})


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    dtype: np.dtype


class InputSchema:
    """What a model takes, and the check + conversion of requests to it.

    Build it with :meth:`from_signature`; ``allow_nan`` lets NaN, infinities and nulls (read
    as NaN) through, which only models that handle missing values want.
    """

    __slots__ = (
        "_description",
        "_downcast",
        "_index",
        "_limit",
        "_orders",
        "_width",
        "allow_nan",
        "columns",
        "dtype",
        "expected",
        "shape",
    )

    def __init__(
        self,
        *,
        dtype: np.dtype | None,
        shape: tuple[int, ...] | None,
        columns: list[_Column] | None = None,
        allow_nan: bool = False,
    ) -> None:
        #: dtype of the batch (``None``: no signature, the request's numeric dtype is kept)
        self.dtype = dtype
        #: dims after the batch dim; ``-1`` is free (``None``: no signature, any 2-D batch)
        self.shape = shape
        #: named inputs in the model's order (a dataframe signature), else ``None``
        self.columns = [c.name for c in columns] if columns else None
        self.allow_nan = allow_nan
        self._index = {c.name: i for i, c in enumerate(columns or ())}
        self._orders: dict[tuple[str, ...], list[int]] = {}
        # float64 -> float32 can overflow: only then pay for numpy's errstate
        self._downcast = dtype is not None and dtype.kind == "f" and dtype.itemsize < 8
        self._limit = float(np.finfo(dtype).max) if self._downcast else math.inf
        # the fast path: a float batch of rows of this many values (0: none)
        fixed = shape is not None and len(shape) == 1 and shape[0] > 0
        self._width = shape[0] if fixed and dtype is not None and dtype.kind == "f" else 0
        self.expected = self._expected(columns)
        self._description = self._describe()

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_signature(cls, signature: dict[str, Any] | None, *, allow_nan: bool) -> InputSchema:
        """The schema of a version's ``signature`` (``None``: any rectangular numeric batch).

        A signature of several input tensors (``"kind": "tensors"``) or of an unknown kind is
        treated as no signature: the runtime checks such inputs itself.
        """
        inputs = (signature or {}).get("inputs") if isinstance(signature, dict) else None
        if not isinstance(inputs, dict) or inputs.get("kind") not in ("tensor", "dataframe"):
            return cls(dtype=None, shape=None, allow_nan=allow_nan)
        try:
            if inputs["kind"] == "dataframe":
                columns = [
                    _Column(str(c["name"]), _dtype(c.get("dtype"))) for c in inputs["columns"]
                ]
                if not columns:
                    raise ValueError("no columns")
                return cls(
                    dtype=_batch_dtype([c.dtype for c in columns]),
                    shape=(len(columns),),
                    columns=columns,
                    allow_nan=allow_nan,
                )
            shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in inputs["shape"][1:])
            return cls(dtype=_dtype(inputs.get("dtype")), shape=shape, allow_nan=allow_nan)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            msg = f"the version's input signature cannot be read ({exc!r}): {inputs!r:.200}"
            raise ValidationError(msg) from None

    @property
    def features(self) -> int | None:
        """Values per row when the signature fixes them (``(N, F)`` batches), else ``None``."""
        if self.shape is None or any(d < 0 for d in self.shape):
            return None
        return math.prod(self.shape)

    # -- the request path ----------------------------------------------------------------

    def to_batch(self, parsed: ParsedRequest) -> np.ndarray:
        """The request's batch as the model takes it; ValidationError (422) if it does not fit."""
        if self._width and parsed.records is None:
            batch = self._fast(parsed)
            if batch is not None:
                return batch
        return self._checked(parsed)

    def _fast(self, parsed: ParsedRequest) -> np.ndarray | None:
        """Well-formed numeric rows for a float signature: one conversion, few checks.

        ``None`` sends the request down the general path (which explains any refusal).
        """
        names = parsed.columns
        if names is not None and self._index and names != self.columns:
            return None
        values = parsed.array if parsed.array is not None else parsed.rows
        if isinstance(values, np.ndarray):
            array = values
        else:
            try:
                array = np.asarray(values)
            except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
                return None
        if (
            array.ndim != 2
            or array.shape[1] != self._width
            or not array.shape[0]
            or array.dtype.kind not in "fiub"
        ):
            return None
        dtype = self.dtype
        finite = parsed.finite
        if array.dtype != dtype:
            if self._downcast and array.dtype.kind == "f":
                if finite and np.abs(array).max() < self._limit:
                    array = array.astype(dtype)  # fits: no overflow (cheaper than errstate)
                else:
                    with np.errstate(over="ignore", invalid="ignore"):
                        array = array.astype(dtype)
                    finite = False  # a float64 can overflow float32
            else:
                array = array.astype(dtype)
        if not (finite or self.allow_nan) and not np.isfinite(array).all():
            self._refuse(self._nonfinite(array), "nan")
        return array

    def _checked(self, parsed: ParsedRequest) -> np.ndarray:
        names = parsed.columns
        if parsed.array is not None:
            values: Any = parsed.array
        elif parsed.records is not None:
            values, names = self._from_records(parsed.records), None
        else:
            values = parsed.rows
        if values is None or len(values) == 0:
            self._refuse("the request is an empty batch; send at least one row", "empty")
        array = self._array(values, names or self.columns)
        if names is not None and self._index:
            array = self._order(array, names)
        array = self._fit_shape(array)
        dtype = self.dtype
        if dtype is None and parsed.v2_inputs and len(parsed.v2_inputs) == 1:
            dtype = np.dtype(V2_DATATYPES[parsed.v2_inputs[0]["datatype"]])
        return self._coerce(array, dtype, finite=parsed.finite)

    def _array(self, values: Any, names: list[str] | None) -> np.ndarray:
        if isinstance(values, np.ndarray):
            array = values
        else:
            try:
                array = np.asarray(values, dtype=object if self._is_mixed() else None)
            except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
                self._refuse(_ragged(values, exc), "ragged")
        kind = array.dtype.kind
        if kind in _NUMBERS:
            return array
        if kind == "O":
            return self._objects(array, names)
        where = _first_text(values, names)
        self._refuse(f"{where} is not a number (the batch holds text)", "type")

    def _objects(self, array: np.ndarray, names: list[str] | None) -> np.ndarray:
        """An object array: nulls (NaN if allowed), huge integers, nested lists, or mixed."""
        if self._is_mixed():
            return array
        if array.ndim < 2 and any(isinstance(v, list | dict) for v in array.flat):
            self._refuse(_ragged(array.tolist(), None), "ragged")
        types = set(map(type, array.ravel().tolist()))  # C-speed, even for 8 MiB of nulls
        nulls = type(None) in types
        if (nulls and not self.allow_nan) or not types <= _SCALARS:
            self._explain_objects(array, names)
        target = self.dtype if self.dtype is not None and self.dtype.kind == "f" else np.float64
        try:
            if nulls:
                array = np.where(array == None, np.nan, array)  # noqa: E711 (elementwise)
            return array.astype(target)
        except (OverflowError, ValueError, TypeError):
            self._refuse("a value is out of the range of numbers the model takes", "range")

    def _explain_objects(self, array: np.ndarray, names: list[str] | None) -> NoReturn:
        """Refuse the first null (NaN refused) or non-number of an object array."""
        for index, value in np.ndenumerate(array):
            if value is None:
                if not self.allow_nan:
                    where = _position(index, names)
                    self._refuse(f"{where} is null: missing values are refused", "nan")
            elif type(value) not in (int, float, bool):
                where = _position(index, names)
                self._refuse(f"{where} is {_type_name(value)}, not a number", "type")
        self._refuse("the batch holds values that are not numbers", "type")

    def _from_records(self, records: list[dict[str, Any]]) -> list[list[Any]]:
        columns = self.columns
        if columns is None:
            if self.shape is not None:
                self._refuse(
                    "the request names its values (records), but this model takes unnamed "
                    "features; send rows instead",
                    "names",
                )
            columns = list(records[0])  # no signature: the first record sets the order
        width = len(columns)
        try:
            rows = [[record[c] for c in columns] for record in records]
        except KeyError:
            self._check_names(records, columns)
            raise
        if any(len(record) != width for record in records):
            self._check_names(records, columns)
        return rows

    def _check_names(self, records: list[dict[str, Any]], columns: list[str]) -> None:
        wanted = set(columns)
        for i, record in enumerate(records):
            missing = [c for c in columns if c not in record]
            unknown = [c for c in record if c not in wanted]
            if missing or unknown:
                self._refuse(f"record {i} {_name_problem(missing, unknown)}", "names")

    def _order(self, array: np.ndarray, names: list[str]) -> np.ndarray:
        key = tuple(names)
        order = self._orders.get(key)
        if order is None:
            columns = self.columns or []
            if key == tuple(columns):
                return array
            missing = [c for c in columns if c not in set(names)]
            unknown = [n for n in names if n not in self._index]
            if missing or unknown or len(names) != len(columns):
                problem = (
                    _name_problem(missing, unknown) if missing or unknown else "repeats a column"
                )
                self._refuse(f"the request {problem}", "names")
            order = [names.index(c) for c in columns]
            if len(self._orders) < _ORDER_CACHE:
                self._orders[key] = order
        if array.ndim != 2 or array.shape[1] != len(order):
            return array  # _fit_shape explains the shape
        return array[:, order]

    def _fit_shape(self, array: np.ndarray) -> np.ndarray:
        shape = self.shape
        if shape is None:
            if array.ndim >= 2 and array.shape[0] > 0 and array.size > 0:
                return array
            if array.ndim == 1 and array.size > 0:
                self._refuse(
                    "the request is a flat list of values; send a list of rows, e.g. [[1, 2, 3]]",
                    "shape",
                )
            self._refuse("the request is an empty batch; send at least one row", "empty")
        if array.ndim == len(shape) + 1 and all(
            d < 0 or d == n for d, n in zip(shape, array.shape[1:], strict=True)
        ):
            if array.shape[0] == 0:
                self._refuse("the request is an empty batch; send at least one row", "empty")
            return array
        if array.ndim == 1 and shape in ((1,), (-1,)):
            return array.reshape(-1, 1)  # rows of one value sent flat
        if not shape and array.ndim == 2 and array.shape[1] == 1:
            return array.reshape(-1)
        self._refuse(self._shape_problem(array), "shape")

    def _shape_problem(self, array: np.ndarray) -> str:
        if array.ndim == 0 or array.size == 0:
            return "the request is an empty batch; send at least one row"
        if array.ndim == 1:
            return (
                f"the request is a flat list of {array.shape[0]} values; send a list of rows "
                "(a row of one request is [[...]])"
            )
        if self.shape is not None and len(self.shape) == 1 and array.ndim == 2:
            return f"each row has {array.shape[1]} values"
        return f"the batch has shape {list(array.shape)}"

    def _coerce(self, array: np.ndarray, dtype: np.dtype | None, *, finite: bool) -> np.ndarray:
        kind = array.dtype.kind
        if dtype is not None and dtype.kind == "O":
            return self._mixed(array)
        if dtype is None or dtype == array.dtype:
            out = array
        elif dtype.kind == "f":
            if self._downcast or dtype.itemsize < array.dtype.itemsize:
                with np.errstate(over="ignore", invalid="ignore"):
                    out = array.astype(dtype)
            else:
                out = array.astype(dtype)
        elif dtype.kind in "iu":
            out = self._to_int(array, dtype)
        elif dtype.kind == "b":
            if kind != "b" and not np.isin(array, (0, 1)).all():
                self._refuse("a value is not a boolean (true/false or 0/1)", "type")
            out = array.astype(dtype)
        else:
            self._refuse(f"this model takes {dtype} values, which JSON numbers cannot hold", "type")
        # numbers orjson read are finite; a cast to a narrower float can overflow
        known = finite and kind in "fiub" and out.dtype.itemsize >= array.dtype.itemsize
        if out.dtype.kind == "f" and not (self.allow_nan or known) and not np.isfinite(out).all():
            self._refuse(self._nonfinite(out), "nan")
        return out

    def _to_int(self, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
        info = np.iinfo(dtype)
        kind = array.dtype.kind
        if kind == "f" and not (np.isfinite(array).all() and (array == np.trunc(array)).all()):
            self._refuse(f"a value is not an integer; this model takes {dtype} values", "type")
        if kind != "b" and (array.min() < info.min or array.max() > info.max):
            self._refuse(
                f"a value is out of the range of {dtype} ({info.min} to {info.max})", "range"
            )
        return array.astype(dtype)

    # -- mixed dataframes (text beside numbers): an object batch, checked per column ----

    def _is_mixed(self) -> bool:
        return self.dtype is not None and self.dtype.kind == "O"

    def _mixed(self, array: np.ndarray) -> np.ndarray:
        array = array.astype(object)
        for j, column in enumerate(self.expected["columns"] or ()):
            if np.dtype(column["dtype"]).kind not in _NUMBERS:
                continue
            for i, value in enumerate(array[:, j]):
                if value is None and self.allow_nan:
                    array[i, j] = math.nan
                elif type(value) not in (int, float, bool) or (
                    not self.allow_nan and isinstance(value, float) and not math.isfinite(value)
                ):
                    where = _position((i, j), self.columns)
                    self._refuse(f"{where} is {_type_name(value)}, not a number", "type")
        return array

    # -- messages ------------------------------------------------------------------------

    def _expected(self, columns: list[_Column] | None) -> dict[str, Any]:
        return {
            "features": self.features,
            "shape": None if self.shape is None else [-1, *self.shape],
            "dtype": None if self.dtype is None else str(self.dtype),
            "columns": [{"name": c.name, "dtype": str(c.dtype)} for c in columns]
            if columns
            else None,
            "allow_nan": self.allow_nan,
        }

    def _describe(self) -> str:
        if self.shape is None:
            return "a rectangular batch of numbers (the version has no signature)"
        if self.columns:
            shown = ", ".join(self.columns[:_SHOWN_COLUMNS])
            if len(self.columns) > _SHOWN_COLUMNS:
                shown += f", ... ({len(self.columns) - _SHOWN_COLUMNS} more)"
            return f"rows of {len(self.columns)} {self._dtype_words()} features named {shown}"
        if len(self.shape) == 1 and self.shape[0] > 0:
            return f"rows of {self.shape[0]} {self._dtype_words()} features"
        dims = ", ".join(str(d) for d in [-1, *self.shape])
        return f"a {self._dtype_words()} batch of shape [{dims}] (-1: any size)"

    def _dtype_words(self) -> str:
        if self.dtype is not None and self.dtype.kind == "O":
            kinds = sorted({c["dtype"] for c in self.expected["columns"] or ()})
            return "/".join(kinds)
        return str(self.dtype)

    def _nonfinite(self, out: np.ndarray) -> str:
        bad = np.argwhere(~np.isfinite(out))[0]
        value = out[tuple(bad)]
        what = "NaN" if math.isnan(value) else "infinite (or too large for the model's type)"
        where = _position(tuple(int(i) for i in bad), self.columns)
        return f"{where} is {what}: NaN and infinite values are refused by this deployment"

    def _refuse(self, problem: str, kind: str) -> NoReturn:
        floats = self.dtype is not None and self.dtype.kind == "f"
        nan = "; NaN refused" if floats and not self.allow_nan and kind != "nan" else ""
        msg = f"{problem}; the model expects {self._description}{nan}"
        raise ValidationError(msg, details={"problem": kind, "expected": self.expected})


def _dtype(name: Any) -> np.dtype:
    if name in (None, "object", "string", "str", "category"):
        return np.dtype(object)
    dtype = np.dtype(str(name))
    return dtype if dtype.kind in "biufUO" else np.dtype(object)


def _batch_dtype(dtypes: list[np.dtype]) -> np.dtype:
    """One dtype for a dataframe's columns: their common numeric type, else objects."""
    if all(d.kind in _NUMBERS for d in dtypes):
        return np.result_type(*dtypes)
    return np.dtype(object)


def _position(index: tuple[int, ...], columns: list[str] | None) -> str:
    if len(index) >= 2:
        column = columns[index[1]] if columns and index[1] < len(columns) else None
        name = f" ({column!r})" if column is not None else ""
        return f"row {index[0]}, value {index[1]}{name}"
    return f"row {index[0]}" if index else "the value"


def _name_problem(missing: list[str], unknown: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"misses column(s) {_names(missing)}")
    if unknown:
        parts.append(f"has unknown column(s) {_names(unknown)}")
    return " and ".join(parts)


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(_clip(n)) for n in names[:_SHOWN_COLUMNS])
    more = len(names) - _SHOWN_COLUMNS
    return f"{shown} (and {more} more)" if more > 0 else shown


def _ragged(values: Any, exc: BaseException | None) -> str:
    if isinstance(values, list) and values and all(isinstance(r, list | tuple) for r in values):
        lengths = sorted({len(r) for r in values})
        if len(lengths) > 1:
            shown = ", ".join(str(n) for n in lengths[:5])
            return f"the rows have different lengths ({shown} values)"
    reason = str(exc).split("\n", 1)[0][:120] if exc is not None else "nested lists"
    return f"the batch is not a rectangular table of values ({reason})"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"text {_clip(value)!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _clip(text: Any, limit: int = 60) -> str:
    text = str(text) if not isinstance(text, str) else text
    return text if len(text) <= limit else text[:limit] + "..."


def _first_text(values: Any, names: list[str] | None) -> str:
    """Where the first text value of a batch of rows is (numpy made the whole batch text)."""
    if isinstance(values, list):
        for i, row in enumerate(values):
            for j, value in enumerate(row if isinstance(row, list | tuple) else [row]):
                if isinstance(value, str):
                    return _position((i, j), names)
    return "a value"
