"""Token scopes: validated at creation, shown in token views, honoured by every check
(the request guard, the CLI, token creation), and the predict permission per deployment."""

from __future__ import annotations

import json
import threading

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from sqlalchemy import event

from mlrig.api import create_app
from mlrig.api.security import Predictor, route_permissions
from mlrig.errors import PermissionDeniedError, ValidationError
from mlrig.security import Permission, Principal
from mlrig.security.scopes import normalize_scopes

#: the deployments the test's predict route knows: id -> name
DEPLOYMENTS = {"d-111": "churn", "d-222": "fraud"}


def predict_router() -> APIRouter:
    """A route declared like the data plane's predict route: ``Predictor``, then the
    deployment's own check (:meth:`Principal.require_predict`)."""
    router = APIRouter(prefix="/api/ml/scoped-test")

    @router.post("/{ref}/predict")
    def predict(ref: str, principal: Predictor) -> dict[str, str]:
        deployment_id = (
            ref
            if ref in DEPLOYMENTS
            else next((i for i, n in DEPLOYMENTS.items() if n == ref), ref)
        )
        principal.require_predict(deployment_id, DEPLOYMENTS.get(deployment_id, ref))
        return {"by": principal.name, "deployment": deployment_id}

    return router


@pytest.fixture
def scoped_platform(tmp_path):
    from mlrig.testing.fixtures import make_platform

    platform = make_platform(tmp_path / "home", serving={"token_cache_seconds": 60})
    yield platform
    platform.close()


@pytest.fixture
def client(scoped_platform):
    app = create_app(scoped_platform)
    app.include_router(predict_router())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def bearer(token: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['token']}"}


@pytest.fixture
def users(scoped_platform):
    for name, role in (("viewer", "viewer"), ("dev", "developer"), ("root", "admin")):
        scoped_platform.security.create_user(name=name, role=role)
    return scoped_platform.security


# --- validation --------------------------------------------------------------------------


def test_normalize_scopes():
    assert normalize_scopes(None) is None
    assert normalize_scopes(["predict", "read", "predict:*", "read"]) == ("predict:*", "read")
    assert normalize_scopes(["predict:churn", "predict:d-111"]) == (
        "predict:churn",
        "predict:d-111",
    )
    bad_scopes = (
        ["bogus"],
        ["predict:"],
        ["predict:two words"],
        ["Read"],
        [3],
        ["predict:a:b"],
        ["predict:a/b"],
        ["predict:\udcff"],  # a CLI argument's undecodable byte
        ["predict:" + "x" * 101],
    )
    for bad in bad_scopes:
        with pytest.raises(ValidationError) as refused:
            normalize_scopes(bad)
        assert repr(bad[0]) in refused.value.message
    with pytest.raises(ValidationError) as refused:
        normalize_scopes(["predict:\x00"])
    assert refused.value.details == {"scope": "predict:\ufffd"}  # can be sent as JSON
    with pytest.raises(ValidationError, match="must not be empty"):
        normalize_scopes([])
    with pytest.raises(ValidationError, match="at most 100"):
        normalize_scopes([f"predict:d{i}" for i in range(101)])


def test_create_token_validates_and_shows_scopes(users):
    made = users.create_token(user="viewer", scopes=["predict:churn", "predict"])
    assert made["scopes"] == ["predict:churn", "predict:*"]
    assert users.create_token(user="viewer")["scopes"] is None
    listed = {t["id"]: t["scopes"] for t in users.list_tokens(user="viewer")}
    assert listed[made["id"]] == ["predict:churn", "predict:*"]
    # a scope never raises a role: a viewer's token cannot carry "write"
    with pytest.raises(PermissionDeniedError, match="'write' is beyond what user 'viewer'"):
        users.create_token(user="viewer", scopes=["write"])
    with pytest.raises(ValidationError, match="'nope'"):
        users.create_token(user="viewer", scopes=["nope"])


