"""The ``mlrig`` command: a click group whose commands are thin layers over the core.

Start-up cost matters (``mlrig --help`` must stay well under 300 ms): command modules
import only click at module level and import the core inside their bodies.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from mlrig import __version__
from mlrig.cli.context import CliState
from mlrig.errors import MlrigError

# name -> "module:attribute" of the built-in commands, one module per command group
BUILTIN_COMMANDS = {
    "init": "mlrig.cli.init:init",
    "config": "mlrig.cli.config:config",
    "plugins": "mlrig.cli.plugins:plugins",
    "server": "mlrig.cli.server:server",
    "quickstart": "mlrig.cli.quickstart:quickstart",
    "db": "mlrig.cli.db:db",
    "users": "mlrig.cli.users:users",
    "tokens": "mlrig.cli.tokens:tokens",
    "audit": "mlrig.cli.audit:audit",
    "models": "mlrig.cli.models:models",
    "experiments": "mlrig.cli.experiments:experiments",
    "sweeps": "mlrig.cli.sweeps:sweeps",
    "features": "mlrig.cli.features:features",
    "storage": "mlrig.cli.storage:storage",
    "worker": "mlrig.cli.worker:worker",
    "deployments": "mlrig.cli.deployments:deployments",
    "serve": "mlrig.cli.serve:serve",
    "predict": "mlrig.cli.predict:predict",
    "login": "mlrig.cli.login:login",
    "logout": "mlrig.cli.login:logout",
    "import": "mlrig.cli.importer:import_group",
}

#: commands that work on the database, the storage or the processes next to them: with
#: ``--url`` they say so and exit 2
LOCAL_ONLY = frozenset({"init", "db", "worker", "server", "serve", "storage", "quickstart"})


class MlrigGroup(click.Group):
    """A group that turns :class:`MlrigError` into one line on stderr and exit code 1, and
    adds the commands of hook plugins only when they are needed: to list the commands
    (``--help``) or to find one that is not built in. A built-in command imports no
    plugin until it builds the platform."""

    plugin_commands_added = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and not self.plugin_commands_added:
            self._add_plugin_commands(ctx)
            command = super().get_command(ctx, cmd_name)
        return command

    def _add_plugin_commands(self, ctx: click.Context) -> None:
        if self.plugin_commands_added:
            return
        self.plugin_commands_added = True
        from mlrig.hooks import Hooks

        pm = ctx.ensure_object(CliState).pm
        try:
            Hooks(pm).register_commands(self)
        except Exception as exc:  # a plugin's hook must not take the whole CLI down
            click.echo(f"warning: a plugin failed to add its commands: {exc!r}", err=True)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlrigError as exc:
            failure = click.ClickException(exc.message + _login_hint(ctx, exc))
            if exc.code == "local_only":  # mlrig.remote.LocalOnlyError
                failure.exit_code = 2
            raise failure from None


@click.group(cls=MlrigGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="MLRIG_CONFIG",
    help="Config file (default: ./mlrig.toml, then the user config dir).",
)
@click.option(
    "--url",
    envvar="MLRIG_URL",
    help="Work against the mlrig server at this URL instead of the local database.",
)
@click.option(
    "--token",
    envvar="MLRIG_TOKEN",
    help="Act as this token's user (default: the local operator; with --url, the token "
    "`mlrig login` stored for that URL).",
)
@click.version_option(__version__, prog_name="mlrig")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, url: str | None, token: str | None) -> None:
    """mlrig: model registry, training engine, tracking, serving and more, in one package.

    Start with `mlrig quickstart`, or `mlrig init` to write a commented mlrig.toml.
    With --url (or MLRIG_URL) the commands work against a server: see `mlrig login`.
    """
    state = ctx.ensure_object(CliState)
    state.config_path = config_path
    state.url = _server_url(url) if url else None
    state.token = token or None
    if state.url and ctx.invoked_subcommand in LOCAL_ONLY:
        click.echo(
            f"Error: `mlrig {ctx.invoked_subcommand}` runs next to the database, not "
            f"against a server: run it without --url/MLRIG_URL where the server's "
            "mlrig.toml is",
            err=True,
        )
        ctx.exit(2)


def _login_hint(ctx: click.Context, exc: MlrigError) -> str:
    """What to do when a server wants a token and the command had none to send."""
    from mlrig.errors import AuthenticationError

    state = ctx.find_object(CliState)
    if not isinstance(exc, AuthenticationError) or state is None or not state.remote:
        return ""
    try:
        if state.server_token():
            return ""
    except MlrigError:
        return ""
    return f"; log in with: mlrig login {state.url} (or give --token / MLRIG_TOKEN)"


def _server_url(url: str) -> str:
    """``--url``/``MLRIG_URL`` in normal form (:func:`mlrig.remote.credentials.normalize_url`);
    a malformed one is a usage error (exit 2), not a request to some other place."""
    from mlrig.errors import ValidationError
    from mlrig.remote.credentials import normalize_url

    try:
        return normalize_url(url)
    except ValidationError as exc:
        raise click.BadParameter(exc.message, param_hint="'--url' / MLRIG_URL") from None


def _add_builtin_commands(group: click.Group) -> None:
    import importlib

    for name, target in BUILTIN_COMMANDS.items():
        module, _, attr = target.partition(":")
        group.add_command(getattr(importlib.import_module(module), attr), name=name)


def build_cli() -> click.Group:
    """The CLI with the built-in commands; hook plugins add theirs when first needed."""
    _add_builtin_commands(cli)
    return cli


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    build_cli().main(
        args=argv if argv is not None else sys.argv[1:], prog_name="mlrig", obj=CliState()
    )
