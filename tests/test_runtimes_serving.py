"""What serving needs of the runtimes: the breast cancer test model, thread pools sized by
the replica count, warm-up, the LoadedModel contract's defaults, the ONNX providers (and
the GPU ones where a GPU is), and class probabilities that never depend on the batch."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlrig.backends import load_backend
from mlrig.contracts import LoadedModel
from mlrig.contracts.runtime import REPLICAS_ENV, cpu_count, default_threads, serving_replicas
from mlrig.errors import ValidationError
from mlrig.plugins._tensor_models import class_labels, class_probabilities
from mlrig.testing.fixtures import make_platform
from mlrig.testing.serving import (
    breast_cancer_data,
    breast_cancer_estimator,
    register_breast_cancer_model,
)


def _runtime(name: str, **options: Any) -> Any:
    return load_backend("runtimes", name).from_options(options, where=f"runtimes.{name}")


@pytest.fixture(scope="module")
def bc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The breast cancer model registered twice (two versions) and downloaded."""
    home = tmp_path_factory.mktemp("home")
    platform = make_platform(home)
    first = register_breast_cancer_model(platform)
    second = register_breast_cancer_model(platform, variant=1)
    folders = []
    for version in (first, second):
        folder = home / f"v{version['version']}"
        platform.registry.download_version("bc", version["version"], folder)
        folders.append(folder)
    yield {"versions": [first, second], "folders": folders, "platform": platform}
    platform.close()


# -- the test model --------------------------------------------------------------------------


def test_breast_cancer_versions(bc: Any) -> None:
    first, second = bc["versions"]
    assert (first["name"], first["version"], second["version"]) == ("bc", "1", "2")
    assert first["framework"] == "sklearn"
    assert first["model_type"] == "classification"
    assert first["signature"]["inputs"] == {"kind": "tensor", "dtype": "float64", "shape": [-1, 30]}
    assert {"model.joblib", "model.onnx", "mlrig-model.json"} == {
        a["path"] for a in first["artifacts"]
    }
    data = breast_cancer_data()
    assert data.x.shape == (569, 30) and len(data.feature_names) == 30
    assert breast_cancer_estimator() is breast_cancer_estimator()  # fitted once
    proba = [breast_cancer_estimator(v).predict_proba(data.x) for v in (0, 1)]
    assert not np.allclose(proba[0], proba[1], atol=1e-3)  # the versions answer differently
    assert (breast_cancer_estimator().predict(data.x) == data.y).mean() > 0.95


def test_named_breast_cancer_version(tmp_path: Path) -> None:
    platform = make_platform(tmp_path)
    try:
        version = register_breast_cancer_model(platform, "bc-named", named=True, version="v1")
    finally:
        platform.close()
    assert version["version"] == "v1"
    columns = version["signature"]["inputs"]["columns"]
    assert [c["name"] for c in columns] == breast_cancer_data().feature_names


def test_sklearn_serves_the_breast_cancer_model(bc: Any) -> None:
    data = breast_cancer_data()
    for variant, folder in enumerate(bc["folders"]):
        loaded = _runtime("sklearn").load(folder, bc["versions"][variant])
        expected = breast_cancer_estimator(variant)
        assert loaded.predict(data.x) == expected.predict(data.x).tolist()
        assert np.allclose(loaded.predict_proba(data.x), expected.predict_proba(data.x))
        assert loaded.batching_helps is True
        labels, proba = loaded.predict_with_proba(data.x)  # one predict_proba call
        assert labels == expected.predict(data.x).tolist()
        assert np.allclose(proba, expected.predict_proba(data.x))


def test_sklearn_predict_with_proba_only_where_labels_follow_the_probabilities(
    tmp_path: Path,
) -> None:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier

    from mlrig.formats import package_model

    data = breast_cancer_data()
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(data.x, data.y)
    package = package_model(forest, tmp_path / "forest", sample=data.x[:5])
    loaded = _runtime("sklearn").load(package.folder, {})
    labels, proba = loaded.predict_with_proba(data.x)
    assert labels == forest.predict(data.x).tolist()
    assert np.allclose(proba, forest.predict_proba(data.x))
    # an estimator not known to take its labels from its probabilities: no shortcut
    knn = KNeighborsClassifier().fit(data.x[:200], data.y[:200])
    package = package_model(knn, tmp_path / "knn", sample=data.x[:5])
    loaded = _runtime("sklearn").load(package.folder, {})
    assert hasattr(loaded, "predict_proba")
    assert not hasattr(loaded, "predict_with_proba")


