"""``mlrig models show``: a model or a version as panels and tables for people.

Every value is printed as :class:`rich.text.Text`: names, tags and descriptions are data,
never rich markup. ``--json`` prints the service's dict instead, unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def _text(value: Any) -> Any:
    from rich.text import Text

    if value is None or value == "" or value == [] or value == {}:
        return Text("-", style="dim")
    if isinstance(value, float):
        return Text(f"{value:.6g}")
    if isinstance(value, (dict, list)):
        return Text(json.dumps(value, default=str, sort_keys=True))
    return Text(str(value))


def _fields(rows: Iterable[tuple[str, Any]]) -> Any:
    """A two-column grid: field name, value."""
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for name, value in rows:
        grid.add_row(name, _text(value))
    return grid


def _pairs_table(title: str, columns: tuple[str, str], data: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column(columns[0], style="bold")
    table.add_column(columns[1], overflow="fold")
    for key, value in sorted(data.items()):
        table.add_row(_text(key), _text(value))
    return table


def _when(value: str | None) -> str | None:
    return value[:19].replace("T", " ") if value else None


def render_version(data: dict[str, Any]) -> list[Any]:
    """The renderables of one version: fields, metrics, params, lineage, artifacts."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    lineage = data.get("lineage") or {}
    parent = lineage.get("parent")
    experiment = lineage.get("experiment")
    parts: list[Any] = [
        Panel(
            _fields(
                [
                    ("id", data["id"]),
                    ("stage", data["stage"]),
                    ("aliases", ", ".join(data.get("aliases") or [])),
                    ("status", data.get("status")),
                    ("framework", data.get("framework")),
                    ("model type", data.get("model_type")),
                    ("description", data.get("description")),
                    ("tags", ", ".join(f"{k}={v}" for k, v in sorted(data["tags"].items()))),
                    ("created by", data.get("created_by")),
                    ("created", _when(data.get("created_at"))),
                    ("requirements", ", ".join(data.get("requirements") or [])),
                ]
            ),
            title=Text(f"{data['name']} version {data['version']}", style="bold"),
            title_align="left",
        )
    ]
    if data.get("metrics"):
        parts.append(_pairs_table("metrics", ("metric", "value"), data["metrics"]))
    if data.get("params"):
        parts.append(_pairs_table("params", ("param", "value"), data["params"]))
    datasets = ", ".join(d.get("uri", "") for d in lineage.get("datasets") or [])
    derived = ", ".join(f"{d['name']} {d['version']}" for d in lineage.get("derived") or [])
    deployments = ", ".join(
        f"{d['name']} ({d['status']}, {d.get('environment') or '-'})"
        for d in lineage.get("deployments") or []
    )
    lineage_rows = [
        ("parent", f"{parent['name']} {parent['version']}" if parent else None),
        (
            "experiment",
            f"{experiment['name']} ({experiment['status']}, {experiment['id']})"
            if experiment
            else lineage.get("source_experiment_id"),
        ),
        ("run", lineage.get("source_run")),
        ("datasets", datasets),
        ("code version", lineage.get("code_version")),
        ("derived", derived),
        ("deployments", deployments),
    ]
    parts.append(Panel(_fields(lineage_rows), title="lineage", title_align="left"))
    if data.get("signature"):
        parts.append(
            Panel(_text(data["signature"]), title="signature", title_align="left", expand=False)
        )
    artifacts = data.get("artifacts") or []
    if artifacts:
        table = Table(title="artifacts", title_justify="left", show_edge=False)
        for column in ("path", "type", "size", "sha256", "compression", "encrypted"):
            table.add_column(column, justify="right" if column == "size" else "left")
        for a in artifacts:
            table.add_row(
                _text(a["path"]),
                _text(a["type"]),
                _text(a["size"]),
                _text((a.get("sha256") or "")[:16]),
                _text(a.get("compression")),
                _text("yes" if a.get("encrypted") else "no"),
            )
        parts.append(table)
    return parts


def render_model(data: dict[str, Any]) -> list[Any]:
    """The renderables of a model: fields, aliases and its versions."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [
        Panel(
            _fields(
                [
                    ("id", data["id"]),
                    ("description", data.get("description")),
                    ("tags", ", ".join(f"{k}={v}" for k, v in sorted(data["tags"].items()))),
                    ("versions", data.get("version_count")),
                    ("latest", data.get("latest_version")),
                    (
                        "aliases",
                        ", ".join(f"{a} -> {v}" for a, v in sorted(data["aliases"].items()))
                        if data.get("aliases")
                        else None,
                    ),
                    ("created by", data.get("created_by")),
                    ("created", _when(data.get("created_at"))),
                ]
            ),
            title=Text(f"model {data['name']}", style="bold"),
            title_align="left",
        )
    ]
    versions = data.get("versions") or []
    if versions:
        by_version: dict[str, list[str]] = {}
        for alias, version in (data.get("aliases") or {}).items():
            by_version.setdefault(version, []).append(alias)
        table = Table(title="versions", title_justify="left", show_edge=False)
        for column in ("version", "stage", "aliases", "created"):
            table.add_column(column)
        for v in versions:
            table.add_row(
                _text(v["version"]),
                _text(v["stage"]),
                _text(", ".join(sorted(by_version.get(v["version"], [])))),
                _text(_when(v.get("created_at"))),
            )
        parts.append(table)
    return parts


def print_renderables(parts: list[Any]) -> None:
    from rich.console import Console

    console = Console()
    for part in parts:
        console.print(part)
