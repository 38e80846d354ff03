"""What the CLI's commands share: the config path, the plugin manager, the platform."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from mlrig.platform import Platform
    from mlrig.security import Principal


@dataclass
class CliState:
    """Carried in ``click.Context.obj`` from the top-level group to every command."""

    config_path: str | None = None
    token: str | None = None
    pm: Any = None
    _platform: Platform | None = None
    _principal: Principal | None = None

    def platform(self) -> Platform:
        """The platform built from the config (once per invocation)."""
        if self._platform is None:
            from mlrig.platform import Platform

            self._platform = Platform.from_config(self.config_path, plugin_manager=self.pm)
        return self._platform

    def principal(self) -> Principal:
        """Who runs this command: the user of ``--token``/``MLRIG_TOKEN``, else the local
        operator (``cli:<login>``, admin: the embedded CLI has the database anyway)."""
        if self._principal is None:
            from mlrig.security import Principal

            if self.token:
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


def require_writer() -> Principal:
    """The command's principal, who must hold the write permission."""
    from mlrig.security.roles import Permission

    principal = get_principal()
    principal.require(Permission.WRITE)
    return principal


def audit_cli(
    action: str, *, resource_type: str, resource_id: str | None, outcome: str = "success"
) -> None:
    """Record a CLI action in the audit log, as the command's principal."""
    get_platform().audit.record(
        actor=get_principal().name,
        action=action,
        outcome=outcome,
        resource_type=resource_type,
        resource_id=resource_id,
    )
