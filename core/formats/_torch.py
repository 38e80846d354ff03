"""PyTorch modules: the pickled module + its state_dict (or TorchScript); torch.onnx export.

The native artifact is ``torch.save(module)`` (``model.pt``, needs the module's class
importable to load) plus ``state_dict.pt``; a TorchScript module is stored as
``model.torchscript.pt`` instead. With a sample, a ``torch.export`` program
(``model.pt2``) is stored too: it loads without the class's code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlrig.errors import ValidationError
from mlrig.formats._base import ONNX_OPSET, FrameworkFormat, SkipExport, require
from mlrig.formats._signature import as_array, head, is_dataframe, signature_from_run


class TorchFormat(FrameworkFormat):
    """``torch.nn.Module`` and TorchScript modules."""

    name = "torch"
    extra = "torch"
    distributions = ("torch", "numpy")

    def load_file(self, path: Path) -> Any:
        torch = require("torch", extra=self.extra)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices
            if _is_torchscript(path):
                return torch.jit.load(str(path), map_location="cpu")
            obj = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(obj, torch.nn.Module):
            msg = (
                f"{path} holds a {type(obj).__qualname__}, not a torch.nn.Module (a state_dict "
                "alone cannot be run): save the module with torch.save(model, path)"
            )
            raise ValidationError(msg)
        return obj

    def save_native(
        self, obj: Any, folder: Path, *, source: Path | None, sample: Any
    ) -> dict[str, Any]:
        torch = require("torch", extra=self.extra)
        torch.save(obj.state_dict(), folder / "state_dict.pt")
        native: dict[str, Any] = {"state_dict": "state_dict.pt", "class": _class_path(obj)}
        if isinstance(obj, torch.jit.ScriptModule):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.jit.save(obj, str(folder / "model.torchscript.pt"))
            return {"flavor": "torch.torchscript", "path": "model.torchscript.pt", **native}
        torch.save(obj, folder / "model.pt")
        program = self._save_program(obj, folder, sample)
        return {"flavor": "torch.module", "path": "model.pt", **native, "program": program}

    def _save_program(self, obj: Any, folder: Path, sample: Any) -> dict[str, Any]:
        """Store a ``torch.export`` program (``model.pt2``) with a dynamic batch dimension."""
        torch = require("torch", extra=self.extra)
        if sample is None:
            return {"status": "skipped", "reason": "torch.export traces the model: needs sample="}
        args = (self._tensor(obj, head(sample)),)
        batch = torch.export.Dim("batch")
        try:
            with warnings.catch_warnings(), _eval(obj):
                warnings.simplefilter("ignore")
                program = torch.export.export(obj, args, dynamic_shapes=({0: batch},))
                torch.export.save(program, folder / "model.pt2")
        except Exception as exc:  # recorded: the pickled module is the native artifact
            (folder / "model.pt2").unlink(missing_ok=True)
            return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
        return {"status": "ok", "path": "model.pt2"}

    def predict(self, obj: Any, sample: Any) -> Any:
        torch = require("torch", extra=self.extra)
        with torch.no_grad(), _eval(obj):
            return obj(self._tensor(obj, sample))

    def signature(self, obj: Any, sample: Any) -> dict[str, Any]:
        if sample is None:
            return {"inputs": None, "outputs": None}
        rows = self._tensor(obj, head(sample))  # as the model gets it: float params' dtype
        return signature_from_run(rows, self.predict(obj, rows))

    def export_onnx(self, obj: Any, target: Path, sample: Any) -> dict[str, Any]:
        torch = require("torch", extra=self.extra)
        require("onnx", extra=self.extra)
        if sample is None:
            msg = "torch.onnx.export traces the model: pass sample= to export ONNX"
            raise SkipExport(msg)
        args = (self._tensor(obj, head(sample)),)
        version = torch.__version__.split("+")[0]
        if importlib.util.find_spec("onnxscript") and not isinstance(obj, torch.jit.ScriptModule):
            try:  # the new exporter, when its onnxscript is installed
                opset = _export(torch, obj, args, target, dynamo=True)
                return {"converter": f"torch.onnx {version} (dynamo)", "opset": opset}
            except Exception:
                target.unlink(missing_ok=True)  # the TorchScript exporter may manage
        opset = _export(torch, obj, args, target, dynamo=False)
        return {"converter": f"torch.onnx {version} (torchscript)", "opset": opset}

    def load_native(self, folder: Path, manifest: dict[str, Any]) -> Any:
        torch = require("torch", extra=self.extra)
        native = manifest["native"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if native["flavor"] == "torch.torchscript":
                return torch.jit.load(str(folder / native["path"]), map_location="cpu")
            try:
                return torch.load(folder / native["path"], map_location="cpu", weights_only=False)
            except (AttributeError, ModuleNotFoundError) as exc:
                program = (native.get("program") or {}).get("path")
                if program:  # the class is not importable here: the exported program is
                    return torch.export.load(folder / program).module()
                msg = (
                    f"cannot load the torch module: {exc}; make {native.get('class')} "
                    f"importable, or build it and load_state_dict({native['state_dict']!r})"
                )
                raise ValidationError(msg) from exc

    def _tensor(self, obj: Any, sample: Any) -> Any:
        """``sample`` as a tensor; floats take the dtype of the module's parameters."""
        torch = require("torch", extra=self.extra)
        if isinstance(sample, torch.Tensor):
            tensor = sample
        else:
            array = as_array(sample.to_numpy() if is_dataframe(sample) else sample)
            tensor = torch.from_numpy(array.copy())
        param = next(iter(obj.parameters()), None)
        if param is not None and tensor.is_floating_point() and param.is_floating_point():
            tensor = tensor.to(param.dtype)
        return tensor


def _export(torch: Any, obj: Any, args: tuple[Any, ...], target: Path, *, dynamo: bool) -> int:
    """Export with a dynamic batch dimension; return the opset used."""
    names = {"input_names": ["input"], "output_names": ["output"]}
    with (
        warnings.catch_warnings(),
        _eval(obj),
        contextlib.redirect_stdout(io.StringIO()),  # the new exporter's progress lines
        _quiet_logger("torch.onnx"),  # and its notes ("torchvision is not installed...")
    ):
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        if dynamo:
            opset = max(ONNX_OPSET, 18)  # the lowest the new exporter writes
            torch.onnx.export(
                obj, args, str(target), dynamo=True, external_data=False, verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset, **names,
            )  # fmt: skip
            return opset
        axes = {"input": {0: "batch"}, "output": {0: "batch"}}
        torch.onnx.export(
            obj, args, str(target), dynamo=False, dynamic_axes=axes, opset_version=ONNX_OPSET,
            **names,
        )  # fmt: skip
        return ONNX_OPSET


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Show only errors of logger ``name`` (and its children) for the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _eval(module: Any) -> Iterator[None]:
    """Put ``module`` in eval mode for the block, then restore its training flag."""
    training = bool(getattr(module, "training", False))
    module.eval()
    try:
        yield
    finally:
        module.train(training)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
