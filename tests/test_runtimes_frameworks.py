"""The ``torch`` and ``tensorflow`` runtimes, and the ONNX exports of their networks served
by ``onnx``: registered through the registry, downloaded like the data plane does, and
compared with the framework's own predictions (within 1e-5)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlrig.backends import load_backend
from mlrig.errors import MlrigError, NotFoundError, ValidationError
from mlrig.formats import package_model
from mlrig.testing.fixtures import make_platform
from mlrig.testing.serving import breast_cancer_data

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _runtime(name: str, **options: Any) -> Any:
    return load_backend("runtimes", name).from_options(options, where=f"runtimes.{name}")


def _download(platform: Any, version: dict[str, Any], folder: Path) -> Path:
    platform.registry.download_version(version["name"], version["version"], folder)
    return folder


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Any:
    platform = make_platform(tmp_path_factory.mktemp("home"))
    yield platform
    platform.close()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return breast_cancer_data().x32


def test_importing_the_runtimes_imports_no_framework() -> None:
    script = textwrap.dedent(
        """
        import json, sys
        import mlrig.plugins.runtime_torch, mlrig.plugins.runtime_tensorflow
        import mlrig.plugins.runtime_onnx, mlrig.plugins._tensor_models, mlrig.testing.serving
        print(json.dumps([m for m in ("torch", "tensorflow", "keras", "onnxruntime", "numpy")
                          if m in sys.modules]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == []


# -- torch ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_version(platform: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    importlib.import_module("torch")
    from mlrig.testing.serving import register_torch_model

    version = register_torch_model(platform)
    folder = _download(platform, version, tmp_path_factory.mktemp("torch"))
    return {"view": version, "folder": folder}


@pytest.mark.heavy
def test_torch_runtime_equals_torch(torch_version: dict[str, Any], x: np.ndarray) -> None:
    from mlrig.testing.serving import breast_cancer_torch_model, torch_predict_proba

    expected = torch_predict_proba(breast_cancer_torch_model(), x)
    loaded = _runtime("torch").load(torch_version["folder"], torch_version["view"])
    loaded.warm_up(x[:5])
    assert loaded.batching_helps is True
    assert np.allclose(loaded.predict_proba(x), expected, **TOLERANCE)
    assert loaded.predict(x) == expected.argmax(axis=1).tolist()
    assert loaded.predict(x.tolist()[:3]) == expected.argmax(axis=1).tolist()[:3]  # rows
    assert loaded.output == "logits"  # the Sequential ends in a Linear layer
    labels, proba = loaded.predict_with_proba(x)  # one forward pass for both
    assert labels == loaded.predict(x) and np.allclose(proba, expected, **TOLERANCE)
    facts = loaded.describe()
    assert facts["runtime"] == "torch"
    assert facts["flavor"] == "torch.module"
    assert facts["device"] == "cpu"
    assert facts["dtype"] == "float32"
    assert isinstance(facts["threads"], int) and facts["threads"] >= 1


@pytest.mark.heavy
def test_torch_export_served_by_onnx_equals_torch(
    torch_version: dict[str, Any], x: np.ndarray
) -> None:
    importlib.import_module("onnxruntime")
    from mlrig.testing.serving import breast_cancer_torch_model, torch_predict_proba

    expected = torch_predict_proba(breast_cancer_torch_model(), x)
    loaded = _runtime("onnx").load(torch_version["folder"], torch_version["view"])
    assert loaded.output == "logits"  # read off the graph: the output comes out of a Gemm
    assert np.allclose(loaded.predict_proba(x), expected, **TOLERANCE)
    assert loaded.predict(x) == expected.argmax(axis=1).tolist()
    labels, proba = loaded.predict_with_proba(x)
    assert labels == loaded.predict(x) and np.allclose(proba, expected, **TOLERANCE)


@pytest.mark.heavy
def test_torch_without_model_type_returns_the_raw_output(
    torch_version: dict[str, Any], x: np.ndarray
) -> None:
    import torch

    from mlrig.testing.serving import breast_cancer_torch_model

    loaded = _runtime("torch").load(torch_version["folder"], {})  # the manifest only
    assert not hasattr(loaded, "predict_proba")
    with torch.no_grad():
        logits = breast_cancer_torch_model()(torch.from_numpy(x[:7])).numpy()
    assert np.allclose(loaded.predict(x[:7]), logits, **TOLERANCE)


@pytest.mark.heavy
def test_torch_torchscript_builder_and_regression(tmp_path: Path, x: np.ndarray) -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(30, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    with torch.no_grad():
        expected = net(torch.from_numpy(x[:9])).numpy()[:, 0]  # (N, 1): one value per row

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's own notice
        script = torch.jit.script(net)
    scripted = package_model(script, tmp_path / "ts", sample=x[:5])
    loaded = _runtime("torch").load(scripted.folder, {})
    assert loaded.describe()["flavor"] == "torch.torchscript"
    assert np.allclose(loaded.predict(x[:9]), expected, **TOLERANCE)

    eager = package_model(net, tmp_path / "eager", sample=x[:5])
    builder = _runtime("torch", builder=f"{__name__}:build_regressor")
    loaded = builder.load(eager.folder, {})
    assert loaded.describe()["flavor"] == "torch.state_dict"
    assert np.allclose(loaded.predict(x[:9]), expected, **TOLERANCE)
    with pytest.raises(ValidationError, match="not importable"):
        _runtime("torch", builder="no.such.module:f").load(eager.folder, {})
    with pytest.raises(ValidationError, match="does not fit"):
        _runtime("torch", builder=f"{__name__}:build_other").load(eager.folder, {})


def build_regressor() -> Any:
    """The builder of the state-dict test: the network's architecture, untrained."""
    import torch

    return torch.nn.Sequential(torch.nn.Linear(30, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def build_other() -> Any:
    import torch

    return torch.nn.Sequential(torch.nn.Linear(30, 3))


@pytest.mark.heavy
def test_torch_errors(torch_version: dict[str, Any], tmp_path: Path) -> None:
    importlib.import_module("torch")
    loaded = _runtime("torch").load(torch_version["folder"], torch_version["view"])
    with pytest.raises(ValidationError, match="expects"):
        loaded.predict([[1.0, 2.0, 3.0]])
    with pytest.raises(ValidationError, match=r"expects \[-1, 30\]"):
        loaded.predict(np.zeros((1, 60)))  # not re-cut into two rows
    with pytest.raises(ValidationError, match="empty"):
        loaded.predict(np.zeros((0, 30), dtype=np.float32))
    with pytest.raises(ValidationError):
        loaded.predict([["a"] * 30])
    with pytest.raises(NotFoundError, match="no torch model package"):
        _runtime("torch").load(tmp_path, {})
    with pytest.raises(MlrigError, match=r"sees no GPU|not a torch device"):
        _runtime("torch", device="cuda:0" if not _torch_cuda() else "tpu").load(
            torch_version["folder"], {}
        )


def _torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# -- tensorflow ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf_version(platform: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    importlib.import_module("tensorflow")
    importlib.import_module("tf2onnx")
    from mlrig.testing.serving import register_tf_model

    version = register_tf_model(platform)
    folder = _download(platform, version, tmp_path_factory.mktemp("tf"))
    return {"view": version, "folder": folder}


@pytest.mark.heavy
def test_tensorflow_runtime_equals_keras(tf_version: dict[str, Any], x: np.ndarray) -> None:
    from mlrig.testing.serving import breast_cancer_keras_model, keras_predict_proba

    expected = keras_predict_proba(breast_cancer_keras_model(), x)
    loaded = _runtime("tensorflow").load(tf_version["folder"], tf_version["view"])
    loaded.warm_up(x[:5])
    assert loaded.output == "probabilities"  # the last Dense layer's softmax
    assert np.allclose(loaded.predict_proba(x), expected, **TOLERANCE)
    assert loaded.predict(x) == expected.argmax(axis=1).tolist()
    assert loaded.predict(x[:1]) == expected.argmax(axis=1).tolist()[:1]  # one row, same graph
    facts = loaded.describe()
    assert facts["runtime"] == "tensorflow"
    assert facts["flavor"] == "keras"
    assert facts["device"] in ("cpu", "gpu")


@pytest.mark.heavy
def test_keras_export_served_by_onnx_equals_keras(
    tf_version: dict[str, Any], x: np.ndarray
) -> None:
    importlib.import_module("onnxruntime")
    from mlrig.testing.serving import breast_cancer_keras_model, keras_predict_proba

    assert tf_version["view"]["artifacts"][-1]["path"] == "model.onnx"
    expected = keras_predict_proba(breast_cancer_keras_model(), x)
    loaded = _runtime("onnx").load(tf_version["folder"], tf_version["view"])
    assert loaded.output == "probabilities"  # the graph's output comes out of a Softmax
    assert np.allclose(loaded.predict_proba(x), expected, **TOLERANCE)
    assert loaded.predict(x) == expected.argmax(axis=1).tolist()


@pytest.mark.heavy
def test_tensorflow_saved_model(tmp_path: Path, x: np.ndarray) -> None:
    from mlrig.formats._tensorflow import _tf

    tf = _tf()

    class Affine(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(np.linspace(-1, 1, 30, dtype=np.float32)[:, None] / 1000)

        @tf.function(input_signature=[tf.TensorSpec((None, 30), tf.float32)])
        def __call__(self, x: Any) -> Any:
            return {"score": tf.matmul(x, self.w)}

    module = Affine()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures=module.__call__)
    package = package_model(tmp_path / "sm", tmp_path / "pkg", sample=x[:5])
    assert package.manifest["flavor"] == "tensorflow.saved_model"
    loaded = _runtime("tensorflow").load(package.folder, {})
    expected = (x[:6] @ module.w.numpy())[:, 0]
    assert np.allclose(loaded.predict(x[:6]), expected, **TOLERANCE)
    assert loaded.describe()["flavor"] == "tensorflow.saved_model"


@pytest.mark.heavy
def test_tensorflow_errors(tf_version: dict[str, Any], tmp_path: Path) -> None:
    loaded = _runtime("tensorflow").load(tf_version["folder"], tf_version["view"])
    with pytest.raises(ValidationError, match="expects"):
        loaded.predict([[1.0, 2.0]])
    with pytest.raises(ValidationError, match="empty"):
        loaded.predict([])
    with pytest.raises(NotFoundError, match="no TensorFlow model package"):
        _runtime("tensorflow").load(tmp_path, {})


@pytest.mark.heavy
def test_torch_threads_follow_the_replica_count(
    torch_version: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from mlrig.contracts.runtime import REPLICAS_ENV, cpu_count

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(REPLICAS_ENV, str(cpu_count() * 2))
        loaded = _runtime("torch").load(torch_version["folder"], torch_version["view"])
        assert loaded.describe()["threads"] == 1
        pinned = _runtime("torch", threads=2).load(torch_version["folder"], {})
        assert pinned.describe()["threads"] == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.heavy
@pytest.mark.gpu
def test_torch_serves_on_the_gpu(torch_version: dict[str, Any], x: np.ndarray) -> None:
    if not _torch_cuda():
        pytest.skip("needs a CUDA build of torch (this one is CPU-only)")
    from mlrig.testing.serving import breast_cancer_torch_model, torch_predict_proba

    loaded = _runtime("torch").load(torch_version["folder"], torch_version["view"])
    assert loaded.describe()["device"].startswith("cuda")
    expected = torch_predict_proba(breast_cancer_torch_model(), x)
    assert np.allclose(loaded.predict_proba(x), expected, **TOLERANCE)
    loaded.close()


@pytest.mark.heavy
def test_tensorflow_runtime_is_quiet_and_takes_its_threads(tf_version: dict[str, Any]) -> None:
    """In a fresh process: nothing on stderr (TensorFlow's C++ start-up lines, cuInit
    failures on a CPU machine), and the thread count is taken (TensorFlow had not run)."""
    script = textwrap.dedent(
        f"""
        import json
        from mlrig.backends import load_backend
        runtime = load_backend("runtimes", "tensorflow").from_options(
            {{"threads": 1}}, where="runtimes.tensorflow")
        loaded = runtime.load({str(tf_version["folder"])!r}, {{"model_type": "classification"}})
        print(json.dumps({{"predictions": loaded.predict([[0.0] * 30, [1.0] * 30]),
                          "describe": loaded.describe()}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    result = json.loads(done.stdout)
    assert len(result["predictions"]) == 2
    assert result["describe"]["threads"] == 1


@pytest.mark.heavy
def test_torch_serves_the_export_program_where_the_class_is_not_importable(
    tmp_path: Path, x: np.ndarray
) -> None:
    """A module whose class lived in someone's script: model.pt cannot be unpickled here,
    the torch.export program model.pt2 serves instead, with the same answers."""
    importlib.import_module("torch")
    script = textwrap.dedent(
        f"""
        import numpy as np, torch
        from mlrig.formats import package_model

        class Scorer(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(30, 3)

            def forward(self, x):
                return torch.softmax(self.linear(x / 100.0), dim=1)

        torch.manual_seed(0)
        x = np.load({str(tmp_path / "x.npy")!r})
        model = Scorer()
        package_model(model, {str(tmp_path / "pkg")!r}, sample=x[:5])
        with torch.no_grad():
            np.save({str(tmp_path / "expected.npy")!r}, model(torch.from_numpy(x)).numpy())
        """
    )
    np.save(tmp_path / "x.npy", x[:50])
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    expected = np.load(tmp_path / "expected.npy")
    loaded = _runtime("torch").load(tmp_path / "pkg", {"model_type": "classification"})
    assert loaded.describe()["flavor"] == "torch.export"
    assert loaded.output == "auto"  # a custom forward: the last layer tells nothing
    assert np.allclose(loaded.predict_proba(x[:50]), expected, **TOLERANCE)  # softmax kept
    assert loaded.predict(x[:50]) == expected.argmax(axis=1).tolist()
