"""The feature store's definitions through ``platform.features`` on SQLite and PostgreSQL:
entities, views, features, filters, versioning (who and when), breaking changes refused
while deployed, name clashes, bad input naming the field, PII masking and its audit, a
push refused whole, and two identical creates racing."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mlrig.db.models import (
    AuditLog,
    FeatureDefinition,
    FeatureDefinitionVersion,
    FeaturePushRow,
    FeatureView,
    ModelDeployment,
)
from mlrig.errors import ConflictError, NotFoundError, ValidationError
from mlrig.features.service import mask_value
from mlrig.security import Principal
from mlrig.testing.fixtures import make_platform

pd = pytest.importorskip("pandas")
pytest.importorskip("duckdb")

ALICE = Principal(name="alice", role="admin")
BOB = Principal(name="bob", role="developer")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    frame = pd.DataFrame(
        {
            "customer_id": [1, 2, 1, 3],
            "event_timestamp": pd.to_datetime(
                ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"], utc=True
            ),
            "spend": [1.0, 2.0, 3.0, 4.0],
            "email": ["a@x.org", "b@x.org", "c@x.org", "d@x.org"],
            "segment": ["gold", "silver", "gold", "bronze"],
        }
    )
    frame.to_parquet(folder / "customers.parquet")
    return folder


@pytest.fixture
def plat(tmp_path: Path, db_url: str, database, data_dir: Path):
    platform = make_platform(
        tmp_path / "home",
        database={"url": db_url},
        datasets={"allowed_roots": [str(data_dir)]},
    )
    yield platform
    platform.close()


def _customer(plat) -> None:
    plat.features.create_entity(
        {"name": "customer", "join_keys": ["customer_id"], "description": "a buyer"}, actor=ALICE
    )


def _view_body(data_dir: Path, name: str = "customer_stats", **extra):
    return {
        "name": name,
        "entities": ["customer"],
        "source": {"kind": "file", "uri": str(data_dir / "customers.parquet")},
        "features": [
            {"name": "spend", "type": "numerical"},
            {"name": "email", "type": "text", "tags": ["pii"]},
            {"name": "segment", "type": "categorical", "tags": ["marketing"]},
        ],
        "ttl_seconds": 86400 * 3650,
        **extra,
    }


def _push_view(plat, name: str = "clicks", features=None):
    return plat.features.create_view(
        {
            "name": name,
            "entities": ["customer"],
            "source": {"kind": "push"},
            "features": features
            or [
                {"name": f"{name}_count", "type": "numerical"},
                {"name": f"{name}_email", "type": "text", "tags": ["pii"]},
            ],
        },
        actor=ALICE,
    )


def test_entities_create_list_show_and_clash(plat):
    _customer(plat)
    assert plat.features.get_entity("customer")["join_keys"] == ["customer_id"]
    assert [e["name"] for e in plat.features.list_entities()] == ["customer"]
    with pytest.raises(ConflictError, match="entity named 'customer' exists"):
        _customer(plat)
    with pytest.raises(NotFoundError):
        plat.features.get_entity("nobody")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "1bad", "join_keys": ["k"]}, "name"),
        ({"name": "ok", "join_keys": []}, "join_keys"),
        ({"name": "ok", "join_keys": ["a", "a"]}, "join_keys"),
        ({"name": "ok", "join_keys": ["event_timestamp"]}, "join_keys"),
        ({"name": "ok", "join_keys": ["k"], "colour": "red"}, "colour"),
    ],
)
def test_bad_entities_name_the_field(plat, body, field):
    with pytest.raises(ValidationError) as caught:
        plat.features.create_entity(body, actor=ALICE)
    assert caught.value.details["field"] == field


def test_view_create_and_feature_filters(plat, data_dir):
    _customer(plat)
    view = plat.features.create_view(_view_body(data_dir), actor=ALICE)
    assert [f["name"] for f in view["features"]] == ["spend", "email", "segment"]
    assert view["join_keys"] == ["customer_id"] and view["version"] == 1
    _push_view(plat)
    features = plat.features
    assert [f["name"] for f in features.list_features(type="numerical")] == [
        "clicks_count",
        "spend",
    ]
    assert [f["name"] for f in features.list_features(tag="pii")] == ["clicks_email", "email"]
    assert [f["name"] for f in features.list_features(source="push")] == [
        "clicks_count",
        "clicks_email",
    ]
    assert {f["name"] for f in features.list_features(source="file")} == {
        "email",
        "segment",
        "spend",
    }
    assert len(features.list_features(entity="customer")) == 5
    assert features.list_features(entity="driver") == []
    assert [f["name"] for f in features.list_features(view="clicks", limit=1, offset=1)] == [
        "clicks_email"
    ]
    email = features.get_feature("customer_stats:email")
    assert email["pii"] is True and email["type"] == "text"
    with pytest.raises(NotFoundError):
        features.get_feature("clicks:email")  # the name is in another view


def test_feature_history_records_who_and_when(plat, data_dir):
    _customer(plat)
    plat.features.create_view(_view_body(data_dir), actor=ALICE)
    updated = plat.features.update_feature("spend", {"description": "total spend"}, actor=BOB)
    assert updated["version"] == 2 and updated["description"] == "total spend"
    again = plat.features.update_feature("spend", {"description": "total spend"}, actor=BOB)
    assert again["version"] == 2  # nothing changed: no new version
    history = plat.features.feature_history("spend")["versions"]
    assert [(h["version"], h["change"], h["changed_by"]) for h in history] == [
        (1, "created", "alice"),
        (2, "updated", "bob"),
    ]
    assert history[1]["definition"]["description"] == "total spend"
    assert datetime.fromisoformat(history[1]["changed_at"]) >= datetime.fromisoformat(
        history[0]["changed_at"]
    )
    assert plat.features.get_view("customer_stats")["version"] == 2


def test_a_feature_added_to_a_view(plat, data_dir):
    _customer(plat)
    plat.features.create_view(_view_body(data_dir), actor=ALICE)
    feature = plat.features.create_feature(
        {
            "view": "customer_stats",
            "name": "spend_x2",
            "type": "numerical",
            "expression": "spend * 2",
        },
        actor=ALICE,
    )
    assert feature["view"] == "customer_stats" and feature["expression"] == "spend * 2"
    with pytest.raises(ConflictError, match="feature names are unique"):
        plat.features.create_feature(
            {"view": "customer_stats", "name": "spend", "type": "numerical"}, actor=ALICE
        )
    with pytest.raises(NotFoundError):
        plat.features.create_feature({"view": "nope", "name": "x", "type": "text"}, actor=ALICE)


def _deploy(plat, name: str, refs: list[str]) -> None:
    with plat.db.session() as session:
        session.add(
            ModelDeployment(name=name, version="1", deployment_config={"features": {"refs": refs}})
        )


def test_breaking_changes_are_refused_while_deployed(plat, data_dir):
    _customer(plat)
    plat.features.create_view(_view_body(data_dir), actor=ALICE)
    _deploy(plat, "scorer", ["customer_stats:spend"])
    with pytest.raises(ConflictError, match="scorer") as caught:
        plat.features.update_feature("spend", {"type": "categorical"}, actor=ALICE)
    assert caught.value.details["features"] == {"spend": ["scorer"]}
    body = _view_body(data_dir)
    body["features"] = [f for f in body["features"] if f["name"] != "spend"]
    with pytest.raises(ConflictError, match="removing"):
        plat.features.update_view("customer_stats", body, actor=ALICE)
    assert plat.features.get_feature("spend")["type"] == "numerical"  # nothing changed
    # what no deployment uses may change; a non-breaking change of a deployed one too
    assert plat.features.update_feature("segment", {"type": "text"}, actor=ALICE)["version"] == 2
    assert plat.features.update_feature("spend", {"tags": ["money"]}, actor=ALICE)["version"] == 2
    with plat.db.session() as session:
        row = session.scalar(select(ModelDeployment).where(ModelDeployment.name == "scorer"))
        row.deleted_at = datetime.now(timezone.utc)
    retyped = {"type": "categorical", "expression": "CAST(spend AS BIGINT)"}
    assert plat.features.update_feature("spend", retyped, actor=ALICE)["type"] == "categorical"


def test_name_clashes_create_nothing(plat, data_dir):
    _customer(plat)
    plat.features.create_view(_view_body(data_dir), actor=ALICE)
    with pytest.raises(ConflictError, match="feature view named 'customer_stats'"):
        plat.features.create_view(_view_body(data_dir), actor=ALICE)
    with pytest.raises(ConflictError, match="'spend' exists \\(in view 'customer_stats'\\)"):
        plat.features.create_view(_view_body(data_dir, name="other"), actor=ALICE)
    with pytest.raises(NotFoundError):
        plat.features.get_view("other")
    with plat.db.session() as session:
        assert session.scalar(select(func.count()).select_from(FeatureDefinition)) == 3


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"source": {"kind": "file", "uri": "MISSING"}}, "source.uri"),
        ({"source": {"kind": "ftp"}}, "source.kind"),
        ({"features": [{"name": "spend", "type": "float"}]}, "features[0].type"),
        ({"features": [{"name": "spend"}]}, "features[0].type"),
        ({"features": [{"name": "bad name", "type": "text"}]}, "features[0].name"),
        ({"features": []}, "features"),
        ({"ttl_seconds": 0}, "ttl_seconds"),
        ({"ttl_seconds": 2**70}, "ttl_seconds"),
        ({"online": "yes"}, "online"),
    ],
)
def test_bad_views_name_the_field(plat, data_dir, change, field):
    _customer(plat)
    body = _view_body(data_dir, **change)
    if body["source"].get("uri") == "MISSING":
        body["source"]["uri"] = str(data_dir / "missing.parquet")
    with pytest.raises(ValidationError) as caught:
        plat.features.create_view(body, actor=ALICE)
    assert caught.value.details.get("field", "").startswith(field.split("[")[0]), (
        caught.value.details
    )
    with pytest.raises(NotFoundError):
        plat.features.get_view("customer_stats")


def test_an_unknown_entity_is_404_naming_it(plat, data_dir):
    _customer(plat)
    with pytest.raises(NotFoundError, match="no entity named 'driver'") as caught:
        plat.features.create_view(_view_body(data_dir, entities=["driver"]), actor=ALICE)
    assert caught.value.details["field"] == "entities[0]"


def test_a_missing_column_and_a_bad_timestamp_are_refused(plat, data_dir):
    _customer(plat)
    body = _view_body(data_dir)
    body["features"] = [{"name": "no_such_column", "type": "numerical"}]
    with pytest.raises(ValidationError, match="no_such_column"):
        plat.features.create_view(body, actor=ALICE)
    body = _view_body(data_dir)
    body["source"]["timestamp_field"] = "segment"  # a text column
    with pytest.raises(ValidationError, match="segment"):
        plat.features.create_view(body, actor=ALICE)


def test_pii_is_masked_without_the_right_and_audited_with_it(plat):
    _customer(plat)
    _push_view(plat)
    stamp = "2026-01-01T00:00:00+00:00"
    plat.features.push(
        "clicks",
        [
            {
                "customer_id": 7,
                "event_timestamp": stamp,
                "clicks_count": 3,
                "clicks_email": "z@x.org",
            }
        ],
        actor=ALICE,
    )
    masked = plat.features.get_online_features(
        ["clicks_count", "clicks_email"],
        [{"customer_id": 7}, {"customer_id": 8}],
        can_read_pii=False,
        actor=BOB,
    )
    assert masked["results"][0] == {
        "clicks_count": 3,
        "clicks_email": mask_value("z@x.org", "hash", plat.features.pii_mask_key),
    }
    assert masked["results"][1] == {"clicks_count": None, "clicks_email": None}
    assert masked["missing"] == [[], ["clicks_count", "clicks_email"]]
    with plat.db.session() as session:
        assert (
            session.scalar(
                select(func.count())
                .select_from(AuditLog)
                .where(AuditLog.action == "features.read_pii")
            )
            == 0
        )
    clear = plat.features.get_online_features(["clicks_email"], [{"customer_id": 7}], actor=ALICE)
    assert clear["results"] == [{"clicks_email": "z@x.org"}]
    with plat.db.session() as session:
        entry = session.scalar(select(AuditLog).where(AuditLog.action == "features.read_pii"))
        assert entry.actor == "alice" and entry.details["features"] == ["clicks_email"]
    # the training set masks the same way
    entities = [{"customer_id": 7, "event_timestamp": "2026-02-01T00:00:00Z"}]
    rows = plat.features.training_set(["clicks_email"], entities, can_read_pii=False)["rows"]
    assert rows[0]["clicks_email"] == mask_value("z@x.org", "hash", plat.features.pii_mask_key)


def test_null_mask(tmp_path):
    platform = make_platform(tmp_path / "home", features={"pii_mask": "null"})
    try:
        _customer(platform)
        _push_view(platform)
        platform.features.push(
            "clicks",
            [
                {
                    "customer_id": 1,
                    "event_timestamp": "2026-01-01T00:00:00Z",
                    "clicks_count": 1,
                    "clicks_email": "q",
                }
            ],
            actor=ALICE,
        )
        answer = platform.features.get_online_features(
            ["clicks_email"], [{"customer_id": 1}], can_read_pii=False
        )
        assert answer["results"] == [{"clicks_email": None}]
    finally:
        platform.close()


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"clicks_count": "three"}, "rows[1].clicks_count"),
        ({"colour": "red"}, "rows[1].colour"),
        ({"customer_id": True}, "rows[1].customer_id"),
        ({"event_timestamp": "yesterday"}, "rows[1].event_timestamp"),
        ({"clicks_count": float("nan")}, "rows[1].clicks_count"),
    ],
)
def test_a_push_with_the_wrong_schema_writes_nothing(plat, row, field):
    _customer(plat)
    _push_view(plat)
    good = {
        "customer_id": 1,
        "event_timestamp": "2026-01-01T00:00:00Z",
        "clicks_count": 1,
        "clicks_email": "e",
    }
    with pytest.raises(ValidationError) as caught:
        plat.features.push("clicks", [good, {**good, **row}], actor=ALICE)
    assert caught.value.details["field"] == field
    with plat.db.session() as session:
        assert session.scalar(select(func.count()).select_from(FeaturePushRow)) == 0
    answer = plat.features.get_online_features(["clicks_count"], [{"customer_id": 1}])
    assert answer["missing"] == [["clicks_count"]]


def test_push_needs_a_push_source_and_materialize_a_batch_view(plat, data_dir):
    _customer(plat)
    plat.features.create_view(_view_body(data_dir), actor=ALICE)
    with pytest.raises(ValidationError, match="push source"):
        plat.features.push("customer_stats", [{"customer_id": 1}], actor=ALICE)
    experiment = plat.features.materialize(
        "customer_stats", start=datetime(2026, 1, 1, tzinfo=timezone.utc), actor=ALICE
    )
    assert experiment["trainer"] == "features-materialize"
    assert experiment["hyperparameters"]["view"] == "customer_stats"
    assert experiment["hyperparameters"]["start"] == "2026-01-01T00:00:00+00:00"
    with pytest.raises(ValidationError, match="after start"):
        plat.features.materialize(
            "customer_stats",
            start=datetime(2026, 1, 2, tzinfo=timezone.utc),
            end=datetime(2026, 1, 1, tzinfo=timezone.utc),
            actor=ALICE,
        )


def test_resolve_groups_by_view_and_lists_unknowns(plat, data_dir):
    _customer(plat)
    plat.features.create_view(_view_body(data_dir), actor=ALICE)
    _push_view(plat)
    grouped = plat.features.resolve(["spend", "clicks:clicks_count", "customer_stats:email"])
    assert [(spec.name, names) for spec, names in grouped] == [
        ("customer_stats", ["spend", "email"]),
        ("clicks", ["clicks_count"]),
    ]
    with pytest.raises(NotFoundError) as caught:
        plat.features.resolve(["spend", "nope", "clicks:spend"])
    assert caught.value.details["features"] == ["nope", "clicks:spend"]


def test_historical_features_are_point_in_time(plat, data_dir):
    _customer(plat)
    plat.features.create_view(_view_body(data_dir), actor=ALICE)
    entity_df = pd.DataFrame(
        {
            "customer_id": [1, 1, 2, 9],
            "event_timestamp": pd.to_datetime(
                ["2026-01-02", "2026-01-03T12:00", "2025-12-31", "2026-02-01"],
                utc=True,
                format="ISO8601",
            ),
        }
    )
    frame = plat.features.get_historical_features(entity_df, ["spend", "segment"])
    assert list(frame["customer_id"]) == [1, 1, 2, 9]
    assert frame["spend"].tolist()[:2] == [1.0, 3.0]
    assert frame["spend"].isna().tolist()[2:] == [True, True]  # before any value; unknown key


def test_two_identical_creates_at_once_make_one_view(plat, data_dir):
    _customer(plat)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def create() -> None:
        barrier.wait()
        try:
            outcomes.append(plat.features.create_view(_view_body(data_dir), actor=ALICE)["name"])
        except ConflictError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=create) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(type(o).__name__ for o in outcomes) == ["ConflictError", "str"]
    with plat.db.session() as session:
        assert session.scalar(select(func.count()).select_from(FeatureView)) == 1
        assert session.scalar(select(func.count()).select_from(FeatureDefinition)) == 3
        assert session.scalar(select(func.count()).select_from(FeatureDefinitionVersion)) == 3


def test_resolve_is_cached_and_sees_changes_from_elsewhere(plat, data_dir, monkeypatch, db_url):
    from mlrig.features import service as service_module

    _customer(plat)
    plat.features.create_view(_view_body(data_dir), actor=ALICE)
    first = plat.features.resolve(["spend"])
    assert plat.features.resolve(["spend"]) == first
    other = make_platform(
        Path(str(data_dir)).parent / "other",
        database={"url": db_url},
        datasets={"allowed_roots": [str(data_dir)]},
    )
    try:  # another process's change: seen once the generation is read again
        other.features.update_feature("spend", {"tags": ["money"]}, actor=BOB)
    finally:
        other.close()
    monkeypatch.setattr(service_module, "RESOLVE_CHECK_SECONDS", 0.0)
    spec, _ = plat.features.resolve(["spend"])[0]
    assert spec.feature("spend").tags == ("money",)
    # a change in this process is seen at once
    monkeypatch.setattr(service_module, "RESOLVE_CHECK_SECONDS", 3600.0)
    plat.features.update_feature("spend", {"tags": ["cash"]}, actor=BOB)
    spec, _ = plat.features.resolve(["spend"])[0]
    assert spec.feature("spend").tags == ("cash",)
    with pytest.raises(ValidationError):
        plat.features.get_online_features(["bad ref"], [{"customer_id": 1}])


ON_DEMAND = """
def ratio(frame):
    import pandas as pd

    return pd.DataFrame({"spend_per_amount": frame["spend"] / frame["amount"]}, index=frame.index)
