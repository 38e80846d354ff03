"""A small HTTP/1.1 client for the server's JSON routes, on the standard library.

A CLI command is a process of its own, and importing httpx costs it more than the whole
request (about five times ``http.client``): the facades send their JSON requests through
:class:`JsonHttp` and keep :class:`mlrig.Client` (httpx) for multipart uploads, streamed
downloads and raw bodies. When a proxy is configured in the environment
(``HTTPS_PROXY``...), which ``http.client`` does not read, the JSON requests go through
:class:`mlrig.Client` too, so both take the same way to the server.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from mlrig import errors

if TYPE_CHECKING:
    import http.client

    from mlrig.client import Client

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def proxy_configured() -> bool:
    """Whether the environment names a proxy (then httpx, which reads it, is used)."""
    return any(os.environ.get(name) or os.environ.get(name.upper()) for name in _PROXY_VARIABLES)


def error_from(status: int, body: bytes) -> errors.MlrigError:
    """The :class:`~mlrig.errors.MlrigError` of an error answer, as :class:`mlrig.Client`
    raises it (the class of the server's ``code``, its message and details)."""
    from mlrig.client import _error_classes

    try:
        error = json.loads(body)["error"]
        code, message, details = error["code"], error["message"], error.get("details") or {}
    except (ValueError, KeyError, TypeError):
        text = body[:300].decode("utf-8", "replace")
        code, message, details = "error", f"HTTP {status}: {text}", {}
    cls = _error_classes().get(code, errors.MlrigError)
    details = {**details, "status": status}
    try:
        return cls(message, details=details)
    except TypeError:  # a subclass with a constructor of its own
        return errors.MlrigError(message, details=details)


def _query(params: dict[str, Any]) -> str:
    """Query parameters as httpx writes them: lists repeated, booleans in lower case."""
    pairs = []
    for key, value in params.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is None:
                continue
            text = ("true" if item else "false") if isinstance(item, bool) else str(item)
            pairs.append((key, text))
    return urlencode(pairs)


class JsonHttp:
    """JSON requests to ``{url}/api/ml`` over one kept-alive connection."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port
        self._base = f"{parts.path.rstrip('/')}/api/ml"
        self._headers = {"Accept": "application/json", "User-Agent": "mlrig-cli"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        import http.client

        if self._https:
            import ssl

            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """The decoded JSON answer of ``method path`` (``None`` for an empty one), or the
        server's error raised as its :class:`~mlrig.errors.MlrigError` subclass."""
        import http.client

        target = quote(self._base + path, safe="/%:@-._~!$&'()*+,;=")
        if params:
            query = _query(params)
            target += f"?{query}" if query else ""
        headers = dict(self._headers)
        body = None
        if json is not None:
            body = _dumps(json)
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            reused = self._connection is not None
            if self._connection is None:
                self._connection = self._connect()
            try:
                self._connection.request(method, target, body=body, headers=headers)
                response = self._connection.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and attempt == 1:  # the server closed an idle kept-alive connection
                    continue
                raise self._unreachable(exc) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise self._unreachable(exc) from None
        if response.will_close:
            self.close()
        if response.status >= 400:
            raise error_from(response.status, data)
        return _loads(data) if data else None

    def _unreachable(self, exc: BaseException) -> errors.MlrigError:
        reason = str(exc) or exc.__class__.__name__
        msg = f"cannot reach the mlrig server at {self.url}: {reason}; is `mlrig server` running?"
        return errors.MlrigError(msg, details={"url": self.url})

    def close(self) -> None:
        """Close the connection (the next request opens another)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class ClientJson:
    """:class:`JsonHttp`'s interface over :class:`mlrig.Client` (when a proxy is set)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.request(method, path, **kwargs)

    def close(self) -> None:
        """Nothing: the client is closed with the platform."""


def _dumps(value: Any) -> bytes:
    """As httpx's ``json=``: compact UTF-8, and no NaN or infinity (not JSON)."""
    try:
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except ValueError as exc:
        msg = f"cannot send this to the server: {exc} (NaN and infinity are not JSON)"
        raise errors.ValidationError(msg) from None


def _loads(data: bytes) -> Any:
    return json.loads(data)
