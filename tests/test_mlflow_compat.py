"""The MLflow tracking REST routes: the real ``mlflow`` client (its own virtualenv, a
subprocess) runs an unchanged MLflow tracking script against a uvicorn server on
loopback, and the records land in mlrig; MLflow's error bodies, the permissions of every
MLflow route, search and paging, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
import uuid

import pytest
from fastapi.testclient import TestClient

from mlrig.api import create_app
from mlrig.api.mlflow.search import matches, parse_filter, parse_order_by, sort_records
from mlrig.api.security import route_permissions
from mlrig.errors import MlrigError
from mlrig.security import Permission
from mlrig.testing.mlflow_venv import mlflow_python_or_skip, run_mlflow_script

#: an MLflow tracking script as an MLflow user writes it; it prints what it read back
MLFLOW_SCRIPT = r"""
import json, os, tempfile
import mlflow
import pandas as pd

mlflow.set_tracking_uri(os.environ["TRACKING_URI"])
mlflow.set_experiment("churn")
with mlflow.start_run(run_name="baseline") as run:
    mlflow.log_param("lr", 0.1)
    mlflow.log_params({"depth": 3, "model": "gbm"})
    for step in range(5):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    mlflow.log_metrics({"acc": 0.75, "diverged": float("nan")}, step=4)
    mlflow.set_tag("team", "growth")
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    mlflow.log_input(mlflow.data.from_pandas(frame, name="train"), context="training")
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("hello from mlflow")
    os.makedirs(os.path.join(folder, "plots"))
    with open(os.path.join(folder, "plots", "curve.csv"), "w") as f:
        f.write("step,loss\n0,1.0\n")
    mlflow.log_artifact(os.path.join(folder, "notes.txt"))
    mlflow.log_artifacts(os.path.join(folder, "plots"), artifact_path="plots")
    with mlflow.start_run(run_name="fold-1", nested=True):
        mlflow.log_metric("fold_acc", 0.7)
baseline = run.info.run_id
with mlflow.start_run(run_id=baseline):  # resumed, as MLflow users do
    mlflow.log_metric("loss", 0.1, step=5)

try:
    with mlflow.start_run(run_name="broken"):
        mlflow.log_param("lr", 0.5)
        raise RuntimeError("diverged")
except RuntimeError:
    pass

client = mlflow.MlflowClient()
found = mlflow.search_runs(
    experiment_names=["churn"], filter_string="metrics.loss < 0.5 and params.lr = '0.1'"
)
downloaded = mlflow.artifacts.download_artifacts(run_id=baseline, artifact_path="notes.txt")
# the same client with a viewer's token: it reads, and is refused writes
os.environ["MLFLOW_TRACKING_TOKEN"] = os.environ["VIEWER_TOKEN"]
viewer_sees = sorted(e.name for e in client.search_experiments())
try:
    mlflow.set_experiment("not-mine")
    refused = None
except mlflow.exceptions.MlflowException as exc:
    refused = [exc.error_code, exc.message]

print("RESULT " + json.dumps({
    "viewer_sees": viewer_sees,
    "refused": refused,
    "baseline": baseline,
    "found": found["run_id"].tolist(),
    "status": found["status"].tolist(),
    "history": [[m.step, m.value] for m in client.get_metric_history(baseline, "loss")],
    "artifacts": sorted(a.path for a in client.list_artifacts(baseline)),
    "plots": sorted(a.path for a in client.list_artifacts(baseline, "plots")),
    "downloaded": open(downloaded).read(),
    "experiments": sorted(e.name for e in client.search_experiments()),
    "all_runs": len(mlflow.search_runs(experiment_names=["churn"])),
}))
"""


@pytest.fixture(scope="module")
def mlflow_client_python():
    """The python of the real mlflow client's virtualenv (made the first time)."""
    return mlflow_python_or_skip()


