"""``mlrig tokens``: API tokens (shown once, stored hashed)."""

from __future__ import annotations

import click

from mlrig.cli.context import audit_cli, get_platform, require
from mlrig.cli.output import json_option, print_json, print_table
from mlrig.security.roles import Permission


@click.group()
def tokens() -> None:
    """Create, list and revoke API tokens."""


@tokens.command("create")
@click.option("--user", "user", required=True, help="The user the token acts as.")
@click.option("--name", default="default", show_default=True, help="A label for the token.")
@click.option("--ttl-days", type=click.IntRange(min=1), help="Expire after this many days.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="SCOPE",
    help="Narrow the token within the user's role (repeatable): a permission (read, write, "
    "...), predict:* or predict:DEPLOYMENT. Default: everything the role allows.",
)
@json_option
def create(
    user: str, name: str, ttl_days: int | None, scopes: tuple[str, ...], as_json: bool
) -> None:
    """Create a token for a user and print it once (--json: {"token": ...}).

    With --token: your own tokens, or anyone's as an admin. A predict-only token for a
    service: --scope predict:churn."""
    token = get_platform().security.create_token(
        user=user,
        name=name,
        ttl_days=ttl_days,
        scopes=list(scopes) or None,
        actor=require(Permission.READ),
    )
    audit_cli("create_token", resource_type="tokens", resource_id=token["id"])
    if as_json:
        print_json(token)
        return
    narrowed = f", scopes {', '.join(token['scopes'])}" if token["scopes"] else ""
    click.echo(f"token for {user!r}{narrowed} (shown only now; store it safely):")
    click.echo(token["token"])


@tokens.command("list")
@click.option("--user", help="Only this user's tokens.")
@json_option
def list_(user: str | None, as_json: bool) -> None:
    """List tokens (never their secret part); with --token, yours unless you are an admin."""
    rows = get_platform().security.list_tokens(user=user, actor=require(Permission.READ))
    if as_json:
        print_json(rows)
        return
    print_table(
        "tokens",
        ["id", "prefix", "user", "name", "scopes", "created", "last used", "expires", "revoked"],
        (
            [
                t["id"],
                t["prefix"],
                t["user"],
                t["name"],
                ", ".join(t["scopes"]) if t["scopes"] is not None else "(role)",
                t["created_at"],
                t["last_used_at"],
                t["expires_at"],
                t["revoked_at"],
            ]
            for t in rows
        ),
    )


@tokens.command("revoke")
@click.argument("token_id")
@json_option
def revoke(token_id: str, as_json: bool) -> None:
    """Revoke a token by its id or prefix (with --token: yours, or anyone's as an admin)."""
    token = get_platform().security.revoke_token(token_id, actor=require(Permission.READ))
    audit_cli("revoke_token", resource_type="tokens", resource_id=token["id"])
    if as_json:
        print_json(token)
    else:
        click.echo(f"revoked token {token['prefix']} of {token['user']!r}")