def test_principal_honours_scopes():
    viewer = Principal("v", "viewer")
    assert viewer.can(Permission.PREDICT) and viewer.may_predict("d-1", "anything")
    only_churn = Principal("v", "viewer", scopes=("predict:churn",))
    assert only_churn.can(Permission.PREDICT)  # the guard lets it reach a predict route
    assert not only_churn.can(Permission.READ)
    assert only_churn.may_predict("d-9", "churn") and only_churn.may_predict("churn", "x")
    assert not only_churn.may_predict("d-9", "fraud")
    by_id = Principal("v", "viewer", scopes=("predict:d-9",))
    assert by_id.may_predict("d-9", "whatever") and not by_id.may_predict("d-8", "d-9x")
    read_only = Principal("d", "developer", scopes=("read",))
    assert read_only.can(Permission.READ) and not read_only.can(Permission.WRITE)
    assert not read_only.may_predict("d-9", "churn")
    # role AND scopes: a scope beyond the role grants nothing
    assert not Principal("v", "viewer", scopes=("deploy",)).can(Permission.DEPLOY)
    with pytest.raises(PermissionDeniedError) as refused:
        only_churn.require_predict("d-8", "fraud")
    assert refused.value.details == {
        "permission": "predict",
        "deployment": "fraud",
        "scopes": ["predict:churn"],
    }
    with pytest.raises(PermissionDeniedError) as refused:
        only_churn.require(Permission.READ)
    assert refused.value.details == {"permission": "read", "scopes": ["predict:churn"]}
    assert "limited to the scopes predict:churn" in refused.value.message


# --- REST ----------------------------------------------------------------------------------


def test_rest_creates_scoped_tokens(client, users):
    root = bearer(users.create_token(user="root"))
    made = client.post(
        "/api/ml/tokens", json={"user": "viewer", "scopes": ["predict:churn"]}, headers=root
    )
    assert made.status_code == 201, made.text
    assert made.json()["scopes"] == ["predict:churn"]
    listed = client.get("/api/ml/tokens", headers=root).json()["items"]
    assert {t["id"]: t["scopes"] for t in listed}[made.json()["id"]] == ["predict:churn"]
    bad = client.post("/api/ml/tokens", json={"scopes": ["predict:no spaces"]}, headers=root)
    assert bad.status_code == 422
    assert set(bad.json()["error"]) == {"code", "message", "details"}
    assert "body.scopes.0" in bad.json()["error"]["message"]  # the schema's pattern says it
    assert client.post("/api/ml/tokens", json={"scopes": []}, headers=root).status_code == 422


def test_the_guard_honours_scopes_on_every_route(client, users):
    predict_only = bearer(users.create_token(user="dev", scopes=["predict:*"]))
    refused = client.get("/api/ml/models", headers=predict_only)
    assert refused.status_code == 403
    assert refused.json()["error"]["details"] == {"permission": "read", "scopes": ["predict:*"]}
    # it cannot list or make tokens either (the token routes need read)
    assert client.get("/api/ml/tokens", headers=predict_only).status_code == 403
    assert client.post("/api/ml/tokens", json={}, headers=predict_only).status_code == 403

    read_only = bearer(users.create_token(user="dev", scopes=["read"]))
    assert client.get("/api/ml/models", headers=read_only).status_code == 200
    wrote = client.post("/api/ml/models", json={"name": "m"}, headers=read_only)
    assert wrote.status_code == 403
    assert wrote.json()["error"]["details"]["permission"] == "write"
    unscoped = bearer(users.create_token(user="dev"))
    assert client.post("/api/ml/models", json={"name": "m"}, headers=unscoped).status_code == 201


def test_a_scoped_token_cannot_mint_a_wider_one(client, users):
    read_only = bearer(users.create_token(user="dev", scopes=["read"]))
    wider = client.post("/api/ml/tokens", json={}, headers=read_only)  # unscoped = the role
    assert wider.status_code == 403
    assert "within its own scopes" in wider.json()["error"]["message"]
    more = client.post("/api/ml/tokens", json={"scopes": ["read", "write"]}, headers=read_only)
    assert more.status_code == 403 and more.json()["error"]["details"] == {"scopes": ["write"]}
    same = client.post("/api/ml/tokens", json={"scopes": ["read"]}, headers=read_only)
    assert same.status_code == 201 and same.json()["scopes"] == ["read"]


