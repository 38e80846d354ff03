"""``mlrig storage``: the artifact store."""

from __future__ import annotations

import re
import sys
from datetime import timedelta

import click

from mlrig.cli.context import get_platform
from mlrig.cli.output import json_option, print_json, print_mapping


@click.group()
def storage() -> None:
    """Inspect the artifact store and manage its encryption key."""


@storage.command("gen-key")
def gen_key() -> None:
    """Print a new random master key (base64 of 32 bytes) for [storage] encryption."""
    from mlrig.artifacts import generate_master_key

    click.echo(generate_master_key())
    click.echo(
        "set it as MLRIG_STORAGE__MASTER_KEY and keep a copy: artifacts encrypted with "
        "it cannot be read without it",
        err=True,
    )


@storage.command("info")
@json_option
def info(as_json: bool) -> None:
    """Show the configured store (backend, compression, encryption) and check it."""
    platform = get_platform()
    data = platform.artifacts.describe()
    platform.storage_backend.check()
    data["reachable"] = True
    if as_json:
        print_json(data)
    else:
        print_mapping(data)


@storage.command("rotate-key")
@click.option("--prefix", default="", help="Only artifacts whose key starts with this.")
@click.option("--dry-run", is_flag=True, help="Count what would be rewritten; change nothing.")
@json_option
def rotate_key(prefix: str, dry_run: bool, as_json: bool) -> None:
    """Re-encrypt the artifacts an older master key protects with the current one.

    First make the new key [storage] master_key and list the old one in
    [storage] previous_master_keys; after a run that reports nothing left to rewrite
    (and no failures), the old key can go.
    """
    from rich.console import Console
    from rich.progress import Progress

    from mlrig.artifacts.rotation import rotate_master_key
    from mlrig.cli.context import audit_cli

    platform = get_platform()
    store = platform.artifacts
    # a progress line only on a terminal (a pipe or a log gets the summary alone)
    quiet = as_json or not sys.stderr.isatty()
    with Progress(transient=True, disable=quiet, console=Console(stderr=True)) as progress:
        task = progress.add_task("checking artifacts", total=None)
        report = rotate_master_key(
            store,
            prefix=prefix,
            dry_run=dry_run,
            on_rewritten=platform.registry.record_rewritten_artifact,
            on_checked=lambda _key: progress.advance(task),
        )
    if not dry_run:
        audit_cli(
            "rotate_master_key",
            resource_type="storage",
            resource_id=report["master_key_id"],
            outcome="failure" if report["failed"] else "success",
        )
    if as_json:
        print_json(report)
    else:
        verb = "would rewrite" if dry_run else "rewrote"
        click.echo(
            f"checked {report['checked']} artifacts: {verb} {report['rewritten']} under master "
            f"key {report['master_key_id']}, {report['current']} already under it, "
            f"{report['unencrypted']} not encrypted, {len(report['failed'])} failed"
        )
        for failure in report["failed"][:20]:
            click.echo(f"  failed: {failure['key']}: {failure['error']}", err=True)
    if report["failed"]:
        raise click.exceptions.Exit(1)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(_ctx: click.Context, _param: click.Parameter, value: str) -> timedelta:
    match = _DURATION.match(value)
    if not match:
        msg = f"{value!r} is not a duration; write e.g. 90s, 30m, 1h, 2d or 0"
        raise click.BadParameter(msg)
    return timedelta(seconds=float(match[1]) * _UNITS[match[2]])


def _size(size: int | None) -> str:
    if size is None:
        return "?"
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


@storage.command("gc")
@click.option("--dry-run", is_flag=True, help="List what would be removed; change nothing.")
@click.option(
    "--older-than",
    "older_than",
    default="1h",
    show_default=True,
    callback=_duration,
    help="Grace period: leave objects and uploads younger than this (90s, 30m, 1h, 2d, 0).",
)
@json_option
def gc(dry_run: bool, older_than: timedelta, as_json: bool) -> None:
    """Remove artifacts no database row references and abort stale unfinished uploads.

    Only mlrig's own keys (models/..., experiments/...) are considered; objects younger
    than --older-than are left alone, so it is safe while the server works (an upload
    in progress writes its object before its row).
    """
    from rich.console import Console
    from rich.progress import Progress

    from mlrig.artifacts.gc import collect_garbage, database_references
    from mlrig.cli.context import audit_cli, require
    from mlrig.security.roles import Permission

    platform = get_platform()
    # listing shows what is stored (read); removing is the operator's job (admin)
    require(Permission.READ if dry_run else Permission.ADMIN)
    quiet = as_json or not sys.stderr.isatty()
    with Progress(transient=True, disable=quiet, console=Console(stderr=True)) as progress:
        task = progress.add_task("listing artifacts", total=None)
        report = collect_garbage(
            platform.storage_backend,
            lambda: database_references(platform.db),
            older_than=older_than,
            dry_run=dry_run,
            on_checked=lambda _key: progress.advance(task),
        )
    if not dry_run:
        audit_cli(
            "storage_gc",
            resource_type="storage",
            resource_id=None,
            outcome="failure" if report.failed else "success",
        )
    if as_json:
        print_json(report.to_dict())
    else:
        verb = "would remove" if dry_run else "removed"
        for orphan in report.orphans:
            click.echo(f"orphan  {orphan['key']}  {_size(orphan['size'])}")
        for upload in report.uploads:
            click.echo(f"upload  {upload['key']}  {upload['upload_id']}  {_size(upload['size'])}")
        removed = len(report.orphans) if dry_run else report.removed
        aborted = len(report.uploads) if dry_run else report.aborted
        click.echo(
            f"checked {report.checked} objects: {report.referenced} referenced, "
            f"{report.too_young} younger than the grace period; {verb} {removed} orphans "
            f"and {aborted} unfinished uploads, {len(report.failed)} failed"
        )
        for failure in report.failed[:20]:
            click.echo(f"  failed: {failure['key']}: {failure['error']}", err=True)
    if report.failed:
        raise click.exceptions.Exit(1)
