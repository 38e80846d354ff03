"""The feature store end to end, from a fresh folder: features in, a feature-backed
deployment out.

    pip install 'mlrig[features]'
    mkdir try-features && cd try-features
    python /path/to/examples/features/churn_features.py

What it does (each step printed):

1. writes a Parquet file of customer statistics (four days of history for 200
   customers) into the artifact store, defines the entity ``customer`` and the feature
   view ``customer_stats`` over it;
2. materialises the view into the online store, as a job on the training engine;
3. starts the API server on loopback and reads the online values over HTTP;
4. builds a point-in-time-correct training set with
   ``platform.features.get_historical_features`` (labels beside it);
5. trains a scikit-learn model on it through the engine (the ``sklearn`` trainer);
6. deploys the model with feature references and predicts with entity keys only,
   checking that the answers are the model's own on the same features.

It writes ``mlrig.toml`` (SQLite and artifacts under ``./.mlrig``) when the folder has
none; run it again and it materialises and trains again on the same definitions.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from mlrig.errors import ConflictError

FEATURES = ["avg_spend", "orders_7d", "tenure_days"]
SOURCE = "artifact://examples/features/customer_stats.parquet"
TRAINING = "artifact://examples/features/training.parquet"
CUSTOMERS = 200


def step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def history(now: datetime) -> pd.DataFrame:
    """Four rows per customer, a day apart, the newest an hour ago (seeded)."""
    rng = np.random.default_rng(14)
    rows = []
    for customer in range(1, CUSTOMERS + 1):
        base = rng.uniform(5, 95)
        for day in range(4):
            rows.append(
                {
                    "customer_id": customer,
                    "event_timestamp": now - timedelta(days=3 - day, hours=1),
                    "avg_spend": round(float(base + rng.normal(0, 5)), 2),
                    "orders_7d": float(rng.integers(0, 12)),
                    "tenure_days": float(7 * customer + day),
                }
            )
    return pd.DataFrame(rows)


def put_parquet(platform: Any, uri: str, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    platform.artifacts.put(uri.removeprefix("artifact://"), buffer.getvalue())


def run_jobs(platform: Any) -> None:
    """Run what is queued on the engine (a worker in this process; `mlrig worker` does
    the same as a service)."""
    from mlrig.engine.allocator import Capacity
    from mlrig.engine.worker import Worker

    Worker(platform, concurrency=1, capacity=Capacity(cpus=(0,))).run(exit_when_idle=True)


class Server:
    """The REST API (predictions included) on a free loopback port, in a thread."""

    def __init__(self, platform: Any) -> None:
        import uvicorn

        from mlrig.api import create_app

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(platform), log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def main() -> None:
    from mlrig.cli.init import STARTER
    from mlrig.platform import Platform

    config = Path("mlrig.toml")
    if not config.exists():
        config.write_text(STARTER, encoding="utf-8")
        print(f"wrote {config.resolve()}")
    platform = Platform.from_config(config)
    platform.db.check()
    security = platform.security
    try:
        security.create_user(name="feature-admin", role="admin")
    except ConflictError:
        pass
    token = security.create_token(user="feature-admin", name="features-example")["token"]
    admin = security.authenticate(token)
    now = datetime.now(timezone.utc).replace(microsecond=0)

    step("1. an entity and a feature view over a Parquet file")
    rows = history(now)
    put_parquet(platform, SOURCE, rows)
    print(f"wrote {len(rows)} rows of {CUSTOMERS} customers to {SOURCE}")
    try:
        platform.features.create_entity(
            {"name": "customer", "join_keys": ["customer_id"]}, actor=admin
        )
        platform.features.create_view(
            {
                "name": "customer_stats",
                "entities": ["customer"],
                "source": {"kind": "file", "uri": SOURCE, "timestamp_field": "event_timestamp"},
                "features": [{"name": n, "type": "numerical"} for n in FEATURES],
                "ttl_seconds": 7 * 86400,
            },
            actor=admin,
        )
        print(f"view customer_stats: {', '.join(FEATURES)} by customer_id, TTL 7 days")
    except ConflictError:
        print("entity customer and view customer_stats exist already (a second run)")

    step("2. materialise into the online store, on the job engine")
    job = platform.features.materialize("customer_stats", actor=admin)
    run_jobs(platform)
    job = platform.experiments.get(job["id"])
    print(f"materialisation {job['name']}: {job['status']}")
    if job["status"] != "completed":
        raise SystemExit(job.get("status_detail"))

    auth = {"Authorization": f"Bearer {token}"}
    with (
        Server(platform) as base,
        httpx.Client(base_url=f"{base}/api/ml", headers=auth, timeout=60) as http,
    ):
        step("3. online values over HTTP")
        ids = [1, 2, 3, 9999]
        online = http.post(
            "/features/batch",
            json={"features": FEATURES, "entities": [{"customer_id": i} for i in ids]},
        ).json()
        for i, values, missing in zip(ids, online["results"], online["missing"], strict=True):
            print(f"customer {i}: {values}" + (f"  missing: {missing}" if missing else ""))

        step("4. a point-in-time-correct training set")
        rng = np.random.default_rng(3)
        entity_df = pd.DataFrame(
            {
                "customer_id": rng.integers(1, CUSTOMERS + 1, 2000),
                "event_timestamp": [
                    now - timedelta(hours=float(h)) for h in rng.uniform(0.5, 70, 2000)
                ],
            }
        )
        training = platform.features.get_historical_features(
            entity_df, [f"customer_stats:{n}" for n in FEATURES]
        )
        # the label: did the customer churn? (here: a rule on the features, plus noise)
        noise = rng.normal(0, 5, len(training))
        training["churned"] = (
            training["avg_spend"] + 2 * training["orders_7d"] + noise < 60
        ).astype(int)
        put_parquet(platform, TRAINING, training[[*FEATURES, "churned"]])
        print(f"{len(training)} rows x {len(FEATURES)} features -> {TRAINING}")

        step("5. train on the engine (sklearn trainer)")
        experiment = platform.experiments.create(
            name=f"churn-{now:%Y%m%d-%H%M%S}",
            trainer="sklearn",
            actor=admin,
            hyperparameters={
                "estimator": "sklearn.linear_model.LogisticRegression",
                "max_iter": 1000,
            },
            dataset={"uri": TRAINING, "target": "churned"},
            model_name="churn",
            seed=7,
            start=True,
        )
        run_jobs(platform)
        experiment = platform.experiments.get(experiment["id"])
        if experiment["status"] != "completed":
            raise SystemExit(experiment.get("status_detail"))
        version = platform.registry.get_version("churn", experiment["result"]["model_version_id"])
        print(
            f"registered churn version {version['version']}, val_accuracy "
            f"{version['metrics'].get('val_accuracy', float('nan')):.3f}"
        )

        step("6. deploy with feature references; predict with entity keys only")
        body = {
            "name": "churn",
            "model": "churn",
            "version": version["version"],
            "runtime": "sklearn",
            "features": {"refs": [f"customer_stats:{n}" for n in FEATURES]},
        }
        made = http.post("/deployments", json=body)
        if made.status_code == 409:  # a second run: serve the new version
            made = http.put(
                "/deployments/churn",
                json={"version": version["version"], "features": body["features"]},
            )
        made.raise_for_status()
        request = {"entities": [{"customer_id": i} for i in ids[:3]]}
        answer = http.post("/deployments/churn/predict", json=request)
        answer.raise_for_status()
        predictions = answer.json()["predictions"]
        print(f"POST /api/ml/deployments/churn/predict {request} -> {predictions}")

        import tempfile

        from mlrig.formats import load_native

        with tempfile.TemporaryDirectory() as tmp:
            platform.registry.download_version("churn", version["version"], Path(tmp))
            model = load_native(Path(tmp))
        own = model.predict(pd.DataFrame(online["results"][:3], columns=FEATURES)).tolist()
        print(f"the model itself on the same online features: {own}")
        assert predictions == own, (predictions, own)

        unknown = http.post(
            "/deployments/churn/predict", json={"entities": [{"customer_id": 9999}]}
        )
        print(f"an unknown customer: {unknown.status_code} {unknown.json()['error']['message']}")

        step("try it yourself (with `mlrig server` running and a token in $MLRIG_TOKEN)")
        print(
            'curl -H "Authorization: Bearer $MLRIG_TOKEN" '
            "-H 'Content-Type: application/json' \\\n"
            '     -d \'{"entities": [{"customer_id": 1}]}\' '
            "http://127.0.0.1:8080/api/ml/deployments/churn/predict"
        )
    platform.close()


if __name__ == "__main__":
    main()
