"""``mlrig server``: run the REST API with uvicorn."""

from __future__ import annotations

import os
import threading
from typing import Any

import click

from mlrig.cli.context import get_platform

#: longest request line + headers the server reads (uvicorn's h11 default, 16 KiB, is below
#: what the schema's query bounds allow); over it: 431 in the error shape, then close
MAX_REQUEST_HEAD_BYTES = 1024 * 1024


def http_protocol() -> object:
    """The parser ``mlrig server`` runs, the data plane's: httptools with a bound on the
    request head (:mod:`mlrig.serving.http`; httptools bounds nothing itself), h11 with
    its own limit where httptools is missing."""
    from mlrig.serving.http import protocol_class

    return protocol_class(MAX_REQUEST_HEAD_BYTES)


@click.command()
@click.option("--host", help="Interface to bind (default: [server] host, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default: [server] port, 8080).")
@click.option("--workers", type=int, help="Worker processes (default: [server] workers, 1).")
@click.option("--log-level", default="info", show_default=True, help="uvicorn log level.")
def server(host: str | None, port: int | None, workers: int | None, log_level: str) -> None:
    """Run the REST API (under /api/ml, OpenAPI docs at /docs)."""
    platform = get_platform()
    settings = platform.settings.server
    host = host or settings.host
    port = settings.port if port is None else port
    workers = workers or settings.workers
    platform.prepare_server(host=host, echo=click.echo)
    click.echo(f"mlrig API on http://{host}:{port}/api/ml (docs: http://{host}:{port}/docs)")
    if workers == 1:
        from mlrig.api import create_app

        stop = _start_embedded_workers(platform, settings.embedded_workers)
        try:
            run_api(create_app(platform), host=host, port=port, log_level=log_level)
        finally:
            stop.set()
        return
    # Several processes: each builds its own platform from the same config file.
    if platform.settings.source:
        os.environ["MLRIG_CONFIG"] = str(platform.settings.source)
    run_api(
        "mlrig.api.server:app_from_config",
        host=host,
        port=port,
        log_level=log_level,
        workers=workers,
    )


def run_api(app: Any, *, host: str, port: int, log_level: str = "info", workers: int = 1) -> None:
    """Serve ``app`` (an app, or a factory's import string for ``workers`` > 1) as
    ``mlrig server`` does: the bounded httptools parser, and the objects built so far
    frozen out of the garbage collector's passes (:func:`freeze_heap`)."""
    import uvicorn

    from mlrig.serving.http import freeze_heap

    factory = isinstance(app, str)
    if not factory:
        freeze_heap()
    uvicorn.run(
        app,
        factory=factory,
        host=host,
        port=port,
        workers=workers if factory else None,
        log_level=log_level,
        http=http_protocol(),
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
    )


def _start_embedded_workers(platform: object, concurrency: int) -> threading.Event:
    """Run a job worker inside the server (``[server] embedded_workers``; 0 disables it)."""
    stop = threading.Event()
    if concurrency < 1:
        return stop
    from mlrig.engine.worker import Worker

    engine = Worker(platform, concurrency=concurrency)  # type: ignore[arg-type]
    threading.Thread(
        target=engine.run, kwargs={"stop": stop}, name="mlrig-worker", daemon=True
    ).start()
    click.echo(f"running {concurrency} embedded job worker slot(s); `mlrig worker` adds more")
    return stop
