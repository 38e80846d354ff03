"""The data plane's httptools protocol bounds the request head (httptools has no limit)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from mlrig.serving.http import protocol_class


async def _echo_app(scope, receive, send):  # a raw ASGI app: answers the body's length
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    answer = str(len(body)).encode()
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
def server() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(_echo_app, http=protocol_class(64 * 1024), log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield port
    srv.should_exit = True
    thread.join(10)


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        try:
            conn.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed while we were still sending: read what it said
        chunks = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and not payload.startswith(b"POST"):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def test_a_head_over_the_bound_gets_431_and_the_connection_closes(server: int) -> None:
    huge = b"GET / HTTP/1.1\r\nhost: x\r\nx-junk: " + b"a" * (512 * 1024) + b"\r\n\r\n"
    answer = _exchange(server, huge)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"code":"request_head_too_large"' in answer


def test_a_large_body_is_not_mistaken_for_a_large_head(server: int) -> None:
    body = b"x" * (3 * 1024 * 1024)
    request = (
        b"POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = _exchange(server, request)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert answer.endswith(str(len(body)).encode())


def test_keep_alive_requests_each_get_their_own_bound(server: int) -> None:
    one = b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: " + b"b" * (40 * 1024) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server), timeout=10) as conn:
        for _ in range(3):  # 3 x 40 KiB heads on one connection: each under 64 KiB
            conn.sendall(one)
            answer = b""
            while not answer.endswith(b"\r\n\r\n0"):
                chunk = conn.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
