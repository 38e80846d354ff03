"""InferenceLogger: buffered, sampled, bounded writes of ``inference_requests``, on SQLite
and PostgreSQL (``database`` runs each test on both), through real outages and locks."""

from __future__ import annotations

import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from mlrig.db import Database
from mlrig.db.models import InferenceRequest, ModelDeployment
from mlrig.hooks import Hooks, get_plugin_manager, hookimpl
from mlrig.serving.inference_log import InferenceLogger, dump_json

SAFETY_S = 60  # bound on every wait: a hang fails the test instead of blocking the run


def _deployment(db: Database, name: str = "churn") -> str:
    with db.session() as session:
        row = ModelDeployment(name=f"{name}-{uuid.uuid4().hex[:6]}", version="1")
        session.add(row)
        session.flush()
        return str(row.id)


def _rows(db: Database) -> list[InferenceRequest]:
    with db.session() as session:
        return list(session.scalars(select(InferenceRequest).order_by(InferenceRequest.timestamp)))


def _count(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(InferenceRequest)) or 0)


def _record(logger: InferenceLogger, deployment: str, request_id: str | None = None, **kw: Any):
    fields: dict[str, Any] = {
        "inputs": [[1.0, 2.0, 3.0]],
        "prediction": [1],
        "confidence": 0.75,
        "latency_ms": 0.4,
        "model_version_id": None,
        "variant": "primary",
    }
    fields.update(kw)
    return logger.record(deployment_id=deployment, request_id=request_id, **fields)


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


