"""The artifact store: hashing, compression and encryption over any storage backend.

Backends only move opaque bytes (:class:`mlrig.contracts.StorageBackend`); everything
that makes an artifact trustworthy lives here, once, so third-party backends get it for
free. See :mod:`mlrig.artifacts.format` for the object layout.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from mlrig.artifacts import crypto
from mlrig.artifacts.atomic import ArtifactTransaction
from mlrig.artifacts.codec import decompressing_reader, make_compressor
from mlrig.artifacts.format import (
    COMPRESSIONS,
    Header,
    build_header,
    pack_trailer,
    read_header,
)
from mlrig.artifacts.keys import normalize_key, normalize_prefix
from mlrig.artifacts.record import StoredArtifact
from mlrig.artifacts.streams import DecryptingReader, TrailerSplitter, VerifyingReader
from mlrig.errors import CorruptArtifactError, EncryptionKeyError, ValidationError

if TYPE_CHECKING:
    from mlrig.config import StorageSection
    from mlrig.contracts.storage import StorageBackend

DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
#: plaintext bytes per encrypted segment: small enough to keep memory flat, large
#: enough that the 16-byte tag and per-call overhead do not matter
DEFAULT_SEGMENT_SIZE = 1024 * 1024
_SEGMENT_BOUNDS = (1024, 64 * 1024 * 1024)
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")

Source = BinaryIO | bytes | bytearray | memoryview | os.PathLike[str]


class ArtifactStore:
    """Stores artifacts by key over a :class:`~mlrig.contracts.StorageBackend`.

    Writes follow the store's settings (compression, encryption); reads follow each
    object's own header, so artifacts written under older settings stay readable as long
    as the master key they were encrypted with is configured.

    :param backend: where the bytes go.
    :param compression: ``"none"`` or ``"zstd"``, for new artifacts.
    :param compression_level: zstd level, 1 (fast) to 22 (small).
    :param encrypt: encrypt new artifacts with AES-256-GCM (needs ``master_key``).
    :param master_key: 32 raw bytes, or base64/hex text; also needed to read encrypted
        artifacts when ``encrypt`` is off.
    :param chunk_size: bytes read from a source per step.
    :param segment_size: plaintext bytes per encrypted segment.
    """

    def __init__(
        self,
        backend: StorageBackend,
        *,
        compression: str = "none",
        compression_level: int = 3,
        encrypt: bool = False,
        master_key: bytes | str | None = None,
        previous_master_keys: Sequence[bytes | str] = (),
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        if compression not in COMPRESSIONS:
            msg = f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}"
            raise ValidationError(msg)
        if not _SEGMENT_BOUNDS[0] <= segment_size <= _SEGMENT_BOUNDS[1]:
            low, high = _SEGMENT_BOUNDS
            msg = f"segment_size {segment_size} is outside {low}..{high}"
            raise ValidationError(msg)
        if chunk_size < 1:
            msg = f"chunk_size must be positive, not {chunk_size}"
            raise ValidationError(msg)
        master_key = _master_key(master_key)
        previous = [k for k in map(_master_key, previous_master_keys) if k is not None]
        if encrypt and master_key is None:
            msg = (
                "[storage] encryption = true needs a master key: set [storage] master_key "
                f"or MLRIG_STORAGE__MASTER_KEY; {crypto.KEY_HELP}"
            )
            raise EncryptionKeyError(msg)
        self.backend = backend
        self.compression = compression
        self.compression_level = compression_level
        self.encrypt = encrypt
        self.chunk_size = chunk_size
        self.segment_size = segment_size
        self._master_key = master_key
        #: every key an object may be encrypted with, by fingerprint (the current one too)
        keys = [*previous, master_key] if master_key is not None else previous
        self._keyring = {crypto.master_key_id(k): k for k in keys}

    @classmethod
    def from_settings(cls, backend: StorageBackend, section: StorageSection) -> ArtifactStore:
        """Build the store from the ``[storage]`` section of the config."""
        secret = section.master_key.get_secret_value() if section.master_key else None
        return cls(
            backend,
            compression=section.compression,
            compression_level=section.compression_level,
            encrypt=section.encryption,
            master_key=secret or None,
            previous_master_keys=[k.get_secret_value() for k in section.previous_master_keys],
            chunk_size=section.chunk_size,
        )

    def describe(self) -> dict[str, Any]:
        """Settings and backend facts for health and ``config show`` (no secrets)."""
        return {
            "compression": self.compression,
            "encryption": self.encrypt,
            "master_key_id": self.master_key_id,
            "previous_master_key_ids": sorted(set(self._keyring) - {self.master_key_id}),
            "chunk_size": self.chunk_size,
            "backend": self.backend.describe(),
        }

    @property
    def master_key_id(self) -> str | None:
        """The fingerprint of the master key new artifacts are encrypted with."""
        return crypto.master_key_id(self._master_key) if self._master_key else None

    # --- writing ------------------------------------------------------------------------

    def put(self, key: str, source: Source) -> StoredArtifact:
        """Store ``source`` under ``key``, streaming, and return what to record.

        ``source`` is ``bytes``, a binary file object (read from its current position,
        left open) or a :class:`~pathlib.Path`. It is read ``chunk_size`` bytes at a time;
        the object becomes visible only once it is complete. Overwrites an existing key.
        """
        key = normalize_key(key)
        with _open_source(source) as reader:
            header, encryption, encryptor = self._new_envelope()
            compressor = make_compressor(self.compression, self.compression_level)
            digest = hashlib.sha256()
            size = 0
            with self.backend.open_write(key) as out:
                sink = _CountingWriter(out)
                sink.write(header.raw)
                emit: Callable[[bytes], None] = sink.write
                if encryptor is not None:
                    emit = lambda data: sink.write_all(encryptor.update(data))  # noqa: E731
                while True:
                    chunk = reader.read(self.chunk_size)
                    _check_chunk(chunk)
                    if not chunk:
                        break
                    digest.update(chunk)
                    size += len(chunk)
                    emit(compressor.compress(chunk))
                emit(compressor.flush())
                emit(pack_trailer(size, digest.digest()))
                if encryptor is not None:
                    sink.write(encryptor.finish())
        return StoredArtifact(
            key=key,
            size=size,
            sha256=digest.hexdigest(),
            stored_size=sink.count,
            compression=self.compression,
            encryption=encryption,
        )

    def _new_envelope(
        self,
    ) -> tuple[Header, dict[str, Any] | None, crypto.SegmentEncryptor | None]:
        if not self.encrypt:
            return build_header(self.compression, None), None, None
        assert self._master_key is not None  # checked in __init__
        data_key = crypto.new_data_key()
        prefix = crypto.new_nonce_prefix()
        encryption = {
            "algorithm": crypto.ALGORITHM,
            "key_wrap": crypto.KEY_WRAP,
            "wrapped_key": _b64(crypto.wrap_data_key(self._master_key, data_key)),
            "master_key_id": crypto.master_key_id(self._master_key),
            "segment_size": self.segment_size,
            "nonce_prefix": _b64(prefix),
        }
        header = build_header(self.compression, encryption)
        encryptor = crypto.SegmentEncryptor(data_key, prefix, header.digest, self.segment_size)
        return header, encryption, encryptor

    @contextlib.contextmanager
    def atomic(self) -> Iterator[ArtifactTransaction]:
        """A block whose uploads are deleted again if it raises.

        ``with store.atomic() as tx: stored = tx.put(key, f); db.add(row(stored))`` —
        if the database write fails, the object goes too. Keys must be new (see
        :class:`ArtifactTransaction`).
        """
        tx = ArtifactTransaction(self)
        try:
            yield tx
        except BaseException:
            tx.rollback()
            raise

    # --- reading ------------------------------------------------------------------------

    def open(
        self,
        key: str,
        *,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
    ) -> BinaryIO:
        """A readable binary stream of the original bytes of ``key``, verified as it goes.

        Decrypts and decompresses on the fly. Reading to the end checks the size and
        sha256 recorded in the object, and ``expected_*`` if given (the database's
        values); a mismatch or any authentication failure raises
        :class:`~mlrig.errors.CorruptArtifactError`. A stream closed before the end is
        not verified, so never trust a partial read.

        :raises ArtifactNotFoundError: nothing is stored under ``key``.
        :raises EncryptionKeyError: the artifact is encrypted and the configured master
            key is missing or another one.
        """
        key = normalize_key(key)
        if expected_sha256 is not None and not _SHA256_HEX.match(expected_sha256):
            msg = f"expected_sha256 {expected_sha256!r} is not 64 hex digits"
            raise ValidationError(msg)
        raw = self.backend.open_read(key)
        try:
            header = read_header(raw, key=key)
            body: BinaryIO = raw
            if header.encryption is not None:
                body = DecryptingReader(raw, self._decryptor(header, key))  # type: ignore[assignment]
            splitter = TrailerSplitter(body, key=key)
            data = decompressing_reader(splitter, header.compression)  # type: ignore[arg-type]
            verifying = VerifyingReader(
                data,
                key=key,
                trailer=splitter.trailer,
                expected_size=expected_size,
                expected_sha256=expected_sha256,
                on_close=raw.close,
            )
        except BaseException:
            raw.close()
            raise
        return io.BufferedReader(verifying, buffer_size=min(self.chunk_size, 1024 * 1024))  # type: ignore[return-value]

    def _decryptor(self, header: Header, key: str) -> crypto.SegmentDecryptor:
        enc = header.encryption or {}
        written_id = enc.get("master_key_id")
        if not self._keyring:
            msg = (
                f"artifact {key!r} is encrypted (master key {written_id}) but no master key "
                "is configured; set [storage] master_key or MLRIG_STORAGE__MASTER_KEY to "
                "the key it was written with"
            )
            raise EncryptionKeyError(msg, details={"key": key, "master_key_id": written_id})
        master_key = self._keyring.get(str(written_id))
        if master_key is None:
            msg = (
                f"artifact {key!r} was encrypted with master key {written_id}, but the "
                f"configured master keys are {', '.join(sorted(self._keyring))}; configure "
                "the key it was written with (as master_key, or in previous_master_keys)"
            )
            raise EncryptionKeyError(msg, details={"key": key, "master_key_id": written_id})
        try:
            if enc["algorithm"] != crypto.ALGORITHM or enc["key_wrap"] != crypto.KEY_WRAP:
                raise ValueError(enc["algorithm"])
            wrapped = base64.b64decode(enc["wrapped_key"], validate=True)
            prefix = base64.b64decode(enc["nonce_prefix"], validate=True)
            segment_size = int(enc["segment_size"])
            if len(prefix) != crypto.NONCE_PREFIX_BYTES:
                raise ValueError(prefix)
            if not _SEGMENT_BOUNDS[0] <= segment_size <= _SEGMENT_BOUNDS[1]:
                raise ValueError(segment_size)
        except (KeyError, TypeError, ValueError, binascii.Error):
            msg = f"artifact {key!r} has a damaged or unsupported encryption header"
            raise CorruptArtifactError(msg, details={"key": key}) from None
        data_key = crypto.unwrap_data_key(master_key, wrapped, key=key)
        return crypto.SegmentDecryptor(data_key, prefix, header.digest, segment_size, key=key)

    def header(self, key: str) -> Header:
        """The header of ``key`` alone: how it is compressed and encrypted (no key needed)."""
        key = normalize_key(key)
        with self.backend.open_read(key) as raw:
            return read_header(raw, key=key)

    def rewrite(self, key: str) -> StoredArtifact:
        """Store ``key`` again under the current settings (compression, master key).

        The original bytes are read, verified to the end, through a temporary file that
        spills to disk past 64 MiB, and only then written back over the key: a failed read
        (a missing key, corruption) leaves the object as it was.
        """
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as spool:
            with self.open(key) as original:
                shutil.copyfileobj(original, spool, self.chunk_size)
            spool.seek(0)
            return self.put(key, spool)

    def get_bytes(
        self, key: str, *, expected_sha256: str | None = None, expected_size: int | None = None
    ) -> bytes:
        """The whole artifact in memory (for small ones; stream big ones with :meth:`open`)."""
        with self.open(key, expected_sha256=expected_sha256, expected_size=expected_size) as f:
            return f.read()

    def download(
        self,
        key: str,
        path: str | os.PathLike[str],
        *,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
    ) -> Path:
        """Stream ``key`` into the file ``path``; it appears there only once verified."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.urandom(4).hex()}.part")
        try:
            with (
                self.open(key, expected_sha256=expected_sha256, expected_size=expected_size) as src,
                partial.open("wb") as dst,
            ):
                shutil.copyfileobj(src, dst, self.chunk_size)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    # --- bookkeeping --------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        return self.backend.exists(normalize_key(key))

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        self.backend.delete(normalize_key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the stored keys starting with ``prefix``, sorted."""
        return self.backend.list(normalize_prefix(prefix))


class _CountingWriter:
    """Counts the bytes that reach the backend (the stored size)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.count = 0

    def write(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self.count += len(data)

    def write_all(self, pieces: Iterator[bytes]) -> None:
        for piece in pieces:
            self.write(piece)


def _check_chunk(chunk: object) -> None:
    if chunk is None:
        msg = "the source returned None (a non-blocking stream?); give a blocking binary file"
        raise ValidationError(msg)
    if not isinstance(chunk, bytes | bytearray | memoryview):
        msg = f"the source returned {type(chunk).__name__}, not bytes; open files in 'rb' mode"
        raise ValidationError(msg)


@contextlib.contextmanager
def _open_source(source: Source) -> Iterator[BinaryIO]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield io.BytesIO(source)
    elif isinstance(source, str):
        msg = (
            f"source {source[:60]!r} is a str; pass bytes, a binary file, "
            "or Path(...) for a file name"
        )
        raise ValidationError(msg)
    elif isinstance(source, os.PathLike):
        path = Path(source)
        try:
            handle = path.open("rb")
        except OSError as exc:
            msg = f"cannot read source file {str(path)!r}: {exc.strerror}"
            raise ValidationError(msg) from None
        with handle:
            yield handle
    elif callable(getattr(source, "read", None)):
        yield source
    else:
        msg = f"source must be bytes, a binary file or a Path, not {type(source).__name__}"
        raise ValidationError(msg)


def _master_key(key: bytes | str | None) -> bytes | None:
    """A master key as 32 raw bytes (from bytes, base64 or hex text); ``None`` if unset."""
    if isinstance(key, str):
        key = crypto.parse_master_key(key) if key.strip() else None
    if key is not None and len(key) != crypto.KEY_BYTES:
        msg = f"master key must be {crypto.KEY_BYTES} bytes, not {len(key)}"
        raise EncryptionKeyError(msg)
    return key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
