"""The ``sklearn`` runtime: serve a packaged scikit-learn estimator (``model.joblib``).

Needs ``pip install 'mlrig[sklearn]'``; scikit-learn, joblib and pandas are imported on
load, never when this module is imported. A batch may be rows (list of lists or a numpy
array), records (list of dicts) or a DataFrame; records and DataFrames are ordered by the
columns the model was fitted on (or the signature's). Predictions come back as a list.
A classifier's loaded model also has ``predict_proba``.

Threads: the BLAS/OpenMP pools are capped at load to ``threads``, by default the CPUs
divided among the serving replicas (``MLRIG_SERVING_REPLICAS``, set by ``mlrig serve``),
so N replicas on N cores do not oversubscribe them. The cap is set once for the process
(a per-call limit would cost more than predicting one row) and only ever lowers a pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mlrig.contracts.runtime import LoadedModel, ModelRuntime, default_threads
from mlrig.errors import MissingExtraError, NotFoundError, ValidationError
from mlrig.formats import complete_metadata
from mlrig.formats.batches import (
    is_dataframe,
    is_records,
    signature_columns,
    to_array,
    to_frame,
)


class SklearnRuntimeOptions(BaseModel):
    """``[runtimes.sklearn]`` options."""

    model_config = ConfigDict(extra="forbid")
    #: cap on the BLAS/OpenMP threads predictions use (None: the CPUs divided among the
    #: serving replicas)
    threads: int | None = Field(default=None, ge=1)


class SklearnModel(LoadedModel):
    """A scikit-learn estimator held in memory."""

    batching_helps = True

    def __init__(self, model: Any, *, columns: list[str] | None, threads: int) -> None:
        import threadpoolctl

        self.model = model
        fitted = getattr(model, "feature_names_in_", None)
        #: names of the columns, when the estimator was fitted on a DataFrame
        self.feature_names = None if fitted is None else [str(n) for n in fitted]
        self.columns = self.feature_names or columns
        self._controller = threadpoolctl.ThreadpoolController()
        self._threads = threads
        # once, for the process: lower (never raise) every pool above the cap
        for pool in self._controller.lib_controllers:
            if pool.num_threads > threads:
                pool.set_num_threads(threads)

    def predict(self, batch: Any) -> list[Any]:
        """One prediction per row of ``batch``."""
        return self._call("predict", batch)

    def describe(self) -> dict[str, Any]:
        pools = [p.num_threads for p in self._controller.lib_controllers]
        return {
            "runtime": "sklearn",
            "threads": max(pools, default=self._threads),
            "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
            "n_jobs": getattr(self.model, "n_jobs", None),
        }

    def _call(self, method: str, batch: Any) -> list[Any]:
        x = self._input(batch)
        try:
            result = getattr(self.model, method)(x)
        except (ValueError, TypeError, KeyError) as exc:
            msg = f"the batch does not fit the model's input: {exc}"
            raise ValidationError(msg) from exc
        return result.tolist() if hasattr(result, "tolist") else list(result)

    def _input(self, batch: Any) -> Any:
        if self.feature_names is not None:  # fitted on a DataFrame: give it one
            return to_frame(batch, self.feature_names)
        if is_dataframe(batch) or is_records(batch):
            return to_array(batch, self.columns)
        return to_array(batch)


class SklearnClassifierModel(SklearnModel):
    """A scikit-learn estimator that also predicts class probabilities."""

    def predict_proba(self, batch: Any) -> list[list[float]]:
        """Per row, the probability of each class (in the order of ``classes``)."""
        return self._call("predict_proba", batch)

    @property
    def classes(self) -> list[Any]:
        """The class labels, in the order of :meth:`predict_proba`'s columns."""
        return self.model.classes_.tolist()


class SklearnArgmaxClassifierModel(SklearnClassifierModel):
    """A classifier whose ``predict`` is the most probable class of ``predict_proba``
    (logistic regression, trees and forests): serving gets both from one call, half the
    cost (scikit-learn's per-call input validation dominates small batches)."""

    def predict_with_proba(self, batch: Any) -> tuple[list[Any], list[list[float]]]:
        """Labels and probabilities from one ``predict_proba`` call."""
        x = self._input(batch)
        try:
            proba = self.model.predict_proba(x)
        except (ValueError, TypeError, KeyError) as exc:
            msg = f"the batch does not fit the model's input: {exc}"
            raise ValidationError(msg) from exc
        labels = self.model.classes_.take(proba.argmax(axis=1))
        return labels.tolist(), proba.tolist()


#: final estimators whose predict() is classes_[argmax(predict_proba())]: forests and
#: trees compute it that way; logistic regression's decision function is monotone in it
_ARGMAX_CLASSIFIERS = frozenset(
    {
        "LogisticRegression",
        "LogisticRegressionCV",
        "DecisionTreeClassifier",
        "ExtraTreeClassifier",
        "RandomForestClassifier",
        "ExtraTreesClassifier",
    }
)


def _classifier_class(model: Any) -> type[SklearnModel]:
    if not hasattr(model, "predict_proba"):
        return SklearnModel
    final = model.steps[-1][1] if hasattr(model, "steps") else model  # a Pipeline's last
    classes = getattr(model, "classes_", None)
    single_output = classes is not None and getattr(classes, "ndim", 0) == 1
    if type(final).__name__ in _ARGMAX_CLASSIFIERS and single_output:
        return SklearnArgmaxClassifierModel
    return SklearnClassifierModel


class SklearnRuntime(ModelRuntime):
    """Loads ``model.joblib`` from a model package folder (or the file itself)."""

    Options = SklearnRuntimeOptions
    formats = ("sklearn",)

    def load(self, path: Path, metadata: dict[str, Any]) -> LoadedModel:
        """Load the estimator; ``metadata`` may carry the manifest's ``signature``/``native``."""
        try:
            import joblib
        except ModuleNotFoundError as exc:
            msg = f"runtime 'sklearn' needs: pip install 'mlrig[sklearn]' ({exc.name} is missing)"
            raise MissingExtraError(msg, details={"missing": [exc.name]}) from exc
        path = Path(path)
        metadata = complete_metadata(path, metadata)
        native = metadata.get("native", {}).get("path", "model.joblib")
        file = path if path.is_file() else path / native
        if not file.is_file():
            msg = f"no scikit-learn model at {str(file)!r}"
            raise NotFoundError(msg)
        model = joblib.load(file)
        cls = _classifier_class(model)
        columns = signature_columns(metadata.get("signature"))
        threads = self.options.threads or default_threads()
        return cls(model, columns=columns, threads=threads)
