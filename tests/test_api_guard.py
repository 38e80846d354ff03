"""The request guard: authentication before the body, body-size limits (413), 405 with
``Allow`` over the whole app, and the public health answer. The memory claims are measured
on a real uvicorn server in its own process."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from mlrig.api import create_app
from mlrig.testing.fixtures import free_port, make_platform

MIB = 1024 * 1024
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

SERVER = """
import sys
from pathlib import Path

import uvicorn

from mlrig.api import create_app
from mlrig.testing.fixtures import make_platform

home, port, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
platform = make_platform(Path(home), api={"max_body_bytes": limit})
uvicorn.run(create_app(platform), host="127.0.0.1", port=port, log_level="warning")
"""


def _error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


class Server:
    """An API server in its own process, so that its memory can be measured alone."""

    def __init__(self, home: Path, max_body_bytes: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(home), str(self.port), str(max_body_bytes)]
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/api/ml/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                pytest.fail("the API server did not start")
            time.sleep(0.1)

    def peak_rss(self) -> int:
        """The process's peak resident memory so far (VmHWM), in bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def send(self, path: str, headers: dict[str, str], body: bytes, *, chunked: bool) -> int:
        """POST ``body`` over a raw socket and return the status. The body is sent from a
        thread while the answer is read: a server that answers early need not read it."""
        head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if chunked:
            head.append("Transfer-Encoding: chunked")
        else:
            head.append(f"Content-Length: {len(body)}")
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)

        def write() -> None:
            try:
                sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
                view = memoryview(body)
                for start in range(0, len(body), 256 * 1024):
                    piece = view[start : start + 256 * 1024]
                    if chunked:
                        sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    else:
                        sock.sendall(piece)
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
            except OSError:  # the server answered and closed: expected
                pass

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        answer = b""
        try:
            while b"\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        finally:
            writer.join(30)
            sock.close()
        return int(answer.split(b" ", 2)[1])


@pytest.fixture
def server_home(tmp_path):
    """A home with a developer token; yields ``(home, headers)``."""
    home = tmp_path / "server"
    platform = make_platform(home)
    platform.security.create_user(name="dev", role="developer")
    token = platform.security.create_token(user="dev")["token"]
    platform.close()
    return home, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def _big_json(size: int) -> bytes:
    return b'{"name": "m", "description": "' + b"a" * (size - 40) + b'"}'


def test_unauthenticated_36_mb_body_is_401_without_reading_it(server_home):
    home, headers = server_home
    # the limit is above the body: only authenticating first keeps it from being parsed
    server = Server(home, max_body_bytes=64 * MIB)
    try:
        small = json.dumps({"name": "warm-up"}).encode()
        for _ in range(3):  # warm the code paths (imports, threads) before measuring
            assert server.send("/api/ml/models", {}, small, chunked=False) == 401
        assert server.send("/api/ml/models", headers, small, chunked=False) == 201
        before = server.peak_rss()
        body = _big_json(36 * MIB)
        assert (
            server.send("/api/ml/models", {"Content-Type": "application/json"}, body, chunked=False)
            == 401
        )
        bad = {"Authorization": "Bearer mlr_00000000_nope", "Content-Type": "application/json"}
        assert server.send("/api/ml/models", bad, body, chunked=True) == 401
        time.sleep(0.5)
        growth = server.peak_rss() - before
        assert growth < 20 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB"
    finally:
        server.stop()


def test_bodies_over_the_limit_are_413_content_length_and_chunked(server_home):
    home, headers = server_home
    server = Server(home, max_body_bytes=MIB)
    try:
        small = json.dumps({"name": "warm-up"}).encode()
        assert server.send("/api/ml/models", headers, small, chunked=False) == 201
        assert (
            server.send("/api/ml/models", headers, small.replace(b"up", b"up2"), chunked=True)
            == 201
        )
        before = server.peak_rss()
        body = _big_json(36 * MIB)
        assert server.send("/api/ml/models", headers, body, chunked=False) == 413
        # chunked: no length up front; counted as it streams and cut off at the limit
        assert server.send("/api/ml/models", headers, body, chunked=True) == 413
        time.sleep(0.5)
        growth = server.peak_rss() - before
        assert growth < 20 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB"
        # the 413 is in the one error shape and names the limit and the setting
        response = httpx.post(
            f"{server.url}/api/ml/models", content=_big_json(2 * MIB), headers=headers
        )
        error = _error(response, 413, "payload_too_large")
        assert "1.0MiB (1,048,576 bytes)" in error["message"]
        assert "[api] max_body_bytes" in error["message"]
        assert error["details"] == {"limit_bytes": MIB, "setting": "api.max_body_bytes"}
    finally:
        server.stop()


