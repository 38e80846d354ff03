"""The registry, lifecycle and evaluator of a server (``/api/ml/models``, ``/approvals``,
``/model-versions``), with the signatures of :class:`mlrig.registry.ModelRegistry`,
:class:`~mlrig.registry.lifecycle.Lifecycle` and the evaluator."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlrig.errors import NotFoundError, StorageError
from mlrig.remote import RemoteService, local_only, params, segment

if TYPE_CHECKING:
    import uuid

    from mlrig.registry.search import VersionQuery
    from mlrig.security import Principal

#: the fields of a version a client may send (``VersionMetadata`` of the models router)
_METADATA = (
    "version",
    "description",
    "framework",
    "model_type",
    "tags",
    "params",
    "metrics",
    "signature",
    "requirements",
    "source_experiment_id",
    "source_run",
    "parent_version",
    "datasets",
    "code_version",
)


def _models(ref: str, *rest: str) -> str:
    return "/".join(["/models", segment(ref), *(segment(part) for part in rest)])


class _Deletes:
    """Stands for :class:`mlrig.registry.deletes.RegistryDeletes`: its local check."""

    @staticmethod
    def check_allowed(actor: Principal, *, force: bool = False) -> None:
        from mlrig.registry.deletes import RegistryDeletes

        RegistryDeletes.check_allowed(actor, force=force)


class RemoteRegistry(RemoteService):
    """Models, versions and artifacts of a server."""

    attribute = "registry"

    deletes = _Deletes()

    # --- models -------------------------------------------------------------------------

    def create_model(
        self,
        *,
        name: str,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        actor: Principal | None = None,
    ) -> dict[str, Any]:
        body = params(name=name, description=description, tags=tags)
        return self.http.request("POST", "/models", json=body)

    def get_model(self, ref: str) -> dict[str, Any]:
        return self.http.request("GET", _models(ref))

    def model_id(self, model_ref: str) -> uuid.UUID:
        import uuid

        return uuid.UUID(self.get_model(model_ref)["id"])

    def list_models(
        self,
        *,
        name_prefix: str | None = None,
        name_contains: str | None = None,
        tag: dict[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        query = params(
            name_prefix=name_prefix,
            q=name_contains,
            tag=[f"{k}:{v}" for k, v in (tag or {}).items()] or None,
            limit=limit,
            offset=offset or None,
        )
        return self.http.request("GET", "/models", params=query)["items"]

    def update_model(
        self, ref: str, *, description: str | None = None, tags: dict[str, str] | None = None
    ) -> dict[str, Any]:
        body = params(description=description, tags=tags)
        return self.http.request("PUT", _models(ref), json=body)

    def delete_model(self, ref: str, *, actor: Principal, force: bool = False) -> dict[str, Any]:
        return self.http.request("DELETE", _models(ref), params={"force": force})

    def restore_model(self, ref: str, *, actor: Principal) -> dict[str, Any]:
        return self.http.request("POST", _models(ref, "restore"))

    def list_deleted(self, model_ref: str | None = None) -> dict[str, list[dict[str, Any]]]:
        page = self.http.request("GET", "/models/-/deleted", params=params(model=model_ref))
        found: dict[str, list[dict[str, Any]]] = {"models": [], "versions": []}
        for item in page["items"]:
            kind = item.pop("kind")
            found["models" if kind == "model" else "versions"].append(item)
        return found

    def purge(
        self, *, actor: Principal, older_than_days: int | None = None, dry_run: bool = False
    ) -> dict[str, Any]:
        raise local_only("mlrig models purge")

    # --- versions -----------------------------------------------------------------------

    def create_version(
        self,
        model_ref: str,
        *,
        files: Mapping[str, Any],
        actor: Principal | None = None,
        create_model: bool = False,
        **fields: Any,
    ) -> dict[str, Any]:
        """Upload ``files`` (path in the version -> local path, bytes or binary file) as a
        new version; ``create_model`` registers the model first when it does not exist."""
        import orjson

        unknown = sorted(set(fields) - set(_METADATA) - {"created_by"})
        if unknown:
            msg = f"create_version() got unexpected fields: {', '.join(unknown)}"
            raise TypeError(msg)
        metadata = {k: v for k, v in fields.items() if k in _METADATA and v is not None}
        body = orjson.dumps(metadata, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        try:
            return self._upload(model_ref, files, body)
        except NotFoundError:
            if not create_model or self._exists(model_ref):
                raise
        with contextlib.suppress(Exception):  # another client may create it meanwhile
            self.create_model(name=model_ref)
        return self._upload(model_ref, files, body)

    def _exists(self, model_ref: str) -> bool:
        try:
            self.get_model(model_ref)
        except NotFoundError:
            return False
        return True

    def _upload(self, model_ref: str, files: Mapping[str, Any], metadata: str) -> dict[str, Any]:
        import io

        with contextlib.ExitStack() as opened:
            uploads = []
            for path, source in files.items():
                if isinstance(source, bytes | bytearray | memoryview):
                    content: Any = io.BytesIO(bytes(source))
                elif isinstance(source, str | Path):
                    content = opened.enter_context(Path(source).open("rb"))
                else:  # a binary file object
                    content = source
                uploads.append(("files", (path, content, "application/octet-stream")))
            return self.client.request(  # multipart: httpx
                "POST", _models(model_ref, "versions"), files=uploads, data={"metadata": metadata}
            )

    def get_version(self, model_ref: str, version_ref: str) -> dict[str, Any]:
        return self.http.request("GET", _models(model_ref, "versions", version_ref))

    def update_version(
        self,
        model_ref: str,
        version_ref: str,
        *,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        frozen: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = {**(frozen or {}), **params(description=description, tags=tags)}
        return self.http.request("PUT", _models(model_ref, "versions", version_ref), json=body)

    def delete_version(
        self, model_ref: str, version_ref: str, *, actor: Principal, force: bool = False
    ) -> dict[str, Any]:
        path = _models(model_ref, "versions", version_ref)
        return self.http.request("DELETE", path, params={"force": force})

    def restore_version(
        self, model_ref: str, version_ref: str, *, actor: Principal
    ) -> dict[str, Any]:
        return self.http.request("POST", _models(model_ref, "versions", version_ref, "restore"))

    def search_versions(self, query: VersionQuery) -> dict[str, Any]:
        """One page of versions: ``GET /models/{id}/versions`` for one model, else
        ``GET /model-versions``."""
        filters = params(
            framework=query.framework,
            model_type=query.model_type,
            stage=query.stage,
            tag=[f"{k}:{v}" for k, v in query.tags.items()] or None,
            created_by=query.created_by,
            created_after=query.created_after.isoformat() if query.created_after else None,
            created_before=query.created_before.isoformat() if query.created_before else None,
            metric=[f"{m.name}{m.op}{m.value!r}" for m in query.metrics] or None,
            sort=query.sort,
            limit=query.limit,
            cursor=query.cursor,
        )
        if query.model_id is not None:
            return self.http.request(
                "GET", _models(str(query.model_id), "versions"), params=filters
            )
        filters.update(
            params(name=query.name, name_prefix=query.name_prefix, q=query.name_contains)
        )
        return self.http.request("GET", "/model-versions", params=filters)

    def list_artifacts(self, model_ref: str, version_ref: str) -> list[dict[str, Any]]:
        path = _models(model_ref, "versions", version_ref, "artifacts")
        return self.http.request("GET", path)["items"]

    def download_version(self, model_ref: str, version_ref: str, folder: Path) -> list[Path]:
        """Write every artifact of a version under ``folder`` (each checked against its
        sha256); return the paths written."""
        version = self.get_version(model_ref, version_ref)
        written = []
        for artifact in version["artifacts"]:
            target = Path(folder) / artifact["path"]
            self.client.download_artifact(
                segment(version["model_id"]), segment(version["id"]), artifact["path"], target
            )
            if artifact.get("sha256") and _sha256(target) != artifact["sha256"]:
                target.unlink(missing_ok=True)
                msg = f"download of {artifact['path']!r}: the bytes do not match its sha256"
                raise StorageError(msg)
            written.append(target)
        return written


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class RemoteLifecycle(RemoteService):
    """Aliases, stages and approval requests of a server."""

    attribute = "lifecycle"

    def set_alias(
        self, model_ref: str, alias: str, version_ref: str, *, actor: Principal
    ) -> dict[str, Any]:
        path = _models(model_ref, "aliases", alias)
        return self.http.request("PUT", path, json={"version": version_ref})

    def delete_alias(self, model_ref: str, alias: str, *, actor: Principal) -> dict[str, Any]:
        return self.http.request("DELETE", _models(model_ref, "aliases", alias))

    def transition(
        self,
        model_ref: str,
        version_ref: str,
        stage: str,
        *,
        actor: Principal,
        comment: str | None = None,
    ) -> dict[str, Any]:
        path = _models(model_ref, "versions", version_ref, "stage")
        return self.http.request("POST", path, json=params(stage=stage, comment=comment))

    def list_requests(
        self, *, status: str | None = "pending", model: str | None = None
    ) -> list[dict[str, Any]]:
        query = params(status=status or "all", model=model)
        return self.http.request("GET", "/approvals", params=query)["items"]

    def decide(
        self, request_id: str, *, approve: bool, actor: Principal, comment: str | None = None
    ) -> dict[str, Any]:
        verb = "approve" if approve else "reject"
        path = f"/approvals/{segment(request_id)}/{verb}"
        return self.http.request("POST", path, json=params(comment=comment))


class RemoteEvaluator(RemoteService):
    """Evaluations and comparisons of versions, computed by the server (the dataset is
    read there, within the server's dataset bounds)."""

    attribute = "evaluator"

    def evaluate(
        self,
        model_ref: str,
        version_refs: list[str],
        *,
        dataset_uri: str,
        target: str,
        task: str | None = None,
        runtime: str | None = None,
        access: Any = None,
    ) -> list[dict[str, Any]]:
        body = params(dataset_uri=dataset_uri, target=target, task=task, runtime=runtime)
        return [
            self.http.request("POST", _models(model_ref, "versions", ref, "evaluations"), json=body)
            for ref in version_refs
        ]

    def compare(self, model_ref: str, version_refs: list[str]) -> dict[str, Any]:
        query = {"versions": list(version_refs)}
        return self.http.request("GET", _models(model_ref, "compare"), params=query)
