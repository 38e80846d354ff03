"""The registry service on SQLite and PostgreSQL: versions, immutability, lineage, search,
aliases, stages and approvals, atomic registration."""

import pytest

from mlrig.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from mlrig.registry import VersionQuery
from mlrig.registry.search import MetricFilter
from mlrig.security import Principal


@pytest.fixture
def users(db_platform):
    security = db_platform.security
    made = {}
    for name, role in [("dev", "developer"), ("ops", "deployer"), ("ops2", "deployer")]:
        security.create_user(name=name, role=role)
        made[name] = security.authenticate(security.create_token(user=name)["token"])
    return made


def _register(platform, actor, name="iris", **kw):
    files = kw.pop("files", {"model.bin": b"weights " + name.encode(), "conf/config.json": b"{}"})
    return platform.registry.create_version(name, files=files, actor=actor, create_model=True, **kw)


def test_versions_are_numbered_and_keep_their_artifacts(db_platform, users):
    first = _register(db_platform, users["dev"], metrics={"accuracy": 0.9})
    second = _register(db_platform, users["dev"], metrics={"accuracy": 0.95})
    assert (first["version"], second["version"]) == ("1", "2")
    assert first["created_by"] == "dev"
    paths = {a["path"]: a for a in second["artifacts"]}
    assert set(paths) == {"conf/config.json", "model.bin"}
    info, stream = db_platform.registry.open_artifact("iris", "2", "model.bin")
    with stream:
        assert stream.read() == b"weights iris"
    assert info["sha256"] == paths["model.bin"]["sha256"]
    model = db_platform.registry.get_model("iris")
    assert model["version_count"] == 2 and model["latest_version"] == "2"


def test_named_versions_are_unique(db_platform, users):
    _register(db_platform, users["dev"], version="v1.0")
    with pytest.raises(ConflictError, match=r"already has a version 'v1\.0'"):
        _register(db_platform, users["dev"], version="v1.0")
    with pytest.raises(ValidationError):
        _register(db_platform, users["dev"], version="../etc")


def test_failed_registration_leaves_no_row_and_no_object(db_platform, users):
    _register(db_platform, users["dev"], version="a")
    before = set(db_platform.artifacts.list("models/"))
    with pytest.raises(ConflictError):
        _register(
            db_platform,
            users["dev"],
            version="a",
            files={"big.bin": b"x" * 100_000, "other.bin": b"y"},
        )
    assert set(db_platform.artifacts.list("models/")) == before
    assert db_platform.registry.get_model("iris")["version_count"] == 1


def test_a_version_is_immutable_but_tags_and_description_edit(db_platform, users):
    _register(db_platform, users["dev"], metrics={"accuracy": 0.9})
    with pytest.raises(ConflictError, match="immutable: metrics"):
        db_platform.registry.update_version("iris", "1", frozen={"metrics": {"accuracy": 1.0}})
    updated = db_platform.registry.update_version(
        "iris", "1", tags={"team": "a"}, description="better"
    )
    assert updated["tags"] == {"team": "a"} and updated["description"] == "better"
    assert updated["metrics"] == {"accuracy": 0.9}


def test_lineage_both_ways(db_platform, users):
    _register(
        db_platform,
        users["dev"],
        datasets=[{"uri": "s3://d/train.csv", "hash": "abc"}],
        code_version="deadbeef",
        params={"C": 1.0},
    )
    _register(db_platform, users["dev"], parent_version="1")
    parent = db_platform.registry.get_version("iris", "1")
    child = db_platform.registry.get_version("iris", "2")
    assert child["lineage"]["parent"]["version"] == "1"
    assert parent["lineage"]["derived"] == [{"id": child["id"], "name": "iris", "version": "2"}]
    assert parent["lineage"]["datasets"] == [{"uri": "s3://d/train.csv", "hash": "abc"}]
    assert parent["lineage"]["code_version"] == "deadbeef"
    assert parent["params"] == {"C": 1.0}
    assert parent["lineage"]["deployments"] == []


def test_search_filters_sorting_and_cursor(db_platform, users):
    for i in range(7):
        _register(
            db_platform,
            users["dev"],
            name="churn" if i % 2 else "iris-big",
            metrics={"accuracy": round(0.8 + i / 100, 2)},
            framework="sklearn" if i < 5 else "torch",
            tags={"team": "a" if i < 3 else "b"},
        )
    registry = db_platform.registry
    page = registry.search_versions(VersionQuery(name_prefix="iris", limit=2))
    assert [v["name"] for v in page["items"]] == ["iris-big", "iris-big"]
    seen = [v["id"] for v in page["items"]]
    while page["next_cursor"]:
        page = registry.search_versions(
            VersionQuery(name_prefix="iris", limit=2, cursor=page["next_cursor"])
        )
        seen += [v["id"] for v in page["items"]]
    assert len(seen) == len(set(seen)) == 4
    good = registry.search_versions(VersionQuery(metrics=(MetricFilter.parse("accuracy > 0.83"),)))
    assert sorted(v["metrics"]["accuracy"] for v in good["items"]) == [0.84, 0.85, 0.86]
    torch = registry.search_versions(VersionQuery(framework="torch", tags={"team": "b"}))
    assert len(torch["items"]) == 2
    best = registry.search_versions(VersionQuery(sort="-metrics.accuracy", limit=1))
    assert best["items"][0]["metrics"]["accuracy"] == 0.86
    second = registry.search_versions(
        VersionQuery(sort="-metrics.accuracy", limit=1, cursor=best["next_cursor"])
    )
    assert second["items"][0]["metrics"]["accuracy"] == 0.85
    assert registry.search_versions(VersionQuery(name_contains="URN"))["items"]
    assert registry.search_versions(VersionQuery(created_by="dev", limit=100))["items"]
    with pytest.raises(ValidationError, match="invalid metric filter"):
        MetricFilter.parse("accuracy >> 1")
    with pytest.raises(ValidationError, match="invalid cursor"):
        registry.search_versions(VersionQuery(cursor="garbage!"))


