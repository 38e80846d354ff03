"""Undo for uploads whose surrounding work failed (``ArtifactStore.atomic()``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from mlrig.artifacts.keys import normalize_key
from mlrig.errors import ConflictError, MlrigError

if TYPE_CHECKING:
    from mlrig.artifacts.record import StoredArtifact
    from mlrig.artifacts.store import ArtifactStore

log = logging.getLogger(__name__)


class ArtifactTransaction:
    """Uploads made inside ``with store.atomic() as tx:``, deleted again if the block fails.

    A transaction refuses to overwrite an existing key: rolling back deletes what it put,
    and deleting an object that was there before would lose data it never owned. Use
    fresh keys (a version or a UUID in the path).
    """

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store
        self._keys: list[str] = []
        self.stored: list[StoredArtifact] = []

    def put(self, key: str, source: BinaryIO | bytes | Path) -> StoredArtifact:
        """Like :meth:`ArtifactStore.put`, remembered for rollback; the key must be new."""
        key = normalize_key(key)
        if self._store.exists(key):
            msg = (
                f"artifact {key!r} already exists; an atomic() block only creates new "
                "objects, so that a rollback never deletes data it did not write"
            )
            raise ConflictError(msg, details={"key": key})
        # Remember the key before the upload: even an upload that fails half-way is
        # cleaned up (the backend normally leaves nothing, but a delete is cheap).
        self._keys.append(key)
        stored = self._store.put(key, source)
        self.stored.append(stored)
        return stored

    def rollback(self) -> None:
        """Delete every object put in this transaction; log, never raise, on failure.

        Called while another exception propagates, which must not be masked.
        """
        for key in reversed(self._keys):
            try:
                self._store.delete(key)
            except (MlrigError, OSError) as exc:
                log.error("could not delete artifact %r while rolling back: %s", key, exc)
        self._keys.clear()
        self.stored.clear()
