"""Deployments over REST (``/api/ml/deployments``), through ``mlrig.Client`` and the CLI
(``mlrig deployments``): the CRUD round trip, roles, bad input (always 4xx, never 5xx)
and concurrent creates of one name (one 201, one 409) on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mlrig.security import Principal
from mlrig.serving import spec

ACTOR = Principal(name="tests", role="admin")
#: what ``auto`` picks for the breast cancer version (onnx only where onnxruntime is)
AUTO_RUNTIME = "onnx" if "onnx" in spec.installed_runtimes() else "sklearn"
BASE = "/api/ml/deployments"


def register(platform: Any, name: str = "bc", variant: int = 0) -> dict[str, Any]:
    from mlrig.testing.serving import register_breast_cancer_model

    return register_breast_cancer_model(platform, name, variant=variant)


def assert_error(response: Any, status: int, words: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert words.lower() in error["message"].lower(), error["message"]
    return error


@pytest.fixture
def bc(platform: Any) -> dict[str, Any]:
    return register(platform)


def test_crud_round_trip(api_client: Any, admin_headers: dict[str, str], bc: Any) -> None:
    h = admin_headers
    made = api_client.post(
        BASE,
        json={
            "name": "churn",
            "model": "bc",
            "version": "1",
            "replicas": {"min": 1, "max": 3},
            "batching": {"max_batch_size": 16},
            "resources": {"cpu": 2},
        },
        headers=h,
    )
    assert made.status_code == 201, made.text
    view = made.json()
    assert view["status"] == "pending" and view["resolved_runtime"] == AUTO_RUNTIME
    assert view["replicas"] == {"min": 1, "max": 3} and view["batching"]["max_batch_size"] == 16
    assert view["created_by"] == "root-admin"
    assert api_client.get(f"{BASE}/churn", headers=h).json()["id"] == view["id"]
    assert api_client.get(f"{BASE}/{view['id']}", headers=h).json()["name"] == "churn"

    page = api_client.get(BASE, params={"model": "bc", "status": "pending"}, headers=h).json()
    assert [d["name"] for d in page["items"]] == ["churn"] and page["next_cursor"] is None
    assert api_client.get(BASE, params={"environment": "staging"}, headers=h).json()["items"] == []

    changed = api_client.put(
        f"{BASE}/churn", json={"status": "inactive", "batching": {"max_latency_ms": 5}}, headers=h
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["status"] == "inactive"
    assert changed.json()["batching"] == {"max_batch_size": 16, "max_latency_ms": 5.0}

    gone = api_client.delete(f"{BASE}/churn", headers=h)
    assert gone.status_code == 200 and gone.json()["deleted_at"]
    assert_error(api_client.get(f"{BASE}/churn", headers=h), 404, "no deployment")
    again = api_client.post(BASE, json={"name": "churn", "model": "bc", "alias": "nope"}, headers=h)
    assert_error(again, 404, "no alias")

    audited = {e["action"] for e in api_client.get("/api/ml/audit", headers=h).json()["items"]}
    assert {"create_deployment", "update_deployment", "delete_deployment"} <= audited


def test_roles(api_client: Any, make_token: Any, bc: Any) -> None:
    viewer = make_token("val", "viewer")
    developer = make_token("dev", "developer")
    deployer = make_token("dep", "deployer")
    body = {"name": "churn", "model": "bc", "version": "1"}
    assert_error(api_client.post(BASE, json=body, headers=developer), 403)
    assert_error(api_client.post(BASE, json=body), 401)
    assert api_client.post(BASE, json=body, headers=deployer).status_code == 201
    assert api_client.get(f"{BASE}/churn", headers=viewer).status_code == 200
    assert api_client.get(BASE, headers=viewer).status_code == 200
    assert_error(api_client.put(f"{BASE}/churn", json={}, headers=viewer), 403)
    assert_error(api_client.delete(f"{BASE}/churn", headers=developer), 403)


BAD_BODIES = [
    ({"name": "a\x00b", "model": "bc", "version": "1"}, 422),
    ({"name": "churn", "model": "bc\x00", "version": "1"}, 422),
    ({"name": "churn", "model": "bc", "version": "1", "replicas": {"max": 10**40}}, 422),
    ({"name": "churn", "model": "bc", "version": "1", "replicas": {"min": 2**63}}, 422),
    ({"name": "churn", "model": "bc", "version": "1", "batching": {"max_batch_size": -1}}, 422),
    ({"name": "churn", "model": "bc", "version": "1", "traffic": [{"version": "1"}]}, 422),
    ({"name": "churn", "model": "bc", "version": "1", "traffic": "50"}, 422),
    ({"name": "churn", "model": "bc", "version": "1", "environment": "moon"}, 422),
    ({"name": "churn", "model": "bc", "version": "1", "runtime": "../x"}, 422),
    ({"name": "churn", "model": "bc", "version": "1", "runtime": "nope"}, 422),
    ({"name": "churn", "model": "bc", "version": "1", "unknown": 1}, 422),
    ({"name": "churn", "model": "bc"}, 422),
    ({"name": "churn", "model": "bc", "version": "1", "alias": "champion"}, 422),
    ({"name": "churn", "model": "nope", "version": "1"}, 404),
    ({"name": "churn", "model": "bc", "version": "99"}, 404),
    ({"name": "churn", "model": "bc", "version": "1", "shadow": "99"}, 404),
    ({"name": "x" * 101, "model": "bc", "version": "1"}, 422),
    ({"name": "00000000-0000-0000-0000-000000000000", "model": "bc", "version": "1"}, 422),
    ({"name": "churn", "model": "bc", "version": "1", "allow_nan": "maybe"}, 422),
    ([], 422),
    ("churn", 422),
]


@pytest.mark.parametrize(("body", "status"), BAD_BODIES)
def test_bad_bodies_are_4xx(
    api_client: Any, admin_headers: dict[str, str], bc: Any, body: Any, status: int
) -> None:
    assert_error(api_client.post(BASE, json=body, headers=admin_headers), status)
    assert api_client.get(BASE, headers=admin_headers).json()["items"] == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "\\ud800", "model": "bc", "version": "1"}',  # a lone surrogate
        b'{"name": "churn", "model": "bc", "version": "1", "resources": {"\\udfff": 1}}',
        b'{"name": "churn", "model": "bc", "version": "1", "resources": {"n": NaN}}',
        b'{"name": "churn", "model": "bc", "version": "1", "resources": {"n": 1e999}}',
        b'{"name": "churn", "model": "bc", "version": "1", "batching": {"max_latency_ms": 1e999}}',
        b'{"name": "churn", "model": "bc", "version": "1", "replicas": {"min": 1'
        + b"0" * 5000
        + b"}}",
        b'{"name": "churn"',  # not JSON
        b"\xff\xfe",
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_unstorable_bodies_are_4xx(
    api_client: Any, admin_headers: dict[str, str], bc: Any, raw: bytes
) -> None:
    headers = {**admin_headers, "Content-Type": "application/json"}
    response = api_client.post(BASE, content=raw, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()["error"]) == {"code", "message", "details"}


def test_bad_paths_and_queries_are_4xx(
    api_client: Any, admin_headers: dict[str, str], bc: Any
) -> None:
    h = admin_headers
    assert_error(api_client.get(f"{BASE}/nope", headers=h), 404)
    assert_error(api_client.get(f"{BASE}/a%00b", headers=h), 422)
    assert_error(api_client.get(f"{BASE}/%ED%A0%80", headers=h), 404)  # bad UTF-8: U+FFFD
    assert_error(api_client.get(f"{BASE}/{'x' * 4000}", headers=h), 404)  # no such name
    assert_error(api_client.get(f"{BASE}/{'x' * 5000}", headers=h), 422)  # over 4096
    assert_error(api_client.put(f"{BASE}/nope", json={"status": "inactive"}, headers=h), 404)
    assert_error(api_client.delete(f"{BASE}/nope", headers=h), 404)
    assert_error(api_client.get(BASE, params={"status": "sleeping"}, headers=h), 422)
    assert_error(api_client.get(BASE, params={"limit": 10**30}, headers=h), 422)
    assert_error(api_client.get(BASE, params={"cursor": "abc"}, headers=h), 422)
    assert_error(api_client.get(BASE, params={"model": "nope"}, headers=h), 404)


def test_update_bad_input_is_4xx_and_changes_nothing(
    api_client: Any, admin_headers: dict[str, str], bc: Any
) -> None:
    h = admin_headers
    api_client.post(BASE, json={"name": "churn", "model": "bc", "version": "1"}, headers=h)
    before = api_client.get(f"{BASE}/churn", headers=h).json()
    for body, status in [
        ({"status": "deploying"}, 422),
        ({"version": "1", "alias": "champion"}, 422),
        ({"version": "99"}, 404),
        ({"replicas": {"min": 5, "max": 2}}, 422),
        ({"traffic": [{"version": "1", "percent": 50}]}, 422),
        ({"name": "other"}, 422),
        ({"environment": "production"}, 409),
    ]:
        assert_error(api_client.put(f"{BASE}/churn", json=body, headers=h), status)
    assert api_client.get(f"{BASE}/churn", headers=h).json() == before


def test_a_version_without_model_artifacts_is_422(
    api_client: Any, admin_headers: dict[str, str], platform: Any
) -> None:
    platform.registry.create_version(
        "notes", files={"README.md": b"no model"}, actor=ACTOR, create_model=True
    )
    body = {"name": "n", "model": "notes", "version": "1"}
    assert_error(api_client.post(BASE, json=body, headers=admin_headers), 422, "no artifacts")


def test_openapi_documents_the_routes(api_client: Any) -> None:
    schema = api_client.get("/openapi.json").json()
    create = schema["paths"][BASE]["post"]
    assert {"201", "404", "409", "422"} <= set(create["responses"])
    assert "Deployment" in schema["components"]["schemas"]
    for method in ("get", "put", "delete"):
        assert method in schema["paths"][f"{BASE}/{{id}}"]


# --- the Python client ------------------------------------------------------------------


def test_client_methods(platform: Any, live_server: str, make_token: Any) -> None:
    import mlrig
    from mlrig.errors import ConflictError, NotFoundError

    register(platform)
    register(platform, variant=1)
    token = make_token("dep", "deployer")["Authorization"].split()[1]
    with mlrig.Client(live_server, token=token) as client:
        view = client.create_deployment(
            "churn", model="bc", version="1", traffic=[{"version": "2", "percent": 20}]
        )
        assert view["traffic"][0]["percent"] == 20.0
        assert client.get_deployment("churn")["id"] == view["id"]
        assert [d["name"] for d in client.list_deployments(model="bc")] == ["churn"]
        changed = client.update_deployment("churn", traffic=[], runtime="sklearn")
        assert changed["traffic"] == [] and changed["resolved_runtime"] == "sklearn"
        with pytest.raises(ConflictError):
            client.create_deployment("churn", model="bc", version="1")
        assert client.delete_deployment("churn")["status"] == "inactive"
        with pytest.raises(NotFoundError):
            client.get_deployment("churn")


def _race(url: str, headers: dict[str, str], name: str) -> list[int]:
    """Two clients POST the same deployment name past a barrier; their status codes."""
    import httpx

    start = threading.Barrier(2)
    codes: list[int] = []

    def create() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            start.wait()
            body = {"name": name, "model": "bc", "version": "1"}
            codes.append(client.post(BASE, json=body).status_code)

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return codes


# --- PostgreSQL (and SQLite): a race on the name ------------------------------------------


def test_two_concurrent_creates_of_one_name(db_platform: Any) -> None:
    """Two clients create the same name at once through a real server: one 201, one
    409, never a 500 (the unique index decides; the loser's IntegrityError is a 409)."""
    from mlrig.api import create_app
    from mlrig.testing.fixtures import serve

    register(db_platform)
    db_platform.security.create_user(name="dep", role="deployer")
    token = db_platform.security.create_token(user="dep")["token"]
    headers = {"Authorization": f"Bearer {token}"}
    with serve(create_app(db_platform)) as url:
        for round_ in range(3):  # a few rounds: the two must really overlap at least once
            codes = _race(url, headers, f"race{round_}")
            assert sorted(codes) == [201, 409], codes
    names = [d["name"] for d in db_platform.deployments.list()["items"]]
    assert names == ["race0", "race1", "race2"]


# --- the CLI ------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path) -> Any:
    """``mlrig --config ... deployments ARGS`` in this process; ``cli.platform`` is the same
    installation."""
    from mlrig.cli.context import CliState
    from mlrig.cli.deployments import deployments
    from mlrig.cli.main import cli as group

    config = tmp_path / "mlrig.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "cli.db"}"\n'
        f'[storage.local]\nroot = "{tmp_path / "artifacts"}"\n'
    )
    if "deployments" not in group.commands:
        group.add_command(deployments, name="deployments")
    states: list[CliState] = []

    def run(*args: str, token: str | None = None, input: str | None = None) -> Result:
        state = CliState()
        states.append(state)
        auth = ["--token", token] if token else []
        return CliRunner().invoke(
            group, ["--config", str(config), *auth, "deployments", *args], obj=state, input=input
        )

    setup = CliState(config_path=str(config))
    states.append(setup)
    run.platform = setup.platform()  # type: ignore[attr-defined]
    yield run
    for state in states:
        if state._platform is not None:
            state._platform.close()


