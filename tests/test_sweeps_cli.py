"""``mlrig sweeps``: create (space files, grid count, dry run, --wait), list, show, stop;
embedded and against a server (``cli_mode``); errors in one line."""

from __future__ import annotations

import json
import threading

import click
import pytest

from mlrig import datasets
from mlrig.cli.sweeps import parse_duration, sparkline

pytest_plugins = ["mlrig.testing.cli_modes"]

SPACE = {"C": {"type": "float", "low": 0.01, "high": 10.0, "log": True}}
GRID = {
    "C": {"type": "choice", "options": [0.1, 1.0, 10.0]},
    "max_iter": {"type": "int", "low": 100, "high": 400, "step": 100},
}


def _space(tmp_path, space=SPACE, name="space.json"):
    path = tmp_path / name
    path.write_text(json.dumps(space))
    return str(path)


def _create_args(name, space_file, *extra):
    return [
        "sweeps",
        "create",
        name,
        "--trainer",
        "sklearn",
        "--space",
        space_file,
        "--objective",
        "val_accuracy",
        "--maximize",
        "--param",
        "estimator=sklearn.linear_model.LogisticRegression",
        "--param",
        "max_iter=300",
        "--data",
        str(datasets.path("iris")),
        "--target",
        "species",
        "--seed",
        "3",
        *extra,
    ]


def _one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 or code == 2, result.output  # click usage errors add a usage line
    return result.output


def test_create_list_show_stop(cli_mode, tmp_path):
    space = _space(tmp_path)
    made = cli_mode(
        *_create_args("s1", space, "--strategy", "random", "--trials", "3", "--parallel", "2"),
        "--option",
        "unique=true",
        "--max-time",
        "1h30m",
        "--json",
    )
    assert made.exit_code == 0, made.output
    view = json.loads(made.output)
    assert view["status"] == "running" and view["strategy"] == "random"
    assert view["direction"] == "maximize" and view["max_seconds"] == 5400
    assert view["trials"]["queued"] == 2 and view["template"]["hyperparameters"]["max_iter"] == 300
    listed = cli_mode("sweeps", "list", "--json")
    assert listed.exit_code == 0 and [s["name"] for s in json.loads(listed.output)] == ["s1"]
    table = cli_mode("sweeps", "list")
    assert table.exit_code == 0 and "s1" in table.output and "0/3" in table.output
    assert json.loads(cli_mode("sweeps", "list", "--status", "completed", "--json").output) == []
    shown = cli_mode("sweeps", "show", "s1", "--json")
    data = json.loads(shown.output)
    assert data["sweep"]["id"] == view["id"]
    assert [t["number"] for t in data["results"]["trials"]] == [0, 1]
    text = cli_mode("sweeps", "show", "s1")
    assert text.exit_code == 0, text.output
    assert "trials (* = best)" in text.output and "queued" in text.output
    assert "importances: none yet" in text.output
    stopped = cli_mode("sweeps", "stop", "s1", "--json")
    assert stopped.exit_code == 0 and json.loads(stopped.output)["status"] == "cancelled"
    again = _one_line_error(cli_mode("sweeps", "stop", "s1"))
    assert "cancelled" in again
    # the sweep is an experiment too
    runs = json.loads(cli_mode("experiments", "list", "--origin", "sweep", "--json").output)
    assert [r["name"] for r in runs] == ["s1"]


def test_a_grid_says_its_count_and_a_dry_run_creates_nothing(cli_mode, tmp_path):
    space = _space(tmp_path, GRID)
    dry = cli_mode(*_create_args("g1", space, "--strategy", "grid", "--trials", "50", "--dry-run"))
    assert dry.exit_code == 0, dry.output
    assert "grid: 12 points" in dry.output
    assert "would run 12 trials" in dry.output and "nothing created" in dry.output
    assert json.loads(cli_mode("sweeps", "list", "--json").output) == []
    dry_json = cli_mode(*_create_args("g1", space, "--strategy", "grid", "--dry-run", "--json"))
    assert dry_json.exit_code == 0
    # the count goes to stderr with --json: stdout stays JSON
    assert json.loads(dry_json.stdout)["grid_points"] == 12
    made = cli_mode(*_create_args("g1", space, "--strategy", "grid", "--trials", "5"))
    assert made.exit_code == 0, made.output
    assert "grid: 12 points (--trials 5: the first 5 run)" in made.output
    assert "created sweep 'g1'" in made.output


