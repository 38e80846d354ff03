"""``/api/ml/sweeps``: every route, bad input (4xx in the one error shape), dry runs,
stop, permissions, paging, and a sweep run to the end by a worker, read through
:class:`mlrig.Client`."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from mlrig import datasets
from mlrig.errors import ConflictError

BASE = "/api/ml/sweeps"
SPACE = {"C": {"type": "float", "low": 0.01, "high": 10.0, "log": True}}
BASE_PARAMS = {"estimator": "sklearn.linear_model.LogisticRegression", "max_iter": 300}


@pytest.fixture
def client(api_client, admin_headers):
    api_client.headers.update(admin_headers)
    return api_client


def _body(trainer_name, name="sw", **kw):
    body = {
        "name": name,
        "trainer": trainer_name,
        "space": SPACE,
        "objective": "val_accuracy",
        "direction": "maximize",
        "strategy": "random",
        "max_trials": 4,
        "parallelism": 2,
        "hyperparameters": BASE_PARAMS,
        "dataset": {"uri": str(datasets.path("iris")), "target": "species"},
        "seed": 7,
    }
    body.update(kw)
    return body


def _create(client, trainer, name="sw", **kw):
    response = client.post(BASE, json=_body(trainer, name, **kw))
    assert response.status_code == 201, response.text
    return response.json()


def _error(response, status, code=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def test_create_show_list_trials_results(client, trainer, platform):
    created = _create(client, trainer, description="first sweep")
    assert created["status"] == "running" and created["name"] == "sw"
    assert created["strategy"] == "random" and created["direction"] == "maximize"
    assert created["max_trials"] == 4 and created["parallelism"] == 2
    assert created["planned_trials"] == 4 and created["created_by"] == "root-admin"
    assert created["template"]["hyperparameters"] == BASE_PARAMS
    assert created["trials"]["total"] == 2 and created["trials"]["queued"] == 2
    assert created["best"] is None
    # by id, by name, by id prefix: the same sweep
    for ref in (created["id"], "sw", created["id"][:8]):
        shown = client.get(f"{BASE}/{ref}")
        assert shown.status_code == 200 and shown.json()["id"] == created["id"]
    listed = client.get(BASE).json()
    assert [s["id"] for s in listed["items"]] == [created["id"]]
    assert listed["next_cursor"] is None
    assert client.get(BASE, params={"status": "completed"}).json()["items"] == []
    trials = client.get(f"{BASE}/sw/trials").json()["items"]
    assert [t["number"] for t in trials] == [0, 1]
    for trial in trials:
        assert trial["state"] == "queued" and trial["value"] is None
        assert 0.01 <= trial["params"]["C"] <= 10.0
        assert trial["experiment_name"] == f"sw-t{trial['number']:04d}"
    results = client.get(f"{BASE}/sw/results").json()
    assert results["sweep_id"] == created["id"] and results["best"] is None
    assert [t["number"] for t in results["trials"]] == [0, 1]
    assert results["best_so_far"] == [] and results["importances"]["params"] == {}
    assert "at least 5" in results["importances"]["reason"]
    # the sweep is an experiment (origin sweep) and its trials are nested in it
    experiments = client.get("/api/ml/experiments", params={"origin": "sweep"}).json()["items"]
    assert [e["id"] for e in experiments] == [created["id"]]
    nested = client.get("/api/ml/experiments", params={"parent": created["id"]}).json()["items"]
    assert sorted(e["name"] for e in nested) == ["sw-t0000", "sw-t0001"]
    entries = platform.audit.query(action="create_sweep")
    assert [e["resource_id"] for e in entries] == [created["id"]]


def test_dry_run_creates_nothing_and_counts_a_grid(client, trainer):
    space = {
        "C": {"type": "choice", "options": [0.1, 1.0, 10.0]},
        "max_iter": {"type": "int", "low": 100, "high": 400, "step": 100},
    }
    response = client.post(BASE, json=_body(trainer, strategy="grid", space=space, dry_run=True))
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["id"] is None and view["status"] == "dry_run"
    assert view["planned_trials"] == 4  # max_trials bounds it
    assert view["grid_points"] == 12
    assert client.get(BASE).json()["items"] == []
    assert client.get("/api/ml/experiments").json()["items"] == []
    _error(client.get(f"{BASE}/sw"), 404, "not_found")


def test_a_pruner_is_stored_with_its_defaults(client, trainer):
    made = _create(client, trainer, pruner={"rule": "asha", "max_resource": 27})
    assert made["pruner"] == {
        "rule": "asha",
        "min_resource": 1,
        "max_resource": 27,
        "reduction_factor": 3,
        "min_early_stopping_rate": 0,
    }
    trial = client.get(f"{BASE}/sw/trials").json()["items"][0]
    configuration = client.get(f"/api/ml/experiments/{trial['experiment_id']}").json()
    assert configuration["parent_id"] == made["id"]


def test_stop_cancels_the_trials_and_twice_is_409(client, trainer):
    created = _create(client, trainer)
    stopped = client.post(f"{BASE}/{created['id']}/stop")
    assert stopped.status_code == 200, stopped.text
    view = stopped.json()
    assert view["status"] == "cancelled"
    assert view["trials"]["cancelled"] == 2 and view["trials"]["queued"] == 0
    states = {t["state"] for t in client.get(f"{BASE}/sw/trials").json()["items"]}
    assert states == {"cancelled"}
    again = _error(client.post(f"{BASE}/sw/stop"), 409, "conflict")
    assert "cancelled" in again["message"]
    _error(client.post(f"{BASE}/nope/stop"), 404, "not_found")


def test_a_name_in_use_is_409(client, trainer):
    _create(client, trainer)
    _error(client.post(BASE, json=_body(trainer)), 409, "conflict")
    client.post("/api/ml/experiments", json={"name": "taken", "trainer": trainer})
    _error(client.post(BASE, json=_body(trainer, name="taken")), 409, "conflict")


NUL = "a\u0000b"


BAD_BODIES = [
    ({"colour": "blue"}, "colour"),  # unknown field
    ({"space": {}}, "space"),
    ({"space": []}, "space"),
    ({"space": {"C": {"type": "float", "low": 5, "high": 1}}}, "C"),
    ({"space": {"C": {"type": "spline"}}}, "C"),
    ({"space": {"k": {"type": "choice", "options": []}}}, "k"),
    ({"space": {"g": {"type": "float", "low": 0, "high": 1, "when": {"nope": "x"}}}}, "g"),
    ({"name": NUL}, "name"),
    ({"name": ""}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"objective": ""}, "objective"),
    ({"objective": "x" * 101}, "objective"),
    ({"objective": NUL}, "objective"),
    ({"direction": "up"}, "direction"),
    ({"objective_kind": "holdout"}, "objective_kind"),
    ({"strategy": "simulated-annealing"}, "strategy"),
    ({"max_trials": 0}, "max_trials"),
    ({"max_trials": 10**20}, "max_trials"),
    ({"max_trials": "many"}, "max_trials"),
    ({"max_trials": 2.5}, "max_trials"),
    ({"parallelism": 0}, "parallelism"),
    ({"max_seconds": 0}, "max_seconds"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"),
    ({"priority": 5000}, "priority"),
    ({"pruner": {"rule": "coin-flip"}}, "pruner"),
    ({"pruner": {"rule": "asha"}}, "max_resource"),  # required
    ({"pruner": {"rule": "asha", "max_resource": 3, "min_resource": 3}}, "max_resource"),
    ({"pruner": {"rule": "asha", "max_resource": 9, "min_early_stopping_rate": 10**8}}, "rate"),
    ({"pruner": {"rule": "median", "warmup_steps": -1}}, "warmup_steps"),
    ({"pruner": {"rule": "median", "patience": 3}}, "patience"),
    ({"strategy_options": {"no_such_option": 1}}, "strategy_options"),
    ({"hyperparameters": {"k": NUL}}, "hyperparameters"),
    ({"trainer": "no-such-trainer"}, "trainer"),
    ({"dry_run": "yes please"}, "dry_run"),
]


def test_bad_input_is_422_in_the_error_shape(client, trainer):
    """Each bad body: a 422 naming the field, and nothing created."""
    wrong = []
    for change, field in BAD_BODIES:
        response = client.post(BASE, json=_body(trainer, **change))
        error = _error(response, 422, "validation_error")
        if field not in json.dumps(error):
            wrong.append((change, error))
    assert wrong == []
    assert client.get(BASE).json()["items"] == []


def test_a_lone_surrogate_is_refused(client, trainer):
    raw = json.dumps(_body(trainer)).replace('"sw"', '"s\\ud800w"')
    response = client.post(BASE, content=raw, headers={"Content-Type": "application/json"})
    _error(response, 422, "validation_error")


def test_a_huge_grid_is_refused_with_its_count(client, trainer):
    space = {f"p{i}": {"type": "int", "low": 1, "high": 10} for i in range(9)}  # 10**9
    error = _error(client.post(BASE, json=_body(trainer, strategy="grid", space=space)), 422)
    assert "1,000,000,000" in error["message"] or "1000000000" in error["message"]


BAD_QUERIES = [
    (BASE, {"status": "bogus"}),
    (BASE, {"limit": 0}),
    (BASE, {"limit": 1001}),
    (BASE, {"offset": -1}),
    (BASE, {"cursor": "!!"}),
    (f"{BASE}/sw/trials", {"state": "bogus"}),
    (f"{BASE}/sw/trials", {"limit": 0}),
]


def test_bad_query_parameters_are_422_and_unknown_sweeps_404(client, trainer):
    _create(client, trainer)
    for path, params in BAD_QUERIES:
        _error(client.get(path, params=params), 422, "validation_error")
    for suffix in ("", "/trials", "/results"):
        error = _error(client.get(f"{BASE}/no-such-sweep{suffix}"), 404, "not_found")
        assert "no-such-sweep" in error["message"]


def test_pages_follow_the_cursor(client, trainer):
    for name in ("a1", "a2", "a3"):
        _create(client, trainer, name=name, parallelism=1, max_trials=1)
    first = client.get(BASE, params={"limit": 2}).json()
    assert [s["name"] for s in first["items"]] == ["a3", "a2"]
    assert first["next_cursor"]
    second = client.get(BASE, params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [s["name"] for s in second["items"]] == ["a1"] and second["next_cursor"] is None


def test_permissions(api_client, make_token, trainer):
    _error(api_client.get(BASE), 401, "unauthenticated")
    viewer = make_token("vic", "viewer")
    developer = make_token("dev", "developer")
    _error(api_client.post(BASE, json=_body(trainer), headers=viewer), 403, "forbidden")
    made = api_client.post(BASE, json=_body(trainer), headers=developer)
    assert made.status_code == 201, made.text
    assert made.json()["created_by"] == "dev"
    for suffix in ("", "/sw", "/sw/trials", "/sw/results"):
        assert api_client.get(f"{BASE}{suffix}", headers=viewer).status_code == 200
    _error(api_client.post(f"{BASE}/sw/stop", headers=viewer), 403, "forbidden")
    assert api_client.post(f"{BASE}/sw/stop", headers=developer).status_code == 200


def test_the_permission_map_has_the_sweep_routes(api_client):
    from mlrig.api.security import route_permissions
    from mlrig.security import Permission

    needs = {(r.method, r.path): r.permission for r in route_permissions(api_client.app)}
    assert needs[("POST", BASE)] == needs[("POST", "/api/ml/experiments")] == Permission.WRITE
    assert needs[("POST", f"{BASE}/{{id}}/stop")] == Permission.WRITE
    for path in (BASE, f"{BASE}/{{id}}", f"{BASE}/{{id}}/trials", f"{BASE}/{{id}}/results"):
        assert needs[("GET", path)] == Permission.READ


def test_a_sweep_runs_to_the_end_and_the_client_reads_it(platform, live_server, admin_headers):
    """Through mlrig.Client against a real server; a worker in this process runs the
    trials and drives the sweep."""
    from mlrig import Client
    from mlrig.engine.allocator import Capacity
    from mlrig.engine.worker import Worker

    token = admin_headers["Authorization"].split()[1]
    with Client(live_server, token=token) as ml:
        body = _body("sklearn", name="iris-c", max_trials=5)
        name = body.pop("name")
        planned = ml.create_sweep(name, **{**body, "dry_run": True})
        assert planned["id"] is None and ml.list_sweeps() == []
        created = ml.create_sweep(name, **body)
        assert created["status"] == "running"
        Worker(platform, concurrency=2, capacity=Capacity(cpus=(0, 0))).run(exit_when_idle=True)
        sweep = ml.get_sweep("iris-c")
        assert sweep["status"] == "completed", sweep["status_detail"]
        assert sweep["trials"]["completed"] == 5 and sweep["trials"]["total"] == 5
        trials = ml.sweep_trials("iris-c")
        assert [t["number"] for t in trials] == [0, 1, 2, 3, 4]
        assert all(t["state"] == "completed" and 0 <= t["value"] <= 1 for t in trials)
        assert all(t["duration_s"] > 0 for t in trials)
        assert ml.sweep_trials("iris-c", state="failed") == []
        best = sweep["best"]
        assert best["value"] == max(t["value"] for t in trials)
        results = ml.sweep_results("iris-c")
        assert results["best"]["trial_id"] == best["trial_id"]
        curve = results["best_so_far"]
        assert len(curve) == 5 and curve[-1]["best"] == best["value"]
        assert [p["best"] for p in curve] == sorted(p["best"] for p in curve)  # maximize
        importances = results["importances"]
        assert importances["method"].startswith("permutation importance")
        assert set(importances["params"]) <= {"C"}
        assert sweep["model_version_id"]  # the best trial's model, registered
        with pytest.raises(ConflictError, match="completed"):
            ml.stop_sweep("iris-c")


def test_an_unknown_nevergrad_optimizer_lists_what_nevergrad_has(client, trainer):
    pytest.importorskip("nevergrad")
    body = _body(trainer, strategy="nevergrad", strategy_options={"optimizer": "NGOpt9000"})
    error = _error(client.post(BASE, json=body), 422, "validation_error")
    assert "NGOpt9000" in error["message"]
    assert "NGOpt" in error["details"]["allowed"] and "CMA" in error["message"]
    made = _create(client, trainer, strategy="nevergrad", strategy_options={"optimizer": "CMA"})
    assert made["strategy"] == "nevergrad" and made["strategy_options"]["optimizer"] == "CMA"


def test_the_driver_thread_survives_errors_and_names_its_process(caplog):
    """The app's lifespan thread: advance() every driver interval; an error is logged and
    the next round runs."""
    import os
    import threading
    from types import SimpleNamespace

    from mlrig.api.routers.sweeps import drive_sweeps

    calls, done = [], threading.Event()

    def advance(*, owner):
        calls.append(owner)
        if len(calls) == 1:
            raise RuntimeError("database briefly away")
        if len(calls) == 3:
            done.set()
        return 0

    platform = SimpleNamespace(
        settings=SimpleNamespace(search=SimpleNamespace(driver_interval_seconds=0.01)),
        sweeps=SimpleNamespace(advance=advance, driver=SimpleNamespace(idle=False)),
    )
    stop = threading.Event()
    thread = threading.Thread(target=drive_sweeps, args=(platform, stop))
    with caplog.at_level("WARNING", logger="mlrig.api.routers.sweeps"):
        thread.start()
        assert done.wait(30)
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert calls[0].startswith("server:") and calls[0].endswith(f":{os.getpid()}")
    assert "driving the sweeps failed" in caplog.text and "database briefly away" in caplog.text


def test_the_app_lifespan_drives_sweeps(platform, monkeypatch):
    from fastapi.testclient import TestClient

    from mlrig.api import create_app

    owners = []
    monkeypatch.setattr(platform.settings.search, "driver_interval_seconds", 0.01)
    monkeypatch.setattr(platform.sweeps, "advance", lambda *, owner: owners.append(owner) or 0)
    with TestClient(create_app(platform)):
        deadline = time.monotonic() + 30
        while not owners and time.monotonic() < deadline:
            time.sleep(0.01)
    assert owners and owners[0].startswith("server:")


def test_non_finite_values_travel_as_text_and_come_back_as_floats(platform, live_server):
    """A trial whose objective was infinite (SQLite stores NaN as NULL; PostgreSQL keeps
    it): the wire says "Infinity" (JSON has none), the Client and the remote CLI's facade
    give the float back, and the curve leaves it out."""
    import math

    from sqlalchemy import select

    from mlrig import Client
    from mlrig.db.models.sweeps import SweepTrial
    from mlrig.remote import RemotePlatform

    token = platform.security.create_token(user=_admin(platform))["token"]
    with Client(live_server, token=token) as ml:
        body = _body("sklearn")
        sweep = ml.create_sweep(body.pop("name"), **body)
        with platform.db.session() as session:
            rows = session.scalars(select(SweepTrial).order_by(SweepTrial.number)).all()
            rows[0].value, rows[0].state, rows[0].told = math.inf, "completed", True
            rows[1].value, rows[1].state, rows[1].told = 0.9, "completed", True
        raw = ml.request("GET", f"/sweeps/{sweep['id']}/trials")["items"]
        assert raw[0]["value"] == "Infinity" and raw[1]["value"] == 0.9
        trials = ml.sweep_trials(sweep["id"])
        assert trials[0]["value"] == math.inf and trials[1]["value"] == 0.9
        results = ml.sweep_results(sweep["id"])
        assert results["trials"][0]["value"] == math.inf
        assert [p["number"] for p in results["best_so_far"]] == [1]
    remote = RemotePlatform(live_server, token=token)
    try:
        assert remote.sweeps.trials(sweep["id"])[0]["value"] == math.inf
    finally:
        remote.close()


def _admin(platform):
    platform.security.create_user(name="nan-admin", role="admin")
    return "nan-admin"


def test_create_read_and_stop_on_each_database(db_platform, trainer):
    from fastapi.testclient import TestClient

    from mlrig.api import create_app

    db_platform.security.create_user(name="db-admin", role="admin")
    token = db_platform.security.create_token(user="db-admin")["token"]
    with TestClient(create_app(db_platform), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        made = _create(client, trainer)
        assert client.get(f"{BASE}/sw").json()["trials"]["total"] == 2
        assert len(client.get(f"{BASE}/sw/trials").json()["items"]) == 2
        assert client.get(f"{BASE}/sw/results").json()["sweep_id"] == made["id"]
        assert client.post(f"{BASE}/sw/stop").json()["status"] == "cancelled"
        _error(client.post(f"{BASE}/sw/stop"), 409, "conflict")
        assert [s["status"] for s in client.get(BASE).json()["items"]] == ["cancelled"]


def test_the_server_s_driver_backs_off_while_no_sweep_runs_and_stops_at_once(tmp_path, monkeypatch):
    """An idle server looks for running sweeps less and less often (doubling up to
    IDLE_DRIVE_SECONDS), not every interval; a stop still ends the loop within one."""
    import threading

    from mlrig.api.routers.sweeps import drive_sweeps
    from mlrig.testing.fixtures import make_platform

    interval = 0.02
    platform = make_platform(tmp_path / "home", search={"driver_interval_seconds": interval})
    try:
        calls = []
        advance = platform.sweeps.advance

        def counted(*, owner):
            calls.append(time.monotonic())
            return advance(owner=owner)

        monkeypatch.setattr(platform.sweeps, "advance", counted)
        stop = threading.Event()
        thread = threading.Thread(target=drive_sweeps, args=(platform, stop), daemon=True)
        thread.start()
        time.sleep(1.5)  # 75 intervals: without the back-off, about 75 rounds
        stop.set()
        thread.join(1.0)
        assert not thread.is_alive(), "the driver did not see its stop within a second"
        assert platform.sweeps.driver.idle
        assert 2 <= len(calls) <= 10, len(calls)
        # the waits grew: some round came at least 8 intervals after the one before
        assert max(b - a for a, b in itertools.pairwise(calls)) >= 8 * interval, calls
    finally:
        platform.close()
