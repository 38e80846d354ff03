"""``mlrig serve``: the data plane, every active deployment in N replica processes."""

from __future__ import annotations

import click


@click.command()
def serve() -> None:
    """Serve every active deployment (multi-model) behind one port."""
    raise click.ClickException("mlrig serve is being built; see docs/serving.md")
