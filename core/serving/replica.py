"""One replica process of ``mlrig serve``: uvicorn running the data plane app on a socket
the supervisor hands over.

Started by :mod:`mlrig.serving.supervisor` as ``python -m mlrig.serving.replica``. It talks
to the supervisor over an inherited ``SOCK_SEQPACKET`` socket (``--ctrl-fd``):

- replica -> supervisor: JSON messages ``{"event": "ready"}`` once the app answers
  ``GET /readyz`` with 200 (models loaded and warmed), then ``{"event": "stats", ...}`` every
  ``--stats-interval`` seconds (mean in-flight, p99 latency, requests, open connections);
- supervisor -> replica: ``{"shed": N}``, close N keep-alive connections after their next
  answer (rebalancing after a scale-up or a restart); with ``front`` balancing also one
  accepted client connection per message, its descriptor passed with ``SCM_RIGHTS``.

With ``reuseport`` balancing the replica serves the listening socket ``--listen-fd`` (one
of the supervisor's ``SO_REUSEPORT`` group). End of file on the control socket (the
supervisor died) shuts the replica down.

Graceful drain (SIGTERM): stop taking connections, answer every further request with
``Connection: close`` for up to ``--drain-grace`` seconds so keep-alive clients reconnect
to another replica instead of meeting a closed socket, then uvicorn's own shutdown
(finish in-flight requests, close idle connections).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import importlib
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_APP = "mlrig.serving.replica:dataplane_app"

#: latency histogram bounds (seconds) for the p99 the autoscaler reads: 0.1 ms to ~13 s
_BOUNDS = tuple(0.0001 * 1.5**i for i in range(30))
_CLOSE = (b"connection", b"close")


class Meter:
    """ASGI wrapper that measures what the autoscaler needs (cheaply: two clock reads, a
    bisect and three additions per request) and adds ``Connection: close`` while
    draining."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.draining = False
        #: answers still to send with ``Connection: close`` (rebalancing connections)
        self.shed = 0
        self.busy = 0.0
        self.count = 0
        self.hist = [0] * (len(_BOUNDS) + 1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.draining:
            send = _closing(send)
        elif self.shed:
            self.shed -= 1
            send = _closing(send)
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            spent = time.perf_counter() - start
            self.busy += spent
            self.count += 1
            self.hist[bisect.bisect_left(_BOUNDS, spent)] += 1

    def take(self, interval: float) -> dict[str, Any]:
        """The figures since the last call (and reset them)."""
        busy, count, hist = self.busy, self.count, self.hist
        self.busy, self.count, self.hist = 0.0, 0, [0] * (len(_BOUNDS) + 1)
        p99 = None
        if count:
            rank, seen = count * 0.99, 0
            for i, n in enumerate(hist):
                seen += n
                if seen >= rank:
                    p99 = (_BOUNDS[i] if i < len(_BOUNDS) else _BOUNDS[-1] * 1.5) * 1000
                    break
        return {"in_flight": busy / interval if interval > 0 else 0.0, "p99_ms": p99, "n": count}


def _closing(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if _CLOSE not in headers:
                headers.append(_CLOSE)
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def probe_ready(app: ASGIApp) -> bool:
    """Ask the app in-process for ``GET /readyz``: ready on 200, or on 404 (an app without
    a readiness notion)."""
    status = 0
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)  # never disconnects while the probe runs
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/readyz",
        "raw_path": b"/readyz",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "state": {},
    }
    try:
        await app(scope, receive, send)
    except Exception:  # a failing probe means "not ready yet"
        return False
    return status in (200, 404)


