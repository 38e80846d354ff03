"""Tracked runs over REST (``/api/ml/runs``, ``/experiments/{id}/...``, ``/groups``) and
through :class:`mlrig.Client` against a real uvicorn server: the whole life of a run,
errors as 4xx with the error body, permissions, non-finite metrics on the wire, and a
SIGKILLed script's run failed by the server's heartbeat sweep."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from mlrig import Client
from mlrig.errors import ConflictError, NotFoundError, ValidationError
from mlrig.testing.fixtures import make_platform, serve

BASE = "/api/ml"


@pytest.fixture
def client(api_client, admin_headers):
    api_client.headers.update(admin_headers)
    return api_client


def _error(response, status, code=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def _start(client, **body):
    response = client.post(f"{BASE}/runs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_the_life_of_a_run_over_rest(client):
    run = _start(client, group="churn", params={"lr": 0.1}, tags={"team": "ml"})
    rid = f"{BASE}/experiments/{run['id']}"
    assert (run["status"], run["origin"], run["group"], run["trainer"]) == (
        "running",
        "tracking",
        "churn",
        None,
    )
    assert client.post(f"{rid}/params", json={"params": {"bs": 8}}).json()["hyperparameters"] == {
        "lr": 0.1,
        "bs": 8,
    }
    _error(client.post(f"{rid}/params", json={"params": {"lr": 1}}), 409, "conflict")
    assert client.post(f"{rid}/tags", json={"tags": {"k": "v"}}).json()["tags"] == {
        "team": "ml",
        "k": "v",
    }
    assert client.delete(f"{rid}/tags/team").json()["tags"] == {"k": "v"}
    _error(client.delete(f"{rid}/tags/team"), 404)
    beat = client.post(f"{rid}/heartbeat").json()
    assert beat["status"] == "running" and beat["timeout_seconds"] == 300
    dataset = {"name": "train", "schema": {"x": "float64"}, "rows": 3, "digest": "d" * 64}
    view = client.post(f"{rid}/datasets", json=dataset).json()
    assert view["reproducibility"]["datasets"] == [dataset]
    # JSON's 3.0 is the integer 3: the same record, kept once
    view = client.post(f"{rid}/datasets", json={**dataset, "rows": 3.0}).json()
    assert view["reproducibility"]["datasets"] == [dataset]
    body = b"\x00\x01binary" * 1000
    put = client.put(f"{rid}/artifacts/plots/loss%20curve.bin", content=body)
    assert put.status_code == 200 and put.json()["size_bytes"] == len(body), put.text
    listed = client.get(f"{rid}/artifacts").json()
    assert [a["path"] for a in listed["items"]] == ["plots/loss curve.bin"]
    assert client.get(f"{rid}/artifacts", params={"prefix": "none/"}).json()["items"] == []
    got = client.get(f"{rid}/artifacts/plots/loss%20curve.bin")
    assert got.content == body and got.headers["x-checksum-sha256"] == put.json()["checksum"]
    _error(client.get(f"{rid}/artifacts/plots/missing.bin"), 404)
    ended = client.post(f"{rid}/end", json={"status": "failed", "error": "KeyError: 'x'"}).json()
    assert (ended["status"], ended["status_detail"]) == ("failed", "KeyError: 'x'")
    _error(client.post(f"{rid}/heartbeat"), 409, "conflict")
    assert client.post(f"{rid}/resume").json()["status"] == "running"
    killed = client.post(f"{rid}/end", json={"status": "killed"}).json()
    assert (killed["status"], killed["status_detail"]) == ("cancelled", "killed")
    listed = client.get(f"{BASE}/experiments", params={"origin": "tracking", "group": "churn"})
    assert [r["id"] for r in listed.json()["items"]] == [run["id"]]
    unfiltered = client.get(f"{BASE}/experiments", params={"group": "", "parent": ""})
    assert [r["id"] for r in unfiltered.json()["items"]] == [run["id"]]
    _error(client.get(f"{BASE}/experiments", params={"parent": "no-such-run"}), 404)
    empty = client.put(f"{rid}/artifacts/empty.txt")  # no body: an empty file
    assert empty.status_code == 200 and empty.json()["size_bytes"] == 0
    groups = client.get(f"{BASE}/groups").json()["items"]
    assert [(g["name"], g["runs"]) for g in groups] == [("churn", 1)]
    assert client.get(f"{BASE}/groups/churn").json()["runs"] == 1


def test_groups_over_rest(client):
    made = client.post(f"{BASE}/groups", json={"name": "/Users/me/churn", "tags": {"a": "b"}})
    assert made.status_code == 201 and made.json()["tags"] == {"a": "b"}
    again = client.post(f"{BASE}/groups", json={"name": "/Users/me/churn"})
    assert again.json()["id"] == made.json()["id"]
    by_id = client.get(f"{BASE}/groups/{made.json()['id']}").json()
    assert by_id["name"] == "/Users/me/churn"
    renamed = client.patch(f"{BASE}/groups/{made.json()['id']}", json={"name": "churn"}).json()
    assert renamed["name"] == "churn"
    assert client.delete(f"{BASE}/groups/churn").json()["deleted_at"] is not None
    _error(client.get(f"{BASE}/groups/churn"), 404, "not_found")
    assert client.get(f"{BASE}/groups", params={"include_deleted": True}).json()["items"]


BAD_REQUESTS = [
    ("post", "/runs", {"origin": "engine"}),
    ("post", "/runs", {"name": "has space"}),
    ("post", "/runs", {"group": "   "}),
    ("post", "/runs", {"group": "a\u0000b"}),
    ("post", "/runs", {"params": []}),
    ("post", "/runs", {"tags": {"k": 1}}),
    ("post", "/runs", {"started_at": "yesterday"}),
    ("post", "/runs", {"started_at": 1700000000}),
    ("post", "/runs", {"unknown": 1}),
    ("post", "/experiments/{id}/params", {"params": "x"}),
    ("post", "/experiments/{id}/params", {}),
    ("post", "/experiments/{id}/end", {"status": "done"}),
    ("post", "/experiments/{id}/end", {"ended_at": "0000-01-01"}),
    ("post", "/experiments/{id}/datasets", {"rows": -1, "name": "x"}),
    ("post", "/experiments/{id}/datasets", {"rows": 3}),
    ("post", "/experiments/{id}/datasets", {"name": "", "source": ""}),
    ("post", "/experiments/{id}/datasets", {"source": None}),
    ("post", "/experiments/{id}/datasets", {"name": "x", "rows": False}),
    ("post", "/experiments/{id}/datasets", {"name": "x", "rows": "3"}),
    ("post", "/experiments/{id}/datasets", {"name": "x", "rows": 2**53}),
    ("post", "/experiments/{id}/datasets", {"name": "x", "colour": "red"}),
    ("post", "/groups", {"name": ""}),
    ("post", "/groups", {"name": "a\u0000"}),
    ("post", "/experiments/{id}/params", {"params": {"": 1}}),
]


@pytest.mark.parametrize(("method", "path", "body"), BAD_REQUESTS)
def test_bad_requests_are_422(client, method, path, body):
    run = _start(client, name="target")
    response = client.request(method, BASE + path.format(id=run["id"]), json=body)
    _error(response, 422)
    assert client.get(f"{BASE}/experiments/target").json()["status"] == "running"


def test_bad_artifact_paths_and_missing_runs_are_4xx(client):
    run = _start(client, name="target")
    rid = f"{BASE}/experiments/{run['id']}"
    for path in ("a%00b", "%2Fetc%2Fpasswd", "a/%2E%2E/b", "a%5Cb", "x/"):
        response = client.put(f"{rid}/artifacts/{path}", content=b"x")
        assert 400 <= response.status_code < 500, (path, response.text)
    assert client.get(f"{rid}/artifacts").json()["items"] == []
    missing = f"{BASE}/experiments/no-such-run"
    for method, path, body in (
        ("post", "/params", {"params": {"a": 1}}),
        ("post", "/heartbeat", None),
        ("post", "/end", {}),
        ("put", "/artifacts/a.txt", None),
        ("get", "/artifacts", None),
    ):
        kwargs = {"json": body} if body is not None else {"content": b"x"}
        _error(client.request(method, missing + path, **kwargs), 404)
    _error(client.post(f"{BASE}/runs", json={"parent": "no-such-run"}), 404)
    _error(client.post(f"{BASE}/runs", json={"name": "target"}), 409, "conflict")


def test_viewers_read_and_developers_write(api_client, make_token):
    viewer, developer = make_token("v", "viewer"), make_token("d", "developer")
    _error(api_client.post(f"{BASE}/runs", json={}, headers=viewer), 403)
    run = api_client.post(f"{BASE}/runs", json={"group": "g"}, headers=developer).json()
    rid = f"{BASE}/experiments/{run['id']}"
    assert run["created_by"] == "d"
    for method, path in (("post", "/heartbeat"), ("post", "/end"), ("put", "/artifacts/a")):
        _error(api_client.request(method, rid + path, headers=viewer, json={}), 403)
    assert api_client.get(f"{rid}/artifacts", headers=viewer).status_code == 200
    assert api_client.get(f"{BASE}/groups/g", headers=viewer).status_code == 200
    _error(api_client.get(f"{BASE}/groups"), 401)


def test_non_finite_metrics_on_the_wire(client):
    run = _start(client, name="r")
    rid = f"{BASE}/experiments/{run['id']}"
    texts = {
        "points": [
            {"name": "loss", "value": v, "step": i}
            for i, v in enumerate([0.5, "NaN", "Infinity", "-Infinity"])
        ]
    }
    assert client.post(f"{rid}/metrics", json=texts).json()["written"] == 4
    python_json = json.dumps({"points": [{"name": "loss", "value": math.nan, "step": 4}]})
    assert "NaN" in python_json  # what json.dumps writes by default
    response = client.post(
        f"{rid}/metrics", content=python_json, headers={"Content-Type": "application/json"}
    )
    assert response.json()["written"] == 1, response.text
    history = client.get(f"{rid}/metrics").json()["metrics"]["loss"]["values"]
    assert history == [0.5, "NaN", "Infinity", "-Infinity", "NaN"]
    assert client.get(rid).json()["metrics"]["loss"]["value"] == "NaN"
    other = _start(client, name="other")
    client.post(
        f"{BASE}/experiments/{other['id']}/metrics",
        json={"points": [{"name": "loss", "value": 1.0}]},
    )
    compared = client.get(f"{BASE}/experiments/compare", params={"ids": ["r", "other"]}).json()
    assert compared["metrics"] == {"loss": ["NaN", 1.0]}


def test_the_client_drives_a_run_against_a_live_server(platform, live_server, tmp_path):
    platform.security.create_user(name="dev", role="developer")
    token = platform.security.create_token(user="dev")["token"]
    with Client(live_server, token=token) as ml:
        run = ml.start_run(group="study", params={"alpha": 0.5}, tags={"a": "1"})
        assert run["status"] == "running" and run["created_by"] == "dev"
        ml.log_params(run["id"], {"beta": 2})
        with pytest.raises(ConflictError):
            ml.log_params(run["id"], {"beta": 3})
        ml.set_tags(run["id"], {"b": "2", "mlflow.source/name": "x"})
        assert ml.delete_tag(run["id"], "a")["tags"] == {"b": "2", "mlflow.source/name": "x"}
        assert ml.delete_tag(run["id"], "mlflow.source/name")["tags"] == {"b": "2"}
        assert ml.heartbeat(run["id"])["status"] == "running"
        ml.log_dataset(run["id"], {"name": "iris", "rows": 150})
        points = [
            {"name": "loss", "value": v, "step": i}
            for i, v in enumerate([1.0, math.nan, math.inf, -math.inf])
        ]
        assert ml.log_metrics(run["id"], points) == 4
        values = ml.metrics(run["id"], fields=["values"])["metrics"]["loss"]["values"]
        assert values[0] == 1.0 and math.isnan(values[1]) and values[2:] == [math.inf, -math.inf]
        source = tmp_path / "model.bin"
        source.write_bytes(os.urandom(300_000))
        with source.open("rb") as handle:
            ml.upload_run_artifact(run["id"], "model/model.bin", handle)
        ml.upload_run_artifact(run["id"], "notes/é ü.txt", b"hello")
        paths = [a["path"] for a in ml.list_run_artifacts(run["id"])]
        assert paths == ["model/model.bin", "notes/é ü.txt"]
        assert [a["path"] for a in ml.list_run_artifacts(run["id"], prefix="notes/")] == [
            "notes/é ü.txt"
        ]
        written = ml.download_run_artifact(run["id"], "model/model.bin", tmp_path / "out")
        assert written.read_bytes() == source.read_bytes()
        with pytest.raises(NotFoundError):
            ml.download_run_artifact(run["id"], "model/none.bin", tmp_path / "out")
        with pytest.raises(ValidationError):
            ml.end_run(run["id"], status="exploded")
        ended = ml.end_run(run["id"], status="completed")
        assert ended["status"] == "completed"
        assert ml.resume_run(run["id"])["status"] == "running"
        assert [g["name"] for g in ml.list_groups()] == ["study"]
        assert ml.ensure_group("study")["runs"] == 1
        assert ml.get_group("study")["name"] == "study"
    stored = platform.experiments.get(run["id"])
    assert stored["hyperparameters"] == {"alpha": 0.5, "beta": 2}
    assert stored["reproducibility"]["datasets"] == [{"name": "iris", "rows": 150}]


SCRIPT = """
import sys, time
from mlrig import Client
ml = Client(sys.argv[1], token=sys.argv[2])
run = ml.start_run(name="doomed")
ml.heartbeat(run["id"])
print(run["id"], flush=True)
while True:
    ml.heartbeat(run["id"])
    time.sleep(0.2)
