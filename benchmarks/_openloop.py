"""An open-loop HTTP load generator: requests at a fixed rate, latency from the scheduled time.

A closed-loop tool (wrk) sends the next request only when an answer came back, so a server
that stalls also stalls the load, and the stall shows up in one sample instead of in every
request that should have been sent meanwhile ("coordinated omission"). Here request ``i``
is due at ``start + i / rate`` whatever happened before; it goes out on an idle keep-alive
connection, or waits in a queue for one, and its latency runs from the time it was DUE to
its answer's last byte. A server slower than the rate therefore shows growing latency,
as real clients would see it.

One asyncio process with ``asyncio.Protocol`` connections and a minimal HTTP/1.1 response
parser (status line, Content-Length, no chunking: every server benchmarked answers with a
length), so that the generator costs little CPU beside the servers on the same cores.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from _common import percentile  # benchmarks/_common.py


@dataclass
class OpenLoopResult:
    """What one run measured (latencies in milliseconds, from the scheduled send)."""

    rate: float
    sent: int
    ok: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    #: how late the generator dispatched requests (its own health: should be ~1 ms)
    dispatch_lag_p99_ms: float = 0.0
    #: the most requests that were due while every connection was busy
    max_backlog: int = 0

    def figures(self) -> dict[str, Any]:
        """p50/p99/max latency, achieved rate, errors, as the report prints them."""
        lat = self.latencies_ms or [0.0]
        return {
            "rate": round(self.rate),
            "achieved_rps": round(self.ok / self.seconds) if self.seconds else 0,
            "sent": self.sent,
            "errors": self.errors,
            "p50_ms": round(percentile(lat, 50), 2),
            "p99_ms": round(percentile(lat, 99), 2),
            "max_ms": round(max(lat), 2),
            "dispatch_lag_p99_ms": round(self.dispatch_lag_p99_ms, 2),
            "max_backlog": self.max_backlog,
        }


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, gen: Any) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.due = 0.0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, due: float) -> None:
        self.due = due
        assert self.transport is not None
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        start = head.find(b"\r\ncontent-length:")
        if start >= 0:
            stop = head.find(b"\r\n", start + 2)
            length = int(head[start + 17 : stop if stop >= 0 else None])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buffer[: end + 4 + length]
        self.gen.answered(self, status == 200)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.gen.dropped(self)


class _Generator:
    def __init__(self, request: bytes, total: int, warmup: int) -> None:
        self.request = request
        self.total = total
        self.warmup = warmup  # the first requests are sent but not counted
        self.idle: collections.deque[_Connection] = collections.deque()
        self.backlog: collections.deque[float] = collections.deque()
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.max_backlog = 0  # requests due with no free connection (the server behind)
        self.ok = self.errors = self.finished = 0
        self.all_done = asyncio.Event()

    def dispatch(self, due: float) -> None:
        # the generator's own lateness: how long after its due time the request was
        # handled here (sent, or queued for a connection when every one is busy)
        self.lags.append(time.perf_counter() - due)
        if self.idle:
            self.idle.popleft().send(due)
        else:
            self.backlog.append(due)
            self.max_backlog = max(self.max_backlog, len(self.backlog))

    def _finish(self, conn: _Connection | None, ok: bool, due: float) -> None:
        self.finished += 1
        if self.finished > self.warmup:
            if ok:
                self.ok += 1
                self.latencies.append((time.perf_counter() - due) * 1000)
            else:
                self.errors += 1
        if self.finished >= self.total:
            self.all_done.set()
        if conn is None or conn.lost:
            return
        if self.backlog:
            conn.send(self.backlog.popleft())
        else:
            self.idle.append(conn)

    def answered(self, conn: _Connection, ok: bool) -> None:
        self._finish(conn, ok, conn.due)

    def dropped(self, conn: _Connection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        elif self.finished < self.total:
            self._finish(None, False, conn.due)  # the request in flight on it failed


def _arun(coro: Any) -> Any:
    """Run ``coro`` on uvloop where it is installed (less of the generator's CPU taken from
    the servers on the same cores), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The raw bytes of a keep-alive ``POST path`` with a JSON body."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _run(
    host: str,
    port: int,
    request: bytes,
    rate: float,
    seconds: float,
    warmup_seconds: float,
    connections: int,
) -> OpenLoopResult:
    loop = asyncio.get_running_loop()
    warmup = int(rate * warmup_seconds)
    total = warmup + int(rate * seconds)
    gen = _Generator(request, total, warmup)
    conns = []
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: _Connection(gen), host, port)
        conns.append(conn)
        gen.idle.append(conn)
    begin = time.perf_counter() + 0.01
    interval = 1.0 / rate
    i = 0
    while i < total:
        now = time.perf_counter()
        due = begin + i * interval
        if due > now:
            await asyncio.sleep(due - now)
            continue
        # everything due by now goes out (the generator woke late: they keep their due time)
        while i < total and begin + i * interval <= now:
            gen.dispatch(begin + i * interval)
            i += 1
    measured_from = begin + warmup * interval
    # the answers of the last requests: a server far behind gets a bounded wait
    try:
        await asyncio.wait_for(gen.all_done.wait(), timeout=max(10.0, seconds))
    except TimeoutError:
        gen.errors += total - gen.finished  # never answered: counted as failed
    elapsed = time.perf_counter() - measured_from
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    lags = [lag * 1000 for lag in gen.lags[warmup:]] or [0.0]
    return OpenLoopResult(
        rate=rate,
        sent=total - warmup,
        ok=gen.ok,
        errors=gen.errors,
        seconds=elapsed,
        latencies_ms=gen.latencies,
        dispatch_lag_p99_ms=percentile(lags, 99),
        max_backlog=gen.max_backlog,
    )


