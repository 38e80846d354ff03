"""`mlrig import mlflow`: a store the real mlflow made (in its own virtual environment)
round-trips: the counts of runs, params, metric points, artifacts and model versions that
mlflow's own client reports equal what mlrig holds after the import; a second import
creates nothing. File store, SQLite store and a tracking server (REST)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from mlrig.importers import open_mlflow
from mlrig.importers.mlflow_import import MlflowImporter
from mlrig.security import Principal
from mlrig.testing.fixtures import free_port, make_platform
from mlrig.testing.mlflow_venv import mlflow_python_or_skip, run_mlflow_script

ADMIN = Principal(name="importer", role="admin")

#: makes a file store and a SQLite store with the same content, then prints what
#: mlflow's client reports about each (the counts the import must reproduce)
MAKE_STORES = r"""
import json, os, sys
import numpy as np
import mlflow
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

X = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.9, 0.1]])
y = np.array([0, 1, 0, 1])
root = os.getcwd()

def fill(uri, artifacts):
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    for name in ("churn", "other"):
        client.create_experiment(name, artifact_location=f"file://{artifacts}/{name}")
    mlflow.set_experiment("churn")
    predictions = {}
    for i in range(2):
        with mlflow.start_run(run_name=f"lr {i}"):
            mlflow.log_params({"C": str(1.0 + i), "solver": "lbfgs"})
            for step in range(5):
                mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
                mlflow.log_metric("acc", 0.5 + step / 10, step=step)
            mlflow.log_metric("diverged", float("nan"), step=0)
            mlflow.set_tag("team", "growth")
            if i == 0:
                train = mlflow.data.from_numpy(X, targets=y, source="data/train.csv", name="train")
                mlflow.log_input(train, context="training")
            os.makedirs("out", exist_ok=True)
            with open("out/notes.txt", "w") as f:
                f.write(f"run {i}\n")
            mlflow.log_artifact("out/notes.txt")
            mlflow.log_artifact("out/notes.txt", artifact_path="plots/sub")
            model = LogisticRegression(C=1.0 + i).fit(X, y)
            predictions[str(i + 1)] = model.predict_proba(X).tolist()
            # version 1 pickled (mlrig converts it), version 2 in MLflow 3's default skops
            form = {"serialization_format": "cloudpickle"} if i == 0 else {}
            mlflow.sklearn.log_model(
                model, name="model", registered_model_name="churn-model", input_example=X[:2],
                pip_requirements=["scikit-learn"], **form,  # no requirement inference: slow
            )
    mlflow.set_experiment("other")
    with mlflow.start_run(run_name="failed-one"):
        mlflow.log_param("x", "1")
        mlflow.end_run(status="FAILED")
    with mlflow.start_run(run_name="sweep"):
        with mlflow.start_run(run_name="trial-1", nested=True):
            mlflow.log_metric("score", 0.5)
    client.set_registered_model_alias("churn-model", "champion", "2")
    client.transition_model_version_stage("churn-model", "1", "Staging")
    client.set_registered_model_tag("churn-model", "owner", "growth")
    return client, predictions

def artifact_count(client, run_id, path=None):
    total = 0
    for item in client.list_artifacts(run_id, path):
        total += artifact_count(client, run_id, item.path) if item.is_dir else 1
    return total

def report(client):
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=1000
    )
    versions = client.search_model_versions("name='churn-model'")
    return {
        "runs": len(runs),
        "params": sum(len(r.data.params) for r in runs),
        "points": sum(
            len(client.get_metric_history(r.info.run_id, key))
            for r in runs for key in r.data.metrics
        ),
        "artifacts": sum(artifact_count(client, r.info.run_id) for r in runs),
        "datasets": sum(len(r.inputs.dataset_inputs) for r in runs),
        "statuses": sorted(r.info.status for r in runs),
        "versions": len(versions),
        "champion": client.get_model_version_by_alias("churn-model", "champion").version,
    }

