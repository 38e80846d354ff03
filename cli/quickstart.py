"""``mlrig quickstart``: set up ``./.mlrig`` and tour what mlrig does, step by step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlrig.cli.context import get_state

if TYPE_CHECKING:
    from mlrig.platform import Platform
    from mlrig.security import Principal

MODEL = "iris-quickstart"


def _step(title: str) -> None:
    click.secho(f"\n==> {title}", bold=True)


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Project folder to set up.",
)
def quickstart(directory: Path) -> None:
    """Initialise ./.mlrig (config, database, artifacts) and run the tour: train on the
    engine, a small hyperparameter sweep, register, promote with an approval, compare,
    download, serve."""
    from mlrig.cli.init import STARTER
    from mlrig.platform import Platform

    directory.mkdir(parents=True, exist_ok=True)
    state = get_state()
    config = Path(state.config_path) if state.config_path else directory / "mlrig.toml"

    _step("config")
    if config.exists():
        click.echo(f"using {config}")
    else:
        config.write_text(STARTER, encoding="utf-8")
        click.echo(f"wrote {config} (SQLite + local artifacts under {directory / '.mlrig'})")
    platform = Platform.from_config(config, plugin_manager=state.pm)
    state._platform = platform

    _step("database and artifact storage")
    facts = platform.db.check()
    click.echo(f"{facts.get('dialect')} database at schema revision {facts.get('revision')}")
    stored = platform.artifacts.put("quickstart/hello.txt", b"hello from mlrig\n")
    back = platform.artifacts.get_bytes("quickstart/hello.txt", expected_sha256=stored.sha256)
    click.echo(
        f"stored and read back {stored.size} bytes through the "
        f"{platform.settings.storage.backend!r} backend "
        f"({'identical' if back == b'hello from mlrig' + bytes([10]) else 'DIFFERENT'})"
    )

    operator = state.principal()
    versions = _train(platform, operator)
    sweep = _sweep(platform, operator)
    _promote(platform, versions)
    _compare_and_download(platform, versions)
    token = _serve(platform)
    features = _features(platform, operator)

    _step("next")
    for command, what in [
        ("mlrig experiments list", "the runs, their metrics and logs"),
        (f"mlrig sweeps show {sweep}", "the sweep's trials, importances, best so far"),
        (f"mlrig models versions {MODEL}", "the registered versions"),
        (f"mlrig models show {MODEL} champion", "the champion with its lineage"),
        ("mlrig server", "REST API + predictions + job worker; docs at http://127.0.0.1:8080/docs"),
        ("mlrig deployments list", "what is deployed, its status and versions"),
        ("mlrig serve", "the data plane alone: every deployment, one replica per core"),
        ("mlrig plugins list", "installed backends and hook plugins"),
    ]:
        click.echo(f"{command:<40} # {what}")

    _step("a token for the server")
    # the server checks tokens; the tour made alice (developer) and bob (deployer)
    click.echo("the server wants a token: make one for a user the tour created")
    for command, what in [
        ("mlrig tokens create --user alice", "prints a token (mlr_...) once: keep it"),
        ("export MLRIG_TOKEN=mlr_...", "the CLI (--token) and mlrig.Client use it"),
        (
            'curl -H "Authorization: Bearer $MLRIG_TOKEN" http://127.0.0.1:8080/api/ml/models',
            "",
        ),
    ]:
        click.echo(f"{command:<40} # {what}" if what else command)
    click.echo("more users: mlrig users create NAME --role developer|deployer|admin")

    _step("predict through the server")
    click.echo("with `mlrig server` running, the deployment answers this (a predict-only token):")
    click.echo(_curl(token, "http://127.0.0.1:8080"))
    if features:
        click.echo("\nand the feature store's online values (a token of alice, see above):")
        click.echo(_features_curl("http://127.0.0.1:8080"))


def _train(platform: Platform, operator: Principal) -> list[dict[str, Any]]:
    """Train two models on the bundled iris data, as experiments run by the job engine."""
    from mlrig import datasets
    from mlrig.engine.allocator import Capacity
    from mlrig.engine.worker import Worker

    _step("training: two experiments on the job engine (sklearn trainer, bundled iris data)")
    data = {"uri": str(datasets.path("iris")), "target": "species"}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = {
        "random-forest": {
            "estimator": "sklearn.ensemble.RandomForestClassifier",
            "n_estimators": 50,
        },
        "logistic": {
            "estimator": "sklearn.linear_model.LogisticRegression",
            "C": 0.05,
            "max_iter": 500,
        },
    }
    ids = []
    for label, params in runs.items():
        experiment = platform.experiments.create(
            name=f"quickstart-{stamp}-{label}",
            trainer="sklearn",
            actor=operator,
            hyperparameters=params,
            dataset=data,
            model_name=MODEL,
            seed=42,
            start=True,
        )
        ids.append(experiment["id"])
        click.echo(f"queued experiment {experiment['name']}")
    worker = Worker(platform, concurrency=2, capacity=Capacity(cpus=(0, 0)))
    from rich.console import Console

    with Console().status("running the jobs (each in its own process)..."):
        worker.run(exit_when_idle=True)
    versions = []
    for experiment_id in ids:
        experiment = platform.experiments.get(experiment_id)
        if experiment["status"] != "completed":
            msg = (
                f"experiment {experiment['name']} ended {experiment['status']}: "
                f"{experiment.get('status_detail')}; see: mlrig experiments logs {experiment_id}"
            )
            raise click.ClickException(msg)
        version_id = experiment["result"]["model_version_id"]
        version = platform.registry.get_version(MODEL, version_id)
        versions.append(version)
        click.echo(
            f"{experiment['name']}: completed, val_accuracy "
            f"{version['metrics'].get('val_accuracy', float('nan')):.3f} -> registered "
            f"{MODEL} version {version['version']}"
        )
    return versions


#: the quickstart's sweep: LogisticRegression's C and solver on iris
SWEEP_SPACE = {
    "C": {"type": "float", "low": 0.001, "high": 100.0, "log": True},
    "solver": {"type": "choice", "options": ["lbfgs", "newton-cg"]},
}
SWEEP_TRIALS = 6


def _sweep(platform: Platform, operator: Principal) -> str:
    """A small sweep on the engine: random search over two parameters, 2 trials at a
    time, the best trial's model registered. Returns the sweep's name."""
    from mlrig import datasets
    from mlrig.engine.allocator import Capacity
    from mlrig.engine.worker import Worker

    _step(f"a sweep: {SWEEP_TRIALS} trials of random search, 2 at a time")
    name = f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}-sweep"
    view = platform.sweeps.create(
        name=name,
        trainer="sklearn",
        actor=operator,
        space=SWEEP_SPACE,
        objective="val_accuracy",
        direction="maximize",
        strategy="random",
        max_trials=SWEEP_TRIALS,
        parallelism=2,
        hyperparameters={"estimator": "sklearn.linear_model.LogisticRegression", "max_iter": 500},
        dataset={"uri": str(datasets.path("iris")), "target": "species"},
        model_name=f"{MODEL}-sweep",
        seed=42,
    )
    click.echo(f"sweep {name}: C (log scale) x solver on iris, maximize val_accuracy")
    worker = Worker(platform, concurrency=2, capacity=Capacity(cpus=(0, 0)))
    from rich.console import Console

    with Console().status("running the trials (the worker queues the next as one ends)..."):
        worker.run(exit_when_idle=True)
    view = platform.sweeps.get(view["id"])
    best = view.get("best")
    if view["status"] != "completed" or best is None:
        msg = (
            f"sweep {name} ended {view['status']}: {view.get('status_detail')}; "
            f"see: mlrig sweeps show {name}"
        )
        raise click.ClickException(msg)
    params = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()
    )
    click.echo(
        f"{view['trials']['completed']} trials completed; best: trial {best['number']}, "
        f"val_accuracy {best['value']:.3f} with {params}; registered as {MODEL}-sweep"
    )
    click.echo(f"the trials, importances and best-so-far curve: mlrig sweeps show {name}")
    return name


def _user(platform: Platform, name: str, role: str) -> Principal:
    from mlrig.errors import ConflictError

    try:
        platform.security.create_user(name=name, role=role)
    except ConflictError:
        pass
    token = platform.security.create_token(user=name, name="quickstart")["token"]
    return platform.security.authenticate(token)


def _promote(platform: Platform, versions: list[dict[str, Any]]) -> None:
    _step("registry: alias the best version 'champion', promote it with an approval")
    best = max(versions, key=lambda v: v["metrics"].get("val_accuracy", 0.0))
    alice = _user(platform, "alice", "developer")
    bob = _user(platform, "bob", "deployer")
    platform.lifecycle.set_alias(MODEL, "champion", best["version"], actor=alice)
    click.echo(f"{MODEL}@champion -> version {best['version']}")
    request = platform.lifecycle.transition(
        MODEL, best["version"], "production", actor=alice, comment="best validation accuracy"
    )["request"]
    click.echo(f"alice (developer) asked for production: request {request['id']}")
    decided = platform.lifecycle.decide(request["id"], approve=True, actor=bob, comment="ok")
    click.echo(
        f"bob (deployer) approved: version {decided['version']} is in {decided['target_stage']}"
    )


def _compare_and_download(platform: Platform, versions: list[dict[str, Any]]) -> None:
    import numpy as np

    from mlrig import datasets
    from mlrig.formats import load_native

    _step("benchmark and compare the versions on the dataset")
    refs = [v["version"] for v in versions]
    results = platform.evaluator.evaluate(
        MODEL, refs, dataset_uri=str(datasets.path("iris")), target="species"
    )
    measured = {r["version"]: r["metrics"]["accuracy"] for r in results}
    for r in results:
        m = r["metrics"]
        click.echo(
            f"version {r['version']} ({r['runtime']}): accuracy {m['accuracy']:.3f}, "
            f"f1 {m['f1']:.3f}, p50 {m['latency_p50_ms']:.2f} ms, "
            f"{m['batch_rows_per_s']:,.0f} rows/s"
        )

    _step("download the champion and load it back")
    frame = datasets.load("iris")
    features, labels = frame.drop(columns=["species"]), frame["species"].to_numpy()
    import tempfile  # here: every mlrig command imports this module

    with tempfile.TemporaryDirectory() as tmp:
        platform.registry.download_version(MODEL, "champion", Path(tmp))
        model = load_native(Path(tmp))
        champion = platform.registry.get_version(MODEL, "champion")
        files = ", ".join(a["path"] for a in champion["artifacts"])
        accuracy = float(np.mean(np.asarray(model.predict(features)) == labels))
        click.echo(
            f"downloaded {files} (sha256 verified); the {type(model).__name__} scores "
            f"accuracy {accuracy:.3f} here, the registry measured "
            f"{measured[champion['version']]:.3f}"
        )


DEPLOYMENT = "iris-quickstart"
#: one flower of each kind, in the iris columns' order
SAMPLE_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.1, 4.7, 1.5], [6.3, 3.3, 6.0, 2.5]]


def _curl(token: str, base: str) -> str:
    body = '{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'
    return (
        f"curl -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n"
        f"     -d '{body}' {base}/api/ml/deployments/{DEPLOYMENT}/predict"
    )


def _serve(platform: Platform) -> str:
    """Deploy the champion (production), serve it over HTTP on loopback, ask it for three
    predictions; return a predict-only token for the curl the tour prints."""
    import httpx

    from mlrig.errors import ConflictError

    _step("serving: deploy the champion and ask it over HTTP")
    bob = platform.security.authenticate(
        platform.security.create_token(user="bob", name="quickstart-deploy")["token"]
    )
    try:
        deployment = platform.deployments.create(
            name=DEPLOYMENT, model=MODEL, alias="champion", environment="production", actor=bob
        )
        click.echo(f"bob (deployer) deployed {MODEL}@champion as {DEPLOYMENT!r} (production)")
    except ConflictError:  # a second tour: follow the champion again
        deployment = platform.deployments.update(DEPLOYMENT, alias="champion", actor=bob)
        click.echo(f"deployment {DEPLOYMENT!r} follows {MODEL}@champion")
    token = platform.security.create_token(
        user="bob", name="quickstart-predict", scopes=[f"predict:{DEPLOYMENT}"]
    )["token"]
    with _live_server(platform) as base:
        answer = httpx.post(
            f"{base}/api/ml/deployments/{DEPLOYMENT}/predict",
            json={"inputs": SAMPLE_ROWS},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        if answer.status_code != 200:
            msg = f"the deployment answered {answer.status_code}: {answer.text[:300]}"
            raise click.ClickException(msg)
        result = answer.json()
        shown = platform.deployments.get(DEPLOYMENT)
    click.echo(
        f"POST {base}/api/ml/deployments/{DEPLOYMENT}/predict -> {result['predictions']} "
        f"(version {result.get('version')}, runtime {shown.get('resolved_runtime')}, "
        f"status {shown['status']})"
    )
    if result.get("probabilities"):
        best = [max(p) for p in result["probabilities"]]
        click.echo("probabilities of those classes: " + ", ".join(f"{p:.2f}" for p in best))
    del deployment
    return token


class _live_server:
    """The data plane (the app `mlrig serve` runs) on a free loopback port, in a thread."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def __enter__(self) -> str:
        import socket
        import threading

        import uvicorn

        from mlrig.serving.dataplane import DataPlane, create_app

        self.dataplane = DataPlane(self.platform, load_wait_seconds=60.0).start(wait=True)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.platform, dataplane=self.dataplane), log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.dataplane.stop()


