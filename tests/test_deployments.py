"""The deployment service (``platform.deployments``): create, read, change, delete, the
data plane's status reports and snapshot, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, select

from mlrig.db.models import ModelArtifact, ModelDeployment
from mlrig.errors import ConflictError, NotFoundError, ValidationError
from mlrig.security import Principal
from mlrig.serving import spec

ACTOR = Principal(name="tests", role="admin")
#: what ``auto`` picks for the breast cancer version: its ONNX export where onnxruntime is
#: installed (tox -e heavy), else its scikit-learn model (tox -e core, integration)
AUTO_RUNTIME = "onnx" if "onnx" in spec.installed_runtimes() else "sklearn"


def register(platform: Any, name: str = "bc", variant: int = 0) -> dict[str, Any]:
    """A registered sklearn pipeline (with its ONNX export) as a version of ``name``."""
    from mlrig.testing.serving import register_breast_cancer_model

    return register_breast_cancer_model(platform, name, variant=variant)


class Events:
    """A hook plugin recording the deployment events."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    from mlrig.hooks import hookimpl

    @hookimpl
    def mlrig_deployment_changed(self, platform: Any, event: dict[str, Any]) -> None:
        self.seen.append(event)

    @property
    def actions(self) -> list[str]:
        return [e["action"] for e in self.seen]


@pytest.fixture
def events(db_platform: Any) -> Any:
    recorder = Events()
    db_platform.pm.register(recorder)
    yield recorder
    db_platform.pm.unregister(recorder)


@pytest.fixture
def bc(db_platform: Any) -> dict[str, Any]:
    return register(db_platform)


def test_create_starts_pending_with_the_auto_runtime_and_fires_the_hook(
    db_platform: Any, bc: dict[str, Any], events: Events
) -> None:
    view = db_platform.deployments.create(name="churn", model="bc", version="1", actor=ACTOR)
    assert view["status"] == "pending"
    assert view["model"] == "bc" and view["version"] == "1"
    assert view["version_id"] == bc["id"] and view["model_id"] == bc["model_id"]
    assert view["runtime"] == "auto" and view["resolved_runtime"] == AUTO_RUNTIME
    assert view["replicas"] == {"min": 1, "max": 1}
    assert view["batching"]["max_batch_size"] == db_platform.settings.serving.max_batch_size
    assert view["endpoint_url"] == f"/api/ml/deployments/{view['id']}/predict"
    assert view["created_by"] is None  # the test actor is not a stored user
    assert events.actions == ["created"]
    assert events.seen[0]["deployment_id"] == view["id"]
    assert db_platform.deployments.get("churn") == view
    assert db_platform.deployments.get(view["id"]) == view


def test_the_registry_sees_the_deployed_version(db_platform: Any, bc: dict[str, Any]) -> None:
    db_platform.deployments.create(name="churn", model="bc", version="1", actor=ACTOR)
    lineage = db_platform.registry.get_version("bc", "1")["lineage"]
    assert [d["name"] for d in lineage["deployments"]] == ["churn"]
    with pytest.raises(ConflictError, match="deployed"):
        db_platform.registry.delete_version("bc", "1", actor=ACTOR)


def test_snapshot_and_set_status(db_platform: Any, bc: dict[str, Any], events: Events) -> None:
    service = db_platform.deployments
    created = service.create(
        name="churn", model="bc", version="1", actor=ACTOR, batching={"max_batch_size": 8}
    )
    [snap] = service.snapshot()
    assert snap["id"] == created["id"] and snap["batching"]["max_batch_size"] == 8
    assert snap["targets"] == [
        {
            "variant": "primary",
            "model": "bc",
            "version": "1",
            "version_id": bc["id"],
            "runtime": AUTO_RUNTIME,
            "percent": 100.0,
        }
    ]
    assert isinstance(snap["revision"], str) and len(snap["revision"]) == 16
    assert service.snapshot()[0]["revision"] == snap["revision"]  # stable

    reported = service.set_status(created["id"], "deploying", revision=snap["revision"])
    assert reported is not None and reported["status"] == "deploying"
    active = service.set_status(created["id"], "active")
    assert active["status"] == "active" and active["deployed_at"] is not None
    assert service.set_status(created["id"], "active") is None  # unchanged: no hook
    assert events.actions == ["created", "status_changed", "status_changed"]
    assert service.set_status(created["id"], "active", revision="0" * 16) is None  # stale

    failed = service.set_status(created["id"], "failed", "model load: out of memory")
    assert failed["status"] == "failed" and failed["status_reason"] == "model load: out of memory"
    assert service.get("churn")["status_reason"] == "model load: out of memory"

    service.update("churn", actor=ACTOR, status="inactive")
    assert service.snapshot() == []  # stopped ones are not served
    assert service.set_status(created["id"], "active") is None  # ignored when stopped
    assert service.get("churn")["status"] == "inactive"


