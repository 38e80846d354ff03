"""Feature-backed deployments: the ``features`` field (shape, references, keys, signature),
the data plane's feature branch (entity keys in, features from the online store, the
model's answer, the missing-value policy, the inference log), other wire formats, and the
plain path left as it was."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from mlrig.contracts.online_store import OnlineRow
from mlrig.errors import NotFoundError, ValidationError
from mlrig.serving import spec
from mlrig.serving.dataplane import DataPlane
from mlrig.testing.fixtures import make_platform
from mlrig.testing.serving import ACTOR

pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

FEATURES = ["avg_spend", "orders_7d", "days_since_signup"]
NOW = datetime.now(timezone.utc)


# --- the field's shape (pure) ---------------------------------------------------------------


def test_check_features_normalises_and_defaults() -> None:
    got = spec.check_features({"refs": ["stats:avg_spend", "orders_7d"]})
    assert got == {
        "refs": ["stats:avg_spend", "orders_7d"],
        "entity_keys": None,
        "request_fields": [],
        "fill_value": None,
    }
    assert spec.check_features(None) is None
    with_fill = spec.check_features({"refs": ["a", "b"], "fill_value": {"a": 0}})
    assert with_fill["fill_value"] == {"a": 0}
    assert spec.feature_columns({"refs": ["v:a", "b"], "request_fields": ["amount"]}) == [
        "a",
        "b",
        "amount",
    ]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([], "must be an object"),
        ({}, "features.refs must be a list"),
        ({"refs": []}, "features.refs must be a list"),
        ({"refs": ["a:b:c"]}, "'name' or 'view:name'"),
        ({"refs": ["1abc"]}, "'name' or 'view:name'"),
        ({"refs": ["v:a", "w:a"]}, "named more than once"),
        ({"refs": ["a"], "extra": 1}, "unknown key"),
        ({"refs": ["a"], "entity_keys": []}, "features.entity_keys must be a list"),
        ({"refs": ["a"], "entity_keys": ["k", "k"]}, "more than once"),
        ({"refs": ["a"], "request_fields": ["a"]}, "also a feature or key"),
        ({"refs": ["a"], "fill_value": "zero"}, "must be a number"),
        ({"refs": ["a"], "fill_value": float("nan")}, "finite"),
        ({"refs": ["a"], "fill_value": True}, "must be a number"),
        ({"refs": ["a"], "fill_value": {"b": 1}}, "which features.refs does not"),
    ],
)
def test_check_features_refuses(body: Any, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        spec.check_features(body)


def test_signature_must_take_the_feature_columns() -> None:
    features = {"refs": ["v:a", "v:b"], "request_fields": []}
    frame = {"inputs": {"kind": "dataframe", "columns": [{"name": "a"}, {"name": "b"}]}}
    spec.check_signature_columns(frame, features, "m version 1")  # fits
    spec.check_signature_columns(None, features, "m version 1")  # nothing to check
    spec.check_signature_columns(
        {"inputs": {"kind": "tensor", "shape": [-1, 2]}}, features, "m version 1"
    )
    swapped = {"inputs": {"kind": "dataframe", "columns": [{"name": "b"}, {"name": "a"}]}}
    with pytest.raises(ValidationError, match=r"in this order"):
        spec.check_signature_columns(swapped, features, "m version 1")
    with pytest.raises(ValidationError, match="rows of 3 values"):
        spec.check_signature_columns(
            {"inputs": {"kind": "tensor", "shape": [-1, 3]}}, features, "m version 1"
        )


# --- a platform with a view, an online store filled directly, a model -------------------


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Any]:
    plat = make_platform(
        tmp_path / "home",
        auth={"enabled": False},
        serving={"refresh_seconds": 0.1},
        datasets={"allowed_roots": [str(tmp_path)]},
    )
    yield plat
    plat.close()


def _frame(n: int = 40) -> Any:
    import pandas as pd

    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1),
            "event_timestamp": pd.Timestamp(NOW - timedelta(hours=1)),
            "avg_spend": rng.uniform(0, 100, n).round(2),
            "orders_7d": rng.integers(0, 10, n).astype("float64"),
            "days_since_signup": rng.integers(1, 900, n).astype("float64"),
        }
    )


@pytest.fixture
def store_data(platform: Any, tmp_path: Path) -> Any:
    return _store_data(platform, tmp_path)


def _store_data(platform: Any, tmp_path: Path) -> Any:
    """Entity ``customer``, view ``customer_stats`` over a Parquet file (TTL one day), its
    rows written to the online store directly (as materialisation would)."""
    frame = _frame()
    path = tmp_path / "customer_stats.parquet"
    frame.to_parquet(path)
    features = platform.features
    features.create_entity({"name": "customer", "join_keys": ["customer_id"]}, actor=ACTOR)
    features.create_view(
        {
            "name": "customer_stats",
            "entities": ["customer"],
            "source": {"kind": "file", "uri": str(path), "timestamp_field": "event_timestamp"},
            "features": [{"name": n, "type": "numerical"} for n in FEATURES],
            "ttl_seconds": 86400,
        },
        actor=ACTOR,
    )
    rows = [
        OnlineRow(
            key=(str(int(r.customer_id)),),
            values={n: float(getattr(r, n)) for n in FEATURES},
            event_timestamp=r.event_timestamp.to_pydatetime(),
        )
        for r in frame.itertuples()
    ]
    platform.online_store.write("customer_stats", rows)
    return frame


def _train(frame: Any, columns: list[str]) -> Any:
    from sklearn.linear_model import LogisticRegression

    x = frame[columns]
    y = (frame["avg_spend"] > frame["avg_spend"].median()).astype(int)
    return LogisticRegression(max_iter=500).fit(x, y)


@pytest.fixture
def model(platform: Any, store_data: Any) -> Any:
    from mlrig.registry.packaging import register_model

    estimator = _train(store_data, FEATURES)
    register_model(
        platform, estimator, name="churn", actor=ACTOR, sample=store_data[FEATURES].head(5)
    )
    return estimator


def _deploy(platform: Any, name: str = "churn", **features: Any) -> dict[str, Any]:
    body = {"refs": [f"customer_stats:{n}" for n in FEATURES], **features}
    return platform.deployments.create(
        name=name, model="churn", version="1", runtime="sklearn", actor=ACTOR, features=body
    )


def _ask(plane: DataPlane, name: str, body: Any, content_type: str = "application/json") -> Any:
    async def go() -> Any:
        state = await plane.resolve(name, _operator())
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        return await plane.predict(state, raw, content_type=content_type)

    return asyncio.run(go())


def _operator() -> Any:
    from mlrig.api.security import LOCAL_OPERATOR

    return LOCAL_OPERATOR


@pytest.fixture
def plane(platform: Any) -> Iterator[DataPlane]:
    dataplane = DataPlane(platform, load_wait_seconds=30.0)
    yield dataplane
    dataplane.stop()


# --- control plane --------------------------------------------------------------------------


def test_create_resolves_and_stores_the_features(platform: Any, model: Any) -> None:
    view = platform.deployments.create(
        name="churn",
        model="churn",
        version="1",
        runtime="sklearn",
        actor=ACTOR,
        features={"refs": ["avg_spend", "customer_stats:orders_7d", "days_since_signup"]},
    )
    assert view["features"] == {
        "refs": [f"customer_stats:{n}" for n in FEATURES],
        "entity_keys": ["customer_id"],
        "request_fields": [],
        "fill_value": None,
    }
    assert platform.deployments.feature_users(["orders_7d", "other"]) == {"orders_7d": ["churn"]}
    plain = platform.deployments.update("churn", features=None, actor=ACTOR)
    assert plain["features"] is None
    assert platform.deployments.feature_users(["orders_7d"]) == {}


def test_create_refuses_bad_features(platform: Any, model: Any) -> None:
    with pytest.raises(NotFoundError) as caught:
        platform.deployments.create(
            name="x",
            model="churn",
            version="1",
            actor=ACTOR,
            features={"refs": ["avg_spend", "no_such_feature", "nope:orders_7d"]},
        )
    assert "no_such_feature" in caught.value.message
    with pytest.raises(ValidationError, match="in this order"):  # the model's column order
        platform.deployments.create(
            name="x",
            model="churn",
            version="1",
            actor=ACTOR,
            features={"refs": ["orders_7d", "avg_spend", "days_since_signup"]},
        )
    with pytest.raises(ValidationError, match="misses join key"):
        _deploy(platform, "x", entity_keys=["user_id"])
    with pytest.raises(ValidationError, match="columns"):  # a request field the model lacks
        _deploy(platform, "x", request_fields=["amount"])
    assert platform.deployments.list()["items"] == []


# --- data plane -----------------------------------------------------------------------------


def test_predict_with_entity_keys_only(platform: Any, model: Any, plane: DataPlane) -> None:
    _deploy(platform)
    plane.start(wait=True)
    ids = [3, 17, 40, 1]
    answer = _ask(plane, "churn", {"entities": [{"customer_id": i} for i in ids]})
    assert answer.status == 200
    got = orjson.loads(answer.body)
    frame = _frame().set_index("customer_id").loc[ids, FEATURES]
    assert got["predictions"] == model.predict(frame).tolist()
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(frame), rtol=1e-12)
    # columns, MLflow records and CSV carry the same keys
    for body, ctype in [
        ({"entities": {"customer_id": ids}}, "application/json"),
        ({"dataframe_records": [{"customer_id": i} for i in ids]}, "application/json"),
        ({"inputs": {"customer_id": ids}}, "application/json"),
        (b"customer_id\n3\n17\n40\n1\n", "text/csv"),
        ({"instances": [{"customer_id": i} for i in ids]}, "application/json"),
        (
            {"inputs": [{"name": "customer_id", "shape": [4], "datatype": "INT64", "data": ids}]},
            "application/json",
        ),
    ]:
        other = orjson.loads(_ask(plane, "churn", body, ctype).body)
        if "outputs" in other:  # KServe v2 answers in tensors
            other = {"predictions": other["outputs"][0]["data"]}
        assert other["predictions"] == got["predictions"], body
    health = plane.health(plane.table.get("churn"))
    assert health["features"]["columns"] == FEATURES
    plane.inference_log.flush()
    records = _inference_rows(platform)
    first = next(r for r in records if r["inputs"]["entities"][0] == {"customer_id": 3})
    assert first["inputs"]["features"][0] == {n: float(frame.loc[3, n]) for n in FEATURES}
    assert first["prediction"] == got["predictions"]


def _inference_rows(platform: Any) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from mlrig.db.models import InferenceRequest as InferenceRecord

    with platform.db.session() as session:
        rows = session.scalars(select(InferenceRecord)).all()
        return [{"inputs": r.input_features, "prediction": r.prediction} for r in rows]


def test_missing_features_are_a_422_naming_rows(
    platform: Any, model: Any, plane: DataPlane
) -> None:
    _deploy(platform)
    plane.start(wait=True)
    with pytest.raises(ValidationError) as caught:
        _ask(plane, "churn", {"entities": [{"customer_id": 2}, {"customer_id": 999}]})
    error = caught.value
    assert "row 1 (customer_id=999)" in error.message
    assert error.details["missing"] == [
        {"row": 1, "entity": {"customer_id": 999}, "features": FEATURES}
    ]
    with pytest.raises(ValidationError, match="misses customer_id"):
        _ask(plane, "churn", {"entities": [{"client": 2}]})
    with pytest.raises(ValidationError, match="unknown field"):
        _ask(plane, "churn", {"entities": [{"customer_id": 2, "avg_spend": 1.0}]})
    with pytest.raises(ValidationError, match="send entity rows by name"):
        _ask(plane, "churn", {"inputs": [[1.0, 2.0, 3.0]]})
    with pytest.raises(ValidationError, match="no entities"):
        _ask(plane, "churn", {"entities": []})


def test_expired_values_are_missing_and_fill_value_fills(
    platform: Any, model: Any, plane: DataPlane
) -> None:
    old = NOW - timedelta(days=3)  # beyond the view's one-day TTL
    platform.online_store.write(
        "customer_stats",
        [OnlineRow(key=("500",), values=dict.fromkeys(FEATURES, 1.0), event_timestamp=old)],
    )
    _deploy(platform, fill_value={"avg_spend": 0.0, "orders_7d": 0, "days_since_signup": 1})
    plane.start(wait=True)
    answer = _ask(plane, "churn", {"entities": [{"customer_id": 500}, {"customer_id": 5}]})
    got = orjson.loads(answer.body)
    import pandas as pd

    frame = _frame().set_index("customer_id")
    expected = pd.DataFrame([[0.0, 0.0, 1.0], frame.loc[5, FEATURES].tolist()], columns=FEATURES)
    assert got["predictions"] == model.predict(expected).tolist()
    plane.inference_log.flush()
    logged = _inference_rows(platform)[-1]["inputs"]
    assert logged["filled"] == [FEATURES, []]


def test_plain_deployments_keep_the_plain_path(platform: Any, model: Any, plane: DataPlane) -> None:
    platform.deployments.create(name="plain", model="churn", version="1", actor=ACTOR)
    plane.start(wait=True)
    assert plane.table.get("plain").features is None
    row = _frame()[FEATURES].head(2).to_numpy().tolist()
    answer = _ask(plane, "plain", {"inputs": row})
    assert (
        orjson.loads(answer.body)["predictions"]
        == model.predict(_frame()[FEATURES].head(2)).tolist()
    )


def test_request_fields_follow_the_features(platform: Any, store_data: Any) -> None:
    from mlrig.registry.packaging import register_model

    frame = store_data.assign(amount=np.linspace(1, 50, len(store_data)))
    columns = [*FEATURES, "amount"]
    estimator = _train(frame, columns)
    register_model(platform, estimator, name="churn", actor=ACTOR, sample=frame[columns].head(5))
    _deploy(platform, request_fields=["amount"])
    plane = DataPlane(platform, load_wait_seconds=30.0)
    try:
        plane.start(wait=True)
        rows = [{"customer_id": 4, "amount": 99.5}, {"customer_id": 9, "amount": 0.5}]
        got = orjson.loads(_ask(plane, "churn", {"entities": rows}).body)
        import pandas as pd

        indexed = _frame().set_index("customer_id")
        expected = pd.DataFrame(
            [[*indexed.loc[r["customer_id"], FEATURES].tolist(), r["amount"]] for r in rows],
            columns=columns,
        )
        np.testing.assert_allclose(
            got["probabilities"], estimator.predict_proba(expected), rtol=1e-12
        )
        with pytest.raises(ValidationError, match="misses amount"):
            _ask(plane, "churn", {"entities": [{"customer_id": 4}]})
        with pytest.raises(ValidationError, match="not a number"):
            _ask(plane, "churn", {"entities": [{"customer_id": 4, "amount": "lots"}]})
    finally:
        plane.stop()


def test_a_changed_view_is_picked_up_and_a_used_feature_guarded(
    platform: Any, model: Any, plane: DataPlane, tmp_path: Path
) -> None:
    from mlrig.errors import ConflictError

    _deploy(platform)
    plane.start(wait=True)
    first = plane.table.get("churn").features
    assert first.requests[0][0].ttl_seconds == 86400
    view = platform.features.get_view("customer_stats")
    body = {
        "entities": ["customer"],
        "source": {"kind": "file", "uri": str(tmp_path / "customer_stats.parquet")},
        "features": [{"name": n, "type": "numerical"} for n in FEATURES],
        "ttl_seconds": 60,  # the rows written an hour ago are now expired
    }
    platform.features.update_view("customer_stats", body, actor=ACTOR)
    assert platform.features.get_view("customer_stats")["version"] > view["version"]
    plane.wait_refreshed(plane.request_refresh())
    second = plane.table.get("churn").features
    assert second is not first and second.requests[0][0].ttl_seconds == 60
    with pytest.raises(ValidationError, match="features are missing"):
        _ask(plane, "churn", {"entities": [{"customer_id": 3}]})
    # a type change of a feature the deployment uses is refused, naming it
    retyped = {
        **body,
        "features": [{"name": "avg_spend", "type": "categorical"}, *body["features"][1:]],
    }
    with pytest.raises(ConflictError, match="churn"):
        platform.features.update_view("customer_stats", retyped, actor=ACTOR)


def test_features_over_the_rest_api(platform: Any, model: Any) -> None:
    from fastapi.testclient import TestClient

    from mlrig.api import create_app

    with TestClient(create_app(platform)) as http:
        made = http.post(
            "/api/ml/deployments",
            json={
                "name": "churn",
                "model": "churn",
                "version": "1",
                "runtime": "sklearn",
                "features": {"refs": FEATURES, "fill_value": 0},
            },
        )
        assert made.status_code == 201, made.text
        assert made.json()["features"]["refs"] == [f"customer_stats:{n}" for n in FEATURES]
        unknown = http.post(
            "/api/ml/deployments",
            json={"name": "x", "model": "churn", "version": "1", "features": {"refs": ["nope"]}},
        )
        assert unknown.status_code == 404, unknown.text
        assert "nope" in unknown.json()["error"]["message"]
        bad = http.post(
            "/api/ml/deployments",
            json={"name": "x", "model": "churn", "version": "1", "features": {"refs": ["a b"]}},
        )
        assert bad.status_code == 422, bad.text
        answer = http.post(
            "/api/ml/deployments/churn/predict",
            json={"entities": [{"customer_id": 1}, {"customer_id": 12345}]},
        )
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 2  # the unknown customer filled with 0
        cleared = http.put("/api/ml/deployments/churn", json={"features": None})
        assert cleared.status_code == 200, cleared.text
        assert cleared.json()["features"] is None


@pytest.fixture
def ratio_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    import sys
    import textwrap

    from mlrig.features.ondemand import forget_functions

    (tmp_path / "serving_odfv.py").write_text(
        textwrap.dedent(
            """
            import pandas as pd

            def ratio(df):
                return pd.DataFrame({"spend_ratio": df["avg_spend"] / df["amount"]})
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    forget_functions()
    yield "serving_odfv"
    forget_functions()
    sys.modules.pop("serving_odfv", None)


