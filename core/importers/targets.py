"""Where an import writes: the platform's own services (embedded), or a server's REST API
(``mlrig --url ... import mlflow``), behind the few experiment-service methods the
importer calls. The registry and lifecycle of a :class:`~mlrig.remote.RemotePlatform`
already have the services' signatures; tracked runs go through :class:`mlrig.Client`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from mlrig.client import Client
    from mlrig.security import Principal


def is_remote(platform: Any) -> bool:
    """Whether ``platform`` is a server's (``mlrig --url``)."""
    from mlrig.remote import RemotePlatform

    return isinstance(platform, RemotePlatform)


def runs_service(platform: Any) -> Any:
    """The object the importer calls for groups and tracked runs."""
    return RemoteRuns(platform) if is_remote(platform) else platform.experiments


class RemoteRuns:
    """The experiment-service methods of an import, over a server's REST API."""

    def __init__(self, platform: Any) -> None:
        self.experiments = platform.experiments
        self.client: Client = platform.client

    def list(self, **query: Any) -> list[dict[str, Any]]:
        return self.experiments.list(**query)

    def metrics(self, ref: str) -> dict[str, Any]:
        return self.experiments.metrics(ref)

    def get_group(self, ref: str) -> dict[str, Any]:
        return self.client.get_group(ref)

    def ensure_group(
        self, name: str, *, description: str | None = None, tags: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        return self.client.ensure_group(name, description=description, tags=tags)

    def start_run(self, *, actor: Principal, **fields: Any) -> dict[str, Any]:
        return self.client.start_run(**fields)

    def log_params(self, ref: str, params: dict[str, Any], *, actor: Principal) -> dict[str, Any]:
        return self.client.log_params(ref, params)

    def set_tags(self, ref: str, tags: dict[str, str], *, actor: Principal) -> dict[str, Any]:
        return self.client.set_tags(ref, tags)

    def log_dataset(self, ref: str, dataset: dict[str, Any]) -> dict[str, Any]:
        return self.client.log_dataset(ref, dataset)

    def log_metrics(self, ref: str, points: Iterable[Sequence[Any]]) -> dict[str, Any]:
        """``(name, value, step, epoch, kind, recorded_at)`` points, sent as the objects the
        REST schema states."""
        fields = ("name", "value", "step", "epoch", "kind", "recorded_at")
        wired = [{k: x for k, x in zip(fields, p, strict=False) if x is not None} for p in points]
        return {"written": self.client.log_metrics(ref, wired)}

    def put_run_artifact(self, ref: str, path: str, data: BinaryIO) -> dict[str, Any]:
        return self.client.upload_run_artifact(ref, path, data.read())

    def end_run(
        self,
        ref: str,
        *,
        status: str,
        error: str | None,
        ended_at: Any,
        actor: Principal,
    ) -> dict[str, Any]:
        return self.client.end_run(ref, status=status, error=error, ended_at=ended_at)
