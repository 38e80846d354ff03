"""The registry from the command line: ids by unique prefix, errors for unknown metrics,
the readable `models show`, the creator of a version; on SQLite and PostgreSQL where the
database matters."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlrig.db.models import RegisteredModel
from mlrig.errors import ValidationError
from mlrig.registry import VersionQuery
from mlrig.registry.search import MetricFilter
from mlrig.security import Principal
from mlrig.testing.cli_modes import MODES, CliMode, cli_in_mode

DEV = Principal(name="dev", role="developer")


def _register(platform: Any, name: str = "iris", **kw: Any) -> dict[str, Any]:
    return platform.registry.create_version(
        name, files={"model.bin": b"w"}, actor=DEV, create_model=True, **kw
    )


@pytest.fixture(params=MODES)
def cli(request: Any, tmp_path: Path) -> Iterator[CliMode]:
    """``mlrig GROUP ARGS`` in this process, embedded and against a uvicorn server of the
    same installation (:mod:`mlrig.testing.cli_modes`), as an admin unless ``token=``
    says otherwise; ``cli.platform`` is that installation, for setting things up."""
    with cli_in_mode(request.param, tmp_path / "cli-home") as runner:
        yield runner


# --- ids by prefix ----------------------------------------------------------------------


def test_models_and_versions_by_id_prefix(db_platform: Any) -> None:
    registry = db_platform.registry
    version = _register(db_platform)
    model_id = version["model_id"]
    assert registry.get_model(model_id[:8])["name"] == "iris"
    assert registry.get_model(model_id[:13].upper())["name"] == "iris"  # dashes, any case
    assert registry.get_version("iris", version["id"][:6])["version"] == "1"
    assert registry.get_version(model_id[:6], version["id"][:6])["id"] == version["id"]
    with pytest.raises(Exception, match="no model"):
        registry.get_model(model_id[:3])  # too short to be a prefix


def test_an_ambiguous_prefix_lists_the_candidates(db_platform: Any) -> None:
    ids = [uuid.UUID("abcd1234" + "0" * 24), uuid.UUID("abcd5678" + "0" * 24)]
    with db_platform.db.session() as session:
        for i, key in enumerate(ids):
            session.add(RegisteredModel(id=key, name=f"twin{i}", tags={}))
    with pytest.raises(ValidationError, match="ambiguous") as caught:
        db_platform.registry.get_model("abcd")
    assert caught.value.details == {"candidates": [str(i) for i in ids]}
    assert db_platform.registry.get_model("abcd5")["name"] == "twin1"
    # a name wins over a prefix
    db_platform.registry.create_model(name="abcd", actor=DEV)
    assert db_platform.registry.get_model("abcd")["name"] == "abcd"


def test_experiments_by_id_prefix(platform: Any, trainer: str) -> None:
    made = platform.experiments.create(name="prefixed", trainer=trainer, actor=DEV)
    assert platform.experiments.get(made["id"][:8])["name"] == "prefixed"
    assert str(platform.experiments.resolve(made["id"][:5])) == made["id"]


def test_cli_takes_id_prefixes(cli: Any, trainer: str) -> None:
    version = _register(cli.platform)
    shown = cli("models", "show", version["model_id"][:8], "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["name"] == "iris"
    one = cli("models", "show", "iris", version["id"][:8], "--json")
    assert json.loads(one.output)["id"] == version["id"]
    listed = cli("models", "versions", version["model_id"][:8], "--json")
    assert [v["version"] for v in json.loads(listed.output)["items"]] == ["1"]
    experiment = cli.platform.experiments.create(name="e1", trainer=trainer, actor=DEV)
    got = cli("experiments", "show", experiment["id"][:8], "--json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.output)["id"] == experiment["id"]


# --- unknown metrics --------------------------------------------------------------------


def test_an_unknown_metric_is_an_error_listing_the_known(db_platform: Any) -> None:
    registry = db_platform.registry
    model_id = _register(db_platform, metrics={"accuracy": 0.9, "f1": 0.8})["model_id"]
    _register(db_platform, "other", metrics={"rmse": 1.0})
    query = VersionQuery(model_id=uuid.UUID(model_id), metrics=(MetricFilter.parse("nope>1"),))
    with pytest.raises(
        ValidationError, match="no version of this model has the metric 'nope'"
    ) as e:
        registry.search_versions(query)
    assert e.value.details == {"unknown": ["nope"], "metrics": ["accuracy", "f1"]}
    with pytest.raises(ValidationError, match="the metrics that exist: accuracy, f1"):
        registry.search_versions(VersionQuery(model_id=uuid.UUID(model_id), sort="-metrics.nope"))
    # a metric of another model is unknown here, known across models
    with pytest.raises(ValidationError, match="'rmse'"):
        registry.search_versions(VersionQuery(model_id=uuid.UUID(model_id), sort="metrics.rmse"))
    across = registry.search_versions(VersionQuery(sort="metrics.rmse"))["items"]
    assert [v["name"] for v in across] == ["other"]
    # a known metric that matches nothing is an empty page, not an error
    none = VersionQuery(model_id=uuid.UUID(model_id), metrics=(MetricFilter.parse("f1>0.99"),))
    assert registry.search_versions(none)["items"] == []


def test_cli_and_rest_refuse_an_unknown_metric(
    cli: Any, api_client: Any, platform: Any, admin_headers: dict[str, str]
) -> None:
    _register(cli.platform, metrics={"accuracy": 0.9})
    for args in (("--metric", "nope>1"), ("--sort", "metrics.nope")):
        result = cli("models", "versions", "iris", *args)
        assert result.exit_code != 0
        assert "the metrics that exist: accuracy" in result.output
        assert "Traceback" not in result.output
    _register(platform, metrics={"accuracy": 0.9})
    answer = api_client.get(
        "/api/ml/models/iris/versions", params={"metric": "nope>1"}, headers=admin_headers
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["details"]["metrics"] == ["accuracy"]
    across = api_client.get(
        "/api/ml/model-versions", params={"sort": "-metrics.nope"}, headers=admin_headers
    )
    assert across.status_code == 422, across.text


# --- models show ------------------------------------------------------------------------


def test_models_show_is_readable(cli: Any) -> None:
    platform = cli.platform
    _register(
        platform,
        metrics={"accuracy": 0.93},
        params={"C": 1.0},
        tags={"team": "[bold]vision[/bold]"},
        datasets=[{"uri": "data/train.csv", "hash": "abc"}],
        code_version="deadbeef",
    )
    _register(platform, parent_version="1")
    platform.lifecycle.set_alias("iris", "champion", "1", actor=DEV)

    model = cli("models", "show", "iris")
    assert model.exit_code == 0, model.output
    assert "model iris" in model.output and "champion -> 1" in model.output
    assert "{'" not in model.output and "[{" not in model.output  # no Python reprs

    version = cli("models", "show", "iris", "1")
    out = version.output
    assert version.exit_code == 0, out
    for expected in ("iris version 1", "accuracy", "0.93", "deadbeef", "data/train.csv"):
        assert expected in out
    assert "team=[bold]vision[/bold]" in out  # data, not markup
    assert "iris 2" in out  # derived
    assert "model.bin" in out and "champion" in out
    assert "{'" not in out and "'version':" not in out

    as_json = json.loads(cli("models", "show", "iris", "1", "--json").output)
    assert as_json["metrics"] == {"accuracy": 0.93} and as_json["aliases"] == ["champion"]


# --- the creator of a version -----------------------------------------------------------


def test_a_version_records_the_creator_it_is_given(db_platform: Any) -> None:
    db_platform.security.create_user(name="alice", role="developer")
    worker = Principal(name="experiment:e1", role="developer")
    version = _register(db_platform, created_by="alice")
    assert version["created_by"] == "alice"
    _register(db_platform)
    by_alice = db_platform.registry.search_versions(VersionQuery(created_by="alice"))
    assert [v["version"] for v in by_alice["items"]] == ["1"]
    with pytest.raises(ValidationError, match="no user 'bob'"):
        db_platform.registry.create_version(
            "iris", files={"m": b"x"}, actor=worker, created_by="bob"
        )


# --- first use --------------------------------------------------------------------------


def test_quickstart_ends_with_how_to_get_a_token(tmp_path: Path, run_cli: Any) -> None:
    """The tour registers into one model from concurrent runs, then says how to reach the
    server; the command it prints works and makes a token of the documented shape."""
    tour = run_cli("quickstart", cwd=tmp_path, timeout=300)
    assert tour.exit_code == 0, tour.stderr
    hint = tour.stdout[tour.stdout.index("a token for the server") :]
    assert "mlrig tokens create --user alice" in hint
    made = run_cli("tokens", "create", "--user", "alice", "--json", cwd=tmp_path)
    assert made.exit_code == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    assert token.startswith("mlr_")
    client_doc = (Path(__file__).parents[1] / "docs" / "client.md").read_text()
    assert 'token="mlr_' in client_doc and "mlrig_..." not in client_doc
    # ... and ends with a live deployment that answered over HTTP, plus the curl to try
    served = tour.stdout[tour.stdout.index("serving: deploy the champion") :]
    answered = re.search(
        r"/predict -> \[(\d), (\d), (\d)\] \(version \d+, .*status active\)", served
    )
    assert answered is not None, served
    assert len(set(answered.groups())) >= 2  # one flower of each kind, not one class for all
    curl = tour.stdout[tour.stdout.index("predict through the server") :]
    assert "curl -H 'Authorization: Bearer mlr_" in curl
    assert "/api/ml/deployments/iris-quickstart/predict" in curl
    # the small sweep ran its 6 trials and points at `mlrig sweeps show`
    swept = re.search(r"6 trials completed; best: trial \d+, val_accuracy (\S+) ", tour.stdout)
    assert swept is not None and float(swept.group(1)) > 0.8, tour.stdout
    sweep = re.search(r"mlrig sweeps show (quickstart-\S+-sweep)", tour.stdout).group(1)
    shown = run_cli("sweeps", "show", sweep, "--json", cwd=tmp_path)
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["sweep"]["trials"]["completed"] == 6


def test_approval_requests_by_id_prefix(cli: Any) -> None:
    platform = cli.platform
    security = platform.security
    security.create_user(name="asker", role="developer")
    security.create_user(name="boss", role="deployer")
    asker = security.authenticate(security.create_token(user="asker")["token"])
    boss_token = security.create_token(user="boss")["token"]
    _register(platform)
    request = platform.lifecycle.transition("iris", "1", "production", actor=asker)["request"]
    approved = cli("models", "approve", request["id"][:8], token=boss_token)
    assert approved.exit_code == 0, approved.output
    assert platform.registry.get_version("iris", "1")["stage"] == "production"
