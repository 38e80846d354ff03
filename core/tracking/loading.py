"""``mlrig.load_model(uri)``: a registered version, loaded in this process through its runtime.

::

    model = mlrig.load_model("models:/churn@champion")
    model.predict(x)  # and model.predict_proba(x) for a classifier

A URI names a model and one of its versions: ``models:/NAME@ALIAS``, ``models:/NAME/STAGE``
(``Production``, ``Staging``, ``Archived``: the newest version in that stage),
``models:/NAME/VERSION`` (``3``, ``v2``, ``latest``), or a version id alone (``models:/ID``
or ``ID``). The registry is the local one (the config's database) or, when tracking goes
to a server (``mlrig.set_tracking(url, token)`` or ``MLRIG_URL``), the server's.

The artifacts are kept in a cache keyed by their sha256 (``blobs/<sha256>``), and each
version's folder is assembled from it by hard links: loading a version again, or another
version with the same files, downloads nothing; a cached file whose checksum no longer
matches is downloaded again. The runtime is chosen like a deployment's (``auto``: ONNX when
the version has an export and onnxruntime is installed, else the framework's own).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mlrig.errors import NotFoundError, ValidationError
from mlrig.folders import publish_folder, scratch_beside

if TYPE_CHECKING:
    from mlrig.client import Client
    from mlrig.contracts.runtime import LoadedModel
    from mlrig.platform import Platform

__all__ = ["LoadedVersion", "ModelURI", "load_model", "parse_model_uri"]

#: the stages a URI may name (MLflow spells them capitalised; any case is accepted)
STAGES = ("production", "staging", "archived")
#: written last into a cached version folder: every file is in place
_COMPLETE = ".mlrig-complete"
_CHUNK = 1024 * 1024
_URI = re.compile(r"^models:/+(?P<rest>.+)$")


@dataclass(frozen=True)
class ModelURI:
    """What a model URI names: a model and a version, alias or stage, or a version id."""

    model: str | None = None
    version: str | None = None
    alias: str | None = None
    stage: str | None = None
    version_id: str | None = None

    def __str__(self) -> str:
        if self.version_id:
            return f"models:/{self.version_id}"
        if self.alias:
            return f"models:/{self.model}@{self.alias}"
        return f"models:/{self.model}/{self.stage or self.version}"


def parse_model_uri(uri: str) -> ModelURI:
    """``uri`` parsed (see the module docstring); :class:`ValidationError` saying the
    accepted forms otherwise."""
    if not isinstance(uri, str) or not uri.strip():
        msg = f"invalid model URI {uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION"
        raise ValidationError(msg + ", models:/NAME/STAGE or a version id")
    text = uri.strip()
    if _as_uuid(text):
        return ModelURI(version_id=str(_as_uuid(text)))
    found = _URI.match(text)
    rest = found.group("rest").rstrip("/") if found else ""
    if found and _as_uuid(rest):
        return ModelURI(version_id=str(_as_uuid(rest)))
    if found and "@" in rest:
        model, _, alias = rest.partition("@")
        if model and alias and "/" not in rest and "@" not in alias:
            return ModelURI(model=model, alias=alias)
    elif found and rest.count("/") == 1:
        model, _, ref = rest.partition("/")
        if model and ref:
            if ref.lower() in STAGES:
                return ModelURI(model=model, stage=ref.lower())
            return ModelURI(model=model, version=ref)
    elif found and rest and "/" not in rest:
        return ModelURI(model=rest, version="latest")
    msg = (
        f"invalid model URI {uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION "
        "(a number, name or 'latest'), models:/NAME/STAGE (Production, Staging, Archived) "
        "or a version id"
    )
    raise ValidationError(msg)


class _Registry(Protocol):
    """Where versions are read from: the local registry or a server's."""

    def get_model(self, name: str) -> dict[str, Any]: ...

    def get_version(self, model: str, ref: str) -> dict[str, Any]: ...

    def version_by_id(self, version_id: str) -> dict[str, Any]: ...

    def fetch(self, version: dict[str, Any], path: str, dest: Path) -> None: ...


