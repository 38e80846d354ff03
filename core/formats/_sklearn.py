"""scikit-learn models (and estimators that follow its API): joblib + skl2onnx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlrig.errors import ValidationError
from mlrig.formats._base import ONNX_OPSET, FrameworkFormat, SkipExport, require
from mlrig.formats._signature import as_array, head, is_dataframe, signature_from_run
from mlrig.formats.batches import to_frame

NATIVE = "model.joblib"


class SklearnFormat(FrameworkFormat):
    """``model.joblib`` (joblib pickle); ONNX through skl2onnx with ``zipmap`` off."""

    name = "sklearn"
    extra = "sklearn"
    distributions = ("scikit-learn", "joblib", "numpy")

    def load_file(self, path: Path) -> Any:
        joblib = require("joblib", extra=self.extra)
        obj = joblib.load(path)  # reads plain pickles too
        if not _is_estimator(obj):
            msg = f"{path} holds a {type(obj).__qualname__}, not a scikit-learn estimator"
            raise ValidationError(msg)
        return obj

    def save_native(
        self, obj: Any, folder: Path, *, source: Path | None, sample: Any
    ) -> dict[str, Any]:
        joblib = require("joblib", extra=self.extra)
        joblib.dump(obj, folder / NATIVE)
        return {"flavor": "sklearn.joblib", "path": NATIVE}

    def predict(self, obj: Any, sample: Any) -> Any:
        method = obj.predict if hasattr(obj, "predict") else obj.transform
        return method(_named(obj, sample))

    def signature(self, obj: Any, sample: Any) -> dict[str, Any]:
        if sample is not None:
            rows = _named(obj, head(sample))
            return signature_from_run(rows, self.predict(obj, rows))
        names = getattr(obj, "feature_names_in_", None)
        n_features = getattr(obj, "n_features_in_", None)
        if names is not None:
            columns = [{"name": str(n), "dtype": None} for n in names]
            inputs = {"kind": "dataframe", "columns": columns, "shape": [-1, len(columns)]}
        elif n_features is not None:
            inputs = {"kind": "tensor", "dtype": None, "shape": [-1, int(n_features)]}
        else:
            inputs = None
        return {"inputs": inputs, "outputs": None}

    def export_onnx(self, obj: Any, target: Path, sample: Any) -> dict[str, Any]:
        skl2onnx = require("skl2onnx", extra=self.extra)
        from skl2onnx.common.data_types import FloatTensorType
        from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator

        x: Any = None
        initial_types = None
        if sample is not None and is_dataframe(sample) and not _all_numeric(sample):
            rows = head(sample)  # one ONNX input per column, typed from the column
            x = rows.astype({c: "float32" for c, t in rows.dtypes.items() if t.kind in "biuf"})
        elif sample is not None:
            array = as_array(head(sample))
            if array.dtype.kind in "biuf":
                initial_types = [("input", FloatTensorType([None, *array.shape[1:]]))]
            else:
                x = array
        elif getattr(obj, "n_features_in_", None) is not None:
            initial_types = [("input", FloatTensorType([None, int(obj.n_features_in_)]))]
        else:
            msg = "the model has no n_features_in_: pass sample= to export ONNX"
            raise SkipExport(msg)
        options = {"zipmap": False} if _is_classifier(obj) else None
        try:
            proto = skl2onnx.to_onnx(
                obj,
                X=x,
                initial_types=initial_types,
                options=options,
                target_opset={"": ONNX_OPSET, "ai.onnx.ml": 3},
            )
        except (MissingConverter, MissingShapeCalculator) as exc:
            msg = f"no skl2onnx converter: {_first_line(exc)}"
            raise SkipExport(msg) from exc
        target.write_bytes(proto.SerializeToString())
        return {"converter": f"skl2onnx {skl2onnx.__version__}", "opset": ONNX_OPSET}

    def load_native(self, folder: Path, manifest: dict[str, Any]) -> Any:
        joblib = require("joblib", extra=self.extra)
        return joblib.load(folder / manifest["native"]["path"])

    def model_type(self, obj: Any) -> str | None:
        from sklearn import base

        checks = [
            ("classification", "is_classifier"),
            ("regression", "is_regressor"),
            ("clustering", "is_clusterer"),
            ("outlier_detection", "is_outlier_detector"),
        ]
        for kind, check in checks:
            if hasattr(base, check) and getattr(base, check)(obj):
                return kind
        return "transformer" if hasattr(obj, "transform") else None

    def details(self, obj: Any) -> dict[str, Any]:
        classes = getattr(obj, "classes_", None)
        return {} if classes is None else {"classes": as_array(classes).tolist()}


def _is_estimator(obj: Any) -> bool:
    return any(c.__module__.startswith("sklearn.") for c in type(obj).__mro__)


def _named(obj: Any, sample: Any) -> Any:
    """Rows for a model fitted on a DataFrame, as a DataFrame with its column names."""
    names = getattr(obj, "feature_names_in_", None)
    if names is None or is_dataframe(sample):
        return sample
    return to_frame(sample, [str(n) for n in names])


def _is_classifier(obj: Any) -> bool:
    from sklearn.base import is_classifier

    return bool(is_classifier(obj))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _all_numeric(frame: Any) -> bool:
    return all(dtype.kind in "biuf" for dtype in frame.dtypes)