#: the quickstart's feature view: a few customers' spending, two days of history
FEATURE_VIEW = "customer_stats"
FEATURE_NAMES = ("avg_spend", "orders_7d", "tenure_days")
FEATURE_SOURCE = "artifact://quickstart/features/customer_stats.parquet"


def _features_curl(base: str) -> str:
    body = (
        '{"features": ["customer_stats:avg_spend", "orders_7d"], "entities": [{"customer_id": 1}]}'
    )
    return (
        "curl -H \"Authorization: Bearer $MLRIG_TOKEN\" -H 'Content-Type: application/json' \\\n"
        f"     -d '{body}' {base}/api/ml/features/batch"
    )


def _feature_rows() -> Any:
    """Two days of history for five customers (the newest an hour ago)."""
    from datetime import datetime, timedelta, timezone

    import pandas as pd

    now = datetime.now(timezone.utc).replace(microsecond=0)
    rows = [
        {
            "customer_id": customer,
            "event_timestamp": now - timedelta(days=1 - day, hours=1),
            "avg_spend": round(12.5 * customer + 3.0 * day, 2),
            "orders_7d": float(customer + day),
            "tenure_days": float(30 * customer + day),
        }
        for customer in range(1, 6)
        for day in range(2)
    ]
    return pd.DataFrame(rows)