class _LocalRegistry:
    """The registry of a platform (the config's database and artifact store)."""

    def __init__(self, platform: Platform) -> None:
        self.registry = platform.registry
        self.platform = platform

    def get_model(self, name: str) -> dict[str, Any]:
        return self.registry.get_model(name)

    def get_version(self, model: str, ref: str) -> dict[str, Any]:
        return self.registry.get_version(model, ref)

    def version_by_id(self, version_id: str) -> dict[str, Any]:
        from mlrig.db.models import MLModel

        with self.platform.db.session() as session:
            row = session.get(MLModel, uuid.UUID(version_id))
            model_id = None if row is None or row.deleted_at else str(row.registered_model_id)
        if model_id is None:
            msg = f"no model version with id {version_id!r}"
            raise NotFoundError(msg, details={"version": version_id})
        return self.registry.get_version(model_id, version_id)

    def fetch(self, version: dict[str, Any], path: str, dest: Path) -> None:
        _info, stream = self.registry.open_artifact(version["model_id"], version["id"], path)
        with stream, dest.open("wb") as out:
            shutil.copyfileobj(stream, out, _CHUNK)


class _RemoteRegistry:
    """A server's registry, through :class:`mlrig.Client`."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def get_model(self, name: str) -> dict[str, Any]:
        return self.client.get_model(name)

    def get_version(self, model: str, ref: str) -> dict[str, Any]:
        return self.client.get_version(model, ref)

    def version_by_id(self, version_id: str) -> dict[str, Any]:
        # no route reads a version by id alone: page through the versions (newest first)
        params: dict[str, Any] = {"limit": 1000}
        while True:
            page = self.client.request("GET", "/model-versions", params=params)
            for item in page["items"]:
                if item["id"] == version_id:
                    return self.client.get_version(item["model_id"], version_id)
            if not page.get("next_cursor"):
                break
            params = {**params, "cursor": page["next_cursor"]}
        msg = f"no model version with id {version_id!r} on {self.client.url}"
        raise NotFoundError(msg, details={"version": version_id})

    def fetch(self, version: dict[str, Any], path: str, dest: Path) -> None:
        self.client.download_artifact(version["model_id"], version["id"], path, dest)


# --- resolving a URI ----------------------------------------------------------------------


def resolve(registry: _Registry, ref: ModelURI) -> dict[str, Any]:
    """The version view (with artifacts) that ``ref`` names."""
    if ref.version_id:
        return registry.version_by_id(ref.version_id)
    assert ref.model is not None
    if ref.alias:
        aliases = registry.get_model(ref.model).get("aliases") or {}
        if ref.alias not in aliases:
            known = ", ".join(sorted(aliases)) or "none"
            msg = f"model {ref.model!r} has no alias {ref.alias!r} (aliases: {known})"
            raise NotFoundError(msg, details={"model": ref.model, "alias": ref.alias})
        return registry.get_version(ref.model, str(aliases[ref.alias]))
    if ref.stage:
        versions = registry.get_model(ref.model).get("versions") or []
        staged = [v for v in versions if v.get("stage") == ref.stage]
        if not staged:
            msg = f"model {ref.model!r} has no version in stage {ref.stage!r}"
            raise NotFoundError(msg, details={"model": ref.model, "stage": ref.stage})
        newest = max(staged, key=lambda v: v.get("created_at") or "")
        return registry.get_version(ref.model, str(newest["version"]))
    return registry.get_version(ref.model, str(ref.version))


# --- the cache ----------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``<user cache dir>/mlrig/models`` (platformdirs)."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mlrig")) / "models"


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactCache:
    """Files by sha256 under ``root/blobs``; version folders under ``root/versions``.

    Safe for several processes sharing the folder: every file and folder is written
    under a temporary name and renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        #: files downloaded by the last :meth:`version_folder` call (0: all from the cache)
        self.downloaded = 0

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def version_folder(self, registry: _Registry, version: dict[str, Any]) -> Path:
        """The folder holding every artifact of ``version``, checked against its sha256s;
        only the files missing from the cache (or corrupted there) are downloaded."""
        self.downloaded = 0
        try:
            return self._version_folder(registry, version)
        except OSError as exc:  # a cache folder that is a file, read-only, full...
            from mlrig.errors import ConfigError

            msg = (
                f"cannot use the model cache {self.root}: {exc.strerror or exc}"
                f"{f' ({exc.filename})' if exc.filename else ''}; fix it or remove it, "
                "or give load_model(cache_dir=...)"
            )
            raise ConfigError(msg, details={"cache_dir": str(self.root)}) from None

    def _version_folder(self, registry: _Registry, version: dict[str, Any]) -> Path:
        artifacts = version.get("artifacts") or []
        folder = self.root / "versions" / version["id"]
        if (folder / _COMPLETE).is_file() and all(
            _matches(folder / a["path"], a["sha256"]) for a in artifacts
        ):
            return folder
        tmp = scratch_beside(folder)
        try:
            for artifact in artifacts:
                blob = self._blob_of(registry, version, artifact)
                target = tmp / _safe_relative(artifact["path"])
                target.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(blob, target)
            return publish_folder(tmp, folder, marker=_COMPLETE, content=version["id"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _blob_of(self, registry: _Registry, version: dict[str, Any], artifact: dict) -> Path:
        expected = str(artifact["sha256"]).lower()
        blob = self.blob(expected)
        if _matches(blob, expected):
            return blob
        blob.parent.mkdir(parents=True, exist_ok=True)
        partial = blob.with_name(f".{expected}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            registry.fetch(version, artifact["path"], partial)
            got = sha256_of(partial)
            if got != expected:
                msg = (
                    f"artifact {artifact['path']!r} of {version['name']} version "
                    f"{version['version']} arrived with sha256 {got}, expected {expected}"
                )
                raise ValidationError(msg, details={"path": artifact["path"]})
            os.replace(partial, blob)
        finally:
            partial.unlink(missing_ok=True)
        self.downloaded += 1
        return blob


def _matches(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_of(path) == str(sha256).lower()


def _safe_relative(path: str) -> Path:
    parts = Path(path).parts
    if not parts or Path(path).is_absolute() or ".." in parts:
        msg = f"artifact path {path!r} is not a relative path inside the version"
        raise ValidationError(msg)
    return Path(*parts)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)


# --- the loaded model ---------------------------------------------------------------------


class LoadedVersion:
    """A registered version loaded by a runtime: ``predict`` (numpy arrays out), and
    ``predict_proba`` when the model has one.

    :ivar name: the model's name. :ivar version: the version's name.
    :ivar version_id: the version's id. :ivar runtime: the runtime that loaded it.
    :ivar metadata: the version as the registry shows it. :ivar path: its cached folder.
    :ivar downloaded: files this load downloaded.
    :ivar model: the runtime's :class:`~mlrig.contracts.runtime.LoadedModel`.
    """

    def __init__(
        self, model: LoadedModel, *, runtime: str, metadata: dict[str, Any], path: Path
    ) -> None:
        self.model = model
        self.runtime = runtime
        self.metadata = metadata
        self.path = path
        self.name: str = metadata["name"]
        self.version: str = metadata["version"]
        self.version_id: str = metadata["id"]
        #: files this load downloaded (0: every file came from the cache)
        self.downloaded = 0

    @property
    def signature(self) -> dict[str, Any] | None:
        """The version's input/output signature."""
        return self.metadata.get("signature")

    def predict(self, batch: Any) -> Any:
        """One prediction per row of ``batch`` (array, rows, records or DataFrame)."""
        return _array(self.model.predict(batch))

    def close(self) -> None:
        """Free what the runtime holds (sessions, device memory)."""
        self.model.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} version {self.version} ({self.runtime})>"


class LoadedClassifierVersion(LoadedVersion):
    """A loaded classifier: also ``predict_proba``."""

    def predict_proba(self, batch: Any) -> Any:
        """Per row, the probability of each class."""
        return _array(self.model.predict_proba(batch))  # type: ignore[attr-defined]

    @property
    def classes(self) -> list[Any] | None:
        """The class labels in the order of :meth:`predict_proba`'s columns, if known."""
        return getattr(self.model, "classes", None)


def _array(values: Any) -> Any:
    import numpy as np

    return np.asarray(values)


# --- the entry point ----------------------------------------------------------------------


def load_model(
    uri: str,
    *,
    runtime: str = "auto",
    platform: Platform | None = None,
    client: Client | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedVersion:
    """Load the registered version ``uri`` names and return it ready to predict.

    :param uri: ``models:/NAME@ALIAS``, ``models:/NAME/STAGE``, ``models:/NAME/VERSION``
        or a version id.
    :param runtime: ``auto`` (as deployments choose) or a runtime name (``sklearn``,
        ``onnx``, ``torch``, ``tensorflow``...).
    :param platform: read the registry of this platform instead of the default one.
    :param client: read the registry of this server instead of the default one.
    :param cache_dir: where artifacts are cached (default: the user cache dir).
    :raises NotFoundError: no such model, version, alias or stage.
    :raises ValidationError: a malformed URI, or no installed runtime loads the version.
    """
    from mlrig.backends import load_backend
    from mlrig.serving.spec import choose_runtime

    ref = parse_model_uri(uri)
    cache = ArtifactCache(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    store: Any = None
    if platform is None and client is None:
        from mlrig.tracking.stores import RemoteStore, open_store

        store = open_store()  # where tracking goes: set_tracking / MLRIG_URL, else local
        if isinstance(store, RemoteStore):
            client = store.client
        else:
            platform = store.platform
    try:
        registry: _Registry = (
            _RemoteRegistry(client) if client is not None else _LocalRegistry(platform)  # type: ignore[arg-type]
        )
        version = resolve(registry, ref)
        name = choose_runtime(version, runtime)
        folder = cache.version_folder(registry, version)
        base_dir = platform.settings.base_dir if platform is not None else None
    finally:
        if store is not None:
            store.close()
    metadata = _metadata(folder, version)
    backend = load_backend("runtimes", name).from_options(
        {}, where=f"runtimes.{name}", base_dir=base_dir
    )
    loaded = _load(backend, name, folder, metadata, version)
    cls = (
        LoadedClassifierVersion
        if callable(getattr(loaded, "predict_proba", None))
        else LoadedVersion
    )
    result = cls(loaded, runtime=name, metadata=version, path=folder)
    result.downloaded = cache.downloaded
    return result


def _load(
    backend: Any, runtime: str, folder: Path, metadata: dict[str, Any], version: dict[str, Any]
) -> LoadedModel:
    """``backend.load``, a framework's own failure (a damaged pickle, a file of another
    format) told as one :class:`ValidationError` naming the version and the runtime
    rather than as the framework's traceback (chained, for whoever debugs it)."""
    from mlrig.errors import MlrigError

    try:
        return backend.load(folder, metadata)
    except MlrigError:
        raise
    except Exception as exc:
        msg = (
            f"runtime {runtime!r} cannot load {version['name']} version {version['version']} "
            f"({type(exc).__name__}: {str(exc)[:200] or 'no message'}); its files may be "
            "damaged or of another framework version"
        )
        raise ValidationError(msg, details={"version": version["id"], "runtime": runtime}) from exc


def _metadata(folder: Path, version: dict[str, Any]) -> dict[str, Any]:
    """What the runtime is told: the package manifest under the registry's version view
    (as the serving loader does)."""
    from mlrig.errors import MlrigError
    from mlrig.formats import load_manifest

    try:
        manifest = load_manifest(folder)
    except MlrigError:
        manifest = {}
    recorded = {k: v for k, v in version.items() if v is not None and k != "artifacts"}
    return {**manifest, **recorded}


def _as_uuid(value: str) -> uuid.UUID | None:
    if len(value) > 64:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
