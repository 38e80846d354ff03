"""The ``local`` storage backend: one file per key under a root folder.

Writes go to a temporary file next to the target and are renamed into place
(``os.replace`` is atomic on POSIX and Windows), so readers never see half a file and a
failed write leaves only nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict

from mlrig.artifacts.keys import normalize_key
from mlrig.config import ConfigPath
from mlrig.contracts.storage import PendingUpload, StorageBackend
from mlrig.errors import (
    ArtifactNotFoundError,
    ConflictError,
    InvalidKeyError,
    MlrigError,
    StorageError,
)

#: temporary files end with this; listings skip them and keys may not look like them
TEMP_SUFFIX = ".mlrig-tmp"


class LocalStorageOptions(BaseModel):
    """``[storage.local]`` options."""

    model_config = ConfigDict(extra="forbid")
    #: the folder holding the artifacts; relative paths start at the config file's folder
    root: ConfigPath = Path(".mlrig/artifacts")
    #: fsync each file and its folder before a write counts as done (slower, crash-safe)
    fsync: bool = False


class LocalStorage(StorageBackend):
    """Artifacts as files under ``root``."""

    Options = LocalStorageOptions

    def __init__(self, options: LocalStorageOptions) -> None:
        super().__init__(options)
        self.root = Path(options.root).expanduser().resolve()
        self.fsync = options.fsync

    def _path(self, key: str) -> Path:
        key = normalize_key(key)  # core normalises already; a direct caller might not
        if key.endswith(TEMP_SUFFIX):
            msg = f"artifact key {key!r} ends with {TEMP_SUFFIX!r}, reserved for temporary files"
            raise InvalidKeyError(msg)
        return self.root.joinpath(*key.split("/"))

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent
            )
        except OSError as exc:
            raise _write_error("create", key, exc) from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                yield _Writer(handle, key)  # type: ignore[misc]
                try:
                    if self.fsync:
                        handle.flush()
                        os.fsync(handle.fileno())
                    handle.close()
                    os.replace(temp, path)
                except OSError as exc:
                    raise _write_error("write", key, exc) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        if self.fsync:
            _fsync_dir(path.parent)

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise _not_found(key, self.root) from None
        except OSError as exc:
            raise _storage_error("read", key, exc) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise _not_found(key, self.root)
        return path.stat().st_size

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return  # a folder is not an object: nothing to delete under this key
        except OSError as exc:
            raise _storage_error("delete", key, exc) from exc
        # Prune folders left empty, so deleted models leave no trail of directories.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def list(self, prefix: str = "") -> Iterator[str]:
        # Walk only the folder the prefix points into, then filter by the string prefix.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        keys = []
        for dirpath, _dirs, files in os.walk(start):
            base = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if name.endswith(TEMP_SUFFIX):
                    continue
                key = name if base == "." else f"{base}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def modified(self, key: str) -> datetime:
        path = self._path(key)
        if not path.is_file():
            raise _not_found(key, self.root)
        return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)

    def pending_uploads(self, *, started_before: datetime) -> Iterator[PendingUpload]:
        """The temporary files of writes whose process died (a killed ``open_write``)."""
        cutoff = started_before.timestamp()
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
                    continue
                temp = Path(dirpath, name)
                try:
                    info = temp.stat()
                except OSError:
                    continue  # finished or aborted meanwhile
                if info.st_mtime >= cutoff:
                    continue  # maybe still being written: mtime moves with every write
                # ".<target name>.<8 random chars>.mlrig-tmp" (see open_write)
                target = name[1 : -len(TEMP_SUFFIX)].rsplit(".", 1)[0]
                folder = temp.parent.relative_to(self.root).as_posix()
                yield PendingUpload(
                    key=target if folder == "." else f"{folder}/{target}",
                    upload_id=temp.relative_to(self.root).as_posix(),
                    started=datetime.fromtimestamp(info.st_mtime, tz=UTC),
                    size=info.st_size,
                )

    def abort_upload(self, upload: PendingUpload) -> None:
        name = upload.upload_id
        if not name.endswith(TEMP_SUFFIX) or ".." in name.split("/") or name.startswith("/"):
            msg = f"{name!r} is not a temporary file of this store"
            raise InvalidKeyError(msg)
        try:
            self.root.joinpath(*name.split("/")).unlink(missing_ok=True)
        except OSError as exc:
            raise _storage_error("remove the temporary file", name, exc) from exc

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root), "fsync": self.fsync}

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error("create the root folder", str(self.root), exc) from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            msg = (
                f"artifact root {str(self.root)!r} is not writable; fix its permissions "
                "or change [storage.local] root"
            )
            raise StorageError(msg)


class _Writer:
    """The temp file, with write errors (a full disk...) reported as :class:`StorageError`.

    The caller's own exceptions pass through ``open_write`` untouched; only what the file
    system says is translated, here where it is known to come from the file system.
    """

    def __init__(self, handle: BinaryIO, key: str) -> None:
        self._handle = handle
        self._key = key

    def write(self, data: bytes) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            raise _storage_error("write", self._key, exc) from exc

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._handle.tell()

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as exc:
            raise _storage_error("write", self._key, exc) from exc


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable on POSIX; Windows cannot open folders, nor needs to.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _not_found(key: str, root: Path) -> ArtifactNotFoundError:
    msg = f"no artifact {key!r} under {str(root)!r}"
    return ArtifactNotFoundError(msg, details={"key": key})


class KeyTooLongError(InvalidKeyError, StorageError):
    """A part of the key is longer than the file system takes: the caller's mistake (a
    4xx through the API), and still the store's :class:`StorageError`."""


class KeyConflictError(ConflictError, StorageError):
    """The key needs a folder where a file is, or names a folder: the caller's mistake
    (409 through the API), and still the store's :class:`StorageError`."""


def _write_error(action: str, key: str, exc: OSError) -> MlrigError:
    """What a failed write tells its caller: the key's own fault (a name too long for the
    file system, a file where the key needs a folder or a folder where it names a file)
    is the client's mistake, not a 500; anything else the store's."""
    if exc.errno == errno.ENAMETOOLONG:
        msg = (
            f"artifact key {key[:200]!r} has a part longer than the file system takes "
            "(about 230 bytes per file or folder name in the local store); use shorter names"
        )
        return KeyTooLongError(msg, details={"key": key[:200]})
    if isinstance(exc, FileExistsError | NotADirectoryError | IsADirectoryError):
        msg = (
            f"artifact key {key[:200]!r} conflicts with an existing one: one of its folders "
            "is a file, or it names a folder (a name cannot be both)"
        )
        return KeyConflictError(msg, details={"key": key[:200]})
    return _storage_error(action, key, exc)


def _storage_error(action: str, key: str, exc: OSError) -> StorageError:
    msg = f"cannot {action} artifact {key!r}: {exc.strerror or exc}"
    return StorageError(msg, details={"key": key})
