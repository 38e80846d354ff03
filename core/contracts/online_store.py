"""Contract of online feature stores (entry-point group ``mlrig.online_stores``).

An online store keeps, per feature view and entity key, the newest row of feature values
that materialisation (or a push) wrote, and answers reads by key fast: a read is on the
prediction path of feature-backed deployments.

What callers assume, and :class:`mlrig.testing.online_store.OnlineStoreContract` checks:

- **Keys.** An entity key is a tuple of strings, one per join key of the view, in the
  view's join-key order (core turns typed key values into strings before calling).
- **Newest wins.** :meth:`write` keeps, per key, the row with the greatest
  ``(event_timestamp, created_timestamp)``; writing an older row over a newer one leaves
  the newer one. A row holds every feature of the view; ``None`` is a stored missing value.
- **TTL.** :meth:`read` is given ``ttl_seconds`` (``None``: no expiry) and ``now``; a row
  whose event timestamp is older than ``now - ttl`` comes back as missing, never stale.
- **Reads.** :meth:`read` returns one entry per key asked, in order: a dict of the asked
  features (or ``None`` where the key has no live row). Unknown keys are not errors.
- **Threads and processes.** One instance is shared by a server's threads; several
  processes write and read the same store at once.
- **Errors.** A failure of the library below is translated into
  :class:`~mlrig.errors.MlrigError` subclasses (:class:`OnlineStoreError` for a store that
  cannot be reached or answered wrongly) with a message that says what to fix.
- **Local reads.** A store whose reads touch only local files and never wait (SQLite in
  WAL mode) may set :attr:`OnlineStore.local_reads`; small reads are then run on a
  server's event loop. Reads of a network store must stay off it (the default).
- **Async reads.** :meth:`OnlineStore.aread_many` is the read for an event loop; by
  default it runs the blocking read in a thread. A store with an async driver overrides
  it (it must never block the loop) and sets :attr:`OnlineStore.async_reads`; a server
  then awaits it on its loop. The loop may change between calls (each ``asyncio.run``
  makes a new one): connections belong to the loop they were made on.
- **Expiry hint.** :meth:`write` may be given the view's ``ttl_seconds``; a store may use
  it to drop rows that can no longer be read (Redis ``PEXPIREAT``). Reads still check the
  TTL themselves: the hint only bounds memory.
"""

from __future__ import annotations

import asyncio
import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from mlrig.contracts.base import Backend
from mlrig.errors import MlrigError

#: an entity key as stored: one string per join key, in the view's join-key order
EntityKey = tuple[str, ...]


@dataclass(frozen=True)
class OnlineRow:
    """One entity's feature values of one view at one event time."""

    key: EntityKey
    values: dict[str, Any]
    event_timestamp: datetime
    created_timestamp: datetime | None = None
    #: free room for a store (unused by core)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ViewRead:
    """One view's part of a :meth:`ReadsManyViews.read_many` call."""

    view: str
    keys: Sequence[EntityKey]
    features: Sequence[str]
    ttl_seconds: float | None = None


@runtime_checkable
class ReadsManyViews(Protocol):
    """Optional capability: several views' reads in one round trip (a feature-backed
    prediction often needs features of several views). Same semantics as :meth:`read`
    for each part; core uses it when a read spans more than one view."""

    def read_many(
        self, reads: Sequence[ViewRead], *, now: datetime
    ) -> list[list[dict[str, Any] | None]]:
        """One result list per :class:`ViewRead`, as :meth:`OnlineStore.read` returns."""
        ...


class OnlineStoreError(MlrigError):
    """The online store cannot be reached or failed (the server is down, the table is
    missing); the message names the store's location and what to do."""

    code = "online_store_error"
    http_status = 503


class OnlineStore(Backend, ABC):
    """Write and read the latest feature values by entity key, TTL honoured."""

    #: reads are local file reads that never wait on a network or a lock (SQLite in WAL
    #: mode): a server may then run a small read on its event loop instead of handing it
    #: to a thread (the hop costs more than such a read). A network store leaves it False.
    local_reads: bool = False
    #: :meth:`aread_many` waits on the event loop through an async driver, not in a
    #: thread (PostgreSQL through psycopg's async connections, Redis through redis.asyncio)
    async_reads: bool = False

    @abstractmethod
    def write(
        self, view: str, rows: Sequence[OnlineRow], *, ttl_seconds: float | None = None
    ) -> int:
        """Store ``rows`` of ``view``, newest per key winning; return how many were
        written (rows older than what the store holds, or than another row of the same
        key in ``rows``, count as not written).

        :param ttl_seconds: the view's TTL, a hint a store may use to expire rows.
        """

    @abstractmethod
    def read(
        self,
        view: str,
        keys: Sequence[EntityKey],
        features: Sequence[str],
        *,
        ttl_seconds: float | None,
        now: datetime,
    ) -> list[dict[str, Any] | None]:
        """The ``features`` of each key's live row (``None`` where there is none)."""

    @abstractmethod
    def delete_view(self, view: str) -> None:
        """Forget every row of ``view`` (a dropped or re-created view)."""

    async def aread_many(
        self, reads: Sequence[ViewRead], *, now: datetime
    ) -> list[list[dict[str, Any] | None]]:
        """:func:`read_views` for an event loop: one result list per :class:`ViewRead`.
        This default runs the blocking read in the loop's default thread pool; a store
        with an async driver overrides it and sets :attr:`async_reads`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(read_views, self, reads, now))

    def check(self) -> dict[str, Any]:
        """Probe the store; raise when it cannot work. Returns JSON-able facts."""
        return {}

    def close(self) -> None:
        """Release connections."""


def read_views(
    store: OnlineStore, reads: Sequence[ViewRead], now: datetime
) -> list[list[dict[str, Any] | None]]:
    """``reads`` in one store call where the store reads many views at once
    (:class:`ReadsManyViews`), else one :meth:`OnlineStore.read` per view."""
    if len(reads) > 1 and isinstance(store, ReadsManyViews):
        return store.read_many(reads, now=now)
    return [
        store.read(r.view, r.keys, r.features, ttl_seconds=r.ttl_seconds, now=now) for r in reads
    ]
