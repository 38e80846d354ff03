"""Chaos: 200 short jobs, 3 worker processes killed with SIGKILL at random and restarted.

Every job completes exactly once (no job lost, none completed twice) and jobs that lost
their worker resume from their last checkpoint. Each kill picks, at random, one of the
workers that holds a job past its first checkpoint (read from the queue's leases): a kill
timed blindly can land only on workers still starting their jobs, and then nothing shows
that a retry resumes.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from _trainers import install_test_trainers
from sqlalchemy import func, select

from mlrig.db.models import ExperimentEvent, TrainingExperiment
from mlrig.testing.fixtures import make_platform

JOBS = 200
#: PostgreSQL shows the same with fewer jobs (each job is a process start: CI time)
JOBS_POSTGRES = 60
WORKERS = 3
KILLS = 12
#: polls for a worker with a checkpointed job before a kill falls back to any worker
POLLS_BEFORE_ANY = 25


def _start_worker(home, env):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlrig.cli",
            "worker",
            "--concurrency",
            "2",
            "--cpus",
            "2",
            "--lease-seconds",
            "4",
            "--quiet",
        ],
        cwd=home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_sigkilled_workers_lose_no_job_and_complete_none_twice(tmp_path, db, request):
    url = (
        f"sqlite:///{tmp_path / 'home' / 'mlrig.db'}"
        if db == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    if db == "postgresql":
        from mlrig.db import migrate

        migrate.upgrade(url)
    home = tmp_path / "home"
    platform = make_platform(home, database={"url": url})
    (home / "mlrig.toml").write_text(
        f'[database]\nurl = "{url}"\n[storage.local]\nroot = "{home / "artifacts"}"\n'
    )
    site = install_test_trainers(tmp_path / "site")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }

    jobs = JOBS if db == "sqlite" else JOBS_POSTGRES
    with platform.db.session() as session:
        rows = [
            TrainingExperiment(
                name=f"chaos-{i}",
                trainer="steps",
                max_attempts=25,
                hyperparameters={"steps": 8, "sleep": 0.15},
                checkpoint_interval_s=0,
            )
            for i in range(jobs)
        ]
        session.add_all(rows)
        session.flush()
        for row in rows:
            platform.queue.record_created(session, row)
        ids = [row.id for row in rows]
    for job_id in ids:
        platform.queue.enqueue(job_id)

    rng = random.Random(1234)
    workers = [_start_worker(home, env) for _ in range(WORKERS)]
    kills, deadline = 0, time.monotonic() + 600

    def unfinished():
        with platform.db.session() as session:
            return session.scalar(
                select(func.count())
                .select_from(TrainingExperiment)
                .where(TrainingExperiment.status.not_in(["completed", "failed", "cancelled"]))
            )

    def holding_a_checkpointed_job() -> list[int]:
        """Indexes of the workers whose running job has checkpointed at least once."""
        with platform.db.session() as session:
            owners = session.scalars(
                select(TrainingExperiment.lease_owner).where(
                    TrainingExperiment.status == "running",
                    TrainingExperiment.last_checkpoint.is_not(None),
                    TrainingExperiment.lease_owner.is_not(None),
                )
            ).all()
        pids = {int(owner.split(":")[-2]) for owner in owners}  # host:pid:suffix
        return [i for i, proc in enumerate(workers) if proc.pid in pids]

    polls = 0
    try:
        while unfinished() and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 0.6))
            if kills < KILLS:
                candidates = holding_a_checkpointed_job()
                polls += 1
                if not candidates and polls < POLLS_BEFORE_ANY:
                    continue
                victim = rng.choice(candidates or range(WORKERS))
                polls = 0
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].wait()
                workers[victim] = _start_worker(home, env)
                kills += 1
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    assert kills == KILLS
    with platform.db.session() as session:
        statuses = dict(
            session.execute(
                select(TrainingExperiment.status, func.count()).group_by(TrainingExperiment.status)
            ).all()
        )
        completions = dict(
            session.execute(
                select(ExperimentEvent.experiment_id, func.count())
                .where(ExperimentEvent.new_status == "completed")
                .group_by(ExperimentEvent.experiment_id)
            ).all()
        )
        details = [
            (row.attempts, row.status_detail, row.configuration)
            for row in session.scalars(select(TrainingExperiment))
        ]
    assert statuses == {"completed": jobs}
    assert len(completions) == jobs and set(completions.values()) == {1}
    resumed = [d for a, d, _ in details if a > 1 and d and "resumed from checkpoint step" in d]
    assert resumed, "no job resumed from a checkpoint: the kills hit no running job"
    for attempts, _detail, config in details:
        if config["result"]["resumed_from_step"] is not None:
            assert attempts > 1
            assert config["result"]["resumed_from_step"] >= 0
    platform.close()