def test_aliases_move_and_resolve(db_platform, users):
    _register(db_platform, users["dev"])
    _register(db_platform, users["dev"])
    lifecycle = db_platform.lifecycle
    assert lifecycle.set_alias("iris", "champion", "1", actor=users["dev"])["previous"] is None
    assert db_platform.registry.get_version("iris", "champion")["version"] == "1"
    assert lifecycle.set_alias("iris", "champion", "2", actor=users["dev"])["previous"] == "1"
    assert db_platform.registry.get_version("iris", "champion")["aliases"] == ["champion"]
    assert db_platform.registry.get_model("iris")["aliases"] == {"champion": "2"}
    with pytest.raises(ValidationError):
        lifecycle.set_alias("iris", "latest", "1", actor=users["dev"])
    lifecycle.delete_alias("iris", "champion", actor=users["dev"])
    with pytest.raises(NotFoundError):
        db_platform.registry.get_version("iris", "champion")


def test_production_needs_another_users_approval(db_platform, users, register_plugin):
    events = []

    class Listener:
        from mlrig import hookimpl

        @hookimpl
        def mlrig_model_stage_changed(self, event):
            events.append(event["action"])

    db_platform.pm.register(Listener())
    _register(db_platform, users["dev"])
    _register(db_platform, users["dev"])
    lifecycle = db_platform.lifecycle
    moved = lifecycle.transition("iris", "1", "staging", actor=users["dev"])
    assert moved == {"status": "moved", "version": "1", "from": "none", "to": "staging"}
    opened = lifecycle.transition("iris", "1", "production", actor=users["ops"], comment="ship")
    assert opened["status"] == "pending_approval"
    request = opened["request"]
    with pytest.raises(ConflictError, match="already pending"):
        lifecycle.request_approval("iris", "1", "production", actor=users["dev"])
    with pytest.raises(PermissionDeniedError, match="another user than the requester"):
        lifecycle.decide(request["id"], approve=True, actor=users["ops"])
    with pytest.raises(PermissionDeniedError, match="approve"):
        lifecycle.decide(request["id"], approve=True, actor=users["dev"])
    decided = lifecycle.decide(request["id"], approve=True, actor=users["ops2"], comment="ok")
    assert decided["status"] == "approved" and decided["decided_by"] == "ops2"
    assert db_platform.registry.get_version("iris", "1")["stage"] == "production"
    # the next production version archives the previous one
    second = lifecycle.transition("iris", "2", "production", actor=users["dev"])["request"]
    rejected = lifecycle.decide(second["id"], approve=False, actor=users["ops"])
    assert rejected["status"] == "rejected"
    assert db_platform.registry.get_version("iris", "2")["stage"] == "none"
    third = lifecycle.transition("iris", "2", "production", actor=users["dev"])["request"]
    assert lifecycle.decide(third["id"], approve=True, actor=users["ops"])["archived_versions"] == [
        "1"
    ]
    assert db_platform.registry.get_version("iris", "1")["stage"] == "archived"
    with pytest.raises(ConflictError, match="already approved"):
        lifecycle.decide(third["id"], approve=True, actor=users["ops2"])
    assert events.count("approval_requested") == 3 and "approved" in events
    statuses = [r["status"] for r in lifecycle.list_requests(status=None, model="iris")]
    assert sorted(statuses) == ["approved", "approved", "rejected"]


def test_delete_is_soft_and_refused_while_deployed(db_platform, users):
    version = _register(db_platform, users["dev"])
    import uuid

    from mlrig.db.models import ModelDeployment

    with db_platform.db.session() as session:
        session.add(
            ModelDeployment(
                name="live", model_id=uuid.UUID(version["id"]), version="1", status="active"
            )
        )
    with pytest.raises(ConflictError, match="deployed"):
        db_platform.registry.delete_version("iris", "1", actor=users["ops"])
    with pytest.raises(ConflictError, match="deployed"):
        db_platform.registry.delete_model("iris", actor=users["ops"])
    with db_platform.db.session() as session:
        session.query(ModelDeployment).update({"status": "inactive"})
    db_platform.registry.delete_model("iris", actor=users["ops"])
    with pytest.raises(NotFoundError):
        db_platform.registry.get_model("iris")
    with pytest.raises(ConflictError, match="names are not reused"):
        db_platform.registry.create_model(name="iris", actor=users["dev"])


def test_local_operator_cannot_approve_its_own_request(db_platform):
    operator = Principal(name="cli:me", role="admin")
    _register(db_platform, operator)
    request = db_platform.lifecycle.transition("iris", "1", "production", actor=operator)["request"]
    with pytest.raises(PermissionDeniedError):
        db_platform.lifecycle.decide(request["id"], approve=True, actor=operator)
