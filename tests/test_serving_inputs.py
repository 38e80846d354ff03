"""Checking requests against a version's signature: the batch the model gets, or a 422."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from mlrig.errors import ValidationError
from mlrig.serving.inputs import InputSchema
from mlrig.serving.wire import parse_request

COLUMNS = ["a", "b", "c"]


def frame_signature(dtypes=("float64", "float64", "float64"), names=COLUMNS) -> dict:
    columns = [{"name": n, "dtype": d} for n, d in zip(names, dtypes, strict=True)]
    return {"inputs": {"kind": "dataframe", "columns": columns, "shape": [-1, len(columns)]}}


def tensor_signature(dtype="float32", shape=(-1, 3)) -> dict:
    return {"inputs": {"kind": "tensor", "dtype": dtype, "shape": list(shape)}}


def batch(schema: InputSchema, doc, **kwargs) -> np.ndarray:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return schema.to_batch(parse_request(body, **kwargs))


def refused(schema: InputSchema, doc, **kwargs) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        batch(schema, doc, **kwargs)
    orjson.dumps(info.value.details)  # the data plane renders the details with orjson
    return info.value


@pytest.fixture
def frame() -> InputSchema:
    return InputSchema.from_signature(frame_signature(), allow_nan=False)


@pytest.fixture
def tensor() -> InputSchema:
    return InputSchema.from_signature(tensor_signature(), allow_nan=False)


# -- every wire form gives the same batch ------------------------------------------------

V2_ROWS = {
    "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]
}
V2_COLUMNS = {
    "inputs": [
        {"name": n, "shape": [2], "datatype": "FP64", "data": v}
        for n, v in (("c", [3, 6]), ("a", [1, 4]), ("b", [2, 5]))
    ]
}


@pytest.mark.parametrize(
    "doc",
    [
        {"inputs": [[1, 2, 3], [4, 5, 6]]},
        {"inputs": {"b": [2, 5], "a": [1, 4], "c": [3, 6]}},
        {"inputs": [{"c": 3, "b": 2, "a": 1}, {"a": 4, "b": 5, "c": 6}]},
        {"dataframe_split": {"columns": ["c", "a", "b"], "data": [[3, 1, 2], [6, 4, 5]]}},
        {"dataframe_split": {"data": [[1, 2, 3], [4, 5, 6]]}},
        {"dataframe_records": [{"a": 1, "b": 2, "c": 3}, {"b": 5, "a": 4, "c": 6}]},
        {"instances": [[1, 2, 3], [4, 5, 6]]},
        {"instances": [{"a": 1, "b": 2, "c": 3}, {"a": 4, "b": 5, "c": 6}]},
        V2_ROWS,
        V2_COLUMNS,
    ],
)
def test_every_wire_form_gives_the_signature_order_and_dtype(frame, doc):
    x = batch(frame, doc)
    assert x.dtype == np.float64 and x.shape == (2, 3)
    np.testing.assert_array_equal(x, [[1, 2, 3], [4, 5, 6]])


def test_csv_columns_are_put_in_signature_order(frame):
    x = batch(frame, b"c,b,a\n3,2,1\n", content_type="text/csv")
    np.testing.assert_array_equal(x, [[1, 2, 3]])


def test_tensor_signature_casts_to_its_dtype(tensor):
    x = batch(tensor, {"inputs": [[1, 2.5, True]]})
    assert x.dtype == np.float32 and x.tolist() == [[1.0, 2.5, 1.0]]
    x64 = batch(tensor, V2_ROWS)
    assert x64.dtype == np.float32


def test_tensor_signature_takes_named_columns_in_the_order_sent(tensor):
    # a tensor model has no column names: named values are taken positionally
    x = batch(tensor, {"dataframe_split": {"columns": ["z", "y", "x"], "data": [[1, 2, 3]]}})
    assert x.tolist() == [[1, 2, 3]]


def test_images_keep_their_dimensions():
    schema = InputSchema.from_signature(tensor_signature("float32", (-1, 2, 2)), allow_nan=False)
    x = batch(schema, {"inputs": [[[1, 2], [3, 4]]]})
    assert x.shape == (1, 2, 2)
    v2 = {"inputs": [{"name": "i", "shape": [1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert batch(schema, v2).shape == (1, 2, 2)
    error = refused(schema, {"inputs": [[1, 2, 3, 4]]})
    assert "[1, 4]" in error.message and "[-1, 2, 2]" in error.message


def test_a_one_feature_model_takes_a_flat_list():
    schema = InputSchema.from_signature(tensor_signature("float64", (-1, 1)), allow_nan=False)
    assert batch(schema, {"inputs": [1, 2, 3]}).shape == (3, 1)
    vector = InputSchema.from_signature(tensor_signature("float64", (-1,)), allow_nan=False)
    assert batch(vector, {"inputs": [[1], [2]]}).shape == (2,)
    assert batch(vector, {"instances": [1, 2]}).shape == (2,)


def test_integer_and_boolean_signatures():
    ints = InputSchema.from_signature(tensor_signature("int32", (-1, 2)), allow_nan=False)
    assert batch(ints, {"inputs": [[1, 2.0]]}).dtype == np.int32
    assert "not an integer" in refused(ints, {"inputs": [[1, 2.5]]}).message
    assert "out of the range of int32" in refused(ints, {"inputs": [[1, 2**40]]}).message
    unsigned = InputSchema.from_signature(tensor_signature("uint8", (-1, 1)), allow_nan=False)
    assert "range" in refused(unsigned, {"inputs": [[-1]]}).message
    bools = InputSchema.from_signature(tensor_signature("bool", (-1, 2)), allow_nan=False)
    assert batch(bools, {"inputs": [[True, 0]]}).tolist() == [[True, False]]
    assert "boolean" in refused(bools, {"inputs": [[2, 0]]}).message


def test_mixed_dataframe_gives_an_object_batch_checked_per_column():
    schema = InputSchema.from_signature(
        frame_signature(("float64", "object", "int64"), ["x", "city", "n"]), allow_nan=False
    )
    x = batch(schema, {"dataframe_records": [{"n": 2, "city": "Paris", "x": 1.5}]})
    assert x.dtype == object and x.tolist() == [[1.5, "Paris", 2]]
    error = refused(schema, {"inputs": {"x": ["a"], "city": ["b"], "n": [1]}})
    assert "'x'" in error.message and "not a number" in error.message
    nan = InputSchema.from_signature(
        frame_signature(("float64", "object"), ["x", "city"]), allow_nan=True
    )
    out = batch(nan, {"inputs": [[None, "Rome"]]})
    assert np.isnan(out[0, 0]) and out[0, 1] == "Rome"


def test_no_signature_takes_any_rectangular_numeric_batch():
    schema = InputSchema.from_signature(None, allow_nan=False)
    assert batch(schema, {"inputs": [[1, 2], [3, 4]]}).shape == (2, 2)
    assert batch(schema, {"inputs": [{"p": 1, "q": 2}]}).tolist() == [[1, 2]]
    v2 = batch(schema, V2_ROWS)
    assert v2.dtype == np.float32  # the declared v2 datatype, with nothing else to go by
    assert "flat list" in refused(schema, {"inputs": [1, 2]}).message
    assert "text" in refused(schema, {"inputs": [["x", 1]]}).message
    unknown = InputSchema.from_signature({"inputs": {"kind": "tensors", "items": []}}, allow_nan=0)
    assert unknown.shape is None and unknown.features is None


# -- refusals name the expected signature ------------------------------------------------


def test_wrong_feature_count_names_the_signature(frame):
    error = refused(frame, {"inputs": [[1, 2]]})
    assert error.http_status == 422
    assert "2 values" in error.message and "3 float64 features" in error.message
    assert "a, b, c" in error.message
    assert error.details["expected"]["features"] == 3
    assert error.details["expected"]["columns"][0] == {"name": "a", "dtype": "float64"}
    assert error.details["problem"] == "shape"


def test_many_columns_are_shortened_in_the_message_not_in_details():
    names = [f"feature_{i}" for i in range(30)]
    schema = InputSchema.from_signature(frame_signature(["float64"] * 30, names), allow_nan=0)
    error = refused(schema, {"inputs": [[1.0] * 29]})
    assert "feature_7" in error.message and "feature_29" not in error.message
    assert "22 more" in error.message
    assert len(error.details["expected"]["columns"]) == 30
    error = refused(schema, {"dataframe_records": [{"feature_0": 1.0}]})
    assert "'feature_8' (and 21 more)" in error.message


@pytest.mark.parametrize(
    ("doc", "words", "problem"),
    [
        ({"inputs": [[1, 2, "x"]]}, "row 0, value 2 ('c') is not a number", "type"),
        ({"inputs": [[1, 2, 3], [1, 2]]}, "different lengths", "ragged"),
        ({"inputs": [[1, 2, [3]]]}, "rectangular", "ragged"),
        ({"inputs": [[1, 2, {"a": 1}]]}, "an object, not a number", "type"),
        ({"inputs": [[1, 2, None]]}, "is null", "nan"),
        ({"inputs": [[1, 2, 3]], "request_id": "r"}, None, None),
        ({"inputs": {"a": [1], "b": [2]}}, "misses column(s) 'c'", "names"),
        ({"inputs": {"a": [1], "b": [2], "c": [3], "d": [4]}}, "unknown column(s) 'd'", "names"),
        ({"dataframe_records": [{"a": 1, "b": 2}]}, "record 0 misses column(s) 'c'", "names"),
        ({"dataframe_records": [{"a": 1, "b": 2, "c": 3, "e": 1}]}, "unknown column", "names"),
        ({"dataframe_split": {"columns": ["a", "a", "b"], "data": [[1, 2, 3]]}}, "c", "names"),
        ({"inputs": [[[1, 2, 3]]]}, "shape [1, 1, 3]", "shape"),
        ({"inputs": [1, 2, 3]}, "flat list of 3 values", "shape"),
    ],
)
def test_refusals(frame, doc, words, problem):
    if words is None:
        assert batch(frame, doc).shape == (1, 3)
        return
    error = refused(frame, doc)
    assert words in error.message, error.message
    assert error.details["problem"] == problem
    assert "the model expects rows of 3 float64 features named a, b, c" in error.message


def test_records_for_a_tensor_model_are_refused(tensor):
    error = refused(tensor, {"dataframe_records": [{"a": 1, "b": 2, "c": 3}]})
    assert "send rows" in error.message


def test_empty_batches(frame):
    v2 = {"inputs": [{"name": "x", "shape": [0, 3], "datatype": "FP32", "data": []}]}
    with pytest.raises(ValidationError, match="empty"):
        batch(frame, v2)
    with pytest.raises(ValidationError, match="empty"):
        batch(frame, {"inputs": [[]]})
    with pytest.raises(ValidationError, match="empty"):
        batch(InputSchema.from_signature(None, allow_nan=False), {"inputs": [[]]})


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_refused_unless_allowed(value):
    body = f'{{"inputs": [[1, 2, {value}]]}}'.encode()
    strict = InputSchema.from_signature(frame_signature(), allow_nan=False)
    error = refused(strict, body)
    assert "row 0, value 2 ('c')" in error.message and "refused" in error.message
    assert error.details["problem"] == "nan"
    lenient = InputSchema.from_signature(frame_signature(), allow_nan=True)
    assert not np.isfinite(batch(lenient, body)[0, 2])


def test_nulls_are_nan_when_allowed():
    lenient = InputSchema.from_signature(tensor_signature("float32"), allow_nan=True)
    x = batch(lenient, {"inputs": [[1, None, 3]]})
    assert x.dtype == np.float32 and np.isnan(x[0, 1]) and x[0, 2] == 3
    body = json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [[1, float("nan"), 3]]}})
    assert np.isnan(batch(lenient, body.encode())[0, 1])


def test_too_large_for_float32_is_refused_without_warnings(tensor, recwarn):
    error = refused(tensor, {"inputs": [[1e300, 1, 2]]})
    assert "too large" in error.message
    assert "too large" in refused(tensor, {"inputs": [[3.5e38, 1, 2]]}).message
    assert batch(tensor, {"inputs": [[3.0e38, -3.0e38, 2]]})[0, 0] == np.float32(3.0e38)
    assert not [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)]


def test_huge_integers_from_a_nan_body():
    # a body with NaN goes through Python's json, which reads 400-digit integers; they are
    # refused as orjson refuses them in other bodies (where they become floats)
    lenient = InputSchema.from_signature(tensor_signature("float64"), allow_nan=True)
    error = refused(lenient, b'{"inputs": [[NaN, ' + b"9" * 400 + b", 1]]}")
    assert "64-bit" in error.message
    x = batch(lenient, b'{"inputs": [[NaN, 18446744073709551615, 1]]}')
    assert np.isnan(x[0, 0]) and x[0, 1] == 2.0**64


def test_bad_signatures_are_a_validation_error():
    for signature in (
        {"inputs": {"kind": "dataframe", "columns": []}},
        {"inputs": {"kind": "dataframe", "columns": [{"dtype": "float64"}]}},
        {"inputs": {"kind": "tensor", "dtype": "float64"}},
        {"inputs": {"kind": "tensor", "dtype": "no-such-dtype", "shape": [-1, 2]}},
    ):
        with pytest.raises(ValidationError, match="signature"):
            InputSchema.from_signature(signature, allow_nan=False)


def test_column_orders_are_cached_but_bounded(frame):
    for i in range(100):
        names = ["a", "b", "c"] if i % 2 else ["c", "b", "a"]
        batch(frame, {"dataframe_split": {"columns": names, "data": [[1, 2, 3]]}})
    assert 1 <= len(frame._orders) <= 64


@pytest.mark.heavy  # the packager exports to ONNX and checks the export with onnxruntime
def test_breast_cancer_signature_as_packaged(platform):
    """The signature mlrig.formats records for a scaler + logistic regression on 30 features."""
    from mlrig.testing.serving import breast_cancer_data, register_breast_cancer_model

    version = register_breast_cancer_model(platform)
    signature = version.get("signature") or (version.get("metadata") or {}).get("signature")
    if signature is None:
        pytest.skip("the version view does not carry the signature")
    schema = InputSchema.from_signature(signature, allow_nan=False)
    data = breast_cancer_data()
    x = batch(schema, {"inputs": data.x[:5].tolist()})
    np.testing.assert_allclose(x, data.x[:5])
    assert schema.features == 30
