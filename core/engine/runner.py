"""The job process: ``python -m mlrig.engine.runner EXPERIMENT_ID ATTEMPT OWNER``.

Started by a worker through its executor, with the worker's config in the environment.
It takes the experiment its worker's claim read (:func:`handed_experiment`; else it
reads it), builds the :class:`JobContext`, runs the trainer and records the outcome,
fenced by the attempt it was given: a job whose worker died is killed with it (the
executor sets a parent-death signal), and a stale attempt cannot complete a job that
another worker has since taken over. A job on its worker's machine (``OUTCOME_ENV``
set) leaves the outcome (result, last metric points, reproducibility record) to the
worker, which records it with the same fence in one transaction once the job exited 0
(:func:`record_handed_outcome`); a pruned trial, or an outcome JSON cannot carry, is
recorded by the job itself.

Exit codes: 0 completed (or its outcome handed to the worker); 3 the attempt lost the job
(nothing recorded); 4 interrupted by
SIGTERM after checkpointing; 1 the trainer failed; 5 the trainer failed in a way retrying
cannot fix (:func:`is_permanent`), the last output line saying why. On 1 and 4 the worker
records the failed attempt and requeues the job while attempts remain; on 5 it fails the
experiment at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as pyplatform
import random
import sys
import traceback
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

EXIT_LEASE_LOST = 3
EXIT_INTERRUPTED = 4
EXIT_PERMANENT = 5
#: how the last output line of a permanent failure starts (the worker reads the reason)
PERMANENT_MARKER = "[mlrig] not retried: "
#: ``[commit, dirty]`` of the origin folder as the worker last looked (JSON); without it
#: the job runs ``git`` itself
ORIGIN_GIT_ENV = "MLRIG_ORIGIN_GIT"
#: a file with the experiment as the worker's claim read it (:func:`hand_over`); without
#: it, or when it is not this attempt's, the job reads the experiment itself
EXPERIMENT_ENV = "MLRIG_JOB_EXPERIMENT"
#: where a job that completed leaves its outcome for its worker to record
#: (:func:`record_handed_outcome`) instead of recording it itself; set by a worker whose
#: executor runs jobs on its own machine (``shares_workdir``)
OUTCOME_ENV = "MLRIG_JOB_OUTCOME"
#: a platform a fork server built before forking this process: ``(settings JSON,
#: platform)`` (see :func:`prepare_platform`)
_PREPARED: list[tuple[str, Any] | None] = [None]


def is_permanent(exc: BaseException) -> bool:
    """Whether a trainer's exception cannot go away by retrying: a
    :class:`~mlrig.contracts.PermanentError`, or a ``ValidationError``/``NotFoundError``
    (bad input: a missing dataset, an unknown column, a bad parameter)."""
    from mlrig.contracts.trainer import PermanentError
    from mlrig.errors import NotFoundError, ValidationError

    return isinstance(exc, (PermanentError, ValidationError, NotFoundError))


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message (the class name too, for non-mlrig ones)."""
    from mlrig.errors import MlrigError

    text = exc.message if isinstance(exc, MlrigError) else f"{type(exc).__name__}: {exc}"
    return " ".join(str(text).split())[:1000]


def _package_versions() -> dict[str, str]:
    """The versions of the packages a run depends on, read once while the installed
    distributions stay the same (each read parses a METADATA file; a forked job inherits
    its fork server's)."""
    from mlrig.backends import while_installed

    return dict(while_installed("package_versions", _read_package_versions))


