"""``mlrig serve``: the data plane, every active deployment in N replica processes."""

from __future__ import annotations

import os

import click

from mlrig.cli.context import get_state


@click.command()
@click.option("--host", help="Interface to bind (default: [serving] host, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default: [serving] port, 8090; 0: any free).")
@click.option(
    "--replicas",
    type=click.IntRange(1, 256),
    help="Replica processes to start (default: [serving] replicas, else the active "
    "deployments' replicas min/max, else one per CPU core).",
)
@click.option(
    "--min-replicas", type=click.IntRange(1, 256), help="Autoscaling: the fewest replicas."
)
@click.option("--max-replicas", type=click.IntRange(1, 256), help="Autoscaling: the most replicas.")
@click.option(
    "--balancing",
    type=click.Choice(["reuseport", "front"]),
    help="How replicas share the port (default: [serving] balancing).",
)
@click.option("--log-level", default="warning", show_default=True, help="uvicorn log level.")
@click.option(
    "--app",
    default="mlrig.serving.replica:dataplane_app",
    hidden=True,
    help="module:factory of the ASGI app each replica runs (benchmarks of the process layer).",
)
def serve(
    host: str | None,
    port: int | None,
    replicas: int | None,
    min_replicas: int | None,
    max_replicas: int | None,
    balancing: str | None,
    log_level: str,
    app: str,
) -> None:
    """Serve every active deployment (multi-model) behind one port.

    A supervisor runs the replicas, restarts one that crashes (the others keep serving),
    scales between --min-replicas and --max-replicas on in-flight requests and latency,
    and drains replicas on SIGTERM/Ctrl-C. It prints "ready" once every replica has
    loaded and warmed its models.
    """
    from mlrig.serving.supervisor import ServeOptions, Supervisor

    platform = get_state().platform()
    settings = platform.settings.serving
    wanted = _deployment_bounds(platform)
    flags = (replicas, min_replicas, max_replicas)
    if wanted and settings.replicas is None and flags == (None, None, None):
        # Every replica hosts every deployment: the deployments' widest asks decide.
        min_replicas, max_replicas = wanted
    count = replicas or min_replicas or settings.replicas or os.cpu_count() or 1
    low = min_replicas or min(count, max_replicas or count)
    high = max_replicas or max(count, low)
    if low > high:
        raise click.BadParameter(
            f"--min-replicas {low} is above --max-replicas {high}", param_hint="--min-replicas"
        )
    count = min(max(count, low), high)
    env = {}
    if platform.settings.source:
        # Each replica builds its own platform from the same file.
        env["MLRIG_CONFIG"] = str(platform.settings.source)
    options = ServeOptions(
        host=host or settings.host,
        port=settings.port if port is None else port,
        replicas=count,
        min_replicas=low,
        max_replicas=high,
        balancing=balancing or settings.balancing,
        app=app,
        log_level=log_level,
        target_in_flight=settings.target_in_flight,
        target_p99_ms=settings.target_p99_ms,
        scale_up_window_seconds=settings.scale_up_window_seconds,
        scale_down_cooldown_seconds=settings.scale_down_cooldown_seconds,
        env=env,
    )
    platform.close()  # the supervisor needs no database; the replicas open their own
    scaling = f", autoscaling {low}-{high}" if low < high else ""
    click.echo(
        f"mlrig serve: {count} replica(s) on http://{options.host}:{options.port} "
        f"({options.balancing}{scaling})"
    )
    supervisor = Supervisor(
        options, echo=lambda line: click.echo(line, err=line.startswith(("error:", "warning:")))
    )
    raise SystemExit(supervisor.run())


def _deployment_bounds(platform: object) -> tuple[int, int] | None:
    """(largest min, largest max) of the active deployments' ``replicas`` when one asks for
    more than one replica; None otherwise (or when they can't be read: the replicas will
    report that themselves)."""
    try:
        views = platform.deployments.snapshot()  # type: ignore[attr-defined]
        bounds = [(int(v["replicas"]["min"]), int(v["replicas"]["max"])) for v in views]
    except Exception:  # a broken database must not stop the supervisor from starting
        return None
    if not bounds or all(high <= 1 for _, high in bounds):
        return None
    return max(low for low, _ in bounds), max(high for _, high in bounds)
