"""ONNX models: the file is both the native artifact and the ONNX export."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mlrig.errors import ValidationError
from mlrig.formats._base import FrameworkFormat, require

NATIVE = "model.onnx"


class OnnxFormat(FrameworkFormat):
    """``onnx.ModelProto`` objects and ``.onnx`` files."""

    name = "onnx"
    extra = "onnx"
    distributions = ("onnx", "onnxruntime", "onnxruntime-gpu", "numpy")

    def load_file(self, path: Path) -> Any:
        onnx = require("onnx", extra=self.extra)
        try:
            return onnx.load(str(path))
        except Exception as exc:  # protobuf's DecodeError and friends
            msg = f"{path} is not a readable ONNX model: {exc}"
            raise ValidationError(msg) from exc

    def save_native(
        self, obj: Any, folder: Path, *, source: Path | None, sample: Any
    ) -> dict[str, Any]:
        if source is not None and source.is_file():
            shutil.copyfile(source, folder / NATIVE)
        else:
            (folder / NATIVE).write_bytes(obj.SerializeToString())
        return {"flavor": "onnx", "path": NATIVE}

    def predict(self, obj: Any, sample: Any) -> Any:
        msg = "an ONNX model runs through the onnx runtime"
        raise NotImplementedError(msg)

    def signature(self, obj: Any, sample: Any) -> dict[str, Any]:
        io = graph_io(obj)
        return {
            "inputs": _schema(io["inputs"]),
            "outputs": _schema(io["outputs"]),
        }

    def export_onnx(self, obj: Any, target: Path, sample: Any) -> dict[str, Any]:
        return {"converter": None}  # the native file is the export: nothing to do

    def load_native(self, folder: Path, manifest: dict[str, Any]) -> Any:
        onnx = require("onnx", extra=self.extra)
        return onnx.load(str(folder / manifest["native"]["path"]))

    def details(self, obj: Any) -> dict[str, Any]:
        opsets = {o.domain or "ai.onnx": o.version for o in obj.opset_import}
        return {"producer": f"{obj.producer_name} {obj.producer_version}".strip(), "opsets": opsets}


def graph_io(proto: Any) -> dict[str, list[dict[str, Any]]]:
    """Names, dtypes and shapes (``-1`` for free dims) of an ONNX graph's inputs/outputs."""
    onnx = require("onnx", extra="onnx")
    initializers = {i.name for i in proto.graph.initializer}

    def describe(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return {"name": value.name, "dtype": "str" if dtype == "object" else dtype, "shape": shape}

    return {
        "inputs": [describe(v) for v in proto.graph.input if v.name not in initializers],
        "outputs": [describe(v) for v in proto.graph.output],
    }


def _schema(values: list[dict[str, Any]]) -> dict[str, Any]:
    if len(values) == 1:
        value = values[0]
        return {"kind": "tensor", "name": value["name"], "dtype": value["dtype"],
                "shape": value["shape"]}  # fmt: skip
    return {"kind": "tensors", "items": [{"kind": "tensor", **v} for v in values]}
