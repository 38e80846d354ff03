"""torch and TensorFlow models served over HTTP (uvicorn, the data plane's raw app) answer
what the framework itself computes, within 1e-5, through the mlrig, MLflow and KServe v2
wire formats; by their native runtime and by their ONNX export."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from mlrig.testing.fixtures import make_platform, serve
from mlrig.testing.serving import ACTOR, breast_cancer_data

pytestmark = [pytest.mark.heavy, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

ROWS = 9


def _expected(framework: str) -> np.ndarray:
    from mlrig.testing import serving

    x = breast_cancer_data().x32[:ROWS]
    if framework == "torch":
        return serving.torch_predict_proba(serving.breast_cancer_torch_model(), x)
    return serving.keras_predict_proba(serving.breast_cancer_keras_model(), x)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    from mlrig.serving.dataplane import create_app
    from mlrig.testing.serving import register_tf_model, register_torch_model

    platform = make_platform(tmp_path_factory.mktemp("heavy") / "home", auth={"enabled": False})
    register_torch_model(platform)
    register_tf_model(platform)
    for name, model, runtime in (
        ("torch-native", "bc-torch", "torch"),
        ("torch-onnx", "bc-torch", "onnx"),
        ("tf-native", "bc-tf", "tensorflow"),
        ("tf-onnx", "bc-tf", "onnx"),
    ):
        platform.deployments.create(
            name=name, model=model, version="1", runtime=runtime, actor=ACTOR
        )
    with serve(create_app(platform)) as base:
        deadline = time.monotonic() + 180
        while httpx.get(f"{base}/readyz").status_code != 200:
            assert time.monotonic() < deadline, httpx.get(f"{base}/readyz").text
            time.sleep(0.2)
        yield base
    platform.close()


def _post(url: str, path: str, body: Any) -> dict[str, Any]:
    r = httpx.post(url + path, content=json.dumps(body), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("deployment", ["torch-native", "torch-onnx", "tf-native", "tf-onnx"])
def test_three_wire_formats_equal_the_framework(url: str, deployment: str) -> None:
    x = breast_cancer_data().x32[:ROWS]
    expected = _expected(deployment.split("-")[0])
    labels = expected.argmax(axis=1)

    mlrig = _post(url, f"/api/ml/deployments/{deployment}/predict", {"inputs": x.tolist()})
    assert np.allclose(mlrig["probabilities"], expected, atol=1e-5)
    assert np.array_equal(mlrig["predictions"], labels)

    mlflow = _post(url, f"/api/ml/deployments/{deployment}/invocations", {"instances": x.tolist()})
    assert np.allclose(mlflow["probabilities"], expected, atol=1e-5)

    v2 = _post(
        url,
        f"/v2/models/{deployment}/infer",
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        },
    )
    outputs = {o["name"]: o for o in v2["outputs"]}
    got = np.asarray(outputs["probabilities"]["data"]).reshape(ROWS, -1)
    assert np.allclose(got, expected, atol=1e-5)
    assert np.array_equal(outputs["predict"]["data"], labels)
