"""Wire formats of the data plane: mlrig, MLflow scoring and KServe v2 requests and answers."""

from __future__ import annotations

import base64
import json
import random
import struct
import subprocess
import sys

import numpy as np
import orjson
import pytest

from mlrig.errors import ValidationError
from mlrig.serving.inputs import InputSchema
from mlrig.serving.wire import (
    PROTOCOLS,
    ParsedRequest,
    format_response,
    parse_request,
    v2_datatype,
    v2_model_metadata,
)

COLUMNS = ["a", "b", "c"]
ROWS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def dumps(doc) -> bytes:
    return orjson.dumps(doc)


def answer(parsed: ParsedRequest, **overrides) -> dict:
    fields = {
        "predictions": [1, 0],
        "probabilities": [[0.25, 0.75], [0.5, 0.5]],
        "model": "bc",
        "version": "3",
        "deployment": "churn",
        "request_id": "req-1",
    }
    fields.update(overrides)
    return orjson.loads(format_response(parsed, **fields))


# -- mlrig -------------------------------------------------------------------------------


def test_mlrig_rows_with_request_id_and_params():
    parsed = parse_request(dumps({"inputs": ROWS, "request_id": "abc-1", "params": {"k": 1}}))
    assert parsed.protocol == "mlrig"
    assert parsed.rows == ROWS and parsed.columns is None and parsed.records is None
    assert parsed.request_id == "abc-1" and parsed.params == {"k": 1}
    assert parsed.n_rows == 2


def test_mlrig_columns_become_named_rows():
    parsed = parse_request(dumps({"inputs": {"a": [1, 4], "b": [2, 5], "c": [3, 6]}}))
    assert parsed.protocol == "mlrig"
    assert parsed.columns == COLUMNS
    assert [list(r) for r in parsed.rows] == [[1, 2, 3], [4, 5, 6]]


def test_mlrig_records():
    parsed = parse_request(dumps({"inputs": [{"a": 1, "b": 2, "c": 3}]}))
    assert parsed.records == [{"a": 1, "b": 2, "c": 3}] and parsed.rows is None


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"inputs": []}, "empty batch"),
        ({"inputs": {}}, "empty batch"),
        ({"inputs": {"a": [], "b": []}}, "empty batch"),
        ({"inputs": {"a": [1], "b": [1, 2]}}, "different lengths"),
        ({"inputs": {"a": 1}}, "list of values"),
        ({"inputs": 5}, "list of rows"),
        ({"inputs": "x"}, "list of rows"),
        ({"inputs": None}, "list of rows"),
        ({"inputs": [{"a": 1}, [1]]}, "record"),
        ({"input": [[1]]}, "unknown field"),
        ({"inputs": [[1]], "extra": 1}, "unknown field"),
        ({"inputs": [[1]], "request_id": 5}, "request_id"),
        ({"inputs": [[1]], "request_id": ""}, "request_id"),
        ({"inputs": [[1]], "request_id": "a b"}, "request_id"),
        ({"inputs": [[1]], "request_id": "x\r\nSet-Cookie: a"}, "request_id"),
        ({"inputs": [[1]], "request_id": "x" * 256}, "request_id"),
        ({"inputs": [[1]], "params": [1]}, "params"),
    ],
)
def test_mlrig_malformed(doc, words):
    with pytest.raises(ValidationError, match=words):
        parse_request(dumps(doc), protocol="mlrig")


def test_auto_without_inputs_names_every_accepted_shape():
    with pytest.raises(ValidationError) as info:
        parse_request(dumps({"rows": [[1]]}))
    for word in ("inputs", "dataframe_split", "dataframe_records", "instances", "v2"):
        assert word in info.value.message


@pytest.mark.parametrize("body", [b"[]", b"1", b'"x"', b"null", b"[[1, 2]]"])
def test_body_must_be_an_object(body):
    with pytest.raises(ValidationError, match="JSON object"):
        parse_request(body)


def test_unknown_protocol_is_refused():
    with pytest.raises(ValidationError, match="protocol"):
        parse_request(b"{}", protocol="grpc")


# -- MLflow scoring protocol -------------------------------------------------------------


