"""A sweep survives SIGKILL: its server and workers are killed mid-way and restarted, and
the sweep completes exactly ``max_trials`` trials, none duplicated, its strategy's state
continuing where it was (the asks after the restart are the ones an uninterrupted search
of the same seed makes, not a fresh start's).

The sweep runs on a ``mlrig server`` (its lifespan drives sweeps; no embedded worker)
and a ``mlrig worker`` process (it runs the trials and drives sweeps too), both on one
SQLite database, both SIGKILLed while trials run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from _trainers import install_test_trainers
from sqlalchemy import func, select

from mlrig.backends import forget_loaded_backends
from mlrig.db.models import Sweep, SweepTrial, TrainingExperiment
from mlrig.security import Principal
from mlrig.testing.fixtures import free_port, make_platform

ACTOR = Principal(name="alice", role="admin")
SPACE = {
    "steps": {"type": "int", "low": 3, "high": 5},
    "x": {"type": "float", "low": 0.0, "high": 1.0},
    "sleep": 0.15,
}
MAX_TRIALS = 6
SEED = 4242


@pytest.fixture
def home(tmp_path, monkeypatch):
    site = install_test_trainers(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    forget_loaded_backends()
    home = tmp_path / "home"
    home.mkdir()
    yield home
    forget_loaded_backends()


def _config(home: Path, port: int) -> None:
    (home / "mlrig.toml").write_text(
        f'[database]\nurl = "sqlite:///{home / "mlrig.db"}"\n'
        f'[storage]\nbackend = "local"\n[storage.local]\nroot = "{home / "artifacts"}"\n'
        f"[auth]\nenabled = false\n[server]\nport = {port}\nembedded_workers = 0\n"
        "[search]\ndriver_interval_seconds = 0.2\n"
    )


def _start(home: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mlrig.cli", *args],
        cwd=home,
        env={**os.environ, "MLRIG_CONFIG": str(home / "mlrig.toml")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _processes(home: Path, port: int) -> list[subprocess.Popen]:
    return [
        _start(home, "server", "--port", str(port), "--log-level", "warning"),
        _start(home, "worker", "--concurrency", "2", "--lease-seconds", "2", "--quiet"),
    ]


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait(10)


def _snapshot(platform, sweep_id):
    with platform.db.session() as session:
        trials = session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep_id)).all()
        running = session.scalar(
            select(func.count())
            .select_from(TrainingExperiment)
            .where(
                TrainingExperiment.parent_id == sweep_id,
                TrainingExperiment.status == "running",
            )
        )
        status = session.get(TrainingExperiment, sweep_id).status
        return {t.number: dict(t.params) for t in trials}, running, status


def _reference(platform, count: int) -> list[dict]:
    """The asks of an uninterrupted random search of the same seed and space."""
    from mlrig.search.space import SearchSpace
    from mlrig.sweeps.service import load_strategy

    strategy = load_strategy(platform, "random", {})
    strategy.start(
        SearchSpace.from_dict(SPACE),
        direction="maximize",
        seed=SEED,
        parallelism=2,
        budget=MAX_TRIALS + 1,
    )
    return [strategy.ask().params for _ in range(count)]


def test_a_sigkilled_server_and_worker_resume_the_sweep_exactly(home):
    port = free_port()
    _config(home, port)
    platform = make_platform(home)
    view = platform.sweeps.create(
        name="resumed",
        trainer="steps",
        space=SPACE,
        objective="value",
        objective_kind="train",
        direction="maximize",
        strategy="random",
        seed=SEED,
        max_trials=MAX_TRIALS,
        parallelism=2,
        max_attempts=5,
        checkpoint_interval_s=0,
        actor=ACTOR,
    )
    sweep_id = uuid.UUID(view["id"])
    procs = _processes(home, port)
    try:
        deadline = time.monotonic() + 120  # a safety net, generous for a loaded machine
        while time.monotonic() < deadline:  # mid-way: trials done, trials running
            asked, running, _ = _snapshot(platform, sweep_id)
            if len(asked) >= 3 and running:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the sweep did not get half-way within 120 s")
        _kill(procs)
        before, _, status = _snapshot(platform, sweep_id)
        assert status == "running" and 3 <= len(before) < MAX_TRIALS
        procs = _processes(home, port)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _snapshot(platform, sweep_id)[2] != "running":
                break
            time.sleep(0.1)
    finally:
        _kill(procs)
    done = platform.sweeps.get(sweep_id)
    assert done["status"] == "completed", done["status_detail"]
    trials = platform.sweeps.trials(sweep_id)
    assert [t["number"] for t in trials] == list(range(MAX_TRIALS))
    assert all(t["state"] == "completed" for t in trials), [t["detail"] for t in trials]
    with platform.db.session() as session:
        children = session.scalars(
            select(TrainingExperiment).where(TrainingExperiment.parent_id == sweep_id)
        ).all()
        sweep = session.get(Sweep, sweep_id)
        state, asked_count = sweep.strategy_state, sweep.trials_asked
    assert len(children) == MAX_TRIALS and len({c.name for c in children}) == MAX_TRIALS
    assert asked_count == MAX_TRIALS
    # at least one trial lost its worker and was run again (the kill hit running trials)
    assert any(c.attempts > 1 for c in children)
    # the asks after the restart continue the seeded search, they are no fresh start
    reference = _reference(platform, MAX_TRIALS + 1)
    after = [t for t in trials if t["number"] not in before]
    assert after, "nothing was asked after the restart"
    for t in trials:
        assert t["params"] == reference[t["number"]]
    fresh = reference[: len(after)]
    assert [t["params"] for t in after] != fresh
    # the saved state continues too: its next ask is number MAX_TRIALS
    from mlrig.sweeps.service import load_strategy

    restored = load_strategy(platform, "random", {})
    restored.restore(state)
    following = restored.ask()
    assert following.number == MAX_TRIALS and following.params == reference[MAX_TRIALS]
    platform.close()


def test_a_step_that_dies_midway_leaves_nothing_and_nevergrad_continues(tmp_path, monkeypatch):
    """A driver dying inside a step (here: an error after its first new trial) commits
    none of it: no trial row, no tell, no state. Another process then continues the
    nevergrad search: numbers go on, and the restored optimizer was told every trial."""
    pytest.importorskip("nevergrad")
    pytest.importorskip("mlrig.plugins.search_nevergrad")
    from test_sweeps import IRIS, run_trial

    from mlrig.sweeps.driver import SweepDriver

    home = tmp_path / "home"
    platform = make_platform(home)
    view = platform.sweeps.create(
        name="ng",
        trainer="sklearn",
        space={
            "n_estimators": {"type": "int", "low": 2, "high": 30},
            "max_depth": {"type": "int", "low": 1, "high": 6},
        },
        objective="val_loss",
        dataset=IRIS,
        strategy="nevergrad",
        seed=3,
        max_trials=6,
        parallelism=2,
        actor=ACTOR,
    )
    sweep_id = uuid.UUID(view["id"])

    def rows():
        with platform.db.session() as session:
            sweep = session.get(Sweep, sweep_id)
            trials = session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep_id))
            return sweep.state_version, sorted((t.number, t.told) for t in trials)

    run_trial(platform, value=0.5)
    run_trial(platform, value=0.4)
    before = rows()
    original = SweepDriver._queue_trial
    calls = []

    def dies_on_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed mid-step")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SweepDriver, "_queue_trial", dies_on_the_second)
    with pytest.raises(RuntimeError, match="killed mid-step"):
        platform.sweeps.advance(owner="doomed")
    assert rows() == before  # neither the tells nor the first new trial were kept
    monkeypatch.setattr(SweepDriver, "_queue_trial", original)
    restarted = make_platform(home)  # another process, nothing cached
    try:
        for value in (0.3, 0.35, 0.2, 0.25):
            restarted.sweeps.advance(owner="restarted")
            run_trial(restarted, value=value)
        restarted.sweeps.advance(owner="restarted")
        done = restarted.sweeps.get(sweep_id)
        assert done["status"] == "completed", done["status_detail"]
        assert [t["number"] for t in restarted.sweeps.trials(sweep_id)] == list(range(6))
        assert done["best"]["value"] == pytest.approx(0.2)
        with restarted.db.session() as session:
            sweep = session.get(Sweep, sweep_id)
            state, told = sweep.strategy_state, sweep.trials_asked
        from mlrig.sweeps.service import load_strategy

        strategy = load_strategy(restarted, "nevergrad", dict(view["strategy_options"]))
        strategy.restore(state)
        assert told == 6
        assert strategy._optimizer.num_tell == 6  # every trial told once, none twice
        assert strategy.ask().number == 6
    finally:
        restarted.close()
        platform.close()
