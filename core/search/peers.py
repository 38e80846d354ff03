"""The database side of pruning: the values a sweep's other trials recorded at a step,
and the ``sweep_trials`` row of a pruned trial.

No table of its own: a trial's record of an ASHA rung (or of a median step) is the metric
point it logged at that step, in ``training_metrics``.
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from mlrig.db.models import SweepTrial, TrainingMetric
from mlrig.db.types import utcnow
from mlrig.experiments.metrics import stored_value

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mlrig.db import Database
    from mlrig.search.pruning import Decision


def peer_values(
    db: Database,
    *,
    sweep_id: uuid.UUID | str,
    experiment_id: uuid.UUID | str,
    metric: str,
    kind: str,
    step: int,
) -> list[float]:
    """The values of ``metric`` (of ``kind``) at ``step`` of the trials of sweep
    ``sweep_id`` other than ``experiment_id``: one per trial (its newest point at that
    step), NaN left out. One query: ``sweep_trials`` by sweep, then an index seek per trial
    on ``(experiment_id, metric_name, step)``."""
    sweep_key = _uuid(sweep_id)
    me = _uuid(experiment_id)
    stmt = (
        select(TrainingMetric.experiment_id, TrainingMetric.metric_value)
        .join(SweepTrial, SweepTrial.experiment_id == TrainingMetric.experiment_id)
        .where(
            SweepTrial.sweep_id == sweep_key,
            TrainingMetric.experiment_id != me,
            TrainingMetric.metric_name == metric,
            TrainingMetric.metric_type == kind,
            TrainingMetric.step == step,
        )
        .order_by(TrainingMetric.recorded_at)
    )
    postgres = db.dialect == "postgresql"
    newest: dict[Any, float] = {}
    with db.session() as session:
        for experiment, raw in session.execute(stmt):
            newest[experiment] = stored_value(raw, postgres=postgres)
    return [v for v in newest.values() if v is not None and not math.isnan(v)]


def mark_pruned(
    session: Session, trial_id: uuid.UUID | str, decision: Decision, detail: str
) -> None:
    """Set the trial's row to ``pruned`` with its rung, step, value and detail, in the
    caller's transaction (the one completing the trial's job). Only a trial still queued or
    running changes: a row already told stays as it is."""
    session.execute(
        update(SweepTrial)
        .where(SweepTrial.id == _uuid(trial_id), SweepTrial.state.in_(("queued", "running")))
        .values(
            state="pruned",
            rung=decision.rung,
            pruned_at_step=decision.step,
            value=decision.value if math.isfinite(decision.value) else None,
            detail=detail,
            completed_at=utcnow(),
        )
    )


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
