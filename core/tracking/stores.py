"""Where a tracked run goes: the local platform (embedded) or an mlrig server (remote).

Both stores have one interface (:class:`TrackingStore`) and write the same records: the
embedded one calls the experiment service of a :class:`~mlrig.platform.Platform` built
from the local config, the remote one the server's REST routes through
:class:`~mlrig.client.Client`. :func:`open_store` picks: remote when
``mlrig.set_tracking(url, token)`` was called or ``MLRIG_URL`` is set, else embedded.
"""

from __future__ import annotations

import abc
import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlrig.tracking.buffer import SEND_TIMEOUT, OutcomeUnknownError, UnreachableError

if TYPE_CHECKING:
    from mlrig.client import Client
    from mlrig.platform import Platform
    from mlrig.security import Principal

__all__ = ["EmbeddedStore", "RemoteStore", "TrackingStore", "open_store", "remote_target"]

View = dict[str, Any]
Row = tuple[Any, ...]


class TrackingStore(abc.ABC):
    """What a :class:`~mlrig.tracking.run.Run` needs from the place it is recorded in.

    Runs are named by id (a UUID string). Every method raises the
    :class:`~mlrig.errors.MlrigError` subclass the service or the server raised.
    """

    #: the database or server, as text (shown in messages; names spill files' target)
    target: str

    @abc.abstractmethod
    def start_run(self, **fields: Any) -> View:
        """Start a run (``name``, ``group``, ``parent``, ``params``, ``tags``,
        ``description``, ``reproducibility``); its view."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> View:
        """A run's view (params, tags, status, latest metrics...)."""

    @abc.abstractmethod
    def resume_run(self, run_id: str) -> View:
        """Put an ended run back to running."""

    @abc.abstractmethod
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Add params (a key again with another value is a ConflictError)."""

    @abc.abstractmethod
    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Set tags (merged)."""

    @abc.abstractmethod
    def heartbeat(self, run_id: str) -> None:
        """Tell the server the script is alive."""

    @abc.abstractmethod
    def end_run(self, run_id: str, *, status: str, error: str | None) -> View:
        """End the run ``completed``, ``failed`` or ``killed``."""

    @abc.abstractmethod
    def log_dataset(self, run_id: str, dataset: dict[str, Any]) -> None:
        """Record a dataset the run used."""

    @abc.abstractmethod
    def put_artifact(self, run_id: str, path: str, file: Path) -> View:
        """Store a local file as the run's artifact ``path``."""

    @abc.abstractmethod
    def log_model(self, run_id: str, model: Any, *, name: str, **version: Any) -> View:
        """Register ``model`` as a new version of ``name`` with lineage to the run."""

    @abc.abstractmethod
    def send_points(self, run_id: str, rows: Sequence[Row]) -> int:
        """Write metric rows (see :class:`mlrig.tracking.buffer.PointSink`)."""

    @abc.abstractmethod
    def count_points(self, run_id: str) -> int:
        """How many metric points the run has."""

    def close(self) -> None:  # noqa: B027 (optional)
        """Release connections."""


def _from_text(value: Any) -> float:
    return float(value) if isinstance(value, str) else value


def _floats(rows: Sequence[Row]) -> list[Row]:
    """Rows with ``"NaN"``/``"Infinity"``/``"-Infinity"`` values as floats again."""
    return [(n, _from_text(v), s, e, k, t) for n, v, s, e, k, t in rows]


# --- embedded -----------------------------------------------------------------------------


class EmbeddedStore(TrackingStore):
    """Runs recorded straight into the database of the local config.

    :param platform: the platform to use (default: ``Platform.from_config()``, closed
        with the store).
    """

    def __init__(self, platform: Platform | None = None) -> None:
        from mlrig.platform import Platform

        self._owned = platform is None
        self.platform = platform or Platform.from_config()
        url = str(self.platform.settings.database.url)
        # the URL may hold a password: spill files carry only its hash
        self.target = f"db:{hashlib.sha256(url.encode()).hexdigest()[:16]}"
        self.actor = _local_actor()

    @property
    def _runs(self) -> Any:
        return self.platform.experiments

    def start_run(self, **fields: Any) -> View:
        return self._runs.start_run(actor=self.actor, **fields)

    def get_run(self, run_id: str) -> View:
        return self._runs.get(run_id)

    def resume_run(self, run_id: str) -> View:
        return self._runs.resume_run(run_id, actor=self.actor)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self._runs.log_params(run_id, params, actor=self.actor)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._runs.set_tags(run_id, tags, actor=self.actor)

    def heartbeat(self, run_id: str) -> None:
        self._runs.heartbeat(run_id)

    def end_run(self, run_id: str, *, status: str, error: str | None) -> View:
        return self._runs.end_run(run_id, status=status, error=error, actor=self.actor)

    def log_dataset(self, run_id: str, dataset: dict[str, Any]) -> None:
        self._runs.log_dataset(run_id, dataset)

    def put_artifact(self, run_id: str, path: str, file: Path) -> View:
        return self._runs.put_run_artifact(run_id, path, file)

    def log_model(self, run_id: str, model: Any, *, name: str, **version: Any) -> View:
        from mlrig.registry.packaging import register_model

        version.setdefault("source_experiment_id", run_id)
        return register_model(self.platform, model, name=name, actor=self.actor, **version)

    def send_points(self, run_id: str, rows: Sequence[Row]) -> int:
        from sqlalchemy.exc import DBAPIError

        try:
            return self._runs.log_metrics(run_id, _floats(rows))["written"]
        except DBAPIError as exc:  # the transaction rolled back: nothing was written
            msg = f"the database is unavailable ({type(exc.orig).__name__})"
            raise UnreachableError(msg) from None

    def count_points(self, run_id: str) -> int:
        return self._runs.metrics(run_id, fields=["steps"])["count"]

    def close(self) -> None:
        if self._owned:
            self.platform.close()


