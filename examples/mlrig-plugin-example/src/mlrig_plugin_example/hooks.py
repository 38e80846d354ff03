"""Hook implementations: adds ``mlrig example-hello``."""

from __future__ import annotations

import click

from mlrig import hookimpl


@click.command("example-hello")
def example_hello() -> None:
    """Say hello from the example plugin, with the storage backend in use."""
    from mlrig.cli.context import get_platform

    platform = get_platform()
    click.echo(
        f"hello from mlrig-plugin-example (storage backend: {platform.settings.storage.backend})"
    )


@hookimpl
def mlrig_register_commands(cli: click.Group) -> None:
    cli.add_command(example_hello)
