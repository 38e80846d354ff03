"""``mlrig deployments``: create, list, show, update and delete deployments."""

from __future__ import annotations

import click


@click.group()
def deployments() -> None:
    """Serve model versions: create, list, show, update and delete deployments."""
