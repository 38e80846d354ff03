"""The ``onnx`` runtime: serve a model's ONNX export (``model.onnx``) with onnxruntime.

Needs ``pip install 'mlrig[onnx]'`` (onnxruntime-gpu, which also runs on the CPU);
onnxruntime is imported on load, never when this module is imported.

Providers: by default the best one that really works here comes first: TensorRT, then
CUDA, each only when onnxruntime offers it *and* a probe session can be created on it
(a GPU, the driver and the TensorRT/CUDA/cuDNN libraries are present), then the CPU
provider; quietly: onnxruntime's fallback messages are not printed, and
:meth:`OnnxModel.describe` says which providers run the model and why a GPU one is not
used. ``providers = [...]`` in ``[runtimes.onnx]`` fixes the list instead.

Threads: ``intra_op_threads`` defaults to the CPUs divided among the serving replicas
(``MLRIG_SERVING_REPLICAS``, set by ``mlrig serve``), so N replicas on N cores do not
oversubscribe them. A batch is converted to the dtype and shape of the session's input;
the first output comes back as a list. A model with a ``probabilities`` output (skl2onnx
classifiers) also has ``predict_proba``. The session is warmed up at load with a one-row
zero batch (where the input shape allows), and :meth:`OnnxModel.warm_up` runs a real one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import tempfile
import time
import warnings
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlrig.contracts.runtime import LoadedModel, ModelRuntime, default_threads
from mlrig.errors import (
    ConfigError,
    MissingExtraError,
    MlrigError,
    NotFoundError,
    PluginError,
    ValidationError,
)
from mlrig.formats import complete_metadata
from mlrig.formats.batches import ONNX_DTYPES, onnx_feeds, signature_columns
from mlrig.formats.stdio import captured_stderr, plain_lines

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_GPU_PROVIDERS = (TENSORRT, CUDA, "ROCMExecutionProvider")
_PROBABILITY_OUTPUTS = ("probabilities", "output_probability")
_ERROR = 3  # onnxruntime log severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


class OnnxRuntimeOptions(BaseModel):
    """``[runtimes.onnx]`` options."""

    model_config = ConfigDict(extra="forbid")
    #: execution providers in order of preference; None: TensorRT, CUDA (each if usable
    #: here), then CPU
    providers: list[str] | None = None
    #: with the default providers: try TensorRT before CUDA (engines are built on the first
    #: run of each input shape, which the warm-up pays; they are cached in trt_cache_dir)
    tensorrt: bool = True
    #: where TensorRT keeps its built engines (None: a folder in the temporary directory)
    trt_cache_dir: str | None = None
    #: let TensorRT run in float16 (faster, but predictions move by more than 1e-5)
    trt_fp16: bool = False
    #: the GPU the CUDA and TensorRT providers run on
    device_id: int = Field(default=0, ge=0)
    #: threads inside one operator (None: the CPUs divided among the serving replicas)
    intra_op_threads: int | None = Field(default=None, ge=1)
    #: threads across independent operators (None: onnxruntime's default)
    inter_op_threads: int | None = Field(default=None, ge=1)
    #: whether idle intra-op threads spin (lower latency; burns CPU other replicas could use)
    allow_spinning: bool = True
    graph_optimization: Literal["all", "extended", "basic", "none"] = "all"
    #: on a GPU provider, copy the batch to the device and only the output asked for back
    #: (an IO binding) instead of letting run() move every input and output
    io_binding: bool = False
    #: run a one-row zero batch at load, so the first request pays no lazy initialisation
    warm_up: bool = True
    #: on TensorRT, warm_up() also runs a batch of this many rows: TensorRT rebuilds its
    #: engine (seconds) for every batch larger than any it has seen, so serving's batches
    #: should all fall inside the warmed range
    trt_warm_up_rows: int = Field(default=1024, ge=1)


class OnnxModel(LoadedModel):
    """An onnxruntime ``InferenceSession`` and what it needs to read a batch."""

    batching_helps = True

    def __init__(
        self,
        session: Any,
        *,
        columns: list[str] | None,
        options: OnnxRuntimeOptions,
        threads: int,
        not_used: dict[str, str] | None = None,
        constants: set[str] | None = None,
    ):
        self.session = session
        self.columns = columns
        # the inputs a batch feeds: tf2onnx lists some constants (initializers) as graph
        # inputs too, which have their values already
        self.inputs = [i for i in session.get_inputs() if i.name not in (constants or ())]
        self.output_names = [o.name for o in session.get_outputs()]
        self._options = options
        self._threads = threads
        self._not_used = not_used or {}
        self._warm_up_seconds: float | None = None
        from onnxruntime.capi import onnxruntime_pybind11_state

        self._state = onnxruntime_pybind11_state  # its exception classes
        providers = session.get_providers()
        self.on_gpu = any(p in _GPU_PROVIDERS for p in providers)
        self._binding = options.io_binding and self.on_gpu
        self._direct = self._direct_input()

    def _direct_input(self) -> tuple[str, Any, tuple[int, ...]] | None:
        """``(name, dtype, row shape)`` of the single static numeric input, for which a
        numpy batch of the right shape goes to the session as is (cast if need be)."""
        import numpy as np

        if len(self.inputs) != 1:
            return None
        arg = self.inputs[0]
        dtype = ONNX_DTYPES.get(arg.type)
        dims = tuple(arg.shape[1:])
        if dtype in (None, "object") or not all(isinstance(d, int) and d > 0 for d in dims):
            return None
        return arg.name, np.dtype(dtype), dims

    def predict(self, batch: Any) -> list[Any]:
        """The model's first output, one entry per row of ``batch``."""
        return _as_list(self._run(self.output_names[0], batch))

    def warm_up(self, sample: Any) -> None:
        """Run ``sample`` and its first row (the two shapes serving sees most); on TensorRT
        also ``trt_warm_up_rows`` rows, so the engine covers serving's batch sizes."""
        started = time.perf_counter()
        self.predict(sample)
        first = sample[:1] if hasattr(sample, "__getitem__") else sample
        self.predict(first)
        if TENSORRT in self.session.get_providers() and hasattr(sample, "shape"):
            import numpy as np

            rows = self._options.trt_warm_up_rows
            self.predict(np.resize(sample, (rows, *sample.shape[1:])))
        self._warm_up_seconds = time.perf_counter() - started

    def describe(self) -> dict[str, Any]:
        providers = self.session.get_providers()
        facts: dict[str, Any] = {
            "runtime": "onnx",
            "providers": providers,
            "device": "cuda" if self.on_gpu else "cpu",
            "intra_op_threads": self._threads,
            "inter_op_threads": self._options.inter_op_threads,
            "graph_optimization": self._options.graph_optimization,
            "io_binding": self._binding,
        }
        if self.on_gpu:
            facts["device_id"] = self._options.device_id
        if self._not_used:
            facts["providers_not_used"] = dict(self._not_used)
        if self._warm_up_seconds is not None:
            facts["warm_up_seconds"] = round(self._warm_up_seconds, 6)
        return facts

    def close(self) -> None:
        self.session = None  # the session (and its GPU memory) goes with the last reference

    def _run(self, output: str, batch: Any) -> Any:
        return self._run_many([output], batch)[0]

    def _run_many(self, outputs: list[str], batch: Any) -> list[Any]:
        direct = self._direct
        if (
            direct is not None
            and type(batch).__name__ == "ndarray"
            and batch.ndim == len(direct[2]) + 1
            and batch.shape[1:] == direct[2]
            and batch.dtype.kind in "fiub"
        ):  # the serving path: an (N, F) array already checked against the signature
            name, dtype, _ = direct
            feeds = {name: batch if batch.dtype == dtype else batch.astype(dtype)}
        elif (
            direct is not None
            and type(batch).__name__ == "ndarray"  # (a DataFrame's columns go by name)
            and batch.ndim == len(direct[2]) + 1
            and tuple(batch.shape[1:]) != direct[2]
        ):  # rows of the wrong width: never silently re-cut into other rows
            expected = [-1, *direct[2]]
            msg = f"batch has shape {list(batch.shape)}; the model expects {expected}"
            raise ValidationError(msg)
        else:
            feeds = onnx_feeds(self.inputs, batch, self.columns)
        state = self._state
        try:
            if self._binding:
                return self._run_bound(outputs, feeds)
            return self.session.run(outputs, feeds)
        except state.InvalidArgument as exc:
            msg = f"the batch does not fit the model's input: {exc}"
            raise ValidationError(msg) from exc
        except (state.Fail, state.RuntimeException) as exc:
            msg = f"onnxruntime failed to run the model: {exc}"
            raise MlrigError(msg) from exc

    def _run_bound(self, outputs: list[str], feeds: dict[str, Any]) -> list[Any]:
        import onnxruntime as ort

        binding = self.session.io_binding()
        device = self._options.device_id
        kind = "cuda" if self.on_gpu else "cpu"  # (a CPU session: only the tests bind it)
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(array, kind, device if self.on_gpu else 0)
            binding.bind_ortvalue_input(name, value)
        for output in outputs:  # only the outputs asked for come back
            binding.bind_output(output, "cpu")
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def _zero_batch(self) -> dict[str, Any] | None:
        """A one-row batch of zeros for every input, where the input shapes allow it."""
        import numpy as np

        feeds = {}
        for arg in self.inputs:
            dtype = ONNX_DTYPES.get(arg.type)
            dims = list(arg.shape)[1:]
            if dtype in (None, "object") or not all(isinstance(d, int) and d > 0 for d in dims):
                return None
            feeds[arg.name] = np.zeros([1, *dims], dtype=dtype)
        return feeds

    def _warm_up_at_load(self) -> None:
        feeds = self._zero_batch()
        if feeds is None:
            return
        with contextlib.suppress(Exception):  # a model that refuses zeros still serves
            started = time.perf_counter()
            if len(feeds) == 1:
                self._run(self.output_names[0], next(iter(feeds.values())))
            else:
                self._run(self.output_names[0], feeds)
            self._warm_up_seconds = time.perf_counter() - started


