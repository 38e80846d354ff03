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


def _check_path(path: object) -> str:
    if not isinstance(path, str) or "." not in path.strip("."):
        msg = f"estimator must be an import path like 'sklearn.svm.SVC', got {path!r}"
        raise ValidationError(msg)
    return path


def import_estimator(path: str) -> type:
    """The estimator class at ``module.Class``; only scikit-learn-compatible classes."""
    module, _, name = _check_path(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        msg = f"estimator {path!r} cannot be imported; use a path like 'sklearn.svm.SVC'"
        raise ValidationError(msg) from None
    if not (inspect.isclass(cls) and hasattr(cls, "fit") and hasattr(cls, "get_params")):
        msg = f"{path!r} is not a scikit-learn estimator (no fit/get_params)"
        raise ValidationError(msg)
    return cls


def _check_installed(path: str) -> None:
    """That the top-level package of ``path`` is installed, without importing it."""
    from importlib.util import find_spec

    top = path.partition(".")[0]
    try:
        found = find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        msg = f"estimator {path!r} cannot be imported: no package {top!r} is installed"
        raise ValidationError(msg)


def _estimator_params(cls: type) -> set[str]:
    """The constructor parameters of an estimator class (what ``get_params`` returns)."""
    try:
        return set(cls().get_params())
    except Exception:  # an estimator that needs arguments: trust what is given
        return set()


def _bad_parameter(cls: type, exc: Exception) -> ValidationError:
    return ValidationError(f"bad parameter for {cls.__name__}: {' '.join(str(exc).split())}")


def build_estimator(cls: type, kwargs: dict[str, Any]) -> Any:
    """``cls(**kwargs)``, its parameter values checked where scikit-learn can (1.2+).

    :raises ValidationError: an unknown parameter or a value the estimator refuses.
    """
    known = _estimator_params(cls)
    unknown = sorted(set(kwargs) - known) if known else []
    if unknown:
        msg = (
            f"{cls.__name__} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters: {', '.join(sorted(known))}"
        )
        raise ValidationError(msg, details={"unknown": unknown})
    try:
        estimator = cls(**kwargs)
        # scikit-learn checks values at fit; this is the same check, before any data
        validate = getattr(estimator, "_validate_params", None)
        if callable(validate):
            validate()
    except (TypeError, ValueError) as exc:
        raise _bad_parameter(cls, exc) from None
    return estimator


def _check_reserved(params: dict[str, Any]) -> None:
    task = params.get("task")
    if task is not None and task not in DEFAULT_ESTIMATORS:
        msg = f"task must be one of {', '.join(DEFAULT_ESTIMATORS)}, got {task!r}"
        raise ValidationError(msg)
    size = params.get("test_size", 0.2)
    fraction = isinstance(size, float) and 0 < size < 1
    count = type(size) is int and size >= 1  # scikit-learn also takes a row count
    if not (fraction or count):
        msg = f"test_size must be a fraction between 0 and 1 (or a row count), got {size!r}"
        raise ValidationError(msg)
    epochs = params.get("epochs")
    if epochs is not None and (type(epochs) is not int or epochs < 1):
        msg = f"epochs must be a positive integer, got {epochs!r}"
        raise ValidationError(msg)


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

    def check(self, *, params: dict[str, Any], dataset: dict[str, Any] | None) -> None:
        """At create time: the trainer's own options, that the estimator imports, and its
        parameter names and values. The data is only read when the job runs."""
        _check_reserved(params)
        if dataset is not None and not dataset.get("target"):
            msg = "the sklearn trainer needs the dataset's label column: --target COLUMN"
            raise ValidationError(msg)
        kwargs = {k: v for k, v in params.items() if k not in RESERVED}
        if params.get("estimator") or params.get("task"):
            path = _check_path(params.get("estimator") or DEFAULT_ESTIMATORS[params["task"]])
            if not path.startswith("sklearn."):
                # the server imports scikit-learn only: another package's import runs its
                # code, so only its presence is checked; the job checks the rest
                _check_installed(path)
                return
            cls = import_estimator(path)
            if "random_state" in _estimator_params(cls):
                kwargs.setdefault("random_state", 0)
            build_estimator(cls, kwargs)
            return
        # the task (so the default estimator) depends on the data: one must accept them
        errors = []
        for path in DEFAULT_ESTIMATORS.values():
            try:
                build_estimator(import_estimator(path), kwargs)
            except ValidationError as exc:
                errors.append(exc)
            else:
                return
        raise errors[0]

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
        _check_reserved(params)
        task = params.get("task") or infer_task(labels)
        cls = import_estimator(params.get("estimator") or DEFAULT_ESTIMATORS[task])
        kwargs = {k: v for k, v in params.items() if k not in RESERVED}
        seed = context.seed
        if "random_state" in _estimator_params(cls) and "random_state" not in kwargs:
            kwargs["random_state"] = None if seed is None else seed % 2**32
        build_estimator(cls, kwargs)  # a bad parameter fails now, and is not retried
        x_train, x_val, y_train, y_val = train_test_split(
            features,
            labels,
            test_size=params.get("test_size", 0.2),
            random_state=None if seed is None else seed % 2**32,
            stratify=labels if task == "classification" else None,
        )
        epochs = params.get("epochs")
        if epochs and hasattr(cls, "partial_fit"):
            model = self._train_epochs(
                context, cls(**kwargs), task, int(epochs), x_train, y_train, x_val, y_val, labels
            )
            # the last epoch logged these validation metrics already: log no second point
            final = evaluate(task, model, x_val, y_val, prefix="val_")
        else:
            model = cls(**kwargs).fit(x_train, y_train)
            context.log_metrics(evaluate(task, model, x_train, y_train), step=0, kind="train")
            final = evaluate(task, model, x_val, y_val, prefix="val_")
            context.log_metrics(final, step=0, kind="validation")
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
