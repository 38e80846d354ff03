"""The data plane's raw ASGI app under a real uvicorn on loopback.

Predictions over HTTP equal the model's own through every wire format (mlrig rows,
columns and records, MLflow scoring as its client sends it, KServe v2 as Triton's client
sends it, JSON and binary tensors); bad input is a clear 4xx and serving goes on; tokens
are checked (401, 403 for a token scoped to another deployment); a client request_id is
idempotent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from mlrig.testing.fixtures import make_platform, serve
from mlrig.testing.serving import (
    ACTOR,
    breast_cancer_data,
    breast_cancer_estimator,
    register_breast_cancer_model,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOLERANCE = 1e-5


class Served:
    """A platform with two deployments served by uvicorn, and tokens to call them."""

    def __init__(self, platform: Any, url: str, tokens: dict[str, str]) -> None:
        self.platform = platform
        self.url = url
        self.tokens = tokens
        self.client = httpx.Client(base_url=url, timeout=30)

    def headers(self, who: str = "admin", **more: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}", **more}

    def post(self, path: str, body: Any = None, *, who: str = "admin", **kw: Any) -> Any:
        headers = {**self.headers(who), **kw.pop("headers", {})}
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers.setdefault("content-type", "application/json")
        return self.client.post(path, content=body, headers=headers, **kw)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from mlrig.serving.dataplane import create_app

    platform = make_platform(
        tmp_path_factory.mktemp("serving") / "home", serving={"refresh_seconds": 0.2}
    )
    plain = register_breast_cancer_model(platform, "bc")
    named = register_breast_cancer_model(platform, "bcn", named=True)
    platform.deployments.create(name="bc", model="bc", version=plain["version"], actor=ACTOR)
    platform.deployments.create(name="bcn", model="bcn", version=named["version"], actor=ACTOR)
    security = platform.security
    tokens = {}
    for user, role, scopes in (
        ("admin", "admin", None),
        ("other", "viewer", ["predict:bcn"]),
        ("scoped", "viewer", ["predict:bc"]),
    ):
        security.create_user(name=user, role=role)
        tokens[user] = security.create_token(user=user, scopes=scopes)["token"]
    with serve(create_app(platform)) as url:
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the data plane did not get ready"
            time.sleep(0.05)
        yield Served(platform, url, tokens)
    platform.close()


def _x(rows: int = 7) -> np.ndarray:
    return breast_cancer_data().x[:rows]


def _expected(rows: int = 7) -> tuple[np.ndarray, np.ndarray]:
    model = breast_cancer_estimator()
    return model.predict(_x(rows)), model.predict_proba(_x(rows))


def _check(predictions: Any, probabilities: Any, rows: int = 7) -> None:
    labels, proba = _expected(rows)
    assert np.array_equal(np.asarray(predictions).reshape(-1), labels)
    assert np.allclose(np.asarray(probabilities).reshape(rows, -1), proba, atol=TOLERANCE)


# --- correct answers through every wire format ------------------------------------------


def test_mlrig_rows(served: Served) -> None:
    r = served.post("/api/ml/deployments/bc/predict", {"inputs": _x().tolist()})
    assert r.status_code == 200, r.text
    doc = r.json()
    _check(doc["predictions"], doc["probabilities"])
    assert (doc["model"], doc["version"], doc["deployment"]) == ("bc", "1", "bc")
    assert r.headers["x-request-id"] == doc["request_id"]


def test_by_id_as_well_as_name(served: Served) -> None:
    dep_id = served.platform.deployments.get("bc")["id"]
    r = served.post(f"/api/ml/deployments/{dep_id}/predict", {"inputs": _x(2).tolist()})
    assert r.status_code == 200, r.text
    _check(r.json()["predictions"], r.json()["probabilities"], 2)


def test_mlrig_columns_and_records_by_name(served: Served) -> None:
    names = breast_cancer_data().feature_names
    x = _x()
    columns = {name: x[:, i].tolist() for i, name in reversed(list(enumerate(names)))}
    r = served.post("/api/ml/deployments/bcn/predict", {"inputs": columns})
    assert r.status_code == 200, r.text
    _check(r.json()["predictions"], r.json()["probabilities"])
    records = [dict(zip(names, row, strict=True)) for row in x.tolist()]
    r = served.post("/api/ml/deployments/bcn/predict", {"dataframe_records": records})
    assert r.status_code == 200, r.text
    _check(r.json()["predictions"], r.json()["probabilities"])


def test_mlflow_scoring_client_request(served: Served) -> None:
    """What MLflow's scoring client posts: a DataFrame as orient="split" JSON."""
    frame = breast_cancer_data().frame.head(7)
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))})
    headers = {"content-type": "application/json"}
    for path in ("/invocations?deployment=bcn", "/api/ml/deployments/bcn/invocations"):
        r = served.post(path, body.encode(), headers=headers)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert "predictions" in doc
        _check(doc["predictions"], doc["probabilities"])
    # the rows form (`instances`) on the tensor model
    r = served.post(
        "/invocations", {"instances": _x().tolist()}, headers={"X-Mlrig-Deployment": "bc"}
    )
    assert r.status_code == 200, r.text
    _check(r.json()["predictions"], r.json()["probabilities"])


