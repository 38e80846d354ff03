"""The tracking client (mlrig.start_run...): embedded and against a uvicorn server on
loopback, the same records both ways; how runs end; the metric buffer losing no point."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import mlrig
from mlrig.security import Principal
from mlrig.testing.fixtures import make_platform, serve
from mlrig.tracking import fluent, stores

TRACKING = {
    "flush_points": 500,
    "flush_seconds": 0.2,
    "heartbeat_interval_seconds": 0.5,
}


def _config(home: Path, **tracking: Any) -> Path:
    """An mlrig.toml for an embedded platform under ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    options = {**TRACKING, "spill_dir": str(home / "spill"), **tracking}
    lines = [
        "[database]",
        f'url = "sqlite:///{home / "mlrig.db"}"',
        "[storage]",
        'backend = "local"',
        "[storage.local]",
        f'root = "{home / "artifacts"}"',
        "[tracking]",
        *(f"{k} = {v!r}".replace("'", '"') for k, v in options.items()),
    ]
    path = home / "mlrig.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def clean_tracking(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No MLRIG_URL from outside, no set_tracking left over, no active run after."""
    monkeypatch.delenv("MLRIG_URL", raising=False)
    monkeypatch.delenv("MLRIG_TOKEN", raising=False)
    stores._configured = None
    yield
    fluent._end_all("completed", None)
    stores._configured = None


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_tracking: None) -> Path:
    """Runs go to an embedded platform (MLRIG_CONFIG); returns its config file."""
    config = _config(tmp_path / "embedded")
    monkeypatch.setenv("MLRIG_CONFIG", str(config))
    return config


def _server_platform(home: Path, db_url: str | None = None) -> Any:
    database = {"database": {"url": db_url}} if db_url else {}
    return make_platform(home, tracking={**TRACKING, "spill_dir": str(home / "spill")}, **database)


def _token(platform: Any) -> str:
    platform.security.create_user(name="scientist", role="developer")
    return platform.security.create_token(user="scientist")["token"]


@pytest.fixture
def remote(tmp_path: Path, clean_tracking: None) -> Iterator[tuple[Any, str, str]]:
    """A platform served by uvicorn on loopback; runs go to it (set_tracking)."""
    from mlrig.api import create_app

    platform = _server_platform(tmp_path / "server")
    token = _token(platform)
    with serve(create_app(platform)) as url:
        mlrig.set_tracking(url, token)
        yield platform, url, token
    platform.close()


def _records(platform: Any, run_id: str) -> dict[str, Any]:
    """What a run recorded, without ids and times."""
    view = platform.experiments.get(run_id)
    history = platform.experiments.metrics(run_id, fields=["steps", "values", "epochs", "kinds"])
    facts = view["reproducibility"]
    return {
        "name": view["name"].split("-")[0],
        "status": view["status"],
        "detail": view.get("status_detail"),
        "origin": view["origin"],
        "group": view["group"],
        "params": view["hyperparameters"],
        "tags": view["tags"],
        "metrics": history["metrics"],
        "datasets": facts.get("datasets"),
        "facts": sorted(facts),
        "artifacts": [
            (a["path"], a["size_bytes"]) for a in platform.experiments.list_run_artifacts(run_id)
        ],
    }


SCRIPT = textwrap.dedent(
    """
    import json, math, sys
    from pathlib import Path
    import mlrig

    Path("notes.txt").write_text("hello")
    with mlrig.start_run("churn", params={"lr": 0.1, "layers": [2, 3]}, tags={"team": "a"}) as run:
        mlrig.log_param("batch", 32)
        for step in range(300):
            run.log_metrics({"loss": 1 / (step + 1), "acc": step / 300}, step=step, kind="train")
        mlrig.log_metric("val_loss", math.nan, step=1, epoch=0, kind="validation")
        mlrig.log_metric("val_loss", math.inf, step=2, epoch=1, kind="validation")
        run.set_tags({"stage": "baseline"})
        run.log_artifact("notes.txt", artifact_path="docs")
        run.log_dataset([[1, 2], [3, 4]] and "data/train.csv", name="train")
        with mlrig.start_run(nested=True, name="child") as child:
            child.log_metric("inner", 1.5, step=0)
    ids = [run.id, child.id]
    try:
        with mlrig.start_run("churn", name="broken") as bad:
            bad.log_metric("loss", 0.5, step=0)
            raise ValueError("diverged at step 3")
    except ValueError:
        ids.append(bad.id)
    print(json.dumps(ids))
    """
)