class OnnxClassifierModel(OnnxModel):
    """An ONNX classifier that also outputs class probabilities."""

    def predict_proba(self, batch: Any) -> list[Any]:
        """Per row, the probability of each class."""
        return _as_list(self._run(self._proba_name, batch))

    def predict_with_proba(self, batch: Any) -> tuple[list[Any], list[Any]]:
        """Labels and probabilities from one run of the session (serving wants both)."""
        labels, proba = self._run_many(self._both, batch)
        return _as_list(labels), proba.tolist()

    @cached_property
    def _proba_name(self) -> str:
        return next(n for n in self.output_names if n in _PROBABILITY_OUTPUTS)

    @cached_property
    def _both(self) -> list[str]:
        return [self.output_names[0], self._proba_name]


class OnnxScoresClassifierModel(OnnxModel):
    """An ONNX classifier whose output is class scores (a torch or Keras network's
    export): served like the torch/tensorflow runtimes serve it, labels and probabilities
    (see :mod:`mlrig.plugins._tensor_models`)."""

    def __init__(self, session: Any, *, output: str, classes: list[Any] | None, **kw: Any):
        super().__init__(session, **kw)
        self.output = output
        self._classes = classes

    @property
    def classes(self) -> list[Any] | None:
        """The class labels (from the metadata), in the order of ``predict_proba``."""
        return self._classes

    def predict(self, batch: Any) -> list[Any]:
        """Per row, the most probable class (its label, or its index)."""
        from mlrig.plugins._tensor_models import class_labels

        return class_labels(self._probabilities(batch), self._classes)

    def predict_proba(self, batch: Any) -> list[Any]:
        """Per row, the probability of each class."""
        return self._probabilities(batch).tolist()

    def predict_with_proba(self, batch: Any) -> tuple[list[Any], list[Any]]:
        """Labels and probabilities from one run of the session."""
        from mlrig.plugins._tensor_models import class_labels

        proba = self._probabilities(batch)
        return class_labels(proba, self._classes), proba.tolist()

    def _probabilities(self, batch: Any) -> Any:
        from mlrig.plugins._tensor_models import class_probabilities

        return class_probabilities(self._run(self.output_names[0], batch), self.output)


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
        providers, not_used = self._providers(ort)
        asked = self.options.providers or []
        gpu_asked = any(p in _GPU_PROVIDERS for p in asked)
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        # A GPU session prints notices to stderr as it is created (onnxruntime 1.31: "No
        # registered plugin EP device found ..."), or why its provider failed to load:
        # keep them off the user's terminal, and use them as the reason of an error.
        on_gpu = any(p in _GPU_PROVIDERS for p in names)
        quiet = captured_stderr() if on_gpu else contextlib.nullcontext([])
        threads = self.options.intra_op_threads or default_threads()
        with quiet as captured:
            session = _session(ort, str(file), self._session_options(ort, threads), providers)
        if gpu_asked and not any(p in _GPU_PROVIDERS for p in session.get_providers()):
            why = " | ".join(plain_lines(captured))[:600] or "no GPU, or CUDA libraries missing"
            msg = (
                f"runtime 'onnx': providers {asked} were asked for but onnxruntime could only "
                f"create the CPU provider: {why}"
            )
            raise PluginError(msg)
        outputs = {o.name for o in session.get_outputs()}
        columns = signature_columns(metadata.get("signature"))
        graph = _graph(file)
        constants = {i.name for i in graph.initializer} if graph is not None else set()
        common = {
            "columns": columns,
            "options": self.options,
            "threads": threads,
            "constants": constants,
        }
        model: OnnxModel
        if outputs & set(_PROBABILITY_OUTPUTS):
            model = OnnxClassifierModel(session, not_used=not_used, **common)
        elif metadata.get("model_type") == "classification":
            # a network's export: its first output holds class scores
            output = _scores_kind(graph, session.get_outputs()[0].name)
            classes = metadata.get("classes")
            model = OnnxScoresClassifierModel(
                session, output=output, classes=classes, not_used=not_used, **common
            )
        else:
            model = OnnxModel(session, not_used=not_used, **common)
        if self.options.warm_up:
            with captured_stderr() if on_gpu else contextlib.nullcontext([]):
                model._warm_up_at_load()
        return model

    def _providers(self, ort: Any) -> tuple[list[Any], dict[str, str]]:
        """The providers to ask for, and why the GPU ones left out are (default only)."""
        available = ort.get_available_providers()
        not_used: dict[str, str] = {}
        if self.options.providers is None:
            wanted = []
            if not self.options.tensorrt:
                not_used[TENSORRT] = "tensorrt = false in [runtimes.onnx]"
            else:
                usable, why = tensorrt_probe()
                if usable:
                    wanted.append(TENSORRT)
                else:
                    not_used[TENSORRT] = why
            usable, why = cuda_probe()
            if usable:
                wanted.append(CUDA)
            else:
                not_used[CUDA] = why
            wanted.append(CPU)
        else:
            wanted = list(self.options.providers)
            unknown = [p for p in wanted if p not in available]
            if unknown:
                msg = (
                    f"runtime 'onnx': providers {unknown} are not in this onnxruntime; "
                    f"available: {available}"
                )
                raise ConfigError(msg)
        return [self._with_options(p) for p in wanted], not_used

    def _with_options(self, provider: str) -> Any:
        device = {"device_id": self.options.device_id}
        if provider == CUDA:
            return (CUDA, device)
        if provider == TENSORRT:
            cache = self.options.trt_cache_dir or str(Path(tempfile.gettempdir()) / "mlrig-trt")
            Path(cache).mkdir(parents=True, exist_ok=True)
            trt = {
                **device,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": cache,
                "trt_fp16_enable": self.options.trt_fp16,
            }
            return (TENSORRT, trt)
        return provider

    def _session_options(self, ort: Any, threads: int) -> Any:
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        options = ort.SessionOptions()
        options.log_severity_level = _ERROR
        options.graph_optimization_level = levels[self.options.graph_optimization]
        options.intra_op_num_threads = threads
        if self.options.inter_op_threads:
            options.inter_op_num_threads = self.options.inter_op_threads
        spinning = "1" if self.options.allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        return options


