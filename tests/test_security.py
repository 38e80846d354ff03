"""Users, roles, tokens, the permission dependency and the audit log."""

import json

import pytest

from mlrig.errors import AuthenticationError, ConflictError, PermissionDeniedError
from mlrig.security import Permission, role_allows


def _error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body


def test_roles_are_cumulative():
    assert role_allows("viewer", Permission.READ)
    assert not role_allows("viewer", Permission.WRITE)
    assert role_allows("developer", Permission.WRITE)
    assert not role_allows("developer", Permission.APPROVE)
    assert role_allows("deployer", Permission.APPROVE)
    assert not role_allows("deployer", Permission.ADMIN)
    assert role_allows("admin", Permission.ADMIN)
    assert not role_allows("root", Permission.READ)


def test_token_is_stored_hashed_and_authenticates(platform):
    platform.security.create_user(name="ada", role="developer")
    created = platform.security.create_token(user="ada")
    assert created["token"].startswith("mlr_")
    from sqlalchemy import select

    from mlrig.db.models.auth import ApiToken

    with platform.db.session() as session:
        stored = session.scalars(select(ApiToken)).one()
        assert created["token"] not in (stored.token_hash, stored.token_prefix)
        assert len(stored.token_hash) == 64
    principal = platform.security.authenticate(created["token"])
    assert (principal.name, principal.role) == ("ada", "developer")
    assert "token" not in platform.security.list_tokens()[0]
    with pytest.raises(AuthenticationError, match="unknown token"):
        platform.security.authenticate(created["token"][:-2] + "xx")
    platform.security.revoke_token(created["id"])
    with pytest.raises(AuthenticationError, match="revoked"):
        platform.security.authenticate(created["token"])


def test_duplicate_user_and_bad_role(platform):
    platform.security.create_user(name="bob", role="viewer")
    with pytest.raises(ConflictError):
        platform.security.create_user(name="bob", role="viewer")
    with pytest.raises(Exception, match="unknown role 'wizard'"):
        platform.security.create_user(name="carl", role="wizard")
    assert [u["name"] for u in platform.security.list_users()] == ["bob"]


def test_principal_require_names_the_missing_role(platform):
    platform.security.create_user(name="v", role="viewer")
    principal = platform.security.authenticate(platform.security.create_token(user="v")["token"])
    with pytest.raises(PermissionDeniedError, match="needs the role admin or higher"):
        principal.require(Permission.ADMIN)


def test_no_token_is_401_and_audited(api_client, admin_headers):
    _error(api_client.get("/api/ml/users"), 401, "unauthenticated")
    _error(
        api_client.get("/api/ml/users", headers={"Authorization": "Bearer nonsense"}),
        401,
        "unauthenticated",
    )
    entries = api_client.get("/api/ml/audit", headers=admin_headers).json()["items"]
    denied = [e for e in entries if e["outcome"] == "denied"]
    assert len(denied) == 2
    assert {e["actor"] for e in denied} == {"anonymous"}
    assert all(e["request_id"] for e in denied)


def test_viewer_cannot_write_and_is_audited(api_client, make_token, admin_headers):
    viewer = make_token("vera", "viewer")
    response = api_client.post("/api/ml/users", json={"name": "x", "role": "admin"}, headers=viewer)
    body = _error(response, 403, "forbidden")
    assert "vera" in body["error"]["message"]
    entries = api_client.get("/api/ml/audit", headers=admin_headers).json()["items"]
    refused = [e for e in entries if e["actor"] == "vera"]
    assert refused and refused[0]["outcome"] == "denied"
    assert refused[0]["action"] == "create_user"
    assert refused[0]["resource_type"] == "users"


def test_mutations_are_audited_with_resource_ids(api_client, admin_headers):
    created = api_client.post(
        "/api/ml/users", json={"name": "dev1", "role": "developer"}, headers=admin_headers
    )
    assert created.status_code == 201, created.text
    token = api_client.post(
        "/api/ml/tokens", json={"user": "dev1", "name": "ci"}, headers=admin_headers
    ).json()
    dev = {"Authorization": f"Bearer {token['token']}"}
    assert api_client.get("/api/ml/users/me", headers=dev).json() == {
        "name": "dev1",
        "role": "developer",
    }
    assert (
        api_client.delete(f"/api/ml/tokens/{token['id']}", headers=admin_headers).status_code == 200
    )
    _error(api_client.get("/api/ml/users/me", headers=dev), 401, "unauthenticated")
    entries = api_client.get("/api/ml/audit", headers=admin_headers).json()["items"]
    by_action = {e["action"]: e for e in entries}
    assert by_action["create_user"]["resource_id"] == created.json()["id"]
    assert by_action["create_token"]["resource_id"] == token["id"]
    assert by_action["revoke_token"]["resource_id"] == token["id"]
    assert by_action["revoke_token"]["actor"] == "root-admin"
    assert by_action["revoke_token"]["outcome"] == "success"


def test_non_admin_cannot_read_audit(api_client, make_token):
    deployer = make_token("dee", "deployer")
    _error(api_client.get("/api/ml/audit", headers=deployer), 403, "forbidden")


def test_cli_users_tokens_audit(tmp_path, run_cli):
    assert run_cli("users", "create", "ci-bot", "--role", "developer", cwd=tmp_path).exit_code == 0
    made = run_cli("tokens", "create", "--user", "ci-bot", "--json", cwd=tmp_path)
    assert made.exit_code == 0, made.stderr
    token = json.loads(made.stdout)
    assert token["token"].startswith("mlr_")
    listed = json.loads(run_cli("tokens", "list", "--json", cwd=tmp_path).stdout)
    assert [t["user"] for t in listed] == ["ci-bot"]
    assert "token" not in listed[0]
    assert run_cli("tokens", "revoke", token["prefix"], cwd=tmp_path).exit_code == 0
    audit = json.loads(run_cli("audit", "--since", "1h", "--json", cwd=tmp_path).stdout)
    assert [e["action"] for e in audit] == ["revoke_token", "create_token", "create_user"]
    assert all(e["actor"].startswith("cli:") for e in audit)
    bad = run_cli("tokens", "create", "--user", "nobody", cwd=tmp_path)
    assert bad.exit_code != 0
    assert bad.stderr.strip().count("\n") == 0
    assert "no user named 'nobody'" in bad.stderr


def test_auth_disabled_only_on_loopback(platform):
    platform.settings.auth.enabled = False
    from mlrig.errors import ConfigError

    with pytest.raises(ConfigError, match="only honoured on a loopback bind"):
        platform.prepare_server(host="0.0.0.0")
    platform.prepare_server(host="127.0.0.1", echo=lambda _: None)


def test_first_server_start_prints_an_admin_token_once(platform):
    lines = []
    platform.prepare_server(host="127.0.0.1", echo=lines.append)
    token = next(line.strip() for line in lines if line.strip().startswith("mlr_"))
    assert platform.security.authenticate(token).role == "admin"
    again = []
    platform.prepare_server(host="127.0.0.1", echo=again.append)
    assert not any("mlr_" in line for line in again)


def test_auth_disabled_acts_as_local_admin(platform, api_client):
    platform.settings.auth.enabled = False
    assert api_client.get("/api/ml/users/me").json() == {"name": "local", "role": "admin"}