def test_space_files_in_toml_and_yaml(cli_mode, tmp_path):
    toml = tmp_path / "space.toml"
    toml.write_text('[C]\ntype = "float"\nlow = 0.01\nhigh = 10.0\nlog = true\n')
    result = cli_mode(*_create_args("t1", str(toml), "--strategy", "random", "--dry-run", "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["space"]["C"]["log"] is True
    pytest.importorskip("yaml")
    yaml = tmp_path / "space.yaml"
    yaml.write_text("C: {type: choice, options: [0.1, 1.0]}\nmax_iter: 200\n")
    result = cli_mode(*_create_args("y1", str(yaml), "--strategy", "random", "--dry-run", "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["space"]["C"]["options"] == [0.1, 1.0]


@pytest.mark.parametrize(
    ("space", "extra", "expected", "code"),
    [
        ({"C": {"type": "float", "low": 5, "high": 1}}, [], "'C'", 2),  # checked locally
        ({}, [], "empty", 2),
        (SPACE, ["--strategy", "no-such-strategy"], "no-such-strategy", 1),
        (SPACE, ["--max-time", "soon"], "--max-time", 2),
        (SPACE, ["--option", "novalue"], "KEY=VALUE", 2),
        (SPACE, ["--prune-option", "warmup_steps=3"], "--prune", 2),
        (SPACE, ["--trials", "0"], "--trials", 2),
    ],
)
def test_errors_are_one_line(cli_mode, tmp_path, space, extra, expected, code):
    result = cli_mode(*_create_args("bad", _space(tmp_path, space), *extra))
    assert expected in _one_line_error(result, code)
    assert json.loads(cli_mode("sweeps", "list", "--json").output) == []


def test_unreadable_space_files_and_unknown_sweeps(cli_mode, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert "not valid JSON" in _one_line_error(cli_mode(*_create_args("b", str(broken))), 2)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    assert "object mapping" in _one_line_error(cli_mode(*_create_args("b", str(listed))), 2)
    other = tmp_path / "space.ini"
    other.write_text("[C]")
    assert ".json, .toml" in _one_line_error(cli_mode(*_create_args("b", str(other))), 2)
    for command in ("show", "stop"):
        assert "no sweep 'nope'" in _one_line_error(cli_mode("sweeps", command, "nope"))


def _worker(platform):
    """A worker on the installation, in a thread, until the returned event is set."""
    from mlrig.engine.allocator import Capacity
    from mlrig.engine.worker import Worker

    stop = threading.Event()
    worker = Worker(platform, concurrency=2, capacity=Capacity(cpus=(0, 0)), poll_seconds=0.1)
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    return stop, thread


def test_wait_shows_the_sweep_to_its_end(cli_mode, tmp_path):
    # importances need 5 completed trials: the full tour once, a short one against a server
    trials = 5 if cli_mode.mode == "embedded" else 2
    stop, thread = _worker(cli_mode.platform)
    try:
        args = _create_args("w1", _space(tmp_path), "--strategy", "random", "--trials", str(trials))
        result = cli_mode(*args, "--parallel", "2", "--wait")
    finally:
        stop.set()
        thread.join(30)
    assert result.exit_code == 0, result.output
    assert f"completed: {trials} trials, best val_accuracy=" in result.output
    assert "see: mlrig sweeps show w1" in result.output
    shown = cli_mode("sweeps", "show", "w1")
    assert shown.exit_code == 0, shown.output
    assert " *" in shown.output  # the best trial is marked
    assert "best so far: " in shown.output
    if trials >= 5:
        assert "importances: permutation importance" in shown.output
    else:
        assert "importances: none yet (2 completed trial(s)" in shown.output


def test_wait_on_a_sweep_that_fails_exits_1_saying_why(cli_mode, tmp_path):
    if cli_mode.mode == "remote":
        pytest.skip("the same exit path as embedded; one trial run is enough")
    stop, thread = _worker(cli_mode.platform)
    try:
        args = _create_args("typo", _space(tmp_path), "--strategy", "random", "--trials", "1")
        args[args.index("val_accuracy")] = "val_acuracy"  # no trial reports it
        result = cli_mode(*args, "--wait")
    finally:
        stop.set()
        thread.join(30)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    verdict = result.output.strip().splitlines()[-1]
    assert verdict.startswith("failed: ") and "val_acuracy" in verdict, result.output
    assert "val_accuracy" in verdict  # what the trials did report


def test_wait_without_a_worker_says_so(cli_mode, tmp_path, monkeypatch):
    if cli_mode.mode == "remote":
        pytest.skip("against a server the CLI trusts the server's worker")
    monkeypatch.setattr("mlrig.cli.sweeps.NO_WORKER_SECONDS", 0.5)
    args = _create_args("lonely", _space(tmp_path), "--strategy", "random", "--trials", "2")
    result = cli_mode(*args, "--wait")
    assert result.exit_code == 3, result.output
    assert "no worker is running" in result.output and "mlrig worker" in result.output
    assert "Traceback" not in result.output


def test_parse_duration():
    assert parse_duration("3600") == 3600
    assert parse_duration("90s") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2d") == 172800
    for bad in ("", "soon", "10x", "m30", "0", "0.2s"):
        with pytest.raises(click.BadParameter):
            parse_duration(bad)


def test_sparkline():
    assert sparkline([]) == ""
    assert sparkline([1.0, 1.0]) == "▁▁"
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert len(sparkline([float(i) for i in range(100)])) == 60