def _run_script(cwd: Path, env: dict[str, str]) -> list[str]:
    import json

    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "script.py").write_text(SCRIPT)
    full = {k: v for k, v in os.environ.items() if not k.startswith("MLRIG_")}
    proc = subprocess.run(
        [sys.executable, "script.py"],
        cwd=cwd,
        env={**full, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_script_records_the_same_embedded_and_against_a_server(
    tmp_path: Path, clean_tracking: None
) -> None:
    from mlrig.api import create_app

    config = _config(tmp_path / "embedded")
    local_ids = _run_script(tmp_path / "work-local", {"MLRIG_CONFIG": str(config)})
    server = _server_platform(tmp_path / "server")
    token = _token(server)
    with serve(create_app(server)) as url:
        remote_ids = _run_script(tmp_path / "work-remote", {"MLRIG_URL": url, "MLRIG_TOKEN": token})
    local = make_platform(tmp_path / "embedded")
    try:
        for local_id, remote_id in zip(local_ids, remote_ids, strict=True):
            assert _records(local, local_id) == _records(server, remote_id)
        run, _child, bad = (_records(server, i) for i in remote_ids)
        views = [server.experiments.get(i) for i in remote_ids]
    finally:
        local.close()
        server.close()
    assert run["status"] == "completed" and run["origin"] == "tracking" and run["group"] == "churn"
    assert run["params"] == {"lr": 0.1, "layers": [2, 3], "batch": 32}
    assert run["tags"] == {"team": "a", "stage": "baseline"}
    assert len(run["metrics"]["loss"]["steps"]) == 300
    assert run["metrics"]["loss"]["kinds"][0] == "train"
    values = run["metrics"]["val_loss"]["values"]
    assert math.isnan(values[0]) and values[1] == math.inf
    assert run["artifacts"] == [("docs/notes.txt", 5)]
    assert run["datasets"] == [{"name": "train", "source": "data/train.csv"}]
    assert {"git_commit", "git_dirty", "python", "packages", "command", "seed"} <= set(run["facts"])
    assert views[1]["parent_id"] == views[0]["id"]
    assert bad["status"] == "failed"
    assert bad["detail"] == "ValueError: diverged at step 3"


def test_a_run_ends_failed_with_the_exception_and_killed_on_ctrl_c(embedded: Path) -> None:
    with pytest.raises(ZeroDivisionError), mlrig.start_run("study") as run:
        run.log_metric("loss", 1.0, step=0)
        _ = 1 / 0
    with pytest.raises(KeyboardInterrupt), mlrig.start_run("study") as stopped:
        raise KeyboardInterrupt
    assert mlrig.active_run() is None
    platform = make_platform(embedded.parent)
    try:
        failed = platform.experiments.get(run.id)
        killed = platform.experiments.get(stopped.id)
        count = platform.experiments.metrics(run.id)["count"]
    finally:
        platform.close()
    assert (failed["status"], failed["status_detail"]) == (
        "failed",
        "ZeroDivisionError: division by zero",
    )
    assert (killed["status"], killed["status_detail"]) == ("cancelled", "killed")
    assert count == 1  # sent before the run ended
    with pytest.raises(mlrig.MlrigError, match="has ended"):
        run.log_metric("loss", 2.0)


def test_nested_runs_resume_and_the_active_run_stack(embedded: Path) -> None:
    parent = mlrig.start_run("study", name="outer")
    with pytest.raises(mlrig.MlrigError, match="is active"):
        mlrig.start_run("study")
    child = mlrig.start_run(nested=True, name="inner")
    assert mlrig.active_run() is child
    parent.end()  # a parent ends its children first
    assert mlrig.active_run() is None
    assert child.status == "completed" and parent.status == "completed"
    with mlrig.start_run(run_id=parent.id) as again:
        again.log_metric("late", 3.0, step=9)
    assert again.id == parent.id
    platform = make_platform(embedded.parent)
    try:
        view = platform.experiments.get(parent.id)
        inner = platform.experiments.get(child.id)
        late = platform.experiments.metrics(parent.id, name="late")["count"]
    finally:
        platform.close()
    assert view["status"] == "completed" and late == 1
    assert inner["parent_id"] == parent.id


def _script_process(tmp_path: Path, config: Path, body: str) -> subprocess.Popen[str]:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLRIG_")}
    return subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**env, "MLRIG_CONFIG": str(config)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_ends_the_run_killed_and_the_process_dies_of_it(tmp_path: Path) -> None:
    config = _config(tmp_path / "home")
    proc = _script_process(
        tmp_path,
        config,
        """
        import time, mlrig
        run = mlrig.start_run("study")  # no with: the handler ends it
        inner = mlrig.start_run("study", nested=True)  # a with block: its exit ends it
        print(run.id, inner.id, flush=True)
        with inner:
            for step in range(100000):
                run.log_metric("loss", 0.1, step=step)
                time.sleep(0.001)
        """,
    )
    assert proc.stdout is not None
    run_id, inner_id = proc.stdout.readline().split()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    platform = make_platform(tmp_path / "home")
    try:
        view = platform.experiments.get(run_id)
        inner = platform.experiments.get(inner_id)
        count = platform.experiments.metrics(run_id, fields=["steps"])["count"]
    finally:
        platform.close()
    assert proc.returncode == -signal.SIGTERM
    assert (view["status"], view["status_detail"]) == ("cancelled", "killed: SIGTERM")
    assert (inner["status"], inner["status_detail"]) == ("cancelled", "killed: SIGTERM")
    assert count > 0  # the points logged before the signal were sent


def test_an_uncaught_exception_ends_an_open_run_failed_at_exit(tmp_path: Path) -> None:
    config = _config(tmp_path / "home")
    proc = _script_process(
        tmp_path,
        config,
        """
        import mlrig
        run = mlrig.start_run("study")
        print(run.id, flush=True)
        mlrig.log_metric("loss", 0.5)
        raise RuntimeError("out of memory")
        """,
    )
    out, _ = proc.communicate(timeout=60)
    platform = make_platform(tmp_path / "home")
    try:
        view = platform.experiments.get(out.split()[0])
    finally:
        platform.close()
    assert proc.returncode == 1
    assert (view["status"], view["status_detail"]) == ("failed", "RuntimeError: out of memory")


def test_a_server_stopped_mid_run_loses_no_point_and_writes_none_twice(
    tmp_path: Path, clean_tracking: None, db_url: str, database: Any
) -> None:
    """The server goes away for 3 s (``MLRIG_TEST_OUTAGE_SECONDS=30`` for the issue's 30:
    the same retries with back-off, then the backlog is sent); every point arrives once."""
    import uvicorn

    from mlrig.api import create_app
    from mlrig.testing.fixtures import free_port

    platform = _server_platform(tmp_path / "server", db_url)
    token = _token(platform)
    port = free_port()
    app = create_app(platform)

    def start() -> tuple[uvicorn.Server, Any]:
        import threading

        server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.02)
        return server, thread

    server, thread = start()
    mlrig.set_tracking(f"http://127.0.0.1:{port}", token)
    total = 0
    try:
        with mlrig.start_run("outage") as run:
            for step in range(2000):
                run.log_metric("loss", 1 / (step + 1), step=step)
            total += 2000
            assert run.flush(timeout=30)
            server.should_exit = True
            thread.join(10)
            down_until = time.monotonic() + float(os.environ.get("MLRIG_TEST_OUTAGE_SECONDS", "3"))
            step = total
            while time.monotonic() < down_until:  # training goes on while it is down
                run.log_metric("loss", 0.5, step=step)
                step += 1
                if step % 100 == 0:
                    time.sleep(0.01)
            total = step
            assert run._buffer.counters.retries > 0  # it did notice
            server, thread = start()
        history = platform.experiments.metrics(run.id, name="loss", fields=["steps"])
    finally:
        server.should_exit = True
        thread.join(10)
        platform.close()
    steps = history["metrics"]["loss"]["steps"]
    assert len(steps) == total  # none lost
    assert len(set(steps)) == total  # none twice


def test_beyond_max_buffered_points_they_spill_to_a_file_and_come_back(
    tmp_path: Path, clean_tracking: None
) -> None:
    """A sink that is down: the queue stays bounded (the rest goes to the spill file)
    and everything is written once it is back."""
    from mlrig.tracking.buffer import MetricBuffer, UnreachableError
    from mlrig.tracking.stores import EmbeddedStore

    class Outage(EmbeddedStore):
        down = True

        def send_points(self, run_id: str, rows: Any) -> int:
            if self.down:
                raise UnreachableError("down for the test")
            return super().send_points(run_id, rows)

    platform = _server_platform(tmp_path / "home")
    store = Outage(platform)
    view = store.start_run(name="spilling")
    buffer = MetricBuffer(
        store,
        view["id"],
        flush_points=1000,
        flush_seconds=0.05,
        max_buffered_points=5000,
        spill_dir=tmp_path / "spill",
    )
    buffer.start()
    try:
        for step in range(20_000):
            buffer.points.append(("loss", float(step), step, None, None, time.time()))
        assert not buffer.flush(timeout=1)
        assert buffer._queued_points <= 5000 + 1000  # bounded memory
        assert list((tmp_path / "spill").glob("*.points"))
        store.down = False
        assert buffer.flush(timeout=60)
        buffer.close(timeout=5)
        steps = platform.experiments.metrics(view["id"], fields=["steps"])["metrics"]["loss"]
    finally:
        platform.close()
    assert buffer.counters.spilled > 0
    assert sorted(steps["steps"]) == list(range(20_000))
    assert not list((tmp_path / "spill").glob("*.points"))  # replayed, removed


def test_an_unknown_outcome_is_settled_by_counting_not_sent_twice(tmp_path: Path) -> None:
    """The connection broke after the server wrote the batch: not sent again."""
    from mlrig.tracking.buffer import MetricBuffer, OutcomeUnknownError
    from mlrig.tracking.stores import EmbeddedStore

    class LostAnswer(EmbeddedStore):
        calls = 0

        def send_points(self, run_id: str, rows: Any) -> int:
            written = super().send_points(run_id, rows)
            self.calls += 1
            if self.calls == 2:  # the second batch is written, its answer lost
                raise OutcomeUnknownError("connection reset")
            return written

    platform = _server_platform(tmp_path / "home")
    store = LostAnswer(platform)
    view = store.start_run(name="flaky")
    buffer = MetricBuffer(
        store, view["id"], flush_points=100, flush_seconds=0.05, spill_dir=tmp_path / "spill"
    )
    buffer.start()
    try:
        for step in range(1000):
            buffer.points.append(("loss", 0.1, step, None, None, time.time()))
            if step % 100 == 99:
                buffer.flush(timeout=10)
        assert buffer.close(timeout=10) == 0
        count = platform.experiments.metrics(view["id"], fields=["steps"])["count"]
    finally:
        platform.close()
    assert count == 1000
    assert store.calls >= 10


def test_invalid_points_are_dropped_with_a_warning_the_rest_written(
    embedded: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with mlrig.start_run("study") as run:
        run.log_metric("loss", 0.5, step=0)
        run.log_metric("loss", 0.4, step=-3)  # a negative step: refused by the service
        run.log_metric("x" * 500, 0.4, step=1)  # too long a name
        run.log_metric("loss", 0.3, step=2)
        with pytest.raises(mlrig.MlrigError, match="kind"):
            run.log_metric("loss", 0.3, kind="training")
        with pytest.raises((TypeError, ValueError)):
            run.log_metric("loss", "high")
    platform = make_platform(embedded.parent)
    try:
        steps = platform.experiments.metrics(run.id, fields=["steps"])["metrics"]["loss"]["steps"]
    finally:
        platform.close()
    assert steps == [0, 2]
    assert "2 invalid points dropped" in caplog.text


def test_datasets_models_and_artifacts_against_a_server(
    tmp_path: Path, remote: tuple[Any, str, str]
) -> None:
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    from sklearn.linear_model import LogisticRegression

    platform, _url, _token = remote
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [0, 1, 0, 1]})
    folder = tmp_path / "plots"
    (folder / "sub").mkdir(parents=True)
    (folder / "one.txt").write_text("1")
    (folder / "sub" / "two.txt").write_text("22")
    with mlrig.start_run("study", params={"C": 1.0}) as run:
        record = run.log_dataset(frame, name="frame", context="training")
        array = run.log_dataset(np.zeros((5, 3)), name="zeros")
        assert run.log_artifacts(folder, artifact_path="plots") == [
            "plots/one.txt",
            "plots/sub/two.txt",
        ]
        model = LogisticRegression().fit(frame[["a"]], frame["b"])
        version = run.log_model(model, name="tracked-model", sample=frame[["a"]].head(2))
        inside = mlrig.log_model(model, name="tracked-model")  # the active run's
    outside = mlrig.log_model(model, name="plain-model")  # set_tracking's server, no run
    view = platform.experiments.get(run.id)
    assert (
        platform.registry.get_version("tracked-model", str(inside["version"]))["lineage"][
            "source_experiment_id"
        ]
        == run.id
    )
    plain = platform.registry.get_version("plain-model", str(outside["version"]))
    assert plain["lineage"]["source_experiment_id"] is None
    assert record["rows"] == 4 and record["schema"] == {"a": "float64", "b": "int64"}
    assert array["schema"] == {"dtype": "float64", "shape": [3]} and array["rows"] == 5
    assert len(record["digest"]) == 64
    assert record in view["reproducibility"]["datasets"]
    assert [a["path"] for a in platform.experiments.list_run_artifacts(run.id)] == [
        "plots/one.txt",
        "plots/sub/two.txt",
    ]
    stored = platform.registry.get_version("tracked-model", str(version["version"]))
    assert stored["lineage"]["source_experiment_id"] == run.id
    assert stored["lineage"]["source_run"] == run.name
    assert stored["params"] == {"C": 1.0}


