"""Bookkeeping every search strategy needs, kept in one place: trial numbers, the trials
asked and not yet told, counts, the best value so far, and the saved-state envelope.

A strategy holds a :class:`TrialLedger`, calls :meth:`TrialLedger.new` in ``ask`` and
:meth:`TrialLedger.settle` in ``tell`` / ``tell_failed`` (which refuses a trial that is not
outstanding), and puts :meth:`TrialLedger.to_json` into its saved state.
:func:`dump_state` / :func:`load_state` wrap that state as versioned JSON bytes and turn
anything that is not such a state into a :class:`~mlrig.errors.ValidationError`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from mlrig.contracts.search import Trial
from mlrig.errors import ValidationError

DIRECTIONS = ("minimize", "maximize")


def check_direction(direction: object) -> str:
    """``direction`` if it is ``"minimize"`` or ``"maximize"``."""
    if direction not in DIRECTIONS:
        msg = f"direction must be 'minimize' or 'maximize', got {direction!r}"
        raise ValidationError(msg, details={"field": "direction"})
    return str(direction)


def check_seed(seed: object) -> int | None:
    """``None`` or an integer seed from 0 to 2**63 - 1."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        msg = f"seed must be an integer from 0 to 2**63-1 (or none), got {seed!r}"
        raise ValidationError(msg, details={"field": "seed"})
    return seed


@dataclass
class TrialLedger:
    """Trial numbers, outstanding asks and the best result of one search."""

    direction: str
    next_number: int = 0
    #: number -> {"params": ..., "extra": ...} of the trials asked and not yet told
    outstanding: dict[int, dict[str, Any]] = field(default_factory=dict)
    told: int = 0
    failed: int = 0
    #: {"number", "value", "params"} of the best trial told so far
    best: dict[str, Any] | None = None

    def new(self, params: dict[str, Any], extra: dict[str, Any] | None = None) -> Trial:
        """Number and remember a new outstanding trial."""
        number = self.next_number
        self.next_number += 1
        extra = dict(extra or {})
        self.outstanding[number] = {"params": params, "extra": extra}
        return Trial(number=number, params=dict(params), extra=dict(extra))

    def settle(self, trial: Trial, what: str = "told") -> dict[str, Any]:
        """Remove ``trial`` from the outstanding ones and return its record.

        :raises ValidationError: it was never asked, or was told already.
        """
        number = getattr(trial, "number", None)
        if isinstance(number, bool) or not isinstance(number, int):
            msg = f"a trial to be {what} needs an integer number, got {number!r}"
            raise ValidationError(msg, details={"field": "trial"})
        record = self.outstanding.pop(number, None)
        if record is None:
            why = (
                "was never asked"
                if number >= self.next_number or number < 0
                else "was told already"
            )
            msg = f"trial {number} cannot be {what}: it {why} (outstanding: {self._shown()})"
            raise ValidationError(msg, details={"trial": number})
        return record

    def _shown(self) -> str:
        numbers = sorted(self.outstanding)
        if not numbers:
            return "none"
        return ", ".join(map(str, numbers[:10])) + (" ..." if len(numbers) > 10 else "")

    def record(self, trial: Trial, value: float) -> dict[str, Any] | None:
        """Settle ``trial`` with ``value``; a value that is not a finite number counts as
        failed (returns ``None``), else returns the trial's record."""
        record = self.settle(trial)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            self.failed += 1
            return None
        self.told += 1
        better = self.best is None or (
            number < self.best["value"]
            if self.direction == "minimize"
            else number > self.best["value"]
        )
        if better:
            self.best = {"number": trial.number, "value": number, "params": record["params"]}
        return record

    def record_failed(self, trial: Trial) -> dict[str, Any]:
        """Settle ``trial`` as failed."""
        record = self.settle(trial, "told as failed")
        self.failed += 1
        return record

    def summary(self) -> dict[str, Any]:
        """Counts and best, for ``describe()``."""
        return {
            "direction": self.direction,
            "asked": self.next_number,
            "told": self.told,
            "failed": self.failed,
            "outstanding": len(self.outstanding),
            "best": self.best,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "next_number": self.next_number,
            "outstanding": [[n, r] for n, r in sorted(self.outstanding.items())],
            "told": self.told,
            "failed": self.failed,
            "best": self.best,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialLedger:
        return cls(
            direction=check_direction(data["direction"]),
            next_number=int(data["next_number"]),
            outstanding={int(n): dict(r) for n, r in data["outstanding"]},
            told=int(data["told"]),
            failed=int(data["failed"]),
            best=data["best"],
        )


def dump_state(kind: str, version: int, state: dict[str, Any]) -> bytes:
    """``state`` as JSON bytes tagged with the strategy ``kind`` and format ``version``."""
    body = {"format": f"mlrig.search.{kind}", "version": version, **state}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def load_state(kind: str, versions: tuple[int, ...], state: bytes) -> dict[str, Any]:
    """The state dict :func:`dump_state` wrote for ``kind``.

    :raises ValidationError: not bytes, not JSON, another strategy's state or a version
        this code does not read.
    """
    fmt = f"mlrig.search.{kind}"
    try:
        data = json.loads(bytes(state).decode("utf-8"))
    except (TypeError, ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else None
        msg = f"not a saved {kind} search state (expected format {fmt!r}, found {found!r})"
        raise ValidationError(msg, details={"field": "state"})
    if data.get("version") not in versions:
        msg = (
            f"saved {kind} search state has version {data.get('version')!r}; this mlrig "
            f"reads {', '.join(map(str, versions))}: upgrade mlrig"
        )
        raise ValidationError(msg, details={"field": "state"})
    return data
