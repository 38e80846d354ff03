"""``mlrig db``: create and migrate the database schema (Alembic revisions shipped with mlrig).

These commands build the database without the embedded auto-upgrade, so ``current``
reports the schema as it is and ``downgrade`` is never undone by a first-use upgrade.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from mlrig.cli.context import get_state
from mlrig.cli.output import json_option, print_json
from mlrig.errors import MlrigError

if TYPE_CHECKING:
    from mlrig.db import Database


def _database() -> Database:
    # The settings only (--config / MLRIG_CONFIG aware): migrating needs no platform,
    # plugins or storage, and must work while the schema is too old for the services.
    from mlrig.config import load_settings
    from mlrig.db import Database

    settings = load_settings(get_state().config_path)
    return Database.from_settings(settings, ensure_schema=False)


def _audit(
    database: Database, action: str, before: str | None, after: str | None, error: str = ""
) -> None:
    """Record a migration in the audit log, when the schema has one (any revision but
    none). The actor is the operator's login (``cli:<name>``): a token could not be
    checked against a schema in the middle of changing. A failure to record is a warning:
    the migration itself is done (or failed) already."""
    from mlrig.cli.context import cli_actor
    from mlrig.db.models.auth import AuditLog

    if after is None:
        return  # base: no audit_log table (downgrade base dropped it with the rest)
    details = {"from": before, "to": after, **({"error": error} if error else {})}
    try:
        with database.session() as session:
            session.add(
                AuditLog(
                    actor=cli_actor(),
                    action=action,
                    outcome="failure" if error else "success",
                    resource_type="database",
                    resource_id=after,
                    details=details,
                )
            )
    except Exception as exc:  # reported; never hides the migration's own result
        click.echo(f"warning: the audit log entry was not written: {exc}", err=True)


def _audited(
    database: Database,
    action: str,
    before: str | None,
    migrate: Callable[..., str | None],
    revision: str,
) -> str | None:
    """``migrate(database, revision)`` with progress lines; record it (or its failure) in
    the audit log; return the revision the schema is at."""
    try:
        after = migrate(database, revision, progress=lambda line: click.echo(f"  {line}"))
    except MlrigError as exc:
        _audit(database, action, before, database.schema_revision(), exc.message)
        raise
    if after != before:
        _audit(database, action, before, after)
    return after


def _describe(revision: str | None) -> str:
    return "none (empty database)" if revision is None else revision


@click.group()
def db() -> None:
    """Create and migrate the database schema.

    The embedded SQLite database migrates itself on first use; PostgreSQL must be
    migrated with `mlrig db upgrade` after installing or upgrading mlrig.
    """


@db.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Migrate the schema up to REVISION (default: head, the newest).

    Safe to run on a current database (it does nothing) and from several machines at
    once (a lock makes one of them migrate).
    """
    from mlrig.db import migrate

    database = _database()
    try:
        click.echo(f"database: {database.display_url}")
        before = database.schema_revision()
        click.echo(f"current revision: {_describe(before)}")
        after = _audited(database, "db_upgrade", before, migrate.upgrade, revision)
        if after == before:
            click.echo(f"already at {_describe(after)}; nothing to do")
        else:
            click.echo(f"schema is at {_describe(after)}{_head_note(after)}")
    finally:
        database.dispose()


# ignore_unknown_options: "-1" is a revision (one step down), not an option.
@db.command(context_settings={"ignore_unknown_options": True})
@click.argument("revision")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def downgrade(revision: str, yes: bool) -> None:
    """Migrate the schema down to REVISION: a revision id, -N for N steps, or base.

    Reverting a revision drops the tables and columns it added, with their data.
    `mlrig db downgrade base` removes every mlrig table.
    """
    from mlrig.db import migrate

    database = _database()
    try:
        click.echo(f"database: {database.display_url}")
        before = database.schema_revision()
        click.echo(f"current revision: {_describe(before)}")
        if not yes:
            click.confirm(
                f"downgrade to {revision!r}? data in the reverted tables is lost", abort=True
            )
        after = _audited(database, "db_downgrade", before, migrate.downgrade, revision)
        if after == before:
            click.echo(f"already at {_describe(after)}; nothing to do")
        else:
            click.echo(f"schema is at {_describe(after)}")
    finally:
        database.dispose()


@db.command()
@json_option
def current(as_json: bool) -> None:
    """Show the schema revision of the database and whether it is up to date."""
    from mlrig.db import migrate

    database = _database()
    try:
        revision = database.schema_revision()
    finally:
        database.dispose()
    head = migrate.head()
    data = {
        "url": database.display_url,
        "dialect": database.dialect,
        "current": revision,
        "head": head,
        "up_to_date": revision == head,
    }
    if as_json:
        print_json(data)
        return
    click.echo(f"database: {data['url']}")
    click.echo(f"current revision: {_describe(revision)}{_head_note(revision)}")


def _head_note(revision: str | None) -> str:
    from mlrig.db import migrate

    head = migrate.head()
    if revision == head:
        return " (head)"
    if migrate.is_known(revision):
        return f" (behind head {head}; run `mlrig db upgrade`)"
    return f" (unknown to this mlrig, whose head is {head}; upgrade mlrig)"