"""


def test_on_demand_views_offline_and_online(plat, data_dir, tmp_path, monkeypatch):
    (tmp_path / "fs_ondemand_mod.py").write_text(ON_DEMAND)
    monkeypatch.syspath_prepend(str(tmp_path))
    _customer(plat)
    plat.features.create_view(_view_body(data_dir), actor=ALICE)
    body = {
        "name": "ratios",
        "kind": "on_demand",
        "function": "fs_ondemand_mod:ratio",
        "inputs": ["spend"],
        "request_fields": {"amount": "numerical"},
        "features": [{"name": "spend_per_amount", "type": "numerical"}],
    }
    view = plat.features.create_view(body, actor=ALICE)
    assert view["kind"] == "on_demand" and view["inputs"] == ["spend"]
    with pytest.raises(ValidationError) as caught:
        plat.features.create_view(
            {**body, "name": "r2", "function": "fs_no_such_mod:f"}, actor=ALICE
        )
    assert caught.value.details["field"] == "function"
    with pytest.raises(ValidationError) as caught:
        plat.features.create_view({**body, "name": "r3", "inputs": ["nope"]}, actor=ALICE)
    assert caught.value.details["field"] == "inputs"
    entity_df = pd.DataFrame(
        {
            "customer_id": [1],
            "event_timestamp": pd.to_datetime(["2026-01-03T12:00"], utc=True),
            "amount": [2.0],
        }
    )
    frame = plat.features.get_historical_features(entity_df, ["spend_per_amount"])
    assert frame["spend_per_amount"].tolist() == [1.5]
    assert "spend" not in frame.columns  # an input not asked for is not returned


def test_review_findings_rights_and_pii_taint(plat, data_dir, tmp_path, monkeypatch):
    from mlrig.errors import PermissionDeniedError

    (tmp_path / "fs_taint_mod.py").write_text(
        "def same(frame):\n    import pandas as pd\n"
        "    return pd.DataFrame({'email_copy': frame['email']}, index=frame.index)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _customer(plat)
    plat.features.create_view(_view_body(data_dir), actor=ALICE)
    body = {
        "name": "copies",
        "kind": "on_demand",
        "function": "fs_taint_mod:same",
        "inputs": ["email"],
        "features": [{"name": "email_copy", "type": "text"}],
    }
    with pytest.raises(PermissionDeniedError, match="admin"):
        plat.features.create_view(body, actor=BOB)
    plat.features.create_view(body, actor=ALICE)
    entity_df = pd.DataFrame(
        {"customer_id": [1], "event_timestamp": pd.to_datetime(["2026-01-02"], utc=True)}
    )
    frame = plat.features.get_historical_features(entity_df, ["email_copy"], can_read_pii=False)
    assert frame["email_copy"].tolist() == [
        mask_value("a@x.org", "hash", plat.features.pii_mask_key)
    ]  # tainted by email
    with pytest.raises(PermissionDeniedError, match="read_pii"):
        plat.features.update_feature("email", {"tags": []}, actor=BOB)
    deployer = Principal(name="dee", role="deployer")
    assert plat.features.update_feature("email", {"tags": []}, actor=deployer)["pii"] is False