def test_heartbeats_keep_a_long_run_alive_past_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_tracking: None
) -> None:
    config = _config(
        tmp_path / "home", heartbeat_timeout_seconds=2.0, heartbeat_interval_seconds=0.2
    )
    monkeypatch.setenv("MLRIG_CONFIG", str(config))
    platform = make_platform(tmp_path / "home", tracking={"heartbeat_timeout_seconds": 2.0})
    try:
        silent = platform.experiments.start_run(actor=Principal(name="t", role="admin"))
        with mlrig.start_run("study") as run:
            time.sleep(2.5)  # longer than the timeout: only the heartbeats keep it
            assert platform.experiments.expire_silent_runs() == 1  # the silent one
            assert platform.experiments.get(run.id)["status"] == "running"
            # an outage longer than the timeout: the sweep fails it, the script goes on,
            # and its next heartbeat puts it back to running
            later = datetime.now(timezone.utc) + timedelta(seconds=30)
            assert platform.experiments.expire_silent_runs(now=later) == 1
            deadline = time.monotonic() + 10
            while platform.experiments.get(run.id)["status"] != "running":
                assert time.monotonic() < deadline, "not revived"
                time.sleep(0.05)
        assert platform.experiments.get(silent["id"])["status"] == "failed"
        assert platform.experiments.get(run.id)["status"] == "completed"
    finally:
        platform.close()


