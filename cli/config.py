"""``mlrig config``: inspect the effective configuration."""

from __future__ import annotations

import click

from mlrig.cli.context import get_state
from mlrig.cli.output import json_option, print_json, print_mapping


@click.group()
def config() -> None:
    """Inspect the effective configuration."""


@config.command("show")
@json_option
def show(as_json: bool) -> None:
    """Print the effective config (file + MLRIG_* overrides), secrets redacted."""
    from mlrig.config import load_settings, secret_option_keys

    settings = load_settings(get_state().config_path)
    pm = get_state().pm
    pm.validate_plugin_options(settings)  # a [plugins.NAME] typo fails here too
    secrets = {}
    for name in settings.plugins.names():
        model = pm.options_model(name) if pm.get_plugin(name) is not None else None
        secrets[name] = secret_option_keys(model) if model is not None else set()
    data = {
        "source": str(settings.source) if settings.source else None,
        **settings.redacted(secret_options=secrets),
    }
    if as_json:
        print_json(data)
        return
    click.echo(f"# source: {data.pop('source') or 'embedded defaults (no mlrig.toml found)'}")
    print_mapping(data)