def test_cli_round_trip(cli: Any) -> None:
    register(cli.platform)
    register(cli.platform, variant=1)
    made = cli(
        "create", "churn", "--model", "bc", "--version", "1", "--max-batch-size", "8",
        "--canary", "2=10", "--min-replicas", "1", "--max-replicas", "2", "--json",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    view = json.loads(made.output)
    assert view["batching"]["max_batch_size"] == 8 and view["traffic"][0]["version"] == "2"
    assert view["replicas"] == {"min": 1, "max": 2}

    listed = cli("list", "--json")
    assert [d["name"] for d in json.loads(listed.output)] == ["churn"]
    table = cli("list")
    assert table.exit_code == 0 and "churn" in table.output and "pending" in table.output
    shown = cli("show", "churn")
    assert shown.exit_code == 0 and AUTO_RUNTIME in shown.output and view["id"] in shown.output
    assert json.loads(cli("show", view["id"], "--json").output)["name"] == "churn"

    updated = cli("update", "churn", "--no-canary", "--stop", "--json")
    assert updated.exit_code == 0, updated.output
    data = json.loads(updated.output)
    assert data["traffic"] == [] and data["status"] == "inactive"
    assert "nothing to change" in cli("update", "churn").output

    refused = cli("delete", "churn", input="n\n")
    assert refused.exit_code != 0 and cli("show", "churn").exit_code == 0
    deleted = cli("delete", "churn", "--yes")
    assert deleted.exit_code == 0 and "deleted deployment 'churn'" in deleted.output
    entries = cli.platform.audit.query(action="delete_deployment")
    assert [e["resource_id"] for e in entries] == [view["id"]]


def test_cli_errors_are_one_line(cli: Any) -> None:
    register(cli.platform)
    for args in [
        ("show", "nope"),
        ("create", "x", "--model", "nope", "--version", "1"),
        ("create", "x", "--model", "bc"),
        ("create", "x", "--model", "bc", "--version", "1", "--canary", "oops"),
        ("create", "x", "--model", "bc", "--version", "1", "--runtime", "nope"),
        ("update", "nope", "--stop"),
    ]:
        result = cli(*args)
        assert result.exit_code != 0, args
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), args


def test_cli_roles(cli: Any) -> None:
    register(cli.platform)
    cli.platform.security.create_user(name="val", role="viewer")
    token = cli.platform.security.create_token(user="val")["token"]
    refused = cli("create", "x", "--model", "bc", "--version", "1", token=token)
    assert refused.exit_code != 0 and "deploy" in refused.output.lower()
    assert cli("list", token=token).exit_code == 0
