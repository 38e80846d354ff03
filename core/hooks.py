"""The plugin manager and the typed facade through which core calls hooks."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from mlrig import hookspecs
from mlrig.backends import HOOKS_GROUP

if TYPE_CHECKING:
    import click
    from fastapi import FastAPI

    from mlrig.platform import Platform

PROJECT = "mlrig"
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class HookPluginStatus:
    """One entry of the ``mlrig.hooks`` group: where it comes from and whether it loaded."""

    name: str
    value: str
    distribution: str | None
    version: str | None
    error: str | None = None


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering which ``mlrig.hooks`` entry points failed to load."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.statuses: list[HookPluginStatus] = []

    def load_entrypoint_plugins(self) -> None:
        """Register every ``mlrig.hooks`` entry point; a broken one is recorded, not fatal.

        An optional hook plugin that fails must not take the CLI or the other plugins
        down with it: its error shows in ``mlrig plugins list`` and as a warning.
        """
        seen = set()
        for ep in sorted(metadata.entry_points(group=HOOKS_GROUP), key=lambda e: e.name):
            if ep.name in seen or self.get_plugin(ep.name) is not None:
                continue
            seen.add(ep.name)
            dist = getattr(ep, "dist", None)
            error = None
            try:
                self.register(ep.load(), name=ep.name)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.statuses.append(
                HookPluginStatus(
                    name=ep.name,
                    value=ep.value,
                    distribution=None if dist is None else dist.metadata["Name"],
                    version=None if dist is None else dist.version,
                    error=error,
                )
            )
        self.check_pending()

    @property
    def failures(self) -> list[HookPluginStatus]:
        """The hook plugins that failed to load."""
        return [s for s in self.statuses if s.error]


def get_plugin_manager(*, load_entrypoints: bool = True) -> PluginManager:
    """Build a plugin manager: add the specs, register entry points, check them."""
    pm = PluginManager()
    if load_entrypoints:
        pm.load_entrypoint_plugins()
    return pm


class Hooks:
    """Typed facade over the hooks: core calls these methods, never ``pm.hook.x``."""

    def __init__(self, pm: PluginManager, platform: Platform | None = None) -> None:
        self.pm = pm
        self.platform = platform

    def register_commands(self, cli: click.Group) -> None:
        self.pm.hook.mlrig_register_commands(cli=cli)

    def register_routes(self, app: FastAPI) -> None:
        self.pm.hook.mlrig_register_routes(app=app, platform=self.platform)

    def platform_started(self) -> None:
        self.pm.hook.mlrig_platform_started(platform=self.platform)

    def model_version_created(self, version: dict[str, Any]) -> None:
        self.pm.hook.mlrig_model_version_created(platform=self.platform, version=version)

    def model_stage_changed(self, event: dict[str, Any]) -> None:
        self.pm.hook.mlrig_model_stage_changed(platform=self.platform, event=event)

    def experiment_state_changed(self, event: dict[str, Any]) -> None:
        self.pm.hook.mlrig_experiment_state_changed(platform=self.platform, event=event)

    def metrics_logged(self, experiment_id: str, count: int) -> None:
        self.pm.hook.mlrig_metrics_logged(
            platform=self.platform, experiment_id=experiment_id, count=count
        )

    def deployment_changed(self, event: dict[str, Any]) -> None:
        self.pm.hook.mlrig_deployment_changed(platform=self.platform, event=event)

    def predictions_served(self, event: dict[str, Any]) -> None:
        self.pm.hook.mlrig_predictions_served(platform=self.platform, event=event)

    def audit_recorded(self, entry: dict[str, Any]) -> None:
        self.pm.hook.mlrig_audit_recorded(platform=self.platform, entry=entry)
