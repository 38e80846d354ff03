"""``/api/ml/experiments``: every route, permissions, the error shape, the batched metric
ingest and log streaming."""

import json
import threading
import time

import pytest

from mlrig import datasets

BASE = "/api/ml/experiments"
MISSING = "6f1c1f0e-0000-4000-8000-000000000000"


@pytest.fixture
def client(api_client, admin_headers):
    api_client.headers.update(admin_headers)
    return api_client


def _error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def _create(client, trainer, name="exp", **kw):
    response = client.post(BASE, json={"name": name, "trainer": trainer, **kw})
    assert response.status_code == 201, response.text
    return response.json()


def test_create_get_list_and_audit(client, trainer, platform):
    created = _create(
        client,
        trainer,
        hyperparameters={"max_depth": 3},
        dataset={"uri": str(datasets.path("iris")), "target": "species"},
        resources={"cpus": 2},
        priority=3,
        early_stopping={"monitor": "val_loss", "mode": "min", "patience": 2},
        seed=11,
    )
    assert created["status"] == "created" and created["created_by"] == "root-admin"
    assert created["resources"] == {"cpus": 2, "gpus": 0, "memory_mb": 0}
    assert created["seed"] == 11 and created["priority"] == 3
    shown = client.get(f"{BASE}/exp").json()
    assert shown["id"] == created["id"] and shown["events"][0]["new"] == "created"
    assert client.get(f"{BASE}/{created['id']}").json()["name"] == "exp"
    _create(client, trainer, name="other", start=True)

    def names(**params):
        return [e["name"] for e in client.get(BASE, params=params).json()["items"]]

    assert names() == ["other", "exp"]
    assert names(status="queued") == ["other"]
    assert names(name_prefix="ex") == ["exp"]
    assert len(client.get(BASE, params={"limit": 1, "offset": 1}).json()["items"]) == 1
    entries = platform.audit.query(action="create_experiment")
    assert any(e["resource_id"] == created["id"] for e in entries)


def test_auth_401_and_403(api_client, make_token, trainer):
    _error(api_client.get(BASE), 401, "unauthenticated")
    viewer = make_token("vic", "viewer")
    assert api_client.get(BASE, headers=viewer).status_code == 200
    _error(
        api_client.post(BASE, json={"name": "x", "trainer": trainer}, headers=viewer),
        403,
        "forbidden",
    )
    _error(
        api_client.post(f"{BASE}/x/metrics", json={"points": []}, headers=viewer), 403, "forbidden"
    )
    developer = make_token("dev", "developer")
    exp = api_client.post(BASE, json={"name": "x", "trainer": trainer}, headers=developer)
    assert exp.status_code == 201
    for action in ("start", "stop", "rerun"):
        _error(api_client.post(f"{BASE}/x/{action}", headers=viewer), 403, "forbidden")
    assert api_client.get(f"{BASE}/x/events", headers=viewer).status_code == 200


BAD_CREATES = [
    ({"name": "x", "trainer": "no-such-trainer"}, "unknown trainer 'no-such-trainer'"),
    ({"name": "x", "resources": {"cpus": -1}}, "resources.cpus"),
    ({"name": "x", "resources": {"tpus": 1}}, "resources.tpus"),
    ({"name": "x", "early_stopping": {"monitor": "l", "mode": "up"}}, "mode"),
    ({"name": "x", "early_stopping": {"monitor": "l", "patience": 0}}, "patience"),
    ({"name": "x", "surprise": 1}, "surprise"),
    ({"name": "x y"}, "invalid experiment name"),
    ({"name": "x", "seed": -5}, "seed"),
    ({}, "name"),
]


def test_create_422(client, trainer):
    for fields, where in BAD_CREATES:
        response = client.post(BASE, json={"trainer": trainer, **fields})
        error = _error(response, 422, "validation_error")
        assert where in error["message"], (fields, error)
    assert client.get(BASE).json() == {"items": [], "next_cursor": None}


def test_404_and_409(client, trainer):
    for method, path in [
        ("get", MISSING),
        ("get", "nope"),
        ("post", "nope/start"),
        ("post", "nope/stop"),
        ("post", "nope/rerun"),
        ("get", "nope/events"),
        ("get", "nope/metrics"),
        ("get", "nope/logs"),
        ("get", "nope/logs?follow=true"),
    ]:
        _error(getattr(client, method)(f"{BASE}/{path}"), 404, "not_found")
    _error(
        client.post(f"{BASE}/nope/metrics", json={"points": [{"name": "a", "value": 1}]}),
        404,
        "not_found",
    )
    _create(client, trainer)
    _error(client.post(BASE, json={"name": "exp", "trainer": trainer}), 409, "conflict")
    assert client.post(f"{BASE}/exp/start").json()["status"] == "queued"
    _error(client.post(f"{BASE}/exp/start"), 409, "conflict")
    assert client.post(f"{BASE}/exp/stop").json()["status"] == "cancelled"
    _error(client.post(f"{BASE}/exp/stop"), 409, "conflict")


