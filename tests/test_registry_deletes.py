"""Deleting models and versions: who may, what is protected (production, aliases,
deployments), restore, purge; over the service on SQLite and PostgreSQL, REST and the CLI."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from mlrig.db.models import MLModel, ModelDeployment, RegisteredModel
from mlrig.errors import ConflictError, NotFoundError, PermissionDeniedError
from mlrig.security import Principal
from mlrig.testing.cli_modes import MODES, cli_in_mode

ADMIN = Principal(name="root", role="admin")
OPS = Principal(name="ops", role="deployer")
DEV = Principal(name="dev", role="developer")


def _register(platform: Any, name: str = "iris", **kw: Any) -> dict[str, Any]:
    return platform.registry.create_version(
        name, files={"model.bin": b"w", "conf.json": b"{}"}, actor=DEV, create_model=True, **kw
    )


def _deploy(platform: Any, version: dict[str, Any]) -> None:
    with platform.db.session() as session:
        session.add(
            ModelDeployment(
                name=f"live-{version['version']}",
                model_id=uuid.UUID(version["id"]),
                version=version["version"],
                status="active",
            )
        )


def _to_production(platform: Any, version: str) -> None:
    with platform.db.session() as session:
        session.execute(
            update(MLModel).where(MLModel.version == version).values(stage="production")
        )


# --- the service, on both databases ---------------------------------------------------


def test_a_developer_may_not_delete(db_platform: Any) -> None:
    _register(db_platform)
    with pytest.raises(PermissionDeniedError, match="'delete' permission"):
        db_platform.registry.delete_model("iris", actor=DEV)
    with pytest.raises(PermissionDeniedError, match="'delete' permission"):
        db_platform.registry.delete_version("iris", "1", actor=DEV)
    assert db_platform.registry.get_model("iris")["version_count"] == 1


@pytest.mark.parametrize("guard", ["production", "alias", "deployed"])
def test_a_relied_on_version_is_refused_unless_an_admin_forces(
    db_platform: Any, guard: str
) -> None:
    v1 = _register(db_platform)
    _register(db_platform)
    if guard == "production":
        _to_production(db_platform, "1")
        reason = "is in production"
    elif guard == "alias":
        db_platform.lifecycle.set_alias("iris", "champion", "1", actor=DEV)
        reason = "has the alias champion"
    else:
        _deploy(db_platform, v1)
        reason = "is deployed"
    registry = db_platform.registry
    for delete in (
        lambda **kw: registry.delete_version("iris", "1", **kw),
        lambda **kw: registry.delete_model("iris", **kw),
    ):
        with pytest.raises(ConflictError, match=reason) as refused:
            delete(actor=OPS)
        assert "--force" in refused.value.message
        assert refused.value.details == {"reasons": {"1": [reason]}}
        with pytest.raises(PermissionDeniedError, match="needs the admin role"):
            delete(actor=OPS, force=True)
    assert registry.get_model("iris")["version_count"] == 2
    # the unprotected version goes without force
    assert registry.delete_version("iris", "2", actor=OPS)["forced"] is False
    forced = registry.delete_version("iris", "1", actor=ADMIN, force=True)
    assert forced["forced"] is True
    assert forced["removed_aliases"] == (["champion"] if guard == "alias" else [])


def test_delete_and_restore_a_version(db_platform: Any) -> None:
    registry = db_platform.registry
    _register(db_platform)
    v2 = _register(db_platform)
    deleted = registry.delete_version("iris", "2", actor=OPS)
    assert deleted["deleted"] is True and deleted["purge_after"] > deleted["deleted_at"]
    with pytest.raises(NotFoundError):
        registry.get_version("iris", "2")
    listed = registry.list_deleted()
    assert [v["version"] for v in listed["versions"]] == ["2"] and listed["models"] == []
    restored = registry.restore_version("iris", v2["id"][:8], actor=OPS)  # an id prefix
    assert restored["version"] == "2"
    assert registry.get_version("iris", "2")["id"] == v2["id"]
    assert registry.list_deleted() == {"models": [], "versions": []}
    with pytest.raises(ConflictError, match="is not deleted"):  # it is live again
        registry.restore_version("iris", "2", actor=OPS)
    with pytest.raises(NotFoundError, match="no deleted version"):
        registry.restore_version("iris", "9", actor=OPS)


def test_delete_and_restore_a_model_with_its_versions(db_platform: Any) -> None:
    registry = db_platform.registry
    for _ in range(3):
        _register(db_platform)
    registry.delete_version("iris", "1", actor=OPS)  # deleted before: stays deleted
    result = registry.delete_model("iris", actor=OPS)
    assert result["versions"] == ["2", "3"]
    with pytest.raises(NotFoundError, match="was deleted; restore it with: mlrig models restore"):
        registry.get_model("iris")
    listed = registry.list_deleted()
    assert [(m["name"], m["versions"]) for m in listed["models"]] == [("iris", 2)]
    restored = registry.restore_model("iris", actor=OPS)
    assert restored["restored_versions"] == ["2", "3"]
    assert [v["version"] for v in restored["versions"]] == ["2", "3"]
    # the model exists: restoring it again conflicts with its state (409), it is not missing
    with pytest.raises(ConflictError, match="is not deleted"):
        registry.restore_model("iris", actor=OPS)
    with pytest.raises(ConflictError, match="is not deleted"):
        registry.restore_version("iris", "3", actor=OPS)


def test_purge_removes_rows_and_artifacts_past_the_retention(db_platform: Any) -> None:
    registry = db_platform.registry
    kept = _register(db_platform, "kept")
    old = _register(db_platform, "old")
    _deploy(db_platform, old)
    with db_platform.db.session() as session:
        session.query(ModelDeployment).update({"status": "inactive"})
    _register(db_platform, "recent")
    registry.delete_model("old", actor=OPS)
    registry.delete_model("recent", actor=OPS)
    # "old" was deleted 31 days ago (the retention is 30)
    long_ago = datetime.now(timezone.utc) - timedelta(days=31)
    with db_platform.db.session() as session:
        for table in (RegisteredModel, MLModel):
            session.execute(update(table).where(table.name == "old").values(deleted_at=long_ago))
    with pytest.raises(PermissionDeniedError):
        registry.purge(actor=OPS)
    plan = registry.purge(actor=ADMIN, dry_run=True)
    assert (plan["models"], plan["versions"], plan["objects"]) == (["old"], ["old/1"], 2)
    assert any(db_platform.artifacts.list(f"models/{old['model_id']}/"))
    done = registry.purge(actor=ADMIN)
    assert done["models"] == ["old"] and done["objects_left"] == 0
    assert list(db_platform.artifacts.list(f"models/{old['model_id']}/")) == []
    with pytest.raises(NotFoundError, match="no deleted model"):
        registry.restore_model("old", actor=ADMIN)
    with db_platform.db.session() as session:  # the deployment's history stays
        assert session.query(ModelDeployment).one().model_id is None
    assert registry.restore_model("recent", actor=ADMIN)["name"] == "recent"
    assert registry.get_model("kept")["id"] == kept["model_id"]


# --- REST ---------------------------------------------------------------------------------


def test_rest_delete_permissions_force_and_restore(platform: Any, api_client: Any, make_token):
    developer = make_token("dev-user", "developer")
    deployer = make_token("ops-user", "deployer")
    admin = make_token("admin-user", "admin")
    version = _register(platform)
    _to_production(platform, "1")
    model_id = version["model_id"]

    refused = api_client.delete(f"/api/ml/models/{model_id}", headers=developer)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "forbidden"

    conflict = api_client.delete("/api/ml/models/iris/versions/1", headers=deployer)
    assert conflict.status_code == 409, conflict.text
    body = conflict.json()["error"]
    assert "is in production" in body["message"] and "force" in body["message"]
    assert body["details"] == {"reasons": {"1": ["is in production"]}}

    not_admin = api_client.delete(
        "/api/ml/models/iris/versions/1", params={"force": "true"}, headers=deployer
    )
    assert not_admin.status_code == 403, not_admin.text

    forced = api_client.delete("/api/ml/models/iris", params={"force": "true"}, headers=admin)
    assert forced.status_code == 200, forced.text
    assert forced.json()["forced"] is True
    assert api_client.get("/api/ml/models/iris", headers=admin).status_code == 404

    trash = api_client.get("/api/ml/models/-/deleted", headers=deployer)
    assert trash.status_code == 200, trash.text
    assert [(i["kind"], i["name"]) for i in trash.json()["items"]] == [("model", "iris")]

    assert (
        api_client.post(f"/api/ml/models/{model_id}/restore", headers=developer).status_code == 403
    )
    back = api_client.post(f"/api/ml/models/{model_id[:8]}/restore", headers=deployer)
    assert back.status_code == 200, back.text
    assert back.json()["name"] == "iris"

    _register(platform)
    assert api_client.delete("/api/ml/models/iris/versions/2", headers=deployer).status_code == 200
    again = api_client.post("/api/ml/models/iris/versions/2/restore", headers=deployer)
    assert again.status_code == 200, again.text
    assert again.json()["version"] == "2"
    audited = {(e["action"], e["outcome"]) for e in platform.audit.query(limit=50)}
    assert {
        ("delete_model", "denied"),
        ("delete_model", "success"),
        ("restore_model", "success"),
        ("delete_version", "success"),
        ("restore_version", "success"),
    } <= audited


# --- CLI ----------------------------------------------------------------------------------


@pytest.fixture(params=MODES)
def cli(request: Any, tmp_path: Path) -> Any:
    """``mlrig models ARGS`` in this process, embedded and against a uvicorn server of the
    same installation (:mod:`mlrig.testing.cli_modes`); ``cli.platform()`` is that
    installation."""
    with cli_in_mode(request.param, tmp_path / "cli-home") as runner:

        def run(*args: str, token: str | None = None) -> Any:
            return runner("models", *args, token=token)

        run.platform = lambda: runner.platform  # type: ignore[attr-defined]
        run.mode = runner.mode  # type: ignore[attr-defined]
        yield run


def _actions(platform: Any, wanted: set[str]) -> set[str]:
    """The audited actions, once ``wanted`` are there (a server writes its entries just
    after answering) or after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        found = {e["action"] for e in platform.audit.query(limit=20)}
        if wanted <= found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_cli_delete_needs_the_delete_permission_and_force_needs_admin(cli: Any) -> None:
    platform = cli.platform()
    security = platform.security
    tokens = {}
    for name, role in [("dev", "developer"), ("ops", "deployer"), ("boss", "admin")]:
        security.create_user(name=name, role=role)
        tokens[role] = security.create_token(user=name)["token"]
    _register(platform)
    platform.lifecycle.set_alias("iris", "champion", "1", actor=DEV)

    denied = cli("delete", "iris", token=tokens["developer"])  # refused before the prompt
    assert denied.exit_code != 0
    assert "lacks the 'delete' permission" in denied.output and "?" not in denied.output
    assert "Traceback" not in denied.output

    conflict = cli("delete", "iris", "1", "--yes", token=tokens["deployer"])
    assert conflict.exit_code != 0
    assert "has the alias champion" in conflict.output and "--force" in conflict.output

    weak = cli("delete", "iris", "1", "--yes", "--force", token=tokens["deployer"])
    assert weak.exit_code != 0 and "needs the admin role" in weak.output

    forced = cli("delete", "iris", "1", "--yes", "--force", token=tokens["admin"])
    assert forced.exit_code == 0, forced.output
    assert "mlrig models restore iris 1" in forced.output

    listed = cli("list", "--deleted", "--json")
    assert [v["version"] for v in json.loads(listed.output)["versions"]] == ["1"]
    table = cli("list", "--deleted")
    assert "iris" in table.output and "version" in table.output

    restored = cli("restore", "iris", "1", token=tokens["deployer"])
    assert restored.exit_code == 0, restored.output
    assert "restored version 1 of iris" in restored.output
    wanted = {"delete_version", "restore_version"}
    assert wanted <= _actions(platform, wanted)


