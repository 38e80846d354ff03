"""``mlrig server``: run the REST API with uvicorn."""

from __future__ import annotations

import os
import threading

import click

from mlrig.cli.context import get_platform

#: longest request line + headers uvicorn reads (its default, 16 KiB, is below what the
#: schema's query bounds allow, and uvicorn's own 400 for it is not in the error shape)
MAX_REQUEST_HEAD_BYTES = 1024 * 1024
#: the control plane parses HTTP with h11, whose head limit above bounds what one request
#: can make the server hold (httptools, installed for `mlrig serve`, has no such bound)
HTTP_IMPLEMENTATION = "h11"


@click.command()
@click.option("--host", help="Interface to bind (default: [server] host, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default: [server] port, 8080).")
@click.option("--workers", type=int, help="Worker processes (default: [server] workers, 1).")
@click.option("--log-level", default="info", show_default=True, help="uvicorn log level.")
def server(host: str | None, port: int | None, workers: int | None, log_level: str) -> None:
    """Run the REST API (under /api/ml, OpenAPI docs at /docs)."""
    import uvicorn

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
            uvicorn.run(
                create_app(platform),
                host=host,
                port=port,
                log_level=log_level,
                http=HTTP_IMPLEMENTATION,
                h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
            )
        finally:
            stop.set()
        return
    # Several processes: each builds its own platform from the same config file.
    if platform.settings.source:
        os.environ["MLRIG_CONFIG"] = str(platform.settings.source)
    uvicorn.run(
        "mlrig.api.server:app_from_config",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        http=HTTP_IMPLEMENTATION,
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
