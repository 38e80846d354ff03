"""The ``mlrig`` command line (click).

Plugin commands (added with the ``mlrig_register_commands`` hook) reach the platform of the
user's ``--config`` and the principal of their ``--token`` through these helpers, never
through ``click.Context.obj``, whose shape is private.
"""

from mlrig.cli.context import current_platform, current_principal, pass_platform, require

__all__ = ["current_platform", "current_principal", "pass_platform", "require"]
