"""Which framework a model object or a model file belongs to, without importing any."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mlrig.errors import NotFoundError, ValidationError

#: the frameworks mlrig can package, in the order they are documented
FRAMEWORKS: tuple[str, ...] = ("sklearn", "torch", "tensorflow", "onnx")

#: name of the manifest file in a model package folder
MANIFEST = "mlrig-model.json"

# top-level module of a class in the object's MRO -> framework
_MODULE_ROOTS = {
    "sklearn": "sklearn",
    "torch": "torch",
    "keras": "tensorflow",
    "tf_keras": "tensorflow",
    "tensorflow": "tensorflow",
    "onnx": "onnx",
}

_SUFFIXES = {
    ".joblib": "sklearn",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".pt": "torch",
    ".pth": "torch",
    ".keras": "tensorflow",
    ".h5": "tensorflow",
    ".onnx": "onnx",
}


def detect_framework(obj: Any) -> str:
    """The framework of model ``obj``: ``"sklearn"``, ``"torch"``, ``"tensorflow"`` or ``"onnx"``.

    Decided from the modules of the classes in ``type(obj).__mro__`` (an estimator that
    subclasses scikit-learn's ``BaseEstimator`` counts as sklearn), so nothing is
    imported. A path (``str`` or ``os.PathLike``) goes to :func:`detect_framework_of_path`.
    Raises :class:`~mlrig.errors.ValidationError` for anything else.
    """
    if isinstance(obj, str | os.PathLike):
        return detect_framework_of_path(obj)
    for cls in type(obj).__mro__:
        framework = _MODULE_ROOTS.get(cls.__module__.split(".")[0])
        if framework:
            return framework
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    msg = f"cannot package a {kind}: supported frameworks are {', '.join(FRAMEWORKS)}"
    raise ValidationError(msg, details={"type": kind, "supported": list(FRAMEWORKS)})


def detect_framework_of_path(path: str | os.PathLike[str]) -> str:
    """The framework of a model file or folder, from its name and contents.

    ``.joblib``/``.pkl``/``.pickle``: sklearn; ``.pt``/``.pth``: torch (a pickled
    module or TorchScript); ``.keras``/``.h5`` or a SavedModel folder: tensorflow;
    ``.onnx``: onnx; a model package folder: the framework its manifest names.
    """
    path = Path(path)
    if not path.exists():
        msg = f"no model file or folder at {str(path)!r}"
        raise NotFoundError(msg)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            try:
                return str(json.loads((path / MANIFEST).read_text())["framework"])
            except (ValueError, KeyError, TypeError) as exc:
                msg = f"{str(path / MANIFEST)!r} is not a valid mlrig model manifest: {exc!r}"
                raise ValidationError(msg) from exc
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "tensorflow"
        msg = f"{str(path)!r} is a folder but neither a SavedModel nor an mlrig model package"
        raise ValidationError(msg)
    framework = _SUFFIXES.get(path.suffix.lower())
    if framework is None:
        known = ", ".join(sorted(_SUFFIXES))
        msg = (
            f"cannot tell the framework of {path.name!r} from its suffix (known: {known}, "
            f"or a SavedModel folder); supported frameworks are {', '.join(FRAMEWORKS)}"
        )
        raise ValidationError(msg)
    return framework
