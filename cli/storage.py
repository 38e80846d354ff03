"""``mlrig storage``: the artifact store."""

from __future__ import annotations

import click

from mlrig.cli.context import get_platform
from mlrig.cli.output import json_option, print_json, print_mapping


@click.group()
def storage() -> None:
    """Inspect the artifact store and manage its encryption key."""


@storage.command("gen-key")
def gen_key() -> None:
    """Print a new random master key (base64 of 32 bytes) for [storage] encryption."""
    from mlrig.artifacts import generate_master_key

    click.echo(generate_master_key())
    click.echo(
        "set it as MLRIG_STORAGE__MASTER_KEY and keep a copy: artifacts encrypted with "
        "it cannot be read without it",
        err=True,
    )


@storage.command("info")
@json_option
def info(as_json: bool) -> None:
    """Show the configured store (backend, compression, encryption) and check it."""
    platform = get_platform()
    data = platform.artifacts.describe()
    platform.storage_backend.check()
    data["reachable"] = True
    if as_json:
        print_json(data)
    else:
        print_mapping(data)
