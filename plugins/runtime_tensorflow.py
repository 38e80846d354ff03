"""The ``tensorflow`` runtime (being built)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlrig.contracts.runtime import LoadedModel, ModelRuntime
from mlrig.errors import PluginError


class TensorflowRuntime(ModelRuntime):
    """Loads a tensorflow model package."""

    formats = ("tensorflow",)

    def load(self, path: Path, metadata: dict[str, Any]) -> LoadedModel:
        raise PluginError("runtime 'tensorflow' is being built")
