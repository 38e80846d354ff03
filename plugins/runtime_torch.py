"""The ``torch`` runtime: serve a packaged PyTorch module (TorchScript or eager).

Needs ``pip install 'mlrig[torch]'``; torch is imported on load, never when this module is
imported. What :mod:`mlrig.formats` packages is loaded in this order:

- ``model.torchscript.pt`` (flavor ``torch.torchscript``): ``torch.jit.load``, no code needed;
- with ``builder = "package.module:function"`` in ``[runtimes.torch]``: the function
  builds the module (called with no arguments) and ``state_dict.pt`` is loaded into it;
- else the pickled module ``model.pt`` (its class must be importable), or, where it is
  not, the ``torch.export`` program ``model.pt2`` stored beside it.

The module runs in eval mode under ``torch.inference_mode``, on ``device`` (default: the
GPU when torch sees one), with ``threads`` intra-op threads (default: the CPUs divided
among the serving replicas, ``MLRIG_SERVING_REPLICAS``). A batch becomes one float tensor
in the dtype of the module's parameters (float32 unless they are float64). Classifiers
(``model_type = "classification"``) also get ``predict_proba``: see
:mod:`mlrig.plugins._tensor_models`.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlrig.contracts.runtime import LoadedModel, ModelRuntime, default_threads
from mlrig.errors import MissingExtraError, MlrigError, NotFoundError, ValidationError
from mlrig.formats import load_manifest
from mlrig.formats._detect import MANIFEST
from mlrig.plugins._tensor_models import (
    OutputKind,
    TensorClassifierModel,
    TensorModel,
    merged_metadata,
)

_PROBABILITY_LAYERS = ("Softmax", "Sigmoid")
#: layers whose output is unbounded scores: a softmax gives the probabilities
_LOGIT_LAYERS = ("LogSoftmax", "Linear", "Bilinear")


class TorchRuntimeOptions(BaseModel):
    """``[runtimes.torch]`` options."""

    model_config = ConfigDict(extra="forbid")
    #: "auto" (CUDA when torch sees a GPU, else the CPU), "cpu", "cuda" or "cuda:N"
    device: str = "auto"
    #: intra-op threads (None: the CPUs divided among the serving replicas); torch keeps
    #: one setting per process, so the last model loaded sets it
    threads: int | None = Field(default=None, ge=1)
    #: "package.module:function" building the module, into which state_dict.pt is loaded
    builder: str | None = None
    #: how a classifier's output is read (see mlrig.plugins._tensor_models)
    output: OutputKind = "auto"


class _TorchForward:
    """The forward pass of a module on a device, numpy in and out."""

    def __init__(self, torch: Any, module: Any, device: Any) -> None:
        self.torch = torch
        self.module = module
        self.device = device

    def __call__(self, array: Any) -> Any:
        torch = self.torch
        tensor = torch.from_numpy(array)
        if self.device.type != "cpu":
            tensor = tensor.to(self.device, non_blocking=True)
        try:
            with torch.inference_mode():
                out = self.module(tensor)
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            # shape and dtype mismatches surface as RuntimeError from the operators
            msg = f"the batch does not fit the model's input: {exc}"
            raise ValidationError(msg) from exc
        return _first_tensor(out).detach().to("cpu").numpy()


class TorchModel(TensorModel):
    """A torch module held in memory."""

    def __init__(self, forward: _TorchForward, metadata: dict[str, Any], facts: dict) -> None:
        super().__init__(metadata, dtype=facts["dtype"])
        self._forward = forward
        self._facts = facts

    def forward(self, array: Any) -> Any:
        return self._forward(array)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "torch", **self._facts, "threads": self._forward.torch.get_num_threads()}

    def close(self) -> None:
        self._forward.module = None
        if self._forward.device.type == "cuda":
            self._forward.torch.cuda.empty_cache()


class TorchClassifierModel(TensorClassifierModel, TorchModel):
    """A torch classifier: predictions are class labels, with ``predict_proba``."""

    def __init__(
        self, forward: _TorchForward, metadata: dict[str, Any], facts: dict, output: OutputKind
    ) -> None:
        TorchModel.__init__(self, forward, metadata, facts)
        TensorClassifierModel.__init__(
            self, metadata, dtype=facts["dtype"], output=output, ends_in=_ends_in(forward.module)
        )


class TorchRuntime(ModelRuntime):
    """Loads a torch model package folder (or a TorchScript / pickled module file)."""

    Options = TorchRuntimeOptions
    formats = ("torch",)

    def load(self, path: Path, metadata: dict[str, Any]) -> LoadedModel:
        """Load the module; ``metadata`` (a version view or the manifest) may say it is a
        classifier (``model_type``) and carry its ``signature`` and ``classes``."""
        torch = _torch()
        path = Path(path)
        if path.is_dir() and (path / MANIFEST).is_file():
            metadata = merged_metadata(load_manifest(path), metadata)
        module, flavor = self._module(torch, path, metadata)
        device = self._device(torch)
        threads = self.options.threads or default_threads()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        try:
            module = module.to(device)
            if flavor != "torch.export":  # an exported program was traced in eval mode
                module = module.eval()  # (and refuses eval(): "not supported yet")
        except RuntimeError as exc:  # e.g. CUDA out of memory
            msg = f"runtime 'torch' cannot move the model to {device}: {exc}"
            raise MlrigError(msg) from exc
        param = next(iter(_parameters(module)), None)
        dtype = "float64" if param is not None and param.dtype == torch.float64 else "float32"
        facts = {
            "flavor": flavor,
            "device": str(device),
            "dtype": dtype,
            "torch": torch.__version__,
        }
        forward = _TorchForward(torch, module, device)
        if metadata.get("model_type") == "classification":
            return TorchClassifierModel(forward, metadata, facts, self.options.output)
        return TorchModel(forward, metadata, facts)

    def _module(self, torch: Any, path: Path, metadata: dict[str, Any]) -> tuple[Any, str]:
        native = metadata.get("native") or {}
        folder = path if path.is_dir() else path.parent
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's and torch.load's notices
            if path.is_file():
                from mlrig.formats._torch import TorchFormat

                return TorchFormat().load_file(path), "file"
            flavor = native.get("flavor")
            if flavor == "torch.torchscript":
                return torch.jit.load(str(folder / native["path"]), map_location="cpu"), flavor
            if self.options.builder:
                return self._built(torch, folder / native.get("state_dict", "state_dict.pt"))
            if flavor == "torch.module":
                from mlrig.formats._torch import TorchFormat

                module = TorchFormat().load_native(folder, metadata)
                # where the class is not importable, the torch.export program stands in
                loaded = "torch.export" if type(module).__name__ == "GraphModule" else flavor
                return module, loaded
        msg = f"no torch model package at {str(path)!r} (no {MANIFEST} with a torch model)"
        raise NotFoundError(msg)

    def _built(self, torch: Any, state_dict: Path) -> tuple[Any, str]:
        target = self.options.builder or ""
        module_name, _, attr = target.partition(":")
        try:
            builder = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            msg = f"runtime 'torch': builder {target!r} is not importable as module:function"
            raise ValidationError(msg) from exc
        if not state_dict.is_file():
            msg = f"runtime 'torch': no state dict at {str(state_dict)!r} for the builder"
            raise NotFoundError(msg)
        module = builder()
        try:
            module.load_state_dict(torch.load(state_dict, map_location="cpu", weights_only=True))
        except (RuntimeError, KeyError) as exc:
            msg = f"runtime 'torch': the state dict does not fit what {target} builds: {exc}"
            raise ValidationError(msg) from exc
        return module, "torch.state_dict"

    def _device(self, torch: Any) -> Any:
        wanted = self.options.device
        if wanted == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(wanted)
        except RuntimeError as exc:
            msg = f"runtime 'torch': device {wanted!r} is not a torch device: {exc}"
            raise ValidationError(msg) from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            msg = f"runtime 'torch': device {wanted!r} was asked for but torch sees no GPU"
            raise MlrigError(msg)
        return device


def _torch() -> Any:
    try:
        import torch
    except ModuleNotFoundError as exc:
        msg = f"runtime 'torch' needs: pip install 'mlrig[torch]' ({exc.name} is missing)"
        raise MissingExtraError(msg, details={"missing": [exc.name]}) from exc
    return torch


def _parameters(module: Any) -> Any:
    parameters = getattr(module, "parameters", None)
    return parameters() if callable(parameters) else iter(())


def _first_tensor(out: Any) -> Any:
    if isinstance(out, dict):
        return out[sorted(out)[0]]
    if isinstance(out, list | tuple):
        return out[0]
    return out


def _ends_in(module: Any) -> Literal["logits", "probabilities"] | None:
    """What the module's last layer says its output is (None: it does not say).

    Only an ``nn.Sequential`` tells: its last child is the last thing that runs. A custom
    module's forward may apply a softmax functionally after its last registered layer.
    """
    while type(module).__name__ == "Sequential" and len(module) > 0:
        module = module[-1]
        name = type(module).__name__
        if name in _PROBABILITY_LAYERS:
            return "probabilities"
        if name in _LOGIT_LAYERS:
            return "logits"
    return None
