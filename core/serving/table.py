"""What the request path reads: one immutable table of the served deployments.

The refresh thread builds a new :class:`Table` whenever the deployments change and swaps
it in with one reference assignment; a request reads the table once and holds on to the
:class:`DeploymentState` it found, so a rolling update never mixes two versions within
one request. Everything a request needs (auth names, the traffic split, the versions'
batchers, the idempotency cache) is precomputed here.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlrig.serving.routing import TrafficSplit

if TYPE_CHECKING:
    from mlrig.serving.features import FeatureBinding
    from mlrig.serving.loader import LoadedVersion


class ResponseCache:
    """A bounded LRU ``request_id -> (body digest, response bytes)`` of one deployment.

    A retried request id with the same body gets the first answer again (and is logged
    once); while the first request still runs, a duplicate waits for it (the entry holds a
    future). Used from the event loop thread only, so it needs no lock.
    """

    __slots__ = ("_entries", "max_size")

    def __init__(self, max_size: int = 4096) -> None:
        self._entries: OrderedDict[str, tuple[int, bytes | asyncio.Future[bytes]]] = OrderedDict()
        self.max_size = max_size

    def get(self, request_id: str) -> tuple[int, bytes | asyncio.Future[bytes]] | None:
        """``(digest, answer or future of the running request)`` of ``request_id``."""
        found = self._entries.get(request_id)
        if found is not None:
            self._entries.move_to_end(request_id)
        return found

    def start(self, request_id: str, digest: int) -> asyncio.Future[bytes]:
        """Mark ``request_id`` as running; duplicates wait on the future returned."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._put(request_id, (digest, future))
        return future

    def finish(
        self, request_id: str, digest: int, future: asyncio.Future[bytes], body: bytes
    ) -> None:
        """Store the answer of a request started with :meth:`start`."""
        if not future.done():
            future.set_result(body)
        self._put(request_id, (digest, body))

    def fail(self, request_id: str, future: asyncio.Future[bytes], exc: BaseException) -> None:
        """A failed request is not remembered: a retry runs again."""
        if not future.done():
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
        found = self._entries.get(request_id)
        if found is not None and found[1] is future:
            del self._entries[request_id]

    def _put(self, request_id: str, value: tuple[int, bytes | asyncio.Future[bytes]]) -> None:
        self._entries[request_id] = value
        self._entries.move_to_end(request_id)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, eq=False)
class Route:
    """One way through a deployment: a loaded version in a role (primary or canary)."""

    version: LoadedVersion
    variant: str
    percent: float


@dataclass(eq=False)
class DeploymentState:
    """One served deployment as the request path sees it (built by the refresh thread)."""

    id: str
    name: str
    view: dict[str, Any]
    revision: str
    #: primary first, then canaries; empty while nothing is loaded yet
    routes: list[Route]
    shadow: LoadedVersion | None
    #: why nothing serves (the first load failed), else None
    error: str | None = None
    recent: ResponseCache = field(default_factory=ResponseCache)
    split: TrafficSplit[Route] | None = None
    #: the revision whose targets are all loaded and warm
    ready: bool = False
    #: a feature-backed deployment's views and store (requests send entity keys)
    features: FeatureBinding | None = None

    def __post_init__(self) -> None:
        if self.routes:
            self.split = TrafficSplit(self.routes, [r.percent for r in self.routes])

    @property
    def primary(self) -> LoadedVersion | None:
        """The version that takes the traffic the canaries leave."""
        return self.routes[0].version if self.routes else None

    def all_versions(self) -> list[LoadedVersion]:
        """Every loaded version of this deployment, the shadow included."""
        found = [r.version for r in self.routes]
        return [*found, *([self.shadow] if self.shadow else [])]


@dataclass(frozen=True, eq=False)
class Table:
    """The served deployments by id and by name (deployment names never look like ids)."""

    states: tuple[DeploymentState, ...] = ()
    by_ref: dict[str, DeploymentState] = field(default_factory=dict)
    #: false until the first snapshot was read and every deployment in it is loaded
    ready: bool = False

    @classmethod
    def of(cls, states: list[DeploymentState], *, ready: bool) -> Table:
        """A table of ``states``: every one reachable by id and by name."""
        by_ref: dict[str, DeploymentState] = {}
        for state in states:
            by_ref[state.name] = state
        for state in states:
            by_ref[state.id] = state  # an id wins over a name that looks like one
        return cls(tuple(states), by_ref, ready)

    def get(self, ref: str) -> DeploymentState | None:
        """The deployment of id or name ``ref``."""
        return self.by_ref.get(ref)
