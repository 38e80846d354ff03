"""``mlrig worker``: claim jobs from the queue and run each in its own process.

One loop per worker: claim while slots and resources are free, launch through the
configured executor, heartbeat every running job (a cancelled or lost job is killed),
ship each job's output to the log store, record failures, and requeue jobs whose worker
died (their lease expired).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlrig.config import INHERITED_ENV
from mlrig.contracts.executor import JobHandle, JobSpec
from mlrig.engine.allocator import Capacity, ResourceAllocator
from mlrig.engine.runner import (
    EXIT_LEASE_LOST,
    EXIT_PERMANENT,
    EXPERIMENT_ENV,
    ORIGIN_GIT_ENV,
    OUTCOME_ENV,
    PERMANENT_MARKER,
    hand_over,
    record_handed_outcome,
)
from mlrig.engine.states import COMPLETED
from mlrig.sweeps.driver import next_drive_interval

if TYPE_CHECKING:
    from mlrig.engine.queue import ClaimedJob
    from mlrig.experiments.logs import LogStore
    from mlrig.platform import Platform

#: ship job output to the log store at most this often (seconds)
LOG_SHIP_SECONDS = 1.0
STOP_GRACE_SECONDS = 2.0
#: a job that recorded its completion gets this long to exit on its own
EXIT_GRACE_SECONDS = 30.0
#: while jobs run, the loop looks this often whether one ended (between its rounds)
REAP_POLL_SECONDS = 0.005
#: while one job runs on a handle that wakes on its exit, ``stop`` is looked at this often
STOP_CHECK_SECONDS = 0.05
#: the origin folder's git state handed to jobs is at most this old (seconds)
GIT_STATE_SECONDS = 5.0


def _describe_exit(code: int) -> str:
    """An exit status in words: ``killed by SIGKILL`` for a negative one."""
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class RunningJob:
    job: ClaimedJob
    handle: JobHandle
    log_path: Path
    shipped: int = 0
    shipped_at: float = 0.0
    #: when the job was seen completed while its process was still exiting
    completed_at: float | None = None
    #: where the job leaves its outcome for this worker to record (``None``: it records
    #: its own)
    outcome_path: Path | None = None


class Worker:
    """Runs up to ``concurrency`` jobs at a time on this machine."""

    def __init__(
        self,
        platform: Platform,
        *,
        concurrency: int = 1,
        capacity: Capacity | None = None,
        worker_id: str | None = None,
        lease_seconds: float = 30.0,
        heartbeat_seconds: float = 1.0,
        poll_seconds: float = 0.2,
        workdir: Path | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.platform = platform
        self.concurrency = concurrency
        self.allocator = ResourceAllocator(capacity or Capacity())
        self.owner = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = min(heartbeat_seconds, lease_seconds / 3)
        self.poll_seconds = poll_seconds
        self.workdir = workdir or platform.settings.resolve_path(".mlrig/work")
        self.echo = echo or (lambda _line: None)
        self.running: dict[uuid.UUID, RunningJob] = {}
        self.finished = 0
        self._logs: LogStore | None = None
        self._last_drive = 0.0
        self._drive_every: float | None = None  # seconds; None: the configured interval
        self._settings_json: str | None = None
        self._git: tuple[float, str] | None = None  # (when, "[commit, dirty]")

    @property
    def logs(self) -> LogStore:
        if self._logs is None:
            from mlrig.experiments.logs import LogStore

            self._logs = LogStore(self.platform.artifacts)
        return self._logs

    # --- the loop -------------------------------------------------------------------------

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        max_jobs: int | None = None,
        exit_when_idle: bool = False,
    ) -> int:
        """Work until ``stop`` is set, ``max_jobs`` finished, or (``exit_when_idle``) the
        queue is empty and nothing runs. Returns how many jobs this worker finished."""
        stop = stop or threading.Event()
        last_beat = last_sweep = 0.0
        self.echo(
            f"worker {self.owner}: concurrency {self.concurrency}, free {self.allocator.free()}"
        )
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now - last_beat >= self.heartbeat_seconds:
                    self._beat_worker()
                if now - last_sweep >= self.lease_seconds / 2:
                    self.platform.queue.requeue_expired()
                    # tracked runs whose script went silent (as the API server does)
                    self.platform.experiments.expire_silent_runs()
                    last_sweep = now
                finished = self.finished
                self._reap()  # first: a failed attempt may requeue its job for this claim
                # a trial that just ended makes room for the sweep's next: ask for it now,
                # so this very iteration can claim it
                self._drive_sweeps(now, force=self.finished != finished)
                claimed = self._claim_while_free(max_jobs)
                if now - last_beat >= self.heartbeat_seconds:
                    self._heartbeat()
                    last_beat = now
                if max_jobs is not None and self.finished >= max_jobs and not self.running:
                    break
                if exit_when_idle and not claimed and not self.running:
                    break
                self._wait(stop, self.poll_seconds if not claimed else 0)
        finally:
            self._shutdown()
        return self.finished

    def _wait(self, stop: threading.Event, seconds: float) -> None:
        """Wait up to ``seconds`` between rounds; while jobs run, return as soon as one
        has ended (checked every ``REAP_POLL_SECONDS`` with ``poll()``, a ``waitpid`` or
        a look at the fork server's reports: no database query; a single job whose handle
        ``wakes_on_exit``, a forked one, is waited on instead), so the next round records
        it and claims the next job at once."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not self.running:
                stop.wait(left)
                return
            if len(self.running) == 1:
                (only,) = self.running.values()
                if getattr(only.handle, "wakes_on_exit", False):
                    # its wait returns as soon as the exit is reported: no polling
                    if only.handle.wait(min(left, STOP_CHECK_SECONDS)) is not None:
                        return
                    continue
            if stop.wait(min(left, REAP_POLL_SECONDS)):
                return
            if any(r.handle.poll() is not None for r in self.running.values()):
                return

    def _claim_while_free(self, max_jobs: int | None) -> int:
        claimed = 0
        while len(self.running) < self.concurrency:
            if max_jobs is not None and self.finished + len(self.running) >= max_jobs:
                break
            job = self.platform.queue.claim(
                self.owner, lease_seconds=self.lease_seconds, fits=self.allocator.fits
            )
            if job is None:
                break
            self._start(job)
            claimed += 1
        return claimed

    def _start(self, job: ClaimedJob) -> None:
        resources = self.allocator.allocate(job.id, job.resources)
        folder = self.workdir / str(job.id) / f"attempt-{job.attempt}"
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "output.log"
        settings = self.platform.settings
        if self._settings_json is None:  # the same for every job of this worker
            self._settings_json = settings.to_json()
        env = {
            "PYTHONUNBUFFERED": "1",
            "MLRIG_ORIGIN_DIR": str(settings.base_dir),
            ORIGIN_GIT_ENV: self._origin_git(settings.base_dir),
            INHERITED_ENV: self._settings_json,
        }
        # the experiment as the claim read it: the job need not read it again
        handed = folder / "experiment.json"
        if job.experiment is not None and hand_over(handed, job.experiment, job.attempt):
            env[EXPERIMENT_ENV] = str(handed)
        # a job on this machine leaves its completion to this worker (warm, connected)
        outcome: Path | None = None
        if getattr(self.platform.executor, "shares_workdir", False):
            outcome = folder / "outcome.json"
            outcome.unlink(missing_ok=True)  # an earlier run's, in the same folder
            env[OUTCOME_ENV] = str(outcome)
        args = (str(job.id), str(job.attempt), self.owner)
        spec = JobSpec(
            argv=(sys.executable, "-m", "mlrig.engine.runner", *args),
            # the executor may run it in a warm interpreter (the local one's fork server)
            python_entry=("mlrig.engine.runner", args),
            workdir=folder,
            env=env,
            resources=resources,
            stdout_path=log_path,
            stderr_path=log_path,
        )
        try:
            handle = self.platform.executor.launch(spec)
        except Exception as exc:
            self.allocator.release(job.id)
            self.platform.queue.fail(job, f"could not launch: {exc}")
            return
        self.running[job.id] = RunningJob(job, handle, log_path, outcome_path=outcome)
        self.echo(f"started {job.name} ({job.id}) attempt {job.attempt}, cpus {resources.cpus}")

    def _origin_git(self, folder: Path) -> str:
        """``[commit, dirty]`` of the origin folder for a job's reproducibility record,
        looked up (two ``git`` runs) at most every ``GIT_STATE_SECONDS`` instead of in
        every job."""
        now = time.monotonic()
        if self._git is None or now - self._git[0] >= GIT_STATE_SECONDS:
            import json

            from mlrig.tracking.reproducibility import git_state

            self._git = (now, json.dumps(list(git_state(folder))))
        return self._git[1]

    def _ship_logs(self, running: RunningJob, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - running.shipped_at < LOG_SHIP_SECONDS:
            return
        try:
            with running.log_path.open("rb") as fh:
                fh.seek(running.shipped)
                data = fh.read()
        except FileNotFoundError:
            return
        if data:
            self.logs.append(str(running.job.id), data)
            running.shipped += len(data)
        running.shipped_at = now

    def _reap(self) -> None:
        for job_id, running in list(self.running.items()):
            self._ship_logs(running)
            code = running.handle.poll()
            if code is None:
                continue
            if code == 0:
                self._record_outcome(running)
            self._ship_logs(running, final=True)
            del self.running[job_id]
            self.allocator.release(job_id)
            self.finished += 1
            job = running.job
            if code in (0, EXIT_LEASE_LOST):
                self.echo(f"finished {job.name} attempt {job.attempt} (exit {code})")
                continue
            if running.completed_at is not None:
                self.echo(f"finished {job.name} attempt {job.attempt} (completed; exit {code})")
                continue
            line = self._last_line(running.log_path) or ""
            permanent = code == EXIT_PERMANENT and PERMANENT_MARKER in line
            if permanent:
                reason = line.split(PERMANENT_MARKER, 1)[1]
            elif code < 0:  # killed: the signal says more than the last line
                reason = f"{_describe_exit(code)}{f' (last output: {line})' if line else ''}"
            else:
                reason = line or _describe_exit(code)
            status = self.platform.queue.fail(job, reason, retry=not permanent)
            outcome = status or "no longer this worker's job"
            why = "cannot succeed by retrying: " if permanent else ""
            self.echo(
                f"{job.name} attempt {job.attempt} failed (exit {code}; {why}{reason}) -> {outcome}"
            )

    def _record_outcome(self, running: RunningJob) -> None:
        """Record the completion a job that exited 0 left to this worker (see
        :func:`mlrig.engine.runner.record_handed_outcome`), with its line in the job's
        output. One that cannot be recorded is a failed attempt (retried while attempts
        remain; the database away: its lease expires and it is requeued)."""
        if running.outcome_path is None:
            return
        job = running.job
        try:
            done = record_handed_outcome(self.platform, job, running.outcome_path)
        except Exception as exc:
            line = f"[mlrig] the completion could not be recorded: {exc}"
            try:
                status = self.platform.queue.fail(job, line.removeprefix("[mlrig] "))
            except Exception as again:
                status = f"not recorded either ({again})"
            self.echo(f"{job.name} attempt {job.attempt}: {line} -> {status}")
        else:
            if done is None:
                return
            line = done[1]
        try:
            with running.log_path.open("a") as fh:
                fh.write(line + "\n")
        except OSError:
            pass

    @staticmethod
    def _last_line(path: Path) -> str | None:
        try:
            lines = path.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return None
        return lines[-1][:500] if lines else None

    def _heartbeat(self) -> None:
        for running in list(self.running.values()):
            if running.completed_at is not None:
                if time.monotonic() - running.completed_at > EXIT_GRACE_SECONDS:
                    running.handle.terminate(grace_seconds=STOP_GRACE_SECONDS)
                continue
            beat = self.platform.queue.heartbeat(running.job, lease_seconds=self.lease_seconds)
            if beat.held:
                continue
            if beat.status == COMPLETED:  # the job recorded it; its process is exiting
                running.completed_at = time.monotonic()
                continue
            self.echo(f"{running.job.name}: {beat.status}; ending its processes")
            running.handle.terminate(grace_seconds=STOP_GRACE_SECONDS)

    def _drive_sweeps(self, now: float, *, force: bool) -> None:
        """Advance the running sweeps (tell finished trials, queue the next ones) every
        ``[search] driver_interval_seconds``, or at once after a job ended. A failure is
        reported and retried on the next round, never fatal to the loop."""
        interval = self.platform.settings.search.driver_interval_seconds
        if not force and now - self._last_drive < (self._drive_every or interval):
            return
        self._last_drive = now
        try:
            sweeps = self.platform.sweeps
            sweeps.advance(owner=self.owner)
        except Exception as exc:  # the database may be briefly away: the next round retries
            self.echo(f"worker {self.owner}: sweeps not advanced: {exc}")
            return
        # none running: look less often (a job that ended forces the next round)
        self._drive_every = next_drive_interval(sweeps.driver, self._drive_every, interval)

    def _beat_worker(self) -> None:
        """Tell the queue this worker is alive (waiting commands ask it); a database
        hiccup must not stop the loop, the next beat tries again."""
        try:
            self.platform.queue.worker_heartbeat(
                self.owner, ttl_seconds=self.lease_seconds, concurrency=self.concurrency
            )
        except Exception as exc:  # any driver error: report it, go on
            self.echo(f"worker {self.owner}: heartbeat not recorded: {exc}")

    def _shutdown(self) -> None:
        """Stop: end running jobs (they checkpoint on SIGTERM) and hand them back."""
        for job_id, running in list(self.running.items()):
            running.handle.terminate(grace_seconds=STOP_GRACE_SECONDS)
            self._ship_logs(running, final=True)
            self.allocator.release(job_id)
            self.platform.queue.fail(running.job, "worker shut down")
        self.running.clear()
        try:
            self.platform.queue.worker_stopped(self.owner)
        except Exception:  # its row expires on its own
            pass