out = {}
for kind, uri in (
    ("files", f"file://{root}/mlruns"),
    ("sqlite", f"sqlite:///{root}/sql/mlflow.db"),
):
    os.makedirs(f"{root}/sql", exist_ok=True)
    client, predictions = fill(uri, f"{root}/{kind}-artifacts")
    out[kind] = {**report(client), "predictions": predictions}
print("REPORT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The two stores and mlflow's report of each."""
    python = mlflow_python_or_skip()
    folder = tmp_path_factory.mktemp("mlflow-stores")
    done = run_mlflow_script(
        MAKE_STORES, python=python, cwd=folder, env={"MLFLOW_ALLOW_FILE_STORE": "true"}
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("REPORT "))
    report = json.loads(line.removeprefix("REPORT "))
    report["files"]["uri"] = str(folder / "mlruns")
    report["sqlite"]["uri"] = f"sqlite:///{folder / 'sql' / 'mlflow.db'}"
    report["folder"] = folder
    report["python"] = python
    return report


def _counts(platform: Any) -> dict[str, Any]:
    """What mlrig holds, in the terms of mlflow's report."""
    service = platform.experiments
    runs = service.list(origin="import", limit=1000)
    model = platform.registry.get_model("churn-model")
    views = [service.get(r["id"]) for r in runs]
    return {
        "runs": len(runs),
        "params": sum(len(view["hyperparameters"]) for view in views),
        "datasets": sum(len(view["reproducibility"].get("datasets") or []) for view in views),
        "points": sum(service.metrics(r["id"])["count"] for r in runs),
        "artifacts": sum(len(service.list_run_artifacts(r["id"])) for r in runs),
        "versions": len(model["versions"]),
        "champion": model["aliases"].get("champion"),
    }


def _expected(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("runs", "params", "datasets", "points", "artifacts", "versions", "champion")
    return {**{k: report[k] for k in keys}, "champion": str(report["champion"])}


def _config(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    config = home / "mlrig.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{home / "mlrig.db"}"\n'
        f'[storage.local]\nroot = "{home / "artifacts"}"\n'
    )
    return config


def _cli(config: Path, *args: str) -> Any:
    from mlrig.cli.context import CliState
    from mlrig.cli.importer import import_group
    from mlrig.cli.main import cli as group

    if "import" not in group.commands:
        group.add_command(import_group, name="import")
    state = CliState()
    try:
        return CliRunner().invoke(group, ["--config", str(config), *args], obj=state)
    finally:
        if state._platform is not None:
            state._platform.close()


def test_file_store_round_trips_through_the_cli_and_a_second_import_adds_nothing(
    stores: dict[str, Any], tmp_path: Path
) -> None:
    report = stores["files"]
    config = _config(tmp_path / "home")
    first = _cli(config, "import", "mlflow", report["uri"], "--json")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["runs_imported"] == report["runs"] == 5
    assert summary["metric_points"] == report["points"]
    assert summary["datasets"] == report["datasets"] == 1
    platform = make_platform(
        tmp_path / "home",
        database={"url": f"sqlite:///{tmp_path / 'home' / 'mlrig.db'}"},
    )
    try:
        assert _counts(platform) == _expected(report)
        runs = {r["name"]: r for r in platform.experiments.list(origin="import", limit=100)}
        assert sorted(runs) == ["failed-one", "lr-0", "lr-1", "sweep", "trial-1"]
        assert runs["trial-1"]["parent_id"] == runs["sweep"]["id"]
        assert runs["failed-one"]["status"] == "failed"
        assert runs["lr-0"]["status"] == "completed" and runs["lr-0"]["group"] == "churn"
        lr0 = platform.experiments.get(runs["lr-0"]["id"])
        assert lr0["hyperparameters"] == {"C": "1.0", "solver": "lbfgs"}
        assert lr0["tags"]["team"] == "growth" and len(lr0["tags"]["mlflow.run_id"]) == 32
        history = platform.experiments.metrics(runs["lr-0"]["id"])["metrics"]
        assert sorted(set(history["loss"]["steps"])) == [0, 1, 2, 3, 4]
        assert all(math.isnan(x) for x in history["diverged"]["values"])
        [dataset] = lr0["reproducibility"]["datasets"]
        assert dataset["name"] == "train" and dataset["context"] == "training"
        assert dataset["source"].endswith("train.csv") and dataset["rows"] == 4
        files = [a["path"] for a in platform.experiments.list_run_artifacts(runs["lr-0"]["id"])]
        assert files == ["notes.txt", "plots/sub/notes.txt"]
        one = platform.registry.get_version("churn-model", "1")
        assert one["stage"] == "staging"
        assert one["lineage"]["experiment"]["id"] == runs["lr-0"]["id"]
        assert one["tags"]["mlflow.version"] == "1"
        # the pickled version is an mlrig package now: it loads and predicts as in MLflow
        from mlrig.formats import load_native

        folder = tmp_path / "v1"
        platform.registry.download_version("churn-model", "1", folder)
        model = load_native(folder)
        import numpy as np

        X = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.9, 0.1]])
        assert np.allclose(model.predict_proba(X), report["predictions"]["1"])
        assert one["framework"] == "sklearn"
        assert "mlflow/MLmodel" in {a["path"] for a in one["artifacts"]}
    finally:
        platform.close()

    again = _cli(config, "import", "mlflow", report["uri"], "--json")
    assert again.exit_code == 0, again.output
    second = json.loads(again.stdout)
    assert second["runs_imported"] == 0 and second["runs_skipped"] == 5
    assert second["metric_points"] == 0 and second["artifacts"] == 0
    assert second["versions_imported"] == 0 and second["versions_skipped"] == 2
    assert second["groups_created"] == 0 and second["models_created"] == 0
    assert second["aliases"] == 0