def test_invocations_needs_a_name_when_several_are_served(served: Served) -> None:
    r = served.post("/invocations", {"instances": _x().tolist()})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "deployment_required"
    assert "bc" in r.json()["error"]["message"]


def _outputs(doc: dict[str, Any]) -> dict[str, Any]:
    return {o["name"]: o for o in doc["outputs"]}


def test_kserve_v2_json_as_triton_client_sends_it(served: Served) -> None:
    x = _x()
    body = {
        "id": "triton-1",
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP64",
                "data": x.ravel().tolist(),
            }
        ],
        "outputs": [
            {"name": "predict", "parameters": {"binary_data": False}},
            {"name": "probabilities", "parameters": {"binary_data": False}},
        ],
    }
    r = served.post("/v2/models/bc/infer", body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == "bc" and doc["id"] == "triton-1"
    outputs = _outputs(doc)
    assert outputs["probabilities"]["shape"] == [7, 2]
    _check(outputs["predict"]["data"], outputs["probabilities"]["data"])
    r = served.post("/v2/models/bc/versions/1/infer", body)
    assert r.status_code == 200, r.text
    r = served.post("/v2/models/bc/versions/9/infer", body)
    assert r.status_code == 404


def test_kserve_v2_binary_tensors(served: Served) -> None:
    """tritonclient.http's default: a JSON header, then the raw little-endian tensor."""
    x = np.ascontiguousarray(_x(), dtype="<f4")
    raw = x.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "predict", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = served.post(
        "/v2/models/bc/infer",
        header + raw,
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    outputs = _outputs(r.json())
    assert np.array_equal(outputs["predict"]["data"], _expected()[0])


def test_v2_metadata_and_health(served: Served) -> None:
    meta = served.client.get("/v2/models/bc", headers=served.headers()).json()
    assert meta["name"] == "bc" and meta["versions"] == ["1"]
    assert meta["inputs"][0]["shape"] == [-1, 30]
    assert served.client.get("/v2/models/bc/ready", headers=served.headers()).json()["ready"]
    assert served.client.get("/v2/health/live").json() == {"live": True}
    assert served.client.get("/v2/health/ready").status_code == 200
    assert served.client.get("/readyz").json()["ready"] is True
    health = served.client.get("/api/ml/deployments/bc/health", headers=served.headers()).json()
    resolved = served.platform.deployments.get("bc")["resolved_runtime"]
    assert resolved in ("onnx", "sklearn")  # onnx where onnxruntime is installed
    assert health["ready"] and health["versions"][0]["runtime"] == resolved
    assert served.platform.deployments.get("bc")["status"] == "active"


def test_metrics_count_requests(served: Served) -> None:
    served.post("/api/ml/deployments/bc/predict", {"inputs": _x(1).tolist()})
    text = served.client.get("/metrics").text
    assert 'mlrig_predict_requests_total{code="200",deployment="bc",version="1"}' in text
    assert "mlrig_predict_latency_seconds_bucket" in text


# --- bad input: a clear 4xx, and serving goes on ----------------------------------------


def _error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"code", "message", "details"}
    return error


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"inputs": [[1.0, 2.0, 3.0]]}, "30"),  # wrong feature count
        ({"inputs": [["a"] * 30]}, "float64"),  # wrong type
        ({"inputs": []}, "empty"),  # empty batch
        ({"inputs": [[1.0] * 30, [1.0] * 29]}, "30"),  # ragged
        ({"nothing": 1}, "inputs"),
    ],
)
def test_bad_input_is_422_naming_the_signature(served: Served, body: Any, words: str) -> None:
    error = _error(served.post("/api/ml/deployments/bc/predict", body), 422)
    assert words in error["message"]
    assert (
        served.post("/api/ml/deployments/bc/predict", {"inputs": _x(1).tolist()}).status_code == 200
    )


