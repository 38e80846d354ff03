"""The ``redis`` online store (``pip install 'mlrig[redis]'``).

One Redis string per (view, entity key), named ``<prefix><view>:<key as a JSON array>``.
Its value is the row's order (event then created timestamp, as two fixed-width
microsecond counts) followed by the values as JSON, so that

- a read is one ``MGET`` of every key asked (one round trip), the TTL checked on the
  event time the value carries;
- a write is one small Lua script per batch that keeps, per key, the greater order
  (atomic: concurrent writers cannot make an older row win), and sets a
  ``PEXPIREAT`` of event time + TTL + a margin as a safety net for memory (reads never
  rely on it).

Options (``[features.redis]``): ``url`` (``redis://127.0.0.1:6379/0``), ``prefix``
(``mlrig:features:``; several platforms can share one server), ``max_connections``,
``socket_timeout``, ``batch_size``, ``expire_margin_seconds``.
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from mlrig.contracts.online_store import (
    EntityKey,
    OnlineRow,
    OnlineStore,
    OnlineStoreError,
    ViewRead,
)
from mlrig.errors import MissingExtraError
from mlrig.features.online import newest_per_key

_ZERO = datetime(1, 1, 1, tzinfo=timezone.utc)
#: digits of one timestamp in a value's header (microseconds since 0001-01-01: year 9999 fits)
_DIGITS = 18
_HEADER = 2 * _DIGITS

# KEYS: the rows' keys; ARGV: value, expire-at (ms, 0: none) for each key in turn.
_WRITE_NEWEST = """
local n = 0
for i, key in ipairs(KEYS) do
  local new = ARGV[2 * i - 1]
  local cur = redis.call('GET', key)
  if (not cur) or string.sub(cur, 1, 36) <= string.sub(new, 1, 36) then
    redis.call('SET', key, new)
    local at = tonumber(ARGV[2 * i])
    if at > 0 then redis.call('PEXPIREAT', key, at) end
    n = n + 1
  end