"""


def test_a_sigkilled_scripts_run_is_failed_by_the_server(tmp_path):
    """The script beats every 0.2 s, is SIGKILLed, and its run goes ``failed`` about one
    heartbeat timeout (1 s) later, by the server's own sweep."""
    from mlrig.api import create_app

    platform = make_platform(tmp_path / "home", tracking={"heartbeat_timeout_seconds": 1.0})
    try:
        platform.security.create_user(name="dev", role="developer")
        token = platform.security.create_token(user="dev")["token"]
        with serve(create_app(platform)) as url:
            script = subprocess.Popen(
                [sys.executable, "-c", SCRIPT, url, token],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                run_id = script.stdout.readline().strip()
                time.sleep(1.5)  # longer than the timeout: the heartbeats keep it running
                assert platform.experiments.status(run_id) == "running"
                os.kill(script.pid, signal.SIGKILL)
                killed_at = time.monotonic()
            finally:
                script.kill()
                script.wait(10)
            while platform.experiments.status(run_id) == "running":
                assert time.monotonic() - killed_at < 10, "the sweep never failed the run"
                time.sleep(0.05)
            waited = time.monotonic() - killed_at
        run = platform.experiments.get(run_id)
        assert run["status"] == "failed"
        assert run["status_detail"].startswith("no heartbeat for 1 s")
        assert 0.7 < waited < 4, waited
    finally:
        platform.close()
