"""The API skeleton: health, OpenAPI, the one error shape, request ids, a real server."""

import httpx


def _is_error_shape(body, code):
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_health_reports_parts(api_client, admin_headers):
    response = api_client.get("/api/ml/health", headers=admin_headers)  # details need a token
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["storage"] == {
        "status": "ok",
        "backend": "local",
        **body["checks"]["storage"],
    }
    assert body["checks"]["plugins"]["failed"] == []


def test_openapi_and_docs(api_client):
    spec = api_client.get("/openapi.json").json()
    assert "/api/ml/health" in spec["paths"]
    assert "swagger" in api_client.get("/docs").text.lower()


def test_unknown_route_and_method_use_the_error_shape(api_client):
    missing = api_client.get("/api/ml/nope")
    assert missing.status_code == 404
    _is_error_shape(missing.json(), "not_found")
    wrong = api_client.delete("/api/ml/health")
    assert wrong.status_code == 405
    _is_error_shape(wrong.json(), "method_not_allowed")


def test_request_id_is_echoed(api_client):
    response = api_client.get("/api/ml/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert len(api_client.get("/api/ml/health").headers["x-request-id"]) == 32


def test_health_is_503_when_storage_is_down(platform, api_client, tmp_path):
    root = tmp_path / "not-a-dir"
    root.write_text("a file where the artifact folder should be")
    platform.storage_backend.root = root
    response = api_client.get("/api/ml/health")
    assert response.status_code == 503
    assert response.json()["checks"]["storage"]["status"] == "error"


def test_real_uvicorn_server(live_server):
    response = httpx.get(f"{live_server}/api/ml/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["checks"]["database"]["status"] == "ok"