def test_mlflow_dataframe_split_as_pandas_writes_it():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(ROWS, columns=COLUMNS)
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))}).encode()
    parsed = parse_request(body, content_type="application/json")
    assert parsed.protocol == "mlflow"
    assert parsed.columns == COLUMNS and parsed.rows == ROWS


def test_mlflow_dataframe_records_as_pandas_writes_them():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(ROWS, columns=COLUMNS)
    body = json.dumps({"dataframe_records": json.loads(frame.to_json(orient="records"))})
    parsed = parse_request(body.encode())
    assert parsed.protocol == "mlflow"
    assert parsed.records == [dict(zip(COLUMNS, r, strict=True)) for r in ROWS]


def test_mlflow_instances_and_inputs():
    rows = parse_request(dumps({"instances": ROWS}))
    assert rows.protocol == "mlflow" and rows.rows == ROWS
    named = parse_request(dumps({"instances": [{"a": 1, "b": 2, "c": 3}]}))
    assert named.records == [{"a": 1, "b": 2, "c": 3}]
    columns = parse_request(dumps({"inputs": {"a": [1], "b": [2]}}), protocol="mlflow")
    assert columns.protocol == "mlflow" and columns.columns == ["a", "b"]
    tensor = parse_request(dumps({"inputs": ROWS, "params": {"t": 0.5}}), protocol="mlflow")
    assert tensor.protocol == "mlflow" and tensor.rows == ROWS and tensor.params == {"t": 0.5}


def test_mlflow_json_with_nan_as_python_writes_it():
    # MLflow's client uses json.dumps, which writes NaN; the NaN policy decides, not the parser
    body = json.dumps({"dataframe_split": {"columns": ["a"], "data": [[float("nan")]]}})
    parsed = parse_request(body.encode())
    assert np.isnan(parsed.rows[0][0])


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"dataframe_split": {"columns": ["a"]}}, "dataframe_split"),
        ({"dataframe_split": {"columns": ["a"], "data": []}}, "empty batch"),
        ({"dataframe_split": {"columns": [1], "data": [[1]]}}, "column names"),
        ({"dataframe_split": {"data": [[1]], "index": [0, 1]}}, "index"),
        ({"dataframe_split": {"data": [[1]], "dtypes": {}}}, "unknown field"),
        ({"dataframe_split": [[1]]}, "dataframe_split"),
        ({"dataframe_records": []}, "dataframe_records"),
        ({"dataframe_records": [[1, 2]]}, "record"),
        ({"dataframe_records": {"a": 1}}, "dataframe_records"),
        ({"instances": []}, "empty batch"),
        ({"instances": [[1]], "inputs": [[1]]}, "exactly one"),
        ({"instances": [[1]], "other": 1}, "unknown field"),
        ({}, "exactly one"),
    ],
)
def test_mlflow_malformed(doc, words):
    with pytest.raises(ValidationError, match=words):
        parse_request(dumps(doc), protocol="mlflow")


def test_mlflow_1_content_type_formats():
    split = parse_request(
        dumps({"columns": COLUMNS, "data": ROWS}),
        content_type="application/json; format=pandas-split",
    )
    assert split.protocol == "mlflow" and split.columns == COLUMNS and split.rows == ROWS
    records = parse_request(
        dumps([{"a": 1, "b": 2, "c": 3}]), content_type="application/json; format=pandas-records"
    )
    assert records.protocol == "mlflow" and records.records == [{"a": 1, "b": 2, "c": 3}]
    with pytest.raises(ValidationError, match="dataframe_records"):
        parse_request(b"{}", content_type="application/json; format=pandas-records")


def test_mlflow_csv():
    parsed = parse_request(b"a,b,c\n1,2,3\n4,5.5,\n", content_type="text/csv; charset=utf-8")
    assert parsed.protocol == "mlflow" and parsed.columns == COLUMNS
    assert parsed.rows == [[1.0, 2.0, 3.0], [4.0, 5.5, None]]
    forced = parse_request(b"a\n1\n", content_type="text/csv", protocol="mlrig")
    assert forced.protocol == "mlrig"


@pytest.mark.parametrize("body", [b"", b"a,b\n", b"\xff\xfe,\n1,2\n", b'a,"b\n1,2'])
def test_csv_malformed(body):
    with pytest.raises(ValidationError, match="csv"):
        parse_request(body, content_type="text/csv")


