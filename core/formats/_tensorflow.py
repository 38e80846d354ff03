"""TensorFlow / Keras models: ``model.keras`` or a SavedModel folder; tf2onnx export.

A Keras model is stored with ``model.save("model.keras")``; any other TensorFlow object
(a loaded SavedModel, a ``tf.Module``) as a SavedModel folder ``saved_model/``. The ONNX
export goes through ``tf2onnx.convert.from_function`` (its ``from_keras`` does not handle
Keras 3 models).
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from mlrig.formats._base import ONNX_OPSET, FrameworkFormat, SkipExport, require
from mlrig.formats._signature import as_array, head, signature_from_run
from mlrig.formats.stdio import captured_stderr


class TensorflowFormat(FrameworkFormat):
    """Keras models and TensorFlow SavedModels."""

    name = "tensorflow"
    extra = "tensorflow"
    distributions = ("tensorflow", "keras", "numpy")

    def load_file(self, path: Path) -> Any:
        if path.is_dir():
            return _tf().saved_model.load(str(path))
        _tf()
        return require("keras", extra=self.extra).models.load_model(path)

    def save_native(
        self, obj: Any, folder: Path, *, source: Path | None, sample: Any
    ) -> dict[str, Any]:
        if _is_keras(obj):
            with warnings.catch_warnings():
                # Keras 3 on numpy 2 warns about its own __array__; nothing the user can do
                warnings.simplefilter("ignore", DeprecationWarning)
                obj.save(folder / "model.keras")
            return {"flavor": "keras", "path": "model.keras"}
        if source is not None and source.is_dir():
            shutil.copytree(source, folder / "saved_model", dirs_exist_ok=True)
        else:
            _tf().saved_model.save(obj, str(folder / "saved_model"))
        return {"flavor": "tensorflow.saved_model", "path": "saved_model"}

    def predict(self, obj: Any, sample: Any) -> Any:
        tf = _tf()
        x = tf.convert_to_tensor(_input_array(sample))
        if _is_keras(obj):
            out = obj(x, training=False)
        else:
            serving, name = _serving(obj)
            out = serving(**{name: x})
        if isinstance(out, dict):
            out = out[sorted(out)[0]] if len(out) == 1 else {k: v for k, v in out.items()}
        return _numpy(out)

    def signature(self, obj: Any, sample: Any) -> dict[str, Any]:
        if sample is None:
            if not _is_keras(obj) or not getattr(obj, "inputs", None):
                return {"inputs": None, "outputs": None}
            return {"inputs": _declared(obj.inputs), "outputs": _declared(obj.outputs)}
        rows = _input_array(head(sample))  # as the model gets it: floats as float32
        return signature_from_run(rows, self.predict(obj, rows))

    def export_onnx(self, obj: Any, target: Path, sample: Any) -> dict[str, Any]:
        tf = _tf()
        tf2onnx = require("tf2onnx", extra=self.extra)
        spec = (_input_spec(obj, sample),)
        if _is_keras(obj):
            function = tf.function(lambda x: obj(x, training=False), input_signature=spec)
        else:
            serving, name = _serving(obj)
            function = tf.function(lambda x: _first(serving(**{name: x})), input_signature=spec)
        with captured_stderr():  # grappler's start-up lines
            tf2onnx.convert.from_function(
                function, input_signature=spec, opset=ONNX_OPSET, output_path=str(target)
            )
        return {"converter": f"tf2onnx {tf2onnx.__version__}", "opset": ONNX_OPSET}

    def load_native(self, folder: Path, manifest: dict[str, Any]) -> Any:
        native = manifest["native"]
        if native["flavor"] == "keras":
            _tf()
            keras = require("keras", extra=self.extra)
            return keras.models.load_model(folder / native["path"])
        return _tf().saved_model.load(str(folder / native["path"]))


def _tf() -> Any:
    """Import tensorflow, keeping its C++ start-up lines (absl logging) off stderr."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with captured_stderr():
        return require("tensorflow", extra="tensorflow")


def _is_keras(obj: Any) -> bool:
    return any(c.__module__.split(".")[0] in ("keras", "tf_keras") for c in type(obj).__mro__)


def serving_signature(obj: Any) -> tuple[Any, str]:
    """The ``serving_default`` signature of a SavedModel and its single input's name.

    :raises ValueError: no such signature, or it has more than one input (the message says).
    """
    signatures = getattr(obj, "signatures", {})
    if "serving_default" not in signatures:
        msg = "the SavedModel has no 'serving_default' signature"
        raise ValueError(msg)
    serving = signatures["serving_default"]
    names = list(serving.structured_input_signature[1])
    if len(names) != 1:
        msg = f"the SavedModel's serving signature has {len(names)} inputs; only one is supported"
        raise ValueError(msg)
    return serving, names[0]


def _serving(obj: Any) -> tuple[Any, str]:
    try:
        return serving_signature(obj)
    except ValueError as exc:
        raise SkipExport(str(exc)) from exc


def _input_array(sample: Any) -> Any:
    array = as_array(sample)
    return array.astype("float32") if array.dtype.kind == "f" else array


def _input_spec(obj: Any, sample: Any) -> Any:
    tf = _tf()
    if sample is not None:
        array = _input_array(head(sample))
        return tf.TensorSpec((None, *array.shape[1:]), tf.as_dtype(array.dtype), name="input")
    inputs = getattr(obj, "inputs", None) if _is_keras(obj) else None
    if inputs and len(inputs) == 1:
        shape = (None, *tuple(inputs[0].shape)[1:])
        return tf.TensorSpec(shape, tf.as_dtype(inputs[0].dtype), name="input")
    msg = "cannot tell the model's input shape: pass sample= to export ONNX"
    raise SkipExport(msg)


def _declared(tensors: list[Any]) -> dict[str, Any]:
    """Schema of a Keras model's declared inputs or outputs (``None`` dims become -1)."""
    items = [
        {
            "kind": "tensor",
            "dtype": str(t.dtype),
            "shape": [-1 if d is None else int(d) for d in tuple(t.shape)],
        }
        for t in tensors
    ]
    return items[0] if len(items) == 1 else {"kind": "tensors", "items": items}


def _first(outputs: Any) -> Any:
    return outputs[sorted(outputs)[0]] if isinstance(outputs, dict) else outputs


def _numpy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _numpy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_numpy(v) for v in value]
    return value.numpy() if hasattr(value, "numpy") else value
