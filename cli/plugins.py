"""``mlrig plugins``: what backends and hook plugins are installed, and whether they load."""

from __future__ import annotations

from typing import Any

import click

from mlrig.backends import KINDS
from mlrig.cli.context import get_state
from mlrig.cli.output import json_option, print_json, print_mapping, print_table

#: every backend kind (from mlrig.backends, so a new kind is listed) and the hook plugins
KIND_CHOICES = [*KINDS, "hooks"]


def _backend_rows(kind: str | None, check: bool) -> list[dict[str, Any]]:
    from mlrig.backends import available_backends, check_backend

    rows = []
    for info in available_backends(kind):
        error = check_backend(info) if check else None
        if info.missing:
            status = "needs-extra"
        elif error:
            status = "error"
        else:
            status = "ok" if check else "unchecked"
        rows.append(
            {
                "kind": info.kind,
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "entry_point": info.value,
                "status": status,
                "install": info.install_hint,
                "error": error,
            }
        )
    return rows


def _hook_rows(check: bool) -> list[dict[str, Any]]:
    from mlrig.hooks import installed_hook_plugins

    # Without --check only metadata is read, unless this process imported them already.
    loaded = check or get_state().plugins_loaded
    statuses = get_state().pm.statuses if loaded else installed_hook_plugins()
    return [
        {
            "kind": "hooks",
            "name": s.name,
            "distribution": s.distribution,
            "version": s.version,
            "entry_point": s.value,
            "status": ("error" if s.error else "ok") if loaded else "unchecked",
            "install": None,
            "error": s.error,
        }
        for s in statuses
    ]


@click.group()
def plugins() -> None:
    """List and inspect installed backends and hook plugins."""


@plugins.command("list")
@click.option("--kind", type=click.Choice(KIND_CHOICES), help="Only this kind.")
@click.option(
    "--check",
    is_flag=True,
    help="Import each plugin to say whether it loads (default: read metadata only).",
)
@click.option("--no-check", is_flag=True, hidden=True)  # the default now; kept for scripts
@json_option
def list_(kind: str | None, check: bool, no_check: bool, as_json: bool) -> None:
    """List installed plugins: name, kind, distribution, version, and (with --check)
    whether each loads. Without --check nothing is imported: the status is `unchecked`,
    or `needs-extra` when the metadata says an optional dependency is missing."""
    check = check and not no_check
    rows = [] if kind == "hooks" else _backend_rows(kind, check=check)
    if kind in (None, "hooks"):
        rows += _hook_rows(check)
    if as_json:
        print_json(rows)
        return
    print_table(
        "mlrig plugins",
        ["kind", "name", "distribution", "version", "status", "note"],
        (
            [
                r["kind"],
                r["name"],
                r["distribution"],
                r["version"],
                r["status"],
                r["install"] or r["error"] or "",
            ]
            for r in rows
        ),
    )


@plugins.command("show")
@click.argument("kind", type=click.Choice(KIND_CHOICES))
@click.argument("name")
@json_option
def show(kind: str, name: str, as_json: bool) -> None:
    """Show one plugin: where it comes from, whether it loads, its options and contract."""
    if kind == "hooks":
        rows = [r for r in _hook_rows(check=True) if r["name"] == name]
        if not rows:
            msg = f"no hook plugin named {name!r}; see: mlrig plugins list --kind hooks"
            raise click.ClickException(msg)
        data = rows[0]
        pm = get_state().pm
        plugin = pm.get_plugin(name)
        if plugin is not None:
            data["hooks"] = sorted(c.name for c in pm.get_hookcallers(plugin) or [])
            model = pm.options_model(name)
            if model is not None:  # the keys of its [plugins.NAME] table
                data["options"] = model.model_json_schema().get("properties", {})
    else:
        from mlrig.backends import CONTRACTS, backend_info, load_backend

        backend_info(kind, name)  # unknown name: error listing the installed ones
        data = next(r for r in _backend_rows(kind, check=True) if r["name"] == name)
        data["contract"] = CONTRACTS[kind]
        if data["status"] == "ok":
            cls = load_backend(kind, name)
            data["options"] = cls.Options.model_json_schema().get("properties", {})
            data["doc"] = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None
    if as_json:
        print_json(data)
    else:
        print_mapping({k: v for k, v in data.items() if v is not None})