def test_predict_route_declares_the_predict_permission(client):
    needs = {(r.method, r.path): r.permission for r in route_permissions(client.app)}
    assert needs[("POST", "/api/ml/scoped-test/{ref}/predict")] == Permission.PREDICT


def test_a_scoped_token_predicts_only_its_deployment(client, users):
    churn = bearer(users.create_token(user="viewer", scopes=["predict:churn"]))
    ok = client.post("/api/ml/scoped-test/churn/predict", headers=churn)
    assert ok.status_code == 200 and ok.json() == {"by": "viewer", "deployment": "d-111"}
    assert client.post("/api/ml/scoped-test/d-111/predict", headers=churn).status_code == 200
    other = client.post("/api/ml/scoped-test/fraud/predict", headers=churn)
    assert other.status_code == 403
    assert other.json()["error"]["details"]["deployment"] == "fraud"
    assert client.get("/api/ml/models", headers=churn).status_code == 403
    # by id works the same
    by_id = bearer(users.create_token(user="viewer", scopes=["predict:d-222"]))
    assert client.post("/api/ml/scoped-test/fraud/predict", headers=by_id).status_code == 200
    assert client.post("/api/ml/scoped-test/churn/predict", headers=by_id).status_code == 403


def test_a_scope_less_viewer_may_predict_anywhere(client, users):
    viewer = bearer(users.create_token(user="viewer"))
    for ref in ("churn", "fraud", "d-111"):
        assert client.post(f"/api/ml/scoped-test/{ref}/predict", headers=viewer).status_code == 200
    assert client.post("/api/ml/scoped-test/churn/predict").status_code == 401
    read_only = bearer(users.create_token(user="viewer", scopes=["read"]))
    refused = client.post("/api/ml/scoped-test/churn/predict", headers=read_only)
    assert (
        refused.status_code == 403 and refused.json()["error"]["details"]["permission"] == "predict"
    )


def test_predictions_cost_no_database_query_within_the_ttl(client, users, scoped_platform):
    viewer = bearer(users.create_token(user="viewer"))
    assert client.post("/api/ml/scoped-test/churn/predict", headers=viewer).status_code == 200
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        # the app's background loops (sweep driver, silent-run sweeper) poll on their own
        # clock; only what the requests cost counts here
        if not threading.current_thread().name.startswith("mlrig-"):
            seen.append(statement)

    event.listen(scoped_platform.db.engine, "before_cursor_execute", count)
    try:
        for _ in range(30):
            assert (
                client.post("/api/ml/scoped-test/churn/predict", headers=viewer).status_code == 200
            )
    finally:
        event.remove(scoped_platform.db.engine, "before_cursor_execute", count)
    # neither the token check nor an audit entry per prediction
    assert seen == []
    # a refused prediction is still audited
    churn = bearer(users.create_token(user="viewer", scopes=["predict:churn"]))
    assert client.post("/api/ml/scoped-test/fraud/predict", headers=churn).status_code == 403
    denied = [e for e in scoped_platform.audit.query(actor="viewer") if e["outcome"] == "denied"]
    assert denied and denied[0]["details"]["status"] == 403


