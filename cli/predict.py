"""``mlrig predict``: send one input file to a deployment."""

from __future__ import annotations

import click


@click.command()
def predict() -> None:
    """Predict with a deployment."""
    raise click.ClickException("mlrig predict is being built; see docs/serving.md")
