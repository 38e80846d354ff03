"""Streaming compression: zstd or nothing, behind one small interface."""

from __future__ import annotations

from typing import BinaryIO, Protocol

import zstandard

from mlrig.errors import ValidationError

#: compressed bytes zstd pulls from the stream below per refill
_READ_SIZE = 256 * 1024


class Compressor(Protocol):
    """Feed pieces, get compressed pieces; :meth:`flush` ends the stream."""

    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def make_compressor(compression: str, level: int) -> Compressor:
    """A streaming compressor for ``compression`` (``"none"`` or ``"zstd"``)."""
    if compression == "none":
        return _Identity()
    if compression == "zstd":
        # The frame checksum catches damage in compressed-but-unencrypted objects early.
        return zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()
    msg = f"unknown compression {compression!r}; use 'none' or 'zstd'"
    raise ValidationError(msg)


def decompressing_reader(source: BinaryIO, compression: str) -> BinaryIO:
    """A reader that yields ``source`` decompressed.

    zstd's stream reader produces at most what each ``read(n)`` asks for, so a highly
    compressible artifact cannot balloon in memory.
    """
    if compression == "none":
        return source
    reader = zstandard.ZstdDecompressor().stream_reader(
        source, read_size=_READ_SIZE, read_across_frames=False, closefd=False
    )
    return reader  # type: ignore[return-value]


#: what zstd raises on damaged input (re-exported so callers need not import zstandard)
DecompressionError = zstandard.ZstdError