def test_an_unchanged_mlflow_script_tracks_into_mlrig(
    platform, live_server, make_token, mlflow_client_python
):
    token = make_token("mlflow-user", "developer")["Authorization"].split()[1]
    viewer = make_token("watcher", "viewer")["Authorization"].split()[1]
    done = run_mlflow_script(
        MLFLOW_SCRIPT,
        env={
            "TRACKING_URI": live_server,
            "MLFLOW_TRACKING_TOKEN": token,
            "VIEWER_TOKEN": viewer,
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        },
        python=mlflow_client_python,
        timeout=240,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    seen = json.loads(line[len("RESULT ") :])

    # what the mlflow client read back
    assert seen["found"] == [seen["baseline"]]
    assert seen["status"] == ["FINISHED"]
    assert seen["history"] == [[s, 1.0 / (s + 1)] for s in range(5)] + [[5, 0.1]]
    assert seen["artifacts"] == ["notes.txt", "plots"]
    assert seen["plots"] == ["plots/curve.csv"]
    assert seen["downloaded"] == "hello from mlflow"
    assert seen["experiments"] == ["Default", "churn"]
    assert seen["all_runs"] == 3
    assert seen["viewer_sees"] == ["Default", "churn"]
    code, message = seen["refused"]
    assert code == "PERMISSION_DENIED"  # MLflow's code, mlrig's message
    assert "lacks the 'write' permission" in message

    # what mlrig holds: the same records, as tracked runs of the group "churn"
    service = platform.experiments
    # Default was only read (made by no write), and the viewer's experiment was refused
    assert [g["name"] for g in service.list_groups()] == ["churn"]
    runs = {r["name"]: r for r in service.list(group="churn")}
    assert set(runs) == {"baseline", "fold-1", "broken"}
    assert runs["fold-1"]["parent_id"] == runs["baseline"]["id"]  # nested in mlrig too
    assert runs["fold-1"]["status"] == "completed"
    baseline = service.get(runs["baseline"]["id"])
    assert uuid.UUID(baseline["id"]).hex == seen["baseline"]
    assert baseline["origin"] == "mlflow"
    assert baseline["status"] == "completed"
    assert baseline["created_by"] == "mlflow-user"
    assert baseline["hyperparameters"] == {"lr": "0.1", "depth": "3", "model": "gbm"}
    assert baseline["tags"]["team"] == "growth"
    assert baseline["tags"]["mlflow.runName"] == "baseline"
    history = service.metrics(baseline["id"])["metrics"]
    assert history["loss"]["steps"] == [0, 1, 2, 3, 4, 5]
    assert history["loss"]["values"] == [1.0 / (s + 1) for s in range(5)] + [0.1]
    assert [e["new"] for e in baseline["events"]][-3:] == ["completed", "running", "completed"]
    assert history["acc"]["values"] == [0.75]
    assert math.isnan(history["diverged"]["values"][0])  # kept as NaN, not dropped
    files = service.list_run_artifacts(baseline["id"])
    assert [f["path"] for f in files] == ["notes.txt", "plots/curve.csv"]
    pieces, size = service.open_run_artifact(baseline["id"], "notes.txt")
    assert b"".join(pieces) == b"hello from mlflow" and size == 17
    (dataset,) = baseline["reproducibility"]["datasets"]
    assert dataset["name"] == "train" and dataset["context"] == "training"
    assert dataset["rows"] == 3 and dataset["digest"]
    assert [c["name"] for c in dataset["schema"]["mlflow_colspec"]] == ["x", "y"]
    broken = service.get(runs["broken"]["id"])
    assert broken["status"] == "failed"
    assert broken["hyperparameters"] == {"lr": "0.5"}


# --- the REST contract, on SQLite and PostgreSQL -----------------------------------------

API = "/api/2.0/mlflow"


@pytest.fixture
def mlflow_api(db_platform):
    """``(client, headers by role)`` over the app of a platform on each database."""
    headers = {}
    for role in ("viewer", "developer"):
        db_platform.security.create_user(name=f"m-{role}", role=role)
        token = db_platform.security.create_token(user=f"m-{role}")["token"]
        headers[role] = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(db_platform), raise_server_exceptions=False) as client:
        yield client, headers


def _ok(response, status=200):
    assert response.status_code == status, response.text
    return response.json()