def test_cli_purge(cli: Any) -> None:
    platform = cli.platform()
    _register(platform)
    platform.registry.delete_model("iris", actor=OPS)
    if cli.mode == "remote":  # no REST route purges: it runs next to the database
        refused = cli("purge", "--dry-run")
        assert refused.exit_code == 2 and "runs next to the database" in refused.output
        return
    nothing = cli("purge", "--dry-run")
    assert nothing.exit_code == 0 and "would remove 0 models" in nothing.output
    now = cli("purge", "--older-than", "0", "--yes")
    assert now.exit_code == 0, now.output
    assert "removed 1 models and 1 versions" in now.output
    assert cli("list", "--deleted", "--json").output.count('"name"') == 0


def test_a_deleted_version_cannot_be_approved_and_deletes_fire_hooks(
    platform: Any, register_plugin: Any
) -> None:
    from mlrig import hookimpl

    events: list[tuple[str, str]] = []

    class Recorder:
        @hookimpl
        def mlrig_model_stage_changed(self, platform: Any, event: dict[str, Any]) -> None:
            events.append((event["action"], event["version"]))

    register_plugin(Recorder())
    platform.security.create_user(name="asker", role="developer")
    platform.security.create_user(name="approver", role="deployer")
    asker = platform.security.authenticate(platform.security.create_token(user="asker")["token"])
    approver = platform.security.authenticate(
        platform.security.create_token(user="approver")["token"]
    )
    _register(platform)
    request = platform.lifecycle.transition("iris", "1", "production", actor=asker)["request"]
    platform.registry.delete_version("iris", "1", actor=OPS)
    with pytest.raises(ConflictError, match="was deleted; restore it first"):
        platform.lifecycle.decide(request["id"], approve=True, actor=approver)
    platform.registry.restore_version("iris", "1", actor=OPS)
    assert events == [("approval_requested", "1"), ("deleted", "1"), ("restored", "1")]
    decided = platform.lifecycle.decide(request["id"], approve=True, actor=approver)
    assert decided["status"] == "approved"


@pytest.mark.parametrize("role", ["canary", "shadow"])
def test_a_canary_or_shadow_version_counts_as_deployed(db_platform: Any, role: str) -> None:
    """The versions a deployment serves besides its primary are protected like it."""
    from mlrig.testing.serving import register_breast_cancer_model

    register_breast_cancer_model(db_platform, "bc")
    register_breast_cancer_model(db_platform, "bc", variant=1)
    register_breast_cancer_model(db_platform, "bc")
    extra = {"traffic": [{"version": "2", "percent": 10}]} if role == "canary" else {}
    extra = extra or {"shadow": "2"}
    db_platform.deployments.create(
        name="bc-live", model="bc", version="1", runtime="sklearn", actor=OPS, **extra
    )
    registry = db_platform.registry
    with pytest.raises(ConflictError, match="is deployed") as refused:
        registry.delete_version("bc", "2", actor=OPS)
    assert refused.value.details == {"reasons": {"2": ["is deployed"]}}
    assert registry.delete_version("bc", "3", actor=OPS)["forced"] is False  # not served
    db_platform.deployments.delete("bc-live", actor=OPS)
    assert registry.delete_version("bc", "2", actor=OPS)["forced"] is False
