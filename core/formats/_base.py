"""What each framework module implements, and the helpers they share."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from mlrig.errors import MissingExtraError

#: the ONNX opset every exporter targets (onnxruntime >= 1.14 runs it everywhere)
ONNX_OPSET = 17


class SkipExport(Exception):
    """Raised by an exporter when no ONNX export is possible; the reason is recorded."""


def require(module: str, *, extra: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        msg = f"{module} is not installed: pip install 'mlrig[{extra}]'"
        raise MissingExtraError(msg, details={"missing": [exc.name or module]}) from exc


class FrameworkFormat(ABC):
    """How one framework's models are stored, run, exported to ONNX and loaded back."""

    #: framework name, as in the manifest ("sklearn", "torch", "tensorflow", "onnx")
    name: ClassVar[str]
    #: the mlrig extra that installs what this framework needs
    extra: ClassVar[str]
    #: distributions whose installed versions become the package requirements
    distributions: ClassVar[tuple[str, ...]]

    @abstractmethod
    def load_file(self, path: Path) -> Any:
        """Load a model from a file or folder the user names (``mlrig models register``)."""

    @abstractmethod
    def save_native(
        self, obj: Any, folder: Path, *, source: Path | None, sample: Any
    ) -> dict[str, Any]:
        """Write the native artifact into ``folder``; return the manifest's ``native`` section.

        ``source`` is the file the model was loaded from, if any (copied when that keeps
        the bytes identical); ``sample`` is the sample input, or ``None``.
        """

    @abstractmethod
    def signature(self, obj: Any, sample: Any) -> dict[str, Any]:
        """Input/output schema; ``sample`` (may be ``None``) is run through the model once."""

    @abstractmethod
    def export_onnx(self, obj: Any, target: Path, sample: Any) -> dict[str, Any]:
        """Write an ONNX export to ``target``; return converter facts.

        Raises :class:`SkipExport` when no export is possible (the reason is recorded);
        any other exception is recorded as a failed export.
        """

    @abstractmethod
    def predict(self, obj: Any, sample: Any) -> Any:
        """Run the native model on ``sample``; used to check the ONNX export."""

    @abstractmethod
    def load_native(self, folder: Path, manifest: dict[str, Any]) -> Any:
        """Load the native artifact written by :meth:`save_native`."""

    def model_type(self, obj: Any) -> str | None:
        """``"classification"``, ``"regression"``... when the framework can tell."""
        return None

    def details(self, obj: Any) -> dict[str, Any]:
        """Extra manifest facts (class labels...)."""
        return {}
