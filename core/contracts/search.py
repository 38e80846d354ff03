"""Contract of hyperparameter search strategies (entry-point group ``mlrig.search``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from mlrig.contracts.base import Backend


@dataclass(frozen=True)
class FloatRange:
    """A float between ``low`` and ``high``; ``log`` samples on a log scale."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    """An integer between ``low`` and ``high``, both included."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """One of ``options``."""

    options: tuple[Any, ...]


SearchSpace = dict[str, FloatRange | IntRange | Choice]


@dataclass
class Trial:
    """One suggested point of the space and, once told, its objective value."""

    id: int
    params: dict[str, Any]
    value: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SearchStrategy(Backend, ABC):
    """Ask/tell optimisation over a :data:`SearchSpace`."""

    @abstractmethod
    def start(
        self, space: SearchSpace, *, direction: Literal["minimize", "maximize"], seed: int | None
    ) -> None:
        """Begin a search over ``space``; called once before the first :meth:`ask`."""

    @abstractmethod
    def ask(self) -> Trial | None:
        """The next point to evaluate, or ``None`` when the strategy has no more."""

    @abstractmethod
    def tell(self, trial: Trial, value: float) -> None:
        """Report the objective ``value`` of ``trial``."""
