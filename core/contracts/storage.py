"""Contract of artifact storage backends (entry-point group ``mlrig.storage``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

from mlrig.contracts.base import Backend


class StorageBackend(Backend, ABC):
    """Put, get, list and delete opaque byte objects by key, streaming.

    Keys reach a backend already normalised by core (``a/b/c``: no leading slash, no
    ``..``, no empty segment), and hashing, compression and encryption happen above
    this contract, so a backend only moves bytes. A backend raises
    :class:`mlrig.errors.ArtifactNotFoundError` for a missing key and translates its
    library's other failures into :class:`mlrig.errors.StorageError`.
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
        """Facts for the health endpoint and ``mlrig config show`` (no secrets)."""
        return {}

    def check(self) -> None:
        """Raise :class:`mlrig.errors.StorageError` if the store cannot be reached."""
