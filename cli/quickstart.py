"""``mlrig quickstart``: set up ``./.mlrig`` and tour what mlrig does, step by step."""

from __future__ import annotations

from pathlib import Path

import click

from mlrig.cli.context import get_state


def _step(title: str) -> None:
    click.secho(f"\n==> {title}", bold=True)


@click.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("."), show_default=True, help="Project folder to set up.")
def quickstart(directory: Path) -> None:
    """Initialise ./.mlrig (config, database, artifacts) and run the tour."""
    from mlrig.cli.init import STARTER
    from mlrig.platform import Platform

    directory.mkdir(parents=True, exist_ok=True)
    state = get_state()
    config = Path(state.config_path) if state.config_path else directory / "mlrig.toml"

    _step("config")
    if config.exists():
        click.echo(f"using {config}")
    else:
        config.write_text(STARTER, encoding="utf-8")
        click.echo(f"wrote {config} (SQLite + local artifacts under {directory / '.mlrig'})")
    platform = Platform.from_config(config, plugin_manager=state.pm)
    state._platform = platform

    _step("database")
    facts = platform.db.check()
    click.echo(f"{facts.get('dialect')} database at schema revision {facts.get('revision')}")

    _step("artifact storage")
    stored = platform.artifacts.put("quickstart/hello.txt", b"hello from mlrig\n")
    back = platform.artifacts.get_bytes("quickstart/hello.txt", expected_sha256=stored.sha256)
    click.echo(
        f"stored and read back {stored.size} bytes with backend "
        f"{platform.settings.storage.backend!r} (sha256 {stored.sha256[:12]}..., "
        f"read back {'identical' if back == b'hello from mlrig' + bytes([10]) else 'DIFFERENT'})"
    )

    _step("plugins")
    from mlrig.backends import available_backends

    for info in available_backends():
        click.echo(f"{info.kind:<10} {info.name:<12} from {info.distribution} {info.version}")

    _step("next")
    click.echo("mlrig server           # the REST API, docs at http://127.0.0.1:8080/docs")
    click.echo("mlrig plugins list     # installed backends and hook plugins")
    click.echo("mlrig config show      # the effective configuration")