def test_revocation_reaches_predict_routes_within_the_ttl(tmp_path):
    from mlrig.testing.fixtures import make_platform

    platform = make_platform(tmp_path / "short", serving={"token_cache_seconds": 0.3})
    try:
        app = create_app(platform)
        app.include_router(predict_router())
        client = TestClient(app, raise_server_exceptions=False)
        platform.security.create_user(name="viewer", role="viewer")
        made = platform.security.create_token(user="viewer")
        path = "/api/ml/scoped-test/churn/predict"
        assert client.post(path, headers=bearer(made)).status_code == 200
        platform.security.revoke_token(made["id"])
        threading.Event().wait(0.4)  # past the TTL
        refused = client.post(path, headers=bearer(made))
        assert refused.status_code == 401
        assert "revoked" in refused.json()["error"]["message"]
        # other routes check the database every time: refused at once
        assert client.get("/api/ml/models", headers=bearer(made)).status_code == 401
    finally:
        platform.close()


# --- CLI -------------------------------------------------------------------------------------


def test_cli_creates_and_lists_scoped_tokens(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mlrig.cli.context import CliState
    from mlrig.cli.main import build_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")  # the table in full
    cli = build_cli()

    def invoke(*args):
        return CliRunner().invoke(cli, list(args), obj=CliState())

    assert invoke("users", "create", "svc", "--role", "viewer").exit_code == 0
    made = invoke(
        "tokens", "create", "--user", "svc", "--scope", "predict:churn", "--scope", "read", "--json"
    )
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["scopes"] == ["predict:churn", "read"]
    plain = invoke("tokens", "create", "--user", "svc", "--scope", "predict:churn")
    assert "scopes predict:churn" in plain.output
    listed = json.loads(invoke("tokens", "list", "--json").output)
    assert sorted(str(t["scopes"]) for t in listed) == [
        "['predict:churn', 'read']",
        "['predict:churn']",
    ]
    table = invoke("tokens", "list")
    assert "predict:churn" in table.output
    bad = invoke("tokens", "create", "--user", "svc", "--scope", "predict:a b")
    assert bad.exit_code != 0
    assert "invalid scope 'predict:a b'" in bad.output and "Traceback" not in bad.output
    beyond = invoke("tokens", "create", "--user", "svc", "--scope", "deploy")
    assert beyond.exit_code != 0 and "beyond what user 'svc'" in beyond.output
    # the scoped token is honoured by the CLI's --token too
    token = json.loads(made.output)["token"]
    refused = invoke("--token", token, "models", "create", "nope")
    assert refused.exit_code != 0 and "lacks the 'write' permission" in refused.output
    assert invoke("--token", token, "models", "list").exit_code == 0


# --- through the real data plane (mlrig serve's app) and mlrig server's predict route ---------


class Live:
    """Two deployments served by the data plane's raw ASGI app and by the REST API, both
    under uvicorn on loopback, with tokens of every kind."""

    def __init__(self, platform, urls, tokens, dataplane):
        self.platform = platform
        self.dataplane = dataplane
        self.urls = urls  # "dataplane" / "api" -> base URL
        self.tokens = tokens

    def predict(self, where, deployment, who, *, rows=2):
        import httpx

        from mlrig.testing.serving import breast_cancer_data

        body = {"inputs": breast_cancer_data().x[:rows].tolist()}
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.post(
            f"{self.urls[where]}/api/ml/deployments/{deployment}/predict",
            json=body,
            headers=headers,
            timeout=30,
        )


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import time

    import httpx

    from mlrig.serving.dataplane import create_app as dataplane_app
    from mlrig.testing.fixtures import make_platform, serve
    from mlrig.testing.serving import ACTOR, register_breast_cancer_model

    platform = make_platform(
        tmp_path_factory.mktemp("scoped-serving") / "home",
        # no database work between the first load and the end of the test: no refresh,
        # no inference records; the token TTL long enough for the query count
        serving={"refresh_seconds": 3600, "log_sample_rate": 0, "token_cache_seconds": 60},
    )
    for name in ("churn", "fraud"):
        version = register_breast_cancer_model(platform, name)
        platform.deployments.create(name=name, model=name, version=version["version"], actor=ACTOR)
    tokens = {}
    for user, role, scopes in (
        ("svc", "viewer", ["predict:churn"]),
        ("viewer", "viewer", None),
        ("reader", "developer", ["read"]),
        ("revoked", "viewer", None),
    ):
        platform.security.create_user(name=user, role=role)
        tokens[user] = platform.security.create_token(user=user, scopes=scopes)["token"]
    fraud_id = platform.deployments.get("fraud")["id"]
    platform.security.create_user(name="by-id", role="viewer")
    tokens["by-id"] = platform.security.create_token(user="by-id", scopes=[f"predict:{fraud_id}"])[
        "token"
    ]
    from mlrig.serving.dataplane import DataPlane

    dataplane = DataPlane(platform)
    app = dataplane_app(platform, dataplane=dataplane)
    with serve(app) as dp_url, serve(create_app(platform)) as api_url:
        deadline = time.monotonic() + 90
        while httpx.get(f"{dp_url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the data plane did not get ready"
            time.sleep(0.05)
        yield Live(platform, {"dataplane": dp_url, "api": api_url}, tokens, dataplane)
    dataplane.stop()
    platform.close()


@pytest.mark.parametrize("where", ["dataplane", "api"])
def test_live_a_scoped_token_predicts_only_its_deployment(live, where):
    ok = live.predict(where, "churn", "svc")
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["predictions"]) == 2
    refused = live.predict(where, "fraud", "svc")
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["code"] == "forbidden"
    assert error["details"]["deployment"] == "fraud" and "fraud" in error["message"]
    # by id: the id names the deployment as well as its name does
    assert live.predict(where, "fraud", "by-id").status_code == 200
    assert live.predict(where, "churn", "by-id").status_code == 403


@pytest.mark.parametrize("where", ["dataplane", "api"])
def test_live_a_scope_less_viewer_may_predict_anywhere(live, where):
    for deployment in ("churn", "fraud"):
        answer = live.predict(where, deployment, "viewer")
        assert answer.status_code == 200, answer.text
    assert live.predict(where, "churn", None).status_code == 401
    read_only = live.predict(where, "churn", "reader")  # scopes without predict
    assert read_only.status_code == 403
    assert read_only.json()["error"]["details"]["permission"] == "predict"


def test_live_predictions_make_no_database_query_within_the_ttl(live):
    for where in ("dataplane", "api"):  # the tokens are cached now
        assert live.predict(where, "churn", "svc").status_code == 200
        assert live.predict(where, "churn", "viewer").status_code == 200
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        # the app's background loops (sweep driver, silent-run sweeper) poll on their own
        # clock; only what the requests cost counts here
        if not threading.current_thread().name.startswith("mlrig-"):
            seen.append(statement)

    event.listen(live.platform.db.engine, "before_cursor_execute", count)
    try:
        for _ in range(20):
            for where in ("dataplane", "api"):
                assert live.predict(where, "churn", "svc").status_code == 200
                assert live.predict(where, "fraud", "viewer").status_code == 200
    finally:
        event.remove(live.platform.db.engine, "before_cursor_execute", count)
    # the API server's sweep for silent tracked runs may tick meanwhile: not a prediction's
    assert [s for s in seen if "training_experiments" not in s] == []


def test_live_revocation_is_honoured_within_the_ttl(live):
    for where in ("dataplane", "api"):
        assert live.predict(where, "churn", "revoked").status_code == 200
    token_id = next(t["id"] for t in live.platform.security.list_tokens(user="revoked"))
    live.platform.security.revoke_token(token_id)
    # within the TTL (60 s here) the cached token still works: the documented lag ...
    for where in ("dataplane", "api"):
        assert live.predict(where, "churn", "revoked").status_code == 200
    # ... which ends when the cache forgets it (what the TTL running out does)
    from mlrig.api.security import token_cache

    token_cache(live.platform).invalidate()  # the REST API's predict routes
    live.dataplane.tokens.invalidate()  # mlrig serve's
    for where in ("dataplane", "api"):
        refused = live.predict(where, "churn", "revoked")
        assert refused.status_code == 401, (where, refused.text)
        assert "revoked" in refused.json()["error"]["message"]
