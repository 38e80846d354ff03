"""Hook implementations: the ``mlrig example-hello`` command, and a log of new versions.

Configured by its own ``[plugins.example]`` table of ``mlrig.toml``, validated by
:class:`Options` when the platform starts (``MLRIG_PLUGINS__EXAMPLE__GREETING=hi`` works
too)::

    [plugins.example]
    greeting = "good morning"
    colour = "green"
    events_file = "versions.jsonl"   # relative: next to mlrig.toml
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click
from pydantic import BaseModel, ConfigDict, SecretStr

from mlrig import ConfigPath, hookimpl
from mlrig.cli import current_principal, pass_platform

if TYPE_CHECKING:
    from mlrig import Platform


class Options(BaseModel):
    """``[plugins.example]`` options."""

    model_config = ConfigDict(extra="forbid")
    #: how ``mlrig example-hello`` greets
    greeting: str = "hello"
    colour: Literal["plain", "red", "green", "blue"] = "plain"
    #: append one JSON line per registered model version here (off when unset)
    events_file: ConfigPath | None = None
    #: where a real plugin would post; a secret, so `mlrig config show` hides it
    webhook_url: SecretStr | None = None


@click.command("example-hello")
@pass_platform
def example_hello(platform: Platform) -> None:
    """Greet the user of --token, with the config and storage backend in use."""
    options: Options = platform.plugin_options("example")
    user = current_principal()
    source = platform.settings.source or "embedded defaults"
    click.secho(
        f"{options.greeting} {user.name} ({user.role}) from mlrig-plugin-example "
        f"(storage backend: {platform.settings.storage.backend}, config: {source})",
        fg=None if options.colour == "plain" else options.colour,
    )


@hookimpl
def mlrig_register_commands(cli: click.Group) -> None:
    cli.add_command(example_hello)


@hookimpl
def mlrig_model_version_created(platform: Platform, version: dict[str, Any]) -> None:
    events_file: Path | None = platform.plugin_options("example").events_file
    if events_file is None:
        return
    events_file.parent.mkdir(parents=True, exist_ok=True)
    record = {"name": version.get("name"), "version": version.get("version")}
    with events_file.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
