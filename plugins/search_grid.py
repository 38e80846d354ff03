"""The ``grid`` search strategy: every distinct active point of the space, in a fixed order.

The order is :meth:`SearchSpace.grid`'s: the first parameter (in dependency order) varies
slowest, and a conditional parameter only multiplies the branches where it is active. A
float range without ``step`` contributes ``float_points`` values (evenly spaced, on a log
scale for log ranges, both ends included); a log int range ``float_points`` log-spaced
integers. :meth:`count` is the exact number of points (``SearchSpace.grid_size``), known
before the first ask; a grid larger than ``max_points`` is refused by :meth:`start` with
its count (the sweep passes ``[search] max_grid_points`` as ``max_points``). After the last
point ``ask()`` returns ``None``. The saved state is the space and the position (the
trial number), so a restored grid neither repeats nor skips a point; it goes straight to
its position (:meth:`SearchSpace.grid` with ``start``), without walking the points before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mlrig.contracts.search import Direction, SearchSpace, SearchStrategy, Trial
from mlrig.errors import ValidationError
from mlrig.search.ledger import TrialLedger, check_direction, dump_state, load_state
from mlrig.search.space import MAX_FLOAT_POINTS

_VERSIONS = (1,)


class GridSearchOptions(BaseModel):
    """``[search.grid]`` options."""

    model_config = ConfigDict(extra="forbid")
    #: values taken from each float range without a step (and each log int range)
    float_points: int = Field(default=5, ge=1, le=MAX_FLOAT_POINTS)
    #: a larger grid is refused before it starts (the sweep sets [search] max_grid_points)
    max_points: int = Field(default=100_000, ge=1)


def check_grid_size(size: int, limit: int) -> None:
    """Refuse a grid of ``size`` points over ``limit``, with the count."""
    if size > limit:
        msg = (
            f"grid of {size:,} points is larger than the limit {limit:,}: narrow the space "
            "(fewer values, coarser steps, fewer float_points) or use the random or "
            "nevergrad strategy"
        )
        raise ValidationError(msg, details={"field": "space", "count": size, "limit": limit})


class GridSearch(SearchStrategy):
    """Exhaustive grid search."""

    Options = GridSearchOptions
    exhaustive = True

    def __init__(self, options: GridSearchOptions) -> None:
        super().__init__(options)
        self.float_points = options.float_points
        self.max_points = options.max_points
        self.space: SearchSpace | None = None
        self.size = 0
        self.ledger: TrialLedger | None = None
        self._points: Iterator[dict[str, Any]] | None = None

    def start(
        self,
        space: SearchSpace,
        *,
        direction: Direction,
        seed: int | None,
        parallelism: int = 1,
        budget: int | None = None,
    ) -> None:
        if not isinstance(space, SearchSpace):
            space = SearchSpace.from_dict(space)
        ledger = TrialLedger(direction=check_direction(direction))
        size = space.grid_size(float_points=self.float_points)
        check_grid_size(size, self.max_points)
        self.space, self.ledger, self.size, self._points = space, ledger, size, None

    def _ready(self) -> tuple[SearchSpace, TrialLedger]:
        if self.space is None or self.ledger is None:
            msg = "the grid search was not started: call start() or restore() first"
            raise ValidationError(msg)
        return self.space, self.ledger

    def ask(self) -> Trial | None:
        space, ledger = self._ready()
        position = ledger.next_number
        if position >= self.size:
            return None
        if self._points is None:  # after start or restore: go straight to the position
            self._points = space.grid(float_points=self.float_points, start=position)
        point = next(self._points, None)
        if point is None:  # pragma: no cover - grid() yields exactly grid_size() points
            return None
        return ledger.new(point, {"index": position})

    def tell(self, trial: Trial, value: float) -> None:
        self._ready()[1].record(trial, value)

    def tell_failed(self, trial: Trial, reason: str | None = None) -> None:
        self._ready()[1].record_failed(trial)

    def count(self) -> int | None:
        return self.size if self.space is not None else None

    def save(self) -> bytes:
        space, ledger = self._ready()
        state = {
            "space": space.to_dict(),
            "float_points": self.float_points,
            "max_points": self.max_points,
            "size": self.size,
            "ledger": ledger.to_json(),
        }
        return dump_state("grid", 1, state)

    def restore(self, state: bytes) -> None:
        data = load_state("grid", _VERSIONS, state)
        try:
            space = SearchSpace.from_dict(data["space"])
            float_points = int(data["float_points"])
            ledger = TrialLedger.from_json(data["ledger"])
            max_points = int(data["max_points"])
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"the saved grid search state is damaged ({exc!r})"
            raise ValidationError(msg, details={"field": "state"}) from None
        self.space, self.ledger = space, ledger
        self.float_points, self.max_points = float_points, max_points
        self.size = space.grid_size(float_points=float_points)
        self._points = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "strategy": "grid",
            "float_points": self.float_points,
            "max_points": self.max_points,
        }
        if self.space is not None and self.ledger is not None:
            info["points"] = self.size
            info.update(self.ledger.summary())
        return info