def test_sqlite_store_round_trips(stores: dict[str, Any], db_platform: Any) -> None:
    """Into SQLite and PostgreSQL (NaN points, the stage written as it was)."""
    report = stores["sqlite"]
    platform = db_platform
    with_source = open_mlflow(report["uri"])
    try:
        summary = MlflowImporter(platform, with_source, actor=ADMIN).run()
    finally:
        with_source.close()
    assert summary.counts["runs_imported"] == 5
    assert _counts(platform) == _expected(report)
    statuses = sorted(r["status"] for r in platform.experiments.list(origin="import"))
    assert statuses == ["completed"] * 4 + ["failed"]
    assert report["statuses"] == ["FAILED"] + ["FINISHED"] * 4
    [lr0] = platform.experiments.list(origin="import", name_prefix="lr-0")
    values = platform.experiments.metrics(lr0["id"], name="diverged")["metrics"]
    assert all(math.isnan(x) for x in values["diverged"]["values"])
    assert platform.registry.get_version("churn-model", "1")["stage"] == "staging"


def test_a_cut_off_import_is_finished_without_duplicate_points(
    stores: dict[str, Any], tmp_path: Path
) -> None:
    """A run left ``running`` by an import that died is imported again, not doubled."""
    report = stores["sqlite"]
    platform = make_platform(tmp_path / "home")
    source = open_mlflow(report["uri"])
    try:

        class Dies(MlflowImporter):
            def _artifacts(self, key: str, run: Any) -> None:
                raise KeyboardInterrupt  # the operator's Ctrl-C after the points went in

        with pytest.raises(KeyboardInterrupt):
            Dies(platform, source, actor=ADMIN, models=False).run()
        [cut] = platform.experiments.list(origin="import")
        assert cut["status"] == "running"
        summary = MlflowImporter(platform, source, actor=ADMIN).run()
        assert summary.counts["runs_resumed"] == 1
        assert _counts(platform) == _expected(report)
    finally:
        source.close()
        platform.close()