def test_on_demand_features_from_request_values(
    platform: Any, store_data: Any, ratio_module: str
) -> None:
    """An on-demand feature over a stored feature (not asked for itself) and a request
    field: the row sends the key and the field, the model gets the computed value."""
    import pandas as pd

    from mlrig.registry.packaging import register_model

    platform.features.create_view(
        {
            "name": "spend",
            "kind": "on_demand",
            "function": f"{ratio_module}:ratio",
            "inputs": ["customer_stats:avg_spend"],
            "request_fields": {"amount": "numerical"},
            "features": [{"name": "spend_ratio", "type": "numerical"}],
        },
        actor=ACTOR,
    )
    columns = ["orders_7d", "spend_ratio"]
    frame = store_data.assign(spend_ratio=store_data["avg_spend"] / 10.0)
    estimator = _train(frame, columns)
    register_model(platform, estimator, name="churn", actor=ACTOR, sample=frame[columns].head(5))
    made = platform.deployments.create(
        name="churn",
        model="churn",
        version="1",
        runtime="sklearn",
        actor=ACTOR,
        features={"refs": ["orders_7d", "spend:spend_ratio"]},
    )
    assert made["features"]["entity_keys"] == ["customer_id"]  # from the input's view
    plane = DataPlane(platform, load_wait_seconds=30.0)
    try:
        plane.start(wait=True)
        assert plane.table.get("churn").features.ondemand_fields == ("amount",)
        rows = [{"customer_id": 6, "amount": 4.0}, {"customer_id": 11, "amount": 20.0}]
        store = platform.online_store
        reads: list[tuple[str, list[str]]] = []
        real = store.read

        def counted(view: str, keys: Any, features: Any, **kw: Any) -> Any:
            reads.append((view, list(features)))
            return real(view, keys, features, **kw)

        store.read = counted  # type: ignore[method-assign]
        try:
            got = orjson.loads(_ask(plane, "churn", {"entities": rows}).body)
        finally:
            del store.read
        # one round trip for the view, the on-demand input read with the asked feature
        assert reads == [("customer_stats", ["orders_7d", "avg_spend"])]
        indexed = _frame().set_index("customer_id")
        expected = pd.DataFrame(
            [
                [
                    indexed.loc[r["customer_id"], "orders_7d"],
                    indexed.loc[r["customer_id"], "avg_spend"] / r["amount"],
                ]
                for r in rows
            ],
            columns=columns,
        )
        np.testing.assert_allclose(
            got["probabilities"], estimator.predict_proba(expected), rtol=1e-12
        )
        with pytest.raises(ValidationError, match="misses amount"):
            _ask(plane, "churn", {"entities": [{"customer_id": 6}]})
        plane.inference_log.flush()
        logged = _inference_rows(platform)[-1]["inputs"]
        assert logged["features"][0]["spend_ratio"] == pytest.approx(expected.iloc[0, 1])
    finally:
        plane.stop()


