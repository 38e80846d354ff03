"""``mlrig login URL`` / ``mlrig logout``: keep a server's token in the user config dir.

The token is checked against the server (``GET /users/me``) before it is stored, in
``credentials.toml`` (mode 0600; :mod:`mlrig.remote.credentials`). It is used for that
server when a command names it with ``--url`` or ``MLRIG_URL`` and gives no token.
"""

from __future__ import annotations

import sys

import click

from mlrig.cli.context import get_state
from mlrig.cli.output import json_option, print_json


@click.command()
@click.argument("url")
@click.option(
    "--token",
    "token_option",
    help="The API token (default: MLRIG_TOKEN, else read from a pipe or asked for, not echoed).",
)
@json_option
def login(url: str, token_option: str | None, as_json: bool) -> None:
    """Log in to the mlrig server at URL: check a token there and store it for later
    commands that name the server (--url URL or MLRIG_URL=URL)."""
    from mlrig.client import Client
    from mlrig.remote import credentials

    url = credentials.normalize_url(url)
    token = token_option or get_state().token
    if not token and not sys.stdin.isatty():  # `... | mlrig login URL`: no prompt to hide
        token = sys.stdin.readline().strip()
    elif not token:
        token = click.prompt(f"API token for {url}", hide_input=True).strip()
    if not token:
        raise click.UsageError("an empty token: give --token or type one")
    with Client(url, token=token, timeout=30) as client:
        me = client.me()  # a bad token or an unreachable server is a one-line error
    path = credentials.store(url, token, user=me["name"])
    if as_json:
        print_json({"url": url, "user": me["name"], "role": me["role"], "path": str(path)})
        return
    click.echo(f"logged in to {url} as {me['name']!r} (role {me['role']}); token kept in {path}")
    click.echo(f"use it with: mlrig --url {url} ...  (or export MLRIG_URL={url})")


@click.command()
@click.argument("url", required=False)
@click.option("--all", "every", is_flag=True, help="Forget every stored login.")
@json_option
def logout(url: str | None, every: bool, as_json: bool) -> None:
    """Forget the stored token of URL (default: --url/MLRIG_URL, or the only login)."""
    from mlrig.remote import credentials

    if every and url:
        raise click.UsageError("give URL or --all, not both")
    target = None if every else url or get_state().url
    if target is None and not every:
        stored = sorted(credentials.load())
        if len(stored) > 1:
            listed = ", ".join(stored)
            msg = f"several stored logins ({listed}): name one, or give --all"
            raise click.UsageError(msg)
        target = stored[0] if stored else None
        if target is None:
            raise click.ClickException("no stored login to forget")
    gone = credentials.remove(target)
    if not gone:
        msg = f"no stored login for {credentials.normalize_url(target or '')}"
        raise click.ClickException(msg)
    if as_json:
        print_json({"logged_out": gone})
        return
    for server in gone:
        click.echo(
            f"logged out of {server} (its token is removed from {credentials.credentials_path()})"
        )
