"""The core object: a :class:`Platform` assembled from the config.

The REST API and the CLI are thin layers over it. Every part is built lazily on first use
(the database engine, the artifact store, the executor) so a command that needs one part
does not pay for the others.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import TYPE_CHECKING, Any

from mlrig.backends import load_backend
from mlrig.config import Settings, load_settings
from mlrig.errors import ConfigError
from mlrig.hooks import Hooks, PluginManager, get_plugin_manager

if TYPE_CHECKING:
    from pydantic import BaseModel

    from mlrig.artifacts import ArtifactStore
    from mlrig.contracts import Executor, StorageBackend
    from mlrig.contracts.online_store import OnlineStore
    from mlrig.datasets.access import DatasetAccess
    from mlrig.db import Database
    from mlrig.engine.queue import JobQueue
    from mlrig.experiments import ExperimentService
    from mlrig.features.service import FeatureService
    from mlrig.registry import ModelRegistry
    from mlrig.registry.evaluation import Evaluator
    from mlrig.registry.lifecycle import ModelLifecycle
    from mlrig.security import AuditTrail, SecurityService
    from mlrig.serving.service import DeploymentService
    from mlrig.sweeps.service import SweepService


class Platform:
    """The assembled platform: settings, plugin manager, backends and services."""

    def __init__(self, settings: Settings, *, plugin_manager: PluginManager | None = None) -> None:
        self.settings = settings
        self.pm = plugin_manager if plugin_manager is not None else get_plugin_manager()
        # [plugins.NAME] tables are validated now, so a typo stops at start, naming the key
        self._plugin_options = self.pm.validate_plugin_options(settings)
        self.hooks = Hooks(self.pm, self)

    def plugin_options(self, name: str) -> BaseModel:
        """Hook plugin ``name``'s ``[plugins.NAME]`` options, validated by its ``Options``
        model (defaults where the config has no table).

        :raises PluginError: no plugin of that name is loaded, or it declares no options.
        """
        if name not in self._plugin_options:  # registered after the platform was built
            self._plugin_options[name] = self.pm.plugin_options(name, self.settings)
        return self._plugin_options[name]

    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike[str] | None = None,
        *,
        overrides: dict[str, Any] | None = None,
        plugin_manager: PluginManager | None = None,
    ) -> Platform:
        """Read the config (see :func:`mlrig.config.load_settings`) and assemble a platform.

        :param config: an explicit config file; else the documented lookup order applies.
        :param overrides: section -> values merged over the file (``{"database": {"url": ...}}``).
        :param plugin_manager: reuse a manager (the CLI builds one to add its commands).
        """
        settings = load_settings(config, overrides=overrides)
        platform = cls(settings, plugin_manager=plugin_manager)
        platform.hooks.platform_started()
        return platform

    # --- backends ---------------------------------------------------------------------

    @cached_property
    def storage_backend(self) -> StorageBackend:
        """The configured storage backend (bytes only; use :attr:`artifacts` to store)."""
        section = self.settings.storage
        cls = load_backend("storage", section.backend)
        return cls.from_options(
            section.backend_options(),
            where=f"storage.{section.backend}",
            base_dir=self.settings.base_dir,
        )

    @cached_property
    def artifacts(self) -> ArtifactStore:
        """The artifact store: hashing, compression and encryption over the backend."""
        from mlrig.artifacts import ArtifactStore

        return ArtifactStore.from_settings(self.storage_backend, self.settings.storage)

    @cached_property
    def executor(self) -> Executor:
        """The configured job executor."""
        section = self.settings.executor
        cls = load_backend("executors", section.backend)
        return cls.from_options(
            section.backend_options(),
            where=f"executor.{section.backend}",
            base_dir=self.settings.base_dir,
        )

    @cached_property
    def online_store(self) -> OnlineStore:
        """The configured online feature store (``[features] backend``)."""
        section = self.settings.features
        cls = load_backend("online_stores", section.backend)
        store = cls.from_options(
            section.backend_options(),
            where=f"features.{section.backend}",
            base_dir=self.settings.base_dir,
        )
        bind = getattr(store, "bind", None)
        if bind is not None:  # a store on the platform database (``sql``) needs it
            bind(self)
        return store

    @cached_property
    def db(self) -> Database:
        """The database; the embedded SQLite one upgrades its schema on first use."""
        from mlrig.db import Database

        return Database.from_settings(self.settings)

    # --- services ---------------------------------------------------------------------

    @cached_property
    def security(self) -> SecurityService:
        """Users, tokens and authentication."""
        from mlrig.security import SecurityService

        return SecurityService(self.db)

    @cached_property
    def audit(self) -> AuditTrail:
        """The audit log."""
        from mlrig.security import AuditTrail

        return AuditTrail(self.db, self.hooks)

    @cached_property
    def registry(self) -> ModelRegistry:
        """Registered models, versions, artifacts and search."""
        from mlrig.registry import ModelRegistry

        return ModelRegistry(
            self.db,
            self.__dict__.get("artifacts") or _LazyArtifacts(self),  # type: ignore[arg-type]
            self.hooks,
            retention_days=self.settings.registry.delete_retention_days,
        )

    @cached_property
    def lifecycle(self) -> ModelLifecycle:
        """Aliases, stages and approvals of model versions."""
        from mlrig.registry.lifecycle import ModelLifecycle

        return ModelLifecycle(self.registry, self.settings.registry, self.hooks)

    @cached_property
    def evaluator(self) -> Evaluator:
        """Benchmarks and comparisons of model versions."""
        from mlrig.registry.evaluation import Evaluator

        return Evaluator(self.registry, self.datasets)

    @cached_property
    def datasets(self) -> DatasetAccess:
        """Where datasets a user names may be read from (``[datasets]``)."""
        from mlrig.datasets.access import DatasetAccess

        return DatasetAccess.from_settings(self.settings, self.artifacts)

    @cached_property
    def queue(self) -> JobQueue:
        """The training job queue."""
        from mlrig.engine.queue import JobQueue

        return JobQueue(self.db, self.hooks)

    @cached_property
    def experiments(self) -> ExperimentService:
        """Training experiments: create, start, stop, rerun, compare; metrics and logs."""
        from mlrig.experiments import ExperimentService

        artifacts = self.__dict__.get("artifacts") or _LazyArtifacts(self)
        return ExperimentService(
            self.db,
            self.queue,
            artifacts,  # type: ignore[arg-type]
            self.hooks,
            settings=self.settings,
        )

    @cached_property
    def sweeps(self) -> SweepService:
        """Hyperparameter sweeps: trials on the job queue, driven by a search strategy."""
        from mlrig.sweeps.service import SweepService

        return SweepService(self)

    @cached_property
    def features(self) -> FeatureService:
        """The feature store: entities, views, training sets, materialisation, online reads."""
        from mlrig.features.service import FeatureService

        return FeatureService(self)

    @cached_property
    def deployments(self) -> DeploymentService:
        """Model deployments: the serving control plane (``mlrig.serving.service``)."""
        from mlrig.serving.service import DeploymentService

        return DeploymentService(
            self.db,
            self.registry,
            self.hooks,
            self.audit,
            self.settings,
            features=lambda: self.features,
        )

    # --- serving --------------------------------------------------------------------

    def prepare_server(self, *, host: str, echo: Any = print) -> None:
        """Checks before serving: the schema is current and auth is safe for ``host``.

        Refuses ``[auth] enabled = false`` on anything but a loopback bind, so a laptop
        setting cannot leak onto a network. On an empty user table, creates the ``admin``
        user and prints its token once.
        """
        self.db.check()
        if not self.settings.auth.enabled:
            if not is_loopback(host):
                msg = (
                    f"[auth] enabled = false is only honoured on a loopback bind, not {host!r}; "
                    "bind to 127.0.0.1 or enable auth"
                )
                raise ConfigError(msg)
            echo("warning: auth is disabled ([auth] enabled = false); loopback only")
            return
        created = self.security.bootstrap_admin()
        if created is not None:
            self.audit.record(
                actor="system",
                action="bootstrap_admin",
                outcome="success",
                resource_type="users",
                resource_id="admin",
            )
            echo("first start: created user 'admin'. Its token, shown only this once:")
            echo(f"  {created['token']}")
            echo("use it as 'Authorization: Bearer <token>' or MLRIG_TOKEN for the CLI")

    # --- status -----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The status of the database, the storage and the plugins."""
        checks: dict[str, Any] = {}
        checks["database"] = _check(lambda: self.db.check())
        checks["storage"] = _check(lambda: self.storage_backend.check())
        checks["storage"]["backend"] = self.settings.storage.backend
        failures = [{"name": s.name, "error": s.error} for s in self.pm.failures]
        checks["plugins"] = {
            "status": "degraded" if failures else "ok",
            "loaded": sorted(n for n, _ in self.pm.list_name_plugin() if n),
            "failed": failures,
        }
        down = any(checks[k]["status"] == "error" for k in ("database", "storage"))
        return {"status": "error" if down else "ok", "checks": checks}

    def close(self) -> None:
        """Release pooled connections and other resources."""
        if "online_store" in self.__dict__:
            self.online_store.close()
        if "executor" in self.__dict__:
            self.executor.close()  # its warm interpreter (the local executor's fork server)
        if "db" in self.__dict__:
            self.db.dispose()


def _check(probe: Any) -> dict[str, Any]:
    try:
        details = probe() or {}
    except Exception as exc:
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    return {"status": "ok", **details}


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds to the loopback interface only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _LazyArtifacts:
    """:attr:`Platform.artifacts`, built on first use: reading the registry (``mlrig
    models list``) needs no storage, and loading the storage backend's plugin and the
    store's modules costs a short command tens of milliseconds."""

    __slots__ = ("_platform",)

    def __init__(self, platform: Platform) -> None:
        self._platform = platform

    def __getattr__(self, name: str) -> Any:
        return getattr(self._platform.artifacts, name)

    def __repr__(self) -> str:
        return f"<lazy {self._platform.__dict__.get('artifacts', 'artifact store')!r}>"