def test_nan_refused(served: Served) -> None:
    row = ", ".join(["NaN"] + ["1.0"] * 29)
    body = f'{{"inputs": [[{row}]]}}'.encode()
    error = _error(served.post("/api/ml/deployments/bc/predict", body), 422)
    assert "nan" in error["message"].lower()
    v2 = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": [None] * 30}]}
    _error(served.post("/v2/models/bc/infer", v2), 422)


def test_broken_json_and_bad_headers(served: Served) -> None:
    _error(served.post("/api/ml/deployments/bc/predict", b"{not json"), 422)
    _error(served.post("/api/ml/deployments/bc/predict", b"\x00\xff" * 10), 422)
    r = served.post("/v2/models/bc/infer", b"{}", headers={"Inference-Header-Content-Length": "x"})
    _error(r, 422)


def test_50_mb_body_is_413(served: Served) -> None:
    big = b'{"inputs": [[' + b"1.0," * (13 * 1024 * 1024) + b"1.0]]}"
    assert len(big) > 50 * 1024 * 1024
    error = _error(served.post("/api/ml/deployments/bc/predict", big), 413)
    assert "max_body_bytes" in error["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"inputs": [['
        for _ in range(50):
            yield b"1.0," * 262_144
        yield b"1.0]]}"

    r = served.client.post(
        "/api/ml/deployments/bc/predict", content=chunks(), headers=served.headers()
    )
    _error(r, 413)
    assert (
        served.post("/api/ml/deployments/bc/predict", {"inputs": _x(1).tolist()}).status_code == 200
    )


def test_unknown_deployment_and_route(served: Served) -> None:
    error = _error(served.post("/api/ml/deployments/nope/predict", {"inputs": [[1.0]]}), 404)
    assert "nope" in error["message"] and "bc" in error["message"]
    _error(served.post("/v2/models/nope/infer", {"inputs": []}), 404)
    _error(served.client.get("/elsewhere"), 404)
    r = served.client.get("/api/ml/deployments/bc/predict", headers=served.headers())
    assert _error(r, 405) and r.headers["allow"] == "POST"


def test_version_without_artifacts_cannot_be_deployed(served: Served, tmp_path: Any) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    version = served.platform.registry.create_version(
        "empty-model", files={"notes.txt": notes}, actor=ACTOR, create_model=True
    )
    from mlrig.errors import ValidationError

    with pytest.raises(ValidationError, match="artifacts"):
        served.platform.deployments.create(
            name="empty", model="empty-model", version=version["version"], actor=ACTOR
        )
    _error(served.post("/api/ml/deployments/empty/predict", {"inputs": [[1.0]]}), 404)


# --- authentication -----------------------------------------------------------------------


def test_401_without_a_valid_token(served: Served) -> None:
    body = json.dumps({"inputs": _x(1).tolist()})
    r = served.client.post("/api/ml/deployments/bc/predict", content=body)
    assert _error(r, 401) and r.headers["www-authenticate"] == "Bearer"
    r = served.client.post(
        "/api/ml/deployments/bc/predict", content=body, headers={"Authorization": "Bearer junk"}
    )
    _error(r, 401)
    # an unknown deployment is not revealed to anyone without a token
    _error(served.client.post("/api/ml/deployments/nope/predict", content=body), 401)


def test_403_for_a_token_scoped_to_another_deployment(served: Served) -> None:
    body = {"inputs": _x(1).tolist()}
    error = _error(served.post("/api/ml/deployments/bc/predict", body, who="other"), 403)
    assert "bc" in error["message"]
    assert served.post("/api/ml/deployments/bc/predict", body, who="scoped").status_code == 200
    _error(served.post("/v2/models/bc/infer", body, who="other"), 403)


# --- idempotent request ids ---------------------------------------------------------------


def test_request_id_is_idempotent_and_logged_once(served: Served) -> None:
    from sqlalchemy import func, select

    from mlrig.db.models.serving import InferenceRequest

    body = {"inputs": _x(2).tolist(), "request_id": "order-42"}
    first = served.post("/api/ml/deployments/bc/predict", body)
    again = served.post("/api/ml/deployments/bc/predict", body)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content
    assert first.json()["request_id"] == "order-42"
    other = {"inputs": _x(3).tolist(), "request_id": "order-42"}
    assert _error(served.post("/api/ml/deployments/bc/predict", other), 409)["details"]

    def logged() -> int:
        with served.platform.db.session() as session:
            return session.scalar(
                select(func.count()).where(InferenceRequest.request_id == "order-42")
            )

    deadline = time.monotonic() + 20
    while logged() == 0:
        assert time.monotonic() < deadline, "the inference record was not written"
        time.sleep(0.1)
    time.sleep(1.5)  # another flush: still one
    assert logged() == 1