@pytest.fixture
def small_limits(tmp_path):
    platform = make_platform(
        tmp_path / "limits",
        api={"max_body_bytes": 2048, "max_metrics_body_bytes": 8192, "max_upload_bytes": 16384},
    )
    yield platform
    platform.close()


def _headers(platform, name, role):
    platform.security.create_user(name=name, role=role)
    return {"Authorization": f"Bearer {platform.security.create_token(user=name)['token']}"}


def test_each_route_class_has_its_own_limit(small_limits):
    dev = _headers(small_limits, "dev", "developer")
    client = TestClient(create_app(small_limits), raise_server_exceptions=False)
    assert client.post("/api/ml/models", json={"name": "m"}, headers=dev).status_code == 201

    # JSON route: 2 KiB
    long = {"name": "m2", "description": "d" * 4000}
    error = _error(client.post("/api/ml/models", json=long, headers=dev), 413, "payload_too_large")
    assert error["details"]["setting"] == "api.max_body_bytes"

    # metric ingest: 8 KiB, so a 4 KiB batch is not refused for its size
    points = {"points": [{"name": "loss", "value": 0.5, "step": i} for i in range(80)]}
    assert 2048 < len(json.dumps(points)) < 8192
    response = client.post("/api/ml/experiments/nope/metrics", json=points, headers=dev)
    assert response.status_code == 404, response.text  # past the guard, no such experiment
    points = {"points": [{"name": "loss", "value": 0.5, "step": i} for i in range(400)]}
    error = _error(
        client.post("/api/ml/experiments/nope/metrics", json=points, headers=dev),
        413,
        "payload_too_large",
    )
    assert error["details"]["setting"] == "api.max_metrics_body_bytes"

    # artifact upload: 16 KiB
    files = {"files": ("model.bin", b"w" * 10_000)}
    response = client.post("/api/ml/models/m/versions", files=files, headers=dev)
    assert response.status_code == 201, response.text
    files = {"files": ("model.bin", b"w" * 20_000)}
    error = _error(
        client.post("/api/ml/models/m/versions", files=files, headers=dev), 413, "payload_too_large"
    )
    assert error["details"]["setting"] == "api.max_upload_bytes"
    versions = client.get("/api/ml/models/m/versions", headers=dev).json()
    assert len(versions["items"]) == 1  # the refused upload left no version


def test_chunked_body_is_cut_off_at_the_limit(small_limits):
    dev = {**_headers(small_limits, "dev", "developer"), "Content-Type": "application/json"}
    client = TestClient(create_app(small_limits), raise_server_exceptions=False)

    def chunks():  # no Content-Length: the guard counts the bytes as they come
        for _ in range(100):
            yield b" " * 1024

    response = client.post("/api/ml/models", content=chunks(), headers=dev)
    _error(response, 413, "payload_too_large")
    assert client.get("/api/ml/models", headers=dev).json() in (
        [],
        {"items": [], "next_cursor": None},
    )


def test_limits_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLRIG_API__MAX_BODY_BYTES", "4KiB")
    monkeypatch.setenv("MLRIG_API__MAX_UPLOAD_BYTES", "1GiB")
    platform = make_platform(tmp_path / "env")
    try:
        assert platform.settings.api.max_body_bytes == 4096
        assert platform.settings.api.max_upload_bytes == 1024**3
        assert platform.settings.api.max_metrics_body_bytes == 16 * MIB
    finally:
        platform.close()


def test_a_limit_below_1_kib_is_a_config_error(tmp_path):
    from mlrig.errors import ConfigError

    with pytest.raises(ConfigError, match="max_body_bytes"):
        make_platform(tmp_path / "bad", api={"max_body_bytes": 10})


