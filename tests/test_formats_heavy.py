"""Model formats with torch and TensorFlow/Keras, and what ``import mlrig.formats`` imports."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import warnings

import pytest

from mlrig.formats import MANIFEST, load_native, package_model

HEAVY_MODULES = ("torch", "tensorflow", "keras", "onnx", "onnxruntime", "sklearn", "skl2onnx",
                 "tf2onnx", "pandas", "numpy")  # fmt: skip


def test_importing_formats_and_runtimes_imports_no_framework():
    script = textwrap.dedent(
        f"""
        import json, sys
        import mlrig.datasets, mlrig.formats, mlrig.formats.batches, mlrig.formats.stdio
        import mlrig.plugins.runtime_onnx, mlrig.plugins.runtime_sklearn
        print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == []


def _onnx_predict(folder, x):
    from mlrig.backends import load_backend

    runtime = load_backend("runtimes", "onnx").from_options({}, where="runtimes.onnx")
    return runtime.load(folder, {}).predict(x)


# -- torch ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return importlib.import_module("torch")


@pytest.fixture(scope="module")
def net(torch):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = torch.nn.Linear(4, 8)
            self.out = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.out(torch.relu(self.hidden(x)))

    globals()["Net"] = Net  # picklable as test_formats_heavy.Net
    Net.__qualname__ = "Net"
    torch.manual_seed(0)
    return Net()


@pytest.fixture(scope="module")
def sample():
    import numpy as np

    return np.random.default_rng(0).normal(size=(8, 4))


@pytest.mark.heavy
def test_package_a_torch_module(tmp_path, torch, net, sample):
    importlib.import_module("onnxruntime")
    import numpy as np

    package = package_model(net, tmp_path / "pkg", sample=sample)
    assert package.framework == "torch"
    assert package.model_type is None
    assert package.files == [MANIFEST, "model.onnx", "model.pt", "model.pt2", "state_dict.pt"]
    native = package.manifest["native"]
    assert native["flavor"] == "torch.module"
    assert native["program"] == {"status": "ok", "path": "model.pt2"}
    assert package.signature == {
        "inputs": {"kind": "tensor", "dtype": "float32", "shape": [-1, 4]},
        "outputs": {"kind": "tensor", "dtype": "float32", "shape": [-1, 3]},
    }
    assert any(r.startswith("torch==2.") for r in package.requirements)
    assert package.onnx["status"] == "ok"
    assert package.onnx["inputs"] == [{"name": "input", "dtype": "float32", "shape": [-1, 4]}]
    assert package.onnx["check"]["status"] == "ok"

    with torch.no_grad():
        expected = net(torch.tensor(sample, dtype=torch.float32)).numpy()
    assert np.allclose(_onnx_predict(package.folder, sample), expected, atol=1e-5)
    assert np.allclose(_onnx_predict(package.folder, sample[:1]), expected[:1], atol=1e-5)

    loaded = load_native(package.folder)
    assert type(loaded).__name__ == "Net"
    with torch.no_grad():
        again = loaded(torch.tensor(sample, dtype=torch.float32))
    assert torch.equal(again, torch.tensor(expected))
    state = torch.load(package.folder / "state_dict.pt", weights_only=True)
    assert set(state) == set(net.state_dict())


@pytest.mark.heavy
def test_torch_module_loads_back_without_its_class(tmp_path, torch, net, sample):
    """Where the class is not importable, the torch.export program stands in."""
    package_model(net, tmp_path / "pkg", sample=sample)
    script = textwrap.dedent(
        f"""
        import json, torch
        from mlrig.formats import load_native
        model = load_native({str(tmp_path / "pkg")!r})
        x = torch.tensor({sample.tolist()!r}, dtype=torch.float32)
        print(json.dumps(model(x).detach().tolist()))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=True,
    )
    with torch.no_grad():
        expected = net(torch.tensor(sample, dtype=torch.float32))
    assert torch.allclose(torch.tensor(json.loads(done.stdout)), expected, atol=1e-6)


@pytest.mark.heavy
def test_package_torchscript_and_no_sample(tmp_path, torch, net, sample):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, still supported
        scripted = torch.jit.trace(net, torch.zeros(2, 4))
    package = package_model(scripted, tmp_path / "ts", sample=sample)
    assert package.manifest["native"]["flavor"] == "torch.torchscript"
    assert "model.torchscript.pt" in package.files
    x = torch.tensor(sample, dtype=torch.float32)
    assert torch.equal(load_native(tmp_path / "ts")(x), scripted(x))

    bare = package_model(net, tmp_path / "bare")
    assert bare.onnx["status"] == "skipped"
    assert "sample" in bare.onnx["reason"]
    assert bare.signature == {"inputs": None, "outputs": None}


# -- tensorflow / keras -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    importlib.import_module("tensorflow")
    importlib.import_module("tf2onnx")
    from mlrig.formats._tensorflow import _tf

    _tf()  # imports tensorflow quietly
    return importlib.import_module("keras")


@pytest.fixture(scope="module")
def keras_model(keras):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


@pytest.mark.heavy
def test_package_a_keras_model(tmp_path, keras, keras_model, sample):
    importlib.import_module("onnxruntime")
    import numpy as np

    package = package_model(keras_model, tmp_path / "pkg", sample=sample)
    assert package.framework == "tensorflow"
    assert package.files == [MANIFEST, "model.keras", "model.onnx"]
    assert package.manifest["flavor"] == "keras"
    assert package.signature["inputs"] == {"kind": "tensor", "dtype": "float32", "shape": [-1, 4]}
    assert package.signature["outputs"] == {"kind": "tensor", "dtype": "float32", "shape": [-1, 3]}
    assert any(r.startswith("tensorflow==") for r in package.requirements)
    assert package.onnx["status"] == "ok", package.onnx
    assert package.onnx["converter"].startswith("tf2onnx ")
    assert package.onnx["check"]["status"] == "ok"

    expected = keras_model.predict(sample, verbose=0)
    assert np.allclose(_onnx_predict(package.folder, sample), expected, atol=1e-5)
    loaded = load_native(package.folder)
    assert np.array_equal(loaded.predict(sample, verbose=0), expected)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Keras 3's own, on numpy 2
        keras_model.save(tmp_path / "m.keras")  # as for `mlrig models register m.keras`
    again = package_model(tmp_path / "m.keras", tmp_path / "again", sample=sample)
    assert again.framework == "tensorflow"
    assert again.onnx["status"] == "ok"


@pytest.mark.heavy
def test_an_export_that_disagrees_with_the_model_is_not_shipped(tmp_path):
    """float32 ONNX cannot subtract two numbers near 1e8 the way float64 sklearn does: the
    check finds the mismatch, and the package keeps only the native model."""
    import numpy as np
    from sklearn.linear_model import LinearRegression

    x = np.array([[1e8 + i, 1e8] for i in range(40)], dtype=np.float64)
    model = LinearRegression().fit(x, x[:, 0] - x[:, 1])
    package = package_model(model, tmp_path / "pkg", sample=x)
    manifest = json.loads((tmp_path / "pkg" / MANIFEST).read_text())
    assert manifest["onnx"]["status"] == "failed", manifest["onnx"]
    assert manifest["onnx"]["check"]["status"] == "mismatch"
    assert "differ" in manifest["onnx"]["reason"]
    assert not (tmp_path / "pkg" / "model.onnx").exists()
    assert "onnx" not in package.formats
    assert np.allclose(load_native(tmp_path / "pkg").predict(x), np.arange(40), atol=1e-3)