def test_the_reproducibility_record(embedded: Path) -> None:
    import platform as pyplatform

    import numpy

    with mlrig.start_run("study", seed=1234) as run:
        pass
    facts = run.view["reproducibility"]
    assert facts["seed"] == 1234 and facts["seed_source"] == "given"
    assert facts["python"] == pyplatform.python_version()
    assert facts["command"] == sys.argv
    assert facts["packages"]["numpy"] == numpy.__version__
    assert "mlrig" in facts["packages"]
    assert "os" not in facts["packages"]  # the standard library has no distribution
    assert facts["git_commit"] is None or len(facts["git_commit"]) == 40
    with mlrig.start_run("study") as drawn:
        pass
    assert drawn.view["reproducibility"]["seed_source"] == "drawn"
    assert isinstance(drawn.view["reproducibility"]["seed"], int)


def test_points_left_by_an_ended_process_are_replayed_by_the_next(tmp_path: Path) -> None:
    """Spilled, partly sent, the run ends while the server is down: the next process
    sends exactly the rest."""
    from mlrig.tracking.buffer import MetricBuffer, UnreachableError, replay_spilled
    from mlrig.tracking.stores import EmbeddedStore

    class Outage(EmbeddedStore):
        budget = 0  # batches it takes before it is down again

        def send_points(self, run_id: str, rows: Any) -> int:
            if self.budget <= 0:
                raise UnreachableError("down for the test")
            self.budget -= 1
            return super().send_points(run_id, rows)

    platform = _server_platform(tmp_path / "home")
    store = Outage(platform)
    view = store.start_run(name="left-over")
    spill = tmp_path / "spill"
    buffer = MetricBuffer(
        store, view["id"], flush_points=100, max_buffered_points=300, spill_dir=spill
    )
    buffer.start()
    try:
        for step in range(1500):
            buffer.points.append(("loss", 0.25, step, None, None, time.time()))
        assert not buffer.flush(timeout=0.3)
        assert buffer.counters.spilled >= 1000
        store.budget = 3  # up for three batches (from the spill file), then down
        deadline = time.monotonic() + 30
        while buffer.counters.sent < 300:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert buffer.close(timeout=0.5) == 1200  # the run ended while it was down
        assert len(list(spill.glob("*.points"))) == 1
        assert replay_spilled(store, spill) == 0  # still down: kept
        (left,) = spill.glob("*.points")
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        left.rename(left.with_name(f"{left.name}.replaying-{dead}"))  # its replayer died
        store.budget = 10**6
        assert replay_spilled(store, spill) == 1200
        assert replay_spilled(store, spill) == 0  # once
        steps = platform.experiments.metrics(view["id"], fields=["steps"])["metrics"]["loss"]
    finally:
        platform.close()
    assert sorted(steps["steps"]) == list(range(1500))
    assert not list(spill.iterdir())


def test_a_stored_login_is_used_for_the_server_mlrig_url_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_tracking: None
) -> None:
    from mlrig.api import create_app
    from mlrig.remote import credentials

    platform = _server_platform(tmp_path / "server")
    token = _token(platform)
    monkeypatch.setenv("MLRIG_CREDENTIALS", str(tmp_path / "credentials.toml"))
    try:
        with serve(create_app(platform)) as url:
            credentials.store(url, token, user="scientist")
            monkeypatch.setenv("MLRIG_URL", url)  # no MLRIG_TOKEN
            with mlrig.start_run("study") as run:
                run.log_param("where", "server")
        view = platform.experiments.get(run.id)
    finally:
        platform.close()
    assert view["hyperparameters"] == {"where": "server"}
    assert view["created_by"] == "scientist"