def _server_class() -> type:
    import uvicorn

    class ReplicaServer(uvicorn.Server):
        """uvicorn with a control socket, handed-over connections and a drain phase."""

        def __init__(
            self,
            config: uvicorn.Config,
            *,
            meter: Meter,
            ctrl: socket.socket,
            listen: socket.socket | None,
            stats_interval: float,
            drain_grace: float,
        ) -> None:
            super().__init__(config)
            self.meter = meter
            self.ctrl = ctrl
            self.listen = listen
            self.stats_interval = stats_interval
            self.drain_grace = drain_grace
            self._tasks: list[asyncio.Task[None]] = []
            self._handovers: set[asyncio.Task[None]] = set()
            self._unacked: list[bytes] = []

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            # No listener yet: the app's lifespan (model loading) runs first, and the socket
            # is served only once /readyz says the models are warm (see _report).
            await super().startup(sockets=[])
            if not self.started:
                return
            loop = asyncio.get_running_loop()
            self.ctrl.setblocking(False)
            loop.add_reader(self.ctrl.fileno(), self._on_ctrl)
            self._tasks.append(asyncio.create_task(self._report()))

        def _protocol(self) -> asyncio.Protocol:
            return self.config.http_protocol_class(  # type: ignore[call-arg]
                config=self.config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
            )

        def _on_ctrl(self) -> None:
            """Take the connections the front process handed over (or notice its end)."""
            loop = asyncio.get_running_loop()
            while True:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(self.ctrl, 256, 8)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    data, fds = b"", []
                if not data and not fds:
                    # The supervisor is gone: nobody restarts or balances us any more.
                    loop.remove_reader(self.ctrl.fileno())
                    self.should_exit = True
                    return
                if data.startswith(b"{"):
                    command = orjson.loads(data)
                    # Rebalance after a scale-up or a restart: close this many keep-alive
                    # connections, each after a complete answer, so their clients reconnect
                    # (and are spread over every replica) without a failed request.
                    self.meter.shed = max(self.meter.shed, int(command.get("shed", 0)))
                if fds and data[:1] == b"c":
                    # Acknowledge before reading a byte: until then the supervisor may
                    # give the connection to another replica if this one dies.
                    self._ack(b"a" + data[1:9])
                for fd in fds:
                    sock = socket.socket(fileno=fd)
                    # Held until done: the loop keeps only weak references to tasks.
                    task = loop.create_task(self._serve_connection(sock))
                    self._handovers.add(task)
                    task.add_done_callback(self._handovers.discard)

        def _ack(self, message: bytes) -> None:
            self._unacked.append(message)
            try:
                self.ctrl.send(b"a" + b"".join(m[1:] for m in self._unacked))
            except (BlockingIOError, InterruptedError):
                return  # sent with the next one or the next report
            except OSError:
                pass
            self._unacked.clear()

        async def _serve_connection(self, sock: socket.socket) -> None:
            loop = asyncio.get_running_loop()
            try:
                await loop.connect_accepted_socket(self._protocol, sock)
            except OSError:  # the client left before we took over
                sock.close()

        async def _report(self) -> None:
            self._send({"event": "started", "pid": os.getpid()})
            while not await probe_ready(self.meter.app):
                await asyncio.sleep(0.1)
            if self.listen is not None:
                loop = asyncio.get_running_loop()
                server = await loop.create_server(
                    self._protocol, sock=self.listen, backlog=self.config.backlog
                )
                self.servers.append(server)
            self._send({"event": "ready", "pid": os.getpid()})
            last = time.monotonic()
            while True:
                await asyncio.sleep(self.stats_interval)
                if self._unacked:
                    self._ack(self._unacked.pop())
                now = time.monotonic()
                stats = self.meter.take(now - last)
                last = now
                stats["conns"] = len(self.server_state.connections)
                self._send({"event": "stats", **stats})

        def _send(self, message: dict[str, Any]) -> None:
            with contextlib.suppress(OSError):
                self.ctrl.send(orjson.dumps(message))

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for server in self.servers:
                server.close()
            if self.listen is not None:
                self.listen.close()  # also when it was never served (stopped before ready)
            with contextlib.suppress(OSError, ValueError):
                self._on_ctrl()  # connections handed over before the supervisor stopped
                asyncio.get_running_loop().remove_reader(self.ctrl.fileno())
            self.meter.draining = True
            deadline = time.monotonic() + self.drain_grace
            while self.server_state.connections and time.monotonic() < deadline:
                if self.force_exit:
                    break
                await asyncio.sleep(0.02)
            for task in self._tasks:
                task.cancel()
            await super().shutdown(sockets=None)

    return ReplicaServer


def load_app(spec: str) -> ASGIApp:
    """Build the app from ``module:factory`` (the factory takes no argument)."""
    module_name, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attr or "create_app")
    return factory()


def dataplane_app() -> ASGIApp:
    """The default app: the data plane over the platform of ``$MLRIG_CONFIG``."""
    from mlrig.platform import Platform
    from mlrig.serving import dataplane

    platform = Platform.from_config()
    replica = int(os.environ.get("MLRIG_SERVING_REPLICA", "0"))
    plane_class = getattr(dataplane, "DataPlane", None)
    if plane_class is not None:
        return dataplane.create_app(platform, dataplane=plane_class(platform, replica=replica))
    return dataplane.create_app(platform)


def echo_app() -> ASGIApp:
    """A trivial raw ASGI app (for measuring the process layer and for tests): answers
    ``{"ok": true, "pid": ...}``; ``?sleep_ms=N`` waits N ms first; ``/readyz`` is 503
    until ``$MLRIG_ECHO_WARMUP_SECONDS`` have passed since start."""
    pid = os.getpid()
    ready_at = time.monotonic() + float(os.environ.get("MLRIG_ECHO_WARMUP_SECONDS", "0"))
    body = orjson.dumps({"ok": True, "pid": pid})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/readyz":
            ready = time.monotonic() >= ready_at
            text = b'{"ready":true}' if ready else b'{"ready":false}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 200 if ready else 503,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": text})
            return
        query = scope.get("query_string", b"")
        if query.startswith(b"sleep_ms="):
            await asyncio.sleep(float(query[9:].split(b"&")[0]) / 1000)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main(argv: list[str] | None = None) -> int:
    """Run one replica until SIGTERM, SIGINT or the supervisor's end."""
    parser = argparse.ArgumentParser(prog="python -m mlrig.serving.replica")
    parser.add_argument("--ctrl-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int)
    parser.add_argument("--app", default=DEFAULT_APP)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--stats-interval", type=float, default=0.5)
    parser.add_argument("--drain-grace", type=float, default=1.0)
    parser.add_argument("--graceful-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)

    import uvicorn

    from mlrig.serving.http import MAX_HEAD_BYTES, freeze_heap, protocol_class

    ctrl = socket.socket(fileno=args.ctrl_fd)
    listen = socket.socket(fileno=args.listen_fd) if args.listen_fd is not None else None
    meter = Meter(load_app(args.app))
    freeze_heap()  # the runtimes and models loaded: out of the collector's passes
    config = uvicorn.Config(
        meter,
        log_level=args.log_level,
        lifespan="auto",
        access_log=False,
        timeout_graceful_shutdown=int(args.graceful_timeout),
        # httptools with a bound on the request head (it has none of its own), else h11
        http=protocol_class(MAX_HEAD_BYTES),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    server = _server_class()(
        config,
        meter=meter,
        ctrl=ctrl,
        listen=listen,
        stats_interval=args.stats_interval,
        drain_grace=args.drain_grace,
    )
    server.run()
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