def test_set_status_is_audited_and_refuses_bad_input(db_platform: Any, bc: dict[str, Any]) -> None:
    service = db_platform.deployments
    created = service.create(name="churn", model="bc", version="1", actor=ACTOR)
    service.set_status(created["id"], "active")
    entries = db_platform.audit.query(action="deployment_status")
    assert [(e["actor"], e["resource_id"]) for e in entries] == [("serving", created["id"])]
    with pytest.raises(ValidationError):
        service.set_status(created["id"], "inactive")  # users stop, data planes don't
    with pytest.raises(NotFoundError):
        service.set_status("not-an-id", "active")
    with pytest.raises(NotFoundError):
        service.set_status("00000000-0000-0000-0000-000000000000", "active")


def test_snapshot_follows_a_moved_alias(db_platform: Any, events: Events) -> None:
    first = register(db_platform)
    second = register(db_platform, variant=1)
    db_platform.lifecycle.set_alias("bc", "champion", "1", actor=ACTOR)
    service = db_platform.deployments
    created = service.create(name="churn", model="bc", alias="champion", actor=ACTOR)
    assert created["alias"] == "champion" and created["version_id"] == first["id"]
    before = service.snapshot()[0]
    service.set_status(created["id"], "active", revision=before["revision"])

    db_platform.lifecycle.set_alias("bc", "champion", "2", actor=ACTOR)
    after = service.snapshot()[0]
    assert after["revision"] != before["revision"]
    assert after["version"] == "2" and after["targets"][0]["version_id"] == second["id"]
    assert after["status"] == "deploying"
    assert events.actions[-1] == "alias_moved"
    assert service.get("churn")["version"] == "2"  # written back
    assert service.snapshot()[0]["revision"] == after["revision"]
    assert events.actions.count("alias_moved") == 1  # once, not per read

    # an alias removed: the last version keeps serving, the reason says why
    db_platform.lifecycle.delete_alias("bc", "champion", actor=ACTOR)
    kept = service.snapshot()[0]
    assert kept["version"] == "2" and "no longer exists" in kept["status_reason"]


def test_canary_and_shadow_targets(db_platform: Any) -> None:
    register(db_platform)
    register(db_platform, variant=1)
    third = register(db_platform, variant=2)
    service = db_platform.deployments
    view = service.create(
        name="churn",
        model="bc",
        version="1",
        traffic=[{"version": "2", "percent": 10}],
        shadow="3",
        actor=ACTOR,
    )
    assert view["traffic"][0]["version"] == "2" and view["traffic"][0]["percent"] == 10.0
    assert view["shadow"] == {"version": "3", "version_id": third["id"]}
    targets = service.snapshot()[0]["targets"]
    assert [(t["variant"], t["version"], t["percent"]) for t in targets] == [
        ("primary", "1", 90.0),
        ("canary", "2", 10.0),
        ("shadow", "3", 0.0),
    ]
    cleared = service.update("churn", actor=ACTOR, traffic=[], shadow=None)
    assert cleared["traffic"] == [] and cleared["shadow"] is None


@pytest.mark.parametrize(
    ("fields", "error", "words"),
    [
        ({"version": "9"}, NotFoundError, "no version"),
        ({"version": "1", "alias": "champion"}, ValidationError, "exactly one"),
        ({}, ValidationError, "exactly one"),
        ({"alias": "nope"}, NotFoundError, "no alias"),
        ({"version": "1", "runtime": "nope"}, ValidationError, "not installed"),
        ({"version": "1", "environment": "moon"}, ValidationError, "environment"),
        ({"version": "1", "replicas": {"min": 3, "max": 2}}, ValidationError, "exceed"),
        ({"version": "1", "replicas": {"min": 10**30}}, ValidationError, "huge"),
        ({"version": "1", "batching": {"max_batch_size": 0}}, ValidationError, "batch"),
        ({"version": "1", "batching": {"max_latency_ms": float("nan")}}, ValidationError, "0"),
        ({"version": "1", "traffic": [{"version": "1", "percent": 10}]}, ValidationError, "twice"),
        ({"version": "1", "traffic": [{"version": "2", "percent": 100}]}, ValidationError, "below"),
        ({"version": "1", "shadow": "1"}, ValidationError, "differ"),
        ({"version": "1", "resources": {"a\x00": 1}}, ValidationError, "NUL"),
        ({"version": "1\x00"}, ValidationError, "NUL"),
        ({"version": "1", "model": "\ud800"}, ValidationError, "surrogate"),
        ({"version": "1", "model": "nope"}, NotFoundError, "no model"),
    ],
)
def test_bad_input_is_refused(
    db_platform: Any, bc: dict[str, Any], fields: dict[str, Any], error: type, words: str
) -> None:
    args = {"name": "churn", "model": "bc", **fields}
    with pytest.raises(error, match=words):
        db_platform.deployments.create(actor=ACTOR, **args)
    assert db_platform.deployments.list()["items"] == []