def _read_package_versions() -> dict[str, str]:
    wanted = ["mlrig", "numpy", "pandas", "scikit-learn", "torch", "tensorflow", "onnxruntime"]
    found = {}
    for name in wanted:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def config_hash(experiment: dict[str, Any]) -> str:
    """sha256 of what defines a run: trainer, hyperparameters, dataset, resources, seed."""
    keys = ("trainer", "hyperparameters", "dataset", "resources", "seed")
    canonical = json.dumps({k: experiment.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def seed_everything(seed: int | None) -> None:
    """Seed Python's, NumPy's and (when already imported) torch's generators."""
    if seed is None:
        return
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def load_experiment(platform: Any, job_id: uuid.UUID) -> dict[str, Any]:
    from mlrig.db.models import TrainingExperiment, User

    with platform.db.session() as session:
        row = session.get(TrainingExperiment, job_id)
        if row is None:
            msg = f"no experiment {job_id}"
            raise SystemExit(msg)
        experiment = job_experiment(row)
        creator = session.get(User, row.created_by) if row.created_by else None
        if creator is not None:
            experiment["creator_name"] = creator.name
        else:
            experiment["creator_name"] = experiment["submitted_by"]
        return experiment


def job_experiment(row: Any) -> dict[str, Any]:
    """What a job needs of its experiment row (a ``TrainingExperiment``), without the
    creator's name (:attr:`JobContext.creator_name` looks it up when first needed)."""
    config = dict(row.configuration or {})
    return {
        # who created the experiment: what it registers is theirs, not the worker's
        "created_by": row.created_by,
        "submitted_by": config.get("submitted_by"),
        "id": str(row.id),
        "name": row.name,
        "trainer": row.trainer,
        "hyperparameters": dict(row.hyperparameters or {}),
        "dataset": config.get("dataset"),
        "model_name": config.get("model_name"),
        "resources": dict(row.resources or {}),
        "seed": row.seed,
        "checkpoint_interval_s": row.checkpoint_interval_s,
        "early_stopping": row.early_stopping,
        "last_checkpoint": row.last_checkpoint,
        "max_attempts": row.max_attempts,
        "reproducibility": dict(row.reproducibility or {}),
        # a sweep's trial: its sweep, objective and pruner (mlrig.sweeps)
        "sweep": config.get("sweep"),
    }


def hand_over(path: Path, experiment: dict[str, Any], attempt: int) -> bool:
    """Worker: write the experiment its claim read (:func:`job_experiment`) for the job
    of ``attempt`` to read instead of querying it (:func:`handed_experiment`). Returns
    whether it did (a value JSON cannot carry: the job reads the row itself)."""
    created_by = experiment.get("created_by")
    record = {
        "id": experiment["id"],
        "attempt": attempt,
        "experiment": {**experiment, "created_by": str(created_by) if created_by else None},
    }
    try:
        path.write_text(json.dumps(record))
    except (TypeError, ValueError, OSError):
        return False
    return True


def handed_experiment(job_id: uuid.UUID, attempt: int) -> dict[str, Any] | None:
    """The experiment the worker handed to this attempt (:data:`EXPERIMENT_ENV`), or
    ``None`` (none, unreadable, or another experiment's or attempt's)."""
    where = os.environ.get(EXPERIMENT_ENV)
    if not where:
        return None
    try:
        record = json.loads(Path(where).read_text())
        if record["id"] != str(job_id) or record["attempt"] != attempt:
            return None
        experiment = dict(record["experiment"])
        if experiment.get("created_by"):
            experiment["created_by"] = uuid.UUID(experiment["created_by"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return experiment


def _hand_outcome(
    job_id: uuid.UUID,
    attempt: int,
    detail: str | None,
    outcome: dict[str, Any],
    facts: dict[str, Any],
    closing: dict[str, Any],
) -> bool:
    """Leave a completed attempt's outcome for the worker (:data:`OUTCOME_ENV`): the
    completion, its last metric points and the reproducibility record, which the worker
    records in one transaction fenced by this attempt (:func:`record_handed_outcome`).
    Returns whether it did; ``False`` (no such file wanted, a value JSON cannot carry):
    the job records its completion itself."""
    where = os.environ.get(OUTCOME_ENV)
    if not where:
        return False
    record = {
        "id": str(job_id),
        "attempt": attempt,
        "detail": detail,
        "result": outcome,
        "facts": facts,
        "closing": closing,
    }
    try:
        text = json.dumps(record)
        part = f"{where}.part"
        with open(part, "w") as fh:
            fh.write(text)
        os.replace(part, where)  # whole or absent: the worker never reads half of it
    except (TypeError, ValueError, OSError):
        return False
    return True


def record_handed_outcome(platform: Any, job: Any, path: Path) -> tuple[bool, str] | None:
    """Worker: record the completion the job of ``job`` (a ``ClaimedJob``) left in
    ``path`` (:func:`_hand_outcome`) after it exited 0, fenced by its attempt as the job
    would have. Returns ``None`` when it left none (it recorded its own), else whether it
    completed the job and the line for the job's output.

    :raises ValueError: the file is not this attempt's outcome (or unreadable)."""
    from mlrig.engine.context import closing_from_record

    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    record = json.loads(text)
    if record.get("id") != str(job.id) or record.get("attempt") != job.attempt:
        msg = f"{path} holds the outcome of another attempt"
        raise ValueError(msg)
    closing, count = closing_from_record(job.id, record["closing"])
    facts = record["facts"]
    detail = record.get("detail")

    def also(session: Any) -> None:
        closing(session)
        _store_facts(session, job.id, facts)

    if not platform.queue.complete(job, detail=detail, result=record["result"], also=also):
        return False, "[mlrig] this attempt lost the job before completing it"
    if count:
        platform.hooks.metrics_logged(str(job.id), count)
    return True, f"[mlrig] completed{': ' + detail if detail else ''}"


def reproducibility_facts(
    experiment: dict[str, Any], datasets: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the run's reproducibility record holds (see :mod:`mlrig.tracking.reproducibility`)."""
    from mlrig.tracking.reproducibility import git_state

    origin = os.environ.get("MLRIG_ORIGIN_DIR")  # where the experiment was submitted from
    seen = os.environ.get(ORIGIN_GIT_ENV)  # the worker's look at it (at most seconds old)
    if seen:
        commit, dirty = json.loads(seen)
    else:
        commit, dirty = git_state(Path(origin)) if origin else (None, None)
    return {
        "seed": experiment["seed"],
        "python": pyplatform.python_version(),
        "platform": pyplatform.platform(),
        "packages": _package_versions(),
        "git_commit": commit,
        "git_dirty": dirty,
        "config_hash": config_hash(experiment),
        "datasets": datasets,
    }


def record_reproducibility(
    platform: Any,
    job_id: uuid.UUID,
    experiment: dict[str, Any],
    datasets: list[dict[str, Any]],
    *,
    session: Any = None,
) -> None:
    """Store the reproducibility facts on the experiment, in ``session`` when given (the
    transaction that completes the job), else in a transaction of its own."""
    facts = reproducibility_facts(experiment, datasets)
    if session is None:
        with platform.db.session() as own:
            _store_facts(own, job_id, facts)
    else:
        _store_facts(session, job_id, facts)


def _store_facts(session: Any, job_id: uuid.UUID, facts: dict[str, Any]) -> None:
    from mlrig.db.models import TrainingExperiment

    row = session.get(TrainingExperiment, job_id)
    if row is not None:
        row.reproducibility = {**(row.reproducibility or {}), **facts}


def prepare_platform(settings_json: str) -> None:
    """In a fork server, before it forks a job: build the platform of these settings (a
    worker's ``MLRIG_SETTINGS_JSON``) once, so that every job forked with the same settings
    starts with it (:func:`_prepared_platform`): the settings parsed, the plugin manager
    built, the engine created, the schema checked, and the statements a job runs compiled
    (reads of a random id, and a fenced write that finds no such attempt: nothing is
    written). Its connections are closed again before this returns, so no connection is
    ever shared with a forked job. The ``platform_started`` hook runs in each job."""
    held = _PREPARED[0]
    if held is not None and held[0] == settings_json:
        return
    _PREPARED[0] = None
    if held is not None:
        held[1].db.dispose()
    from mlrig.config import _from_json
    from mlrig.platform import Platform

    platform = Platform(_from_json(settings_json))
    try:
        _compile_job_statements(platform)
    finally:
        platform.db.dispose()
    _PREPARED[0] = (settings_json, platform)


def forget_prepared_platform() -> None:
    """Drop the prepared platform (the installed plugins changed since it was built)."""
    _PREPARED[0] = None


def _compile_job_statements(platform: Any) -> None:
    from sqlalchemy import delete

    from mlrig.db.models import TrainingMetric, User
    from mlrig.engine.queue import ClaimedJob
    from mlrig.experiments.metrics import AttemptFence, AttemptLostError, drop_points

    nobody = uuid.uuid4()
    try:
        load_experiment(platform, nobody)
    except SystemExit:  # no such experiment: what was wanted is the compiled read
        pass
    with platform.db.session() as session:
        session.get(User, nobody)
    try:
        drop_points(platform.db, nobody, after_step=None, fence=AttemptFence("-", 0))
    except AttemptLostError:
        pass
    job = ClaimedJob(
        id=nobody, name="-", trainer=None, attempt=0, max_attempts=1, resources={}, owner="-"
    )
    platform.queue.complete(job, result={})  # holds no such attempt: writes nothing
    with platform.db.session() as session:  # the closing flush's (deletes nothing)
        platform.db.begin_write(session)
        session.execute(delete(TrainingMetric).where(TrainingMetric.experiment_id == nobody))


def _prepared_platform(*, check_schema: bool = True) -> Any:
    """The platform the fork server prepared, if this job's settings are the ones it was
    built for, with what a fresh one does per process: the schema policy (one query on
    the job's own, first connection; not for a job its worker handed its experiment,
    read with the schema the worker checked) and the ``platform_started`` hook."""
    from mlrig.config import INHERITED_ENV
    from mlrig.engine import runner  # this code runs as ``__main__``: the server's module

    held, runner._PREPARED[0] = runner._PREPARED[0], None
    if held is None or os.environ.get(INHERITED_ENV) != held[0]:
        return None
    platform = held[1]
    pool = platform.db.engine.pool
    counts = getattr(pool, "checkedin", None), getattr(pool, "checkedout", None)
    if None in counts or any(count() for count in counts):  # type: ignore[misc]
        # the server disposed of its pool; if a connection were left, drop it unused
        platform.db.engine.dispose(close=False)
    if check_schema:
        platform.db.ensure_schema()
    platform.hooks.platform_started()
    return platform


def run(job_id: str, attempt: int, owner: str) -> int:
    """Run one attempt of a job; return the process exit code."""
    from mlrig.backends import load_backend
    from mlrig.engine.context import JobContext, LeaseLostError
    from mlrig.engine.queue import ClaimedJob
    from mlrig.platform import Platform

    # The worker hands down its effective settings (MLRIG_SETTINGS_JSON); a fork server
    # may have built the platform of those settings already.
    key = uuid.UUID(job_id)
    # what the worker's claim read (no query, no connection yet), else a read of our own
    handed = handed_experiment(key, attempt)
    platform = _prepared_platform(check_schema=handed is None) or Platform.from_config()
    experiment = handed or load_experiment(platform, key)
    job = ClaimedJob(
        id=key,
        name=experiment["name"],
        trainer=experiment["trainer"],
        attempt=attempt,
        max_attempts=experiment["max_attempts"],
        resources=experiment["resources"],
        owner=owner,
    )
    context = JobContext(platform, job, workdir=Path.cwd(), experiment=experiment)
    context.install_signal_handler()
    seed_everything(experiment["seed"])
    try:
        trainer_cls = load_backend("trainers", experiment["trainer"])
        trainer = trainer_cls.from_options({}, where=f"trainers.{experiment['trainer']}")
        print(
            f"[mlrig] {experiment['name']}: attempt {attempt} with trainer "
            f"{experiment['trainer']!r}",
            flush=True,
        )
        result = trainer.train(context)
        # an interrupted attempt (not pruned) does not complete: it flushes on its own;
        # otherwise the last points are written by the transaction that completes it
        interrupted = context.interrupted and context.pruned is None
        closing = None if interrupted else context.closing_writes()
        if closing is None:
            context.flush(closing=True)
        facts = reproducibility_facts(experiment, context.datasets)
    except LeaseLostError as exc:
        print(f"[mlrig] {exc}", flush=True)
        return EXIT_LEASE_LOST
    except Exception as exc:
        traceback.print_exc()
        sys.stderr.flush()
        try:
            context.flush()
        except LeaseLostError as lost:
            print(f"[mlrig] {lost}", flush=True)
            return EXIT_LEASE_LOST
        if is_permanent(exc):
            print(f"{PERMANENT_MARKER}{one_line(exc)}", flush=True)
            return EXIT_PERMANENT
        return 1
    if closing is None:  # interrupted; a pruned trial is done: it completes
        with platform.db.session() as session:  # the record of what ran, kept as before
            _store_facts(session, key, facts)
        print("[mlrig] interrupted by SIGTERM; the last checkpoint is kept", flush=True)
        return EXIT_INTERRUPTED
    detail = context.stop_reason if context.stopped_early else None
    if context.resumed_from_step is not None:
        resumed = f"resumed from checkpoint step {context.resumed_from_step}"
        detail = f"{detail}; {resumed}" if detail else resumed
    outcome = {
        "metrics": getattr(result, "metrics", None) or context.last_metrics,
        "model_version_id": getattr(result, "model_version_id", None) or context.model_version_id,
        "resumed_from_step": context.resumed_from_step,
    }
    pruned = context.pruned is not None
    if pruned:
        outcome["pruned"] = context.pruned.as_outcome()

    if not pruned and _hand_outcome(
        key, attempt, detail, outcome, facts, context.closing_record()
    ):  # the worker records it (a warm process, its connection open)
        platform.close()
        return 0

    def also(session: Any) -> None:
        """In the transaction completing the job: the last metric points, the
        reproducibility record, and a pruned trial's ``sweep_trials`` row."""
        assert closing is not None
        closing(session)
        _store_facts(session, key, facts)
        if pruned:
            context.record_pruned(session)

    if not platform.queue.complete(job, detail=detail, result=outcome, also=also):
        print("[mlrig] this attempt lost the job before completing it", flush=True)
        return EXIT_LEASE_LOST
    context.closed()
    print(f"[mlrig] completed{': ' + detail if detail else ''}", flush=True)
    platform.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m mlrig.engine.runner EXPERIMENT_ID ATTEMPT OWNER", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(run(args[0], int(args[1]), args[2]))


if __name__ == "__main__":
    main()
