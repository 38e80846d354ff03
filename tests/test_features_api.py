"""The feature store's REST routes on SQLite and PostgreSQL: create and read back, lists
and filters with pagination, values (online, as_of), batch reads, training sets, push,
materialise, statistics, PII by role with its audit, and every client mistake a 4xx in
the one error shape (nasty values refused or read back as sent)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from mlrig.api import create_app
from mlrig.db.models import AuditLog, FeatureStatistics, ModelDeployment
from mlrig.features.service import mask_value
from mlrig.testing.fixtures import make_platform

pd = pytest.importorskip("pandas")
pytest.importorskip("duckdb")

API = "/api/ml"
STAMP = "2026-01-01T00:00:00+00:00"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    pd.DataFrame(
        {
            "customer_id": [1, 2, 1],
            "event_timestamp": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True),
            "spend": [1.5, 2.5, 3.5],
        }
    ).to_parquet(folder / "c.parquet")
    return folder


@pytest.fixture
def env(tmp_path: Path, db_url: str, database, data_dir: Path):
    platform = make_platform(
        tmp_path / "home", database={"url": db_url}, datasets={"allowed_roots": [str(data_dir)]}
    )
    headers = {}
    for role in ("viewer", "developer", "deployer", "admin"):
        platform.security.create_user(name=f"u-{role}", role=role)
        token = platform.security.create_token(user=f"u-{role}")["token"]
        headers[role] = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(platform), raise_server_exceptions=False) as client:
        yield client, headers, platform
    platform.close()


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    return error


def _setup(client, admin, data_dir: Path) -> None:
    assert (
        client.post(
            f"{API}/entities",
            json={"name": "customer", "join_keys": ["customer_id"]},
            headers=admin,
        ).status_code
        == 201
    )
    view = {
        "name": "stats",
        "entities": ["customer"],
        "source": {"kind": "file", "uri": str(data_dir / "c.parquet")},
        "features": [{"name": "spend", "type": "numerical", "description": "€ spent"}],
    }
    assert client.post(f"{API}/feature-views", json=view, headers=admin).status_code == 201
    push = {
        "name": "profile",
        "entities": ["customer"],
        "source": {"kind": "push"},
        "features": [
            {"name": "visits", "type": "numerical"},
            {"name": "email", "type": "text", "tags": ["pii"]},
        ],
    }
    assert client.post(f"{API}/feature-views", json=push, headers=admin).status_code == 201
    rows = [
        {"customer_id": 1, "event_timestamp": STAMP, "visits": 4, "email": "a@x.org"},
        {"customer_id": 2, "event_timestamp": STAMP, "visits": 5, "email": "b@x.org"},
    ]
    answer = client.post(f"{API}/feature-views/profile/push", json={"rows": rows}, headers=admin)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"view": "profile", "rows": 2, "offline": 2, "online": 2}


def test_definitions_read_back_and_list(env, data_dir):
    client, h, _ = env
    _setup(client, h["admin"], data_dir)
    feature = client.get(f"{API}/features/stats:spend", headers=h["viewer"]).json()
    assert feature["description"] == "€ spent" and feature["view"] == "stats"
    assert client.get(f"{API}/entities/customer", headers=h["viewer"]).json()["join_keys"] == [
        "customer_id"
    ]
    page = client.get(f"{API}/features", params={"limit": 2}, headers=h["viewer"]).json()
    assert [f["name"] for f in page["items"]] == ["email", "spend"] and page["next_cursor"]
    rest = client.get(
        f"{API}/features", params={"limit": 2, "cursor": page["next_cursor"]}, headers=h["viewer"]
    ).json()
    assert [f["name"] for f in rest["items"]] == ["visits"] and rest["next_cursor"] is None
    pii = client.get(f"{API}/features", params={"tag": "pii"}, headers=h["viewer"]).json()
    assert [f["name"] for f in pii["items"]] == ["email"]
    views = client.get(f"{API}/feature-views", params={"entity": "customer"}, headers=h["viewer"])
    assert [v["name"] for v in views.json()["items"]] == ["profile", "stats"]


def test_feature_update_history_and_deployed_409(env, data_dir):
    client, h, platform = env
    _setup(client, h["admin"], data_dir)
    answer = client.put(f"{API}/features/spend", json={"tags": ["money"]}, headers=h["developer"])
    assert answer.status_code == 200 and answer.json()["version"] == 2
    history = client.get(f"{API}/features/spend/history", headers=h["viewer"]).json()
    assert [(v["version"], v["changed_by"]) for v in history["versions"]] == [
        (1, "u-admin"),
        (2, "u-developer"),
    ]
    with platform.db.session() as session:
        session.add(
            ModelDeployment(
                name="scorer", version="1", deployment_config={"features": {"refs": ["spend"]}}
            )
        )
    error = _error(
        client.put(f"{API}/features/spend", json={"type": "text"}, headers=h["admin"]), 409
    )
    assert "scorer" in error["message"]
    created = client.post(
        f"{API}/features",
        json={"view": "stats", "name": "spend2", "type": "numerical", "expression": "spend * 2"},
        headers=h["developer"],
    )
    assert created.status_code == 201 and created.json()["expression"] == "spend * 2"
    _error(
        client.post(
            f"{API}/features",
            json={"view": "stats", "name": "visits", "type": "numerical"},
            headers=h["admin"],
        ),
        409,
    )


def test_pii_by_role_and_audit(env, data_dir):
    client, h, platform = env
    _setup(client, h["admin"], data_dir)
    body = {
        "features": ["visits", "profile:email"],
        "entities": [{"customer_id": 1}, {"customer_id": 99}],
    }
    for role in ("viewer", "developer"):
        answer = client.post(f"{API}/features/batch", json=body, headers=h[role]).json()
        assert answer["results"][0] == {
            "visits": 4,
            "email": mask_value("a@x.org", "hash", platform.features.pii_mask_key),
        }
        assert answer["results"][1] == {"visits": None, "email": None}
        assert answer["missing"] == [[], ["visits", "email"]]
        assert answer["entities"] == body["entities"]
    with platform.db.session() as session:
        assert (
            session.scalars(select(AuditLog).where(AuditLog.action == "features.read_pii")).all()
            == []
        )
    clear = client.post(f"{API}/features/batch", json=body, headers=h["deployer"]).json()
    assert clear["results"][0]["email"] == "a@x.org"
    with platform.db.session() as session:
        audit = session.scalars(
            select(AuditLog).where(AuditLog.action == "features.read_pii")
        ).all()
    assert [a.actor for a in audit] == ["u-deployer"]
    values = client.get(
        f"{API}/features/email/values",
        params={"key": ["customer_id:2", "customer_id:3"]},
        headers=h["developer"],
    ).json()
    assert values["results"] == [
        {"email": mask_value("b@x.org", "hash", platform.features.pii_mask_key)},
        {"email": None},
    ]
    assert values["entities"] == [{"customer_id": 2}, {"customer_id": 3}]


def test_offline_lookups_and_training_sets(env, data_dir):
    client, h, _ = env
    _setup(client, h["admin"], data_dir)
    point = client.get(
        f"{API}/features/spend/values",
        params={"key": "customer_id:1", "as_of": "2026-01-02T12:00:00Z"},
        headers=h["viewer"],
    )
    assert point.status_code == 200, point.text
    assert point.json()["results"] == [{"spend": 1.5}]
    body = {
        "features": ["spend", "visits"],
        "entities": [
            {"customer_id": 1, "event_timestamp": "2026-01-03T00:00:00Z"},
            {"customer_id": 2, "event_timestamp": "2025-01-01T00:00:00"},  # naive: UTC
        ],
    }
    answer = client.post(f"{API}/features/training-set", json=body, headers=h["viewer"])
    assert answer.status_code == 200, answer.text
    rows = answer.json()["rows"]
    assert [(r["spend"], r["visits"]) for r in rows] == [(3.5, 4), (None, None)]
    assert rows[1]["event_timestamp"].startswith("2025-01-01T00:00:00")


def test_materialize_is_202_and_statistics_mask_pii(env, data_dir):
    client, h, platform = env
    _setup(client, h["admin"], data_dir)
    answer = client.post(
        f"{API}/feature-views/stats/materialize",
        json={"start": "2026-01-01T00:00:00"},  # naive: taken as UTC, read back with +00:00
        headers=h["developer"],
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["hyperparameters"] == {
        "view": "stats",
        "start": "2026-01-01T00:00:00+00:00",
        "end": None,
    }
    with platform.db.session() as session:
        session.add(
            FeatureStatistics(
                view_name="profile",
                feature_name="email",
                stats={"count": 2, "nulls": 0, "top": [["a@x.org", 1]]},
            )
        )
    masked = client.get(f"{API}/feature-views/profile/statistics", headers=h["viewer"]).json()
    assert masked["features"][0]["stats"] == {"count": 2, "nulls": 0, "masked": True}
    clear = client.get(f"{API}/feature-views/profile/statistics", headers=h["deployer"]).json()
    assert clear["features"][0]["stats"]["top"] == [["a@x.org", 1]]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/entities", {"name": "a\u0000b", "join_keys": ["k"]}, 422),
        ("post", "/entities", '{"name": "ok", "join_keys": ["k"], "description": "\\ud800"}', 422),
        ("post", "/entities", {"name": "ok", "join_keys": "k"}, 422),
        ("post", "/entities", {"name": "customer", "join_keys": ["k"]}, 409),
        (
            "post",
            "/feature-views",
            {
                "name": "v",
                "entities": ["ghost"],
                "source": {"kind": "push"},
                "features": [{"name": "x", "type": "text"}],
            },
            404,
        ),
        (
            "post",
            "/feature-views",
            {
                "name": "v",
                "entities": ["customer"],
                "source": {"kind": "push"},
                "features": [{"name": "x", "type": "text"}],
                "ttl_seconds": 2**80,
            },
            422,
        ),
        (
            "post",
            "/feature-views",
            {
                "name": "v",
                "entities": ["customer"],
                "source": {"kind": "file", "uri": "/etc/passwd"},
                "features": [{"name": "x", "type": "text"}],
            },
            422,
        ),
        (
            "post",
            "/feature-views",
            {"name": "v", "entities": ["customer"], "features": [{"name": "x", "type": "text"}]},
            422,
        ),
        (
            "post",
            "/feature-views/profile/push",
            {"rows": [{"customer_id": 2**64, "event_timestamp": STAMP, "visits": 1, "email": "e"}]},
            422,
        ),
        (
            "post",
            "/feature-views/profile/push",
            {
                "rows": [
                    {"customer_id": 1, "event_timestamp": STAMP, "visits": 1, "email": "a\u0000"}
                ]
            },
            422,
        ),
        (
            "post",
            "/feature-views/profile/push",
            {"rows": [{"customer_id": 1, "event_timestamp": STAMP, "visits": 1}]},
            422,
        ),
        ("post", "/feature-views/stats/push", {"rows": [{"customer_id": 1}]}, 422),
        ("post", "/feature-views/nope/push", {"rows": [{"customer_id": 1}]}, 404),
        ("post", "/feature-views/stats/materialize", {"start": 1700000000}, 422),
        (
            "post",
            "/feature-views/stats/materialize",
            {"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
            422,
        ),
        (
            "post",
            "/features/batch",
            {"features": ["spend"], "entities": [{"customer_id": True}]},
            422,
        ),
        (
            "post",
            "/features/batch",
            {"features": ["spend"], "entities": [{"customer_id": 1.5}]},
            422,
        ),
        ("post", "/features/batch", {"features": ["nope"], "entities": [{"customer_id": 1}]}, 404),
        ("post", "/features/batch", {"features": ["spend"], "entities": [{"driver_id": 1}]}, 422),
        (
            "post",
            "/features/training-set",
            {"features": ["spend"], "entities": [{"customer_id": 1}]},
            422,
        ),
        (
            "post",
            "/features/training-set",
            {"features": ["spend"], "entities": [{"customer_id": 1, "event_timestamp": "soon"}]},
            422,
        ),
        ("put", "/features/spend", {"type": "float"}, 422),
        ("put", "/features/spend", {"name": "other"}, 422),
        ("get", "/features/bad%20name", None, 422),
        (
            "put",
            "/feature-views/stats",
            {
                "name": "renamed",
                "entities": ["customer"],
                "source": {"kind": "push"},
                "features": [{"name": "spend", "type": "numerical"}],
            },
            422,
        ),
        ("get", "/features?type=float", None, 422),
        ("get", "/features/spend/values?key=customer_id", None, 422),
        ("get", "/features/spend/values", None, 422),
        ("get", "/features/spend/values?key=customer_id:1&as_of=yesterday", None, 422),
        ("get", "/features/no_such", None, 404),
        ("get", "/features/bad%20name", None, 422),
        ("get", "/feature-views/no_such/statistics", None, 404),
        ("get", "/entities/no_such", None, 404),
    ],
)
def test_client_mistakes_are_clear_4xx(env, data_dir, method, path, body, status):
    client, h, _ = env
    _setup(client, h["admin"], data_dir)
    kwargs: dict = {}
    if isinstance(body, str):  # raw JSON text: a lone surrogate escaped as \ud800
        kwargs = {"content": body, "headers": {**h["admin"], "Content-Type": "application/json"}}
    elif body is not None:
        kwargs = {"json": body}
    kwargs.setdefault("headers", h["admin"])
    error = _error(client.request(method.upper(), API + path, **kwargs), status)
    assert error["message"]


def test_nasty_but_valid_values_read_back(env, data_dir):
    client, h, _ = env
    _setup(client, h["admin"], data_dir)
    text = "ünïcødé \U0001f600 \" ' \\ \n tab\t"
    rows = [{"customer_id": "ç-1", "event_timestamp": STAMP, "visits": 2**62, "email": text}]
    answer = client.post(
        f"{API}/feature-views/profile/push", json={"rows": rows}, headers=h["admin"]
    )
    assert answer.status_code == 200, answer.text
    back = client.post(
        f"{API}/features/batch",
        json={"features": ["visits", "email"], "entities": [{"customer_id": "ç-1"}]},
        headers=h["deployer"],
    ).json()
    assert back["results"] == [{"visits": 2**62, "email": text}]


def test_schema_edges_the_fuzzer_found(env, data_dir):
    """The first fuzz run's findings: a reserved feature name, an integral-float TTL, the
    405 of a method that the fixed routes beside ``/features/{name}`` lack."""
    client, h, _ = env
    _setup(client, h["admin"], data_dir)
    admin = h["admin"]
    clash = {"view": "profile", "name": "batch", "type": "numerical"}
    error = _error(client.post(f"{API}/features", json=clash, headers=admin), 422)
    assert "reserved" in error["message"] and "batch" in error["message"]
    view = client.get(f"{API}/feature-views/profile", headers=admin).json()
    body = {
        "entities": ["customer"],
        "source": {"kind": "push"},
        "features": [
            {"name": f["name"], "type": f["type"], "tags": f["tags"]} for f in view["features"]
        ],
        "ttl_seconds": 3600.0,
    }
    updated = client.put(f"{API}/feature-views/profile", json=body, headers=admin)
    assert updated.status_code == 200, updated.text
    assert updated.json()["ttl_seconds"] == 3600
    for bad in ("3600", True, 3600.5):
        _error(
            client.put(
                f"{API}/feature-views/profile", json={**body, "ttl_seconds": bad}, headers=admin
            ),
            422,
        )
    for method, path in (("PUT", "batch"), ("OPTIONS", "batch"), ("PUT", "training-set")):
        error = _error(
            client.request(method, f"{API}/features/{path}", json={}, headers=admin), 405
        )
        assert error["details"]["allowed"] == ["POST"]
    too_many = [("key", f"customer_id:{i}") for i in range(101)]
    _error(client.get(f"{API}/features/visits/values", params=too_many, headers=admin), 422)
    kept = client.put(
        f"{API}/features/visits",
        json={"type": None, "tags": None, "description": "n"},
        headers=admin,
    )
    assert kept.status_code == 200, kept.text
    assert kept.json()["type"] == "numerical" and kept.json()["description"] == "n"