def test_tracking_server_round_trips_over_rest(stores: dict[str, Any], tmp_path: Path) -> None:
    """The SQLite store behind a real `mlflow server`, imported through its REST API."""
    report = stores["sqlite"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLRIG_"))}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{Path(stores['python']).parent}{os.pathsep}{env.get('PATH', '')}"
    server = subprocess.Popen(
        [
            str(stores["python"]),
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            report["uri"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=stores["folder"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                err = server.stderr.read().decode() if server.stderr else ""
                pytest.fail(f"mlflow server did not start: {err[-2000:]}")
            time.sleep(0.3)
        platform = make_platform(tmp_path / "home")
        try:
            source = open_mlflow(url)
            try:
                summary = MlflowImporter(platform, source, actor=ADMIN).run()
            finally:
                source.close()
            assert summary.counts["versions_unreachable"] == 0, summary.warnings
            assert _counts(platform) == _expected(report)
        finally:
            platform.close()
        # the server's artifact proxy (mlflow-artifacts:/ URIs), as the import reads it
        proxied = Path(stores["folder"]) / "mlartifacts" / "7" / "run" / "artifacts"
        (proxied / "sub").mkdir(parents=True)
        (proxied / "sub" / "a.txt").write_bytes(b"alpha")
        (proxied / "b.bin").write_bytes(b"\x00" * 10)
        from mlrig.importers.mlflow_artifacts import ProxyTree

        with httpx.Client(base_url=url, timeout=30) as http:
            tree = ProxyTree(http, "7/run/artifacts")
            files = sorted((f.path, f.size) for f in tree.files())
            assert files == [("b.bin", 10), ("sub/a.txt", 5)]
            with tree.open("sub/a.txt") as stream:
                assert stream.read() == b"alpha"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def test_import_into_a_server_with_url_and_a_developer_token(
    stores: dict[str, Any],
    platform: Any,
    live_server: str,
    make_token: Any,
    tmp_path: Path,
) -> None:
    """`mlrig --url ... --token ... import mlflow`: the same records through mlrig's REST API
    (no database credentials here), idempotent too."""
    report = stores["sqlite"]
    token = make_token("dev", "developer")["Authorization"].removeprefix("Bearer ")
    config = _config(tmp_path / "elsewhere")  # not the server's database
    args = ["--url", live_server, "--token", token, "import", "mlflow", report["uri"], "--json"]
    first = _cli(config, *args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["runs_imported"] == 5 and summary["versions_imported"] == 2
    assert _counts(platform) == _expected(report)
    assert platform.registry.get_version("churn-model", "1")["stage"] == "staging"
    again = json.loads(_cli(config, *args).stdout)
    assert again["runs_imported"] == 0 and again["versions_imported"] == 0
    assert _counts(platform) == _expected(report)


def test_experiment_filter_and_leaving_parts_out(stores: dict[str, Any], tmp_path: Path) -> None:
    config = _config(tmp_path / "home")
    args = ["import", "mlflow", stores["files"]["uri"], "--json", "--experiment", "other"]
    done = _cli(config, *args, "--no-artifacts", "--no-models")
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["experiments"] == 1 and summary["runs_imported"] == 3  # failed-one, sweep, trial
    assert summary["artifacts"] == 0 and summary["versions"] == 0
    kept = _cli(config, "import", "mlflow", stores["files"]["uri"], "--json", "--no-convert")
    assert kept.exit_code == 0, kept.output
    second = json.loads(kept.stdout)
    assert second["runs_imported"] == 2 and second["runs_skipped"] == 3
    assert second["versions_imported"] == second["versions_not_converted"] == 2
    unknown = _cli(config, *args[:-1], "nope")
    assert unknown.exit_code == 1 and "no MLflow experiment named 'nope'" in unknown.output


def test_bad_uris_are_one_line_errors(tmp_path: Path) -> None:
    config = _config(tmp_path / "home")
    missing = _cli(config, "import", "mlflow", str(tmp_path / "nothing"))
    assert missing.exit_code == 1
    assert "no MLflow store at" in missing.output
    (tmp_path / "empty").mkdir()
    empty = _cli(config, "import", "mlflow", str(tmp_path / "empty"))
    assert empty.exit_code == 1 and "not an MLflow file store" in empty.output
    other = _cli(config, "import", "mlflow", "s3://bucket/mlruns")
    assert other.exit_code == 1 and "cannot import from" in other.output
