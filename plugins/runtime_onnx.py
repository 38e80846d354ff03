"""The ``onnx`` runtime: serve a model's ONNX export (``model.onnx``) with onnxruntime.

Needs ``pip install 'mlrig[onnx]'`` (onnxruntime-gpu, which also runs on the CPU);
onnxruntime is imported on load, never when this module is imported. By default the
CUDA provider comes first when onnxruntime offers it *and* a session can really be
created on it (a GPU, the driver and the CUDA/cuDNN libraries are present), else the
CPU provider, quietly: onnxruntime's CUDA fallback messages are not printed. A batch is
converted to the dtype and shape of the session's input; the first output comes back
as a list. A model with a ``probabilities`` output (skl2onnx classifiers) also has
``predict_proba``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlrig.contracts.runtime import LoadedModel, ModelRuntime
from mlrig.errors import (
    ConfigError,
    MissingExtraError,
    MlrigError,
    NotFoundError,
    PluginError,
    ValidationError,
)
from mlrig.formats import complete_metadata
from mlrig.formats.batches import onnx_feeds, signature_columns
from mlrig.formats.stdio import captured_stderr, plain_lines

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_GPU_PROVIDERS = (CUDA, "TensorrtExecutionProvider", "ROCMExecutionProvider")
_PROBABILITY_OUTPUTS = ("probabilities", "output_probability")
_ERROR = 3  # onnxruntime log severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


class OnnxRuntimeOptions(BaseModel):
    """``[runtimes.onnx]`` options."""

    model_config = ConfigDict(extra="forbid")
    #: execution providers in order of preference; None: CUDA if usable, else CPU
    providers: list[str] | None = None
    #: the GPU the CUDA provider runs on
    device_id: int = Field(default=0, ge=0)
    #: threads inside one operator (None: onnxruntime's default, one per physical core)
    intra_op_threads: int | None = Field(default=None, ge=1)
    #: threads across independent operators (None: onnxruntime's default)
    inter_op_threads: int | None = Field(default=None, ge=1)
    graph_optimization: Literal["all", "extended", "basic", "none"] = "all"


class OnnxModel(LoadedModel):
    """An onnxruntime ``InferenceSession`` and what it needs to read a batch."""

    def __init__(self, session: Any, *, columns: list[str] | None, options: OnnxRuntimeOptions):
        self.session = session
        self.columns = columns
        self.inputs = session.get_inputs()
        self.output_names = [o.name for o in session.get_outputs()]
        self._options = options
        from onnxruntime.capi import onnxruntime_pybind11_state

        self._state = onnxruntime_pybind11_state  # its exception classes

    def predict(self, batch: Any) -> list[Any]:
        """The model's first output, one entry per row of ``batch``."""
        return _as_list(self._run(self.output_names[0], batch))

    def describe(self) -> dict[str, Any]:
        providers = self.session.get_providers()
        on_gpu = any(p in _GPU_PROVIDERS for p in providers)
        facts = {
            "runtime": "onnx",
            "providers": providers,
            "device": "cuda" if on_gpu else "cpu",
            "intra_op_threads": self._options.intra_op_threads,
            "inter_op_threads": self._options.inter_op_threads,
            "graph_optimization": self._options.graph_optimization,
        }
        if on_gpu:
            facts["device_id"] = self._options.device_id
        return facts

    def _run(self, output: str, batch: Any) -> Any:
        feeds = onnx_feeds(self.inputs, batch, self.columns)
        state = self._state
        try:
            return self.session.run([output], feeds)[0]
        except state.InvalidArgument as exc:
            msg = f"the batch does not fit the model's input: {exc}"
            raise ValidationError(msg) from exc
        except (state.Fail, state.RuntimeException) as exc:
            msg = f"onnxruntime failed to run the model: {exc}"
            raise MlrigError(msg) from exc


class OnnxClassifierModel(OnnxModel):
    """An ONNX classifier that also outputs class probabilities."""

    def predict_proba(self, batch: Any) -> list[Any]:
        """Per row, the probability of each class."""
        name = next(n for n in self.output_names if n in _PROBABILITY_OUTPUTS)
        return _as_list(self._run(name, batch))


