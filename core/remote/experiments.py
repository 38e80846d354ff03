"""The experiments of a server (``/api/ml/experiments``), with the signatures of
:class:`mlrig.experiments.ExperimentService` that the CLI uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlrig.remote import RemoteService, params, segment

if TYPE_CHECKING:
    from mlrig.security import Principal


def _path(ref: str, *rest: str) -> str:
    return "/".join(["/experiments", segment(ref), *rest])


class _ServerQueue:
    """Stands for the job queue: the server has no route listing its workers, so a
    waiting command trusts that the server runs one (``mlrig server`` does)."""

    def live_workers(self) -> list[str]:
        return ["(the server's)"]


class RemoteExperiments(RemoteService):
    """Create, queue, stop, watch and compare a server's experiments."""

    attribute = "experiments"

    queue = _ServerQueue()

    def create(
        self, *, name: str, trainer: str, actor: Principal | None = None, **fields: Any
    ) -> dict[str, Any]:
        """``POST /experiments`` (the creator is the token's user)."""
        body = {"name": name, "trainer": trainer, **params(**fields)}
        return self.http.request("POST", "/experiments", json=body)

    def list(
        self,
        *,
        status: str | None = None,
        name_prefix: str | None = None,
        trainer: str | None = None,
        origin: str | None = None,
        group: str | None = None,
        parent: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        query = params(
            status=status,
            name_prefix=name_prefix,
            trainer=trainer,
            origin=origin,
            group=group,
            parent=None if parent is None else str(parent),
            limit=limit,
            offset=offset or None,
        )
        return self.http.request("GET", "/experiments", params=query)["items"]

    def get(self, ref: str) -> dict[str, Any]:
        return self.http.request("GET", _path(ref))

    def resolve(self, ref: str) -> str:
        """The id of experiment ``ref`` (an id, a prefix of one, or a name)."""
        return self.get(ref)["id"]

    def status(self, ref: str) -> str:
        return self.get(ref)["status"]

    def start(self, ref: str) -> dict[str, Any]:
        return self.http.request("POST", _path(ref, "start"))

    def stop(self, ref: str) -> dict[str, Any]:
        return self.http.request("POST", _path(ref, "stop"))

    def rerun(self, ref: str, *, actor: Principal | None = None) -> dict[str, Any]:
        return self.http.request("POST", _path(ref, "rerun"))

    def events(self, ref: str) -> list[dict[str, Any]]:
        return self.http.request("GET", _path(ref, "events"))["items"]

    def metrics(
        self,
        ref: str,
        *,
        name: str | None = None,
        kind: str | None = None,
        after_step: int | None = None,
        limit: int | None = None,
        fields: list[str] | None = None,
    ) -> dict[str, Any]:
        query = params(
            name=name,
            kind=kind,
            after_step=after_step,
            limit=limit,
            fields=",".join(fields) if fields is not None else None,
        )
        return self.http.request("GET", _path(ref, "metrics"), params=query)

    def compare(self, refs: list[str]) -> dict[str, Any]:
        return self.http.request("GET", "/experiments/compare", params={"ids": list(refs)})

    def read_logs(self, ref: str, offset: int = 0, limit: int | None = None) -> tuple[bytes, int]:
        """The job's log bytes from ``offset`` and the offset to ask for next."""
        from mlrig.client import _raise_for_error

        query = params(offset=offset, limit=limit)
        response = self.client._http.get(_path(ref, "logs"), params=query)
        _raise_for_error(response)
        return response.content, int(response.headers.get("X-Next-Offset", offset))
