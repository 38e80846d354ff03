"""A sweep trial's model: stored as a candidate, registered only if its trial is best.

In a sweep's trial, :meth:`JobContext.register_model` does not create a registry version
(a sweep of 100 trials would leave 100 versions): it pickles the model, its input sample
and its metadata to ``experiments/<trial experiment id>/candidate-<attempt>.pkl`` in the
artifact store and records the key in ``sweep_trials.candidate_key``. When the sweep
completes, the driver registers the best trial's candidate with
:func:`mlrig.registry.packaging.register_model` (lineage: the best trial's experiment as
the source, the sweep's id, name and trial number as tags) and deletes every candidate.
Failed, pruned and cancelled trials' candidates are never registered.
"""

from __future__ import annotations

import io
import pickle
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mlrig.db.models import MLModel, Sweep, SweepTrial, TrainingExperiment, User

if TYPE_CHECKING:
    from mlrig.engine.context import JobContext
    from mlrig.platform import Platform

#: the tags a sweep's registered version carries (its lineage to the sweep)
SWEEP_TAG = "sweep_id"


def store_candidate(
    context: JobContext, model: Any, *, name: str | None = None, sample: Any = None, **metadata: Any
) -> dict[str, Any]:
    """Keep ``model`` as the candidate of the running trial (fenced by its attempt: a
    stale attempt stores nothing). Returns what the trainer gets instead of a version:
    ``{"id": None, "candidate": True, "candidate_key", "name", "status": "candidate",
    "detail"}``."""
    from mlrig.engine.context import LeaseLostError
    from mlrig.engine.states import RUNNING

    sweep = context.sweep or {}
    platform = context.platform
    trial_id = uuid.UUID(sweep["trial_id"])
    name = name or context.model_name
    payload = {"model": model, "sample": sample, "name": name, "metadata": metadata}
    buffer = io.BytesIO()
    pickle.dump(payload, buffer, protocol=pickle.HIGHEST_PROTOCOL)
    key = f"experiments/{context.experiment_id}/candidate-{context.job.attempt:03d}.pkl"
    platform.artifacts.put(key, buffer.getvalue())
    previous = None
    with platform.db.session() as session:
        job = session.get(TrainingExperiment, context.job.id)
        sweep_row = session.get(TrainingExperiment, uuid.UUID(sweep["id"]))
        trial = session.get(SweepTrial, trial_id)
        held = (
            job is not None
            and job.status == RUNNING
            and job.lease_owner == context.job.owner
            and job.attempts == context.job.attempt
        )
        live = sweep_row is not None and sweep_row.status == RUNNING and trial is not None
        if held and live:
            assert trial is not None
            previous, trial.candidate_key = trial.candidate_key, key
    if not (held and live):
        platform.artifacts.delete(key)
        if not held:
            msg = "this attempt lost the job; stopping"
            raise LeaseLostError(msg)
        return {
            "id": None,
            "candidate": False,
            "candidate_key": None,
            "name": name,
            "status": "discarded",
            "detail": "the sweep ended before this trial did: its model is not kept",
        }
    if previous and previous != key:
        platform.artifacts.delete(previous)
    return {
        "id": None,
        "candidate": True,
        "candidate_key": key,
        "name": name,
        "status": "candidate",
        "detail": (
            f"kept as trial {sweep.get('number')}'s candidate; the sweep registers its best "
            "trial's model when it completes"
        ),
    }


def _registered(platform: Platform, sweep_id: uuid.UUID, experiment_id: uuid.UUID) -> Any:
    """The version an earlier attempt registered for this sweep, if any."""
    with platform.db.session() as session:
        rows = session.scalars(
            select(MLModel).where(
                MLModel.source_experiment_id == experiment_id, MLModel.deleted_at.is_(None)
            )
        ).all()
        for row in rows:
            if (row.tags or {}).get(SWEEP_TAG) == str(sweep_id):
                return row.id
    return None


def register_best(platform: Platform, sweep_id: uuid.UUID) -> uuid.UUID | None:
    """Register the best trial's candidate as a version (once); return its id."""
    from mlrig.registry.packaging import register_model
    from mlrig.security import Principal

    with platform.db.session() as session:
        sweep = session.get(Sweep, sweep_id)
        row = session.get(TrainingExperiment, sweep_id)
        if sweep is None or row is None or sweep.best_trial_id is None:
            return None
        trial = session.get(SweepTrial, sweep.best_trial_id)
        if trial is None or not trial.candidate_key or trial.experiment_id is None:
            return None
        key, number, value = trial.candidate_key, trial.number, trial.value
        experiment_id = trial.experiment_id
        name = (sweep.template or {}).get("model_name") or row.name
        sweep_name, objective = row.name, sweep.objective
        creator = session.get(User, row.created_by) if row.created_by else None
        actor = Principal(
            name=creator.name
            if creator
            else (row.configuration or {}).get("submitted_by") or f"sweep:{sweep_name}",
            role="developer",
            user_id=row.created_by,
        )
    found = _registered(platform, sweep_id, experiment_id)
    if found is not None:
        return found
    payload = pickle.loads(platform.artifacts.get_bytes(key))  # our own store's bytes
    metadata = dict(payload.get("metadata") or {})
    tags = {
        **(metadata.pop("tags", None) or {}),
        SWEEP_TAG: str(sweep_id),
        "sweep": sweep_name,
        "sweep_trial": str(number),
        "sweep_objective": f"{objective}={value:.6g}",
    }
    metadata.setdefault("description", f"best trial {number} of sweep {sweep_name}")
    metadata.pop("source_experiment_id", None)
    metadata.pop("source_run", None)
    version = register_model(
        platform,
        payload["model"],
        name=name,
        actor=actor,
        sample=payload.get("sample"),
        source_experiment_id=str(experiment_id),
        source_run=f"sweep {sweep_name} trial {number}",
        tags=tags,
        **metadata,
    )
    return uuid.UUID(version["id"])


def delete_candidates(platform: Platform, sweep_id: uuid.UUID) -> int:
    """Delete the stored candidates of an ended sweep's trials; a completed sweep whose
    best model could not be registered keeps that one (to register by hand)."""
    with platform.db.session() as session:
        sweep = session.get(Sweep, sweep_id)
        row = session.get(TrainingExperiment, sweep_id)
        if sweep is None or row is None or row.status == "running":
            return 0
        keep = (
            sweep.best_trial_id
            if row.status == "completed" and sweep.model_version_id is None
            else None
        )
        trials = session.scalars(
            select(SweepTrial).where(
                SweepTrial.sweep_id == sweep_id, SweepTrial.candidate_key.is_not(None)
            )
        ).all()
        keys = []
        for trial in trials:
            if keep is not None and trial.id == keep:
                continue
            keys.append(trial.candidate_key)
            trial.candidate_key = None
    for key in keys:
        platform.artifacts.delete(key)
    return len(keys)