def test_errors_are_mlflow_bodies_and_4xx(mlflow_api):
    client, h = mlflow_api
    dev = h["developer"]
    missing = client.get(f"{API}/experiments/get-by-name?experiment_name=nope", headers=dev)
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "nope" in missing.json()["message"]

    experiment = _ok(client.post(f"{API}/experiments/create", json={"name": "e1"}, headers=dev))
    for name in ("e1", "Default"):
        again = client.post(f"{API}/experiments/create", json={"name": name}, headers=dev)
        assert again.status_code == 400
        assert again.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"

    run = _ok(
        client.post(
            f"{API}/runs/create",
            json={"experiment_id": experiment["experiment_id"], "start_time": 1_700_000_000_000},
            headers=dev,
        )
    )["run"]
    run_id = run["info"]["run_id"]
    assert run["info"]["status"] == "RUNNING"
    assert run["info"]["start_time"] == 1_700_000_000_000
    assert run["info"]["artifact_uri"] == (
        f"mlflow-artifacts:/{experiment['experiment_id']}/{run_id}/artifacts"
    )
    body = {"run_id": run_id, "key": "lr", "value": "0.1"}
    _ok(client.post(f"{API}/runs/log-parameter", json=body, headers=dev))
    _ok(client.post(f"{API}/runs/log-parameter", json=body, headers=dev))  # same value: fine
    changed = client.post(f"{API}/runs/log-parameter", json={**body, "value": "0.2"}, headers=dev)
    assert changed.status_code == 400
    assert changed.json()["error_code"] == "INVALID_PARAMETER_VALUE"

    for bad in (
        client.get(f"{API}/runs/get?run_id=not-a-run", headers=dev),
        client.get(f"{API}/runs/get?run_id={uuid.uuid4().hex}", headers=dev),
        client.get(f"{API}/experiments/get?experiment_id={uuid.uuid4().hex}", headers=dev),
    ):
        assert bad.status_code == 404, bad.text
        assert bad.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    for bad in (
        client.post(
            f"{API}/runs/log-metric",
            content=b"{not json",
            headers={**dev, "Content-Type": "application/json"},
        ),
        client.post(f"{API}/runs/log-metric", json={"run_id": run_id}, headers=dev),
        client.post(
            f"{API}/runs/log-metric",
            json={"run_id": run_id, "key": "m", "value": 1.0, "step": -1},
            headers=dev,
        ),
        client.post(f"{API}/runs/search", json={"filter": "metrics.x >"}, headers=dev),
        client.post(f"{API}/runs/update", json={"run_id": run_id, "status": "DONE"}, headers=dev),
    ):
        assert bad.status_code == 400, bad.text
        assert bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_every_mlflow_route_needs_its_permission(mlflow_api):
    client, h = mlflow_api
    rows = [
        r
        for r in route_permissions(client.app)
        if r.path.startswith(("/api/2.0/mlflow", "/ajax-api/2.0/mlflow"))
    ]
    assert len(rows) >= 2 * 22  # both prefixes, every route
    for row in rows:
        reads = row.method == "GET" or row.path.endswith("/search")  # searches are POSTs
        expected = Permission.READ if reads else Permission.WRITE
        assert row.permission == expected, row
        path = row.path.replace("{path}", "0/x/artifacts/f")
        anonymous = client.request(row.method, path)
        assert anonymous.status_code == 401, row
        assert anonymous.json()["error_code"] == "UNAUTHENTICATED"  # MLflow's shape
        answer = client.request(row.method, path, headers=h["viewer"], json={})
        if expected == Permission.WRITE:
            assert answer.status_code == 403, row
            assert answer.json()["error_code"] == "PERMISSION_DENIED"
            assert "write" in answer.json()["message"]
        else:
            assert answer.status_code not in (401, 403) and answer.status_code < 500, row


def test_unknown_endpoints_and_methods_answer_mlflow_bodies(mlflow_api):
    client, h = mlflow_api
    unknown = client.post(f"{API}/registered-models/create", json={}, headers=h["developer"])
    assert unknown.status_code == 404
    assert unknown.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    wrong = client.get(f"{API}/runs/create", headers=h["developer"])
    assert wrong.status_code == 405
    assert wrong.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    assert "POST" in wrong.headers["allow"]
    # mlrig's own routes keep mlrig's shape
    mine = client.get("/api/ml/experiments/nope", headers=h["developer"])
    assert mine.status_code == 404 and mine.json()["error"]["code"] == "not_found"


