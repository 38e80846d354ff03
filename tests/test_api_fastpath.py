"""The raw ASGI handler of ``POST /api/ml/features/batch`` answers exactly as its FastAPI
route: every body below gets the same status and the same JSON with fast routes on and
off; online reads use the token cache and write no audit entry (refusals still do)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from mlrig.api import create_app
from mlrig.db.models import AuditLog
from mlrig.testing.fixtures import make_platform

pytest.importorskip("duckdb")

API = "/api/ml"
BATCH = f"{API}/features/batch"
STAMP = "2026-01-01T00:00:00+00:00"


@pytest.fixture
def env(tmp_path: Path, db_url: str, database):
    platform = make_platform(
        tmp_path / "home", database={"url": db_url}, api={"max_body_bytes": 4096}
    )
    headers = {}
    for role in ("viewer", "admin"):
        platform.security.create_user(name=f"u-{role}", role=role)
        token = platform.security.create_token(user=f"u-{role}")["token"]
        headers[role] = {"Authorization": f"Bearer {token}"}
    app = create_app(platform)
    with TestClient(app, raise_server_exceptions=False) as client:
        admin = headers["admin"]
        entity = {"name": "customer", "join_keys": ["customer_id"]}
        assert client.post(f"{API}/entities", json=entity, headers=admin).status_code == 201
        view = {
            "name": "profile",
            "entities": ["customer"],
            "source": {"kind": "push"},
            "features": [
                {"name": "visits", "type": "numerical"},
                {"name": "email", "type": "text", "tags": ["pii"]},
            ],
        }
        assert client.post(f"{API}/feature-views", json=view, headers=admin).status_code == 201
        rows = [{"customer_id": 1, "event_timestamp": STAMP, "visits": 4, "email": "a@x.org"}]
        pushed = client.post(
            f"{API}/feature-views/profile/push", json={"rows": rows}, headers=admin
        )
        assert pushed.status_code == 200, pushed.text
        yield client, app, headers, platform
    platform.close()


def _valid(**extra):
    return {"features": ["visits", "email"], "entities": [{"customer_id": 1}], **extra}


CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("valid", json.dumps(_valid()).encode(), {}),
    ("unknown key", json.dumps({**_valid(), "entities": [{"customer_id": 9}]}).encode(), {}),
    ("unknown feature", json.dumps({**_valid(), "features": ["nope"]}).encode(), {}),
    ("wrong join key", json.dumps({**_valid(), "entities": [{"driver_id": 1}]}).encode(), {}),
    ("extra field", json.dumps(_valid(color="red")).encode(), {}),
    ("NUL in a key", json.dumps({**_valid(), "entities": [{"customer_id": "a\0b"}]}).encode(), {}),
    ("lone surrogate", b'{"features": ["visits"], "entities": [{"customer_id": "\\ud800"}]}', {}),
    (
        "huge integer",
        b'{"features": ["visits"], "entities": [{"customer_id": 1' + b"0" * 40 + b"}]}",
        {},
    ),
    ("float key", b'{"features": ["visits"], "entities": [{"customer_id": 1.5}]}', {}),
    ("no entities", json.dumps({"features": ["visits"], "entities": []}).encode(), {}),
    ("not an object", b"[1, 2]", {}),
    ("malformed JSON", b'{"features": [', {}),
    ("invalid UTF-8", b'{"features": ["\xff"]}', {}),
    ("empty body", b"", {}),
    ("text/plain", json.dumps(_valid()).encode(), {"Content-Type": "text/plain"}),
    ("+json type", json.dumps(_valid()).encode(), {"Content-Type": "application/vnd.x+json"}),
    ("too large", json.dumps({**_valid(), "features": ["visits"] * 1000}).encode(), {}),
    ("no content type", json.dumps(_valid()).encode(), {"Content-Type": ""}),
    ("query NUL", json.dumps(_valid()).encode(), {"x-query": "a=%00"}),
]


def _call(client, body: bytes, headers: dict[str, str], auth: dict[str, str]):
    head = {"Content-Type": "application/json", **auth, **headers}
    query = head.pop("x-query", None)
    if not head["Content-Type"]:
        del head["Content-Type"]
    url = BATCH + (f"?{query}" if query else "")
    return client.post(url, content=body, headers=head)


@pytest.mark.parametrize("role", ["viewer", "admin"])
def test_fast_path_answers_as_the_route(env, role):
    client, app, headers, _ = env
    answers = {}
    for fast in (True, False):
        app.state.mlrig_fast_routes = fast
        answers[fast] = [
            (name, r.status_code, r.json())
            for name, body, extra in CASES
            if (r := _call(client, body, extra, headers[role]))
        ]
    app.state.mlrig_fast_routes = True
    for (name, status, body), (_, route_status, route_body) in zip(
        answers[True], answers[False], strict=True
    ):
        assert (status, body) == (route_status, route_body), name
    statuses = {name: status for name, status, _ in answers[True]}
    assert statuses["valid"] == statuses["unknown key"] == statuses["+json type"] == 200
    assert statuses["unknown feature"] == 404 and statuses["too large"] == 413
    assert all(
        400 <= s < 500
        for n, s in statuses.items()
        if n not in {"valid", "unknown key", "+json type"}
    )
    valid = answers[True][0][2]
    assert valid["results"][0]["visits"] == 4
    # the PII feature: masked for a viewer, clear for an admin (the service's rule)
    assert (valid["results"][0]["email"] == "a@x.org") is (role == "admin")


def test_online_reads_write_no_audit_entry_but_refusals_do(env):
    client, _, headers, platform = env

    def entries() -> int:
        with platform.db.session() as session:
            return session.scalar(
                select(func.count())
                .select_from(AuditLog)
                .where(AuditLog.resource_type == "features")
            )

    before = entries()
    for _ in range(3):
        assert client.post(BATCH, json=_valid(), headers=headers["viewer"]).status_code == 200
    assert (
        client.get(
            f"{API}/features/visits/values",
            params={"key": "customer_id:1"},
            headers=headers["viewer"],
        ).status_code
        == 200
    )
    assert entries() == before
    refused = client.post(BATCH, json=_valid(), headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert entries() == before + 1


def test_a_revoked_token_is_refused_once_the_cache_ttl_passes(env):
    client, _, _, platform = env
    from mlrig.serving.auth import TokenCache

    now = [0.0]
    platform._mlrig_token_cache = TokenCache(platform.security, 5, clock=lambda: now[0])
    platform.security.create_user(name="u-temp", role="viewer")
    made = platform.security.create_token(user="u-temp")
    auth = {"Authorization": f"Bearer {made['token']}"}
    assert client.post(BATCH, json=_valid(), headers=auth).status_code == 200
    platform.security.revoke_token(made["id"])
    assert client.post(BATCH, json=_valid(), headers=auth).status_code == 200  # within the TTL
    now[0] += 6
    refused = client.post(BATCH, json=_valid(), headers=auth)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
