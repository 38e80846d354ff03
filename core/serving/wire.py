"""Wire formats of the data plane: reading prediction requests, writing the answers.

Three protocols share one parser, told apart by their keys (or forced by the route):

- **mlrig**: ``{"inputs": [[...], ...]}`` rows, ``{"inputs": {"col": [...], ...}}`` columns
  or ``{"inputs": [{"col": v, ...}, ...]}`` records, with an optional ``"request_id"`` and
  ``"params"``.
- **mlflow** (MLflow's scoring protocol, what ``mlflow models serve`` reads on
  ``/invocations``): exactly one of ``dataframe_split`` ``{"columns", "data", "index"?}``,
  ``dataframe_records``, ``instances`` or ``inputs``, plus optional ``params``; also a
  ``text/csv`` body with a header row.
- **v2** (KServe v2 / Open Inference Protocol, what Triton, KServe and MLServer clients send):
  ``{"id"?, "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?, "parameters"?}``:
  one tensor ``[N, F...]``, or several ``[N]`` / ``[N, 1]`` tensors that are one named column
  each; data flat or nested; Triton's binary tensor extension is read too.

:func:`parse_request` never raises anything but :class:`~mlrig.errors.ValidationError`
(422) for a bad body, whatever the bytes. It checks the *structure*; the values are checked
against the model's signature by :mod:`mlrig.serving.inputs`. :func:`format_response`
answers in the protocol the request came in. pandas is never imported here: the request
path stays on orjson and numpy.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from itertools import chain
from math import prod
from typing import Any

import numpy as np
import orjson

from mlrig.errors import ValidationError

__all__ = [
    "PROTOCOLS",
    "V2_DATATYPES",
    "ParsedRequest",
    "format_response",
    "parse_request",
    "v2_datatype",
    "v2_model_metadata",
]

#: what ``protocol=`` accepts; "auto" tells the protocol from the body
PROTOCOLS = ("auto", "mlrig", "mlflow", "v2")

#: KServe v2 tensor datatypes -> numpy dtype (BYTES are text: numpy str / object)
V2_DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
_NUMPY_TO_V2 = {np.dtype(v): k for k, v in V2_DATATYPES.items() if k != "BYTES"}

#: outputs a v2 request may ask for
V2_OUTPUTS = ("predict", "probabilities")

_MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_MLRIG_KEYS = frozenset({"inputs", "request_id", "params"})
_V2_KEYS = frozenset({"id", "inputs", "outputs", "parameters"})
_V2_TENSOR_KEYS = frozenset({"name", "shape", "datatype"})
#: request ids are echoed in the X-Request-Id header and stored (255 characters):
#: visible ASCII only, so no header can be forged and every database stores it
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,255}")
#: JSON extensions Python's json module writes (``json.dumps(float("nan"))``); orjson refuses
_NONFINITE = re.compile(rb"NaN|Infinity")
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class ParsedRequest:
    """A prediction request, read but not yet checked against a signature.

    Exactly one of ``rows``, ``records`` and ``array`` holds the batch:

    - ``rows``: row-major values, one sequence per row (or flat scalars, which
      :meth:`~mlrig.serving.inputs.InputSchema.to_batch` reads as rows of one feature);
      ``columns`` names their positions when the client named them (``dataframe_split``,
      column dicts, CSV), else ``None``.
    - ``records``: one ``{column: value}`` dict per row.
    - ``array``: a v2 tensor as sent, numpy, shape ``[N, ...]``; ``columns`` set when it was
      built from several named ``[N]`` tensors (one column each).
    """

    protocol: str
    rows: list[Any] | None = None
    records: list[dict[str, Any]] | None = None
    columns: list[str] | None = None
    array: np.ndarray | None = None
    request_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    #: v2 only: the inputs as declared (``name``, ``datatype``, ``shape``; no data)
    v2_inputs: list[dict[str, Any]] | None = None
    #: v2 only: the outputs the client asked for, ``None`` for all
    v2_outputs: list[str] | None = None
    #: every number is known to be finite (orjson read them: it refuses NaN and infinity),
    #: so the NaN check can be skipped for batches that keep their dtype
    finite: bool = False

    @property
    def n_rows(self) -> int:
        """How many rows (instances) the request holds."""
        if self.array is not None:
            return int(self.array.shape[0]) if self.array.ndim else 1
        if self.records is not None:
            return len(self.records)
        return len(self.rows or ())


def parse_request(
    body: bytes,
    *,
    content_type: str | None = None,
    protocol: str = "auto",
    header_length: int | None = None,
) -> ParsedRequest:
    """Read a prediction request body in ``protocol`` (``"auto"``: told from the body).

    ``content_type`` ``text/csv`` reads a CSV table with a header row (MLflow's CSV input);
    ``application/json; format=pandas-split`` (or ``pandas-records``) a bare pandas JSON, as
    MLflow 1.x clients send it.
    ``header_length`` is the ``Inference-Header-Content-Length`` header of a v2 request
    that uses Triton's binary tensor extension: the JSON header is that many bytes, the raw
    tensors follow. Raises :class:`~mlrig.errors.ValidationError` for anything malformed.
    """
    if protocol not in PROTOCOLS:
        msg = f"unknown wire protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}"
        raise ValidationError(msg)
    if content_type is not None and _media_type(content_type) == "text/csv":
        if protocol == "v2":
            msg = "a KServe v2 request is JSON, not text/csv"
            raise ValidationError(msg)
        return _parse_csv(body, "mlrig" if protocol == "mlrig" else "mlflow")
    binary = b""
    if header_length is not None:
        if protocol not in ("auto", "v2"):
            msg = "Inference-Header-Content-Length (binary tensors) is only for KServe v2"
            raise ValidationError(msg)
        if not 0 < header_length <= len(body):
            msg = (
                f"Inference-Header-Content-Length is {header_length} but the body has "
                f"{len(body)} bytes; it must be the length of the JSON header"
            )
            raise ValidationError(msg)
        body, binary = body[:header_length], body[header_length:]
    doc, finite = _load_json(body)
    if content_type is not None and "format=pandas-" in content_type and protocol != "v2":
        # MLflow 1.x clients: a bare pandas JSON named by the content type
        orient = (
            "dataframe_records" if "format=pandas-records" in content_type else "dataframe_split"
        )
        doc, protocol = {orient: doc}, "mlflow"
    if not isinstance(doc, dict):
        msg = f"the request body must be a JSON object, not {_json_type(doc)}; {_SHAPES}"
        raise ValidationError(msg)
    if protocol == "auto":
        protocol = _detect(doc)
    if header_length is not None and protocol != "v2":
        msg = "Inference-Header-Content-Length (binary tensors) is only for KServe v2 requests"
        raise ValidationError(msg)
    if protocol == "v2":
        parsed = _parse_v2(doc, binary)
    elif protocol == "mlflow":
        parsed = _parse_mlflow(doc)
    else:
        parsed = _parse_mlrig(doc)
    parsed.finite = finite and not binary
    return parsed


_SHAPES = (
    'expected {"inputs": [[...], ...]} rows, {"inputs": {"column": [...]}} columns, '
    "MLflow's dataframe_split / dataframe_records / instances, or KServe v2 "
    '{"inputs": [{"name", "shape", "datatype", "data"}]}'
)


def _detect(doc: dict[str, Any]) -> str:
    if "dataframe_split" in doc or "dataframe_records" in doc or "instances" in doc:
        return "mlflow"
    inputs = doc.get("inputs")
    if inputs is None:
        keys = ", ".join(repr(_short(k)) for k in list(doc)[:5]) or "none"
        msg = f"the request has no inputs (keys: {keys}); {_SHAPES}"
        raise ValidationError(msg)
    if (
        isinstance(inputs, list)
        and inputs
        and isinstance(inputs[0], dict)
        and _V2_TENSOR_KEYS <= inputs[0].keys()
    ):
        return "v2"
    return "mlrig"


# -- JSON and CSV ------------------------------------------------------------------------


def _load_json(body: bytes) -> tuple[Any, bool]:
    """The document, and whether orjson read it (then every number in it is finite)."""
    try:
        return orjson.loads(body), True
    except orjson.JSONDecodeError as exc:
        error = exc
    except TypeError:  # not bytes at all: a programming error upstream, still a 422
        msg = f"the request body must be bytes, not {type(body).__name__}"
        raise ValidationError(msg) from None
    if _NONFINITE.search(body):
        # Python's json.dumps writes NaN / Infinity; read them (off the hot path) so the
        # NaN policy, not the JSON parser, decides, then make sure the result is what
        # orjson itself could have produced (no lone surrogates, bounded depth).
        try:
            doc = json.loads(body)
        except (ValueError, TypeError, RecursionError):
            pass
        else:
            try:
                orjson.dumps(doc)
            except TypeError as exc:  # orjson.JSONEncodeError
                msg = f"the request body cannot be read: {exc} (NaN written as NaN)"
                raise ValidationError(msg) from None
            return doc, False
    msg = f"the request body is not valid JSON: {error}"
    raise ValidationError(msg) from None


def _parse_csv(body: bytes, protocol: str) -> ParsedRequest:
    try:
        text = body.decode("utf-8")
        table = list(csv.reader(io.StringIO(text)))
    except (UnicodeDecodeError, csv.Error, AttributeError) as exc:
        msg = f"the text/csv body could not be read: {exc}"
        raise ValidationError(msg) from None
    table = [row for row in table if row]
    if len(table) < 2:
        msg = "a text/csv body needs a header row and at least one data row"
        raise ValidationError(msg)
    header, data = table[0], table[1:]
    return ParsedRequest(
        protocol, rows=[[_csv_value(v) for v in row] for row in data], columns=header
    )


def _csv_value(text: str) -> Any:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


# -- mlrig -------------------------------------------------------------------------------


def _parse_mlrig(doc: dict[str, Any]) -> ParsedRequest:
    if not doc.keys() <= _MLRIG_KEYS:
        unknown = ", ".join(repr(_short(k)) for k in doc if k not in _MLRIG_KEYS)
        msg = f"unknown field(s) {unknown} in the request; expected inputs, request_id, params"
        raise ValidationError(msg)
    if "inputs" not in doc:
        msg = f"the request has no inputs; {_SHAPES}"
        raise ValidationError(msg)
    parsed = _batch("mlrig", doc["inputs"], "inputs")
    parsed.request_id = _request_id(doc.get("request_id"), "request_id")
    parsed.params = _params(doc.get("params"), "params")
    return parsed


def _batch(protocol: str, value: Any, where: str) -> ParsedRequest:
    """Rows, records (list of dicts) or columns (dict of lists) found at ``where``."""
    if isinstance(value, dict):
        return _columns(protocol, value, where)
    if not isinstance(value, list):
        kind = _json_type(value)
        msg = f"{where} must be a list of rows or a {{column: [values]}} object, not {kind}"
        raise ValidationError(msg)
    if not value:
        msg = f"{where} is an empty batch; send at least one row"
        raise ValidationError(msg)
    if type(value[0]) is dict:
        return ParsedRequest(protocol, records=_records(value, where))
    return ParsedRequest(protocol, rows=value)


def _records(value: list[Any], where: str) -> list[dict[str, Any]]:
    for i, row in enumerate(value):
        if type(row) is not dict:
            kind = _json_type(row)
            msg = f"{where}[{i}] is {kind}; every record must be a {{column: value}} object"
            raise ValidationError(msg)
    return value


def _columns(protocol: str, value: dict[str, Any], where: str) -> ParsedRequest:
    if not value:
        msg = f"{where} has no columns: an empty batch; send at least one row"
        raise ValidationError(msg)
    n = None
    for name, column in value.items():
        if not isinstance(column, list):
            msg = (
                f"column {_short(name)!r} of {where} is {_json_type(column)}; each column "
                "needs a list of values, one per row"
            )
            raise ValidationError(msg)
        if n is None:
            n = len(column)
        elif len(column) != n:
            msg = f"the columns of {where} have different lengths ({n} and {len(column)} values)"
            raise ValidationError(msg)
    if not n:
        msg = f"{where} is an empty batch (columns without values); send at least one row"
        raise ValidationError(msg)
    rows = list(zip(*value.values(), strict=True))
    return ParsedRequest(protocol, rows=rows, columns=list(value))


def _request_id(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _REQUEST_ID.fullmatch(value):
        msg = (
            f"{where} must be 1 to 255 visible ASCII characters (no spaces), got {_short(value)!r}"
        )
        raise ValidationError(msg)
    return value


def _params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        msg = f"{where} must be an object, not {_json_type(value)}"
        raise ValidationError(msg)
    return value


# -- MLflow ------------------------------------------------------------------------------


def _parse_mlflow(doc: dict[str, Any]) -> ParsedRequest:
    found = [key for key in _MLFLOW_KEYS if key in doc]
    if len(found) != 1:
        msg = (
            "an MLflow scoring request needs exactly one of dataframe_split, "
            f"dataframe_records, instances, inputs (found: {', '.join(found) or 'none'})"
        )
        raise ValidationError(msg)
    unknown = [k for k in doc if k not in found and k not in ("params", "request_id")]
    if unknown:
        names = ", ".join(repr(_short(k)) for k in unknown[:5])
        msg = f"unknown field(s) {names} in the MLflow request; expected {found[0]} and params"
        raise ValidationError(msg)
    key = found[0]
    value = doc[key]
    if key == "dataframe_split":
        parsed = _dataframe_split(value)
    elif key == "dataframe_records":
        if not isinstance(value, list) or not value:
            msg = "dataframe_records must be a non-empty list of {column: value} records"
            raise ValidationError(msg)
        parsed = ParsedRequest("mlflow", records=_records(value, key))
    else:
        parsed = _batch("mlflow", value, key)
    parsed.params = _params(doc.get("params"), "params")
    parsed.request_id = _request_id(doc.get("request_id"), "request_id")
    return parsed


def _dataframe_split(value: Any) -> ParsedRequest:
    if not isinstance(value, dict) or "data" not in value:
        msg = (
            'dataframe_split must be {"columns": [...], "data": [[...], ...]} (pandas split orient)'
        )
        raise ValidationError(msg)
    unknown = [k for k in value if k not in ("columns", "data", "index")]
    if unknown:
        names = ", ".join(repr(_short(k)) for k in unknown[:5])
        msg = f"unknown field(s) {names} in dataframe_split; expected columns, data, index"
        raise ValidationError(msg)
    columns, data = value.get("columns"), value["data"]
    if columns is not None and (
        not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)
    ):
        msg = "dataframe_split.columns must be a list of column names (strings)"
        raise ValidationError(msg)
    if not isinstance(data, list) or not data:
        msg = "dataframe_split.data must be a non-empty list of rows: an empty batch otherwise"
        raise ValidationError(msg)
    index = value.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(data)):
        msg = f"dataframe_split.index must be a list with one entry per row ({len(data)})"
        raise ValidationError(msg)
    return ParsedRequest("mlflow", rows=data, columns=columns)


# -- KServe v2 ---------------------------------------------------------------------------


def _parse_v2(doc: dict[str, Any], binary: bytes) -> ParsedRequest:
    if not doc.keys() <= _V2_KEYS:
        unknown = ", ".join(repr(_short(k)) for k in doc if k not in _V2_KEYS)
        msg = (
            f"unknown field(s) {unknown} in the v2 request; expected {', '.join(sorted(_V2_KEYS))}"
        )
        raise ValidationError(msg)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        msg = (
            'a v2 request needs "inputs": a non-empty list of {"name", "shape", "datatype", "data"}'
        )
        raise ValidationError(msg)
    buffer = memoryview(binary)
    tensors, declared = [], []
    for i, tensor in enumerate(inputs):
        name, array, buffer = _v2_input(tensor, i, buffer)
        tensors.append((name, array))
        declared.append({"name": name, "datatype": tensor["datatype"], "shape": tensor["shape"]})
    if len(buffer):
        msg = f"{len(buffer)} bytes of binary tensor data are left over after the inputs"
        raise ValidationError(msg)
    parsed = ParsedRequest("v2", v2_inputs=declared)
    if len(tensors) == 1:
        array = tensors[0][1]
        parsed.array = array.reshape(-1, 1) if array.ndim == 1 else array
    else:
        parsed.array, parsed.columns = _v2_columns(tensors)
    if parsed.array.ndim == 0 or parsed.array.shape[0] == 0:
        msg = "the v2 request is an empty batch: its first dimension must be at least 1"
        raise ValidationError(msg)
    parsed.request_id = _request_id(doc.get("id"), "id")
    parsed.params = _params(doc.get("parameters"), "parameters")
    parsed.v2_outputs = _v2_outputs(doc.get("outputs"))
    return parsed


def _v2_input(tensor: Any, i: int, buffer: memoryview) -> tuple[str, np.ndarray, memoryview]:
    # messages are built only on a refusal: this runs for every v2 request
    if type(tensor) is not dict or not _V2_TENSOR_KEYS <= tensor.keys():
        msg = f'inputs[{i}] must be {{"name", "shape", "datatype", "data"}}'
        raise ValidationError(msg)
    name, shape, datatype = tensor["name"], tensor["shape"], tensor["datatype"]
    if type(name) is not str or not name:
        msg = f"inputs[{i}].name must be a non-empty string"
        raise ValidationError(msg)
    if (
        type(shape) is not list
        or not 1 <= len(shape) <= 32
        or not all(type(d) is int and 0 <= d < 2**31 for d in shape)
    ):
        msg = (
            f"{_where(name)}: shape must be a list of 1 to 32 non-negative integers, "
            f"got {_short(shape)!r}"
        )
        raise ValidationError(msg)
    if datatype not in V2_DATATYPES:
        known = ", ".join(V2_DATATYPES)
        msg = f"{_where(name)}: unknown datatype {_short(datatype)!r}; expected one of {known}"
        raise ValidationError(msg)
    size = prod(shape)
    params = tensor.get("parameters")
    binary_size = params.get("binary_data_size") if type(params) is dict else None
    if binary_size is not None:
        if type(binary_size) is not int or not 0 <= binary_size <= len(buffer):
            msg = f"{_where(name)}: binary_data_size {_short(binary_size)!r} runs past the body"
            raise ValidationError(msg)
        raw = _v2_binary(buffer[:binary_size], datatype, size, _where(name))
        buffer = buffer[binary_size:]
    else:
        if "data" not in tensor:
            msg = f"{_where(name)} has no data"
            raise ValidationError(msg)
        raw = _v2_data(tensor["data"], datatype, name)
    if raw.size != size:
        msg = (
            f"{_where(name)} has shape {shape} ({size} values) but its data holds {raw.size} values"
        )
        raise ValidationError(msg)
    return name, raw.reshape(shape), buffer


def _where(name: str) -> str:
    return f"input {_short(name)!r}"


def _v2_data(data: Any, datatype: str, name: str) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        msg = f"{_where(name)}: its data is not a rectangular array of values ({_reason(exc)})"
        raise ValidationError(msg) from None
    kind = raw.dtype.kind
    if datatype == "BYTES":
        ok = kind == "U" or raw.size == 0
    elif datatype == "BOOL":
        ok = kind == "b" or raw.size == 0
    else:
        ok = kind in "biuf" or raw.size == 0
    if not ok:
        msg = f"{_where(name)} is {datatype} but its data holds {_kind_name(raw)}"
        raise ValidationError(msg)
    return raw


def _v2_binary(chunk: memoryview, datatype: str, size: int, where: str) -> np.ndarray:
    if datatype != "BYTES":
        dtype = np.dtype(V2_DATATYPES[datatype]).newbyteorder("<")
        if len(chunk) != size * dtype.itemsize:
            msg = f"{where}: {len(chunk)} bytes of binary data do not hold {size} {datatype} values"
            raise ValidationError(msg)
        return np.frombuffer(chunk, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)
    # BYTES: each element is a 4-byte little-endian length followed by that many bytes
    items, data, at = [], bytes(chunk), 0
    while at < len(data):
        if at + 4 > len(data):
            msg = f"{where}: truncated BYTES element in the binary data"
            raise ValidationError(msg)
        n = int.from_bytes(data[at : at + 4], "little")
        at += 4
        if at + n > len(data):
            msg = f"{where}: a BYTES element runs past its binary data"
            raise ValidationError(msg)
        try:
            items.append(data[at : at + n].decode("utf-8"))
        except UnicodeDecodeError:
            msg = f"{where}: a BYTES element is not UTF-8 text"
            raise ValidationError(msg) from None
        at += n
    return np.asarray(items, dtype=str)


def _v2_columns(tensors: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, list[str]]:
    names = [name for name, _ in tensors]
    if len(set(names)) != len(names):
        msg = "the v2 inputs have duplicate names; give each column its own input"
        raise ValidationError(msg)
    n = tensors[0][1].shape[0]
    columns = []
    for name, array in tensors:
        if array.ndim > 2 or (array.ndim == 2 and array.shape[1] != 1) or array.shape[0] != n:
            msg = (
                f"input {_short(name)!r} has shape {list(array.shape)}; several v2 inputs are "
                f"read as one column each, so each must have shape [{n}] or [{n}, 1] (or send "
                "one [N, F] tensor)"
            )
            raise ValidationError(msg)
        columns.append(array.reshape(n))
    if any(c.dtype.kind == "U" for c in columns) and not all(c.dtype.kind == "U" for c in columns):
        columns = [c.astype(object) for c in columns]
    return np.column_stack(columns), names


def _v2_outputs(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        msg = 'outputs must be a list of {"name": ...} objects'
        raise ValidationError(msg)
    names = []
    for item in value:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in V2_OUTPUTS:
            msg = f"unknown output {_short(name)!r}; this model has outputs {', '.join(V2_OUTPUTS)}"
            raise ValidationError(msg)
        names.append(name)
    return names


# -- answers -----------------------------------------------------------------------------


def format_response(
    parsed: ParsedRequest,
    *,
    predictions: Any,
    probabilities: Any | None,
    model: str,
    version: str,
    deployment: str,
    request_id: str,
) -> bytes:
    """The answer to ``parsed`` in its protocol, as JSON bytes.

    ``predictions`` (one per row) and ``probabilities`` (one list per row, or ``None``) are
    lists or numpy arrays. mlrig answers ``{"predictions", "probabilities"?, "model",
    "version", "deployment", "request_id"}``; MLflow ``{"predictions": [...]}`` with the same
    extra keys (MLflow clients read ``predictions`` only); v2 ``{"model_name",
    "model_version", "id", "outputs": [{"name", "shape", "datatype", "data"}]}``.
    """
    if parsed.protocol == "v2":
        wanted = parsed.v2_outputs
        outputs = []
        if wanted is None or "predict" in wanted:
            outputs.append(_v2_tensor("predict", predictions))
        if probabilities is not None and (wanted is None or "probabilities" in wanted):
            outputs.append(_v2_tensor("probabilities", probabilities))
        doc: dict[str, Any] = {
            "model_name": deployment,
            "model_version": version,
            "id": request_id,
            "parameters": {"model": model},
            "outputs": outputs,
        }
    else:
        doc = {"predictions": predictions}
        if probabilities is not None:
            doc["probabilities"] = probabilities
        doc["model"] = model
        doc["version"] = version
        doc["deployment"] = deployment
        doc["request_id"] = request_id
    return _dumps(doc)


def _dumps(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc, option=_DUMPS_OPTIONS)
    except TypeError:
        # numpy arrays orjson can't take as they are (non-contiguous, object dtype)
        return orjson.dumps(doc, default=_default, option=_DUMPS_OPTIONS)


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError


def _v2_tensor(name: str, values: Any) -> dict[str, Any]:
    if isinstance(values, np.ndarray):
        datatype = v2_datatype(values.dtype)
        data = values.ravel() if datatype != "BYTES" else [str(v) for v in values.ravel()]
        return {"name": name, "shape": list(values.shape), "datatype": datatype, "data": data}
    values = list(values)
    if values and isinstance(values[0], list | tuple | np.ndarray):
        width = len(values[0])
        if all(len(v) == width for v in values):
            flat = list(chain.from_iterable(values))
            shape = [len(values), width]
        else:  # ragged answers: one JSON text per row
            flat = [orjson.dumps(v, option=_DUMPS_OPTIONS).decode() for v in values]
            return {"name": name, "shape": [len(flat)], "datatype": "BYTES", "data": flat}
    else:
        flat, shape = values, [len(values)]
    return {"name": name, "shape": shape, "datatype": _values_datatype(flat), "data": flat}


def _values_datatype(values: list[Any]) -> str:
    types = {type(v) for v in values}
    if types == {bool}:
        return "BOOL"
    if types and types <= {int, bool}:
        return "INT64"
    if types <= {int, float, bool, type(None)}:
        return "FP64"
    if len(types) == 1 and issubclass(next(iter(types)), np.generic):
        return v2_datatype(np.dtype(next(iter(types))))
    if all(issubclass(t, int | float | np.number | type(None)) for t in types):
        return "FP64"
    if types == {str}:
        return "BYTES"
    values[:] = [v if isinstance(v, str) else str(v) for v in values]
    return "BYTES"


def v2_datatype(dtype: Any) -> str:
    """The KServe v2 datatype of a numpy dtype (text and objects are ``BYTES``)."""
    try:
        return _NUMPY_TO_V2.get(np.dtype(dtype), "BYTES")
    except TypeError:
        return "BYTES"


def v2_model_metadata(
    name: str, version: str, signature: dict[str, Any] | None, *, probabilities: bool = False
) -> dict[str, Any]:
    """The answer to ``GET /v2/models/{name}``: name, versions, platform, inputs, outputs.

    A tensor signature is one input ``"input"`` of shape ``[-1, F...]``; a dataframe signature
    one ``[-1]`` input per column, named like the column (both request forms are read either
    way). Without a signature the shapes are unknown (``-1``).
    """
    inputs_sig = (signature or {}).get("inputs") or {}
    if inputs_sig.get("kind") == "dataframe":
        inputs = [
            {"name": str(c.get("name")), "datatype": v2_datatype(c.get("dtype")), "shape": [-1]}
            for c in inputs_sig.get("columns") or []
        ]
    else:
        shape = [d if isinstance(d, int) else -1 for d in inputs_sig.get("shape") or [-1, -1]]
        datatype = v2_datatype(inputs_sig.get("dtype", "float64"))
        inputs = [{"name": "input", "datatype": datatype, "shape": shape}]
    out_sig = (signature or {}).get("outputs") or {}
    if out_sig.get("kind") == "tensors":
        out_sig = (out_sig.get("items") or [{}])[0]
    out_shape = [d if isinstance(d, int) else -1 for d in out_sig.get("shape") or [-1]]
    outputs = [
        {
            "name": "predict",
            "datatype": v2_datatype(out_sig.get("dtype", "float64")),
            "shape": out_shape,
        }
    ]
    if probabilities:
        outputs.append({"name": "probabilities", "datatype": "FP64", "shape": [-1, -1]})
    return {
        "name": name,
        "versions": [version],
        "platform": "mlrig",
        "inputs": inputs,
        "outputs": outputs,
    }


# -- helpers -----------------------------------------------------------------------------


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _kind_name(array: np.ndarray) -> str:
    kind = array.dtype.kind
    if kind == "U":
        return "text"
    if kind == "b":
        return "booleans"
    if kind in "iuf":
        return "numbers"
    return "mixed values (nulls, nested lists or text among numbers)"


def _short(value: Any, limit: int = 80) -> Any:
    """A user value fit for an error message: short text, never a huge or nested object."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "..."
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | dict):  # no repr: it could be huge or deeply nested
        return f"<{_json_type(value)} of {len(value)} items>"
    return f"<{type(value).__name__}>"


def _reason(exc: BaseException) -> str:
    text = str(exc).split("\n", 1)[0]
    return text if len(text) <= 120 else text[:120] + "..."
