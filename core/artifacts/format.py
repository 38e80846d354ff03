"""The stored object layout, versioned so that older artifacts stay readable.

An object is ``header || body`` where

- ``header`` = ``b"MLRA"``, a format version byte, a big-endian ``uint32`` length and
  that many bytes of compact JSON: ``{"compression": ..., "encryption": ... | null}``.
  It makes every object self-describing, so reading never depends on the current
  config (switching compression or encryption on later does not strand old artifacts).
- ``body`` = the artifact, compressed if so recorded, followed by a fixed trailer
  (``b"MLRT"``, ``uint64`` size, 32-byte sha256 of the original bytes), the whole then
  encrypted if so recorded. The trailer lets a reader verify an artifact with nothing
  but the object; putting it inside the encryption keeps the hash of a secret artifact
  secret.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from mlrig.errors import CorruptArtifactError, StorageError

MAGIC = b"MLRA"
FORMAT_VERSION = 1
COMPRESSIONS = ("none", "zstd")
_PREFIX = struct.Struct(">4sBI")
#: a sane bound, so a damaged length cannot make a reader allocate gigabytes
MAX_HEADER_BYTES = 64 * 1024

TRAILER_MAGIC = b"MLRT"
_TRAILER = struct.Struct(">4sQ32s")
TRAILER_BYTES = _TRAILER.size


@dataclass(frozen=True)
class Header:
    """What an object says about its own body."""

    compression: str
    encryption: dict[str, Any] | None
    raw: bytes

    @property
    def digest(self) -> bytes:
        """sha256 of the header bytes: bound into every encrypted segment."""
        return hashlib.sha256(self.raw).digest()


def build_header(compression: str, encryption: dict[str, Any] | None) -> Header:
    """Serialise a header for a new object."""
    body = json.dumps(
        {"compression": compression, "encryption": encryption},
        sort_keys=True,
        separators=(",", ":"),
    ).encode("utf-8")
    raw = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(body)) + body
    return Header(compression=compression, encryption=encryption, raw=raw)


def read_exactly(stream: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes, fewer only at the end of the stream."""
    parts: list[bytes] = []
    left = size
    while left > 0:
        piece = stream.read(left)
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def read_header(stream: BinaryIO, *, key: str) -> Header:
    """Read and check the header at the start of ``stream``."""
    prefix = read_exactly(stream, _PREFIX.size)
    if len(prefix) < _PREFIX.size or prefix[:4] != MAGIC:
        msg = f"object {key!r} is not an mlrig artifact (no {MAGIC!r} header) or is truncated"
        raise CorruptArtifactError(msg, details={"key": key})
    _, version, length = _PREFIX.unpack(prefix)
    if version > FORMAT_VERSION:
        msg = (
            f"artifact {key!r} uses storage format {version}, newer than this mlrig reads "
            f"(up to {FORMAT_VERSION}); upgrade mlrig"
        )
        raise StorageError(msg, details={"key": key})
    if version < 1 or length > MAX_HEADER_BYTES:
        msg = f"artifact {key!r} has a damaged header (version {version}, length {length})"
        raise CorruptArtifactError(msg, details={"key": key})
    body = read_exactly(stream, length)
    try:
        fields = json.loads(body)
        compression = fields["compression"]
        encryption = fields["encryption"]
    except (ValueError, KeyError, TypeError):
        fields = None
    if (
        fields is None
        or compression not in COMPRESSIONS
        or not (encryption is None or isinstance(encryption, dict))
    ):
        msg = f"artifact {key!r} has a damaged header"
        raise CorruptArtifactError(msg, details={"key": key})
    return Header(compression=compression, encryption=encryption, raw=prefix + body)


def pack_trailer(size: int, sha256: bytes) -> bytes:
    """The trailer recording the original size and sha256."""
    return _TRAILER.pack(TRAILER_MAGIC, size, sha256)


def unpack_trailer(raw: bytes, *, key: str) -> tuple[int, bytes]:
    """``(size, sha256)`` from a trailer."""
    if len(raw) != TRAILER_BYTES or raw[:4] != TRAILER_MAGIC:
        msg = f"artifact {key!r} is truncated or damaged: its trailer is missing"
        raise CorruptArtifactError(msg, details={"key": key})
    _, size, digest = _TRAILER.unpack(raw)
    return size, digest
