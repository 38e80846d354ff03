"""The ``features-materialize`` trainer: a feature view's materialisation as an engine job
(queued, retried, logged like any training job).

Hyperparameters: ``view`` (the feature view's name), ``start`` and ``end`` (ISO-8601
times or null: ``start`` defaults to the view's watermark, ``end`` to the time the job
runs). It runs :func:`mlrig.features.materialize.materialize_view` and logs ``rows``,
``written`` and ``rows_per_s`` as metrics (also ``progress_rows`` per batch). An unknown
view, a bad time or ``end`` before ``start`` fail the job at once (no retry).
"""

from __future__ import annotations

from typing import Any

from mlrig.contracts.trainer import PermanentError, Trainer, TrainingContext, TrainResult
from mlrig.errors import NotFoundError, ValidationError

PARAMS = ("view", "start", "end")


def _check_params(params: dict[str, Any]) -> tuple[str, Any, Any]:
    from mlrig.features.materialize import parse_time

    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        msg = (
            f"features-materialize takes the parameters {', '.join(PARAMS)}; "
            f"unknown: {', '.join(unknown)}"
        )
        raise ValidationError(msg, details={"unknown": unknown})
    view = params.get("view")
    if not isinstance(view, str) or not view:
        msg = f"features-materialize needs the feature view's name as 'view', got {view!r}"
        raise ValidationError(msg)
    start = parse_time(params.get("start"), name="start")
    end = parse_time(params.get("end"), name="end")
    if start is not None and end is not None and end < start:
        msg = f"end ({end.isoformat()}) is before start ({start.isoformat()})"
        raise ValidationError(msg)
    return view, start, end


class MaterializeTrainer(Trainer):
    """Materialise one window of a feature view into the online store."""

    def check(self, *, params: dict[str, Any], dataset: dict[str, Any] | None) -> None:
        _check_params(params)

    def train(self, context: TrainingContext) -> TrainResult:
        from mlrig.features.materialize import materialize_view

        try:
            view, start, end = _check_params(context.params)
        except ValidationError as exc:
            raise PermanentError(exc.message, details=exc.details) from None
        platform = getattr(context, "platform", None)
        if platform is None:
            msg = "features-materialize runs inside the training engine (no platform here)"
            raise PermanentError(msg)
        batches = [0]

        def progress(done: int, total: int) -> None:
            batches[0] += 1
            context.log_metrics({"progress_rows": float(done)}, step=batches[0])
            print(f"[mlrig] materialised {done}/{total} rows of {view!r}", flush=True)

        try:
            outcome = materialize_view(
                platform,
                view,
                start=start,
                end=end,
                progress=progress,
                job_id=getattr(context, "experiment_id", None),
            )
        except (ValidationError, NotFoundError) as exc:
            raise PermanentError(exc.message, details=exc.details) from None
        metrics = {
            "rows": float(outcome["rows"]),
            "written": float(outcome["written"]),
            "rows_per_s": float(outcome["rows_per_s"] or 0.0),
            "seconds": float(outcome["seconds"]),
        }
        context.log_metrics(metrics, step=batches[0] + 1)
        print(
            f"[mlrig] feature view {view!r}: {outcome['rows']} rows from {outcome['start']} "
            f"to {outcome['end']} ({metrics['rows_per_s']:.0f} rows/s); watermark now "
            f"{outcome['watermark']}",
            flush=True,
        )
        return TrainResult(metrics=metrics)
