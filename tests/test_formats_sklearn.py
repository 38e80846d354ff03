"""Model formats with scikit-learn: package, manifest, signature, ONNX export, load back."""

from __future__ import annotations

import json
from importlib import metadata

# The core test environment installs the sklearn extra: a missing package is a failure.
import numpy as np
import pytest
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression

from mlrig import datasets
from mlrig.errors import NotFoundError, ValidationError
from mlrig.formats import (
    FRAMEWORKS,
    MANIFEST,
    detect_framework,
    detect_framework_of_path,
    load_manifest,
    load_native,
    package_model,
)

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def iris():
    frame = datasets.load("iris")
    return frame[IRIS_FEATURES], frame["species"]


@pytest.fixture(scope="module")
def diabetes():
    frame = datasets.load("diabetes")
    return frame.drop(columns="target").to_numpy(), frame["target"].to_numpy()


@pytest.fixture(scope="module")
def classifier(iris):
    x, y = iris
    return LogisticRegression(max_iter=1000).fit(x, y)


@pytest.fixture(scope="module")
def regressor(diabetes):
    x, y = diabetes
    return RandomForestRegressor(n_estimators=10, max_depth=4, random_state=0).fit(x, y)


class MeanRegressor(RegressorMixin, BaseEstimator):
    """An estimator skl2onnx has no converter for."""

    def fit(self, x, y):
        self.mean_ = float(np.mean(y))
        self.n_features_in_ = np.asarray(x).shape[1]
        return self

    def predict(self, x):
        return np.full(len(x), self.mean_)


def _version(dist: str) -> str:
    return metadata.version(dist).split("+")[0]


def test_bundled_datasets():
    assert datasets.names() == ["diabetes", "iris"]
    iris = datasets.load("iris")
    assert list(iris.columns) == [*IRIS_FEATURES, "species"]
    assert iris.shape == (150, 5)
    assert sorted(iris["species"].unique().tolist()) == [0, 1, 2]
    assert datasets.load("diabetes").shape == (442, 11)
    assert datasets.target("diabetes") == "target"
    assert datasets.path("iris").name == "iris.csv"
    with pytest.raises(NotFoundError, match="no bundled dataset 'wine'"):
        datasets.path("wine")


def test_package_a_classifier(tmp_path, iris, classifier):
    x, _ = iris
    package = package_model(classifier, tmp_path / "pkg", sample=x)

    assert package.framework == "sklearn"
    assert package.model_type == "classification"
    assert package.files == [MANIFEST, "model.joblib", "model.onnx"]
    assert sorted(p.name for p in (tmp_path / "pkg").iterdir()) == package.files
    assert package.formats == ["sklearn", "onnx"]

    manifest = load_manifest(tmp_path / "pkg")
    assert manifest == json.loads(json.dumps(package.manifest))
    assert manifest["flavor"] == "sklearn.joblib"
    assert manifest["native"] == {"flavor": "sklearn.joblib", "path": "model.joblib"}
    assert manifest["model_class"].endswith("LogisticRegression")
    assert manifest["classes"] == [0, 1, 2]
    assert manifest["files"] == package.files

    inputs = package.signature["inputs"]
    assert inputs["kind"] == "dataframe"
    assert [c["name"] for c in inputs["columns"]] == IRIS_FEATURES
    assert {c["dtype"] for c in inputs["columns"]} == {"float64"}
    assert inputs["shape"] == [-1, 4]
    assert package.signature["outputs"] == {"kind": "tensor", "dtype": "int64", "shape": [-1]}

    assert f"scikit-learn=={_version('scikit-learn')}" in package.requirements
    assert f"numpy=={_version('numpy')}" in package.requirements
    assert f"pandas=={_version('pandas')}" in package.requirements  # the sample is a DataFrame

    onnx = package.onnx
    assert onnx["status"] == "ok"
    assert onnx["path"] == "model.onnx"
    assert onnx["converter"].startswith("skl2onnx ")
    assert onnx["opset"] == 17
    assert onnx["inputs"] == [{"name": "input", "dtype": "float32", "shape": [-1, 4]}]
    assert [o["name"] for o in onnx["outputs"]] == ["label", "probabilities"]  # no zipmap
    assert onnx["check"]["status"] in {"ok", "skipped"}  # skipped without onnxruntime


def test_load_native_gives_identical_predictions(tmp_path, iris, classifier):
    x, _ = iris
    package_model(classifier, tmp_path / "pkg", sample=x)
    loaded = load_native(tmp_path / "pkg")
    assert type(loaded) is LogisticRegression
    assert (loaded.predict(x) == classifier.predict(x)).all()
    assert (loaded.predict_proba(x) == classifier.predict_proba(x)).all()


