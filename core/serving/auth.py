"""Token checks for the data plane without a database round trip per request.

:class:`TokenCache` remembers what :meth:`SecurityService.authenticate` said about a
token for a short time: a valid token is trusted for ``ttl_seconds`` after its database
check (so a revocation, a disabled user or a role change takes effect within the TTL), and
never past the token's own expiry; a refused token is remembered for at most a second, so
that a client sending garbage cannot hammer the database. Entries are keyed by the
token's sha256: the cache never holds a plaintext token.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from mlrig.errors import AuthenticationError

if TYPE_CHECKING:
    from mlrig.security import Principal, SecurityService

__all__ = ["NEGATIVE_TTL_SECONDS", "TokenCache"]

#: the longest a refused token is remembered (shorter when the TTL is)
NEGATIVE_TTL_SECONDS = 1.0
#: how long a request waits for another request's database check of the same token
_FOLLOWER_WAIT_SECONDS = 10.0


class _Lru:
    """A bounded mapping ``key -> (deadline, value)``; the caller holds the lock."""

    __slots__ = ("entries", "max_size")

    def __init__(self, max_size: int) -> None:
        self.entries: OrderedDict[bytes, tuple[float, object]] = OrderedDict()
        self.max_size = max_size

    def get(self, key: bytes, now: float) -> object | None:
        found = self.entries.get(key)
        if found is None:
            return None
        if found[0] <= now:
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return found[1]

    def put(self, key: bytes, deadline: float, value: object) -> None:
        self.entries[key] = (deadline, value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_size:
            self.entries.popitem(last=False)


class TokenCache:
    """Bearer-token checks with a short-lived, bounded, thread-safe cache.

    ``authenticate(token)`` answers like :meth:`SecurityService.authenticate` (a
    :class:`~mlrig.security.Principal`, or :class:`AuthenticationError`), reading the
    database only when the token is not cached. ``peek(token)`` answers from the cache
    alone (``None``: not cached), for an event loop that must not block: peek first, and
    run ``authenticate`` in a thread only on a miss.

    ``ttl_seconds`` 0 disables the cache (every call reads the database).
    """

    def __init__(
        self,
        security: SecurityService,
        ttl_seconds: float,
        *,
        max_size: int = 10_000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if ttl_seconds < 0:
            msg = f"ttl_seconds must be >= 0, got {ttl_seconds}"
            raise ValueError(msg)
        self.security = security
        self.ttl_seconds = float(ttl_seconds)
        self.negative_ttl_seconds = min(self.ttl_seconds, NEGATIVE_TTL_SECONDS)
        # the valid and the refused apart: a flood of garbage must not evict good tokens
        self._valid = _Lru(max_size)
        self._refused = _Lru(max_size)
        self._lock = threading.Lock()
        self._pending: dict[bytes, threading.Event] = {}
        self._clock = clock or time.monotonic
        #: database checks made (for tests and metrics)
        self.misses = 0

    @staticmethod
    def _key(plaintext: str) -> bytes:
        return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).digest()

    def peek(self, plaintext: str | None) -> Principal | None:
        """The cached principal of ``plaintext``; raises the cached refusal; ``None`` when
        the cache does not know the token (then call :meth:`authenticate`)."""
        if not plaintext:
            return None  # authenticate() refuses it without the database
        key = self._key(plaintext)
        now = self._clock()
        with self._lock:
            principal = self._valid.get(key, now)
            refusal = None if principal is not None else self._refused.get(key, now)
        if principal is not None:
            return principal  # type: ignore[return-value]
        if refusal is not None:
            raise AuthenticationError(str(refusal))
        return None

    def authenticate(self, plaintext: str | None) -> Principal:
        """The principal ``plaintext`` stands for; :class:`AuthenticationError` if none.

        Blocking on a miss (one database check)."""
        cached = self.peek(plaintext)
        if cached is not None:
            return cached
        if not plaintext:
            return self.security.authenticate(plaintext)  # raises, no database
        key = self._key(plaintext)
        # one database check per token at a time: a burst of requests with a token the
        # cache does not know yet (a server just started) waits for the first one's
        with self._lock:
            pending = self._pending.get(key)
            leader = pending is None
            if leader:
                pending = self._pending[key] = threading.Event()
        if not leader:
            pending.wait(timeout=_FOLLOWER_WAIT_SECONDS)
            cached = self.peek(plaintext)  # or raises the refusal the first check cached
            if cached is not None:
                return cached
            return self._check(key, plaintext)  # nothing cached (TTL 0, a database error)
        try:
            return self._check(key, plaintext)
        finally:
            with self._lock:
                self._pending.pop(key, None)
            pending.set()

    def _check(self, key: bytes, plaintext: str) -> Principal:
        """Ask the database, and cache the answer."""
        with self._lock:
            self.misses += 1
        try:
            principal = self.security.authenticate(plaintext)
        except AuthenticationError as exc:
            if self.negative_ttl_seconds > 0:
                with self._lock:
                    self._refused.put(key, self._clock() + self.negative_ttl_seconds, exc.message)
            raise
        lifetime = self.ttl_seconds
        if principal.expires_at is not None:  # never trusted past the token's own expiry
            lifetime = min(lifetime, principal.expires_at.timestamp() - time.time())
        if lifetime > 0:
            with self._lock:
                self._refused.entries.pop(key, None)
                self._valid.put(key, self._clock() + lifetime, principal)
        return principal

    def invalidate(self, plaintext: str | None = None) -> None:
        """Forget ``plaintext`` (every token when ``None``): its next use is checked."""
        with self._lock:
            if plaintext is None:
                self._valid.entries.clear()
                self._refused.entries.clear()
                return
            key = self._key(plaintext)
            self._valid.entries.pop(key, None)
            self._refused.entries.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._valid.entries) + len(self._refused.entries)
