"""One permission map: what every route needs, enforced as declared, documented as
enforced, and tested as a matrix (every role x every route); plugin routes included."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import APIRouter, WebSocket
from fastapi.testclient import TestClient

from mlrig import hookimpl
from mlrig.api import create_app
from mlrig.api.permdoc import TABLES_END, TABLES_START, builtin_app, permission_tables
from mlrig.api.security import PUBLIC, Public, Reader, Writer, route_permissions
from mlrig.security import Permission, Principal, role_allows

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("viewer", "developer", "deployer", "admin")
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def _concrete(template: str) -> str:
    # ids that exist nowhere: the request passes the guard and then fails for its own reasons
    return re.sub(r"\{[^}]+\}", "no-such-thing", template)


#: scoped tokens the matrix also tries: label -> (role, scopes)
SCOPED = {
    "viewer[predict:*]": ("viewer", ["predict:*"]),
    "deployer[read]": ("deployer", ["read"]),
    "admin[read,predict:*]": ("admin", ["read", "predict:*"]),
}

TOKEN_CREATION = ("POST", "/api/ml/tokens")


def test_role_x_route_matrix(db_platform):
    """Every operation of the schema, as every role, as scoped tokens and without a token:
    401 without a token, 403 when the role (narrowed by the token's scopes) lacks the
    route's permission, else neither (nor a 5xx); on SQLite and PostgreSQL."""
    headers_of = {None: {}}
    principal_of = {}
    for role in ROLES:
        db_platform.security.create_user(name=f"matrix-{role}", role=role)
        token = db_platform.security.create_token(user=f"matrix-{role}")["token"]
        headers_of[role] = {"Authorization": f"Bearer {token}"}
        principal_of[role] = Principal(f"matrix-{role}", role)
    for label, (role, scopes) in SCOPED.items():
        token = db_platform.security.create_token(user=f"matrix-{role}", scopes=scopes)["token"]
        headers_of[label] = {"Authorization": f"Bearer {token}"}
        principal_of[label] = Principal(f"matrix-{role}", role, scopes=tuple(scopes))
    client = TestClient(create_app(db_platform), raise_server_exceptions=False)
    schema = client.get("/openapi.json").json()
    needs = {(row.method, row.path): row.permission for row in route_permissions(client.app)}
    operations = [
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in HTTP_METHODS
        if method in item
    ]
    # nothing under /api/ml escapes the schema (and so this matrix)
    api_routes = {k for k in needs if k[1].startswith("/api/ml")}
    assert api_routes == set(operations)
    failures = []
    for method, path in operations:
        permission = needs[(method, path)]
        for role, headers in headers_of.items():
            body = {"json": {}} if method in {"POST", "PUT", "PATCH"} else {}
            response = client.request(method, _concrete(path), headers=headers, **body)
            status = response.status_code
            if permission == PUBLIC:
                expected = "not 401/403"
                ok = status not in (401, 403) and status < 500
            elif role is None:
                expected, ok = "401", status == 401
            elif not principal_of[role].can(permission):
                expected, ok = "403", status == 403
            else:
                expected = "not 401/403/5xx"
                ok = status not in (401, 403) and status < 500
                if status == 403 and role in SCOPED and (method, path) == TOKEN_CREATION:
                    # the route's own check: an unscoped token ({}) is wider than the caller
                    ok = "within its own scopes" in response.json()["error"]["message"]
            if ok and status >= 400:
                error = response.json()["error"]
                ok = set(error) == {"code", "message", "details"}
            if not ok:
                failures.append(f"{method} {path} as {role or 'anonymous'}: {status}, {expected}")
    assert failures == []
    assert len(operations) >= 40


def test_the_map_is_what_the_routes_declare(api_client):
    needs = {(row.method, row.path): row.permission for row in route_permissions(api_client.app)}
    # the documented role table (docs/security.md), spot-checked against the map
    assert needs[("GET", "/api/ml/health")] == PUBLIC
    assert needs[("GET", "/api/ml/models")] == Permission.READ
    assert needs[("POST", "/api/ml/models")] == Permission.WRITE
    assert needs[("DELETE", "/api/ml/models/{id}")] == Permission.DELETE
    assert needs[("DELETE", "/api/ml/models/{id}/versions/{version}")] == Permission.DELETE
    assert needs[("POST", "/api/ml/approvals/{id}/approve")] == Permission.APPROVE
    assert needs[("GET", "/api/ml/users")] == Permission.ADMIN
    assert needs[("GET", "/api/ml/audit")] == Permission.ADMIN
    assert needs[("GET", "/openapi.json")] == PUBLIC
    # serving: the control plane needs deploy to change, read to look; predictions need
    # predict (viewer and up, narrowed per deployment by a token's scopes)
    assert needs[("POST", "/api/ml/deployments")] == Permission.DEPLOY
    assert needs[("GET", "/api/ml/deployments")] == Permission.READ
    assert needs[("GET", "/api/ml/deployments/{id}")] == Permission.READ
    assert needs[("PUT", "/api/ml/deployments/{id}")] == Permission.DEPLOY
    assert needs[("DELETE", "/api/ml/deployments/{id}")] == Permission.DEPLOY
    assert needs[("POST", "/api/ml/deployments/{id}/predict")] == Permission.PREDICT
    assert needs[("GET", "/api/ml/deployments/{id}/health")] == Permission.READ
    assert role_allows("viewer", Permission.PREDICT)
    # the feature store: read to look (values too, PII masked without read_pii), write to
    # define, push and materialise
    assert needs[("GET", "/api/ml/features")] == Permission.READ
    assert needs[("POST", "/api/ml/features")] == Permission.WRITE
    assert needs[("PUT", "/api/ml/features/{name}")] == Permission.WRITE
    assert needs[("GET", "/api/ml/features/{name}/values")] == Permission.READ
    assert needs[("POST", "/api/ml/features/batch")] == Permission.READ
    assert needs[("POST", "/api/ml/features/training-set")] == Permission.READ
    assert needs[("POST", "/api/ml/entities")] == Permission.WRITE
    assert needs[("GET", "/api/ml/entities/{name}")] == Permission.READ
    assert needs[("POST", "/api/ml/feature-views")] == Permission.WRITE
    assert needs[("PUT", "/api/ml/feature-views/{name}")] == Permission.WRITE
    assert needs[("POST", "/api/ml/feature-views/{name}/push")] == Permission.WRITE
    assert needs[("POST", "/api/ml/feature-views/{name}/materialize")] == Permission.WRITE
    assert needs[("GET", "/api/ml/feature-views/{name}/statistics")] == Permission.READ
    assert role_allows("deployer", Permission.READ_PII)
    assert not role_allows("developer", Permission.READ_PII)


def test_a_developer_cannot_delete_a_model(api_client, make_token):
    developer = make_token("dev", "developer")
    deployer = make_token("ops", "deployer")
    assert (
        api_client.post("/api/ml/models", json={"name": "keep"}, headers=developer).status_code
        == 201
    )
    response = api_client.delete("/api/ml/models/keep", headers=developer)
    assert response.status_code == 403
    assert response.json()["error"]["details"] == {"permission": "delete"}
    assert api_client.get("/api/ml/models/keep", headers=developer).status_code == 200
    assert api_client.delete("/api/ml/models/keep", headers=deployer).status_code == 200


def test_docs_tables_are_the_map():
    text = (ROOT / "docs" / "security.md").read_text()
    start, end = text.index(TABLES_START), text.index(TABLES_END) + len(TABLES_END)
    assert text[start:end] == permission_tables(builtin_app()), (
        "docs/security.md's permission tables are stale; replace them with the output of: "
        "python -m mlrig.api.permdoc"
    )


def test_openapi_declares_the_bearer_scheme_on_protected_operations(api_client):
    schema = api_client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["components"]["securitySchemes"]["bearer"]["type"] == "http"
    needs = {(row.method, row.path): row.permission for row in route_permissions(api_client.app)}
    for path, item in schema["paths"].items():
        for method in HTTP_METHODS:
            if method not in item:
                continue
            security = item[method].get("security")
            permission = needs[(method.upper(), path)]
            label = permission if permission == PUBLIC else permission.value
            assert item[method]["x-mlrig-permission"] == label, (method, path)
            if permission == PUBLIC:
                assert not security, (method, path)
            else:
                assert security == [{"bearer": []}], (method, path)
    assert "Authorize" in api_client.get("/docs").text or "swagger" in api_client.get("/docs").text


# --- plugin routes ------------------------------------------------------------------------


class RoutesPlugin:
    """A plugin's routes as the docs tell authors to write them."""

    @hookimpl
    def mlrig_register_routes(self, app):
        router = APIRouter(prefix="/api/ml/plugins/demo", tags=["demo"])

        @router.get("/plain")
        def plain() -> dict[str, bool]:  # declares nothing: needs the read permission
            return {"ok": True}

        @router.post("/write")
        def write(principal: Writer) -> dict[str, str]:
            return {"by": principal.name}

        @router.get("/read")
        def read(principal: Reader) -> dict[str, str]:
            return {"by": principal.name}

        @router.get("/public")
        def public(principal: Public) -> dict[str, str | None]:
            return {"by": principal.name if principal else None}

        app.include_router(router)

        @app.get("/plugin-page", include_in_schema=False)
        def page() -> dict[str, bool]:  # outside /api/ml and hidden: still protected
            return {"ok": True}

        @app.websocket("/api/ml/plugins/demo/ws")
        async def feed(websocket: WebSocket) -> None:
            await websocket.accept()
            await websocket.send_text("hello")
            await websocket.close()


@pytest.fixture
def plugin_client(platform, register_plugin):
    register_plugin(RoutesPlugin())
    with TestClient(create_app(platform), raise_server_exceptions=False) as client:
        yield client


def test_plugin_routes_are_behind_authentication(plugin_client, make_token):
    viewer = make_token("viewer", "viewer")
    developer = make_token("dev", "developer")
    for path in ("/api/ml/plugins/demo/plain", "/api/ml/plugins/demo/read", "/plugin-page"):
        response = plugin_client.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "unauthenticated"
        assert plugin_client.get(path, headers=viewer).status_code == 200, path
    assert plugin_client.get("/api/ml/plugins/demo/read", headers=viewer).json() == {"by": "viewer"}

    assert plugin_client.post("/api/ml/plugins/demo/write").status_code == 401
    forbidden = plugin_client.post("/api/ml/plugins/demo/write", headers=viewer)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["details"] == {"permission": "write"}
    assert plugin_client.post("/api/ml/plugins/demo/write", headers=developer).json() == {
        "by": "dev"
    }

    # the explicit opt-out answers without a token, and knows a valid one
    assert plugin_client.get("/api/ml/plugins/demo/public").json() == {"by": None}
    assert plugin_client.get("/api/ml/plugins/demo/public", headers=viewer).json() == {
        "by": "viewer"
    }


def test_plugin_websocket_needs_a_token(plugin_client, make_token):
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as refused:
        with plugin_client.websocket_connect("/api/ml/plugins/demo/ws") as ws:
            ws.receive_text()
    assert refused.value.code == 1008
    headers = make_token("viewer", "viewer")
    with plugin_client.websocket_connect("/api/ml/plugins/demo/ws", headers=headers) as ws:
        assert ws.receive_text() == "hello"


def test_plugin_routes_are_in_the_map_and_the_schema(plugin_client):
    needs = {(row.method, row.path): row.permission for row in route_permissions(plugin_client.app)}
    assert needs[("GET", "/api/ml/plugins/demo/plain")] == Permission.READ
    assert needs[("POST", "/api/ml/plugins/demo/write")] == Permission.WRITE
    assert needs[("GET", "/api/ml/plugins/demo/public")] == PUBLIC
    assert needs[("GET", "/plugin-page")] == Permission.READ
    assert needs[("WEBSOCKET", "/api/ml/plugins/demo/ws")] == Permission.READ
    paths = plugin_client.get("/openapi.json").json()["paths"]
    assert paths["/api/ml/plugins/demo/plain"]["get"]["security"] == [{"bearer": []}]
    assert paths["/api/ml/plugins/demo/write"]["post"]["security"] == [{"bearer": []}]
    assert not paths["/api/ml/plugins/demo/public"]["get"].get("security")


def test_plugin_route_405_lists_its_methods(plugin_client):
    response = plugin_client.delete("/api/ml/plugins/demo/write")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_auth_disabled_opens_plugin_routes_as_the_local_operator(tmp_path, register_plugin):
    from mlrig.testing.fixtures import make_platform

    platform = make_platform(tmp_path / "open", auth={"enabled": False})
    try:
        platform.pm.register(RoutesPlugin())
        client = TestClient(create_app(platform), raise_server_exceptions=False)
        assert client.post("/api/ml/plugins/demo/write").json() == {"by": "local"}
    finally:
        platform.close()


# --- the CLI with --token enforces the same map ---------------------------------------------

#: CLI command -> the REST route it mirrors (whose permission it must need)
CLI_MIRRORS = [
    (["users", "list"], "GET", "/api/ml/users"),
    (["users", "create", "newbie", "--role", "viewer"], "POST", "/api/ml/users"),
    (["audit"], "GET", "/api/ml/audit"),
    (["tokens", "list"], "GET", "/api/ml/tokens"),
    (["models", "create", "nope-new"], "POST", "/api/ml/models"),
    (["models", "delete", "nope", "--yes"], "DELETE", "/api/ml/models/{id}"),
    (
        ["models", "delete", "nope", "1", "--yes"],
        "DELETE",
        "/api/ml/models/{id}/versions/{version}",
    ),
    (["models", "restore", "nope"], "POST", "/api/ml/models/{id}/restore"),
    (["models", "restore", "nope", "1"], "POST", "/api/ml/models/{id}/versions/{version}/restore"),
    (["models", "approve", "nope"], "POST", "/api/ml/approvals/{id}/approve"),
    (["models", "reject", "nope"], "POST", "/api/ml/approvals/{id}/reject"),
    (["models", "alias", "nope", "champion", "1"], "PUT", "/api/ml/models/{id}/aliases/{alias}"),
    (["models", "unalias", "nope", "champion"], "DELETE", "/api/ml/models/{id}/aliases/{alias}"),
    (
        ["models", "stage", "nope", "1", "staging"],
        "POST",
        "/api/ml/models/{id}/versions/{version}/stage",
    ),
    (
        ["deployments", "create", "nope-d", "--model", "nope", "--version", "1"],
        "POST",
        "/api/ml/deployments",
    ),
    (["deployments", "list"], "GET", "/api/ml/deployments"),
    (["deployments", "show", "nope"], "GET", "/api/ml/deployments/{id}"),
    (["deployments", "update", "nope", "--max-batch-size", "4"], "PUT", "/api/ml/deployments/{id}"),
    (["deployments", "delete", "nope", "--yes"], "DELETE", "/api/ml/deployments/{id}"),
    (["sweeps", "list"], "GET", "/api/ml/sweeps"),
    (["sweeps", "show", "nope"], "GET", "/api/ml/sweeps/{id}"),
    (["sweeps", "stop", "nope"], "POST", "/api/ml/sweeps/{id}/stop"),
]


@pytest.fixture
def cli_tokens(tmp_path, monkeypatch):
    """``invoke(args, token=None)`` in-process, and a token per role."""
    import json

    from click.testing import CliRunner

    from mlrig.cli.context import CliState
    from mlrig.cli.main import build_cli

    monkeypatch.chdir(tmp_path)
    cli = build_cli()

    def invoke(args, token=None):
        prefix = ["--token", token] if token else []
        return CliRunner().invoke(cli, [*prefix, *args], obj=CliState())

    tokens = {}
    for role in ROLES:
        assert invoke(["users", "create", f"cli-{role}", "--role", role]).exit_code == 0
        made = invoke(["tokens", "create", "--user", f"cli-{role}", "--json"])
        tokens[role] = json.loads(made.output)["token"]
    return invoke, tokens


def test_cli_commands_need_the_permission_of_their_route(cli_tokens, api_client):
    invoke, tokens = cli_tokens
    needs = {(row.method, row.path): row.permission for row in route_permissions(api_client.app)}
    failures = []
    for args, method, path in CLI_MIRRORS:
        permission = needs[(method, path)]
        lacking = [r for r in ROLES if not role_allows(r, permission)]
        having = [r for r in ROLES if role_allows(r, permission)]
        if lacking:  # the strongest role without it is refused, in one line
            result = invoke(args, tokens[lacking[-1]])
            refused = f"lacks the {permission.value!r} permission" in result.output
            if result.exit_code == 0 or not refused or "Traceback" in result.output:
                failures.append(f"{' '.join(args)} as {lacking[-1]}: {result.output!r}")
        result = invoke(args, tokens[having[0]])  # the weakest role with it gets past
        if "permission" in result.output and "lacks" in result.output:
            failures.append(f"{' '.join(args)} as {having[0]} refused: {result.output!r}")
    assert failures == []


def test_cli_tokens_of_others_need_admin(cli_tokens):
    invoke, tokens = cli_tokens
    other = invoke(["tokens", "create", "--user", "cli-admin"], tokens["deployer"])
    assert other.exit_code != 0 and "lacks the 'admin' permission" in other.output
    own = invoke(["tokens", "create", "--user", "cli-viewer", "--json"], tokens["viewer"])
    assert own.exit_code == 0, own.output
    import json

    listed = json.loads(invoke(["tokens", "list", "--json"], tokens["viewer"]).output)
    assert {t["user"] for t in listed} == {"cli-viewer"}
    everyone = json.loads(invoke(["tokens", "list", "--json"], tokens["admin"]).output)
    assert {t["user"] for t in everyone} == {f"cli-{r}" for r in ROLES}
    admin_token = next(t for t in everyone if t["user"] == "cli-admin")
    refused = invoke(["tokens", "revoke", admin_token["prefix"]], tokens["viewer"])
    assert refused.exit_code != 0 and "no token" in refused.output
    assert invoke(["tokens", "revoke", admin_token["prefix"]], tokens["admin"]).exit_code == 0


def test_every_built_in_route_declares_its_permission():
    """The read default is for plugin routes; a built-in route says what it needs."""
    from fastapi.routing import APIRoute, iter_route_contexts

    from mlrig.api.security import declared_permission

    app = builtin_app()
    undeclared = [
        f"{sorted(context.methods)} {context.path}"
        for context in iter_route_contexts(app.router.routes)
        if isinstance(context.original_route, APIRoute) and declared_permission(context) is None
    ]
    assert undeclared == []


def test_a_route_added_after_the_first_request_is_guarded(platform):
    router = APIRouter(prefix="/api/ml/plugins/late")
    app = create_app(platform)
    app.include_router(router)
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/api/ml/health").status_code == 200  # the table is built

    @router.get("/thing")
    def thing() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/api/ml/plugins/later")
    def later() -> dict[str, bool]:
        return {"ok": True}

    assert client.get("/api/ml/plugins/late/thing").status_code == 401
    assert client.get("/api/ml/plugins/later").status_code == 401
