"""``mlrig.autolog()``: track scikit-learn training without logging calls.

::

    mlrig.autolog()
    with mlrig.start_run("churn"):
        model = RandomForestClassifier(n_estimators=200).fit(x, y)

Each top-level ``fit`` (also ``fit_transform`` and ``fit_predict``) of a scikit-learn
estimator logs into the active run, or into a run of its own that it starts and ends:
the estimator's parameters, training metrics computed on the data it was fitted on
(``kind="train"``), the training data as a dataset (digest, schema, rows) and the fitted
model, registered as a new version with lineage to the run. A fit inside another (a
pipeline's steps, a grid search's candidates) is not logged on its own; a search logs its
best parameters (``best_<name>``) and ``best_cv_score`` (kind ``validation``) and registers
its best estimator. Logging never breaks training: a failure is a warning.

scikit-learn is not imported here: when it is imported already its estimators are
patched now, else the moment it is. ``mlrig.autolog(disable=True)`` restores them.
Keras and PyTorch Lightning have callbacks instead: :mod:`mlrig.tracking.integrations`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AutologConfig", "autolog"]


@dataclass(frozen=True)
class AutologConfig:
    """What :func:`autolog` was asked to log (the patched ``fit`` reads it on each call)."""

    log_models: bool = True
    log_datasets: bool = True
    log_training_metrics: bool = True
    registered_model_name: str | None = None
    experiment: str | None = None
    silent: bool = False


def autolog(
    *,
    disable: bool = False,
    log_models: bool = True,
    log_datasets: bool = True,
    log_training_metrics: bool = True,
    registered_model_name: str | None = None,
    experiment: str | None = None,
    silent: bool = False,
) -> None:
    """Log every scikit-learn ``fit`` from now on (see the module docstring).

    :param disable: stop autologging (the estimators get their own ``fit`` back).
    :param log_models: register each fitted model as a new version (``False``: do not).
    :param log_datasets: record the training data (digest, schema, rows) with the run.
    :param log_training_metrics: score the model on its training data (one extra
        ``predict`` over it).
    :param registered_model_name: the registry model the versions go to (default: the
        estimator's class name, e.g. ``RandomForestClassifier``).
    :param experiment: the study (run group) of the runs autolog starts itself.
    :param silent: no warning when logging fails (the fit always goes on).
    """
    from mlrig.tracking.integrations import scikit_learn

    if disable:
        scikit_learn.disable()
        return
    scikit_learn.enable(
        AutologConfig(
            log_models=log_models,
            log_datasets=log_datasets,
            log_training_metrics=log_training_metrics,
            registered_model_name=registered_model_name,
            experiment=experiment,
            silent=silent,
        )
    )