@pytest.mark.heavy
def test_onnx_serves_the_breast_cancer_model(bc: Any) -> None:
    importlib.import_module("onnxruntime")
    data = breast_cancer_data()
    for variant, folder in enumerate(bc["folders"]):
        loaded = _runtime("onnx").load(folder, bc["versions"][variant])
        expected = breast_cancer_estimator(variant)
        assert loaded.predict(data.x) == expected.predict(data.x).tolist()
        got = np.asarray(loaded.predict_proba(data.x))
        assert np.allclose(got, expected.predict_proba(data.x), rtol=1e-5, atol=1e-5)
        labels, proba = loaded.predict_with_proba(data.x)  # one session run for both
        assert labels == loaded.predict(data.x)
        assert proba == loaded.predict_proba(data.x)
        with pytest.raises(ValidationError, match=r"expects \[-1, 30\]"):
            loaded.predict(np.zeros((1, 60)))  # not re-cut into two rows


# -- threads ---------------------------------------------------------------------------------


def test_default_threads_divide_the_cpus_among_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPLICAS_ENV, raising=False)
    assert serving_replicas() == 1
    assert default_threads() == cpu_count() >= 1
    monkeypatch.setenv(REPLICAS_ENV, "2")
    assert default_threads() == max(1, cpu_count() // 2)
    monkeypatch.setenv(REPLICAS_ENV, str(cpu_count() * 4))  # more replicas than CPUs
    assert default_threads() == 1
    monkeypatch.setenv(REPLICAS_ENV, "many")  # nonsense: as if unset
    assert serving_replicas() == 1


@pytest.mark.heavy
def test_onnx_threads_follow_the_replica_count(bc: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    importlib.import_module("onnxruntime")
    folder = bc["folders"][0]
    monkeypatch.setenv(REPLICAS_ENV, str(cpu_count() * 2))
    assert _runtime("onnx").load(folder, {}).describe()["intra_op_threads"] == 1
    monkeypatch.setenv(REPLICAS_ENV, "1")
    assert _runtime("onnx").load(folder, {}).describe()["intra_op_threads"] == cpu_count()
    pinned = _runtime("onnx", intra_op_threads=3, allow_spinning=False).load(folder, {})
    assert pinned.describe()["intra_op_threads"] == 3
    assert len(pinned.predict(breast_cancer_data().x[:4])) == 4


def test_sklearn_threads_follow_the_replica_count(bc: Any) -> None:
    """In a fresh process (the cap is process-wide): 2 replicas per CPU -> one thread."""
    script = textwrap.dedent(
        f"""
        import json
        from mlrig.backends import load_backend
        runtime = load_backend("runtimes", "sklearn").from_options({{}}, where="x")
        loaded = runtime.load({str(bc["folders"][0])!r}, {{}})
        from threadpoolctl import threadpool_info
        print(json.dumps({{"describe": loaded.describe()["threads"],
                          "pools": [p["num_threads"] for p in threadpool_info()]}}))
        """
    )
    env = {**os.environ, REPLICAS_ENV: str(cpu_count() * 2)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["describe"] == 1
    assert facts["pools"] and set(facts["pools"]) == {1}


# -- the contract ----------------------------------------------------------------------------


def test_loaded_model_defaults() -> None:
    class Counting(LoadedModel):
        def __init__(self) -> None:
            self.calls: list[Any] = []

        def predict(self, batch: Any) -> Any:
            self.calls.append(batch)
            return [0] * len(batch)

    model = Counting()
    model.warm_up([[1.0, 2.0]])
    assert model.calls == [[[1.0, 2.0]]]  # warm_up predicts the sample once
    assert model.batching_helps is True
    assert model.describe() == {}
    assert model.close() is None


@pytest.mark.heavy
def test_onnx_warm_up_and_describe(bc: Any) -> None:
    importlib.import_module("onnxruntime")
    from mlrig.plugins.runtime_onnx import cuda_probe, tensorrt_probe

    loaded = _runtime("onnx").load(bc["folders"][0], bc["versions"][0])
    facts = loaded.describe()
    assert facts["warm_up_seconds"] >= 0  # the zero batch ran at load
    assert facts["io_binding"] is False
    for provider, probe in (
        ("CUDAExecutionProvider", cuda_probe),
        ("TensorrtExecutionProvider", tensorrt_probe),
    ):
        usable, why = probe()
        if usable:
            assert provider in facts["providers"]
        else:  # health says why the GPU provider is not used
            assert facts["providers_not_used"][provider] == why
            assert why
    loaded.warm_up(breast_cancer_data().x[:8])
    assert loaded.describe()["warm_up_seconds"] >= 0
    cold = _runtime("onnx", warm_up=False).load(bc["folders"][0], {})
    assert "warm_up_seconds" not in cold.describe()
    no_trt = _runtime("onnx", tensorrt=False).load(bc["folders"][0], {})
    assert (
        "tensorrt = false" in no_trt.describe()["providers_not_used"]["TensorrtExecutionProvider"]
    )
    assert "TensorrtExecutionProvider" not in no_trt.describe()["providers"]
    # io_binding only takes effect on a GPU provider: on the CPU, run() as usual
    cpu = _runtime("onnx", providers=["CPUExecutionProvider"], io_binding=True)
    bound = cpu.load(bc["folders"][0], {})
    assert bound.describe()["io_binding"] is False
    # the binding code path itself, on a CPU session (GPU machines run it for real)
    x = breast_cancer_data().x
    expected = bound.predict_with_proba(x)
    bound._binding = True
    assert bound.predict_with_proba(x) == expected
    assert bound.predict(x[:3]) == expected[0][:3]


# -- class probabilities ---------------------------------------------------------------------


def test_class_probabilities_do_not_depend_on_the_batch() -> None:
    logits = np.array([[2.0, -1.0, 0.5], [0.2, 0.3, 0.5], [10.0, 10.0, -3.0]])
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    auto = class_probabilities(logits, "auto")
    assert np.allclose(auto[0], softmax[0]) and np.allclose(auto[2], softmax[2])
    assert np.allclose(auto[1], logits[1])  # already a distribution: kept
    for i in range(3):  # each row alone gets what it got in the batch
        assert np.allclose(class_probabilities(logits[i : i + 1], "auto"), auto[i : i + 1])
    assert np.allclose(class_probabilities(logits, "logits"), softmax)
    assert np.allclose(class_probabilities(softmax, "probabilities"), softmax)
    assert class_labels(softmax, None) == [0, 2, 0]
    assert class_labels(softmax, ["a", "b", "c"]) == ["a", "c", "a"]


def test_binary_outputs() -> None:
    logit = np.array([[0.0], [2.0], [-2.0]])
    proba = class_probabilities(logit, "auto")  # a binary output is read as a logit
    assert np.allclose(proba[:, 1], 1 / (1 + np.exp(-logit[:, 0])))
    assert np.allclose(proba.sum(axis=1), 1)
    given = class_probabilities(np.array([0.1, 0.9]), "probabilities")
    assert np.allclose(given, [[0.9, 0.1], [0.1, 0.9]])
    with pytest.raises(Exception, match="rows, classes"):
        class_probabilities(np.zeros((2, 2, 2)), "auto")


# -- GPU -------------------------------------------------------------------------------------


@pytest.mark.heavy
@pytest.mark.gpu
def test_onnx_serves_on_the_gpu(bc: Any) -> None:
    """On a CUDA machine: the default providers put a GPU one first, predictions equal the
    model's, and IO binding gives the same answers."""
    importlib.import_module("onnxruntime")
    from mlrig.plugins.runtime_onnx import cuda_probe

    usable, reason = cuda_probe()
    if not usable:
        pytest.skip(f"needs onnxruntime's CUDA provider: {reason[:300]}")
    data = breast_cancer_data()
    expected = breast_cancer_estimator().predict_proba(data.x)
    loaded = _runtime("onnx").load(bc["folders"][0], bc["versions"][0])
    facts = loaded.describe()
    assert facts["device"] == "cuda"
    assert facts["providers"][0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert "CUDAExecutionProvider" in facts["providers"]
    loaded.warm_up(data.x[:16])
    assert np.allclose(loaded.predict_proba(data.x), expected, rtol=1e-5, atol=1e-5)
    cuda = _runtime("onnx", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    bound = _runtime("onnx", providers=cuda.options.providers, io_binding=True).load(
        bc["folders"][0], {}
    )
    assert bound.describe()["io_binding"] is True
    assert bound.predict(data.x) == breast_cancer_estimator().predict(data.x).tolist()
    assert np.allclose(bound.predict_proba(data.x), expected, rtol=1e-5, atol=1e-5)
    big = np.tile(data.x, (20, 1))  # ~11k rows in one batch
    assert len(bound.predict(big)) == len(big)