def test_runs_batch_history_search_and_the_ajax_prefix(mlflow_api):
    client, h = mlflow_api
    dev = h["developer"]
    experiment_id = _ok(
        client.post(f"{API}/experiments/create", json={"name": "sweep"}, headers=dev)
    )["experiment_id"]
    ids = []
    for i, acc in enumerate([0.5, 0.9, 0.7]):
        run = _ok(
            client.post(
                f"{API}/runs/create",
                json={"experiment_id": experiment_id, "run_name": "trial", "tags": []},
                headers=dev,
            )
        )["run"]
        ids.append(run["info"]["run_id"])
        assert run["info"]["run_name"] == "trial"  # MLflow names need not be unique
        batch = {
            "run_id": run["info"]["run_id"],
            "metrics": [
                {"key": "acc", "value": acc, "timestamp": 1_700_000_000_000 + i, "step": 0},
                {"key": "loss", "value": "NaN", "timestamp": 1_700_000_000_000, "step": 1},
            ],
            "params": [{"key": "i", "value": str(i)}],
            "tags": [{"key": "kind", "value": "odd" if i % 2 else "even"}],
        }
        _ok(client.post(f"{API}/runs/log-batch", json=batch, headers=dev))
    odd = _ok(
        client.post(
            f"{API}/runs/create",
            json={"experiment_id": experiment_id, "run_name": "my first run!"},
            headers=dev,
        )
    )["run"]
    assert odd["info"]["run_name"] == "my first run!"  # not a valid mlrig name: kept as a tag
    odd_tags = {t["key"]: t["value"] for t in odd["data"]["tags"]}
    assert odd_tags["mlflow.runName"] == "my first run!"
    _ok(client.post(f"{API}/runs/delete", json={"run_id": odd["info"]["run_id"]}, headers=dev))
    done = {"run_id": ids[0], "status": "FINISHED", "end_time": 1_700_000_100_000}
    info = _ok(client.post(f"{API}/runs/update", json=done, headers=dev))["run_info"]
    assert info["status"] == "FINISHED" and info["end_time"] == 1_700_000_100_000
    # a batch with one bad point writes nothing of it
    bad = {
        "run_id": ids[0],
        "metrics": [{"key": "acc", "value": 1.0, "step": -5}],
        "params": [{"key": "late", "value": "x"}],
    }
    refused = client.post(f"{API}/runs/log-batch", json=bad, headers=dev)
    assert refused.status_code == 400 and refused.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    run0 = _ok(client.get(f"{API}/runs/get?run_id={ids[0]}", headers=dev))["run"]
    assert {p["key"] for p in run0["data"]["params"]} == {"i"}
    killed = {"run_id": odd["info"]["run_id"], "status": "KILLED"}
    assert (
        _ok(client.post(f"{API}/runs/update", json=killed, headers=dev))["run_info"]["status"]
        == "KILLED"
    )

    history = _ok(
        client.get(f"{API}/metrics/get-history?run_id={ids[0]}&metric_key=loss", headers=dev)
    )["metrics"]
    assert history == [{"key": "loss", "value": "NaN", "timestamp": 1_700_000_000_000, "step": 1}]

    def search(**body):
        body.setdefault("experiment_ids", [experiment_id])
        return _ok(client.post(f"{API}/runs/search", json=body, headers=h["viewer"]))

    first = search(order_by=["metrics.acc DESC"], max_results=2)
    assert [r["info"]["run_id"] for r in first["runs"]] == [ids[1], ids[2]]
    second = search(
        order_by=["metrics.acc DESC"], max_results=2, page_token=first["next_page_token"]
    )
    assert [r["info"]["run_id"] for r in second["runs"]] == [ids[0]]
    assert "next_page_token" not in second
    params = {p["key"]: p["value"] for p in second["runs"][0]["data"]["params"]}
    assert params == {"i": "0"}
    assert [r["info"]["run_id"] for r in search(filter="tags.kind = 'odd'")["runs"]] == [ids[1]]
    finished = search(filter="attributes.status = 'FINISHED' and metrics.acc >= 0.5")
    assert [r["info"]["run_id"] for r in finished["runs"]] == [ids[0]]

    # deleted runs leave the default view, and come back
    _ok(client.post(f"{API}/runs/delete", json={"run_id": ids[2]}, headers=dev))
    assert {r["info"]["run_id"] for r in search()["runs"]} == {ids[0], ids[1]}
    deleted = search(run_view_type="DELETED_ONLY")["runs"]
    assert {r["info"]["run_id"] for r in deleted} == {ids[2], odd["info"]["run_id"]}
    assert {r["info"]["lifecycle_stage"] for r in deleted} == {"deleted"}
    _ok(client.post(f"{API}/runs/restore", json={"run_id": ids[2]}, headers=dev))
    assert len(search()["runs"]) == 3
    assert len(search(run_view_type="ALL")["runs"]) == 4

    # the UI's prefix answers the same
    ajax = client.get(f"/ajax-api/2.0/mlflow/runs/get?run_id={ids[1]}", headers=dev)
    assert _ok(ajax)["run"]["info"]["run_id"] == ids[1]
    found = _ok(
        client.post(
            f"{API}/experiments/search",
            json={"filter": "name LIKE 'sw%'", "max_results": 10},
            headers=dev,
        )
    )
    assert [e["name"] for e in found["experiments"]] == ["sweep"]