def test_csv_is_not_v2():
    with pytest.raises(ValidationError, match="v2"):
        parse_request(b"a\n1\n", content_type="text/csv", protocol="v2")


# -- KServe v2 ---------------------------------------------------------------------------


def v2_body(data, shape, datatype="FP32", name="input", **extra) -> bytes:
    doc = {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}
    doc.update(extra)
    return dumps(doc)


def test_v2_one_tensor_flat_and_nested():
    flat = parse_request(v2_body([1, 2, 3, 4, 5, 6], [2, 3], id="r-9"))
    nested = parse_request(v2_body([[1, 2, 3], [4, 5, 6]], [2, 3]))
    for parsed in (flat, nested):
        assert parsed.protocol == "v2" and parsed.array.shape == (2, 3)
        assert parsed.array.tolist() == [[1, 2, 3], [4, 5, 6]]
        assert parsed.v2_inputs == [{"name": "input", "datatype": "FP32", "shape": [2, 3]}]
    assert flat.request_id == "r-9" and nested.request_id is None


def test_v2_one_dimensional_tensor_is_rows_of_one_value():
    parsed = parse_request(v2_body([1, 2, 3], [3], "FP64"))
    assert parsed.array.shape == (3, 1) and parsed.n_rows == 3


def test_v2_several_tensors_are_named_columns():
    doc = {
        "inputs": [
            {"name": "b", "shape": [2], "datatype": "FP64", "data": [2, 5]},
            {"name": "a", "shape": [2, 1], "datatype": "INT64", "data": [[1], [4]]},
        ],
        "outputs": [{"name": "predict"}],
        "parameters": {"p": 1},
    }
    parsed = parse_request(dumps(doc), protocol="v2")
    assert parsed.columns == ["b", "a"] and parsed.array.tolist() == [[2, 1], [5, 4]]
    assert parsed.v2_outputs == ["predict"] and parsed.params == {"p": 1}


def test_v2_bytes_beside_numbers_make_an_object_column_table():
    doc = {
        "inputs": [
            {"name": "city", "shape": [1], "datatype": "BYTES", "data": ["Paris"]},
            {"name": "n", "shape": [1], "datatype": "FP64", "data": [2.5]},
        ]
    }
    parsed = parse_request(dumps(doc))
    assert parsed.array.dtype == object and parsed.array.tolist() == [["Paris", 2.5]]


def test_v2_as_tritonclient_sends_binary_tensors():
    # tritonclient.http's default: binary_data=True, the JSON header's length in a header
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    parsed = parse_request(header + x.tobytes(), header_length=len(header))
    assert parsed.protocol == "v2" and parsed.array.dtype == np.float32
    np.testing.assert_array_equal(parsed.array, x)


#: bodies tritonclient 2.73 generated (InferenceServerClient.generate_request_body, inputs
#: set_data_from_numpy with its default binary_data=True), with their JSON header lengths
TRITON_FP32 = (
    154,
    "eyJpZCI6InJlcS03IiwiaW5wdXRzIjpbeyJuYW1lIjoiaW5wdXQiLCJzaGFwZSI6WzIsMzBdLCJkYXRhdHlwZSI6"
    "IkZQMzIiLCJwYXJhbWV0ZXJzIjp7ImJpbmFyeV9kYXRhX3NpemUiOjI0MH19XSwicGFyYW1ldGVycyI6eyJiaW5h"
    "cnlfZGF0YV9vdXRwdXQiOnRydWV9fQAAAAAlSRI+JUmSPrdt2z4lSRI/bts2P7dtWz8AAIA/JUmSP0mSpD9u27Y/"
    "kiTJP7dt2z/btu0/AAAAQJIkCUAlSRJAt20bQEmSJEDbti1Abts2QAAAQECSJElAJUlSQLdtW0BJkmRA27ZtQG7b"
    "dkAAAIBASZKEQJIkiUDbto1AJUmSQG7blkC3bZtAAACgQEmSpECSJKlA27atQCVJskBu27ZAt227QAAAwEBJksRA"
    "kiTJQNu2zUAlSdJAbtvWQLdt20AAAOBASZLkQJIk6UDbtu1AJUnyQG7b9kC3bftAAAAAQSVJAkFJkgRBbtsGQQ==",
)
TRITON_BYTES_INT64 = (
    220,
    "eyJpbnB1dHMiOlt7Im5hbWUiOiJjaXR5Iiwic2hhcGUiOlsyXSwiZGF0YXR5cGUiOiJCWVRFUyIsInBhcmFtZXRl"
    "cnMiOnsiYmluYXJ5X2RhdGFfc2l6ZSI6MjB9fSx7Im5hbWUiOiJuIiwic2hhcGUiOlsyLDFdLCJkYXRhdHlwZSI6"
    "IklOVDY0IiwicGFyYW1ldGVycyI6eyJiaW5hcnlfZGF0YV9zaXplIjoxNn19XSwicGFyYW1ldGVycyI6eyJiaW5h"
    "cnlfZGF0YV9vdXRwdXQiOnRydWV9fQUAAABQYXJpcwcAAABaw7xyaWNoAQAAAAAAAAACAAAAAAAAAA==",
)