def test_forbidden_request_is_refused_before_the_body(small_limits):
    viewer = {**_headers(small_limits, "v", "viewer"), "Content-Type": "application/json"}
    client = TestClient(create_app(small_limits), raise_server_exceptions=False)
    # over the limit and not JSON, but the viewer may not write at all: 403 (a parsed
    # body would have been 422, a measured one 413)
    junk = b"[" * 10_000
    _error(client.post("/api/ml/models", content=junk, headers=viewer), 403, "forbidden")
    denied = small_limits.audit.query(actor="v")
    assert [(e["action"], e["outcome"], e["resource_type"]) for e in denied] == [
        ("create_model", "denied", "models")
    ]
    response = client.post(
        "/api/ml/models", content=junk, headers={"Content-Type": "application/json"}
    )
    _error(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == "Bearer"


# --- 405 and Allow ------------------------------------------------------------------------


def _concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", template)


#: a fixed path segment beside a parameter route: the parameter never takes it
#: (``PUT /api/ml/features/batch`` is 405, not an update of a feature named ``batch``)
ROUTE_SEGMENTS = {"/api/ml/features/": ("batch", "training-set")}


def _matches(template: str, path: str) -> bool:
    pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
    for prefix, segments in ROUTE_SEGMENTS.items():
        if template.startswith(prefix + "{") and path.startswith(prefix):
            if path[len(prefix) :].split("/", 1)[0] in segments:
                return False
    return re.fullmatch(pattern, path) is not None


def test_every_path_answers_405_with_every_allowed_method(api_client):
    schema = api_client.get("/openapi.json").json()
    methods_of = {
        template: {m.upper() for m in item if m.upper() in HTTP_METHODS}
        for template, item in schema["paths"].items()
    }
    checked = 0
    for template in methods_of:
        path = _concrete(template)
        allowed = set().union(*(m for t, m in methods_of.items() if _matches(t, path)))
        for method in sorted(set(HTTP_METHODS) - allowed):
            response = api_client.request(method, path)
            error = _error(response, 405, "method_not_allowed")
            assert set(response.headers["allow"].split(", ")) == allowed, (method, path)
            assert method in error["message"]
            checked += 1
    assert checked > 50


def test_405_lists_methods_of_every_route_on_the_path(api_client):
    response = api_client.patch("/api/ml/models/some-model")
    _error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "DELETE, GET, PUT"


# --- health -------------------------------------------------------------------------------


def test_health_without_a_token_tells_only_the_status(api_client, platform):
    response = api_client.get("/api/ml/health")
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "status": "ok",
        "checks": {
            "database": {"status": "ok"},
            "storage": {"status": "ok"},
            "plugins": {"status": "ok"},
        },
    }
    text = response.text
    assert str(platform.settings.database_url) not in text and "sqlite" not in text
    # a bad token is answered like no token
    bad = api_client.get("/api/ml/health", headers={"Authorization": "Bearer mlr_0_x"})
    assert bad.json() == body


def test_health_with_a_token_has_the_details(api_client, make_token):
    from mlrig import __version__

    body = api_client.get("/api/ml/health", headers=make_token("v", "viewer")).json()
    assert body["version"] == __version__
    assert body["checks"]["database"]["dialect"] == "sqlite"
    assert body["checks"]["storage"]["backend"] == "local"
    assert body["checks"]["plugins"]["failed"] == []


def test_health_down_is_503_without_the_error_text(platform, api_client, tmp_path):
    root = tmp_path / "not-a-dir"
    root.write_text("a file where the artifact folder should be")
    platform.storage_backend.root = root
    response = api_client.get("/api/ml/health")
    assert response.status_code == 503
    assert response.json()["checks"]["storage"] == {"status": "error"}
    assert str(root) not in response.text


def test_the_token_is_checked_once_per_request(platform, api_client, make_token, monkeypatch):
    headers = make_token("dev", "developer")
    calls = []
    check = platform.security.authenticate
    monkeypatch.setattr(platform.security, "authenticate", lambda t: calls.append(t) or check(t))
    assert api_client.post("/api/ml/models", json={"name": "m"}, headers=headers).status_code == 201
    assert len(calls) == 1  # by the guard; the route's Writer reuses the principal


def test_the_client_raises_payload_too_large(live_server, make_token):
    import mlrig
    from mlrig.errors import PayloadTooLargeError

    token = make_token("dev", "developer")["Authorization"].split()[1]
    with (
        mlrig.Client(live_server, token=token) as ml,
        pytest.raises(PayloadTooLargeError, match=r"\[api\] max_body_bytes"),
    ):
        ml.create_model("big", description="d" * (2 * MIB))


def test_behind_a_proxy_prefix_the_guard_still_applies(platform, make_token):
    client = TestClient(create_app(platform), root_path="/mlrig", raise_server_exceptions=False)
    _error(client.get("/api/ml/models"), 401, "unauthenticated")
    assert client.get("/api/ml/models", headers=make_token("v", "viewer")).status_code == 200
    _error(client.patch("/api/ml/models"), 405, "method_not_allowed")
