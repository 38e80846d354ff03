"""Job logs in the artifact store, as numbered chunks whose keys carry their byte range.

A chunk's key is ``experiments/<id>/logs/<seq:08d>-<start:012d>-<end:012d>``: the
listing alone gives every offset and the total size, so reads and appends need no
database. One writer per experiment at a time (the worker running it); readers may read
while it appends, since a chunk becomes visible only once complete.
"""

from __future__ import annotations

import bisect
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlrig.errors import ValidationError

if TYPE_CHECKING:
    from mlrig.artifacts import ArtifactStore

#: the largest chunk written; bigger appends are split
MAX_CHUNK_BYTES = 1024 * 1024
#: the default and the largest ``limit`` of one read
DEFAULT_READ_BYTES = 1024 * 1024
MAX_READ_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a log: bytes ``start`` (inclusive) to ``end`` (exclusive)."""

    seq: int
    start: int
    end: int
    key: str


def _experiment_key(experiment_id: uuid.UUID | str) -> str:
    try:
        return str(uuid.UUID(str(experiment_id)))
    except ValueError:
        msg = f"experiment id {experiment_id!r} is not a UUID"
        raise ValidationError(msg) from None


class LogStore:
    """Append to and read the stdout/stderr log of experiments."""

    def __init__(self, artifacts: ArtifactStore) -> None:
        self.artifacts = artifacts
        # experiment -> (next seq, size): an appending worker does not list every time
        self._tails: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def prefix(experiment_id: uuid.UUID | str) -> str:
        """The key prefix of an experiment's log chunks."""
        return f"experiments/{_experiment_key(experiment_id)}/logs/"

    def chunks(self, experiment_id: uuid.UUID | str) -> list[Chunk]:
        """The stored chunks, in order (from one listing)."""
        prefix = self.prefix(experiment_id)
        found = []
        for key in self.artifacts.list(prefix):
            seq, start, end = _parse(key[len(prefix) :])
            if seq is not None:
                found.append(Chunk(seq, start, end, key))
        found.sort(key=lambda c: c.seq)
        return found

    def size(self, experiment_id: uuid.UUID | str) -> int:
        """The log's length in bytes (0 when there is none)."""
        chunks = self.chunks(experiment_id)
        return chunks[-1].end if chunks else 0

    def append(self, experiment_id: uuid.UUID | str, data: bytes) -> int:
        """Store ``data`` after what is already there; return the new total size."""
        if not isinstance(data, bytes | bytearray | memoryview):
            msg = f"log data must be bytes, not {type(data).__name__}"
            raise ValidationError(msg)
        ident = _experiment_key(experiment_id)
        with self._lock:
            tail = self._tails.get(ident)
            if tail is None:
                chunks = self.chunks(ident)
                tail = (chunks[-1].seq + 1, chunks[-1].end) if chunks else (0, 0)
            seq, size = tail
            view = memoryview(data)
            for begin in range(0, len(view), MAX_CHUNK_BYTES):
                piece = view[begin : begin + MAX_CHUNK_BYTES]
                key = f"{self.prefix(ident)}{seq:08d}-{size:012d}-{size + len(piece):012d}"
                self.artifacts.put(key, piece)
                seq, size = seq + 1, size + len(piece)
            self._tails[ident] = (seq, size)
            return size

    def read(
        self, experiment_id: uuid.UUID | str, offset: int = 0, limit: int = DEFAULT_READ_BYTES
    ) -> tuple[bytes, int]:
        """Up to ``limit`` bytes from ``offset``; returns them and the offset to read next.

        At the end of the log, returns ``b""`` and ``offset`` unchanged (poll again later).
        """
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            msg = f"offset must be an integer >= 0, got {offset!r}"
            raise ValidationError(msg)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_READ_BYTES
        ):
            msg = f"limit must be an integer from 1 to {MAX_READ_BYTES}, got {limit!r}"
            raise ValidationError(msg)
        chunks = self.chunks(experiment_id)
        first = bisect.bisect_right([c.end for c in chunks], offset)
        parts: list[bytes] = []
        want = limit
        position = offset
        for chunk in chunks[first:]:
            if want <= 0:
                break
            data = self.artifacts.get_bytes(chunk.key)
            piece = data[position - chunk.start : position - chunk.start + want]
            parts.append(piece)
            position += len(piece)
            want -= len(piece)
        return b"".join(parts), position


def _parse(name: str) -> tuple[int | None, int, int]:
    """``00000003-000000001024-000000002048`` -> (3, 1024, 2048); (None, 0, 0) otherwise."""
    pieces = name.split("-")
    if len(pieces) != 3 or not all(p.isdigit() for p in pieces):
        return None, 0, 0
    seq, start, end = (int(p) for p in pieces)
    return seq, start, end