class OnnxRuntime(ModelRuntime):
    """Loads ``model.onnx`` from a model package folder (or the file itself)."""

    Options = OnnxRuntimeOptions
    formats = ("onnx",)

    def load(self, path: Path, metadata: dict[str, Any]) -> LoadedModel:
        """Create the inference session; ``metadata`` may carry the manifest's signature."""
        ort = _onnxruntime()
        path = Path(path)
        metadata = complete_metadata(path, metadata)
        file = path if path.is_file() else path / metadata.get("onnx", {}).get("path", "model.onnx")
        export = metadata.get("onnx") or {}
        if not file.is_file() and export.get("status") in ("skipped", "failed"):
            msg = f"this model has no ONNX export ({export['status']}: {export.get('reason')})"
            raise NotFoundError(msg)
        if not file.is_file():
            msg = f"no ONNX model at {str(file)!r}"
            raise NotFoundError(msg)
        providers = self._providers(ort)
        asked = self.options.providers or []
        gpu_asked = any(p in _GPU_PROVIDERS for p in asked)
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        # A GPU session prints notices to stderr as it is created (onnxruntime 1.31: "No
        # registered plugin EP device found ..."), or why its provider failed to load:
        # keep them off the user's terminal, and use them as the reason of an error.
        on_gpu = any(p in _GPU_PROVIDERS for p in names)
        quiet = captured_stderr() if on_gpu else contextlib.nullcontext([])
        with quiet as captured:
            session = _session(ort, str(file), self._session_options(ort), providers)
        if gpu_asked and not any(p in _GPU_PROVIDERS for p in session.get_providers()):
            why = " | ".join(plain_lines(captured))[:600] or "no GPU, or CUDA libraries missing"
            msg = (
                f"runtime 'onnx': providers {asked} were asked for but onnxruntime could only "
                f"create the CPU provider: {why}"
            )
            raise PluginError(msg)
        outputs = {o.name for o in session.get_outputs()}
        cls = OnnxClassifierModel if outputs & set(_PROBABILITY_OUTPUTS) else OnnxModel
        columns = signature_columns(metadata.get("signature"))
        return cls(session, columns=columns, options=self.options)

    def _providers(self, ort: Any) -> list[Any]:
        available = ort.get_available_providers()
        if self.options.providers is None:
            wanted = [CUDA, CPU] if cuda_available() else [CPU]
        else:
            wanted = list(self.options.providers)
            unknown = [p for p in wanted if p not in available]
            if unknown:
                msg = (
                    f"runtime 'onnx': providers {unknown} are not in this onnxruntime; "
                    f"available: {available}"
                )
                raise ConfigError(msg)
        return [(p, {"device_id": self.options.device_id}) if p == CUDA else p for p in wanted]

    def _session_options(self, ort: Any) -> Any:
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        options = ort.SessionOptions()
        options.log_severity_level = _ERROR
        options.graph_optimization_level = levels[self.options.graph_optimization]
        if self.options.intra_op_threads:
            options.intra_op_num_threads = self.options.intra_op_threads
        if self.options.inter_op_threads:
            options.inter_op_num_threads = self.options.inter_op_threads
        return options


def cuda_available() -> bool:
    """Whether onnxruntime can create a session on the CUDA provider here (probed once)."""
    return cuda_probe()[0]


@lru_cache(maxsize=1)
def cuda_probe() -> tuple[bool, str]:
    """Create a tiny session on the CUDA provider: ``(usable, why not)``, once per process.

    onnxruntime prints its provider-loading failures straight to the process's stderr;
    the probe captures them (they become the reason) so a CPU machine stays quiet.
    """
    ort = _onnxruntime()
    if CUDA not in ort.get_available_providers():
        return False, f"this onnxruntime has no {CUDA} (install onnxruntime-gpu)"
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = _ERROR
    with captured_stderr() as captured:
        try:
            session = _session(ort, model.SerializeToString(), options, [CUDA, CPU])
            usable = CUDA in session.get_providers()
        except Exception as exc:  # any failure to create it means: no usable CUDA here
            usable = False
            captured.append(str(exc))
    if usable:
        return True, ""
    return False, " | ".join(plain_lines(captured)) or "the CUDA provider was not created"


def _session(ort: Any, model: str | bytes, options: Any, providers: list[Any]) -> Any:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the "falling back to CPU" notices
            return ort.InferenceSession(model, sess_options=options, providers=providers)
    except (state.InvalidProtobuf, state.InvalidGraph, state.NoSuchFile, state.Fail) as exc:
        msg = f"onnxruntime cannot load the model: {exc}"
        raise ValidationError(msg) from exc


@lru_cache(maxsize=1)
def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ModuleNotFoundError as exc:
        msg = f"runtime 'onnx' needs: pip install 'mlrig[onnx]' ({exc.name} is missing)"
        raise MissingExtraError(msg, details={"missing": [exc.name]}) from exc
    if importlib.util.find_spec("nvidia") is not None and hasattr(onnxruntime, "preload_dlls"):
        # CUDA/cuDNN from pip's nvidia-* wheels are found only once loaded; quietly try
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            onnxruntime.preload_dlls()
    return onnxruntime


def _as_list(values: Any) -> list[Any]:
    if hasattr(values, "ndim") and values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]  # regressors exported as [N, 1]: one value per row
    return values.tolist() if hasattr(values, "tolist") else list(values)