@pytest.mark.parametrize("backend", ["sql", "redis"])
def test_feature_backed_predict_on_each_store_and_database(
    tmp_path: Path, db_url: str, database: Any, backend: str
) -> None:
    """The same deployment over the sql store (SQLite, PostgreSQL) and Redis: the model
    gets the stored values, an unknown key is a 422."""
    import uuid

    from mlrig.registry.packaging import register_model

    options: dict[str, Any] = {"backend": backend}
    prefix = f"mlrig-test:{uuid.uuid4().hex[:12]}:"
    if backend == "redis":
        pytest.importorskip("redis")
        options["redis"] = {"url": "redis://127.0.0.1:6379/0", "prefix": prefix}
    plat = make_platform(
        tmp_path / "home",
        database={"url": db_url},
        auth={"enabled": False},
        serving={"refresh_seconds": 0.1},
        datasets={"allowed_roots": [str(tmp_path)]},
        features=options,
    )
    plane = DataPlane(plat, load_wait_seconds=30.0)
    try:
        frame = _store_data(plat, tmp_path)
        estimator = _train(frame, FEATURES)
        register_model(plat, estimator, name="churn", actor=ACTOR, sample=frame[FEATURES].head(5))
        _deploy(plat)
        plane.start(wait=True)
        ids = [8, 2, 33]
        got = orjson.loads(_ask(plane, "churn", {"entities": {"customer_id": ids}}).body)
        expected = frame.set_index("customer_id").loc[ids, FEATURES]
        np.testing.assert_allclose(
            got["probabilities"], estimator.predict_proba(expected), rtol=1e-12
        )
        with pytest.raises(ValidationError, match="customer_id=77777"):
            _ask(plane, "churn", {"entities": [{"customer_id": 77777}]})
    finally:
        plane.stop()
        if backend == "redis":
            plat.online_store.delete_view("customer_stats")
        plat.close()