def _graph(file: Path) -> Any:
    """The model's graph (without external weights), or None where onnx cannot read it."""
    import onnx

    try:
        return onnx.load(str(file), load_external_data=False).graph
    except Exception:  # onnxruntime loaded it: do without what the graph would tell
        return None


def _scores_kind(graph: Any, output: str) -> str:
    """Whether the graph's ``output`` comes out of a softmax/sigmoid ("probabilities"), a
    log-softmax or a linear layer ("logits": a softmax gives the probabilities), or
    something else ("auto": decided row by row)."""
    if graph is None:
        return "auto"
    producer = next((n for n in graph.node if output in n.output), None)
    while producer is not None and producer.op_type in ("Identity", "Cast", "Reshape"):
        source = producer.input[0]
        producer = next((n for n in graph.node if source in n.output), None)
    if producer is None:
        return "auto"
    if producer.op_type in ("Softmax", "Sigmoid"):
        return "probabilities"
    return "logits" if producer.op_type in ("LogSoftmax", "Gemm", "MatMul", "Add") else "auto"


def cuda_available() -> bool:
    """Whether onnxruntime can create a session on the CUDA provider here (probed once)."""
    return cuda_probe()[0]


def cuda_probe() -> tuple[bool, str]:
    """Create a tiny session on the CUDA provider: ``(usable, why not)``, once per process."""
    return provider_probe(CUDA)