def test_package_a_regressor(tmp_path, diabetes, regressor):
    x, _ = diabetes
    package = package_model(regressor, tmp_path / "pkg", sample=x[:20])

    assert package.model_type == "regression"
    assert package.signature == {
        "inputs": {"kind": "tensor", "dtype": "float64", "shape": [-1, 10]},
        "outputs": {"kind": "tensor", "dtype": "float64", "shape": [-1]},
    }
    assert not any(r.startswith("pandas==") for r in package.requirements)
    assert package.onnx["status"] == "ok"
    assert (tmp_path / "pkg" / "model.onnx").stat().st_size > 0
    assert "classes" not in package.manifest
    assert (load_native(tmp_path / "pkg").predict(x) == regressor.predict(x)).all()


def test_package_from_a_file(tmp_path, iris, classifier):
    import joblib

    joblib.dump(classifier, tmp_path / "clf.pkl")
    package = package_model(tmp_path / "clf.pkl", tmp_path / "pkg", sample=iris[0])
    assert package.framework == "sklearn"
    assert package.onnx["status"] == "ok"
    assert (load_native(tmp_path / "pkg").predict(iris[0]) == classifier.predict(iris[0])).all()


def test_package_without_a_sample(tmp_path, diabetes):
    x, y = diabetes
    model = LogisticRegression(max_iter=50).fit(x[:, :3], y > 150)  # fitted on an array
    package = package_model(model, tmp_path / "pkg")
    assert package.signature == {
        "inputs": {"kind": "tensor", "dtype": None, "shape": [-1, 3]},
        "outputs": None,
    }
    assert package.onnx["status"] == "ok"  # input width from n_features_in_
    assert package.onnx["check"] == {"status": "skipped", "reason": "no sample given"}


def test_no_converter_is_a_skipped_export(tmp_path, diabetes):
    x, y = diabetes
    package = package_model(MeanRegressor().fit(x, y), tmp_path / "pkg", sample=x[:5])
    assert package.onnx["status"] == "skipped"
    assert "no skl2onnx converter" in package.onnx["reason"]
    assert package.files == [MANIFEST, "model.joblib"]
    assert package.formats == ["sklearn"]
    assert package.model_type == "regression"


def test_a_failing_export_is_recorded_not_raised(tmp_path, monkeypatch, iris, classifier):
    from mlrig.formats._sklearn import SklearnFormat

    def broken(self, obj, target, sample):
        target.write_bytes(b"half written")
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(SklearnFormat, "export_onnx", broken)
    package = package_model(classifier, tmp_path / "pkg", sample=iris[0])
    assert package.onnx == {"status": "failed", "reason": "RuntimeError: converter exploded"}
    assert not (tmp_path / "pkg" / "model.onnx").exists()
    assert load_manifest(tmp_path / "pkg")["onnx"]["status"] == "failed"


def test_records_sample_and_cleanup_on_error(tmp_path, iris, classifier):
    x, _ = iris
    package = package_model(classifier, tmp_path / "pkg", sample=x.head(3).to_dict("records"))
    assert package.signature["inputs"]["kind"] == "dataframe"
    numpy_sample = package_model(classifier, tmp_path / "np", sample=x.to_numpy())
    assert numpy_sample.signature == package.signature  # fitted with names: they are kept
    with pytest.raises(ValidationError, match="does not fit the columns"):
        package_model(classifier, tmp_path / "bad", sample=[[1.0, 2.0]])
    assert list((tmp_path / "bad").iterdir()) == []  # nothing half-written is left


def test_package_folder_must_be_empty(tmp_path, classifier):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "stale.txt").write_text("x")
    with pytest.raises(ValidationError, match="is not empty"):
        package_model(classifier, tmp_path / "pkg")


def test_detect_framework(classifier):
    assert detect_framework(classifier) == "sklearn"
    assert FRAMEWORKS == ("sklearn", "torch", "tensorflow", "onnx")
    with pytest.raises(ValidationError) as raised:
        detect_framework({"not": "a model"})
    assert "builtins.dict" in raised.value.message
    assert "sklearn, torch, tensorflow, onnx" in raised.value.message


def test_detect_framework_of_path(tmp_path):
    expected = {
        "m.joblib": "sklearn",
        "m.pkl": "sklearn",
        "m.pt": "torch",
        "m.pth": "torch",
        "m.keras": "tensorflow",
        "m.onnx": "onnx",
    }
    for name, framework in expected.items():
        (tmp_path / name).write_bytes(b"")
        assert detect_framework_of_path(tmp_path / name) == framework
        assert detect_framework(str(tmp_path / name)) == framework
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    assert detect_framework_of_path(tmp_path / "sm") == "tensorflow"
    (tmp_path / "m.txt").write_text("")
    with pytest.raises(ValidationError, match=r"cannot tell the framework of 'm\.txt'"):
        detect_framework_of_path(tmp_path / "m.txt")
    with pytest.raises(NotFoundError):
        detect_framework_of_path(tmp_path / "missing.pkl")


def test_load_manifest_errors(tmp_path):
    with pytest.raises(NotFoundError, match="not an mlrig model package"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ValidationError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{}")
    with pytest.raises(ValidationError, match="lacks framework"):
        load_manifest(tmp_path)
