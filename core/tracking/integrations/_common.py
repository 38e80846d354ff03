"""What the framework callbacks share: which run they log into, and metric kinds."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlrig.tracking.run import Run

log = logging.getLogger("mlrig.tracking")

#: metric name prefixes that say a kind (``val_loss`` is ``loss`` of kind validation)
_PREFIXES = (
    ("validation_", "validation"),
    ("validation/", "validation"),
    ("valid_", "validation"),
    ("val_", "validation"),
    ("val/", "validation"),
    ("test_", "test"),
    ("test/", "test"),
    ("train_", "train"),
    ("train/", "train"),
)


def split_kind(name: str, default: str | None) -> tuple[str, str | None]:
    """``(name, kind)`` of a framework's metric name: ``val_loss`` -> ``("loss",
    "validation")``, ``test/acc`` -> ``("acc", "test")``; others keep ``default``."""
    for prefix, kind in _PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix) :], kind
    return name, default


def by_kind(metrics: Mapping[str, Any], default: str | None) -> dict[str | None, dict[str, float]]:
    """Metrics grouped by kind (names without their kind prefix); values as floats,
    what is not a number left out."""
    grouped: dict[str | None, dict[str, float]] = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        name, kind = split_kind(str(key), default)
        grouped.setdefault(kind, {})[name] = number
    return grouped


class RunHolder:
    """The run a callback logs into: the one it was given, else the active run when it
    first logs, else one it starts itself (and ends: ``owned``)."""

    def __init__(
        self,
        run: Run | None,
        *,
        experiment: str | None,
        name: str | None,
        tags: Mapping[str, Any] | None,
    ) -> None:
        self._run = run
        self.owned = False
        self.experiment = experiment
        self.name = name
        self.tags = dict(tags or {})

    @property
    def started(self) -> bool:
        """Whether a run was found or started already."""
        return self._run is not None

    @property
    def current(self) -> Run | None:
        """The run found or started so far (none is started here)."""
        return self._run

    def get(self) -> Run:
        """The run (found, started, or resumed when the one it started has ended)."""
        from mlrig.tracking import fluent

        if self._run is None:
            active = fluent.active_run()
            if active is not None:
                self._run = active
            else:
                self._run = fluent.start_run(
                    self.experiment, name=self.name, tags=self.tags or None
                )
                self.owned = True
        elif self.owned and self._run.status != "running":  # fit ended it; test goes on
            self._run = fluent.start_run(run_id=self._run.id)
        return self._run

    def end(self, status: str, error: str | None = None) -> None:
        """End the run if this holder started it."""
        if self.owned and self._run is not None and self._run.status == "running":
            self._run.end(status, error=error)


def plain_params(params: Mapping[str, Any], *, separator: str = ".") -> dict[str, Any]:
    """Nested params flattened (``{"optimizer": {"lr": 0.1}}`` -> ``optimizer.lr``), as
    JSON values (non-finite floats and other objects as text)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}{separator}{k}" if prefix else str(k), v)
            return
        if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = repr(value)
        elif not (value is None or isinstance(value, (bool, int, float, str, list, tuple))):
            value = getattr(value, "__qualname__", None) or str(value)
        flat[prefix] = value

    for key, value in params.items():
        walk(str(key), value)
    return flat


def warn(message: str) -> None:
    """A logging problem: the training goes on."""
    log.warning("mlrig: %s", message)
