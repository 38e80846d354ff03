"""The configuration: one pydantic-settings model read from ``mlrig.toml`` and ``MLRIG_*``.

Lookup order of the file: ``--config``, ``$MLRIG_CONFIG``, ``./mlrig.toml``, then the
user config dir (``platformdirs.user_config_dir("mlrig")/mlrig.toml``); with none found
the embedded defaults apply (SQLite and artifacts under ``./.mlrig/``). Any key can be
overridden from the environment as ``MLRIG_<SECTION>__<KEY>``, e.g.
``MLRIG_DATABASE__URL`` or ``MLRIG_STORAGE__BACKEND``. Validation errors become one
line naming the key, what was found and what is allowed.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mlrig.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILENAME = "mlrig.toml"
CONFIG_ENV = "MLRIG_CONFIG"
#: the effective settings handed from a worker to its job processes (see Settings.to_json)
INHERITED_ENV = "MLRIG_SETTINGS_JSON"
DEFAULT_HOME = ".mlrig"
#: the validation-context key :data:`ConfigPath` reads the config file's folder from
CONFIG_DIR_CONTEXT = "mlrig_config_dir"


def _resolve_config_path(value: Path, info: ValidationInfo) -> Path:
    path = value.expanduser()
    base = (info.context or {}).get(CONFIG_DIR_CONTEXT)
    if base is None or path.is_absolute():
        return path
    return Path(base) / path


#: A path option: a relative value is resolved against the folder of the config file (the
#: working directory when there is none), so the server, the workers and every job process,
#: each in its own working directory, mean the same file. Use it in a backend's or a hook
#: plugin's ``Options`` model: ``path: ConfigPath = Path("events.jsonl")``; defaults are
#: resolved too. Resolution happens in :func:`validate_options`.
ConfigPath = Annotated[Path, AfterValidator(_resolve_config_path)]


class Section(BaseModel):
    """A config table: unknown keys are errors, values are validated strictly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackendSection(Section):
    """A section that names a backend of ``_kind`` and holds per-backend option tables.

    ``[storage] backend = "s3"`` picks the backend; ``[storage.s3]`` holds its options,
    validated by the backend's own options model when it loads. Any other unknown key
    is a typo and fails at start.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    _kind: str = ""
    _section: str = ""
    backend: str = "local"

    @model_validator(mode="after")
    def _only_backend_tables(self) -> BackendSection:
        from mlrig.backends import backend_names

        installed = backend_names(self._kind)
        for key, value in (self.model_extra or {}).items():
            if not isinstance(value, dict):
                allowed = sorted(
                    set(type(self).model_fields) | {f"[{self._section}.{n}]" for n in installed}
                )
                msg = f"unknown key (found {value!r}); allowed: {', '.join(allowed)}"
                raise _KeyError(key, msg)
            if key not in installed:
                msg = (
                    f"no {self._kind} backend named {key!r} is installed; "
                    f"installed: {', '.join(installed) or 'none'}"
                )
                raise _KeyError(key, msg)
        if self.backend not in installed:
            msg = (
                f"unknown {self._kind} backend {self.backend!r}; "
                f"installed: {', '.join(installed) or 'none'}"
            )
            raise _KeyError("backend", msg)
        return self

    def backend_options(self, name: str | None = None) -> dict[str, Any]:
        """The raw option table of backend ``name`` (default: the selected one)."""
        return dict((self.model_extra or {}).get(name or self.backend, {}))


class _KeyError(ValueError):
    """Carries the offending sub-key out of a model validator."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class DatabaseSection(Section):
    url: str = f"sqlite:///{DEFAULT_HOME}/mlrig.db"
    pool_size: int = Field(default=10, ge=1)
    max_overflow: int = Field(default=20, ge=0)
    echo: bool = False


class StorageSection(BackendSection):
    _kind = "storage"
    _section = "storage"
    compression: Literal["none", "zstd"] = "none"
    compression_level: int = Field(default=3, ge=1, le=22)
    encryption: bool = False
    master_key: SecretStr | None = None
    #: keys artifacts may still be encrypted with: readable, and re-encrypted with
    #: master_key by `mlrig storage rotate-key`
    previous_master_keys: list[SecretStr] = Field(default_factory=list)
    chunk_size: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)


class ExecutorSection(BackendSection):
    _kind = "executors"
    _section = "executor"
    max_cpus: int | None = Field(default=None, ge=1)
    max_gpus: int | None = Field(default=None, ge=0)
    max_memory_mb: int | None = Field(default=None, ge=1)


class ServerSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    embedded_workers: int = Field(default=1, ge=0)


class AuthSection(Section):
    enabled: bool = True
    token_ttl_days: int | None = Field(default=None, ge=1)


_MIB = 1024 * 1024


class ApiSection(Section):
    """Limits of the REST API. Sizes are bytes or strings such as ``"16MiB"``."""

    #: the largest request body of an ordinary (JSON) route
    max_body_bytes: Annotated[ByteSize, Field(ge=1024)] = ByteSize(1 * _MIB)
    #: the largest body of a metric ingest request (``POST /experiments/{id}/metrics``)
    max_metrics_body_bytes: Annotated[ByteSize, Field(ge=1024)] = ByteSize(16 * _MIB)
    #: the largest artifact upload (``POST /models/{id}/versions``, all files together)
    max_upload_bytes: Annotated[ByteSize, Field(ge=1024)] = ByteSize(5 * 1024 * _MIB)


class RegistrySection(Section):
    #: stages a version can only reach through an approved request
    approval_required_for: list[Literal["staging", "production", "archived"]] = ["production"]
    #: the approver must be another user than the requester
    approver_must_differ: bool = True
    #: moving a version to production archives the model's previous production versions
    archive_previous_production: bool = True
    #: deleted models and versions stay restorable; `mlrig models purge` removes for good
    #: only those deleted more than this many days ago
    delete_retention_days: int = Field(default=30, ge=0, le=36_500)


class DatasetsSection(Section):
    """Where the server may read datasets a user names (``dataset_uri`` of an evaluation,
    an experiment's ``--data``). The artifact store (``artifact://KEY``) and the bundled
    datasets are always allowed; anything else must be listed here."""

    #: folders whose files may be read (relative ones start at the config file's folder)
    allowed_roots: list[str] = Field(default_factory=list)
    #: object-store schemes read through fsspec with the server's credentials
    allowed_schemes: list[Literal["s3", "s3a", "gs", "gcs", "az", "abfs"]] = Field(
        default_factory=list
    )
    #: the largest dataset read (bytes, or a string such as "512MiB"); larger: 413
    max_bytes: Annotated[ByteSize, Field(ge=1024)] = ByteSize(256 * _MIB)


class ServingSection(Section):
    """The data plane: ``mlrig serve`` and the predict routes ``mlrig server`` embeds."""

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    #: replica processes of ``mlrig serve`` (each hosts every active deployment); None:
    #: one per CPU core
    replicas: int | None = Field(default=None, ge=1, le=256)
    #: how replicas share the port: ``reuseport`` (SO_REUSEPORT, the kernel spreads
    #: connections) or ``front`` (one front process forwards to the replicas)
    balancing: Literal["reuseport", "front"] = "reuseport"
    #: how often a replica re-reads the active deployments (seconds); between reads no
    #: request touches the database
    refresh_seconds: float = Field(default=2.0, gt=0, le=3600)
    #: a token stays trusted this long after it was checked against the database, so a
    #: revocation takes effect within it (seconds)
    token_cache_seconds: float = Field(default=5.0, ge=0, le=3600)
    #: micro-batching defaults, for deployments that set none
    max_batch_size: int = Field(default=32, ge=1, le=100_000)
    max_latency_ms: float = Field(default=2.0, ge=0, le=10_000)
    #: requests waiting for a replica's model beyond this get 429 with Retry-After at once
    max_queue: int = Field(default=256, ge=1, le=1_000_000)
    #: the largest predict request body (bytes or a string such as "8MiB"); larger: 413
    max_body_bytes: Annotated[ByteSize, Field(ge=1024)] = ByteSize(8 * _MIB)
    #: the share of requests written to ``inference_requests`` (0 to 1)
    log_sample_rate: float = Field(default=1.0, ge=0, le=1)
    #: inference records held in memory before new ones are dropped (and counted)
    log_buffer: int = Field(default=10_000, ge=1, le=10_000_000)
    #: how often the inference records are written (seconds)
    log_flush_seconds: float = Field(default=1.0, gt=0, le=3600)
    #: where models are downloaded for serving (relative: under the config's folder)
    cache_dir: str = ".mlrig/serving-cache"
    #: autoscaling: scale up when in-flight requests per replica stay above this
    target_in_flight: float = Field(default=8.0, gt=0)
    #: ... or when p99 latency over the window stays above this (ms)
    target_p99_ms: float = Field(default=100.0, gt=0)
    #: the window a scale-up signal must hold (seconds), and the quiet time before a
    #: scale-down (seconds)
    scale_up_window_seconds: float = Field(default=10.0, gt=0)
    scale_down_cooldown_seconds: float = Field(default=60.0, gt=0)


