"""The ``sklearn`` and ``onnx`` runtimes: load a model package, predict, describe."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

# The core test environment installs the sklearn extra: a missing package is a failure.
import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression

from mlrig import datasets
from mlrig.backends import load_backend
from mlrig.errors import ConfigError, NotFoundError, PluginError, ValidationError
from mlrig.formats import package_model

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def iris_package(tmp_path_factory):
    frame = datasets.load("iris")
    x, y = frame[IRIS_FEATURES], frame["species"]
    model = LogisticRegression(max_iter=1000).fit(x, y)
    package = package_model(model, tmp_path_factory.mktemp("iris") / "pkg", sample=x)
    return package, model, x


@pytest.fixture(scope="module")
def diabetes_package(tmp_path_factory):
    frame = datasets.load("diabetes")
    x, y = frame.drop(columns="target").to_numpy(), frame["target"].to_numpy()
    model = RandomForestRegressor(n_estimators=10, max_depth=4, random_state=0).fit(x, y)
    package = package_model(model, tmp_path_factory.mktemp("diabetes") / "pkg", sample=x)
    return package, model, x


def _runtime(name: str, **options):
    return load_backend("runtimes", name).from_options(options, where=f"runtimes.{name}")


# -- sklearn --------------------------------------------------------------------------------


def test_sklearn_predictions_equal_the_model(iris_package):
    package, model, x = iris_package
    loaded = _runtime("sklearn").load(package.folder, package.manifest)
    expected = model.predict(x).tolist()
    assert loaded.predict(x.to_numpy().tolist()) == expected  # rows
    assert loaded.predict(x.to_numpy()) == expected  # array
    assert loaded.predict(x.to_dict("records")) == expected  # records
    assert loaded.predict(x[IRIS_FEATURES[::-1]]) == expected  # DataFrame, columns by name
    assert np.allclose(loaded.predict_proba(x.head(5)), model.predict_proba(x.head(5)))
    assert loaded.classes == [0, 1, 2]


def test_sklearn_regressor_and_metadata_from_the_manifest(diabetes_package):
    package, model, x = diabetes_package
    loaded = _runtime("sklearn").load(package.folder, {})  # the manifest fills in
    assert loaded.predict(x[:7]) == model.predict(x[:7]).tolist()
    assert not hasattr(loaded, "predict_proba")
    assert _runtime("sklearn").load(package.folder / "model.joblib", {}).predict(x[:1])


def test_sklearn_describe_and_threads(iris_package):
    package, _, x = iris_package
    facts = _runtime("sklearn").load(package.folder, package.manifest).describe()
    assert facts["runtime"] == "sklearn"
    assert isinstance(facts["threads"], int) and facts["threads"] >= 1
    loaded = _runtime("sklearn", threads=1).load(package.folder, package.manifest)
    assert loaded.describe()["threads"] == 1
    assert len(loaded.predict(x)) == len(x)


def test_sklearn_errors(iris_package, tmp_path):
    package, _, _ = iris_package
    loaded = _runtime("sklearn").load(package.folder, package.manifest)
    with pytest.raises(ValidationError, match="missing column"):
        loaded.predict([{"sepal_length": 1.0}])
    with pytest.raises(ValidationError):
        loaded.predict([[1.0, 2.0]])
    with pytest.raises(NotFoundError):
        _runtime("sklearn").load(tmp_path, {})
    with pytest.raises(ConfigError, match=r"runtimes\.sklearn\.threads"):
        _runtime("sklearn", threads=0)


# -- onnx -----------------------------------------------------------------------------------


@pytest.mark.heavy
def test_onnx_predictions_match_sklearn(iris_package, diabetes_package):
    importlib.import_module("onnxruntime")
    package, model, x = iris_package
    loaded = _runtime("onnx").load(package.folder, package.manifest)
    expected = model.predict(x).tolist()
    assert loaded.predict(x) == expected
    assert loaded.predict(x.to_dict("records")) == expected
    assert loaded.predict(x.to_numpy().tolist()) == expected
    assert np.allclose(loaded.predict_proba(x), model.predict_proba(x), atol=1e-5)

    package, model, x = diabetes_package
    loaded = _runtime("onnx").load(package.folder, {})
    assert np.allclose(loaded.predict(x), model.predict(x), rtol=1e-4, atol=1e-3)
    assert not hasattr(loaded, "predict_proba")


@pytest.mark.heavy
def test_onnx_describe_and_options(iris_package):
    importlib.import_module("onnxruntime")
    from mlrig.plugins.runtime_onnx import cuda_available

    package, _, x = iris_package
    loaded = _runtime("onnx", intra_op_threads=1, graph_optimization="basic").load(
        package.folder, package.manifest
    )
    facts = loaded.describe()
    assert facts["runtime"] == "onnx"
    assert facts["providers"][-1] == "CPUExecutionProvider"
    assert facts["device"] == ("cuda" if cuda_available() else "cpu")
    assert facts["intra_op_threads"] == 1
    assert facts["graph_optimization"] == "basic"
    cpu = _runtime("onnx", providers=["CPUExecutionProvider"]).load(package.folder, {})
    assert cpu.describe()["providers"] == ["CPUExecutionProvider"]
    assert cpu.describe()["device"] == "cpu"
    assert len(cpu.predict(x)) == len(x)


@pytest.mark.heavy
def test_onnx_errors(iris_package, tmp_path):
    importlib.import_module("onnxruntime")
    from mlrig.plugins.runtime_onnx import cuda_available

    package, _, _ = iris_package
    loaded = _runtime("onnx").load(package.folder, package.manifest)
    with pytest.raises(ValidationError, match="expects"):
        loaded.predict([[1.0, 2.0, 3.0]])
    with pytest.raises(ValidationError, match="missing column"):
        loaded.predict([{"sepal_length": 1.0}])
    with pytest.raises(ConfigError, match="are not in this onnxruntime"):
        _runtime("onnx", providers=["NoSuchExecutionProvider"]).load(package.folder, {})
    if not cuda_available():
        with pytest.raises(PluginError, match="could only create the CPU provider"):
            _runtime("onnx", providers=["CUDAExecutionProvider"]).load(package.folder, {})
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ValidationError, match="cannot load the model"):
        _runtime("onnx").load(tmp_path, {})
    with pytest.raises(ConfigError, match=r"runtimes\.onnx\.graph_optimization"):
        _runtime("onnx", graph_optimization="max")


@pytest.mark.heavy
def test_onnx_serves_a_mixed_type_dataframe_model(tmp_path):
    importlib.import_module("onnxruntime")
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = datasets.load("iris")
    x = frame[IRIS_FEATURES].assign(color=["red", "green", "blue"] * 50)
    encode = ColumnTransformer([("color", OneHotEncoder(), ["color"])], remainder="passthrough")
    model = make_pipeline(encode, LogisticRegression(max_iter=1000)).fit(x, frame["species"])
    package = package_model(model, tmp_path / "pkg", sample=x)
    assert [i["name"] for i in package.onnx["inputs"]] == [*IRIS_FEATURES, "color"]
    assert package.onnx["check"]["status"] == "ok"
    loaded = _runtime("onnx").load(package.folder, {})
    assert loaded.predict(x.to_dict("records")) == model.predict(x).tolist()
    assert loaded.predict(x) == model.predict(x).tolist()


@pytest.mark.heavy
def test_onnx_serves_a_packaged_onnx_file(iris_package, tmp_path):
    importlib.import_module("onnxruntime")
    package, model, x = iris_package
    onnx_package = package_model(package.folder / "model.onnx", tmp_path / "pkg")
    assert onnx_package.framework == "onnx"
    assert onnx_package.formats == ["onnx"]
    assert onnx_package.signature["inputs"] == {
        "kind": "tensor",
        "name": "input",
        "dtype": "float32",
        "shape": [-1, 4],
    }
    loaded = _runtime("onnx").load(onnx_package.folder, {})
    assert loaded.predict(x.to_numpy()) == model.predict(x).tolist()


@pytest.mark.heavy
def test_onnx_says_when_a_model_has_no_export(tmp_path):
    importlib.import_module("onnxruntime")
    from mlrig.formats import load_manifest

    frame = datasets.load("iris")
    model = LogisticRegression(max_iter=1000).fit(frame[IRIS_FEATURES], frame["species"])
    package_model(model, tmp_path / "pkg")
    (tmp_path / "pkg" / "model.onnx").unlink()
    manifest = {**load_manifest(tmp_path / "pkg"), "onnx": {"status": "skipped", "reason": "x"}}
    with pytest.raises(NotFoundError, match="no ONNX export"):
        _runtime("onnx").load(tmp_path / "pkg", manifest)


@pytest.mark.heavy
def test_onnx_cpu_fallback_is_quiet(iris_package):
    """A fresh process loads and predicts with the default providers: nothing on stderr."""
    importlib.import_module("onnxruntime")
    package, _, x = iris_package
    script = textwrap.dedent(
        f"""
        import json, warnings
        warnings.simplefilter("error")
        from mlrig.backends import load_backend
        runtime = load_backend("runtimes", "onnx").from_options({{}}, where="runtimes.onnx")
        loaded = runtime.load({str(package.folder)!r}, {{}})
        print(json.dumps({{"predictions": loaded.predict({x.head(3).to_numpy().tolist()!r}),
                          "describe": loaded.describe()}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    result = json.loads(done.stdout)
    assert result["predictions"] == [0, 0, 0]
    assert "CPUExecutionProvider" in result["describe"]["providers"]


@pytest.mark.heavy
@pytest.mark.gpu
def test_onnx_runs_on_cuda_when_usable(iris_package):
    importlib.import_module("onnxruntime")
    from mlrig.plugins.runtime_onnx import cuda_probe

    usable, reason = cuda_probe()
    if not usable:
        pytest.skip(f"needs a CUDA GPU: {reason[:300]}")
    package, model, x = iris_package
    loaded = _runtime("onnx").load(package.folder, package.manifest)
    facts = loaded.describe()
    assert facts["device"] == "cuda"
    # TensorRT comes first where its libraries are installed too
    assert facts["providers"][0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert "CUDAExecutionProvider" in facts["providers"]
    assert facts["device_id"] == 0
    assert loaded.predict(x) == model.predict(x).tolist()
    explicit = _runtime("onnx", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert explicit.load(package.folder, {}).describe()["device"] == "cuda"


@pytest.mark.heavy
def test_onnx_refuses_rows_of_the_wrong_width_instead_of_recutting_them(iris_package):
    """8 rows of 2 features hold as many numbers as 4 rows of 4: still a 422, not 4
    predictions for rows that were never sent."""
    package, _, _ = iris_package
    model = _runtime("onnx").load(package.folder, package.manifest)
    rows = [[5.1, 3.5]] * 8
    with pytest.raises(ValidationError, match="shape"):
        model.predict(rows)
    with pytest.raises(ValidationError, match="shape"):
        model.predict(np.asarray(rows, dtype=np.float32))
    assert len(model.predict([[5.1, 3.5, 1.4, 0.2]] * 2)) == 2
