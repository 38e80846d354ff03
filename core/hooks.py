"""The plugin manager and the typed facade through which core calls hooks.

A hook plugin may declare an ``Options`` pydantic model (a module attribute or a class
attribute of the plugin object): its ``[plugins.NAME]`` config table, ``NAME`` being the
plugin's entry-point name, is validated against it when the platform is assembled, and
the plugin reads the result with ``platform.plugin_options(NAME)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from mlrig import hookspecs
from mlrig.backends import HOOKS_GROUP, entry_points
from mlrig.errors import ConfigError, PluginError

if TYPE_CHECKING:
    import click
    from fastapi import FastAPI
    from pydantic import BaseModel

    from mlrig.config import Settings
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
        for ep, status in _hook_entry_points():
            if self.get_plugin(ep.name) is not None:
                continue
            error = None
            try:
                self.register(ep.load(), name=ep.name)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.statuses.append(replace(status, error=error))
        self.check_pending()

    @property
    def failures(self) -> list[HookPluginStatus]:
        """The hook plugins that failed to load."""
        return [s for s in self.statuses if s.error]

    def named_plugins(self) -> list[str]:
        """The names of the registered plugins that have one (pluggy names anonymous
        objects by their ``id``)."""
        return sorted(n for n, _ in self.list_name_plugin() if n and not n.isdigit())

    def options_model(self, name: str) -> type[BaseModel] | None:
        """The ``Options`` model hook plugin ``name`` declares, or ``None``.

        :raises PluginError: the plugin is not registered, or its ``Options`` is not a
            pydantic model.
        """
        from pydantic import BaseModel

        plugin = self.get_plugin(name)
        if plugin is None:
            msg = (
                f"no hook plugin named {name!r} is loaded; "
                f"loaded: {', '.join(self.named_plugins()) or 'none'}"
            )
            raise PluginError(msg)
        model = getattr(plugin, "Options", None)
        if model is None:
            return None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            msg = f"hook plugin {name!r}: Options must be a pydantic model class, not {model!r}"
            raise PluginError(msg)
        return model

    def plugin_options(self, name: str, settings: Settings) -> BaseModel:
        """Hook plugin ``name``'s ``[plugins.NAME]`` table, validated by its ``Options``.

        :raises ConfigError: naming the bad key (``plugins.NAME.KEY: ...``).
        :raises PluginError: the plugin is not loaded or declares no options.
        """
        from mlrig.config import validate_options

        model = self.options_model(name)
        if model is None:
            msg = f"hook plugin {name!r} declares no Options model"
            raise PluginError(msg)
        return validate_options(
            model,
            settings.plugins.options(name),
            where=f"plugins.{name}",
            base_dir=settings.base_dir,
            source=settings.source,
        )

    def validate_plugin_options(self, settings: Settings) -> dict[str, BaseModel]:
        """Validate every ``[plugins.NAME]`` table, and the defaults of every loaded plugin
        with an ``Options`` model, at start: a typo stops with the key's name.

        A table for a plugin that failed to load is left alone: its failure is a warning
        already (see :meth:`load_entrypoint_plugins`).
        """
        at = f" in {settings.source}" if settings.source else ""
        failed = {s.name for s in self.failures}
        # an environment variable spells plugin `my-plugin` as MY_PLUGIN
        underscored = {n.replace("-", "_"): n for n in self.named_plugins()}
        for table in settings.plugins.names():
            name = table if self.get_plugin(table) is not None else underscored.get(table, table)
            if name in failed:
                continue
            if self.get_plugin(name) is None:
                msg = (
                    f"config error{at}: plugins.{name}: no hook plugin named {name!r} is "
                    f"installed; installed: {', '.join(self.named_plugins()) or 'none'}"
                )
                raise ConfigError(msg)
            if self.options_model(name) is None:
                msg = f"config error{at}: plugins.{name}: hook plugin {name!r} takes no options"
                raise ConfigError(msg)
        return {
            name: self.plugin_options(name, settings)
            for name in self.named_plugins()
            if self.options_model(name) is not None
        }


def _hook_entry_points() -> Iterator[tuple[metadata.EntryPoint, HookPluginStatus]]:
    seen = set()
    for ep in sorted(entry_points(HOOKS_GROUP), key=lambda e: e.name):
        if ep.name in seen:  # the same distribution seen twice on sys.path
            continue
        seen.add(ep.name)
        dist = getattr(ep, "dist", None)
        yield (
            ep,
            HookPluginStatus(
                name=ep.name,
                value=ep.value,
                distribution=None if dist is None else dist.metadata["Name"],
                version=None if dist is None else dist.version,
            ),
        )


def installed_hook_plugins() -> list[HookPluginStatus]:
    """The ``mlrig.hooks`` entry points, from metadata alone: nothing is imported, so
    ``error`` is always ``None`` (load them with :func:`get_plugin_manager` to know)."""
    return [status for _ep, status in _hook_entry_points()]


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
