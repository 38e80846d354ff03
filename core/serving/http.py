"""The data plane's HTTP parser: uvicorn's httptools protocol with a bound on the request head.

httptools (about 3x the requests per second of h11 here) keeps a request line and headers
in memory for as long as a client sends them; h11 has a limit, httptools none. A replica
serves whoever can reach its port, so a head larger than :data:`MAX_HEAD_BYTES` gets 431
and the connection is closed. ``mlrig server`` runs the same parser.
"""

from __future__ import annotations

import functools
import gc
from typing import Any

import orjson

#: the longest request line + headers a replica reads (the control plane's bound too)
MAX_HEAD_BYTES = 1024 * 1024
#: how long a refused connection's input is read and dropped before it is closed
_LINGER_SECONDS = 1.0


def _refusal(limit: int) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "code": "request_head_too_large",
                "message": f"the request line and headers exceed {limit} bytes",
                "details": {"limit_bytes": limit},
            }
        }
    )
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\n"
        "content-type: application/json\r\n"
        "connection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def protocol_class(max_head_bytes: int = MAX_HEAD_BYTES) -> Any:
    """The ``http`` protocol class for :class:`uvicorn.Config`: httptools with the head
    bound when httptools is installed, else ``"h11"`` (whose own limit uvicorn applies
    through ``h11_max_incomplete_event_size``).

    One class per bound. At the default bound it is ``BoundedHttpToolsProtocol`` of this
    module, which pickle finds by name: uvicorn pickles its config into each worker
    process of ``mlrig server --workers N``.
    """
    return _bounded_protocol(max_head_bytes)


def __getattr__(name: str) -> Any:
    # unpickling in a worker process looks the class up before anything built it there
    if name == "BoundedHttpToolsProtocol":
        cls = protocol_class(MAX_HEAD_BYTES)
        if not isinstance(cls, str):
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _bounded_protocol(max_head_bytes: int) -> Any:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools missing
        return "h11"

    class BoundedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
        """Counts the bytes of the request being read until its headers are complete."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_open = True
            self._head_bytes = 0

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_open = True
            self._head_bytes = 0

        def on_headers_complete(self) -> None:
            self._head_open = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            if self._head_bytes < 0:  # refused: what the client still sends is dropped
                return
            super().data_received(data)
            # still inside a head after the parser took this chunk: all of it was head
            # (at most one chunk of an earlier request on the connection is counted too)
            if self._head_open and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    self._refuse()

        def _refuse(self) -> None:
            # Answer, end our side, and close a moment later: closing at once with unread
            # input makes the kernel reset the connection, and the client may lose the 431.
            self._head_bytes = -1
            self.transport.write(_refusal(max_head_bytes))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)

    if max_head_bytes == MAX_HEAD_BYTES:  # the name pickle looks up (module __getattr__)
        BoundedHttpToolsProtocol.__qualname__ = "BoundedHttpToolsProtocol"
    return BoundedHttpToolsProtocol


def freeze_heap() -> None:
    """Move every object alive now (modules, the app, its routes and schemas: some 170,000
    objects for the REST API) out of the cyclic garbage collector's reach, once the app is built.

    Each full collection walks every tracked object: about 100-190 ms here with the whole
    app tracked, a pause that lands on whichever request is running. Frozen, a collection
    walks only what requests made since. Garbage made before the freeze is collected
    first, so nothing dead is kept for good.
    """
    gc.collect()
    gc.freeze()