def tensorrt_probe() -> tuple[bool, str]:
    """Create a tiny session on the TensorRT provider: ``(usable, why not)``, once."""
    return provider_probe(TENSORRT)


@lru_cache(maxsize=4)
def provider_probe(provider: str) -> tuple[bool, str]:
    """Create a tiny session on ``provider``: ``(usable, why not)``, once per process.

    onnxruntime prints its provider-loading failures straight to the process's stderr;
    the probe captures them (they become the reason) so a CPU machine stays quiet.
    """
    ort = _onnxruntime()
    if provider not in ort.get_available_providers():
        return False, f"this onnxruntime has no {provider} (install onnxruntime-gpu)"
    if provider in _GPU_PROVIDERS and not _nvidia_gpu_visible():
        return False, "no NVIDIA GPU visible (no /proc/driver/nvidia/gpus, no nvidia-smi)"
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],  # TensorRT refuses a lone Identity
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
            session = _session(ort, model.SerializeToString(), options, [provider, CPU])
            usable = provider in session.get_providers()
            if usable:  # TensorRT loads its libraries on the first run, not at creation
                import numpy as np

                session.run(None, {"x": np.ones(1, dtype=np.float32)})
        except Exception as exc:  # any failure to create or run it means: not usable here
            usable = False
            captured.append(str(exc))
    if usable:
        return True, ""
    return False, " | ".join(plain_lines(captured))[:600] or f"{provider} was not created"


def _nvidia_gpu_visible() -> bool:
    """The cheap check first: without a driver, no GPU provider can work (and probing one
    would only load CUDA libraries to find that out)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    with contextlib.suppress(OSError):
        if gpus.is_dir() and any(gpus.iterdir()):
            return True
    return shutil.which("nvidia-smi") is not None


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
