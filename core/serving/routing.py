"""Traffic split of one deployment: which variant (primary or a canary) answers a request.

Precomputed when the deployment's targets change, so choosing costs one random draw (or
one hash of the client's key) and a short scan. A client that sends ``X-Mlrig-Client-Key``
sticks to one variant for as long as the split stays the same.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

_SCALE = 1_000_000  # percents become integer slots of a million


class TrafficSplit(Generic[T]):
    """Pick one of ``choices`` by ``percents`` (the first takes whatever the others leave).

    :param choices: the primary first, then the canaries.
    :param percents: one per choice; only the canaries' values are read (the primary gets
        ``100 - sum(canaries)``).
    """

    __slots__ = ("_bounds", "_choices", "_only", "_random")

    def __init__(self, choices: Sequence[T], percents: Sequence[float]) -> None:
        if not choices:
            msg = "a traffic split needs at least one choice"
            raise ValueError(msg)
        self._choices = tuple(choices)
        self._only = self._choices[0] if len(self._choices) == 1 else None
        # upper bounds of each canary's slice of [0, _SCALE); the primary takes the rest
        bounds = []
        total = 0
        for percent in percents[1:]:
            total += round(float(percent) * _SCALE / 100)
            bounds.append(min(total, _SCALE))
        self._bounds = tuple(bounds)
        self._random = random.Random()

    @property
    def choices(self) -> tuple[T, ...]:
        """The primary first, then the canaries."""
        return self._choices

    def choose(self, key: bytes | None = None) -> T:
        """The variant for one request; ``key`` (a client key) makes the choice sticky."""
        if self._only is not None:
            return self._only
        if key:
            slot = zlib.crc32(key) * _SCALE >> 32
        else:
            slot = self._random.randrange(_SCALE)
        for index, bound in enumerate(self._bounds):
            if slot < bound:
                return self._choices[index + 1]
        return self._choices[0]
