"""The data plane in-process (ASGI calls, no sockets): rolling updates under load, canary
split and shadow copies, failures to load, a database outage, overload, and the small
parts (traffic split, response cache). Also prints the app's per-request overhead.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from mlrig.serving.dataplane import DataPlane, create_app
from mlrig.serving.routing import TrafficSplit
from mlrig.serving.table import ResponseCache
from mlrig.testing.fixtures import make_platform
from mlrig.testing.serving import (
    ACTOR,
    breast_cancer_data,
    breast_cancer_estimator,
    register_breast_cancer_model,
)

ROW = orjson.dumps({"inputs": breast_cancer_data().x[:1].tolist()})


async def call(
    app: Any, method: str, path: str, body: bytes = b"", headers: list[Any] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request through the ASGI app: (status, headers, body)."""
    out: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            out["body"] += message.get("body", b"")

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *(headers or [])],
    }
    await app(scope, receive, send)
    return out["status"], out["headers"], out["body"]


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Any]:
    plat = make_platform(
        tmp_path / "home", auth={"enabled": False}, serving={"refresh_seconds": 0.1}
    )
    yield plat
    plat.close()


@pytest.fixture
def two_versions(platform: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Versions 1 and 2 of "bc" (other regularisation: other probabilities)."""
    return register_breast_cancer_model(platform), register_breast_cancer_model(platform, variant=1)


@pytest.fixture
def plane(platform: Any) -> Iterator[DataPlane]:
    dataplane = DataPlane(platform)
    yield dataplane
    dataplane.stop()


def _proba(variant: int) -> np.ndarray:
    return breast_cancer_estimator(variant).predict_proba(breast_cancer_data().x[:1])


# --- rolling update ---------------------------------------------------------------------


def test_rolling_update_under_load_fails_no_request(
    platform: Any, two_versions: Any, plane: DataPlane
) -> None:
    platform.lifecycle.set_alias("bc", "champion", "1", actor=ACTOR)
    platform.deployments.create(name="bc", model="bc", alias="champion", actor=ACTOR)
    app = create_app(platform, dataplane=plane)
    plane.start(wait=True)
    answers: list[tuple[int, str | None, float]] = []

    async def client(stop: asyncio.Event) -> None:
        while not stop.is_set():
            status, _, body = await call(app, "POST", "/api/ml/deployments/bc/predict", ROW)
            doc = orjson.loads(body)
            version = doc.get("version") if status == 200 else None
            answers.append((status, version, doc.get("probabilities", [[0]])[0][0]))
            await asyncio.sleep(0)

    async def scenario() -> None:
        stop = asyncio.Event()
        clients = [asyncio.create_task(client(stop)) for _ in range(8)]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(platform.lifecycle.set_alias, "bc", "champion", "2", actor=ACTOR)
        deadline = time.monotonic() + 60
        while sum(1 for a in answers[-50:] if a[1] == "2") < 50:
            assert time.monotonic() < deadline, "the new version never took the traffic"
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*clients)

    asyncio.run(scenario())
    statuses = Counter(a[0] for a in answers)
    assert statuses == {200: len(answers)}, statuses  # zero failed requests
    versions = Counter(a[1] for a in answers)
    assert versions["1"] > 0 and versions["2"] > 0
    first_new = next(i for i, a in enumerate(answers) if a[1] == "2")
    # once the switch happened, only the few requests already queued on v1 answer from it
    assert sum(1 for a in answers[first_new:] if a[1] == "1") <= 8
    new = [a[2] for a in answers if a[1] == "2"]
    assert np.allclose(new, _proba(1)[0][0], atol=1e-5)
    # the old version is closed once its requests ended
    deadline = time.monotonic() + 15
    while plane.stats.retired < 1:
        assert time.monotonic() < deadline, "the replaced version was never closed"
        time.sleep(0.05)
    assert platform.deployments.get("bc")["status"] == "active"


# --- canary and shadow ------------------------------------------------------------------


def test_canary_split_and_sticky_client_key(
    platform: Any, two_versions: Any, plane: DataPlane
) -> None:
    platform.deployments.create(
        name="bc",
        model="bc",
        version="1",
        traffic=[{"version": "2", "percent": 30}],
        actor=ACTOR,
    )
    app = create_app(platform, dataplane=plane)
    plane.refresh()

    async def run() -> tuple[Counter[str], set[str]]:
        seen: Counter[str] = Counter()
        for _ in range(400):
            _, _, body = await call(app, "POST", "/api/ml/deployments/bc/predict", ROW)
            seen[orjson.loads(body)["version"]] += 1
        sticky = set()
        for _ in range(30):
            key = [(b"x-mlrig-client-key", b"customer-7")]
            _, _, body = await call(app, "POST", "/api/ml/deployments/bc/predict", ROW, key)
            sticky.add(orjson.loads(body)["version"])
        return seen, sticky

    seen, sticky = asyncio.run(run())
    assert set(seen) == {"1", "2"}
    assert 0.18 < seen["2"] / 400 < 0.42, seen
    assert len(sticky) == 1


def test_shadow_gets_a_copy_logged_never_returned(
    platform: Any, two_versions: Any, plane: DataPlane
) -> None:
    from sqlalchemy import select

    from mlrig.db.models.serving import InferenceRequest

    _, v2 = two_versions
    platform.deployments.create(name="bc", model="bc", version="1", shadow="2", actor=ACTOR)
    app = create_app(platform, dataplane=plane)
    plane.start(wait=True)

    async def run() -> list[dict[str, Any]]:
        out = []
        for i in range(5):
            body = orjson.dumps(
                {"inputs": breast_cancer_data().x[:1].tolist(), "request_id": f"r{i}"}
            )
            _, _, answer = await call(app, "POST", "/api/ml/deployments/bc/predict", body)
            out.append(orjson.loads(answer))
        await asyncio.sleep(0.2)  # the shadow copies run after the answers
        return out

    answers = asyncio.run(run())
    assert {a["version"] for a in answers} == {"1"}
    assert np.allclose(answers[0]["probabilities"], _proba(0), atol=1e-5)
    deadline = time.monotonic() + 20
    while True:
        with platform.db.session() as session:
            rows = session.execute(
                select(InferenceRequest.variant, InferenceRequest.model_version_id)
            ).all()
        variants = Counter(r[0] for r in rows)
        if variants["primary"] >= 5 and variants["shadow"] >= 5:
            break
        assert time.monotonic() < deadline, variants
        time.sleep(0.1)
    shadow_versions = {str(r[1]) for r in rows if r[0] == "shadow"}
    assert shadow_versions == {v2["id"]}


# --- failures -----------------------------------------------------------------------------


def test_a_version_that_cannot_load_fails_with_a_reason(
    platform: Any, two_versions: Any, plane: DataPlane, tmp_path: Path
) -> None:
    platform.deployments.create(name="bc", model="bc", version="1", actor=ACTOR)
    shutil.rmtree(tmp_path / "home" / "artifacts")  # the stored files are gone
    app = create_app(platform, dataplane=plane)
    plane.refresh()
    view = platform.deployments.get("bc")
    assert view["status"] == "failed" and view["status_reason"]

    async def run() -> tuple[int, bytes, int]:
        status, _, body = await call(app, "POST", "/api/ml/deployments/bc/predict", ROW)
        ready, _, _ = await call(app, "GET", "/readyz")
        return status, body, ready

    status, body, ready = asyncio.run(run())
    assert status == 409
    assert orjson.loads(body)["error"]["code"] == "deployment_failed"
    assert ready == 200  # loaded what it could: a failed deployment is reported, not awaited


def test_a_failed_rolling_update_keeps_the_old_version(
    platform: Any, two_versions: Any, plane: DataPlane
) -> None:
    platform.deployments.create(name="bc", model="bc", version="1", actor=ACTOR)
    app = create_app(platform, dataplane=plane)
    plane.refresh()
    platform.deployments.update("bc", version="2", actor=ACTOR)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the runtime crashed")

    plane.loader.load = broken  # type: ignore[method-assign]
    plane.refresh()
    view = platform.deployments.get("bc")
    assert view["status"] == "failed"
    assert "still serving bc 1" in view["status_reason"]
    status, _, body = asyncio.run(call(app, "POST", "/api/ml/deployments/bc/predict", ROW))
    assert status == 200 and orjson.loads(body)["version"] == "1"


def test_a_database_outage_keeps_serving(
    platform: Any, two_versions: Any, plane: DataPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform.deployments.create(name="bc", model="bc", version="1", actor=ACTOR)
    app = create_app(platform, dataplane=plane)
    plane.refresh()

    def down() -> Any:
        raise ConnectionError("database unreachable")

    monkeypatch.setattr(platform.deployments, "snapshot", down)
    plane.refresh()
    assert plane.stats.refresh_errors == 1
    status, _, _ = asyncio.run(call(app, "POST", "/api/ml/deployments/bc/predict", ROW))
    assert status == 200


def test_overload_is_429_with_retry_after(
    platform: Any, two_versions: Any, plane: DataPlane
) -> None:
    from mlrig.serving.batcher import Overloaded

    platform.deployments.create(name="bc", model="bc", version="1", actor=ACTOR)
    app = create_app(platform, dataplane=plane)
    plane.refresh()

    async def full(x: Any) -> Any:
        raise Overloaded("the queue is full", retry_after=2)

    plane.table.states[0].routes[0].version.batcher.submit = full
    status, headers, body = asyncio.run(call(app, "POST", "/api/ml/deployments/bc/predict", ROW))
    assert status == 429 and headers["retry-after"] == "2"
    assert orjson.loads(body)["error"]["code"] == "overloaded"


def test_deleted_and_stopped_deployments_leave_the_table(
    platform: Any, two_versions: Any, plane: DataPlane
) -> None:
    platform.deployments.create(name="bc", model="bc", version="1", actor=ACTOR)
    app = create_app(platform, dataplane=plane)
    plane.refresh()
    platform.deployments.update("bc", status="inactive", actor=ACTOR)
    plane.refresh()
    status, _, _ = asyncio.run(call(app, "POST", "/api/ml/deployments/bc/predict", ROW))
    assert status == 404


def test_not_loaded_yet_is_503_with_retry_after(platform: Any, two_versions: Any) -> None:
    platform.deployments.create(name="bc", model="bc", version="1", actor=ACTOR)
    plane = DataPlane(platform)
    from mlrig.serving.table import DeploymentState, Table

    view = platform.deployments.get("bc")
    plane.table = Table.of([DeploymentState(view["id"], "bc", view, "r", [], None)], ready=False)
    app = create_app(platform, dataplane=plane)
    plane._started = True  # no refresh thread: the table stays as set
    status, headers, _ = asyncio.run(call(app, "POST", "/api/ml/deployments/bc/predict", ROW))
    assert status == 503 and headers["retry-after"] == "1"
    assert asyncio.run(call(app, "GET", "/readyz"))[0] == 503


# --- parts ------------------------------------------------------------------------------


def test_traffic_split_proportions() -> None:
    split = TrafficSplit(["primary", "a", "b"], [0, 10, 25])
    counts = Counter(split.choose() for _ in range(20_000))
    assert abs(counts["a"] / 20_000 - 0.10) < 0.02
    assert abs(counts["b"] / 20_000 - 0.25) < 0.02
    assert TrafficSplit(["only"], [100]).choose(b"key") == "only"
    assert len({split.choose(b"same") for _ in range(50)}) == 1


def test_response_cache_is_bounded_and_replays() -> None:
    async def run() -> None:
        cache = ResponseCache(max_size=3)
        for i in range(5):
            future = cache.start(f"r{i}", 1)
            cache.finish(f"r{i}", 1, future, b"answer %d" % i)
        assert len(cache) == 3
        assert cache.get("r0") is None
        assert cache.get("r4") == (1, b"answer 4")
        future = cache.start("x", 2)
        cache.fail("x", future, ValueError("boom"))
        assert cache.get("x") is None

    asyncio.run(run())


def test_per_request_overhead_in_process(
    platform: Any, two_versions: Any, plane: DataPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a benchmark (no assertion on speed): prints the event loop's CPU time per 1-row
    request through the ASGI app in-process (CPU time, not wall time: other processes on
    a busy machine do not count), beside a hand-written raw ASGI app calling the same
    ONNX session."""
    pytest.importorskip("onnxruntime")
    platform.deployments.create(name="bc", model="bc", version="1", actor=ACTOR)
    app = create_app(platform, dataplane=plane)
    plane.refresh()
    session = plane.table.states[0].routes[0].version.model.session
    name = session.get_inputs()[0].name

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        x = np.asarray(orjson.loads(message["body"])["inputs"], dtype=np.float32)
        labels, proba = session.run(None, {name: x})
        body = orjson.dumps({"predictions": labels.tolist(), "probabilities": proba.tolist()})
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def loop(target: Any, n: int) -> float:
        started = time.thread_time()
        for _ in range(n):
            status, _, _ = await call(target, "POST", "/api/ml/deployments/bc/predict", ROW)
            assert status == 200
        return (time.thread_time() - started) / n

    asyncio.run(loop(app, 200))
    ours = min(asyncio.run(loop(app, 1000)) for _ in range(3))
    baseline = min(asyncio.run(loop(raw, 1000)) for _ in range(3))
    with capsys.disabled():
        print(
            f"\nin-process CPU per 1-row request: data plane {ours * 1e6:.0f} us, "
            f"raw ASGI app on the same session {baseline * 1e6:.0f} us"
        )
    assert ours > 0 and baseline > 0


def test_garbage_never_gets_a_5xx(platform: Any, two_versions: Any, plane: DataPlane) -> None:
    """Random bytes, odd JSON and odd headers on every route: always an answer below 500,
    and the deployment still serves after."""
    import random

    platform.deployments.create(name="bc", model="bc", version="1", actor=ACTOR)
    app = create_app(platform, dataplane=plane)
    plane.refresh()
    rng = random.Random(7)
    row = breast_cancer_data().x[0].tolist()
    bodies = [
        b"",
        b"null",
        b"[]",
        b"\x00" * 10,
        b'{"inputs": "\\ud800"}',
        b'{"inputs": [[' + b"9" * 5000 + b"]]}",
        b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"inputs": [[1e999]]}',
        orjson.dumps({"inputs": [row], "request_id": "\u00e9" * 3}),
        orjson.dumps({"inputs": [[{"a": 1}] * 30]}),
        orjson.dumps({"instances": [row], "params": [1]}),
        orjson.dumps({"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}),
        orjson.dumps(
            {"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": row}]}
        ),
        orjson.dumps({"inputs": [{"name": "x", "shape": [-1], "datatype": "NOPE", "data": []}]}),
    ]
    bodies += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(60)]
    paths = [
        ("POST", "/api/ml/deployments/bc/predict"),
        ("POST", "/api/ml/deployments/bc/invocations"),
        ("POST", "/invocations"),
        ("POST", "/v2/models/bc/infer"),
        ("POST", "/v2/models/bc/versions/1/infer"),
        ("GET", "/v2/models/bc"),
        ("PUT", "/api/ml/deployments/bc/predict"),
        ("GET", "/api/ml/deployments/%00/health"),
    ]
    headers = [
        [],
        [(b"content-type", b"text/csv")],
        [(b"inference-header-content-length", b"3")],
        [(b"content-length", b"-1")],
        [(b"authorization", b"Bearer \xff")],
    ]

    async def run() -> list[int]:
        statuses = []
        for body in bodies:
            method, path = rng.choice(paths)
            status, _, answer = await call(app, method, path, body, rng.choice(headers))
            assert status < 500, (path, body[:80], answer[:300])
            statuses.append(status)
        status, _, _ = await call(app, "POST", "/api/ml/deployments/bc/predict", ROW)
        assert status == 200
        return statuses

    statuses = asyncio.run(run())
    assert set(statuses) - {200} and all(400 <= s < 500 or s == 200 for s in statuses)
