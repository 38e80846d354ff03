"""Search spaces: typed parameters, conditions, parsing from JSON/TOML/YAML or Python.

A space maps parameter names to :data:`Param` values. A parameter may be *conditional*:
``when={"kernel": ("rbf", "poly")}`` makes it exist only when ``kernel`` is one of those
values (conditions name :class:`Choice` or :class:`Constant` parameters).

The file/dict form (what ``mlrig sweeps create --space FILE`` reads and the REST API
takes)::

    {
      "C":      {"type": "float", "low": 1e-3, "high": 1e3, "log": true},
      "depth":  {"type": "int", "low": 2, "high": 12, "step": 2},
      "kernel": {"type": "choice", "options": ["linear", "rbf"]},
      "gamma":  {"type": "float", "low": 1e-4, "high": 1, "log": true,
                 "when": {"kernel": "rbf"}},
      "max_iter": 200
    }

A bare value (``"max_iter": 200``) is a constant; ``{"type": "const", "value": ...}`` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FloatRange:
    """A float in ``[low, high]``; ``log`` samples on a log scale (``low > 0``);
    ``step`` quantises it (``low + k * step``)."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class IntRange:
    """An integer in ``[low, high]``, both included, every ``step``-th one; ``log``
    samples on a log scale (``low >= 1``)."""

    low: int
    high: int
    log: bool = False
    step: int = 1
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Choice:
    """One of ``options`` (JSON scalars: strings, numbers, booleans, null)."""

    options: tuple[Any, ...]
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Constant:
    """Always ``value`` (any JSON value)."""

    value: Any
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


Param = FloatRange | IntRange | Choice | Constant


@dataclass(frozen=True)
class SearchSpace:
    """A validated space: parameter names (in the given order) to :data:`Param`."""

    params: Mapping[str, Param]

    # --- building ---------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SearchSpace:
        """Parse and validate the dict form (see the module docstring).

        :raises ValidationError: an empty space, an unknown type or key, ``low > high``,
            a log range that reaches 0, an empty choice, a condition on a parameter that
            does not exist or is not a choice/constant, a condition value that parameter
            cannot take, a cycle of conditions... The message names the parameter and
            says what is allowed; ``details={"parameter": name}``.
        """
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Read a ``.json``, ``.toml`` or ``.yaml``/``.yml`` file (YAML needs PyYAML)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The canonical dict form; ``from_dict(to_dict())`` gives an equal space."""
        raise NotImplementedError

    # --- points -----------------------------------------------------------------------

    def active(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """``point`` without the conditional parameters whose condition does not hold
        (conditions evaluated in dependency order); constants filled in."""
        raise NotImplementedError

    def validate(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """Check a point (every active parameter present and in range, nothing else);
        return it normalised (ints as ``int``, steps snapped). :raises ValidationError:"""
        raise NotImplementedError

    def grid_size(self, *, float_points: int | None = None) -> int:
        """The number of distinct active points of the full grid (exact, as a Python
        int, computed without enumerating; conditions taken into account). A float range
        without ``step`` counts ``float_points`` values; with ``float_points=None`` it
        makes the grid infinite and :class:`ValidationError` says which parameter."""
        raise NotImplementedError
