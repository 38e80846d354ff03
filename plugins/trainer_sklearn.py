"""The ``sklearn`` trainer: any scikit-learn estimator, by import path, on a CSV/parquet
dataset read through the storage layer.

Hyperparameters: ``estimator`` (import path; default a random forest for the task),
``task`` (classification/regression; default inferred from the target), ``test_size``
(0.2), ``epochs`` (for estimators with ``partial_fit``: train epoch by epoch with
checkpoints, per-epoch metrics and early stopping); every other key is passed to the
estimator. The dataset is ``{"uri": ..., "target": ...}``. The fitted model is registered
with lineage to the experiment.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from mlrig.contracts.trainer import Trainer, TrainingContext, TrainResult
from mlrig.errors import ValidationError

DEFAULT_ESTIMATORS = {
    "classification": "sklearn.ensemble.RandomForestClassifier",
    "regression": "sklearn.ensemble.RandomForestRegressor",
}
RESERVED = ("estimator", "task", "test_size", "epochs")


def import_estimator(path: str) -> type:
    """The estimator class at ``module.Class``; only scikit-learn-compatible classes."""
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        msg = f"estimator {path!r} cannot be imported; use a path like 'sklearn.svm.SVC'"
        raise ValidationError(msg) from None
    if not (inspect.isclass(cls) and hasattr(cls, "fit") and hasattr(cls, "get_params")):
        msg = f"{path!r} is not a scikit-learn estimator (no fit/get_params)"
        raise ValidationError(msg)
    return cls


def infer_task(target: Any) -> str:
    """Classification for strings, booleans and integers with few distinct values."""
    kind = getattr(target, "dtype", None)
    if kind is not None and kind.kind in "fc" and target.nunique() > 20:
        return "regression"
    if kind is not None and kind.kind in "iu" and target.nunique() > 20:
        return "regression"
    return "classification"


def evaluate(
    task: str, model: Any, features: Any, labels: Any, prefix: str = ""
) -> dict[str, float]:
    """The task's metrics of ``model`` on one split."""
    import numpy as np
    from sklearn import metrics

    predictions = model.predict(features)
    if task == "regression":
        return {
            f"{prefix}rmse": float(np.sqrt(metrics.mean_squared_error(labels, predictions))),
            f"{prefix}mae": float(metrics.mean_absolute_error(labels, predictions)),
            f"{prefix}r2": float(metrics.r2_score(labels, predictions)),
        }
    out = {
        f"{prefix}accuracy": float(metrics.accuracy_score(labels, predictions)),
        f"{prefix}f1": float(metrics.f1_score(labels, predictions, average="macro")),
    }
    if hasattr(model, "predict_proba"):
        try:
            out[f"{prefix}loss"] = float(
                metrics.log_loss(labels, model.predict_proba(features), labels=model.classes_)
            )
        except (ValueError, AttributeError):
            pass
    return out


class SklearnTrainer(Trainer):
    """Train a scikit-learn estimator; register the fitted model."""

    def train(self, context: TrainingContext) -> TrainResult:
        from sklearn.model_selection import train_test_split

        params = dict(context.params)
        dataset = context.dataset
        if not dataset.get("uri") or not dataset.get("target"):
            msg = "the sklearn trainer needs a dataset: {'uri': ..., 'target': COLUMN}"
            raise ValidationError(msg)
        frame = context.read_dataset()
        target = dataset["target"]
        if target not in frame.columns:
            msg = f"target {target!r} is not a column of {dataset['uri']}"
            raise ValidationError(msg)
        features, labels = frame.drop(columns=[target]), frame[target]
        task = params.get("task") or infer_task(labels)
        cls = import_estimator(params.get("estimator") or DEFAULT_ESTIMATORS[task])
        kwargs = {k: v for k, v in params.items() if k not in RESERVED}
        seed = context.seed
        if "random_state" in cls().get_params() and "random_state" not in kwargs:
            kwargs["random_state"] = None if seed is None else seed % 2**32
        x_train, x_val, y_train, y_val = train_test_split(
            features,
            labels,
            test_size=float(params.get("test_size", 0.2)),
            random_state=None if seed is None else seed % 2**32,
            stratify=labels if task == "classification" else None,
        )
        epochs = params.get("epochs")
        if epochs and hasattr(cls, "partial_fit"):
            model = self._train_epochs(
                context, cls(**kwargs), task, int(epochs), x_train, y_train, x_val, y_val, labels
            )
        else:
            model = cls(**kwargs).fit(x_train, y_train)
            context.log_metrics(evaluate(task, model, x_train, y_train), step=0, kind="train")
        final = evaluate(task, model, x_val, y_val, prefix="val_")
        context.log_metrics(final, step=context.last_step, kind="validation")
        version = context.register_model(
            model, sample=x_train.head(5), model_type=task, metrics=final
        )
        return TrainResult(metrics=final, model_version_id=version["id"])

    @staticmethod
    def _train_epochs(
        context: TrainingContext,
        model: Any,
        task: str,
        epochs: int,
        x_train: Any,
        y_train: Any,
        x_val: Any,
        y_val: Any,
        labels: Any,
    ) -> Any:
        import numpy as np

        start = 0
        state = context.restore()
        if state is not None:
            model, start = state["model"], state["epoch"] + 1
        fit_kwargs = {"classes": np.unique(labels)} if task == "classification" else {}
        for epoch in range(start, epochs):
            model.partial_fit(x_train, y_train, **fit_kwargs)
            context.log_metrics(
                evaluate(task, model, x_train, y_train), step=epoch, epoch=epoch, kind="train"
            )
            context.log_metrics(
                evaluate(task, model, x_val, y_val, prefix="val_"),
                step=epoch,
                epoch=epoch,
                kind="validation",
            )
            context.checkpoint({"model": model, "epoch": epoch, "step": epoch})
            if context.should_stop():
                break
        return model
