"""The ``torch`` runtime (being built)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlrig.contracts.runtime import LoadedModel, ModelRuntime
from mlrig.errors import PluginError


class TorchRuntime(ModelRuntime):
    """Loads a torch model package."""

    formats = ("torch",)

    def load(self, path: Path, metadata: dict[str, Any]) -> LoadedModel:
        raise PluginError("runtime 'torch' is being built")