class TrackingSection(Section):
    """Runs tracked from user code (``mlrig.start_run``): the server's heartbeat timeout and
    the client's metric buffer."""

    #: a running tracked run whose script sent no heartbeat for this long is marked
    #: failed (the script was killed); the server checks every few seconds
    heartbeat_timeout_seconds: float = Field(default=300.0, gt=0, le=7 * 86400)
    #: how often a tracked run's client sends a heartbeat
    heartbeat_interval_seconds: float = Field(default=30.0, gt=0, le=86400)
    #: the client flushes buffered metric points when this many are waiting...
    flush_points: int = Field(default=10_000, ge=1, le=10_000_000)
    #: ...or when the oldest has waited this long
    flush_seconds: float = Field(default=2.0, gt=0, le=3600)
    #: points kept in memory at most; beyond it (a server down) they go to the spill file
    max_buffered_points: int = Field(default=1_000_000, ge=1000, le=100_000_000)
    #: where the client spills points it could not send yet (default: the user cache dir)
    spill_dir: ConfigPath | None = None


class SearchSection(BackendSection):
    """Hyperparameter sweeps: the default search strategy (``[search] backend``, a
    sweep may name another) with its ``[search.NAME]`` option tables, and the limits."""

    _kind = "search"
    _section = "search"
    backend: str = "nevergrad"
    #: the most trials one sweep may ask for
    max_trials: int = Field(default=10_000, ge=1, le=1_000_000)
    #: a grid search larger than this is refused (with its count) before it starts
    max_grid_points: int = Field(default=100_000, ge=1, le=100_000_000)
    #: how often a server or worker advances the sweeps it drives (seconds)
    driver_interval_seconds: float = Field(default=0.5, gt=0, le=60)


class FeaturesSection(BackendSection):
    """The feature store: the online store (``[features] backend``, options in
    ``[features.NAME]``) and how PII is shown to readers without the permission."""

    _kind = "online_stores"
    _section = "features"
    backend: str = "sql"
    #: what a reader without ``features:read_pii`` gets for a ``pii``-tagged feature
    pii_mask: Literal["hash", "null"] = "hash"
    #: the most entity keys one online read may ask for
    max_entities_per_request: int = Field(default=10_000, ge=1, le=1_000_000)
    #: the most rows a SQL source's query may return (fetched in chunks; more is refused)
    max_sql_source_rows: int = Field(default=1_000_000, ge=1, le=100_000_000)
    #: seconds a SQL source's query may run (PostgreSQL statement_timeout; SQLite: a deadline)
    sql_source_timeout_seconds: float = Field(default=300.0, gt=0, le=86_400)