def test_v2_bodies_tritonclient_generated():
    length, body = TRITON_FP32
    parsed = parse_request(base64.b64decode(body), header_length=length)
    expected = np.arange(60, dtype=np.float32).reshape(2, 30) / 7
    assert parsed.request_id == "req-7" and parsed.array.dtype == np.float32
    np.testing.assert_array_equal(parsed.array, expected)
    length, body = TRITON_BYTES_INT64
    parsed = parse_request(base64.b64decode(body), header_length=length)
    assert parsed.columns == ["city", "n"]
    assert parsed.array.tolist() == [["Paris", 1], ["Zürich", 2]]


def test_v2_binary_bytes_elements():
    words = [b"ab", "é".encode()]
    blob = b"".join(struct.pack("<I", len(w)) + w for w in words)
    header = dumps(
        {
            "inputs": [
                {
                    "name": "t",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    )
    parsed = parse_request(header + blob, header_length=len(header), protocol="v2")
    assert parsed.array.reshape(-1).tolist() == ["ab", "é"]


@pytest.mark.parametrize(
    ("body_and_length", "words"),
    [
        ((b'{"inputs": []}', 999), "Inference-Header-Content-Length"),
        ((b'{"inputs": []}', 0), "Inference-Header-Content-Length"),
        ((b'{"inputs": [[1]]}x', 17), "only for KServe v2"),
    ],
)
def test_v2_binary_header_length_checked(body_and_length, words):
    body, length = body_and_length
    with pytest.raises(ValidationError, match=words):
        parse_request(body, header_length=length)


def binary_request(size: int, payload: bytes, datatype="FP32", shape=(2,)) -> tuple[bytes, int]:
    header = dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    )
    return header + payload, len(header)


@pytest.mark.parametrize(
    ("size", "payload", "datatype", "words"),
    [
        (8, b"\0" * 4, "FP32", "runs past"),
        (4, b"\0" * 4, "FP32", "do not hold"),
        (8, b"\0" * 12, "FP32", "left over"),
        (6, b"\x05\0\0\0ab", "BYTES", "runs past"),
        (2, b"\x05\0", "BYTES", "truncated"),
        (6, b"\x02\0\0\0\xff\xfe", "BYTES", "UTF-8"),
        (-1, b"", "FP32", "binary_data_size"),
    ],
)
def test_v2_binary_malformed(size, payload, datatype, words):
    body, length = binary_request(size, payload, datatype)
    with pytest.raises(ValidationError, match=words):
        parse_request(body, header_length=length, protocol="v2")


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"inputs": []}, "non-empty list"),
        ({"inputs": {"x": 1}}, "non-empty list"),
        ({"inputs": [1]}, "must be"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, "no data"),
        ({"inputs": [{"name": "", "shape": [1], "datatype": "FP32", "data": [1]}]}, "name"),
        ({"inputs": [{"name": 1, "shape": [1], "datatype": "FP32", "data": [1]}]}, "name"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}, "datatype"),
        ({"inputs": [{"name": "x", "shape": "1", "datatype": "FP32", "data": [1]}]}, "shape"),
        ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}, "shape"),
        ({"inputs": [{"name": "x", "shape": [1.5], "datatype": "FP32", "data": [1]}]}, "shape"),
        ({"inputs": [{"name": "x", "shape": [True], "datatype": "FP32", "data": [1]}]}, "shape"),
        ({"inputs": [{"name": "x", "shape": [], "datatype": "FP32", "data": [1]}]}, "shape"),
        ({"inputs": [{"name": "x", "shape": [1] * 33, "datatype": "FP32", "data": [1]}]}, "shape"),
        ({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1]}]}, "6 values"),
        ({"inputs": [{"name": "x", "shape": [0, 3], "datatype": "FP32", "data": []}]}, "empty"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}, "text"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [2]}]}, "numbers"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [2]}]}, "numbers"),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, None]}]}, "mixed"),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [[1], 2]}]}, "rect"),
        (
            {
                "inputs": [
                    {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},
                    {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},
                ]
            },
            "duplicate",
        ),
        (
            {
                "inputs": [
                    {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},
                    {"name": "b", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                ]
            },
            "one column each",
        ),
        (
            {
                "inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}],
                "outputs": [{"name": "logits"}],
            },
            "unknown output",
        ),
        (
            {
                "inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}],
                "outputs": {"name": "predict"},
            },
            "outputs",
        ),
        (
            {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}], "x": 1},
            "unknown field",
        ),
        (
            {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}], "id": 7},
            "id must be",
        ),
    ],
)
def test_v2_malformed(doc, words):
    with pytest.raises(ValidationError, match=words):
        parse_request(dumps(doc), protocol="v2")


