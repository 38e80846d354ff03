"""What the CLI's commands share: the config path, the plugin manager, the platform.

With ``--url``/``MLRIG_URL`` the platform is a server's (:class:`mlrig.remote.RemotePlatform`:
the same services over REST) and the principal is the server's user of the token.

Plugin commands use the public helpers re-exported by :mod:`mlrig.cli`:
:func:`pass_platform`, :func:`current_platform` and :func:`current_principal`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import click

if TYPE_CHECKING:
    from mlrig.hooks import PluginManager
    from mlrig.platform import Platform
    from mlrig.remote import RemotePlatform
    from mlrig.security import Principal
    from mlrig.security.roles import Permission

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class CliState:
    """Carried in ``click.Context.obj`` from the top-level group to every command."""

    config_path: str | None = None
    token: str | None = None
    #: the server the commands talk to (``--url``/``MLRIG_URL``); ``None``: embedded
    url: str | None = None
    _pm: PluginManager | None = None
    _platform: Platform | RemotePlatform | None = None
    _principal: Principal | None = None

    @property
    def pm(self) -> PluginManager:
        """The plugin manager, its hook plugins imported on first use: commands that need
        none (``mlrig plugins list``) import none. A plugin that fails is a warning."""
        if self._pm is None:
            from mlrig.hooks import get_plugin_manager

            self._pm = get_plugin_manager()
            for failure in self._pm.failures:
                click.echo(
                    f"warning: plugin {failure.name!r} failed to load ({failure.error}); "
                    "see `mlrig plugins list --check`",
                    err=True,
                )
        return self._pm

    @property
    def plugins_loaded(self) -> bool:
        """Whether :attr:`pm` has been built (and the hook plugins imported)."""
        return self._pm is not None

    @property
    def remote(self) -> bool:
        """Whether the commands talk to a server (``--url``/``MLRIG_URL``)."""
        return bool(self.url)

    def server_token(self) -> str | None:
        """The token for :attr:`url`: ``--token``/``MLRIG_TOKEN``, else the one
        ``mlrig login`` stored for that URL."""
        if self.token or not self.url:
            return self.token
        from mlrig.remote.credentials import token_for

        return token_for(self.url)

    def platform(self) -> Platform:
        """The platform built from the config (once per invocation); with :attr:`url`,
        the server's (:class:`mlrig.remote.RemotePlatform`, the same methods over REST)."""
        if self._platform is None:
            if self.url:
                from mlrig.remote import RemotePlatform

                self._platform = RemotePlatform(self.url, token=self.server_token())
            else:
                from mlrig.platform import Platform

                self._platform = Platform.from_config(self.config_path, plugin_manager=self.pm)
        return self._platform  # type: ignore[return-value]  # a RemotePlatform quacks alike

    def principal(self) -> Principal:
        """Who runs this command: the user of ``--token``/``MLRIG_TOKEN``, else the local
        operator (``cli:<login>``, admin: the embedded CLI has the database anyway).
        Against a server: the server's user of the token (``GET /users/me``)."""
        if self._principal is None:
            from mlrig.security import Principal

            if self.url:
                self._principal = self.platform().whoami()  # type: ignore[attr-defined]
            elif self.token:
                self._principal = self.platform().security.authenticate(self.token)
            else:
                self._principal = Principal(name=cli_actor(), role="admin")
        return self._principal


def get_state() -> CliState:
    """The :class:`CliState` of the running command."""
    return click.get_current_context().ensure_object(CliState)


def get_platform() -> Platform:
    """The platform of the running command."""
    return get_state().platform()


def current_platform() -> Platform:
    """The platform of the running ``mlrig`` command, built once from the user's
    ``--config`` (or ``$MLRIG_CONFIG`` and the usual lookup) with the CLI's plugins.

    For plugin commands: ``from mlrig.cli import current_platform``.
    """
    return get_platform()


def current_principal() -> Principal:
    """Who runs the current command: the user of ``--token``/``$MLRIG_TOKEN`` (a bad token
    is a one-line error), else the local operator as ``cli:<login>`` with the admin role.

    Check a permission with ``current_principal().require(Permission.WRITE)``
    (``from mlrig.security.roles import Permission``).
    """
    return get_principal()


def pass_platform(command: Callable[Concatenate[Platform, P], R]) -> Callable[P, R]:
    """Decorate a click command (below ``@click.command``) so that its function receives
    :func:`current_platform` as its first argument, before the command's own parameters.
    """

    @functools.wraps(command)
    def with_platform(*args: P.args, **kwargs: P.kwargs) -> R:
        return command(get_platform(), *args, **kwargs)

    return with_platform


def cli_actor() -> str:
    """How the CLI's operator appears in the audit log: ``cli:<login name>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def get_principal() -> Principal:
    """Who runs the current command (see :meth:`CliState.principal`)."""
    return get_state().principal()


def require(permission: Permission) -> Principal:
    """The command's principal, who must hold ``permission``: the permission of the REST
    route the command mirrors (docs/security.md), so that ``--token`` grants the CLI
    exactly what it grants over REST. Otherwise a one-line error naming the role needed.
    """
    principal = get_principal()
    principal.require(permission)
    return principal


def require_writer() -> Principal:
    """The command's principal, who must hold the write permission."""
    from mlrig.security.roles import Permission

    return require(Permission.WRITE)


def audit_cli(
    action: str, *, resource_type: str, resource_id: str | None, outcome: str = "success"
) -> None:
    """Record a CLI action in the audit log, as the command's principal (against a server,
    nothing: the server audits the routes it serves)."""
    if get_state().remote:
        return
    get_platform().audit.record(
        actor=get_principal().name,
        action=action,
        outcome=outcome,
        resource_type=resource_type,
        resource_id=resource_id,
    )
