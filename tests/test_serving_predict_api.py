"""Predictions inside ``mlrig server`` (the API's embedded data plane) and ``mlrig predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlrig.testing.serving import (
    ACTOR,
    breast_cancer_data,
    breast_cancer_estimator,
    register_breast_cancer_model,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def deployed(platform: Any) -> dict[str, Any]:
    return register_breast_cancer_model(platform)


def test_create_then_predict_at_once(
    api_client: Any, admin_headers: dict[str, str], deployed: Any
) -> None:
    r = api_client.post(
        "/api/ml/deployments",
        json={"name": "bc", "model": "bc", "version": "1"},
        headers=admin_headers,
    )
    assert r.status_code == 201, r.text
    x = breast_cancer_data().x[:4]
    r = api_client.post(
        "/api/ml/deployments/bc/predict", json={"inputs": x.tolist()}, headers=admin_headers
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    model = breast_cancer_estimator()
    assert doc["predictions"] == model.predict(x).tolist()
    assert np.allclose(doc["probabilities"], model.predict_proba(x), atol=1e-5)
    health = api_client.get("/api/ml/deployments/bc/health", headers=admin_headers).json()
    assert health["ready"] is True and health["status"] == "ready"
    assert api_client.get("/api/ml/deployments/bc", headers=admin_headers).json()["status"] == (
        "active"
    )


def test_errors_and_permissions(
    api_client: Any, platform: Any, make_token: Any, admin_headers: dict[str, str], deployed: Any
) -> None:
    platform.deployments.create(name="bc", model="bc", version="1", actor=ACTOR)
    row = {"inputs": breast_cancer_data().x[:1].tolist()}
    viewer = make_token("watcher", "viewer")  # predict is the viewer's
    assert (
        api_client.post("/api/ml/deployments/bc/predict", json=row, headers=viewer).status_code
        == 200
    )
    platform.security.create_user(name="narrow", role="viewer")
    narrow = platform.security.create_token(user="narrow", scopes=["predict:elsewhere"])["token"]
    r = api_client.post(
        "/api/ml/deployments/bc/predict", json=row, headers={"Authorization": f"Bearer {narrow}"}
    )
    assert r.status_code == 403, r.text
    assert api_client.post("/api/ml/deployments/bc/predict", json=row).status_code == 401
    r = api_client.post(
        "/api/ml/deployments/bc/predict", json={"inputs": [[1, 2]]}, headers=admin_headers
    )
    assert r.status_code == 422 and "30" in r.json()["error"]["message"]
    r = api_client.post("/api/ml/deployments/nope/predict", json=row, headers=admin_headers)
    assert r.status_code == 404
    platform.deployments.update("bc", status="inactive", actor=ACTOR)
    r = api_client.post("/api/ml/deployments/bc/predict", json=row, headers=admin_headers)
    assert r.status_code == 404
    health = api_client.get("/api/ml/deployments/bc/health", headers=admin_headers).json()
    assert health["ready"] is False and health["status"] == "inactive"
    assert (
        api_client.get("/api/ml/deployments/nope/health", headers=admin_headers).status_code == 404
    )


def test_openapi_documents_the_routes(api_client: Any) -> None:
    schema = api_client.get("/openapi.json").json()
    predict = schema["paths"]["/api/ml/deployments/{id}/predict"]["post"]
    assert predict["x-mlrig-permission"] == "predict"
    assert "requestBody" in predict
    assert {"404", "413", "422", "429"} <= set(predict["responses"])
    health = schema["paths"]["/api/ml/deployments/{id}/health"]["get"]
    assert health["x-mlrig-permission"] == "read"


# --- mlrig predict ------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config file with a deployment of the breast cancer model."""
    from mlrig.platform import Platform

    home = tmp_path / "cli-home"
    home.mkdir()
    path = home / "mlrig.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{home / "mlrig.db"}"\n'
        f'[storage.local]\nroot = "{home / "artifacts"}"\n'
    )
    platform = Platform.from_config(path)
    register_breast_cancer_model(platform)
    platform.deployments.create(name="bc", model="bc", version="1", actor=ACTOR)
    platform.close()
    return path


def test_cli_predict_in_process(run_cli: Any, config: Path, tmp_path: Path) -> None:
    x = breast_cancer_data().x[:3]
    file = tmp_path / "in.json"
    file.write_text(json.dumps({"inputs": x.tolist()}))
    env = {"MLRIG_CONFIG": str(config)}
    result = run_cli("predict", "bc", "--input", str(file), "--json", env=env)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["predictions"] == breast_cancer_estimator().predict(x).tolist()
    plain = run_cli("predict", "bc", "--input", str(file), env=env)
    assert plain.exit_code == 0 and plain.stdout.startswith("deployment bc model bc version 1")
    bad = tmp_path / "bad.json"
    bad.write_text("[[1, 2]]")  # a bare list of rows
    failed = run_cli("predict", "bc", "--input", str(bad), env=env)
    assert failed.exit_code != 0
    assert "30" in failed.stderr and "Traceback" not in failed.stderr
    missing = run_cli("predict", "nope", "--input", str(file), env=env)
    assert missing.exit_code != 0 and "nope" in missing.stderr


def test_cli_predict_against_a_server(
    run_cli: Any,
    live_server: str,
    platform: Any,
    admin_headers: dict[str, str],
    deployed: Any,
    tmp_path: Path,
) -> None:
    platform.deployments.create(name="bc", model="bc", version="1", actor=ACTOR)
    file = tmp_path / "in.json"
    file.write_text(json.dumps(breast_cancer_data().x[:2].tolist()))
    token = admin_headers["Authorization"].split()[1]
    result = run_cli(
        "predict", "bc", "--input", str(file), "--url", live_server, "--token", token, "--json"
    )
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["predictions"]) == 2
    refused = run_cli("predict", "bc", "--input", str(file), "--url", live_server)
    assert refused.exit_code != 0 and "401" in refused.stderr