def test_artifact_routes_round_trip(mlflow_api):
    client, h = mlflow_api
    dev = h["developer"]
    run = _ok(client.post(f"{API}/runs/create", json={"experiment_id": "0"}, headers=dev))["run"]
    run_id = run["info"]["run_id"]
    assert run["info"]["experiment_id"] == "0"
    base = f"/api/2.0/mlflow-artifacts/artifacts/0/{run_id}/artifacts"
    _ok(client.put(f"{base}/model/weights.bin", content=b"\x00\x01" * 1000, headers=dev))
    _ok(client.put(f"{base}/readme.md", content=b"# hi", headers=dev))
    listing = _ok(
        client.get(
            "/api/2.0/mlflow-artifacts/artifacts",
            params={"path": f"0/{run_id}/artifacts"},
            headers=dev,
        )
    )
    assert listing["files"] == [
        {"path": "model", "is_dir": True},
        {"path": "readme.md", "is_dir": False, "file_size": 4},
    ]
    inner = _ok(
        client.get(
            "/api/2.0/mlflow-artifacts/artifacts",
            params={"path": f"0/{run_id}/artifacts/model"},
            headers=dev,
        )
    )
    assert inner["files"] == [{"path": "weights.bin", "is_dir": False, "file_size": 2000}]
    got = client.get(f"{base}/model/weights.bin", headers=h["viewer"])
    assert got.status_code == 200 and got.content == b"\x00\x01" * 1000
    missing = client.get(f"{base}/nope.txt", headers=dev)
    assert missing.status_code == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    escape = client.put(f"{base}/a/%2E%2E/%2E%2E/x", content=b"x", headers=dev)
    assert escape.status_code == 400, escape.text


# --- the filter grammar ---------------------------------------------------------------------


RECORD = {
    "metrics": {"acc": 0.9, "loss": float("nan")},
    "params": {"lr": "0.1", "model name": "gbm"},
    "tags": {"mlflow.runName": "Trial-3", "team": "growth"},
    "attributes": {"status": "FINISHED", "start_time": 1000, "run_id": "ab"},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metrics.acc > 0.5", True),
        ("metrics.acc >= 0.9 AND params.lr = '0.1'", True),
        ("metrics.acc < 0.5", False),
        ("metrics.loss > 0", False),  # NaN meets no order
        ("metrics.loss != 0", True),
        ("metrics.missing > 0", False),  # a run without the metric does not match
        ('params.`model name` = "gbm"', True),
        ("tags.mlflow.runName LIKE 'Trial-%'", True),
        ("tags.\"mlflow.runName\" ILIKE 'trial%'", True),
        ("tags.mlflow.runName LIKE 'trial%'", False),
        ("attributes.status IN ('FINISHED', 'FAILED')", True),
        ("status NOT IN ('FINISHED')", False),
        ("attributes.start_time > 999 and run_id = 'ab'", True),
    ],
)
def test_filter_grammar(text, expected):
    assert matches(RECORD, parse_filter(text)) is expected


@pytest.mark.parametrize(
    "text",
    ["metrics.acc", "metrics.acc > 'x'", "params.lr > '1'", "a = 1 OR b = 2", "x IN 1", "= 1"],
)
def test_filter_grammar_refuses(text):
    with pytest.raises(MlrigError) as caught:
        parse_filter(text)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"


def test_order_by_puts_missing_values_last():
    records = [{"metrics": {"acc": 0.2}}, {"metrics": {}}, {"metrics": {"acc": 0.8}}]
    ordered = sort_records(records, parse_order_by(["metrics.acc DESC"]))
    assert [r["metrics"].get("acc") for r in ordered] == [0.8, 0.2, None]
    ordered = sort_records(records, parse_order_by(["metrics.acc"]))
    assert [r["metrics"].get("acc") for r in ordered] == [0.2, 0.8, None]


def test_mlflow_writes_are_audited_but_not_per_point_logging(mlflow_api, db_platform):
    client, h = mlflow_api
    dev = h["developer"]
    experiment_id = _ok(
        client.post(f"{API}/experiments/create", json={"name": "audited"}, headers=dev)
    )["experiment_id"]
    run_id = _ok(
        client.post(f"{API}/runs/create", json={"experiment_id": experiment_id}, headers=dev)
    )["run"]["info"]["run_id"]
    point = {"run_id": run_id, "key": "loss", "value": 0.5, "timestamp": 1, "step": 0}
    _ok(client.post(f"{API}/runs/log-metric", json=point, headers=dev))
    refused = client.post(f"{API}/experiments/create", json={"name": "x"}, headers=h["viewer"])
    assert refused.status_code == 403

    entries = [e for e in db_platform.audit.query(limit=100) if e["resource_type"] == "mlflow"]
    paths = {(e["details"]["path"], e["outcome"]) for e in entries}
    assert (f"{API}/experiments/create", "success") in paths
    assert (f"{API}/runs/create", "success") in paths
    assert (f"{API}/experiments/create", "denied") in paths
    assert not any(path.endswith("/runs/log-metric") for path, _ in paths)
    assert {e["actor"] for e in entries if e["outcome"] == "success"} == {"m-developer"}
