"""Early stopping: end a run whose monitored metric stopped improving."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mlrig.errors import ValidationError


@dataclass
class EarlyStopping:
    """Stop after ``patience`` evaluations without an improvement of at least ``min_delta``
    in ``monitor`` (of metric kind ``kind``), minimised or maximised per ``mode``."""

    monitor: str
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0
    kind: str = "validation"
    best: float | None = None
    best_step: int | None = None
    stale: int = 0
    triggered: bool = False

    @classmethod
    def from_rule(cls, rule: dict[str, Any] | None) -> EarlyStopping | None:
        """Validate a rule (``{"monitor", "mode", "patience", "min_delta", "kind"}``)."""
        if not rule:
            return None
        unknown = set(rule) - {"monitor", "mode", "patience", "min_delta", "kind"}
        if unknown:
            msg = f"early_stopping: unknown keys {sorted(unknown)}"
            raise ValidationError(msg)
        if not isinstance(rule.get("monitor"), str) or not rule["monitor"]:
            msg = "early_stopping.monitor must name a metric, e.g. 'val_loss'"
            raise ValidationError(msg)
        mode = rule.get("mode", "min")
        if mode not in ("min", "max"):
            msg = f"early_stopping.mode must be 'min' or 'max', got {mode!r}"
            raise ValidationError(msg)
        patience = rule.get("patience", 3)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            msg = f"early_stopping.patience must be a positive integer, got {patience!r}"
            raise ValidationError(msg)
        min_delta = rule.get("min_delta", 0.0)
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or min_delta < 0:
            msg = f"early_stopping.min_delta must be a number >= 0, got {min_delta!r}"
            raise ValidationError(msg)
        return cls(
            monitor=rule["monitor"],
            mode=mode,
            patience=patience,
            min_delta=float(min_delta),
            kind=rule.get("kind", "validation"),
        )

    def update(self, value: float, step: int | None) -> bool:
        """Take one evaluation into account; return whether the run should stop now."""
        if math.isnan(value):
            self.stale += 1
        elif self.best is None or self._improves(value):
            self.best, self.best_step, self.stale = value, step, 0
        else:
            self.stale += 1
        self.triggered = self.triggered or self.stale >= self.patience
        return self.triggered

    def _improves(self, value: float) -> bool:
        assert self.best is not None
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def reason(self) -> str:
        return (
            f"early stopped: {self.monitor} did not improve by more than {self.min_delta:g} for "
            f"{self.patience} evaluations (best {self.best:.6g} at step {self.best_step})"
        )

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "stale": self.stale}

    def load(self, state: dict[str, Any] | None) -> None:
        if state:
            self.best, self.best_step = state.get("best"), state.get("best_step")
            self.stale = int(state.get("stale", 0))