def test_rerun_events_and_compare(client, trainer):
    first = _create(client, trainer, hyperparameters={"max_depth": 3}, seed=5)
    response = client.post(f"{BASE}/exp/rerun")
    assert response.status_code == 201
    rerun = response.json()
    assert rerun["name"] == "exp-rerun-1" and rerun["seed"] == 5
    assert rerun["status"] == "queued"
    events = client.get(f"{BASE}/{rerun['id']}/events").json()["items"]
    assert [e["new"] for e in events] == ["created", "queued"]
    client.post(f"{BASE}/exp/metrics", json={"points": [{"name": "acc", "value": 0.75}]})
    data = client.get(f"{BASE}/compare", params={"ids": f"exp,{rerun['id']}"}).json()
    assert [e["id"] for e in data["experiments"]] == [first["id"], rerun["id"]]
    assert data["hyperparameters"] == {"max_depth": [3, 3]} and data["differing"] == []
    assert data["metrics"] == {"acc": [0.75, None]}
    repeated = client.get(f"{BASE}/compare?ids=exp&ids=exp-rerun-1")
    assert repeated.json()["experiments"][1]["name"] == "exp-rerun-1"
    _error(client.get(f"{BASE}/compare", params={"ids": "exp"}), 422, "validation_error")
    _error(client.get(f"{BASE}/compare", params={"ids": "exp,nope"}), 404, "not_found")


def test_metric_ingest_of_10k_points_and_history(client, trainer):
    exp = _create(client, trainer)
    points = [
        {"name": "loss", "value": 1 / (i + 1), "step": i, "epoch": i // 1000, "kind": "train"}
        for i in range(9_000)
    ]
    points += [
        {
            "name": "val_acc",
            "value": i / 1000,
            "step": i * 9,
            "epoch": i // 111,
            "kind": "validation",
        }
        for i in range(1_000)
    ]
    response = client.post(f"{BASE}/exp/metrics", json={"points": points})
    assert response.status_code == 200, response.text
    assert response.json() == {"experiment_id": exp["id"], "written": 10_000}
    body = client.get(f"{BASE}/exp/metrics").json()
    assert body["count"] == 10_000 and sorted(body["metrics"]) == ["loss", "val_acc"]
    assert body["metrics"]["loss"]["steps"] == list(range(9_000))
    assert body["metrics"]["val_acc"]["values"][-1] == 0.999
    page = client.get(
        f"{BASE}/exp/metrics", params={"name": "loss", "after_step": 8_990, "limit": 5}
    ).json()
    assert page["metrics"]["loss"]["steps"] == [8_991, 8_992, 8_993, 8_994, 8_995]
    only_val = client.get(f"{BASE}/exp/metrics", params={"kind": "validation"}).json()
    assert list(only_val["metrics"]) == ["val_acc"]
    _error(client.get(f"{BASE}/exp/metrics", params={"kind": "eval"}), 422, "validation_error")
    plot = client.get(f"{BASE}/exp/metrics", params={"name": "val_acc", "fields": "values,steps"})
    assert plot.json()["metrics"]["val_acc"] == {
        "steps": [i * 9 for i in range(1_000)],
        "values": [i / 1000 for i in range(1_000)],
    }
    assert plot.json()["count"] == 1_000
    bad = _error(
        client.get(f"{BASE}/exp/metrics", params={"fields": "steps,colour"}),
        422,
        "validation_error",
    )
    assert "['colour'] are not history columns" in bad["message"]
    tuples = client.post(f"{BASE}/exp/metrics", json={"points": [["loss", 0.1, 9_000, 9, "train"]]})
    assert tuples.json()["written"] == 1
    assert client.get(f"{BASE}/exp").json()["metrics"]["loss"]["step"] == 9_000


BAD_BODIES = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "the body must be"),
    (b'{"points": {}}', "the body must be"),
    (b'{"points": [], "extra": 1}', "the body must be"),
    # NaN and infinities are kept (the JSON texts, or Python's bare NaN), but not mangled
    (b'{"points": [{"name": "a", "value": NaN}', "not valid JSON"),
    (b'{"points": [{"name": "a", "value": "-inf"}]}', "is not a number"),
    (b'{"points": [{"name": "a", "value": 1e999}]}', "number is infinity"),
    (b'{"points": [{"name": "a", "value": "1"}]}', "is not a number"),
    (b'{"points": [{"name": "a", "value": 1, "step": 1.5}]}', "points[0].step"),
    (b'{"points": [{"value": 1}]}', "points[0].name: missing"),
    (b'{"points": [7]}', "is not a point"),
]


def test_malformed_ingest_is_422_and_writes_nothing(client, trainer):
    _create(client, trainer)
    for content, where in BAD_BODIES:
        response = client.post(
            f"{BASE}/exp/metrics", content=content, headers={"Content-Type": "application/json"}
        )
        error = _error(response, 422, "validation_error")
        assert where in error["message"], (content, error)
    assert client.get(f"{BASE}/exp/metrics").json()["count"] == 0


