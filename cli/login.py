"""``mlrig login URL`` / ``mlrig logout``: keep a server's token in the user config dir."""

from __future__ import annotations

import click


@click.command()
@click.argument("url")
def login(url: str) -> None:
    """Log in to the mlrig server at URL (stores a token for later commands)."""
    raise click.ClickException("mlrig login is not available yet")


@click.command()
def logout() -> None:
    """Forget the stored token."""
    raise click.ClickException("mlrig logout is not available yet")
