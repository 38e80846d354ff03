"""Where an MLflow artifact URI's files are, and how to read them: a local folder
(``file://`` and plain paths), the tracking server's artifact proxy
(``mlflow-artifacts:/``) or the server's run artifact routes."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlparse

from mlrig.importers.mlflow_records import ArtifactFile, ArtifactTree

if TYPE_CHECKING:
    import httpx

#: the route of the server's artifact proxy (``mlflow server --serve-artifacts``)
PROXY_ROUTE = "/api/2.0/mlflow-artifacts/artifacts"


class LocalTree:
    """The files below a local folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def files(self) -> Iterator[ArtifactFile]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*")):
            if path.is_file():
                yield ArtifactFile(path.relative_to(self.root).as_posix(), path.stat().st_size)

    def open(self, path: str) -> BinaryIO:
        return (self.root / path).open("rb")

    def local_folder(self) -> Path:
        """The folder itself (model versions are read in place)."""
        return self.root


class _Streamed:
    """A response body as a file-like ``read`` (closes the response at the end)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.chunks = response.iter_bytes(1 << 20)
        self.pending = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.pending) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.pending += chunk
        if size < 0:
            data, self.pending = self.pending, b""
        else:
            data, self.pending = self.pending[:size], self.pending[size:]
        return data

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> _Streamed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _get_stream(http: httpx.Client, url: str, params: dict[str, str] | None = None) -> BinaryIO:
    request = http.build_request("GET", url, params=params)
    response = http.send(request, stream=True)
    if response.status_code >= 400:
        response.read()
        response.close()
        msg = f"GET {url} answered {response.status_code}: {response.text[:200]}"
        raise OSError(msg)
    return _Streamed(response)  # type: ignore[return-value]


class ProxyTree:
    """The files below ``path`` of a tracking server's artifact proxy."""

    def __init__(self, http: httpx.Client, path: str) -> None:
        self.http = http
        self.path = path.strip("/")

    def _list(self, below: str) -> Iterator[ArtifactFile]:
        where = posixpath.join(self.path, below) if below else self.path
        answer = self.http.get(PROXY_ROUTE, params={"path": where})
        answer.raise_for_status()
        for item in answer.json().get("files", []):
            name = (
                posixpath.join(below, posixpath.basename(item["path"]))
                if below
                else (posixpath.basename(item["path"]))
            )
            if item.get("is_dir"):
                yield from self._list(name)
            else:
                yield ArtifactFile(name, int(item.get("file_size") or 0))

    def files(self) -> Iterator[ArtifactFile]:
        yield from self._list("")

    def open(self, path: str) -> BinaryIO:
        return _get_stream(self.http, f"{PROXY_ROUTE}/{self.path}/{path}")


class RunRestTree:
    """A run's artifacts through the server's run routes (``artifacts/list``,
    ``get-artifact``): works whatever artifact store the server uses."""

    def __init__(self, http: httpx.Client, run_id: str) -> None:
        self.http = http
        self.run_id = run_id

    def _list(self, below: str | None) -> Iterator[ArtifactFile]:
        params = {"run_id": self.run_id}
        if below:
            params["path"] = below
        answer = self.http.get("/api/2.0/mlflow/artifacts/list", params=params)
        answer.raise_for_status()
        for item in answer.json().get("files", []):
            if item.get("is_dir"):
                yield from self._list(item["path"])
            else:
                yield ArtifactFile(item["path"], int(item.get("file_size") or 0))

    def files(self) -> Iterator[ArtifactFile]:
        yield from self._list(None)

    def open(self, path: str) -> BinaryIO:
        return _get_stream(self.http, "/get-artifact", {"run_uuid": self.run_id, "path": path})


def local_path(uri: str, *, base: Path) -> Path | None:
    """The local folder of a ``file://`` URI or a plain path (relative to ``base``)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" is a drive, not a scheme
        return None
    path = Path(uri)
    return path if path.is_absolute() else (base / path)


def proxy_path(uri: str) -> str | None:
    """The path of an ``mlflow-artifacts:`` URI below the proxy's root."""
    parsed = urlparse(uri)
    if parsed.scheme != "mlflow-artifacts":
        return None
    return unquote(parsed.path).lstrip("/")


def resolve_tree(
    uri: str | None,
    *,
    base: Path,
    artifacts_root: Path | None = None,
    http: httpx.Client | None = None,
) -> ArtifactTree | None:
    """The files of an artifact URI, or None where they cannot be reached from here.

    :param base: the folder relative paths are taken from (the store's).
    :param artifacts_root: the local folder an ``mlflow-artifacts:/`` URI names (the
        server's ``--artifacts-destination``, default ``./mlartifacts`` beside it).
    :param http: a client of the tracking server, which serves ``mlflow-artifacts:/``.
    """
    if not uri:
        return None
    proxied = proxy_path(uri)
    if proxied is not None:
        if artifacts_root is not None:
            return LocalTree(artifacts_root / proxied)
        if http is not None:
            return ProxyTree(http, proxied)
        guess = base / "mlartifacts" / proxied
        return LocalTree(guess) if guess.exists() else None
    path = local_path(uri, base=base)
    return LocalTree(path) if path is not None else None