class PluginsSection(Section):
    """``[plugins.NAME]`` tables, one per hook plugin, each validated by that plugin's
    ``Options`` model when the platform is assembled (see :mod:`mlrig.hooks`)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    @model_validator(mode="after")
    def _only_tables(self) -> PluginsSection:
        for key, value in (self.model_extra or {}).items():
            if not isinstance(value, dict):
                msg = f"expected the table [plugins.{key}] of a hook plugin (found {value!r})"
                raise _KeyError(key, msg)
        return self

    def options(self, name: str) -> dict[str, Any]:
        """The raw ``[plugins.NAME]`` table (empty if the file has none).

        Environment variables cannot hold ``-``: ``MLRIG_PLUGINS__MY_PLUGIN__KEY`` sets
        ``KEY`` of plugin ``my-plugin``, over the file's ``[plugins.my-plugin]``.
        """
        tables = self.model_extra or {}
        return {**tables.get(name, {}), **tables.get(name.replace("-", "_"), {})}

    def names(self) -> list[str]:
        """The plugins the config has a table for."""
        return sorted(self.model_extra or {})


class Settings(BaseSettings):
    """The whole effective configuration."""

    model_config = SettingsConfigDict(
        env_prefix="MLRIG_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    database: DatabaseSection = Field(default_factory=DatabaseSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    executor: ExecutorSection = Field(default_factory=ExecutorSection)
    server: ServerSection = Field(default_factory=ServerSection)
    auth: AuthSection = Field(default_factory=AuthSection)
    api: ApiSection = Field(default_factory=ApiSection)
    registry: RegistrySection = Field(default_factory=RegistrySection)
    datasets: DatasetsSection = Field(default_factory=DatasetsSection)
    serving: ServingSection = Field(default_factory=ServingSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    search: SearchSection = Field(default_factory=SearchSection)
    features: FeaturesSection = Field(default_factory=FeaturesSection)
    plugins: PluginsSection = Field(default_factory=PluginsSection)

    #: the file the settings were read from, if any (not a config key)
    _source: Path | None = None
    _base_dir: Path = Path()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment overrides them.
        return (env_settings, init_settings)

    @property
    def source(self) -> Path | None:
        """The config file these settings came from, or ``None`` for the defaults."""
        return self._source

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the config are resolved against."""
        return self._base_dir

    def resolve_path(self, value: str | os.PathLike[str]) -> Path:
        """``value`` as an absolute path, relative ones taken from :attr:`base_dir`."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self._base_dir / path)

    @property
    def database_url(self) -> str:
        """The database URL with a relative SQLite path resolved against :attr:`base_dir`."""
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(self.resolve_path(url[len(prefix) :]))
        return url

    def to_json(self) -> str:
        """The effective settings, secrets included, for a child process of this one.

        Workers pass this to their jobs (``MLRIG_SETTINGS_JSON``) so that a job sees exactly
        the worker's configuration, overrides and resolved paths included.
        """
        import json

        data = self.model_dump(mode="json")
        if self.storage.master_key is not None:
            data["storage"]["master_key"] = self.storage.master_key.get_secret_value()
        data["storage"]["previous_master_keys"] = [
            key.get_secret_value() for key in self.storage.previous_master_keys
        ]
        return json.dumps(
            {
                "settings": data,
                "source": str(self._source) if self._source else None,
                "base_dir": str(self._base_dir),
            }
        )

    def redacted(self, *, secret_options: dict[str, set[str]] | None = None) -> dict[str, Any]:
        """The effective settings as plain data, with every secret hidden.

        :param secret_options: ``[plugins.NAME]`` -> keys its options model declares as
            secrets (``SecretStr``), hidden whatever their name.
        """
        data = self.model_dump(mode="json")
        data["database"]["url"] = redact_url(self.database.url)
        if self.storage.master_key is not None:
            data["storage"]["master_key"] = "********"
        data["storage"]["previous_master_keys"] = ["********"] * len(
            self.storage.previous_master_keys
        )
        for section in ("storage", "executor", "search", "features", "plugins"):
            for key, table in data[section].items():
                if isinstance(table, dict):
                    extra = (secret_options or {}).get(key, set()) if section == "plugins" else ()
                    data[section][key] = _redact_table(table, extra)
        return data


_SECRET_KEY = re.compile(r"(secret|password|token|key)", re.I)


def _redact_table(table: dict[str, Any], secrets: Any = ()) -> dict[str, Any]:
    def hidden(key: str, value: Any) -> Any:
        if (_SECRET_KEY.search(key) or key in secrets) and value:
            return "********"
        if isinstance(value, str) and "://" in value:  # a backend URL may hold a password
            return redact_url(value)
        return value

    return {k: hidden(k, v) for k, v in table.items()}


def redact_url(url: str) -> str:
    """Hide the password of ``scheme://user:password@host`` URLs."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1********@", url)


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read, following the documented lookup order."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            msg = (
                f"config file {str(path)!r} (from --config) does not exist; "
                "create it with: mlrig init"
            )
            raise ConfigError(msg)
        return path
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            msg = f"config file {from_env!r} (from ${CONFIG_ENV}) does not exist"
            raise ConfigError(msg)
        return path
    local = Path(CONFIG_FILENAME)
    if local.is_file():
        return local
    user = user_config_path()
    return user if user.is_file() else None


def user_config_path() -> Path:
    """``mlrig.toml`` in the user config dir (``~/.config/mlrig`` on Linux)."""
    from platformdirs import user_config_dir

    return Path(user_config_dir("mlrig")) / CONFIG_FILENAME


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        msg = f"config file {str(path)!r} is not valid TOML: {exc}"
        raise ConfigError(msg) from None
    except OSError as exc:
        msg = f"cannot read config file {str(path)!r}: {exc.strerror}"
        raise ConfigError(msg) from None


