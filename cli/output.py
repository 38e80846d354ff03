"""Rendering for the CLI: JSON for scripts, rich tables and panels for people."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table with rich (imported here: only commands that print tables pay for it)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        # Text, not str: cells are data, never rich markup (`mlrig[s3]` must stay as it is)
        table.add_row(*(Text("" if v is None else str(v)) for v in row))
    Console().print(table)


def print_mapping(data: dict[str, Any], *, indent: int = 0) -> None:
    """Print nested key/value data as an indented outline."""
    for key, value in data.items():
        if isinstance(value, dict):
            click.echo(f"{' ' * indent}{key}:")
            print_mapping(value, indent=indent + 2)
        else:
            click.echo(f"{' ' * indent}{key}: {value}")


def show_result(data: Any, as_json: bool, done: str | None = None) -> None:
    """A command's result: JSON with ``--json``, else the one-line ``done`` summary, else
    the data as an outline."""
    if as_json:
        print_json(data)
    elif done:
        click.echo(done)
    elif isinstance(data, dict):
        print_mapping(data)
