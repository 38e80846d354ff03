"""Contract of artifact storage backends (entry-point group ``mlrig.storage``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, Protocol, runtime_checkable

from mlrig.contracts.base import Backend
from mlrig.errors import ArtifactNotFoundError


class StorageBackend(Backend, ABC):
    """Put, get, list and delete opaque byte objects by key, streaming.

    Keys reach a backend already normalised by core (``a/b/c``: no leading slash, no
    ``..``, no empty segment), and hashing, compression and encryption happen above
    this contract, so a backend only moves bytes.

    What callers assume, and :class:`mlrig.testing.storage.StorageContract` checks:

    - **Threads and processes.** One instance is shared by the server's threads, and
      several processes (the server, workers, job processes, the CLI) use the same store
      at once, each with its own instance. Concurrent writes of different keys, and reads
      during writes, must be safe; for two writers of one key the last to finish wins.
      Nothing may be cached that another process could make stale (listings, sizes).
    - **Writes** (:meth:`open_write`): the object appears whole when the ``with`` block
      exits cleanly, and not before (not to :meth:`exists`, :meth:`list` or
      :meth:`open_read`). If the block raises, the exception comes out unchanged,
      nothing new is visible and an object already under the key stays as it was.
    - **Streaming.** Write and read chunk by chunk: a backend holds at most a few
      chunks or parts in memory, never the whole object (the suite measures the peak).
    - **Reads** (:meth:`open_read`): a forward-only stream; callers only ``read(n)``
      until ``b""`` and ``close()``, so it need not support ``seek``/``tell``.
    - **Listing** (:meth:`list`): ``prefix`` is a plain, case-sensitive string prefix
      (``_``, ``%``, ``*`` are ordinary characters: no SQL ``LIKE``, no glob); keys come
      sorted; the iterator may be lazy, and deleting keys it has already yielded while
      iterating (as ``mlrig storage gc`` does) must neither fail nor skip or repeat keys.
    - **Errors.** A missing key raises ``ArtifactNotFoundError(message, details={"key":
      key})``; a bad key ``InvalidKeyError``; every other failure of the library below
      (network, permissions, a missing bucket, a full disk) is translated at this
      boundary into ``StorageError(message, details={...})``, whose message says what to
      fix. Never let a library's own exception escape.
    - **describe()** returns plain JSON-able facts. Keys matching
      :data:`mlrig.testing.storage.SECRET_KEY_NAMES` (``secret``, ``password``,
      ``token``, ``credential``, ``private``, ``api_key``, ``access_key``, ``session``,
      ``key`` or ``*_key``) count as secrets and must be absent, ``None`` or ``"***"``.
    - **check()** really probes the store: pointed at a location that cannot work (a
      missing bucket, a root under a regular file) it raises ``StorageError``.
    """

    @abstractmethod
    def open_write(self, key: str) -> AbstractContextManager[BinaryIO]:
        """Return a context manager yielding a binary file to write ``key`` to.

        The object becomes visible (to :meth:`open_read`, :meth:`exists`, :meth:`list`)
        only when the block exits without an exception; if it raises, nothing is left
        behind. Writes arrive in chunks: never buffer the whole object in memory.
        """

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """Return a readable binary file of the object stored under ``key``."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The size in bytes of the object stored under ``key``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys that start with ``prefix`` (``""``: every key), sorted."""

    def describe(self) -> dict[str, Any]:
        """Facts for the health endpoint and ``mlrig config show`` (no secrets, see above)."""
        return {}

    def modified(self, key: str) -> datetime | None:
        """When the object under ``key`` was last written (timezone-aware), if known.

        ``mlrig storage gc`` never removes an object younger than its grace period, and
        one whose age is unknown (this default, ``None``) only with ``--older-than 0``.

        :raises ArtifactNotFoundError: nothing is stored under ``key``.
        """
        if not self.exists(key):
            msg = f"no artifact {key!r}"
            raise ArtifactNotFoundError(msg, details={"key": key})
        return None

    def check(self) -> None:
        """Raise :class:`mlrig.errors.StorageError` if the store cannot be reached."""


@dataclass(frozen=True)
class PendingUpload:
    """A write that began and never finished (a killed process's multipart upload, a
    temporary file): invisible to :meth:`StorageBackend.list`, but it holds space."""

    #: the key it was writing to
    key: str
    #: what the backend needs to abort it (an S3 upload id, a temporary file name)
    upload_id: str
    #: when it began (timezone-aware), if known
    started: datetime | None
    #: bytes it holds so far, if known
    size: int | None = None


@runtime_checkable
class StaleUploads(Protocol):
    """Optional capability of a :class:`StorageBackend`: unfinished writes it can list
    and abort (S3 multipart uploads, local temporary files).

    ``mlrig storage gc`` uses it when the backend has it; a backend whose writes leave
    nothing behind when their process dies needs neither method.
    """

    def pending_uploads(self, *, started_before: datetime) -> Iterator[PendingUpload]:
        """Yield the unfinished writes that began before ``started_before``."""
        ...

    def abort_upload(self, upload: PendingUpload) -> None:
        """Abort ``upload`` and free what it holds; an upload already gone is not an error."""
        ...
