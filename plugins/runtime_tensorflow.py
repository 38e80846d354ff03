"""The ``tensorflow`` runtime: serve a packaged Keras model or TensorFlow SavedModel.

Needs ``pip install 'mlrig[tensorflow]'``; tensorflow is imported on load, never when this
module is imported (and quietly: its C++ start-up lines stay off stderr). What
:mod:`mlrig.formats` packages is loaded: ``model.keras`` (flavor ``keras``) or the
``saved_model/`` folder (flavor ``tensorflow.saved_model``, called through its
``serving_default`` signature, whose single input takes the batch; of several outputs the
first by name is served).

A Keras model is not called through ``model.predict`` (built for large offline batches:
milliseconds of overhead per call) but through one ``tf.function`` traced once with a
dynamic batch dimension, so every batch size reuses the same graph. TensorFlow places it
on the GPU when it sees one. ``threads`` sets TensorFlow's intra-op pool (default: the
CPUs divided among the serving replicas, ``MLRIG_SERVING_REPLICAS``); TensorFlow takes
it only before its first operation in the process, so describe() reports what it uses.
Classifiers (``model_type = "classification"``) also get ``predict_proba``: see
:mod:`mlrig.plugins._tensor_models`.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlrig.contracts.runtime import LoadedModel, ModelRuntime, default_threads
from mlrig.errors import MissingExtraError, NotFoundError, ValidationError
from mlrig.formats import load_manifest
from mlrig.formats._detect import MANIFEST
from mlrig.formats.stdio import captured_stderr
from mlrig.plugins._tensor_models import (
    OutputKind,
    TensorClassifierModel,
    TensorModel,
    input_spec,
    merged_metadata,
)


class TensorflowRuntimeOptions(BaseModel):
    """``[runtimes.tensorflow]`` options."""

    model_config = ConfigDict(extra="forbid")
    #: intra-op threads (None: the CPUs divided among the serving replicas); TensorFlow
    #: takes it only before its first operation in the process
    threads: int | None = Field(default=None, ge=1)
    #: inter-op threads (None: TensorFlow's default)
    inter_op_threads: int | None = Field(default=None, ge=1)
    #: how a classifier's output is read (see mlrig.plugins._tensor_models)
    output: OutputKind = "auto"


class _TfForward:
    """A traced serving function, numpy in and out."""

    def __init__(self, tf: Any, function: Any, input_name: str | None) -> None:
        self.tf = tf
        self.function = function
        self.input_name = input_name

    def __call__(self, array: Any) -> Any:
        tf = self.tf
        try:
            x = tf.convert_to_tensor(array)
            out = self.function(**{self.input_name: x}) if self.input_name else self.function(x)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as exc:
            msg = f"the batch does not fit the model's input: {exc}"
            raise ValidationError(msg) from exc
        if isinstance(out, dict):
            out = out[sorted(out)[0]]
        elif isinstance(out, list | tuple):
            out = out[0]
        return out.numpy()


class TensorflowModel(TensorModel):
    """A Keras model or SavedModel held in memory."""

    def __init__(self, forward: _TfForward, metadata: dict[str, Any], facts: dict) -> None:
        super().__init__(metadata, dtype=facts["dtype"])
        self._forward = forward
        self._facts = facts

    def forward(self, array: Any) -> Any:
        return self._forward(array)

    def describe(self) -> dict[str, Any]:
        threading = self._forward.tf.config.threading
        return {
            "runtime": "tensorflow",
            **self._facts,
            # 0 means TensorFlow's own choice (one per core)
            "threads": threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": threading.get_inter_op_parallelism_threads(),
        }

    def close(self) -> None:
        self._forward.function = None


class TensorflowClassifierModel(TensorClassifierModel, TensorflowModel):
    """A TensorFlow classifier: predictions are class labels, with ``predict_proba``."""

    def __init__(
        self,
        forward: _TfForward,
        metadata: dict[str, Any],
        facts: dict,
        output: OutputKind,
        ends_in: Literal["logits", "probabilities"] | None,
    ) -> None:
        TensorflowModel.__init__(self, forward, metadata, facts)
        TensorClassifierModel.__init__(
            self, metadata, dtype=facts["dtype"], output=output, ends_in=ends_in
        )


class TensorflowRuntime(ModelRuntime):
    """Loads a TensorFlow model package folder (or a ``.keras`` file / SavedModel folder)."""

    Options = TensorflowRuntimeOptions
    formats = ("tensorflow",)

    def load(self, path: Path, metadata: dict[str, Any]) -> LoadedModel:
        """Load the model; ``metadata`` (a version view or the manifest) may say it is a
        classifier (``model_type``) and carry its ``signature`` and ``classes``."""
        path = Path(path)
        packaged = path.is_dir() and (path / MANIFEST).is_file()
        if packaged:
            metadata = merged_metadata(load_manifest(path), metadata)
        tf = _tensorflow()
        dtype, shape = input_spec(metadata)
        dtype = dtype if dtype in ("float16", "float32", "float64") else "float32"
        # TensorFlow's runtime starts here: its C++ lines ("failed call to cuInit" on a
        # machine without a GPU...) stay off the terminal
        with captured_stderr():
            self._threads(tf)
            obj, flavor = self._object(tf, path, metadata, packaged=packaged)
            forward, ends_in = _serving_function(tf, obj, flavor, dtype, shape)
            gpus = tf.config.list_logical_devices("GPU")
        facts = {
            "flavor": flavor,
            "device": "gpu" if gpus else "cpu",
            "dtype": dtype,
            "tensorflow": tf.__version__,
        }
        if metadata.get("model_type") == "classification":
            return TensorflowClassifierModel(forward, metadata, facts, self.options.output, ends_in)
        return TensorflowModel(forward, metadata, facts)

    def _threads(self, tf: Any) -> None:
        threading = tf.config.threading
        wanted = self.options.threads or default_threads()
        with contextlib.suppress(RuntimeError):  # TensorFlow already runs: it keeps its pool
            if threading.get_intra_op_parallelism_threads() != wanted:
                threading.set_intra_op_parallelism_threads(wanted)
            inter = self.options.inter_op_threads
            if inter and threading.get_inter_op_parallelism_threads() != inter:
                threading.set_inter_op_parallelism_threads(inter)

    def _object(
        self, tf: Any, path: Path, metadata: dict[str, Any], *, packaged: bool
    ) -> tuple[Any, str]:
        from mlrig.formats._tensorflow import TensorflowFormat

        native = metadata.get("native") or {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # Keras 3 on numpy 2
                if packaged and native.get("flavor") in ("keras", "tensorflow.saved_model"):
                    return TensorflowFormat().load_native(path, metadata), native["flavor"]
                if path.is_file() or (path.is_dir() and (path / "saved_model.pb").is_file()):
                    obj = TensorflowFormat().load_file(path)
                    return obj, "keras" if path.is_file() else "tensorflow.saved_model"
        except (OSError, ValueError) as exc:
            msg = f"tensorflow cannot load the model at {str(path)!r}: {exc}"
            raise ValidationError(msg) from exc
        msg = f"no TensorFlow model package at {str(path)!r} (no {MANIFEST} with a TF model)"
        raise NotFoundError(msg)


def _serving_function(
    tf: Any, obj: Any, flavor: str, dtype: str, shape: list[int] | None
) -> tuple[_TfForward, Literal["logits", "probabilities"] | None]:
    """The function serving calls, and what the model's last layer says it outputs."""
    if flavor == "keras":
        dims = _input_dims(obj, shape)
        spec = tf.TensorSpec((None, *dims), tf.as_dtype(dtype))
        function = tf.function(lambda x: obj(x, training=False), input_signature=[spec])
        return _TfForward(tf, function, None), _keras_ends_in(obj)
    from mlrig.formats._tensorflow import serving_signature

    try:
        serving, name = serving_signature(obj)
    except ValueError as exc:
        raise ValidationError(f"cannot serve this SavedModel: {exc}") from exc
    return _TfForward(tf, serving, name), None


