"""The ``random`` search strategy: independent uniform draws, seeded and reproducible.

Trial ``n`` of a search with seed ``s`` is drawn from its own generator,
``random.Random("mlrig-random/s/n")``, through :meth:`SearchSpace.sample` (log ranges
log-uniform, steps and choices in equal shares, conditional parameters only where their
condition holds). So the same seed gives the same sequence of asks, whatever the results
told and in whatever order, and a restored search continues exactly where the saved one
was: the state is the seed, the next number, the outstanding trials and (with ``unique``
on a finite space) which points were asked already.

With ``unique`` (the default) a point already asked is drawn again (up to 100 times,
then the remaining points of a small finite space are listed); once every point of a
finite space was asked, ``ask()`` returns ``None`` and :meth:`count` says how many
there were. Spaces with a float range without step are infinite: repeats are then
vanishingly unlikely and nothing is remembered.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict

from mlrig.contracts.search import Direction, SearchSpace, SearchStrategy, Trial
from mlrig.errors import ValidationError
from mlrig.search.ledger import TrialLedger, check_direction, check_seed, dump_state, load_state

#: draws of a new point before the remaining points of a finite space are listed
RETRIES = 100
#: a finite space up to this many points is listed to find one not asked yet
LIST_LIMIT = 100_000
_VERSIONS = (1,)


class RandomSearchOptions(BaseModel):
    """``[search.random]`` options."""

    model_config = ConfigDict(extra="forbid")
    #: never ask the same point twice (a finite space ends when every point was asked)
    unique: bool = True


class RandomSearch(SearchStrategy):
    """Uniform random search (seeded)."""

    Options = RandomSearchOptions

    def __init__(self, options: RandomSearchOptions) -> None:
        super().__init__(options)
        self.unique = options.unique
        self.space: SearchSpace | None = None
        self.seed = 0
        self.size: int | None = None
        self.seen: set[str] = set()
        self.ledger: TrialLedger | None = None

    # --- lifecycle ----------------------------------------------------------------------

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
        self.space = space
        self.ledger = TrialLedger(direction=check_direction(direction))
        seed = check_seed(seed)
        self.seed = secrets.randbits(63) if seed is None else seed
        try:
            self.size = space.grid_size(float_points=None)
        except ValidationError:  # a float range without step: infinite
            self.size = None
        self.seen = set()

    def _ready(self) -> tuple[SearchSpace, TrialLedger]:
        if self.space is None or self.ledger is None:
            msg = "the random search was not started: call start() or restore() first"
            raise ValidationError(msg)
        return self.space, self.ledger

    # --- ask / tell ---------------------------------------------------------------------

    @staticmethod
    def _digest(key: str) -> str:
        return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()

    def _remember(self) -> bool:
        return self.unique and self.size is not None

    def ask(self) -> Trial | None:
        space, ledger = self._ready()
        remember = self._remember()
        if remember and self.size is not None and len(self.seen) >= self.size:
            return None
        rng = random.Random(f"mlrig-random/{self.seed}/{ledger.next_number}")
        point = space.sample(rng)
        if remember:
            attempts = 1
            while self._digest(space.key(point)) in self.seen and attempts < RETRIES:
                point = space.sample(rng)
                attempts += 1
            if self._digest(space.key(point)) in self.seen:
                point = self._unseen(space, rng) or point
            self.seen.add(self._digest(space.key(point)))
        return ledger.new(point)

    def _unseen(self, space: SearchSpace, rng: random.Random) -> dict[str, Any] | None:
        """A point not asked yet, picked among all of a small finite space."""
        if self.size is None or self.size > LIST_LIMIT:
            return None
        left = [
            p for p in space.grid(float_points=None) if self._digest(space.key(p)) not in self.seen
        ]
        return rng.choice(left) if left else None

    def tell(self, trial: Trial, value: float) -> None:
        self._ready()[1].record(trial, value)

    def tell_failed(self, trial: Trial, reason: str | None = None) -> None:
        self._ready()[1].record_failed(trial)

    def count(self) -> int | None:
        return self.size if self.space is not None and self._remember() else None

    # --- state --------------------------------------------------------------------------

    def save(self) -> bytes:
        space, ledger = self._ready()
        state = {
            "space": space.to_dict(),
            "seed": self.seed,
            "unique": self.unique,
            "size": self.size,
            "seen": sorted(self.seen),
            "ledger": ledger.to_json(),
        }
        return dump_state("random", 1, state)

    def restore(self, state: bytes) -> None:
        data = load_state("random", _VERSIONS, state)
        try:
            self.space = SearchSpace.from_dict(data["space"])
            self.ledger = TrialLedger.from_json(data["ledger"])
            self.seed = int(data["seed"])
            self.unique = bool(data["unique"])
            self.size = None if data["size"] is None else int(data["size"])
            self.seen = set(data["seen"])
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"the saved random search state is damaged ({exc!r})"
            raise ValidationError(msg, details={"field": "state"}) from None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"strategy": "random", "seed": self.seed, "unique": self.unique}
        if self.space is not None and self.ledger is not None:
            info["points"] = self.size
            info.update(self.ledger.summary())
        return info
