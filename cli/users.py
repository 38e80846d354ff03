"""``mlrig users``: user accounts."""

from __future__ import annotations

import click

from mlrig.cli.context import audit_cli, get_platform, require
from mlrig.cli.output import json_option, print_json, print_table
from mlrig.security.roles import Permission

ROLE_CHOICE = click.Choice(["viewer", "developer", "deployer", "admin"])


@click.group()
def users() -> None:
    """Create and list users (roles: viewer < developer < deployer < admin)."""


@users.command("create")
@click.argument("name")
@click.option("--role", type=ROLE_CHOICE, required=True, help="The user's role.")
@click.option("--email", help="Contact address.")
@json_option
def create(name: str, role: str, email: str | None, as_json: bool) -> None:
    """Create user NAME with a role (admin only)."""
    require(Permission.ADMIN)
    user = get_platform().security.create_user(name=name, role=role, email=email)
    audit_cli("create_user", resource_type="users", resource_id=user["id"])
    if as_json:
        print_json(user)
    else:
        click.echo(f"created user {name!r} with role {role}; give them a token with:")
        click.echo(f"  mlrig tokens create --user {name}")


@users.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List users (admin only)."""
    require(Permission.ADMIN)
    rows = get_platform().security.list_users()
    if as_json:
        print_json(rows)
        return
    print_table(
        "users",
        ["name", "role", "email", "created"],
        ([u["name"], u["role"], u["email"], u["created_at"]] for u in rows),
    )
