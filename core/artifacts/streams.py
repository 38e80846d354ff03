"""The read side as a chain of small raw streams.

``backend object -> [DecryptingReader] -> TrailerSplitter -> [zstd] -> VerifyingReader``.
Each stage holds at most about one segment or one read, so memory stays flat whatever
the artifact's size; the last stage raises :class:`CorruptArtifactError` when the bytes
do not add up.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import BinaryIO

from mlrig.artifacts.codec import DecompressionError
from mlrig.artifacts.crypto import SegmentDecryptor
from mlrig.artifacts.format import TRAILER_BYTES, read_exactly, unpack_trailer
from mlrig.errors import CorruptArtifactError

_BLOCK = 1024 * 1024


class _ChunkReader(io.RawIOBase):
    """A raw stream served from chunks that a subclass produces on demand."""

    def __init__(self) -> None:
        self._chunk = memoryview(b"")

    def _next_chunk(self) -> bytes:
        """The next chunk; ``b""`` at the end."""
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._chunk:
            chunk = self._next_chunk()
            if not chunk:
                return 0
            self._chunk = memoryview(chunk)
        size = min(len(buffer), len(self._chunk))
        memoryview(buffer).cast("B")[:size] = self._chunk[:size]
        self._chunk = self._chunk[size:]
        return size


class DecryptingReader(_ChunkReader):
    """Decrypts sealed segments read from ``source``, one segment at a time."""

    def __init__(self, source: BinaryIO, decryptor: SegmentDecryptor) -> None:
        super().__init__()
        self._source = source
        self._decryptor = decryptor

    def _next_chunk(self) -> bytes:
        while True:
            sealed = read_exactly(self._source, self._decryptor.sealed_size)
            if self._decryptor.done:
                self._decryptor.open(sealed)  # raises on data after the final segment
                return b""
            plain = self._decryptor.open(sealed)
            if plain or self._decryptor.done:
                return plain


class TrailerSplitter(_ChunkReader):
    """Passes the body through but holds back its last bytes: the trailer."""

    def __init__(self, source: BinaryIO, *, key: str) -> None:
        super().__init__()
        self._source = source
        self._key = key
        self._held = b""
        self._trailer: tuple[int, bytes] | None = None

    def _next_chunk(self) -> bytes:
        if self._trailer is not None:
            return b""
        while True:
            block = self._source.read(_BLOCK)
            if not block:
                self._trailer = unpack_trailer(self._held, key=self._key)
                return b""
            data = self._held + block
            self._held = data[-TRAILER_BYTES:]
            out = data[:-TRAILER_BYTES]
            if out:
                return out

    def trailer(self) -> tuple[int, bytes]:
        """``(size, sha256)`` recorded at write time; reads past any body left unread."""
        while self._trailer is None:
            self._chunk = memoryview(b"")
            self._next_chunk()
        return self._trailer


class VerifyingReader(_ChunkReader):
    """Hashes what passes; at the end compares with the trailer and the caller's values."""

    def __init__(
        self,
        source: BinaryIO,
        *,
        key: str,
        trailer: Callable[[], tuple[int, bytes]],
        expected_size: int | None,
        expected_sha256: str | None,
        on_close: Callable[[], None],
    ) -> None:
        super().__init__()
        self._source = source
        self._key = key
        self._trailer = trailer
        self._expected_size = expected_size
        self._expected_sha256 = expected_sha256.lower() if expected_sha256 else None
        self._on_close = on_close
        self._hash = hashlib.sha256()
        self._size = 0
        self._verified = False

    def _corrupt(self, what: str) -> CorruptArtifactError:
        msg = f"artifact {self._key!r} is corrupt: {what}; restore it or upload it again"
        return CorruptArtifactError(msg, details={"key": self._key})

    def _next_chunk(self) -> bytes:
        if self._verified:
            return b""
        try:
            chunk = self._source.read(_BLOCK)
        except DecompressionError as exc:
            raise self._corrupt(f"zstd could not decompress it ({exc})") from None
        if chunk:
            self._size += len(chunk)
            if self._expected_size is not None and self._size > self._expected_size:
                raise self._corrupt(f"it is longer than the recorded {self._expected_size} bytes")
            self._hash.update(chunk)
            return chunk
        self._verify()
        return b""

    def _verify(self) -> None:
        size, digest = self._trailer()
        found = self._hash.hexdigest()
        if self._size != size or self._hash.digest() != digest:
            raise self._corrupt(
                f"read {self._size} bytes with sha256 {found}, "
                f"its trailer says {size} bytes with sha256 {digest.hex()}"
            )
        if self._expected_size is not None and self._size != self._expected_size:
            raise self._corrupt(f"read {self._size} bytes, expected {self._expected_size}")
        if self._expected_sha256 is not None and found != self._expected_sha256:
            raise self._corrupt(f"sha256 is {found}, expected {self._expected_sha256}")
        self._verified = True

    def close(self) -> None:
        if not self.closed:
            try:
                self._on_close()
            finally:
                super().close()
