"""mlrig: the whole model lifecycle in one package.

``import mlrig`` stays light: the public names below are imported on first use, and no
framework (torch, tensorflow, onnxruntime, boto) is ever imported by core.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily, PEP 562)
_EXPORTS = {
    "Platform": "mlrig.platform",
    "Client": "mlrig.client",
    "ConfigPath": "mlrig.config",
    "Settings": "mlrig.config",
    "load_settings": "mlrig.config",
    "hookimpl": "mlrig.hooks",
    "MlrigError": "mlrig.errors",
    "log_model": "mlrig.registry.packaging",
    "StorageBackend": "mlrig.contracts",
    "Trainer": "mlrig.contracts",
    "TrainingContext": "mlrig.contracts",
    "TrainResult": "mlrig.contracts",
    "PermanentError": "mlrig.contracts",
    "ModelRuntime": "mlrig.contracts",
    "LoadedModel": "mlrig.contracts",
    "SearchStrategy": "mlrig.contracts",
    "Monitor": "mlrig.contracts",
    "Executor": "mlrig.contracts",
    "JobHandle": "mlrig.contracts",
    "JobSpec": "mlrig.contracts",
    # tracking from user code (docs/tracking.md)
    "start_run": "mlrig.tracking.fluent",
    "end_run": "mlrig.tracking.fluent",
    "active_run": "mlrig.tracking.fluent",
    "log_metric": "mlrig.tracking.fluent",
    "log_metrics": "mlrig.tracking.fluent",
    "log_param": "mlrig.tracking.fluent",
    "log_params": "mlrig.tracking.fluent",
    "set_tag": "mlrig.tracking.fluent",
    "set_tags": "mlrig.tracking.fluent",
    "log_artifact": "mlrig.tracking.fluent",
    "log_artifacts": "mlrig.tracking.fluent",
    "set_tracking": "mlrig.tracking.fluent",
    "autolog": "mlrig.tracking.autolog",
    "load_model": "mlrig.tracking.loading",
}

__all__ = [
    "Client",
    "ConfigPath",
    "Executor",
    "JobHandle",
    "JobSpec",
    "LoadedModel",
    "MlrigError",
    "ModelRuntime",
    "Monitor",
    "PermanentError",
    "Platform",
    "SearchStrategy",
    "Settings",
    "StorageBackend",
    "TrainResult",
    "Trainer",
    "TrainingContext",
    "__version__",
    "active_run",
    "autolog",
    "end_run",
    "hookimpl",
    "load_model",
    "load_settings",
    "log_artifact",
    "log_artifacts",
    "log_metric",
    "log_metrics",
    "log_model",
    "log_param",
    "log_params",
    "set_tag",
    "set_tags",
    "set_tracking",
    "start_run",
]

if TYPE_CHECKING:
    from mlrig.client import Client
    from mlrig.config import ConfigPath, Settings, load_settings
    from mlrig.contracts import (
        Executor,
        JobHandle,
        JobSpec,
        LoadedModel,
        ModelRuntime,
        Monitor,
        PermanentError,
        SearchStrategy,
        StorageBackend,
        Trainer,
        TrainingContext,
        TrainResult,
    )
    from mlrig.errors import MlrigError
    from mlrig.hooks import hookimpl
    from mlrig.platform import Platform
    from mlrig.registry.packaging import log_model


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        msg = f"module 'mlrig' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