def test_v2_model_metadata_for_tensor_and_dataframe_signatures():
    tensor = {
        "inputs": {"kind": "tensor", "dtype": "float32", "shape": [-1, 30]},
        "outputs": {"kind": "tensor", "dtype": "int64", "shape": [-1]},
    }
    meta = v2_model_metadata("bc", "2", tensor, probabilities=True)
    assert meta == {
        "name": "bc",
        "versions": ["2"],
        "platform": "mlrig",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, -1]},
        ],
    }
    frame = {
        "inputs": {
            "kind": "dataframe",
            "columns": [{"name": "age", "dtype": "int64"}, {"name": "city", "dtype": "object"}],
            "shape": [-1, 2],
        }
    }
    meta = v2_model_metadata("m", "1", frame)
    assert meta["inputs"] == [
        {"name": "age", "datatype": "INT64", "shape": [-1]},
        {"name": "city", "datatype": "BYTES", "shape": [-1]},
    ]
    assert [o["name"] for o in meta["outputs"]] == ["predict"]
    assert v2_model_metadata("m", "1", None)["inputs"][0]["shape"] == [-1, -1]
    orjson.dumps(meta)


def test_v2_datatype_names():
    assert v2_datatype("float32") == "FP32" and v2_datatype(np.int64) == "INT64"
    assert v2_datatype("bool") == "BOOL" and v2_datatype(object) == "BYTES"
    assert v2_datatype("not a dtype") == "BYTES"


# -- auto-detection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "protocol"),
    [
        ({"inputs": [[1, 2]]}, "mlrig"),
        ({"inputs": {"a": [1]}}, "mlrig"),
        ({"dataframe_split": {"columns": ["a"], "data": [[1]]}}, "mlflow"),
        ({"dataframe_records": [{"a": 1}]}, "mlflow"),
        ({"instances": [[1]]}, "mlflow"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, "v2"),
    ],
)
def test_auto_detects_the_protocol(doc, protocol):
    assert parse_request(dumps(doc)).protocol == protocol


def test_forced_protocol_wins():
    assert parse_request(dumps({"inputs": [[1]]}), protocol="mlflow").protocol == "mlflow"
    with pytest.raises(ValidationError):
        parse_request(dumps({"inputs": [[1]]}), protocol="v2")


# -- answers -----------------------------------------------------------------------------


def test_mlrig_answer():
    parsed = parse_request(dumps({"inputs": ROWS}))
    assert answer(parsed) == {
        "predictions": [1, 0],
        "probabilities": [[0.25, 0.75], [0.5, 0.5]],
        "model": "bc",
        "version": "3",
        "deployment": "churn",
        "request_id": "req-1",
    }
    assert "probabilities" not in answer(parsed, probabilities=None)


