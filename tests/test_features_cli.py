"""``mlrig features``: apply (create, unchanged, updated), entities, views, list/show/
history with ``--json``, push from a file, values, training sets to a file, materialise;
embedded and against a server (``cli_mode``); errors in one line."""

from __future__ import annotations

import json

import pytest

pytest_plugins = ["mlrig.testing.cli_modes"]

pd = pytest.importorskip("pandas")
pytest.importorskip("duckdb")

DEFINITIONS = """
entities:
  - name: customer
    join_keys: [customer_id]
views:
  - name: clicks
    entities: [customer]
    source: {kind: push}
    ttl_seconds: 864000000
    features:
      - {name: click_count, type: numerical}
      - {name: click_email, type: text, tags: [pii]}
"""


def _one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 or code == 2, result.output
    return result.output


def _apply(cli_mode, tmp_path, text=DEFINITIONS):
    path = tmp_path / "features.yaml"
    path.write_text(text)
    return cli_mode("features", "apply", str(path))


def _push(cli_mode, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text(
        "customer_id,event_timestamp,click_count,click_email\n"
        "1,2026-01-01T00:00:00Z,3,a@x.org\n"
        "2,2026-01-02T00:00:00Z,5,b@x.org\n"
    )
    return cli_mode("features", "push", "clicks", str(rows))


def test_apply_creates_then_keeps_then_updates(cli_mode, tmp_path):
    result = _apply(cli_mode, tmp_path)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["created entity customer", "created view clicks"]
    again = _apply(cli_mode, tmp_path)
    assert again.output.splitlines() == ["unchanged entity customer", "unchanged view clicks"]
    grown = DEFINITIONS + "      - {name: click_rate, type: numerical, description: per day}\n"
    result = _apply(cli_mode, tmp_path, grown)
    assert result.output.splitlines()[1] == "updated view clicks", result.output
    view = json.loads(cli_mode("features", "views", "show", "clicks", "--json").output)
    assert [f["name"] for f in view["features"]] == ["click_count", "click_email", "click_rate"]
    assert view["version"] == 2


def test_lists_and_shows_in_json(cli_mode, tmp_path):
    assert _apply(cli_mode, tmp_path).exit_code == 0
    entities = json.loads(cli_mode("features", "entities", "list", "--json").output)
    assert [e["name"] for e in entities] == ["customer"]
    shown = json.loads(cli_mode("features", "entities", "show", "customer", "--json").output)
    assert shown["join_keys"] == ["customer_id"]
    views = json.loads(cli_mode("features", "views", "list", "--json").output)
    assert [v["name"] for v in views] == ["clicks"]
    pii = json.loads(cli_mode("features", "list", "--tag", "pii", "--json").output)
    assert [f["name"] for f in pii] == ["click_email"]
    feature = json.loads(cli_mode("features", "show", "clicks:click_count", "--json").output)
    assert feature["type"] == "numerical"
    history = json.loads(cli_mode("features", "history", "click_count", "--json").output)
    assert [v["change"] for v in history["versions"]] == ["created"]
    table = cli_mode("features", "list")
    assert table.exit_code == 0 and "click_count" in table.output


def test_push_values_and_training_set(cli_mode, tmp_path):
    assert _apply(cli_mode, tmp_path).exit_code == 0
    pushed = _push(cli_mode, tmp_path)
    assert pushed.exit_code == 0, pushed.output
    assert pushed.output.strip() == "pushed 2 rows to clicks (2 offline, 2 online)"
    values = cli_mode(
        "features",
        "values",
        "click_count",
        "--key",
        "customer_id:1",
        "--key",
        "customer_id:9",
        "--json",
    )
    assert values.exit_code == 0, values.output
    answer = json.loads(values.output)
    assert answer["results"] == [{"click_count": 3}, {"click_count": None}]
    assert answer["missing"] == [[], ["click_count"]]
    entities = tmp_path / "entities.csv"
    entities.write_text(
        "customer_id,event_timestamp\n1,2026-01-05T00:00:00Z\n2,2026-01-01T12:00:00Z\n"
    )
    out = tmp_path / "train.parquet"
    result = cli_mode(
        "features",
        "training-set",
        "--entities",
        str(entities),
        "--feature",
        "click_count",
        "--output",
        str(out),
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert frame["click_count"].tolist()[0] == 3
    assert pd.isna(frame["click_count"].tolist()[1])  # customer 2's value is from later


def test_materialize_queues_a_job(cli_mode, tmp_path):
    assert _apply(cli_mode, tmp_path).exit_code == 0
    result = cli_mode("features", "materialize", "clicks", "--start", "2026-01-01", "--json")
    assert result.exit_code == 0, result.output
    experiment = json.loads(result.output)
    assert experiment["trainer"] == "features-materialize"
    assert experiment["hyperparameters"]["start"] == "2026-01-01T00:00:00+00:00"


def test_errors_are_one_line(cli_mode, tmp_path):
    assert _apply(cli_mode, tmp_path).exit_code == 0
    clash = cli_mode("features", "entities", "create", "customer", "--join-key", "customer_id")
    assert "exists" in _one_line_error(clash)
    missing = cli_mode("features", "show", "nope")
    assert "no feature named 'nope'" in _one_line_error(missing)
    bad_key = cli_mode("features", "values", "click_count", "--key", "customer_id")
    assert "join_key:value" in _one_line_error(bad_key)
    bad_file = tmp_path / "broken.yaml"
    bad_file.write_text("views: [\n")
    _one_line_error(cli_mode("features", "apply", str(bad_file)), code=2)
    rows = tmp_path / "bad.json"
    rows.write_text(
        json.dumps(
            [
                {
                    "customer_id": 1,
                    "event_timestamp": "2026-01-01T00:00:00Z",
                    "click_count": "x",
                    "click_email": None,
                }
            ]
        )
    )
    bad_push = cli_mode("features", "push", "clicks", str(rows))
    assert "rows[0].click_count" in _one_line_error(bad_push)


def _register_click_model(cli_mode) -> None:
    """A model whose one input column is the ``click_count`` feature."""
    from sklearn.linear_model import LogisticRegression

    from mlrig.registry.packaging import register_model

    sample = pd.DataFrame({"click_count": [3.0, 5.0, 0.0, 9.0]})
    estimator = LogisticRegression().fit(sample, [0, 1, 0, 1])
    register_model(
        cli_mode.platform, estimator, name="clicker", actor=cli_mode.admin, sample=sample
    )


def test_deployments_take_features_and_show_them(cli_mode, tmp_path):
    """`mlrig deployments create --feature`: a feature-backed deployment from the CLI;
    `update --feature` replaces the references, `--no-features` drops them."""
    assert _apply(cli_mode, tmp_path).exit_code == 0
    _register_click_model(cli_mode)
    created = cli_mode(
        "deployments", "create", "clicks-api", "--model", "clicker", "--version", "1",
        "--feature", "click_count", "--fill-value", "0", "--json",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["features"] == {
        "refs": ["clicks:click_count"],
        "entity_keys": ["customer_id"],
        "request_fields": [],
        "fill_value": 0,
    }
    shown = cli_mode("deployments", "show", "clicks-api")
    assert "clicks:click_count; keys customer_id; missing -> 0" in shown.output, shown.output
    updated = cli_mode(
        "deployments", "update", "clicks-api", "--feature", "clicks:click_count", "--json"
    )
    assert json.loads(updated.output)["features"]["fill_value"] is None, updated.output
    plain = cli_mode("deployments", "update", "clicks-api", "--no-features", "--json")
    assert json.loads(plain.output)["features"] is None, plain.output


def test_deployment_feature_options_refuse_bad_input_in_one_line(cli_mode, tmp_path):
    assert _apply(cli_mode, tmp_path).exit_code == 0
    _register_click_model(cli_mode)
    base = ["deployments", "create", "clicks-api", "--model", "clicker", "--version", "1"]
    orphan = cli_mode(*base, "--entity-key", "customer_id")
    assert "give --feature" in _one_line_error(orphan, code=2)
    bad_fill = cli_mode(*base, "--feature", "click_count", "--fill-value", "zero")
    assert "give a JSON value" in _one_line_error(bad_fill, code=2)
    unknown = cli_mode(*base, "--feature", "nope")
    assert "nope" in _one_line_error(unknown)
    both = cli_mode("deployments", "update", "clicks-api", "--feature", "x", "--no-features")
    assert "not both" in _one_line_error(both, code=2)
    listed = json.loads(cli_mode("deployments", "list", "--json").output)
    assert listed == []  # nothing refused was created