def open_loop(
    url: str,
    body: bytes,
    *,
    rate: float,
    seconds: float,
    warmup_seconds: float = 1.0,
    connections: int = 64,
    headers: dict[str, str] | None = None,
) -> OpenLoopResult:
    """POST ``body`` to ``url`` (``http://host:port/path``) ``rate`` times a second for
    ``seconds`` (after ``warmup_seconds`` not counted) over up to ``connections``
    keep-alive connections; latency from each request's scheduled time."""
    host, port, path = _split_url(url)
    request = http_request(host, port, path, body, headers or {})
    return _arun(_run(host, port, request, rate, seconds, warmup_seconds, connections))


class _ClosedGenerator:
    """Closed loop: each connection sends its next request when the answer came back."""

    def __init__(self, request: bytes, stop_at: float) -> None:
        self.request = request
        self.stop_at = stop_at
        self.latencies: list[float] = []
        self.errors = 0
        self.open = 0
        self.all_done = asyncio.Event()

    def answered(self, conn: _Connection, ok: bool) -> None:
        now = time.perf_counter()
        if ok:
            self.latencies.append((now - conn.due) * 1000)
        else:
            self.errors += 1
        if now < self.stop_at:
            conn.send(now)
        else:
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        self.open -= 1
        if self.open == 0:
            self.all_done.set()

    def dropped(self, conn: _Connection) -> None:
        if time.perf_counter() < self.stop_at:
            self.errors += 1
            self._close(conn)


@dataclass
class ClosedLoopResult:
    """Requests/s and latencies (ms) of a closed-loop run."""

    seconds: float
    errors: int
    latencies_ms: list[float] = field(repr=False)

    def figures(self) -> dict[str, Any]:
        lat = self.latencies_ms or [0.0]
        return {
            "requests": len(self.latencies_ms),
            "rps": round(len(self.latencies_ms) / self.seconds),
            "errors": self.errors,
            "p50_ms": round(percentile(lat, 50), 3),
            "p99_ms": round(percentile(lat, 99), 3),
            "max_ms": round(max(lat), 3),
        }


async def _run_closed(
    host: str, port: int, request: bytes, connections: int, seconds: float
) -> ClosedLoopResult:
    loop = asyncio.get_running_loop()
    begin = time.perf_counter()
    gen = _ClosedGenerator(request, begin + seconds)
    conns = []
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: _Connection(gen), host, port)  # type: ignore[arg-type]
        conns.append(conn)
    gen.open = len(conns)
    for conn in conns:
        conn.send(time.perf_counter())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gen.all_done.wait(), timeout=seconds + 10)
    elapsed = time.perf_counter() - begin
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return ClosedLoopResult(seconds=elapsed, errors=gen.errors, latencies_ms=gen.latencies)


def closed_loop(
    url: str,
    body: bytes,
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
) -> ClosedLoopResult:
    """A Python stand-in for wrk (used where wrk is not installed, e.g. the CI smoke run):
    ``connections`` keep-alive connections each POSTing ``body`` back to back."""
    host, port, path = _split_url(url)
    request = http_request(host, port, path, body, headers or {})
    return _arun(_run_closed(host, port, request, connections, seconds))


def _split_url(url: str) -> tuple[str, int, str]:
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    return host, int(port), "/" + path