@pytest.mark.parametrize("name", ["", "a/b", "a:b", "-x", "x" * 101, "\x00", 5])
def test_bad_names(db_platform: Any, bc: dict[str, Any], name: Any) -> None:
    with pytest.raises(ValidationError, match="deployment name"):
        db_platform.deployments.create(name=name, model="bc", version="1", actor=ACTOR)


def test_a_version_without_artifacts_is_refused(db_platform: Any, bc: dict[str, Any]) -> None:
    with db_platform.db.session() as session:  # e.g. lost to a purge: rows without files
        session.execute(delete(ModelArtifact).where(ModelArtifact.model_id == _uuid(bc["id"])))
    with pytest.raises(ValidationError, match="no artifacts"):
        db_platform.deployments.create(name="churn", model="bc", version="1", actor=ACTOR)


def test_a_version_without_a_model_file_is_refused(db_platform: Any) -> None:
    db_platform.registry.create_version(
        "notes", files={"README.md": b"nothing to serve"}, actor=ACTOR, create_model=True
    )
    with pytest.raises(ValidationError, match="no artifacts a runtime can load"):
        db_platform.deployments.create(name="n", model="notes", version="1", actor=ACTOR)


def _uuid(value: str) -> Any:
    import uuid

    return uuid.UUID(value)


def test_names_are_unique_and_freed_by_delete(
    db_platform: Any, bc: dict[str, Any], events: Events
) -> None:
    service = db_platform.deployments
    first = service.create(name="churn", model="bc", version="1", actor=ACTOR)
    with pytest.raises(ConflictError, match="exists"):
        service.create(name="churn", model="bc", version="1", actor=ACTOR)
    gone = service.delete("churn", actor=ACTOR)
    assert gone["name"] == "churn" and gone["status"] == "inactive" and gone["deleted_at"]
    assert events.actions == ["created", "deleted"]
    with pytest.raises(NotFoundError):
        service.get("churn")
    with pytest.raises(NotFoundError):
        service.get(first["id"])
    again = service.create(name="churn", model="bc", version="1", actor=ACTOR)
    assert again["id"] != first["id"]
    with db_platform.db.session() as session:
        assert len(session.scalars(select(ModelDeployment)).all()) == 2  # the old row stays
    # a deleted deployment no longer counts as deployed once the new one is gone too
    service.delete("churn", actor=ACTOR)
    db_platform.registry.delete_version("bc", "1", actor=ACTOR)


def test_list_filters_and_pages(db_platform: Any, bc: dict[str, Any]) -> None:
    register(db_platform, name="other")
    service = db_platform.deployments
    for i in range(3):
        service.create(name=f"d{i}", model="bc", version="1", actor=ACTOR)
    service.create(name="s", model="other", version="1", environment="staging", actor=ACTOR)
    service.update("d1", actor=ACTOR, status="inactive")
    assert [d["name"] for d in service.list()["items"]] == ["d0", "d1", "d2", "s"]
    assert [d["name"] for d in service.list(model="other")["items"]] == ["s"]
    assert [d["name"] for d in service.list(environment="staging")["items"]] == ["s"]
    assert [d["name"] for d in service.list(status="inactive")["items"]] == ["d1"]
    page = service.list(limit=3)
    assert len(page["items"]) == 3 and page["next_cursor"]
    rest = service.list(limit=3, cursor=page["next_cursor"])
    assert [d["name"] for d in rest["items"]] == ["s"] and rest["next_cursor"] is None
    with pytest.raises(ValidationError):
        service.list(status="sleeping")
    with pytest.raises(ValidationError):
        service.list(cursor="!!")
    with pytest.raises(NotFoundError):
        service.list(model="nope")


