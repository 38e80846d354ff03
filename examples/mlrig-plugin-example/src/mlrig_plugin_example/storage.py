"""``sharded``: a local folder store that fans keys out into 256 sub-folders."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict

from mlrig import ConfigPath, StorageBackend
from mlrig.errors import ArtifactNotFoundError, StorageError


class ShardedOptions(BaseModel):
    """``[storage.sharded]`` options."""

    model_config = ConfigDict(extra="forbid")
    #: a ConfigPath: a relative value starts at the config file's folder, so the server
    #: and every job process (each in its own working directory) use the same folder
    root: ConfigPath = Path("shards")


class ShardedFolderStorage(StorageBackend):
    """Objects live at ``root/<2 hex digits of sha1(key)>/<key with / as %2F>``."""

    Options = ShardedOptions

    @property
    def root(self) -> Path:
        return self.options.root

    def _path(self, key: str) -> Path:
        shard = hashlib.sha1(key.encode()).hexdigest()[:2]
        return self.root / shard / key.replace("%", "%25").replace("/", "%2F")

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise

    def open_read(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            msg = f"no artifact stored under {key!r}"
            raise ArtifactNotFoundError(msg) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            msg = f"no artifact stored under {key!r}"
            raise ArtifactNotFoundError(msg) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return iter(())
        keys = (
            p.name.replace("%2F", "/").replace("%25", "%")
            for p in self.root.glob("*/*")
            if not p.name.startswith(".tmp-")
        )
        return iter(sorted(k for k in keys if k.startswith(prefix)))

    def describe(self) -> dict[str, str]:
        return {"root": str(self.root)}

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create the shard root {str(self.root)!r}: {exc.strerror}"
            raise StorageError(msg) from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            msg = f"the shard root {str(self.root)!r} is not writable"
            raise StorageError(msg)
