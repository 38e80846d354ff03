"""The feature store end to end (issue 14's "Must show"), over a real uvicorn server on
loopback, on SQLite and on PostgreSQL: define an entity and a feature view over a Parquet
file, materialise it on the job engine, read online over HTTP, build a point-in-time
training set, train a model on it through the engine (sklearn trainer), deploy it with
feature references, predict with entity keys only: the answers are the model's own on the
same features, and the inference log keeps the features used."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlrig.testing.fixtures import make_platform, serve

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")
pytest.importorskip("duckdb")

FEATURES = ["avg_spend", "orders_7d", "tenure_days"]
CUSTOMERS = 80


def _history(now: datetime) -> Any:
    """Four rows per customer, a day apart, the newest an hour ago; seeded."""
    rng = np.random.default_rng(14)
    rows = []
    for customer in range(1, CUSTOMERS + 1):
        base = rng.uniform(5, 95)
        for day in range(4):
            rows.append(
                {
                    "customer_id": customer,
                    "event_timestamp": now - timedelta(days=3 - day, hours=1),
                    "avg_spend": round(float(base + rng.normal(0, 5)), 3),
                    "orders_7d": float(rng.integers(0, 12)),
                    "tenure_days": float(100 * customer % 997 + day),
                }
            )
    frame = pd.DataFrame(rows)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame


def _run_jobs(platform: Any) -> None:
    from mlrig.engine.allocator import Capacity
    from mlrig.engine.worker import Worker

    stop = threading.Event()
    timer = threading.Timer(240, stop.set)
    timer.start()
    try:
        Worker(platform, concurrency=1, capacity=Capacity(cpus=(0,)), lease_seconds=30).run(
            stop=stop, exit_when_idle=True
        )
    finally:
        timer.cancel()


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def test_feature_store_end_to_end(tmp_path: Path, db_url: str, database: Any) -> None:
    now = datetime.now(timezone.utc)
    data = tmp_path / "data"
    data.mkdir()
    source = data / "customer_stats.parquet"
    history = _history(now)
    history.to_parquet(source)
    platform = make_platform(
        tmp_path / "home",
        database={"url": db_url},
        datasets={"allowed_roots": [str(data)]},
        serving={"refresh_seconds": 0.2},
    )
    try:
        from mlrig.api import create_app

        platform.security.create_user(name="ada", role="admin")
        token = platform.security.create_token(user="ada")["token"]
        ada = platform.security.authenticate(token)
        auth = {"Authorization": f"Bearer {token}"}
        with (
            serve(create_app(platform)) as base,
            httpx.Client(base_url=f"{base}/api/ml", headers=auth, timeout=60) as http,
        ):
            # 1. definitions over REST
            _ok(
                http.post("/entities", json={"name": "customer", "join_keys": ["customer_id"]}),
                201,
            )
            view = {
                "name": "customer_stats",
                "entities": ["customer"],
                "source": {
                    "kind": "file",
                    "uri": str(source),
                    "timestamp_field": "event_timestamp",
                },
                "features": [{"name": n, "type": "numerical"} for n in FEATURES],
                "ttl_seconds": 7 * 86400,
            }
            _ok(http.post("/feature-views", json=view), 201)

            # 2. materialise on the job engine
            queued = _ok(http.post("/feature-views/customer_stats/materialize", json={}), 202)
            _run_jobs(platform)
            done = platform.experiments.get(queued["id"])
            assert done["status"] == "completed", done.get("status_detail")

            # 3. online read over HTTP: the newest row per customer
            ids = [1, 7, 42, 80]
            online = _ok(
                http.post(
                    "/features/batch",
                    json={"features": FEATURES, "entities": [{"customer_id": i} for i in ids]},
                )
            )
            newest = history.sort_values("event_timestamp").groupby("customer_id").last()
            for i, got in zip(ids, online["results"], strict=True):
                assert got == {n: float(newest.loc[i, n]) for n in FEATURES}
            unknown = _ok(
                http.post(
                    "/features/batch",
                    json={"features": FEATURES, "entities": [{"customer_id": 10_000}]},
                )
            )
            assert unknown["missing"] == [FEATURES]  # an unknown key: missing, said so

            # 4. a point-in-time training set (Python API), labels from the feature store
            rng = np.random.default_rng(3)
            entity_df = pd.DataFrame(
                {
                    "customer_id": rng.integers(1, CUSTOMERS + 1, 400),
                    "event_timestamp": [
                        now - timedelta(hours=float(h)) for h in rng.uniform(0.5, 70, 400)
                    ],
                }
            )
            training = platform.features.get_historical_features(
                entity_df, [f"customer_stats:{n}" for n in FEATURES]
            )
            assert len(training) == len(entity_df)
            assert training[FEATURES].notna().all().all()
            training["label"] = (training["avg_spend"] + 2 * training["orders_7d"] > 60).astype(int)
            train_file = data / "training.parquet"
            training[[*FEATURES, "label"]].to_parquet(train_file)

            # 5. train through the engine (the sklearn trainer reads the Parquet file)
            experiment = platform.experiments.create(
                name="churn-from-features",
                trainer="sklearn",
                actor=ada,
                hyperparameters={
                    "estimator": "sklearn.linear_model.LogisticRegression",
                    "max_iter": 1000,
                },
                dataset={"uri": str(train_file), "target": "label"},
                model_name="churn",
                seed=7,
                start=True,
            )
            _run_jobs(platform)
            trained = platform.experiments.get(experiment["id"])
            assert trained["status"] == "completed", trained.get("status_detail")
            version = platform.registry.get_version("churn", trained["result"]["model_version_id"])

            # 6. deploy with feature references (over REST), predict with keys only
            deployed = _ok(
                http.post(
                    "/deployments",
                    json={
                        "name": "churn",
                        "model": "churn",
                        "version": version["version"],
                        "runtime": "sklearn",
                        "features": {"refs": [f"customer_stats:{n}" for n in FEATURES]},
                    },
                ),
                201,
            )
            assert deployed["features"]["entity_keys"] == ["customer_id"]
            answer = _ok(
                http.post(
                    "/deployments/churn/predict",
                    json={"entities": [{"customer_id": i} for i in ids]},
                )
            )

            # the model's own predictions on the same (online) features
            model = _load_model(platform, version["version"])
            frame = pd.DataFrame(online["results"], columns=FEATURES)
            assert answer["predictions"] == model.predict(frame).tolist()
            np.testing.assert_allclose(
                answer["probabilities"], model.predict_proba(frame), rtol=1e-9
            )

            missing = http.post(
                "/deployments/churn/predict", json={"entities": [{"customer_id": 10_000}]}
            )
            assert missing.status_code == 422, missing.text
            assert "customer_id=10000" in missing.json()["error"]["message"]

            # 7. the inference log keeps the entities and the features the model got
            from mlrig.serving.dataplane import embedded

            assert embedded(platform).inference_log.flush(timeout=30)
            logged = _inference_inputs(platform, deployed["id"])
    finally:
        platform.close()
    assert logged, "no inference record"
    assert logged[0]["entities"] == [{"customer_id": i} for i in ids]
    assert logged[0]["features"] == online["results"]


def _inference_inputs(platform: Any, deployment_id: str) -> list[Any]:
    import uuid

    from sqlalchemy import select

    from mlrig.db.models import InferenceRequest

    with platform.db.session() as session:
        rows = session.scalars(
            select(InferenceRequest.input_features)
            .where(InferenceRequest.deployment_id == uuid.UUID(deployment_id))
            .order_by(InferenceRequest.timestamp)
        ).all()
    return [r for r in rows if isinstance(r, dict) and r.get("entities")]


def _load_model(platform: Any, version: str) -> Any:
    import tempfile

    from mlrig.formats import load_native

    with tempfile.TemporaryDirectory() as tmp:
        platform.registry.download_version("churn", version, Path(tmp))
        return load_native(Path(tmp))


def test_quickstart_feature_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mlrig quickstart`'s feature part on its own: a view over a Parquet file it writes,
    materialised on the engine, read online (an unknown customer said to be missing); a
    second tour reuses the definitions."""
    from mlrig.cli import quickstart

    platform = make_platform(tmp_path / "home")
    try:
        platform.security.create_user(name="op", role="admin")
        operator = platform.security.authenticate(
            platform.security.create_token(user="op")["token"]
        )
        assert quickstart._features(platform, operator) is True
        out = capsys.readouterr().out
        assert "online customer_id=1: avg_spend=15.5, orders_7d=2.0, tenure_days=31.0" in out
        assert "customer_id=99" in out and "no such customer" in out
        assert quickstart._features(platform, operator) is True  # a second tour
        assert "exist: materialising again" in capsys.readouterr().out
    finally:
        platform.close()
    assert "/api/ml/features/batch" in quickstart._features_curl("http://127.0.0.1:8080")
