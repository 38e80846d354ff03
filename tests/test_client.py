"""``mlrig.Client`` against a real server: uvicorn on loopback over an embedded platform."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import mlrig
from mlrig.errors import (
    AuthenticationError,
    ConflictError,
    MlrigError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)


def _token(make_token, name: str, role: str) -> str:
    return make_token(name, role)["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def client(live_server, make_token, trainer):
    with mlrig.Client(live_server, token=_token(make_token, "ada", "developer")) as ml:
        yield ml


def test_experiments_and_metrics_round_trip(client):
    created = client.create_experiment("notebook", trainer="sklearn", priority=3)
    assert created["name"] == "notebook" and created["priority"] == 3
    assert client.get_experiment(created["id"])["name"] == "notebook"
    assert [e["name"] for e in client.list_experiments(name_prefix="note")] == ["notebook"]

    points = [{"name": "loss", "value": 1 / (s + 1), "step": s} for s in range(2_500)]
    points += [("acc", np.float32(0.5), 1, 0, "validation")]  # NumPy scalars are fine
    assert client.log_metrics("notebook", points, batch_size=1_000) == 2_501  # 3 requests
    client.log_metric("notebook", "acc", 0.75, step=2, kind="validation")

    history = client.metrics("notebook", name="loss", fields=["steps", "values"])
    assert history["count"] == 2_500
    assert history["metrics"]["loss"]["steps"] == list(range(2_500))
    assert list(history["metrics"]["loss"]) == ["steps", "values"]
    acc = client.metrics("notebook", kind="validation")["metrics"]["acc"]
    assert acc["values"] == [0.5, 0.75] and acc["kinds"] == ["validation"] * 2
    assert client.get_experiment("notebook")["metrics"]["validation/acc"]["value"] == 0.75


def test_server_errors_come_back_as_mlrig_errors(client, live_server, make_token):
    client.create_experiment("taken", trainer="sklearn")
    with pytest.raises(ConflictError, match="already exists") as conflict:
        client.create_experiment("taken", trainer="sklearn")
    assert conflict.value.details["status"] == 409
    with pytest.raises(NotFoundError, match="no experiment 'nope'"):
        client.get_experiment("nope")
    with pytest.raises(ValidationError, match=r"points\[1\]\.value"):
        client.log_metrics("taken", [{"name": "a", "value": 1}, {"name": "a", "value": "x"}])
    assert client.metrics("taken")["count"] == 0  # the bad batch wrote nothing
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        client.log_metrics("taken", [{"name": "a", "value": object()}])
    with pytest.raises(ValidationError, match="are not history columns"):
        client.metrics("taken", fields=["colour"])
    with mlrig.Client(live_server) as anonymous, pytest.raises(AuthenticationError):
        anonymous.list_experiments()
    viewer = _token(make_token, "vic", "viewer")
    with mlrig.Client(live_server, token=viewer) as read_only:
        assert read_only.get_experiment("taken")["name"] == "taken"
        with pytest.raises(PermissionDeniedError):
            read_only.create_experiment("nope", trainer="sklearn")


def test_models_register_list_and_download(client, tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    client.create_model("remote", description="registered over REST")
    first = client.register_version(
        "remote",
        {"model.bin": weights, "README.md": b"# remote"},
        framework="sklearn",
        metrics={"accuracy": 0.91},
    )
    client.register_version("remote", {"model.bin": b"small"}, metrics={"accuracy": 0.5})
    assert client.get_model("remote")["name"] == "remote"
    good = list(client.list_versions("remote", metric="accuracy>0.9"))
    assert [v["id"] for v in good] == [first["id"]]
    assert len(list(client.list_versions("remote", limit=1))) == 2  # follows the cursor
    assert client.get_version("remote", first["version"])["framework"] == "sklearn"

    target = client.download_artifact(
        "remote", first["version"], "model.bin", tmp_path / "d" / "m.bin"
    )
    assert target.read_bytes() == weights.read_bytes()
    with pytest.raises(NotFoundError):
        client.download_artifact("remote", first["version"], "missing.bin", tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists() and not (tmp_path / ".x.bin.partial").exists()


def test_unreachable_server_is_one_clear_error():
    with (
        mlrig.Client("http://127.0.0.1:9", timeout=2) as ml,
        pytest.raises(MlrigError, match=r"cannot reach the mlrig server at http://127\.0\.0\.1:9"),
    ):
        ml.health()


def test_url_and_token_from_the_environment(monkeypatch, live_server, make_token):
    monkeypatch.setenv("MLRIG_URL", live_server + "/")
    monkeypatch.setenv("MLRIG_TOKEN", _token(make_token, "env", "viewer"))
    with mlrig.Client() as ml:
        assert ml.url == live_server
        assert ml.me()["name"] == "env"
        assert ml.health()["status"] in {"ok", "degraded"}


def test_import_mlrig_does_not_import_httpx():
    import subprocess

    code = "import mlrig, sys; mlrig.Client; print('httpx' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_alias_stage_and_a_second_users_approval(client, live_server, make_token):
    client.create_model("gated")
    version = client.register_version("gated", {"model.bin": b"w"})["version"]
    assert client.set_alias("gated", "champion", version)
    assert client.get_version("gated", "champion")["aliases"] == ["champion"]
    asked = client.set_stage("gated", version, "production", comment="ready")
    assert asked["status"] == "pending_approval"
    request_id = asked["request"]["id"]
    with pytest.raises(PermissionDeniedError):
        client.approve(request_id)  # the requester, and only a developer
    pending = client.list_approvals(status="pending")
    assert [r["id"] for r in _items(pending)] == [request_id]
    with mlrig.Client(live_server, token=_token(make_token, "ops", "deployer")) as ops:
        ops.approve(request_id, comment="ship it")
    assert client.get_version("gated", "champion")["stage"] == "production"


def _items(listing):
    return listing["items"] if isinstance(listing, dict) else listing


def test_delete_and_restore_through_the_client(client, live_server, make_token):
    client.create_model("doomed")
    client.register_version("doomed", {"model.bin": b"w"})
    with pytest.raises(PermissionDeniedError, match="'delete' permission"):
        client.delete_model("doomed")  # a developer
    with mlrig.Client(live_server, token=_token(make_token, "ops", "deployer")) as ops:
        client.set_alias("doomed", "champion", "1")
        with pytest.raises(ConflictError, match="has the alias champion"):
            ops.delete_version("doomed", "1")
        with pytest.raises(PermissionDeniedError, match="admin"):
            ops.delete_version("doomed", "1", force=True)
        with mlrig.Client(live_server, token=_token(make_token, "root", "admin")) as admin:
            assert admin.delete_model("doomed", force=True)["forced"] is True
        with pytest.raises(NotFoundError, match="was deleted"):
            client.get_model("doomed")
        assert ops.restore_model("doomed")["restored_versions"] == ["1"]
        ops.delete_version("doomed", "1")
        assert ops.restore_version("doomed", "1")["version"] == "1"


def test_error_codes_map_to_the_public_classes_whatever_else_is_imported():
    """A module's private error class with the same code (the data plane's ``_NoRoute``,
    whose constructor takes a path) must not become what a client raises for a 404."""
    import mlrig.serving.asgi  # noqa: F401 - defines _NoRoute(code "not_found")
    from mlrig import errors
    from mlrig.client import _error_classes

    classes = _error_classes()
    assert classes["not_found"] is errors.NotFoundError
    assert classes["validation_error"] is errors.ValidationError
    assert not any(cls.__name__.startswith("_") for cls in classes.values())


def test_non_finite_latest_values_come_back_as_floats(client):
    import math

    run = client.start_run(name="diverged")
    client.log_metric(run["id"], "loss", float("nan"), step=0)
    client.log_metric(run["id"], "grad", float("inf"), step=0)
    latest = client.get_experiment(run["id"])["metrics"]
    assert math.isnan(latest["loss"]["value"])
    assert latest["grad"]["value"] == math.inf


def test_a_slash_in_a_name_is_refused_not_routed_elsewhere(client):
    from mlrig.errors import ValidationError

    client.create_model("slashed")
    version = client.register_version("slashed", {"model.bin": b"x"})
    # the server decodes %2F before routing: this would be the delete of version 1
    with pytest.raises(ValidationError, match="contains '/'"):
        client.delete_model(f"slashed/versions/{version['version']}", force=True)
    assert client.get_version("slashed", version["version"])["id"] == version["id"]
    run = client.start_run(name="tagged")
    client.set_tags(run["id"], {"team/owner": "ada"})
    client.delete_tag(run["id"], "team/owner")  # tag keys may hold '/': a path route
    assert "team/owner" not in client.get_experiment(run["id"])["tags"]
