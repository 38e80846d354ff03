"""A small pool of psycopg async connections for reads on an event loop.

The ``sql`` online store's reads on PostgreSQL, when a server awaits them on its loop
(:meth:`~mlrig.contracts.online_store.OnlineStore.aread_many`): no thread hop, which on
this path cost more than the read's own round trip. An async connection belongs to the
loop it was made on, so the pool keeps its connections per loop (a server has one; tests
and tools may run several ``asyncio.run`` one after the other, or loops in threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import psycopg


class AsyncReadPool:
    """Autocommit connections made on first use, kept for the next read; per event loop
    at most ``size`` of them (a caller past it waits for one to come back).

    :param conninfo: a libpq connection string (``psycopg.conninfo.make_conninfo``).
    """

    def __init__(self, conninfo: str, *, size: int) -> None:
        self._conninfo = conninfo
        self._size = max(size, 1)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnections]
        self._loops = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    async def fetch(self, sql: str, params: Mapping[str, Any]) -> list[Any]:
        """``sql``'s rows. A connection the server closed is replaced and the read run
        once more on a new one.

        :raises psycopg.Error: the server refused the connection or the statement.
        """
        loop = asyncio.get_running_loop()
        mine = self._loops.get(loop)
        if mine is None:
            with self._lock:
                mine = self._loops.setdefault(loop, _LoopConnections(self._size))
        async with mine.slots:
            conn = mine.idle.pop() if mine.idle else None
            if conn is not None:
                try:
                    return await self._run(mine, conn, sql, params)
                except psycopg.OperationalError:
                    if not conn.broken and not conn.closed:
                        raise
                    # an idle connection the server dropped (restart, idle timeout): once more
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            return await self._run(mine, conn, sql, params)

    async def _run(
        self,
        mine: _LoopConnections,
        conn: psycopg.AsyncConnection[Any],
        sql: str,
        params: Mapping[str, Any],
    ) -> list[Any]:
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(sql, params)
                rows = await cursor.fetchall()
        except BaseException:
            # cancelled mid-statement, or broken: the connection's state is unknown
            _discard(conn)
            raise
        mine.idle.append(conn)  # never more than size: only size exist on this loop at once
        return rows

    def close(self) -> None:
        """Close the idle connections of every loop (without awaiting: a loop may be gone)."""
        with self._lock:
            pools = list(self._loops.values())
            self._loops.clear()
        for mine in pools:
            idle, mine.idle = mine.idle, []
            for conn in idle:
                _discard(conn)


class _LoopConnections:
    """One event loop's idle connections and its bound on connections in use."""

    def __init__(self, limit: int) -> None:
        self.idle: list[psycopg.AsyncConnection[Any]] = []
        self.slots = asyncio.Semaphore(limit)


def _discard(conn: psycopg.AsyncConnection[Any]) -> None:
    """Close ``conn``'s socket at once (no round trip, no loop needed)."""
    with contextlib.suppress(Exception):
        conn.pgconn.finish()
