"""``mlrig import``: bring runs and models in from another tool (``mlrig import mlflow``)."""

from __future__ import annotations

import click


@click.group(name="import")
def import_group() -> None:
    """Import experiments, runs and models from another tool."""