def _one_line(
    exc: PydanticValidationError,
    source: Path | None,
    *,
    where: tuple[str, ...] = (),
    model: type[BaseModel] | None = None,
) -> str:
    """The first error of ``exc`` as one line naming the key: ``where`` is the dotted
    location of ``model`` in the config (``("plugins", "example")``)."""
    first = exc.errors()[0]
    inner = [str(p) for p in first["loc"]]
    loc = [*where, *inner]
    found = first.get("input")
    ctx_error = (first.get("ctx") or {}).get("error")
    at = f" in {source}" if source else ""
    if isinstance(ctx_error, _KeyError):
        key = ".".join([*loc, ctx_error.key])
        return f"config error{at}: {key}: {ctx_error.message}"
    key = ".".join(loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        allowed = _allowed(inner, model or Settings)
        return f"config error{at}: {key}: unknown key (found {found!r}); {allowed}"
    return f"config error{at}: {key}: {first['msg'].lower()} (found {found!r})"


def _allowed(loc: list[str], model: Any) -> str:
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type):
            return ""
        model = field.annotation
    return "allowed: " + (", ".join(model.model_fields) or "no keys")


def _with_defaults(model: type[BaseModel], raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the defaults it lacks filled in, nested models included, so that
    defaults go through validation too (a default :data:`ConfigPath` is resolved)."""
    data = dict(raw)
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in data:
            if field.is_required() or field.default_factory_takes_validated_data:
                continue
            data[key] = field.get_default(call_default_factory=True)
        sub, value = field.annotation, data[key]
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            if isinstance(value, BaseModel):  # an instance would not be validated again
                value = value.model_dump(by_alias=True, exclude_unset=True)
            if isinstance(value, dict):
                data[key] = _with_defaults(sub, value)
    return data


def secret_option_keys(model: type[BaseModel]) -> set[str]:
    """The keys of an options model typed ``SecretStr``/``SecretBytes`` (or optional)."""
    from typing import get_args

    from pydantic import SecretBytes

    secret = (SecretStr, SecretBytes)
    return {
        field.alias or name
        for name, field in model.model_fields.items()
        if field.annotation in secret or any(a in secret for a in get_args(field.annotation))
    }


def validate_options(
    model: type[BaseModel],
    raw: dict[str, Any],
    *,
    where: str,
    base_dir: Path | None = None,
    source: Path | None = None,
) -> Any:
    """Validate a backend's or hook plugin's option table against its ``Options`` model.

    :data:`ConfigPath` fields, defaults included, are resolved against ``base_dir`` (the
    config file's folder).

    :param where: the table's dotted place in the config (``storage.s3``, ``plugins.x``),
        named in errors.
    :raises ConfigError: one line naming the key, what was found and what is allowed.
    """
    context = {CONFIG_DIR_CONTEXT: base_dir} if base_dir is not None else None
    try:
        return model.model_validate(_with_defaults(model, raw), context=context)
    except PydanticValidationError as exc:
        raise ConfigError(
            _one_line(exc, source, where=tuple(where.split(".")), model=model)
        ) from None


def load_settings(
    config: str | os.PathLike[str] | None = None, *, overrides: dict[str, Any] | None = None
) -> Settings:
    """Find, read and validate the configuration.

    :param config: an explicit config file (the CLI's ``--config``).
    :param overrides: extra values merged over the file's (tests, ``Platform.from_config``).
    :raises ConfigError: with one line naming the bad key.
    """
    inherited = os.environ.get(INHERITED_ENV)
    if inherited and config is None and not overrides:
        return _from_json(inherited)
    path = find_config_file(config)
    data = _read_toml(path) if path else {}
    for section, values in (overrides or {}).items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    try:
        settings = Settings(**data)
    except PydanticValidationError as exc:
        raise ConfigError(_one_line(exc, path)) from None
    settings._source = path.resolve() if path else None
    settings._base_dir = path.resolve().parent if path else Path.cwd()
    return settings


def _from_json(text: str) -> Settings:
    """Settings handed down by a parent process (:meth:`Settings.to_json`)."""
    import json

    payload = json.loads(text)
    settings = Settings(**payload["settings"])
    settings._source = Path(payload["source"]) if payload["source"] else None
    settings._base_dir = Path(payload["base_dir"])
    return settings