def _features(platform: Platform, operator: Principal) -> bool:
    """An entity and a feature view over a Parquet file, materialised on the engine, read
    online. Skipped (False) without the ``features`` extra."""
    try:
        import duckdb  # noqa: F401
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        _step("feature store: skipped (pip install 'mlrig[features]' for this part)")
        return False
    import io

    from mlrig.engine.allocator import Capacity
    from mlrig.engine.worker import Worker
    from mlrig.errors import ConflictError

    _step("feature store: an entity, a feature view over a Parquet file, materialise, read online")
    buffer = io.BytesIO()
    _feature_rows().to_parquet(buffer, index=False)
    key = FEATURE_SOURCE.removeprefix("artifact://")
    platform.artifacts.put(key, buffer.getvalue())
    click.echo(f"wrote 10 rows of 5 customers to {FEATURE_SOURCE} (Parquet)")
    store = platform.features
    try:
        store.create_entity(
            {"name": "customer", "join_keys": ["customer_id"], "description": "a shop's customer"},
            actor=operator,
        )
        store.create_view(
            {
                "name": FEATURE_VIEW,
                "entities": ["customer"],
                "source": {"kind": "file", "uri": FEATURE_SOURCE, "format": "parquet"},
                "features": [{"name": n, "type": "numerical"} for n in FEATURE_NAMES],
                "ttl_seconds": 7 * 86400,
                "description": "spending per customer (quickstart)",
            },
            actor=operator,
        )
        click.echo(
            f"entity 'customer' (join key customer_id), view {FEATURE_VIEW!r}: "
            f"{', '.join(FEATURE_NAMES)}; TTL 7 days"
        )
    except ConflictError:  # a second tour
        click.echo(f"entity 'customer' and view {FEATURE_VIEW!r} exist: materialising again")
    experiment = store.materialize(FEATURE_VIEW, actor=operator)
    worker = Worker(platform, concurrency=1, capacity=Capacity(cpus=(0,)))
    worker.run(exit_when_idle=True)
    experiment = platform.experiments.get(experiment["id"])
    if experiment["status"] != "completed":
        msg = (
            f"materialising {FEATURE_VIEW} ended {experiment['status']}: "
            f"{experiment.get('status_detail')}; see: mlrig experiments logs {experiment['id']}"
        )
        raise click.ClickException(msg)
    metrics = (experiment.get("result") or {}).get("metrics") or {}
    rows = metrics.get("rows")
    click.echo(
        f"materialised {FEATURE_VIEW} into the {platform.settings.features.backend!r} online "
        f"store on the job engine" + (f" ({int(rows)} rows)" if rows is not None else "")
    )
    answer = store.get_online_features(
        [f"{FEATURE_VIEW}:{n}" for n in FEATURE_NAMES],
        [{"customer_id": 1}, {"customer_id": 3}, {"customer_id": 99}],
        actor=operator,
    )
    for key_value, values, missing in zip(
        (1, 3, 99), answer["results"], answer["missing"], strict=True
    ):
        shown = ", ".join(f"{n}={values.get(n)}" for n in FEATURE_NAMES)
        note = f"  (missing: {', '.join(missing)}: no such customer)" if missing else ""
        click.echo(f"online customer_id={key_value}: {shown}{note}")
    click.echo(
        "deploy a model on these features with entity keys only: see docs/serving.md "
        "(feature-backed deployments) and examples/features/"
    )
    return True