def _input_dims(model: Any, shape: list[int] | None) -> tuple[Any, ...]:
    """The non-batch input dimensions: the signature's, else the model's declared ones."""
    if shape:
        return tuple(None if d == -1 else d for d in shape[1:])
    inputs = getattr(model, "inputs", None)
    if inputs and len(inputs) == 1:
        return tuple(tuple(inputs[0].shape)[1:])
    msg = "cannot tell the Keras model's input shape: register it with a sample"
    raise ValidationError(msg)


def _keras_ends_in(model: Any) -> Literal["logits", "probabilities"] | None:
    """softmax/sigmoid on the last layer: probabilities; a linear one: logits."""
    layers = getattr(model, "layers", None)
    activation = getattr(layers[-1], "activation", None) if layers else None
    name = getattr(activation, "__name__", None)
    if name in ("softmax", "sigmoid"):
        return "probabilities"
    return "logits" if name in ("linear", "log_softmax") else None


def _tensorflow() -> Any:
    try:
        from mlrig.formats._tensorflow import _tf

        return _tf()
    except MissingExtraError:
        raise
    except ModuleNotFoundError as exc:
        msg = f"runtime 'tensorflow' needs: pip install 'mlrig[tensorflow]' ({exc.name} missing)"
        raise MissingExtraError(msg, details={"missing": [exc.name]}) from exc
