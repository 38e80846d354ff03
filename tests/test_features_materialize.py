"""Materialisation: a feature view over a Parquet file loaded into the online store in
increments from the watermark, through the real engine (the ``features-materialize``
trainer in a job process), TTL on read afterwards, statistics against pandas, and a
failing run that leaves the watermark where it was."""

import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from mlrig.engine.allocator import Capacity
from mlrig.engine.worker import Worker
from mlrig.errors import NotFoundError, ValidationError
from mlrig.features.materialize import materialize_view, watermark
from mlrig.features.online import read_online
from mlrig.security.service import Principal
from mlrig.testing.fixtures import make_platform

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

ACTOR = Principal(name="local", role="admin")
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)
FEATURES = ["conv_rate", "trips", "city"]


def _frame(seed=0, drivers=60, per_day=150):
    """Two days of driver rows: duplicates per key, ties broken by created time."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = 2 * per_day
    event = [T0 + timedelta(seconds=int(s)) for s in rng.integers(0, 2 * 86400, n)]
    lag = rng.integers(0, 60, n)
    frame = pd.DataFrame(
        {
            "driver_id": rng.integers(1, drivers + 1, n),
            "event_timestamp": event,
            "created": [e + timedelta(seconds=int(s)) for e, s in zip(event, lag, strict=True)],
            "conv_rate": rng.random(n).round(4),
            "trips": rng.integers(0, 500, n),
            "city": rng.choice(["paris", "rome", "oslo"], n),
        }
    )
    frame.loc[rng.choice(n, 10, replace=False), "conv_rate"] = None
    # an exact tie on the event time: the later created row is the correction
    frame.loc[n - 1, ["driver_id", "event_timestamp"]] = [frame.loc[0, "driver_id"], event[0]]
    frame.loc[n - 1, "created"] = frame.loc[0, "created"] + timedelta(seconds=5)
    return frame


def latest(frame, start, end):
    """The oracle of read_window: per driver, the last row with start <= ts < end."""
    window = frame[(frame.event_timestamp >= start) & (frame.event_timestamp < end)]
    window = window.sort_values(["event_timestamp", "created"], kind="stable")
    return window.groupby("driver_id").tail(1).set_index("driver_id")


@pytest.fixture
def platform(tmp_path):
    plat = make_platform(tmp_path / "home", datasets={"allowed_roots": [str(tmp_path)]})
    yield plat
    plat.close()


@pytest.fixture
def view(platform, tmp_path):
    frame = _frame()
    path = tmp_path / "drivers.parquet"
    frame.to_parquet(path)
    features = platform.features
    features.create_entity({"name": "driver", "join_keys": ["driver_id"]}, actor=ACTOR)
    features.create_view(
        {
            "name": "driver_stats",
            "entities": ["driver"],
            "source": {
                "kind": "file",
                "uri": str(path),
                "timestamp_field": "event_timestamp",
                "created_timestamp_field": "created",
            },
            "features": [
                {"name": "conv_rate", "type": "numerical"},
                {"name": "trips", "type": "numerical"},
                {"name": "city", "type": "categorical"},
            ],
            "ttl_seconds": 6 * 3600,
        },
        actor=ACTOR,
    )
    return frame, path


def _read(platform, frame, now):
    requests = platform.features.resolve(FEATURES)
    rows = [{"driver_id": int(d)} for d in sorted(frame.driver_id.unique())]
    return rows, *read_online(platform.online_store, requests, rows, now=now)


def _expected(frame, end, now, ttl=6 * 3600):
    best = latest(frame, frame.event_timestamp.min(), end)
    out = {}
    for driver, row in best.iterrows():
        if row.event_timestamp < now - timedelta(seconds=ttl):
            continue
        out[int(driver)] = {
            "conv_rate": None if pd.isna(row.conv_rate) else float(row.conv_rate),
            "trips": int(row.trips),
            "city": row.city,
        }
    return out


def _check_online(platform, frame, end, now):
    rows, values, missing = _read(platform, frame, now)
    expected = _expected(frame, end, now)
    for row, got, gone in zip(rows, values, missing, strict=True):
        want = expected.get(row["driver_id"])
        if want is None:
            assert got == dict.fromkeys(FEATURES) and gone == FEATURES, row
        else:
            assert got == want and gone == [], row
    return len(expected)


def _offline_ready():
    try:
        from mlrig.features.offline import read_window  # noqa: F401
    except ImportError:
        return False
    return True


needs_offline = pytest.mark.skipif(
    not _offline_ready(), reason="the offline store's read_window has not landed"
)

# --- the engine ------------------------------------------------------------------------


def run_worker(platform, timeout=180):
    # a lease long enough that a loaded machine cannot let it lapse (which runs the job twice)
    worker = Worker(platform, concurrency=1, capacity=Capacity(cpus=(0,)), lease_seconds=60)
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        return worker.run(stop=stop, exit_when_idle=True)
    finally:
        timer.cancel()


def _job(platform, experiment):
    done = platform.experiments.get(experiment["id"])
    metrics = (done.get("configuration") or {}).get("result", {}).get("metrics")
    return done, metrics


@needs_offline
def test_two_increments_through_the_engine(platform, view):
    frame, _ = view
    first = platform.features.materialize("driver_stats", end=T0 + DAY, actor=ACTOR)
    assert run_worker(platform) == 1
    done = platform.experiments.get(first["id"])
    assert done["status"] == "completed", done.get("status_detail")
    assert watermark(platform, "driver_stats") == T0 + DAY
    in_first = latest(frame, T0, T0 + DAY)
    stats = {s["feature"]: s for s in platform.features.statistics("driver_stats")["features"]}
    assert stats["trips"]["stats"]["count"] == len(in_first)
    _check_online(platform, frame, T0 + DAY, now=T0 + DAY)

    # the second increment starts at the watermark: only the second day's rows
    second = platform.features.materialize("driver_stats", end=T0 + 2 * DAY, actor=ACTOR)
    assert run_worker(platform) == 1
    done = platform.experiments.get(second["id"])
    assert done["status"] == "completed", done.get("status_detail")
    assert watermark(platform, "driver_stats") == T0 + 2 * DAY
    in_second = latest(frame, T0 + DAY, T0 + 2 * DAY)
    stats = {s["feature"]: s for s in platform.features.statistics("driver_stats")["features"]}
    trips = stats["trips"]
    assert trips["window_start"].startswith((T0 + DAY).isoformat()[:19])
    assert trips["stats"]["count"] == len(in_second)
    assert trips["stats"]["mean"] == pytest.approx(in_second.trips.mean())
    assert trips["job_id"] == str(second["id"])
    from mlrig.db.models import TrainingMetric

    with platform.db.session() as session:
        logged = {
            m.metric_name: m.metric_value
            for m in session.query(TrainingMetric).filter_by(experiment_id=uuid.UUID(second["id"]))
        }
    assert logged["rows"] == len(in_second)
    assert logged["rows_per_s"] > 0
    # every driver's newest row of both days is online, TTL honoured on read
    live = _check_online(platform, frame, T0 + 2 * DAY, now=T0 + 2 * DAY)
    assert 0 < live < frame.driver_id.nunique()
    later = _check_online(platform, frame, T0 + 2 * DAY, now=T0 + 2 * DAY + timedelta(hours=3))
    assert later < live
    assert _check_online(platform, frame, T0 + 2 * DAY, now=T0 + 3 * DAY) == 0


@needs_offline
def test_a_missing_file_fails_the_job_and_keeps_the_watermark(platform, view):
    _, path = view
    first = platform.features.materialize("driver_stats", end=T0 + DAY, actor=ACTOR)
    run_worker(platform)
    assert platform.experiments.get(first["id"])["status"] == "completed"
    path.unlink()
    failed = platform.features.materialize("driver_stats", end=T0 + 2 * DAY, actor=ACTOR)
    run_worker(platform)
    done = platform.experiments.get(failed["id"])
    assert done["status"] == "failed"
    assert "drivers.parquet" in done["status_detail"]
    assert watermark(platform, "driver_stats") == T0 + DAY


def test_bad_parameters_fail_at_once(platform, view):
    from mlrig.plugins.trainer_materialize import MaterializeTrainer

    trainer = MaterializeTrainer.from_options({}, where="trainers.features-materialize")
    for params, match in [
        ({"view": "driver_stats", "start": "2026-03-02", "end": "2026-03-01"}, "before start"),
        ({"view": "driver_stats", "end": "yesterday"}, "ISO-8601"),
        ({}, "needs the feature view's name"),
        ({"view": "driver_stats", "windows": 3}, "unknown: windows"),
    ]:
        with pytest.raises(ValidationError, match=match):
            trainer.check(params=params, dataset=None)
    experiment = platform.experiments.create(
        name="materialize-unknown",
        trainer="features-materialize",
        actor=ACTOR,
        hyperparameters={"view": "no_such_view"},
        max_attempts=3,
        start=True,
    )
    run_worker(platform)
    done = platform.experiments.get(experiment["id"])
    assert done["status"] == "failed"
    assert "no_such_view" in done["status_detail"]
    assert done["attempts"] == 1  # permanent: not retried


# --- materialize_view directly (a local window reader stands in for the offline store) ---


def _reader(frame):
    import pyarrow as pa

    calls = []

    def read(platform, spec, start, end):
        calls.append((start, end))
        lo = start or frame.event_timestamp.min()
        best = latest(frame, lo, end).reset_index()
        best = best.rename(columns={"created": "created_timestamp"})
        return pa.Table.from_pandas(best, preserve_index=False)

    read.calls = calls
    return read


def test_materialize_view_increments_and_rerun_is_idempotent(platform, view):
    frame, _ = view
    reader = _reader(frame)
    out = materialize_view(platform, "driver_stats", end=T0 + DAY, reader=reader)
    assert out["rows"] == len(latest(frame, T0, T0 + DAY))
    assert out["written"] == out["rows"]
    assert watermark(platform, "driver_stats") == T0 + DAY
    out = materialize_view(platform, "driver_stats", end=T0 + 2 * DAY, reader=reader)
    assert reader.calls[-1] == (T0 + DAY, T0 + 2 * DAY)
    assert out["rows"] == len(latest(frame, T0 + DAY, T0 + 2 * DAY))
    _check_online(platform, frame, T0 + 2 * DAY, now=T0 + 2 * DAY)
    # the same window again: nothing newer, nothing changes, the watermark stays
    again = materialize_view(
        platform, "driver_stats", start=T0 + DAY, end=T0 + 2 * DAY, reader=reader
    )
    assert again["rows"] == out["rows"]
    assert watermark(platform, "driver_stats") == T0 + 2 * DAY
    _check_online(platform, frame, T0 + 2 * DAY, now=T0 + 2 * DAY)
    # an older window does not move the watermark back
    materialize_view(platform, "driver_stats", start=T0, end=T0 + DAY, reader=reader)
    assert watermark(platform, "driver_stats") == T0 + 2 * DAY
    _check_online(platform, frame, T0 + 2 * DAY, now=T0 + 2 * DAY)


def test_statistics_recorded_match_pandas(platform, view):
    frame, _ = view
    materialize_view(platform, "driver_stats", end=T0 + DAY, reader=_reader(frame))
    best = latest(frame, T0, T0 + DAY)
    stats = {
        s["feature"]: s["stats"] for s in platform.features.statistics("driver_stats")["features"]
    }
    conv = best.conv_rate.astype("float64")
    assert (stats["conv_rate"]["count"], stats["conv_rate"]["nulls"]) == (
        conv.count(),
        conv.isna().sum(),
    )
    assert stats["conv_rate"]["mean"] == pytest.approx(conv.mean())
    assert stats["conv_rate"]["std"] == pytest.approx(conv.std())
    assert stats["conv_rate"]["quantiles"]["p50"] == pytest.approx(conv.median())
    assert stats["trips"]["min"] == best.trips.min() and stats["trips"]["max"] == best.trips.max()
    top = {t["value"]: t["count"] for t in stats["city"]["top"]}
    assert top == best.city.value_counts().to_dict()


def test_a_failed_write_leaves_the_watermark(platform, view, monkeypatch):
    frame, _ = view
    materialize_view(platform, "driver_stats", end=T0 + DAY, reader=_reader(frame))
    store = platform.online_store

    def broken(*args, **kwargs):
        raise RuntimeError("store went away")

    monkeypatch.setattr(store, "write", broken)
    with pytest.raises(RuntimeError, match="store went away"):
        materialize_view(platform, "driver_stats", end=T0 + 2 * DAY, reader=_reader(frame))
    assert watermark(platform, "driver_stats") == T0 + DAY


def test_refusals(platform, view):
    frame, _ = view
    with pytest.raises(ValidationError, match="is before start"):
        materialize_view(platform, "driver_stats", start=T0 + DAY, end=T0, reader=_reader(frame))
    with pytest.raises(NotFoundError):
        materialize_view(platform, "nope", end=T0, reader=_reader(frame))