def test_mlflow_answer_has_predictions_as_mlflow_2_serves_them():
    parsed = parse_request(dumps({"dataframe_split": {"columns": COLUMNS, "data": ROWS}}))
    doc = answer(parsed, probabilities=None)
    assert doc["predictions"] == [1, 0]
    pd = pytest.importorskip("pandas")
    # what mlflow.deployments.PredictionsResponse.get_predictions() does with it
    assert pd.DataFrame(data=doc["predictions"]).shape == (2, 1)


def test_v2_answer_as_tritonclient_reads_it():
    parsed = parse_request(v2_body(list(range(6)), [2, 3], id="abc"))
    doc = answer(parsed, request_id="abc")
    assert doc["model_name"] == "churn" and doc["model_version"] == "3" and doc["id"] == "abc"
    predict, proba = doc["outputs"]
    assert predict == {"name": "predict", "shape": [2], "datatype": "INT64", "data": [1, 0]}
    assert proba["shape"] == [2, 2] and proba["datatype"] == "FP64"
    # tritonclient's InferResult.as_numpy for JSON data: np.array(data, dtype).reshape(shape)
    restored = np.array(proba["data"], dtype=np.float64).reshape(proba["shape"])
    np.testing.assert_array_equal(restored, [[0.25, 0.75], [0.5, 0.5]])


def test_v2_answer_honours_requested_outputs():
    doc = {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": list(range(6))}],
        "outputs": [{"name": "probabilities"}],
    }
    outputs = answer(parse_request(dumps(doc)))["outputs"]
    assert [o["name"] for o in outputs] == ["probabilities"]


@pytest.mark.parametrize(
    ("predictions", "datatype", "shape"),
    [
        ([True, False], "BOOL", [2]),
        ([1.5, 2], "FP64", [2]),
        (["yes", "no"], "BYTES", [2]),
        ([[1.0, 2.0], [3.0, 4.0]], "FP64", [2, 2]),
        ([None, 1.0], "FP64", [2]),
        ([np.float32(1), np.float32(2)], "FP32", [2]),
        (np.array([1, 2], dtype=np.int32), "INT32", [2]),
        (np.array([[1.0], [2.0]]), "FP64", [2, 1]),
        (np.array(["a", "b"], dtype=object), "BYTES", [2]),
        ([[1], [2, 3]], "BYTES", [2]),
        (["a", 1], "BYTES", [2]),
    ],
)
def test_v2_output_datatypes(predictions, datatype, shape):
    parsed = parse_request(v2_body([1, 2], [2, 1]))
    out = answer(parsed, predictions=predictions, probabilities=None)["outputs"][0]
    assert out["datatype"] == datatype and out["shape"] == shape
    assert len(out["data"]) == int(np.prod(shape))


def test_numpy_predictions_serialise_in_every_protocol():
    for body in (dumps({"inputs": ROWS}), v2_body([1, 2], [2, 1])):
        parsed = parse_request(body)
        preds = np.array([0.5, 1.5])[::1]
        proba = np.asfortranarray(np.array([[0.1, 0.9], [0.2, 0.8]]))  # not C-contiguous
        doc = answer(parsed, predictions=preds, probabilities=proba)
        assert "predictions" in doc or doc["outputs"][0]["data"] == [0.5, 1.5]


# -- never anything but a 422 ------------------------------------------------------------

SCHEMAS = [
    InputSchema.from_signature(None, allow_nan=False),
    InputSchema.from_signature(
        {"inputs": {"kind": "tensor", "dtype": "float32", "shape": [-1, 3]}}, allow_nan=False
    ),
    InputSchema.from_signature(
        {"inputs": {"kind": "tensor", "dtype": "int64", "shape": [-1, 3]}}, allow_nan=True
    ),
    InputSchema.from_signature(
        {
            "inputs": {
                "kind": "dataframe",
                "columns": [{"name": c, "dtype": "float64"} for c in COLUMNS],
                "shape": [-1, 3],
            }
        },
        allow_nan=False,
    ),
    InputSchema.from_signature(
        {
            "inputs": {
                "kind": "dataframe",
                "columns": [{"name": "a", "dtype": "float64"}, {"name": "b", "dtype": "object"}],
                "shape": [-1, 2],
            }
        },
        allow_nan=True,
    ),
]

