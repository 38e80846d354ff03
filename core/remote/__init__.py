"""The platform's services over a server's REST API, for the CLI with ``--url``.

:class:`RemotePlatform` has the attributes of :class:`mlrig.platform.Platform` that the
CLI's commands use (``registry``, ``lifecycle``, ``evaluator``, ``experiments``,
``deployments``, ``sweeps``, ``features``, ``security``, ``audit``, ``datasets``), each
with the method signatures of the service it stands for and the same views, implemented with
:meth:`mlrig.Client.request`. The commands run unchanged: same output, ``--json`` and exit
codes. The server checks permissions and writes the audit log itself.

Nothing heavy is imported here: httpx comes with the first request.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from mlrig.errors import MlrigError

if TYPE_CHECKING:
    from mlrig.client import Client
    from mlrig.remote.admin import RemoteAudit, RemoteDeployments, RemoteSecurity
    from mlrig.remote.experiments import RemoteExperiments
    from mlrig.remote.features import RemoteFeatures
    from mlrig.remote.http import ClientJson, JsonHttp
    from mlrig.remote.registry import RemoteEvaluator, RemoteLifecycle, RemoteRegistry
    from mlrig.remote.sweeps import RemoteSweeps
    from mlrig.security import Principal

__all__ = ["LocalOnlyError", "RemotePlatform", "RemoteService"]


class LocalOnlyError(MlrigError):
    """What runs next to the database only (no REST route does it); the CLI exits 2."""

    code = "local_only"


class RemotePlatform:
    """A server at ``url`` (``http://host:port``) seen as a platform; ``token`` is the
    API token the requests carry (``None``: none, for a server without auth)."""

    remote = True

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"RemotePlatform({self.url!r})"

    @cached_property
    def client(self) -> Client:
        """The :class:`mlrig.Client` of the server (httpx; made on first use): uploads,
        streamed downloads, raw bodies and the routes the facades do not cover."""
        from mlrig.client import Client

        return Client(self.url, token=self.token, timeout=self.timeout)

    @cached_property
    def http(self) -> JsonHttp | ClientJson:
        """What the facades send their JSON requests with: :class:`JsonHttp` (standard
        library, quick to import), or :attr:`client` where a proxy is configured."""
        from mlrig.remote.http import ClientJson, JsonHttp, proxy_configured

        if proxy_configured():
            return ClientJson(self.client)
        return JsonHttp(self.url, self.token, timeout=self.timeout)

    def whoami(self) -> Principal:
        """The server's principal of the token (``GET /users/me``)."""
        from mlrig.security import Principal

        me = self.http.request("GET", "/users/me")
        return Principal(name=me["name"], role=me["role"])

    @cached_property
    def registry(self) -> RemoteRegistry:
        from mlrig.remote.registry import RemoteRegistry

        return RemoteRegistry(self)

    @cached_property
    def lifecycle(self) -> RemoteLifecycle:
        from mlrig.remote.registry import RemoteLifecycle

        return RemoteLifecycle(self)

    @cached_property
    def evaluator(self) -> RemoteEvaluator:
        from mlrig.remote.registry import RemoteEvaluator

        return RemoteEvaluator(self)

    @cached_property
    def experiments(self) -> RemoteExperiments:
        from mlrig.remote.experiments import RemoteExperiments

        return RemoteExperiments(self)

    @cached_property
    def sweeps(self) -> RemoteSweeps:
        from mlrig.remote.sweeps import RemoteSweeps

        return RemoteSweeps(self)

    @cached_property
    def features(self) -> RemoteFeatures:
        from mlrig.remote.features import RemoteFeatures

        return RemoteFeatures(self)

    @cached_property
    def deployments(self) -> RemoteDeployments:
        from mlrig.remote.admin import RemoteDeployments

        return RemoteDeployments(self)

    @cached_property
    def security(self) -> RemoteSecurity:
        from mlrig.remote.admin import RemoteSecurity

        return RemoteSecurity(self)

    @cached_property
    def audit(self) -> RemoteAudit:
        from mlrig.remote.admin import RemoteAudit

        return RemoteAudit(self)

    @property
    def datasets(self) -> _ServerDatasets:
        """Datasets are read by the server, within its own bounds."""
        return _ServerDatasets()

    def __getattr__(self, name: str) -> Any:
        # what only an embedded platform has (db, settings, artifacts, queue...): a plugin
        # command that needs it gets a one-line error instead of a traceback
        if name.startswith("_"):
            raise AttributeError(name)
        raise local_only(f"this command (it needs platform.{name})")

    def close(self) -> None:
        """Close the connections (those that were made)."""
        if "http" in self.__dict__:
            self.http.close()
        if "client" in self.__dict__:
            self.client.close()


class _ServerDatasets:
    """Stands for :class:`mlrig.datasets.DatasetAccess`: the server reads the data."""

    def local_operator(self) -> _ServerDatasets:
        return self


class RemoteService:
    """Base of the remote services: JSON requests through ``platform.http``, the rest
    through ``platform.client``; a method the facade lacks (the embedded service has
    more than the CLI uses) is a one-line error, not a traceback."""

    #: the attribute of :class:`RemotePlatform` this service is (for messages)
    attribute = "service"

    def __init__(self, platform: RemotePlatform) -> None:
        self.platform = platform

    @property
    def http(self) -> JsonHttp | ClientJson:
        return self.platform.http

    @property
    def client(self) -> Client:
        return self.platform.client

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise local_only(f"this command (it needs platform.{self.attribute}.{name})")


def local_only(what: str) -> LocalOnlyError:
    """The error for ``what`` (a command) asked of a server."""
    return LocalOnlyError(
        f"{what} runs next to the database, not against a server: run it where the "
        "server's mlrig.toml is, without --url/MLRIG_URL"
    )


def segment(value: Any) -> str:
    """``value`` as one URL path segment (:func:`mlrig.client.url_segment`: a ``/`` in a
    name or id is refused, ``..`` is not resolved away)."""
    from mlrig.client import url_segment

    return url_segment(value)


def params(**values: Any) -> dict[str, Any]:
    """Query parameters without the ``None`` ones."""
    return {k: v for k, v in values.items() if v is not None}
