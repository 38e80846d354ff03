"""Contract of hyperparameter search strategies (entry-point group ``mlrig.search``).

A strategy proposes points of a :class:`~mlrig.search.space.SearchSpace` (``ask``) and
learns from their results (``tell`` / ``tell_failed``). Several asks may be outstanding
at once (a sweep runs ``parallelism`` trials together), and results may come back in any
order. After every ask and every tell the sweep saves the strategy (:meth:`save`) in the
same database transaction that records the trial, so a restarted server restores it
(:meth:`restore`) and continues the same search instead of starting a new one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from mlrig.contracts.base import Backend
from mlrig.search.space import Choice, Constant, FloatRange, IntRange, Param, SearchSpace

__all__ = [
    "Choice",
    "Constant",
    "Direction",
    "FloatRange",
    "IntRange",
    "Param",
    "SearchSpace",
    "SearchStrategy",
    "Trial",
]

Direction = Literal["minimize", "maximize"]


@dataclass
class Trial:
    """One suggested point of the space.

    ``number`` is the strategy's own sequence number (0, 1, 2... in ask order, continued
    across :meth:`SearchStrategy.restore`); the sweep keys its trial rows by it. ``params``
    holds the active parameters only (a conditional parameter whose condition does not
    hold is absent). ``extra`` is the strategy's own bookkeeping (JSON-serialisable), kept
    with the trial and handed back on ``tell``.
    """

    number: int
    params: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


class SearchStrategy(Backend, ABC):
    """Ask/tell optimisation over a :class:`SearchSpace`.

    The sweep calls :meth:`start` once (or :meth:`restore` after a restart), then any
    interleaving of :meth:`ask`, :meth:`tell` and :meth:`tell_failed`, with up to
    ``parallelism`` trials asked and not yet told. Values are always told as given by the
    trainer; ``direction`` says whether smaller or larger is better.
    """

    #: whether :meth:`count` is meaningful (the grid: exhaustive, a known number of points)
    exhaustive: bool = False

    @abstractmethod
    def start(
        self,
        space: SearchSpace,
        *,
        direction: Direction,
        seed: int | None,
        parallelism: int = 1,
        budget: int | None = None,
    ) -> None:
        """Begin a search over ``space``; called once before the first :meth:`ask`.

        :param parallelism: how many trials will be outstanding at most.
        :param budget: the number of trials the sweep will ask for, when it is known.
        :raises ValidationError: the space or an option cannot work with this strategy.
        """

    @abstractmethod
    def ask(self) -> Trial | None:
        """The next point to evaluate, or ``None`` when the strategy has no more (a grid
        that is exhausted)."""

    @abstractmethod
    def tell(self, trial: Trial, value: float) -> None:
        """Report the objective ``value`` of an asked ``trial`` (NaN counts as failed)."""

    def tell_failed(self, trial: Trial, reason: str | None = None) -> None:
        """Report that ``trial`` produced no value (it failed or was cancelled). The
        default forgets it; model-based strategies may treat it as a bad point."""

    def count(self) -> int | None:
        """How many points the strategy will propose in all (``None``: unbounded)."""
        return None

    @abstractmethod
    def save(self) -> bytes:
        """The whole state (space, direction, seed, history, outstanding asks, random
        state), to be given to :meth:`restore` in another process."""

    @abstractmethod
    def restore(self, state: bytes) -> None:
        """Continue from :meth:`save`'s bytes: the next asks follow on from the saved
        search, they are not a fresh start. Called instead of :meth:`start`."""

    def describe(self) -> dict[str, Any]:
        """What the strategy is, for ``mlrig sweeps show`` (optimizer name, options)."""
        return {}