SEEDS = [
    dumps({"inputs": ROWS, "request_id": "r1"}),
    dumps({"inputs": {"a": [1, 4], "b": [2, 5], "c": [3, 6]}}),
    dumps({"inputs": [{"a": 1, "b": 2, "c": 3}]}),
    dumps({"dataframe_split": {"columns": COLUMNS, "data": ROWS, "index": [0, 1]}}),
    dumps({"dataframe_records": [{"a": 1, "b": "x", "c": 3}]}),
    dumps({"instances": ROWS}),
    v2_body([1, 2, 3, 4, 5, 6], [2, 3]),
    dumps(
        {
            "inputs": [
                {"name": "a", "shape": [1], "datatype": "FP64", "data": [1]},
                {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["x"]},
            ]
        }
    ),
]

NASTY = [
    b"",
    b"\x00",
    b"{\x00}",
    b'{"inputs": [[1, 2, "\x00"]]}',
    b'{"inputs": [["\\u0000", 1, 2]]}',
    b'{"inputs": [["\\ud800", 1, 2]]}',
    b'{"inputs": [[1, 2, 3]], "request_id": "\\udfff"}',
    b'{"inputs": [[NaN, 2, 3]], "request_id": "\\ud800"}',
    b'{"inputs": [[NaN, 2, "\\udc00"]]}',
    b'{"inputs": [["\xed\xa0\x80", 1, 2]]}',
    b'{"inputs": [[' + b"9" * 5000 + b", 1, 2]]}",
    b'{"inputs": [[NaN, ' + b"9" * 5000 + b", 2]]}",
    b'{"inputs": [[NaN, ' + b"9" * 400 + b", 2]]}",
    b'{"inputs": [[18446744073709551615, -9223372036854775808, 1e308]]}',
    b'{"inputs": [[1e400, 1, 2]]}',
    b'{"inputs": [[-Infinity, Infinity, NaN]]}',
    b'{"inputs": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'{"inputs": ' + b"[" * 1000 + b"1" + b"]" * 1000 + b"}",
    b'{"inputs": ' + b"[" * 200 + b"1" + b"]" * 200 + b"}",
    b'{"inputs": ' + b"[" * 1000 + b"NaN" + b"]" * 1000 + b"}",
    b'{"inputs": ' + b"[" * 5000 + b"NaN" + b"]" * 5000 + b"}",
    b'{"inputs": [' + b'{"a":' * 300 + b"1" + b"}" * 300 + b"]}",
    b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": '
    + b"[" * 100
    + b"1"
    + b"]" * 100
    + b"}]}",
    b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": '
    + b"[" * 1000
    + b"1"
    + b"]" * 1000
    + b"}]}",
    b'{"inputs": [[null, null, null], [1, 2, 3]], "request_id": "r"}',
    b'{"inputs": [[null, "x", null]]}',
    b'{"inputs": [[1, 2, 3]]' + b" " * 10 + b"}" * 3,
    b'{"inputs": [[true, false, null]]}',
    b'{"inputs": [[[], {}, ""]]}',
    b'{"inputs": {"a": [[1]], "b": [{}], "c": [null]}}',
    b'{"inputs": [{"a": [1], "b": {"x": 1}, "c": null}]}',
    b'{"inputs": [{"a": 1, "b": 2, "c": 3}, {"a": 1}]}',
    b'{"inputs": [{"a": 1, "b": 2, "c": 3, "d": 4}]}',
    b'{"inputs": [{}]}',
    b'{"inputs": [[]]}',
    b'{"inputs": [[], []]}',
    b'{"dataframe_split": {"columns": ["a", "a", "a"], "data": [[1, 2, 3]]}}',
    b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2, 3]]}}',
    b'{"dataframe_split": {"columns": [], "data": [[]]}}',
    v2_body([], [2147483647, 2147483647]),
    b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT8", "data": [1000, 1, 2]}]}',
    b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "UINT8", "data": [-1, 1, 2]}]}',
    b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP16", "data": [1e300, 1, 2]}]}',
    v2_body([True, False, True], [1, 3], "BOOL"),
    b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["a", "b", "c"]}]}',
    b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": [1, 2, 3]}]}',
    '{"inputs": [["\u00e9", 1, 2]]}'.encode(),
    b"\xef\xbb\xbf" + dumps({"inputs": ROWS}),
    b"\xff\xfe{\x00}\x00",
]