def test_an_unreachable_online_store_is_a_503_naming_it(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    from mlrig.contracts.online_store import OnlineStoreError
    from mlrig.registry.packaging import register_model

    plat = make_platform(
        tmp_path / "home",
        auth={"enabled": False},
        datasets={"allowed_roots": [str(tmp_path)]},
        features={
            "backend": "redis",
            "redis": {"url": "redis://127.0.0.1:1/0", "socket_timeout": 1},
        },
    )
    plane = DataPlane(plat, load_wait_seconds=30.0)
    try:
        frame = _frame()
        path = tmp_path / "customer_stats.parquet"
        frame.to_parquet(path)
        plat.features.create_entity({"name": "customer", "join_keys": ["customer_id"]}, actor=ACTOR)
        plat.features.create_view(
            {
                "name": "customer_stats",
                "entities": ["customer"],
                "source": {"kind": "file", "uri": str(path)},
                "features": [{"name": n, "type": "numerical"} for n in FEATURES],
            },
            actor=ACTOR,
        )
        register_model(
            plat, _train(frame, FEATURES), name="churn", actor=ACTOR, sample=frame[FEATURES].head(5)
        )
        _deploy(plat)
        plane.start(wait=True)
        with pytest.raises(OnlineStoreError) as caught:
            _ask(plane, "churn", {"entities": [{"customer_id": 1}]})
        assert caught.value.http_status == 503
        assert "127.0.0.1:1" in caught.value.message
    finally:
        plane.stop()
        plat.close()


def test_pii_features_reach_the_model_but_are_masked_in_the_log(
    platform: Any, store_data: Any, tmp_path: Path
) -> None:
    import hashlib
    import hmac
    import json

    from mlrig.registry.packaging import register_model

    frame = store_data.assign(income=np.linspace(1000, 9000, len(store_data)))
    path = tmp_path / "private.parquet"
    frame[["customer_id", "event_timestamp", "income"]].to_parquet(path)
    platform.features.create_view(
        {
            "name": "private",
            "entities": ["customer"],
            "source": {"kind": "file", "uri": str(path)},
            "features": [{"name": "income", "type": "numerical", "tags": ["pii"]}],
        },
        actor=ACTOR,
    )
    platform.online_store.write(
        "private",
        [
            OnlineRow((str(int(r.customer_id)),), {"income": float(r.income)}, r.event_timestamp)
            for r in frame.itertuples()
        ],
    )
    columns = ["avg_spend", "income"]
    estimator = _train(frame, columns)
    register_model(platform, estimator, name="churn", actor=ACTOR, sample=frame[columns].head(5))
    platform.deployments.create(
        name="churn",
        model="churn",
        version="1",
        runtime="sklearn",
        actor=ACTOR,
        features={"refs": ["avg_spend", "private:income"]},
    )
    plane = DataPlane(platform, load_wait_seconds=30.0)
    try:
        plane.start(wait=True)
        got = orjson.loads(_ask(plane, "churn", {"entities": [{"customer_id": 5}]}).body)
        row = frame.set_index("customer_id").loc[[5], columns]
        np.testing.assert_allclose(got["probabilities"], estimator.predict_proba(row), rtol=1e-12)
        plane.inference_log.flush()
        logged = _inference_rows(platform)[-1]["inputs"]["features"][0]
    finally:
        plane.stop()
    income = float(row.loc[5, "income"])
    # the installation's keyed mask, as readers without read_pii see it
    key = platform.features.pii_mask_key
    expected = hmac.new(key, json.dumps(income).encode(), hashlib.sha256).hexdigest()
    assert logged["income"] == expected
    assert logged["avg_spend"] == float(row.loc[5, "avg_spend"])  # not PII: as is