class _Served:
    """A hook plugin collecting the ``predictions_served`` events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    @hookimpl
    def mlrig_predictions_served(self, event: dict[str, Any]) -> None:
        self.events.append(event)


def _hooks() -> tuple[Hooks, _Served]:
    pm = get_plugin_manager(load_entrypoints=False)
    served = _Served()
    pm.register(served, name="served")
    return Hooks(pm), served


# --- writes ---------------------------------------------------------------------------


def test_batches_are_written_with_their_fields(database: Database) -> None:
    deployment = _deployment(database)
    version = str(uuid.uuid4())
    hooks, served = _hooks()
    logger = InferenceLogger(
        database, sample_rate=1.0, max_buffer=1000, flush_seconds=3600, hooks=hooks, batch_size=10
    )
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    x = np.array([[0.5, float("nan"), 2.0]])
    for i in range(35):
        assert _record(
            logger,
            deployment,
            f"r{i}",
            inputs=x,
            prediction=np.array([i % 2]),
            confidence=np.float64(0.9),
            latency_ms=1.6,
            model_version_id=version,
            variant="canary" if i == 0 else "primary",
        )
    assert logger.pending == 35 and _count(database) == 0  # nothing written on record()
    assert logger.flush()
    assert [e["count"] for e in served.events] == [10, 10, 10, 5]  # one event per batch
    assert logger.written == 35 and logger.pending == 0
    rows = _rows(database)
    assert len(rows) == 35
    first = next(r for r in rows if r.request_id == "r0")
    assert first.input_features == [[0.5, None, 2.0]]  # NaN has no JSON form: null
    assert first.prediction == [0]
    assert first.confidence_score == pytest.approx(0.9)
    assert first.latency_ms == 2
    assert first.variant == "canary"
    assert str(first.deployment_id) == deployment
    assert str(first.model_version_id) == version
    assert first.timestamp.tzinfo is not None
    assert before <= first.timestamp <= datetime.now(timezone.utc) + timedelta(seconds=1)
    event = served.events[0]
    assert event["deployment_id"] == deployment
    assert event["latency_ms_p50"] == pytest.approx(1.6)
    assert event["records"][0]["inputs"] == [[0.5, None, 2.0]]


def test_a_duplicate_request_id_is_written_once(database: Database) -> None:
    deployment = _deployment(database)
    other = _deployment(database, "other")
    logger = InferenceLogger(database, sample_rate=1.0, max_buffer=100, flush_seconds=3600)
    for request_id in ("a", "a", "b", "a", None, None):  # duplicates in one batch
        _record(logger, deployment, request_id)
    _record(logger, other, "a")  # the same id for another deployment is another request
    assert logger.flush()
    _record(logger, deployment, "b")  # ... and in a later batch
    assert logger.flush()
    rows = _rows(database)
    keys = sorted((str(r.deployment_id), r.request_id or "") for r in rows)
    assert keys == sorted(
        [(deployment, "a"), (deployment, "b"), (deployment, ""), (deployment, ""), (other, "a")]
    )
    assert logger.written == 5 and logger.duplicates == 3


def test_a_row_the_database_refuses_is_given_up_alone(database: Database) -> None:
    deployment = _deployment(database)
    logger = InferenceLogger(database, sample_rate=1.0, max_buffer=100, flush_seconds=3600)
    _record(logger, deployment, "good-1")
    _record(logger, str(uuid.uuid4()), "no-such-deployment")  # foreign key violation
    _record(logger, deployment, "good-2", prediction=["a\x00b"])  # NUL: removed, not fatal
    _record(logger, ["not", "an", "id"], "unconvertible")  # type: ignore[arg-type]
    assert logger.flush()
    assert sorted(r.request_id for r in _rows(database)) == ["good-1", "good-2"]
    assert logger.failed == 2 and logger.written == 2 and logger.pending == 0
    assert [r.prediction for r in _rows(database) if r.request_id == "good-2"] == [["ab"]]


def test_stop_flushes_what_is_waiting(database: Database) -> None:
    deployment = _deployment(database)
    logger = InferenceLogger(database, sample_rate=1.0, max_buffer=100, flush_seconds=3600)
    logger.start()
    for i in range(7):
        _record(logger, deployment, f"s{i}")
    logger.stop()
    assert _count(database) == 7
    assert logger.stats()["pending"] == 0 and logger.dropped == 0


def test_the_writer_thread_writes_on_its_own(database: Database) -> None:
    deployment = _deployment(database)
    with InferenceLogger(database, sample_rate=1.0, max_buffer=100, flush_seconds=0.05) as logger:
        for i in range(3):
            _record(logger, deployment, f"t{i}")
        _wait(lambda: logger.written == 3, "the background write")
    assert _count(database) == 3


def test_a_full_batch_wakes_the_writer_early(database: Database) -> None:
    deployment = _deployment(database)
    logger = InferenceLogger(
        database, sample_rate=1.0, max_buffer=100, flush_seconds=3600, batch_size=5
    )
    with logger:
        for i in range(5):
            _record(logger, deployment, f"w{i}")
        _wait(lambda: logger.written == 5, "the write of a full batch")  # not in an hour


def test_a_failing_hook_does_not_stop_the_writes(database: Database) -> None:
    deployment = _deployment(database)
    pm = get_plugin_manager(load_entrypoints=False)

    class Broken:
        @hookimpl
        def mlrig_predictions_served(self, event: dict[str, Any]) -> None:
            raise RuntimeError("plugin bug")

    pm.register(Broken(), name="broken")
    logger = InferenceLogger(
        database, sample_rate=1.0, max_buffer=100, flush_seconds=3600, hooks=Hooks(pm)
    )
    _record(logger, deployment, "h1")
    assert logger.flush()
    _record(logger, deployment, "h2")
    assert logger.flush()
    assert _count(database) == 2 and logger.pending == 0


def test_many_rows_with_duplicates_count_right(database: Database) -> None:
    # over SQLite's multi-row statement size (99), with stored and repeated request ids
    deployment = _deployment(database)
    logger = InferenceLogger(
        database, sample_rate=1.0, max_buffer=10_000, flush_seconds=3600, batch_size=1000
    )
    for i in range(150):
        _record(logger, deployment, f"first-{i}")
    assert logger.flush()
    for i in range(250):  # 100 of these were stored by the first flush
        _record(logger, deployment, f"first-{i}" if i < 100 else f"second-{i}")
    _record(logger, deployment)  # no request id: never a duplicate
    assert logger.flush()
    assert _count(database) == 150 + 150 + 1
    assert logger.written == 301 and logger.duplicates == 100 and logger.pending == 0


def test_buffered_records_hold_no_container() -> None:
    # the cyclic GC untracks a tuple of atomic values: thousands of waiting records then
    # cost the serving process's collections nothing (numpy inputs, list predictions)
    import gc

    logger = InferenceLogger(None, sample_rate=1.0, max_buffer=100, flush_seconds=3600)  # type: ignore[arg-type]
    _record(logger, "d", "r1", inputs=np.arange(6.0).reshape(2, 3), prediction=[0, 1])
    _record(logger, "d", "r2", inputs={"a": [1.5, float("nan")]}, prediction=np.int64(3))
    gc.collect()
    assert [gc.is_tracked(entry) for entry in logger._buffer] == [False, False]
    assert [entry[2:4] for entry in logger._buffer] == [
        ("[[0.0,1.0,2.0],[3.0,4.0,5.0]]", "[0,1]"),
        ('{"a":[1.5,null]}', "3"),
    ]


def test_records_from_many_threads_are_all_kept() -> None:
    logger = InferenceLogger(None, sample_rate=1.0, max_buffer=100_000, flush_seconds=3600)  # type: ignore[arg-type]
    barrier = threading.Barrier(8)

    def serve() -> None:
        barrier.wait()
        for _ in range(2_000):
            _record(logger, "d")

    threads = [threading.Thread(target=serve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SAFETY_S)
    assert logger.pending == 16_000 and logger.dropped == 0


# --- sampling -------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.05, 0.3, 0.9])
def test_sampling_keeps_the_configured_share(rate: float) -> None:
    n = 20_000
    logger = InferenceLogger(None, sample_rate=rate, max_buffer=n, flush_seconds=3600, seed=7)  # type: ignore[arg-type]
    kept = sum(bool(_record(logger, "d")) for _ in range(n))
    # binomial: 4 standard deviations (a fixed seed makes it deterministic anyway)
    assert abs(kept - rate * n) <= 4 * math.sqrt(n * rate * (1 - rate))
    assert kept + logger.sampled_out == n and logger.pending == kept
    again = InferenceLogger(None, sample_rate=rate, max_buffer=n, flush_seconds=3600, seed=7)  # type: ignore[arg-type]
    assert sum(bool(_record(again, "d")) for _ in range(n)) == kept  # the seed decides


def test_sampling_rates_zero_and_one_are_exact() -> None:
    none = InferenceLogger(None, sample_rate=0.0, max_buffer=10, flush_seconds=1)  # type: ignore[arg-type]
    every = InferenceLogger(None, sample_rate=1.0, max_buffer=1000, flush_seconds=1)  # type: ignore[arg-type]
    assert not any(_record(none, "d") for _ in range(500))
    assert all(_record(every, "d") for _ in range(500))
    assert none.sampled_out == 500 and every.sampled_out == 0


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_a_bad_sampling_rate_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        InferenceLogger(None, sample_rate=rate, max_buffer=10, flush_seconds=1)  # type: ignore[arg-type]


# --- a stuck or failing database --------------------------------------------------------


@contextmanager
def _table_locked(db: Database) -> Iterator[None]:
    """Another connection holds a lock that makes every insert wait."""
    if db.dialect == "sqlite":
        conn = sqlite3.connect(db.url.database, timeout=5, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    else:
        import psycopg

        url = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url) as conn:
            conn.execute("LOCK TABLE inference_requests IN ACCESS EXCLUSIVE MODE")
            try:
                yield
            finally:
                conn.rollback()


def test_a_full_buffer_drops_and_counts_without_blocking(database: Database) -> None:
    deployment = _deployment(database)
    drops: list[int] = []
    logger = InferenceLogger(
        database, sample_rate=1.0, max_buffer=20, flush_seconds=0.02, on_drop=drops.append
    )
    results: list[bool] = []
    with _table_locked(database):
        logger.start()
        assert _record(logger, deployment, "first")
        _wait(lambda: logger.stats()["pending"] == 1 and not logger._buffer, "the writer to wait")

        def serve() -> None:  # the request path, while the writer is stuck on the lock
            results.extend(_record(logger, deployment, f"r{i}") for i in range(60))

        requests = threading.Thread(target=serve)
        requests.start()
        requests.join(SAFETY_S)
        assert not requests.is_alive(), "record() blocked behind the stuck writer"
        assert results.count(True) == 19  # the held row counts against the bound
        assert logger.dropped == 41 and sum(drops) == 41 and logger.pending == 20
    logger.stop()
    assert _count(database) == 20 and logger.written == 20


@contextmanager
def _outage(db: Database, admin_url: str | None) -> Iterator[None]:
    """The database stops answering the logger (PostgreSQL: refuses connections and
    drops the open ones; SQLite: the table is gone), then comes back."""
    if db.dialect == "sqlite":
        conn = sqlite3.connect(db.url.database, timeout=30, isolation_level=None)
        conn.execute("ALTER TABLE inference_requests RENAME TO inference_requests_away")
        try:
            yield
        finally:
            conn.execute("ALTER TABLE inference_requests_away RENAME TO inference_requests")
            conn.close()
    else:
        import psycopg

        assert admin_url is not None
        name = db.url.database
        admin = str(admin_url).replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            try:
                yield
            finally:
                conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


@pytest.fixture
def admin_url(database: Database, request: pytest.FixtureRequest) -> str | None:
    if database.dialect == "postgresql":
        return str(request.getfixturevalue("postgres_admin_url"))
    return None


def test_records_survive_an_outage_and_are_written_once_it_ends(
    database: Database, admin_url: str | None
) -> None:
    deployment = _deployment(database)
    logger = InferenceLogger(database, sample_rate=1.0, max_buffer=1000, flush_seconds=0.02)
    logger.start()
    try:
        with _outage(database, admin_url):
            for i in range(30):
                assert _record(logger, deployment, f"o{i}")
            _wait(lambda: logger.last_error is not None, "a failed write")
            time.sleep(1.5)
            # back-off: 0.1 s doubling (with jitter), not an attempt per 20 ms flush
            assert 1 <= logger.consecutive_failures <= 8
            for i in range(30, 50):  # still accepted while the database is away
                assert _record(logger, deployment, f"o{i}")
            assert logger.written == 0 and logger.pending == 50
        _wait(lambda: logger.written == 50, "the held rows to be written")
    finally:
        logger.stop()
    rows = _rows(database)
    assert sorted(r.request_id for r in rows) == sorted(f"o{i}" for i in range(50))
    assert logger.dropped == 0 and logger.failed == 0


def test_stop_during_an_outage_counts_what_is_lost(
    database: Database, admin_url: str | None
) -> None:
    deployment = _deployment(database)
    drops: list[int] = []
    logger = InferenceLogger(
        database, sample_rate=1.0, max_buffer=100, flush_seconds=3600, on_drop=drops.append
    )
    for i in range(4):
        _record(logger, deployment, f"l{i}")
    with _outage(database, admin_url):
        logger.stop(timeout=0.3)
    assert logger.dropped == 4 and logger.pending == 0 and _count(database) == 0
    assert drops == [4]  # exported like the drops of a full buffer


# --- conversions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (np.array([[1.5, np.inf]], dtype=np.float32), "[[1.5,null]]"),
        (np.array([[1, 2]], dtype=np.int64)[:, ::-1], "[[2,1]]"),  # not contiguous
        ([np.float64(2.5), np.int32(3), float("nan")], "[2.5,3,null]"),
        (("a", b"b"), '["a","b"]'),
        (np.array(["x", "y"]), '["x","y"]'),
        ("\ud800", None),  # a lone surrogate: not storable, not fatal
        (None, None),
    ],
)
def test_values_are_stored_as_plain_json(value: Any, stored: str | None) -> None:
    assert dump_json(value) == stored