def test_too_many_points_is_422(client, trainer, monkeypatch):
    from mlrig.api.routers import experiments as routes

    monkeypatch.setattr(routes, "MAX_POINTS", 3)
    _create(client, trainer)
    points = [{"name": "a", "value": 1}] * 4
    error = _error(
        client.post(f"{BASE}/exp/metrics", json={"points": points}), 422, "validation_error"
    )
    assert "at most 3 per request" in error["message"]


def test_logs_by_offset(client, trainer, platform):
    exp = _create(client, trainer)
    assert client.get(f"{BASE}/exp/logs").content == b""
    platform.experiments.logs.append(exp["id"], b"line 1\nline 2\n")
    response = client.get(f"{BASE}/exp/logs")
    assert response.content == b"line 1\nline 2\n"
    assert response.headers["x-next-offset"] == "14"
    assert response.headers["content-type"].startswith("text/plain")
    part = client.get(f"{BASE}/exp/logs", params={"offset": 7, "limit": 4})
    assert part.content == b"line" and part.headers["x-next-offset"] == "11"
    _error(client.get(f"{BASE}/exp/logs", params={"offset": -1}), 422, "validation_error")


def test_logs_follow_on_a_finished_experiment_returns_everything_and_ends(
    client, trainer, platform
):
    exp = _create(client, trainer, start=True)
    for i in range(3):
        platform.experiments.logs.append(exp["id"], f"step {i}\n".encode())
    client.post(f"{BASE}/exp/stop")
    started = time.monotonic()
    response = client.get(f"{BASE}/exp/logs", params={"follow": "true"})
    assert response.status_code == 200
    assert response.content == b"step 0\nstep 1\nstep 2\n"
    assert time.monotonic() - started < 5
    tail = client.get(f"{BASE}/exp/logs", params={"follow": "true", "offset": 7})
    assert tail.content == b"step 1\nstep 2\n"


def test_logs_follow_streams_until_the_job_ends(client, trainer, platform):
    exp = _create(client, trainer, start=True)
    platform.experiments.logs.append(exp["id"], b"first\n")

    def job():
        time.sleep(0.7)
        platform.experiments.logs.append(exp["id"], b"second\n")
        platform.queue.cancel(platform.experiments.resolve("exp"), detail="done")
        platform.experiments.logs.append(exp["id"], b"")  # nothing: no empty chunk

    thread = threading.Thread(target=job)
    thread.start()
    with client.stream("GET", f"{BASE}/exp/logs", params={"follow": "true"}) as response:
        assert response.status_code == 200
        pieces = list(response.iter_bytes())
    thread.join()
    assert b"".join(pieces) == b"first\nsecond\n"
    assert len(list(platform.artifacts.list(f"experiments/{exp['id']}/logs/"))) == 2


def test_follow_gives_up_after_its_timeout(client, trainer):
    _create(client, trainer, start=True)
    started = time.monotonic()
    response = client.get(f"{BASE}/exp/logs", params={"follow": "true", "timeout": 0.6})
    assert response.status_code == 200 and response.content == b""
    assert 0.5 < time.monotonic() - started < 5


def test_openapi_lists_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        ("post", BASE),
        ("get", BASE),
        ("get", f"{BASE}/compare"),
        ("get", f"{BASE}/{{id}}"),
        ("post", f"{BASE}/{{id}}/start"),
        ("post", f"{BASE}/{{id}}/stop"),
        ("post", f"{BASE}/{{id}}/rerun"),
        ("get", f"{BASE}/{{id}}/events"),
        ("get", f"{BASE}/{{id}}/metrics"),
        ("post", f"{BASE}/{{id}}/metrics"),
        ("get", f"{BASE}/{{id}}/logs"),
        # tracked runs (api/routers/runs.py)
        ("post", f"{BASE}/{{id}}/params"),
        ("post", f"{BASE}/{{id}}/tags"),
        ("delete", f"{BASE}/{{id}}/tags/{{key}}"),
        ("post", f"{BASE}/{{id}}/heartbeat"),
        ("post", f"{BASE}/{{id}}/end"),
        ("post", f"{BASE}/{{id}}/resume"),
        ("post", f"{BASE}/{{id}}/datasets"),
        ("get", f"{BASE}/{{id}}/artifacts"),
        ("get", f"{BASE}/{{id}}/artifacts/{{path}}"),
        ("put", f"{BASE}/{{id}}/artifacts/{{path}}"),
    }
    present = {(m, p) for p, ops in paths.items() for m in ops if p.startswith(BASE)}
    assert expected == present
    ingest = paths[f"{BASE}/{{id}}/metrics"]["post"]
    assert json.dumps(ingest["requestBody"]).count("points") >= 1
