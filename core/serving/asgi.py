"""The raw ASGI app of a serving replica (``mlrig serve``): no framework on the hot path.

Routes (every error in the platform's shape ``{"error": {"code", "message", "details"}}``):

- ``POST /api/ml/deployments/{ref}/predict``: any wire format, told from the body
- ``POST /api/ml/deployments/{ref}/invocations``, ``POST /invocations``: MLflow scoring
  (``/invocations`` serves the only deployment, or the one named by ``?deployment=`` or
  the ``X-Mlrig-Deployment`` header)
- ``GET /api/ml/deployments/{ref}/health``
- KServe v2: ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``,
  ``GET /v2/models/{name}[/versions/{v}]``, ``GET .../ready``, ``POST .../infer``
- ``GET /metrics`` (Prometheus), ``GET /healthz`` (alive), ``GET /readyz`` (every
  deployment loaded and warm: 200, else 503)
- ``GET /ping``, ``GET /health``, ``GET /version``: what MLflow's scoring client polls

A request is routed by splitting its path once; the response headers are prebuilt bytes.
TCP_NODELAY: asyncio's (and uvloop's) transports set it on every accepted socket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from mlrig.errors import MlrigError, PayloadTooLargeError
from mlrig.serving.dataplane import DataPlane

if TYPE_CHECKING:
    from mlrig.platform import Platform

log = logging.getLogger("mlrig.serving")

Scope = dict[str, Any]

_PREFIX = "/api/ml/deployments/"
_JSON = (b"content-type", b"application/json")
_POST_ONLY = "POST"
_GET_ONLY = "GET"


class ServingApp:
    """``create_app(platform)``: the data plane as a raw ASGI application.

    The data plane starts with the ASGI lifespan (or on the first request when the server
    sends no lifespan events) and stops with it.
    """

    def __init__(self, platform: Platform, *, dataplane: DataPlane | None = None) -> None:
        self.platform = platform
        self.dataplane = dataplane if dataplane is not None else DataPlane(platform)
        self.max_body = int(platform.settings.serving.max_body_bytes)
        self._started = False

    # --- ASGI entry ------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            if not self._started:
                self._start()
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    def _start(self) -> None:
        self._started = True
        self.dataplane.start()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self._start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.dataplane.stop)
                metrics = self.dataplane.metrics
                if getattr(metrics, "multiprocess", False):  # a replica: publish the last counts
                    await asyncio.to_thread(metrics.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Any, send: Any) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if path.startswith(_PREFIX):
                ref, _, action = path[len(_PREFIX) :].partition("/")
                if action == "predict" or action == "invocations":
                    _allow(method, _POST_ONLY)
                    protocol = "auto" if action == "predict" else "mlflow"
                    await self._predict(scope, receive, send, ref, protocol, None)
                    return
                if action == "health":
                    _allow(method, _GET_ONLY)
                    await self._deployment_health(scope, send, ref)
                    return
            elif path == "/invocations":
                _allow(method, _POST_ONLY)
                ref = _named_deployment(scope) or self.dataplane.only_deployment()
                await self._predict(scope, receive, send, ref, "mlflow", None)
                return
            elif path.startswith("/v2"):
                await self._v2(scope, receive, send, path, method)
                return
            elif path == "/readyz":
                _allow(method, _GET_ONLY)
                ready = self.dataplane.readiness()
                if ready["ready"]:  # the request path runs once before traffic comes
                    await self.dataplane.warm()
                await _send_json(send, 200 if ready["ready"] else 503, ready)
                return
            elif path == "/healthz":
                _allow(method, _GET_ONLY)
                await _send_json(send, 200, {"status": "ok", "replica": self.dataplane.replica})
                return
            elif path in ("/ping", "/health"):  # MLflow's scoring server answers these
                _allow(method, _GET_ONLY)
                await _send(send, 200, b"\n", [(b"content-type", b"application/json")])
                return
            elif path == "/version":
                _allow(method, _GET_ONLY)
                from mlrig import __version__

                await _send(send, 200, __version__.encode(), [(b"content-type", b"text/plain")])
                return
            elif path == "/metrics":
                _allow(method, _GET_ONLY)
                body, content_type = self.dataplane.metrics.render()
                await _send(send, 200, body, [(b"content-type", content_type.encode())])
                return
            raise _NoRoute(path)
        except MlrigError as exc:
            await _send_error(send, exc)
        except Exception:
            log.exception("%s %s failed", method, path)
            await _send_json(
                send,
                500,
                {
                    "error": {
                        "code": "internal_error",
                        "message": "the server failed to answer; see its log",
                        "details": {},
                    }
                },
            )

    # --- predict ---------------------------------------------------------------------

    async def _predict(
        self,
        scope: Scope,
        receive: Any,
        send: Any,
        ref: str,
        protocol: str,
        version: str | None,
    ) -> None:
        content_type = token = request_id = client_key = None
        length = header_length = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                length = value
            elif name == b"authorization":
                token = _bearer(value)
            elif name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
            elif name == b"x-mlrig-client-key":
                client_key = value
            elif name == b"inference-header-content-length":
                header_length = _int_header(value, "Inference-Header-Content-Length")
        dataplane = self.dataplane
        principal = await dataplane.authenticate(token)
        state = await dataplane.resolve(ref, principal)
        body = await self._body(receive, length)
        answer = await dataplane.predict(
            state,
            body,
            content_type=content_type,
            protocol=protocol,
            request_id=request_id,
            client_key=client_key,
            version=version,
            header_length=header_length,
        )
        out = answer.body
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    _JSON,
                    (b"content-length", b"%d" % len(out)),
                    (b"x-request-id", answer.request_id.encode("latin-1", "replace")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": out})
        if answer.shadow is not None:
            dataplane.after(answer)

    async def _body(self, receive: Any, length: bytes | None) -> bytes:
        """The request body, refused (413) past ``[serving] max_body_bytes``: at once by its
        ``Content-Length``, else as a chunked body streams in."""
        limit = self.max_body
        if length is not None and _int_header(length, "Content-Length") > limit:
            raise _too_large(limit)
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body"):
            if len(body) > limit:
                raise _too_large(limit)
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _deployment_health(self, scope: Scope, send: Any, ref: str) -> None:
        dataplane = self.dataplane
        principal = await dataplane.authenticate(_token(scope))
        state = await dataplane.lookup(ref, principal)
        await _send_json(send, 200, dataplane.health(state))

    # --- KServe v2 -------------------------------------------------------------------

    async def _v2(self, scope: Scope, receive: Any, send: Any, path: str, method: str) -> None:
        parts = path.rstrip("/").split("/")  # ["", "v2", ...]
        dataplane = self.dataplane
        if len(parts) == 2:
            _allow(method, _GET_ONLY)
            from mlrig import __version__

            await _send_json(send, 200, {"name": "mlrig", "version": __version__, "extensions": []})
            return
        if parts[2] == "health" and len(parts) == 4 and parts[3] in ("live", "ready"):
            _allow(method, _GET_ONLY)
            ready = parts[3] == "live" or dataplane.readiness()["ready"]
            if ready and parts[3] == "ready":
                await dataplane.warm()
            await _send_json(send, 200 if ready else 503, {parts[3]: ready})
            return
        if parts[2] != "models" or len(parts) < 4:
            raise _NoRoute(path)
        name, rest = parts[3], parts[4:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        if rest == ["infer"]:
            _allow(method, _POST_ONLY)
            await self._predict(scope, receive, send, name, "v2", version)
            return
        if rest not in ([], ["ready"]):
            raise _NoRoute(path)
        _allow(method, _GET_ONLY)
        principal = await dataplane.authenticate(_token(scope))
        state = await dataplane.lookup(name, principal)
        lv = _served_version(state, version)
        if rest == ["ready"]:
            ready = lv is not None
            await _send_json(send, 200 if ready else 503, {"name": state.name, "ready": ready})
            return
        if lv is None:
            raise dataplane.not_ready(state)
        from mlrig.serving.wire import v2_model_metadata

        meta = v2_model_metadata(
            state.name, lv.version_name, lv.signature, probabilities=lv.has_proba
        )
        await _send_json(send, 200, meta)


# --- helpers ----------------------------------------------------------------------------


class _NoRoute(MlrigError):
    code = "not_found"
    http_status = 404

    def __init__(self, path: str) -> None:
        super().__init__(
            f"no route {path[:200]!r} on the data plane; predictions are "
            "POST /api/ml/deployments/{id or name}/predict",
            details={"path": path[:200]},
        )


class _MethodNotAllowed(MlrigError):
    code = "method_not_allowed"
    http_status = 405

    def __init__(self, method: str, allowed: str) -> None:
        super().__init__(
            f"this route does not support {method[:16]}; it supports: {allowed}",
            details={"allowed": [allowed]},
        )
        self.allow = allowed


def _allow(method: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise _MethodNotAllowed(method, allowed)


def _served_version(state: Any, version: str | None) -> Any:
    for route in state.routes:
        if version is None or version in (route.version.version_name, route.version.version_id):
            return route.version
    if version is not None and state.routes:
        from mlrig.errors import NotFoundError

        served = ", ".join(r.version.version_name for r in state.routes)
        msg = f"deployment {state.name!r} does not serve version {version!r} (it serves {served})"
        raise NotFoundError(msg, details={"deployment": state.name, "version": version})
    return None


def _named_deployment(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-mlrig-deployment":
            return value.decode("latin-1")
    query = scope.get("query_string") or b""
    if query:
        found = parse_qs(query.decode("latin-1")).get("deployment")
        if found:
            return found[0]
    return None


def _bearer(value: bytes) -> str | None:
    scheme, _, token = value.decode("latin-1").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return _bearer(value)
    return None


def _int_header(value: bytes, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        from mlrig.errors import ValidationError

        msg = f"invalid {name} header: {value[:40].decode('latin-1')!r}"
        raise ValidationError(msg, details={"header": name})
    return number


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body is over the limit of {limit:,} bytes for predictions; send "
        "fewer rows per request, or raise [serving] max_body_bytes in the server's config",
        details={"limit_bytes": limit, "setting": "serving.max_body_bytes"},
    )


def error_body(exc: MlrigError) -> bytes:
    """The platform's error shape for ``exc``."""
    doc = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
    return orjson.dumps(doc, default=str, option=orjson.OPT_SERIALIZE_NUMPY)


def error_headers(exc: MlrigError) -> list[tuple[bytes, bytes]]:
    """Headers an error answer carries: Retry-After, WWW-Authenticate, Allow."""
    headers = []
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        headers.append((b"retry-after", b"%d" % max(1, round(retry))))
    if exc.http_status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    allow = getattr(exc, "allow", None)
    if allow:
        headers.append((b"allow", allow.encode()))
    return headers


async def _send_error(send: Any, exc: MlrigError) -> None:
    await _send(send, exc.http_status, error_body(exc), [_JSON, *error_headers(exc)])


async def _send_json(send: Any, status: int, doc: Any) -> None:
    await _send(send, status, orjson.dumps(doc, default=str), [_JSON])


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