def _local_actor() -> Principal:
    """The local operator, as ``mlrig.log_model`` records it (``python:<login>``)."""
    from mlrig.cli.context import cli_actor
    from mlrig.security import Principal

    return Principal(name=cli_actor().replace("cli:", "python:"), role="admin")


# --- remote -------------------------------------------------------------------------------


class RemoteStore(TrackingStore):
    """Runs recorded through the REST API of an mlrig server.

    :param url: the server (default ``MLRIG_URL``).
    :param token: an API token with write permission (default ``MLRIG_TOKEN``).
    """

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        from mlrig.client import Client

        self.client: Client = Client(url, token=token, timeout=SEND_TIMEOUT)
        self.target = self.client.url

    def start_run(self, **fields: Any) -> View:
        return self.client.start_run(**fields)

    def get_run(self, run_id: str) -> View:
        return self.client.get_experiment(run_id)

    def resume_run(self, run_id: str) -> View:
        return self.client.resume_run(run_id)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.client.log_params(run_id, params)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.set_tags(run_id, tags)

    def heartbeat(self, run_id: str) -> None:
        self.client.heartbeat(run_id)

    def end_run(self, run_id: str, *, status: str, error: str | None) -> View:
        return self.client.end_run(run_id, status=status, error=error)

    def log_dataset(self, run_id: str, dataset: dict[str, Any]) -> None:
        self.client.log_dataset(run_id, dataset)

    def put_artifact(self, run_id: str, path: str, file: Path) -> View:
        with file.open("rb") as data:
            return self.client.upload_run_artifact(run_id, path, data)

    def log_model(self, run_id: str | None, model: Any, *, name: str, **version: Any) -> View:
        """Package ``model`` here and upload it as a new version (lineage to ``run_id``
        when given; the model is created on first use)."""
        from mlrig.errors import ConflictError
        from mlrig.formats import package_model

        sample = version.pop("sample", None)
        framework = version.pop("framework", None)
        if run_id is not None:
            version.setdefault("source_experiment_id", run_id)
        with tempfile.TemporaryDirectory(prefix="mlrig-package-") as tmp:
            folder = Path(tmp)
            package = package_model(model, folder, sample=sample, framework=framework)
            try:
                self.client.create_model(name)
            except ConflictError:
                pass  # it exists
            metadata = {
                "framework": package.framework,
                "model_type": version.pop("model_type", None) or package.model_type,
                "signature": package.signature,
                "requirements": package.requirements,
                **version,
            }
            files = {rel: folder / rel for rel in package.files}
            return self.client.register_version(
                name, files, **{k: v for k, v in metadata.items() if v is not None}
            )

    def send_points(self, run_id: str, rows: Sequence[Row]) -> int:
        import httpx
        import orjson

        from mlrig.client import _raise_for_error

        body = orjson.dumps({"points": rows}, option=orjson.OPT_SERIALIZE_NUMPY)
        try:
            response = self.client._http.post(
                f"/experiments/{run_id}/metrics",
                content=body,
                headers={"Content-Type": "application/json"},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            msg = f"cannot reach the mlrig server at {self.target} ({type(exc).__name__})"
            raise UnreachableError(msg) from None
        except httpx.TransportError as exc:  # sent, but no answer: maybe written
            raise OutcomeUnknownError(f"{type(exc).__name__}: {exc}") from None
        if response.status_code in (502, 503, 504):  # a proxy in front of a server that is down
            msg = f"the mlrig server at {self.target} answered {response.status_code}"
            raise UnreachableError(msg)
        if response.status_code >= 500:
            raise OutcomeUnknownError(f"HTTP {response.status_code}")
        _raise_for_error(response)
        return response.json()["written"]

    def count_points(self, run_id: str) -> int:
        import httpx

        try:
            return self.client.metrics(run_id, fields=["steps"])["count"]
        except httpx.HTTPError as exc:
            raise UnreachableError(str(exc)) from None

    def close(self) -> None:
        self.client.close()


# --- choosing -----------------------------------------------------------------------------

#: set by :func:`mlrig.set_tracking`: ``(url, token)``; ``url`` None means embedded
_configured: tuple[str | None, str | None] | None = None


def configure(url: str | None, token: str | None) -> None:
    """Remember where :func:`open_store` sends runs (see :func:`mlrig.set_tracking`)."""
    global _configured
    _configured = (url, token)


def remote_target() -> tuple[str, str | None] | None:
    """``(url, token)`` of the server runs go to now, or ``None`` for embedded: the
    server given to ``set_tracking`` (``None`` there: embedded), else ``MLRIG_URL`` (with
    ``MLRIG_TOKEN``); without a token, the one ``mlrig login URL`` stored for it."""
    if _configured is not None:
        url, token = _configured
    else:
        url, token = os.environ.get("MLRIG_URL"), os.environ.get("MLRIG_TOKEN")
    if not url:
        return None
    if not token:  # the token `mlrig login URL` stored, as the CLI uses it
        from mlrig.errors import MlrigError
        from mlrig.remote import credentials

        try:
            token = credentials.token_for(url)
        except (MlrigError, OSError, ValueError):
            token = None
    return url, token


def open_store() -> TrackingStore:
    """The store runs go to now (:func:`remote_target`, else the local config)."""
    remote = remote_target()
    if remote is not None:
        return RemoteStore(*remote)
    return EmbeddedStore()
