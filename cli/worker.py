"""``mlrig worker``: run training jobs from the queue on this machine."""

from __future__ import annotations

import click

from mlrig.cli.context import get_platform


def _ids(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        msg = f"{text!r}: use a comma-separated list of device ids, e.g. 0,1"
        raise click.BadParameter(msg) from None


@click.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=1,
    show_default=True,
    help="Jobs run at the same time.",
)
@click.option("--cpus", type=click.IntRange(1), help="CPUs to hand out (default: all usable).")
@click.option("--gpus", help="GPU ids to hand out, e.g. 0,1 (default: CUDA_VISIBLE_DEVICES).")
@click.option("--memory-mb", type=click.IntRange(1), help="Memory to hand out (default: all).")
@click.option(
    "--lease-seconds",
    type=click.FloatRange(1),
    default=30.0,
    show_default=True,
    help="A job whose worker is silent this long goes back to the queue.",
)
@click.option("--max-jobs", type=click.IntRange(1), help="Exit after finishing this many jobs.")
@click.option("--exit-when-idle", is_flag=True, help="Exit when the queue is empty.")
@click.option("--quiet", is_flag=True, help="Do not print job events.")
def worker(
    concurrency: int,
    cpus: int | None,
    gpus: str | None,
    memory_mb: int | None,
    lease_seconds: float,
    max_jobs: int | None,
    exit_when_idle: bool,
    quiet: bool,
) -> None:
    """Claim jobs from the queue (priority, then age) and run each in its own process."""
    import os
    import signal
    import threading

    from mlrig.engine.allocator import Capacity
    from mlrig.engine.worker import Worker

    platform = get_platform()
    section = platform.settings.executor
    usable = sorted(os.sched_getaffinity(0))
    count = cpus or section.max_cpus or len(usable)
    capacity = Capacity(cpus=tuple(usable[i % len(usable)] for i in range(count)))
    gpu_ids = _ids(gpus)
    if gpu_ids is not None:
        capacity.gpus = gpu_ids
    elif section.max_gpus is not None:
        capacity.gpus = capacity.gpus[: section.max_gpus]
    if memory_mb or section.max_memory_mb:
        capacity.memory_mb = memory_mb or section.max_memory_mb or capacity.memory_mb
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    engine = Worker(
        platform,
        concurrency=concurrency,
        capacity=capacity,
        lease_seconds=lease_seconds,
        echo=None if quiet else click.echo,
    )
    done = engine.run(stop=stop, max_jobs=max_jobs, exit_when_idle=exit_when_idle)
    click.echo(f"worker {engine.owner} finished {done} job(s)")