end
return n
"""


class RedisOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "redis://127.0.0.1:6379/0"
    #: the start of every key this store writes (and deletes)
    prefix: str = "mlrig:features:"
    #: connections of the pool shared by the process's threads
    max_connections: int = Field(default=64, ge=1, le=10_000)
    socket_timeout: float = Field(default=5.0, gt=0, le=600)
    #: rows per write script call
    batch_size: int = Field(default=500, ge=1, le=10_000)
    #: kept past event time + TTL before Redis drops a row (reads check the TTL exactly)
    expire_margin_seconds: float = Field(default=3600.0, ge=0)


def _micros(value: datetime | None) -> int:
    if value is None:
        return 0
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - _ZERO
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _unix_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


class RedisOnlineStore(OnlineStore):
    """Online feature values in Redis: newest wins atomically, TTL checked on read."""

    Options = RedisOptions

    def __init__(self, options: BaseModel) -> None:
        super().__init__(options)
        try:
            import redis
        except ModuleNotFoundError as exc:
            msg = "the redis online store needs redis-py: pip install 'mlrig[redis]'"
            raise MissingExtraError(msg) from exc
        self._redis_errors = (redis.exceptions.RedisError, OSError)
        try:
            self._pool = redis.ConnectionPool.from_url(
                self.options.url,
                max_connections=self.options.max_connections,
                socket_timeout=self.options.socket_timeout,
                socket_connect_timeout=self.options.socket_timeout,
            )
        except ValueError as exc:
            msg = f"features.redis.url: {exc} (expected redis://HOST:PORT/DB)"
            raise OnlineStoreError(msg) from exc
        self._client = redis.Redis(connection_pool=self._pool)
        #: per event loop, a redis.asyncio client (made on the loop's first read)
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]
        self._async_clients = weakref.WeakKeyDictionary()
        self._write_script = self._client.register_script(_WRITE_NEWEST)

    # --- keys ---------------------------------------------------------------------------

    def _view_prefix(self, view: str) -> str:
        return f"{self.options.prefix}{view}:"

    def _key(self, view_prefix: str, key: EntityKey) -> str:
        return view_prefix + orjson.dumps(list(key)).decode()

    # --- the contract -------------------------------------------------------------------

    def write(
        self, view: str, rows: Sequence[OnlineRow], *, ttl_seconds: float | None = None
    ) -> int:
        if not rows:
            return 0
        newest = list(newest_per_key(rows).values())
        prefix = self._view_prefix(view)
        margin_ms = int(self.options.expire_margin_seconds * 1000)
        size = self.options.batch_size
        written = 0
        try:
            for start in range(0, len(newest), size):
                keys: list[str] = []
                args: list[Any] = []
                for row in newest[start : start + size]:
                    header = f"{_micros(row.event_timestamp):0{_DIGITS}d}" + (
                        f"{_micros(row.created_timestamp):0{_DIGITS}d}"
                    )
                    keys.append(self._key(prefix, row.key))
                    args.append(header.encode() + orjson.dumps(row.values))
                    if ttl_seconds is None:
                        args.append(0)
                    else:
                        at = _unix_ms(row.event_timestamp) + int(ttl_seconds * 1000) + margin_ms
                        args.append(max(at, 1))
                written += int(self._write_script(keys=keys, args=args))
        except self._redis_errors as exc:
            raise self._error("write", view, exc) from exc
        return written

    def read(
        self,
        view: str,
        keys: Sequence[EntityKey],
        features: Sequence[str],
        *,
        ttl_seconds: float | None,
        now: datetime,
    ) -> list[dict[str, Any] | None]:
        if not keys:
            return []
        return self.read_many([ViewRead(view, keys, features, ttl_seconds)], now=now)[0]

    def read_many(
        self, reads: Sequence[ViewRead], *, now: datetime
    ) -> list[list[dict[str, Any] | None]]:
        """Every view's keys in one ``MGET`` (one round trip)."""
        names = self._names(reads)
        if not names:
            return [[] for _ in reads]
        try:
            raw = self._client.mget(names)
        except self._redis_errors as exc:
            raise self._error("read", ", ".join(r.view for r in reads), exc) from exc
        return _decoded(reads, raw, now)

    #: :meth:`aread_many` awaits redis.asyncio on the loop
    async_reads = True

    async def aread_many(
        self, reads: Sequence[ViewRead], *, now: datetime
    ) -> list[list[dict[str, Any] | None]]:
        """:meth:`read_many` on the event loop: the same ``MGET`` through a redis.asyncio
        client of the loop's own (its connections belong to the loop)."""
        names = self._names(reads)
        if not names:
            return [[] for _ in reads]
        try:
            raw = await self._async_client().mget(names)
        except self._redis_errors as exc:
            raise self._error("read", ", ".join(r.view for r in reads), exc) from exc
        return _decoded(reads, raw, now)

    def _names(self, reads: Sequence[ViewRead]) -> list[bytes]:
        names: list[bytes] = []
        texts: dict[int, list[bytes]] = {}
        for part in reads:
            prefix = self._view_prefix(part.view).encode()
            encoded = texts.get(id(part.keys))
            if encoded is None:  # views of the same entities often share one key list
                encoded = texts[id(part.keys)] = [orjson.dumps(list(k)) for k in part.keys]
            names.extend(prefix + k for k in encoded)
        return names

    def _async_client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(
                self.options.url,
                max_connections=self.options.max_connections,
                socket_timeout=self.options.socket_timeout,
                socket_connect_timeout=self.options.socket_timeout,
            )
            self._async_clients[loop] = client
        return client

    def delete_view(self, view: str) -> None:
        pattern = _glob_escape(self._view_prefix(view)) + "*"
        try:
            batch: list[bytes] = []
            for key in self._client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    self._client.unlink(*batch)
                    batch = []
            if batch:
                self._client.unlink(*batch)
        except self._redis_errors as exc:
            raise self._error("delete the rows of", view, exc) from exc

    def check(self) -> dict[str, Any]:
        try:
            info = self._client.info("server")
        except self._redis_errors as exc:
            raise self._error("reach", None, exc) from exc
        return {
            "backend": "redis",
            "url": self._display_url(),
            "prefix": self.options.prefix,
            "redis_version": info.get("redis_version"),
        }

    def close(self) -> None:
        self._pool.disconnect()
        # the async clients' connections belong to their loops (which may be gone): they
        # close when collected
        self._async_clients.clear()

    # --- helpers ------------------------------------------------------------------------

    def _display_url(self) -> str:
        return re.sub(r"//[^@/]*@", "//***@", self.options.url)

    def _error(self, action: str, view: str | None, exc: BaseException) -> OnlineStoreError:
        what = f" view {view!r}" if view else ""
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        msg = (
            f"the redis online store could not {action}{what} at {self._display_url()}: "
            f"{reason}; is Redis running there? (set [features.redis] url)"
        )
        return OnlineStoreError(msg, details={"url": self._display_url(), "view": view})


def _decoded(
    reads: Sequence[ViewRead], raw: Sequence[bytes | None], now: datetime
) -> list[list[dict[str, Any] | None]]:
    """``MGET``'s values, in :meth:`RedisOnlineStore._names`'s order, as one result per
    part: ``None`` where a key has no value or an expired one."""
    now_us = _micros(now)
    out: list[list[dict[str, Any] | None]] = []
    at = 0
    for part in reads:
        ttl = part.ttl_seconds
        cutoff = -1 if ttl is None else now_us - int(ttl * 1_000_000)
        wanted = set(part.features)
        found: list[dict[str, Any] | None] = []
        for value in raw[at : at + len(part.keys)]:
            if value is None or (cutoff >= 0 and int(value[:_DIGITS]) < cutoff):
                found.append(None)
                continue
            values = orjson.loads(value[_HEADER:])
            if values.keys() == wanted:
                found.append(values)
            else:
                found.append({name: values.get(name) for name in part.features})
        at += len(part.keys)
        out.append(found)
    return out


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