def test_update_target_moves_an_active_deployment_to_deploying(
    db_platform: Any, events: Events
) -> None:
    register(db_platform)
    register(db_platform, variant=1)
    service = db_platform.deployments
    created = service.create(name="churn", model="bc", version="1", actor=ACTOR)
    service.set_status(created["id"], "active")
    same = service.update("churn", actor=ACTOR, resources={"cpu": 1})
    assert same["status"] == "deploying"  # resources are part of the revision
    service.set_status(created["id"], "active")
    moved = service.update("churn", actor=ACTOR, version="2")
    assert moved["version"] == "2" and moved["status"] == "deploying"
    pinned = service.update("churn", actor=ACTOR, runtime="sklearn")
    assert pinned["resolved_runtime"] == "sklearn" and pinned["version"] == "2"
    stopped = service.update("churn", actor=ACTOR, status="inactive")
    assert stopped["status"] == "inactive" and "stopped by tests" in stopped["status_reason"]
    started = service.update("churn", actor=ACTOR, status="active")
    assert started["status"] == "pending" and started["status_reason"] is None
    assert events.actions[-2:] == ["stopped", "started"]
    with pytest.raises(ValidationError, match="cannot change"):
        service.update("churn", actor=ACTOR, name="x")
    with pytest.raises(ValidationError):
        service.update("churn", actor=ACTOR, status="deploying")


def test_production_needs_a_production_version(db_platform: Any, bc: dict[str, Any]) -> None:
    with pytest.raises(ConflictError, match="production stage"):
        db_platform.deployments.create(
            name="churn", model="bc", version="1", environment="production", actor=ACTOR
        )
    staged = db_platform.deployments.create(
        name="churn", model="bc", version="1", environment="staging", actor=ACTOR
    )
    assert staged["environment"] == "staging"
    with pytest.raises(ConflictError, match="production stage"):
        db_platform.deployments.update("churn", actor=ACTOR, environment="production")
    assert db_platform.deployments.get("churn")["environment"] == "staging"
    assert spec.ENVIRONMENTS == ("development", "staging", "production")


def test_update_switches_between_pinned_and_followed(db_platform: Any, events: Events) -> None:
    register(db_platform)
    second = register(db_platform, variant=1)
    db_platform.lifecycle.set_alias("bc", "champion", "2", actor=ACTOR)
    service = db_platform.deployments
    service.create(name="churn", model="bc", version="latest", actor=ACTOR)
    assert service.get("churn")["version"] == "2"  # latest is resolved once, now
    followed = service.update("churn", actor=ACTOR, alias="champion")
    assert followed["alias"] == "champion" and followed["version_id"] == second["id"]
    pinned = service.update("churn", actor=ACTOR, version="1")
    assert pinned["alias"] is None and pinned["version"] == "1"
    db_platform.lifecycle.set_alias("bc", "champion", "1", actor=ACTOR)
    db_platform.lifecycle.set_alias("bc", "champion", "2", actor=ACTOR)
    assert service.snapshot()[0]["version"] == "1"  # pinned: the alias no longer matters
    assert all(e["deployment"]["name"] == "churn" for e in events.seen)


def test_concurrent_snapshots_move_an_alias_once(db_platform: Any, events: Events) -> None:
    """Replicas read the snapshot at the same time: the alias move is written (and the
    hook fired) once, and every reader sees the new version."""
    import threading

    register(db_platform)
    register(db_platform, variant=1)
    db_platform.lifecycle.set_alias("bc", "champion", "1", actor=ACTOR)
    service = db_platform.deployments
    service.create(name="churn", model="bc", alias="champion", actor=ACTOR)
    db_platform.lifecycle.set_alias("bc", "champion", "2", actor=ACTOR)
    start = threading.Barrier(4)
    seen: list[str] = []

    def read() -> None:
        start.wait()
        seen.append(service.snapshot()[0]["version"])

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert seen == ["2"] * 4
    assert events.actions.count("alias_moved") == 1


def test_stop_works_when_what_it_serves_is_gone(db_platform: Any) -> None:
    """Stopping resolves nothing, so it works with the alias removed or the model
    deleted; other changes keep serving the alias's last version."""
    register(db_platform)
    db_platform.lifecycle.set_alias("bc", "champion", "1", actor=ACTOR)
    service = db_platform.deployments
    service.create(name="churn", model="bc", alias="champion", actor=ACTOR)
    db_platform.lifecycle.delete_alias("bc", "champion", actor=ACTOR)
    kept = service.update("churn", actor=ACTOR, batching={"max_batch_size": 4})
    assert kept["version"] == "1" and kept["alias"] == "champion"
    assert service.update("churn", actor=ACTOR, status="inactive")["status"] == "inactive"
    db_platform.registry.delete_model("bc", actor=ACTOR, force=True)
    assert service.update("churn", actor=ACTOR, status="active")["status"] == "pending"
    assert service.update("churn", actor=ACTOR, status="inactive")["status"] == "inactive"
    with pytest.raises(NotFoundError):  # a change that needs the model says it is gone
        service.update("churn", actor=ACTOR, runtime="sklearn")
    assert service.delete("churn", actor=ACTOR)["deleted_at"]