def check_only_validation_errors(body: bytes, **kwargs) -> None:
    """Parse, check against every schema and answer: nothing but a 422 may come out, and a
    422's message and details must serialise (the data plane renders them with orjson)."""
    try:
        parsed = parse_request(body, **kwargs)
    except ValidationError as exc:
        orjson.dumps({"message": exc.message, "details": exc.details})
        return
    for schema in SCHEMAS:
        try:
            batch = schema.to_batch(parsed)
        except ValidationError as exc:
            orjson.dumps({"message": exc.message, "details": exc.details})
            continue
        assert isinstance(batch, np.ndarray) and batch.shape[0] == parsed.n_rows >= 1
        n = batch.shape[0]
        format_response(
            parsed,
            predictions=[0] * n,
            probabilities=[[0.5, 0.5]] * n,
            model="m",
            version="1",
            deployment="d",
            request_id="r",
        )


@pytest.mark.parametrize("body", NASTY)
def test_nasty_bodies_are_at_most_422(body):
    for protocol in PROTOCOLS:
        check_only_validation_errors(body, protocol=protocol)
    check_only_validation_errors(body, content_type="text/csv")
    check_only_validation_errors(body, content_type="application/json; format=pandas-split")
    check_only_validation_errors(body, content_type="application/json; format=pandas-records")


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes_are_at_most_422(seed):
    rng = random.Random(seed)
    for _ in range(300):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        check_only_validation_errors(body, protocol=rng.choice(PROTOCOLS))
        check_only_validation_errors(body, content_type="text/csv")
        check_only_validation_errors(body, header_length=rng.randrange(1, 80))


def mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(data) + 1)
        op = rng.randrange(5)
        if op == 0 and data:
            del data[at : at + rng.randrange(1, 8)]
        elif op == 1:
            data[at:at] = bytes([rng.getrandbits(8)])
        elif op == 2:
            data[at:at] = rng.choice([b"NaN", b"null", b'"x"', b"[", b"]", b"{", b"}", b",", b"-"])
        elif op == 3:
            data[at:at] = rng.choice([b"1e999", b"99999999999999999999999", b'"\\ud800"', b"\0"])
        else:
            cut = rng.randrange(len(data) + 1)
            data[at:at] = data[cut : cut + rng.randrange(1, 16)]
    return bytes(data)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_valid_bodies_are_at_most_422(seed):
    rng = random.Random(1000 + seed)
    for _ in range(400):
        body = mutate(rng, rng.choice(SEEDS))
        check_only_validation_errors(body, protocol=rng.choice(PROTOCOLS))


def random_json(rng: random.Random, depth: int = 0):
    choice = rng.randrange(10 if depth < 4 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**70, 10**30])
    if choice == 3:
        return rng.choice([0.5, -1e308, 1e308, float("nan"), float("inf"), 1e-320])
    if choice == 4:
        return rng.choice(["", "a", "\x00", "1.5", "é", "NaN", "x" * 300])
    if choice == 5:
        return rng.choice([*COLUMNS, "input", "name", "data", "shape", "datatype"])
    if choice in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    keys = [*COLUMNS, "name", "shape", "datatype", "data", "columns", "index", "parameters"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


@pytest.mark.parametrize("seed", range(4))
def test_random_documents_in_every_protocol_are_at_most_422(seed):
    rng = random.Random(2000 + seed)
    for _ in range(400):
        value = random_json(rng)
        key = rng.choice(["inputs", "instances", "dataframe_split", "dataframe_records"])
        doc = {key: value}
        if rng.random() < 0.3:
            doc["inputs"] = [
                {
                    "name": rng.choice(["x", "a", "b"]),
                    "shape": random_json(rng, 3),
                    "datatype": rng.choice(["FP32", "INT64", "BYTES", "BOOL", "x"]),
                    "data": random_json(rng, 1),
                }
            ]
        body = json.dumps(doc).encode()  # json.dumps: writes NaN and Infinity too
        check_only_validation_errors(body, protocol=rng.choice(PROTOCOLS))


def test_importing_wire_and_inputs_imports_no_pandas_or_framework():
    script = (
        "import json, sys; import mlrig.serving.wire, mlrig.serving.inputs; "
        "print(json.dumps([m for m in ('pandas', 'torch', 'tensorflow', 'onnxruntime', "
        "'sklearn') if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == []
