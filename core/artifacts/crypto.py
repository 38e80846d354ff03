"""Envelope encryption at rest: AES-256-GCM over fixed-size segments.

Each artifact gets a fresh random 256-bit data key, used for that artifact only and
stored wrapped (AES-256-GCM) by the master key from the config. The (compressed) body is
cut into segments of ``segment_size`` bytes, each sealed on its own so a reader can
stream and check as it goes. A segment's nonce is a random per-artifact prefix plus the
segment counter, and its associated data binds the artifact header, the segment index
and a "final" flag: reordered, dropped, repeated or truncated segments, and a header
edited to claim other settings, all fail authentication.

Segments are ``segment_size`` bytes except the last, which is always shorter (empty if
the body is a whole number of segments). So a full-size segment followed by the end of
the object means the object was cut at a segment boundary, and no lookahead is needed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mlrig.errors import CorruptArtifactError, EncryptionKeyError, ValidationError

ALGORITHM = "AES-256-GCM"
KEY_WRAP = "AES-256-GCM"
KEY_BYTES = 32
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 8
_WRAP_NONCE_BYTES = 12
_WRAP_AAD = b"mlrig artifact data key v1"
_KEY_ID_LABEL = b"mlrig master key id v1"
#: a segment counter fills the last four bytes of the nonce
MAX_SEGMENTS = 2**32 - 1

KEY_HELP = "generate one with: mlrig storage gen-key"


def generate_master_key() -> str:
    """A new random 256-bit master key as base64 text, for ``[storage] master_key``."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def parse_master_key(text: str) -> bytes:
    """Decode a master key given as base64 (44 characters) or hex (64 characters).

    The error never repeats the value: it is a secret, and a near miss is still one.
    """
    value = text.strip()
    raw: bytes | None = None
    if len(value) == 2 * KEY_BYTES:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != KEY_BYTES:
        msg = (
            f"[storage] master_key is not a {KEY_BYTES}-byte key in base64 (44 characters) "
            f"or hex (64 characters); found {len(value)} characters; {KEY_HELP}"
        )
        raise EncryptionKeyError(msg)
    return raw


def master_key_id(master_key: bytes) -> str:
    """A short public fingerprint of a master key, to tell keys apart in errors.

    An HMAC, not a plain hash, so it reveals nothing usable about the key.
    """
    return hmac.new(master_key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def new_data_key() -> bytes:
    """A fresh random data key for one artifact."""
    return AESGCM.generate_key(bit_length=8 * KEY_BYTES)


def new_nonce_prefix() -> bytes:
    """A random per-artifact nonce prefix (defence in depth: keys are never reused)."""
    return os.urandom(NONCE_PREFIX_BYTES)


def wrap_data_key(master_key: bytes, data_key: bytes) -> bytes:
    """Seal ``data_key`` with the master key: ``nonce || ciphertext || tag``."""
    nonce = os.urandom(_WRAP_NONCE_BYTES)
    return nonce + AESGCM(master_key).encrypt(nonce, data_key, _WRAP_AAD)


def unwrap_data_key(master_key: bytes, wrapped: bytes, *, key: str) -> bytes:
    """Open a wrapped data key; a failure means the wrong master key or a damaged header."""
    nonce, sealed = wrapped[:_WRAP_NONCE_BYTES], wrapped[_WRAP_NONCE_BYTES:]
    try:
        data_key = AESGCM(master_key).decrypt(nonce, sealed, _WRAP_AAD)
    except (InvalidTag, ValueError):
        msg = (
            f"cannot unwrap the data key of artifact {key!r}: its header is damaged "
            "(the master key fingerprint matches)"
        )
        raise CorruptArtifactError(msg, details={"key": key}) from None
    if len(data_key) != KEY_BYTES:
        msg = f"artifact {key!r} holds a {len(data_key)}-byte data key, expected {KEY_BYTES}"
        raise CorruptArtifactError(msg, details={"key": key})
    return data_key


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack(">QB", index, 1 if final else 0)


class SegmentEncryptor:
    """Turns a stream of plaintext pieces into sealed segments.

    :meth:`update` returns the segments completed so far; :meth:`finish` seals the
    final (short, maybe empty) segment. Memory held: less than one segment.
    """

    def __init__(
        self, data_key: bytes, nonce_prefix: bytes, header_digest: bytes, segment_size: int
    ) -> None:
        self._aead = AESGCM(data_key)
        self._prefix = nonce_prefix
        self._digest = header_digest
        self._size = segment_size
        self._pending = bytearray()
        self._index = 0

    def _seal(self, plain: bytes | memoryview, final: bool) -> bytes:
        if self._index > MAX_SEGMENTS:
            msg = (
                f"artifact too large for {self._size}-byte encryption segments "
                f"({MAX_SEGMENTS} at most); use a larger segment_size"
            )
            raise ValidationError(msg)
        sealed = self._aead.encrypt(
            _nonce(self._prefix, self._index), bytes(plain), _aad(self._digest, self._index, final)
        )
        self._index += 1
        return sealed

    def update(self, data: bytes) -> Iterator[bytes]:
        """Feed plaintext; yield every segment that is now complete."""
        view = memoryview(data)
        if self._pending:
            take = self._size - len(self._pending)
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < self._size:
                return
            yield self._seal(self._pending, final=False)
            self._pending = bytearray()
        while len(view) >= self._size:
            yield self._seal(view[: self._size], final=False)
            view = view[self._size :]
        self._pending += view

    def finish(self) -> bytes:
        """Seal and return the final segment (shorter than a full one, possibly empty)."""
        sealed = self._seal(self._pending, final=True)
        self._pending = bytearray()
        return sealed


class SegmentDecryptor:
    """Opens sealed segments in order and notices truncation and tampering."""

    def __init__(
        self,
        data_key: bytes,
        nonce_prefix: bytes,
        header_digest: bytes,
        segment_size: int,
        *,
        key: str,
    ) -> None:
        self._aead = AESGCM(data_key)
        self._prefix = nonce_prefix
        self._digest = header_digest
        self._key = key
        self.sealed_size = segment_size + TAG_BYTES
        self._index = 0
        self.done = False

    def open(self, sealed: bytes) -> bytes:
        """Decrypt the next segment, read as up to :attr:`sealed_size` bytes.

        A short read is the final segment; a full one is not. An empty read before the
        final segment means the object was cut off.
        """
        if self.done:
            if sealed:
                msg = f"artifact {self._key!r} has data after its final encrypted segment"
                raise CorruptArtifactError(msg, details={"key": self._key})
            return b""
        if not sealed:
            msg = f"artifact {self._key!r} is truncated: its final encrypted segment is missing"
            raise CorruptArtifactError(msg, details={"key": self._key})
        final = len(sealed) < self.sealed_size
        try:
            plain = self._aead.decrypt(
                _nonce(self._prefix, self._index), sealed, _aad(self._digest, self._index, final)
            )
        except InvalidTag:
            msg = (
                f"artifact {self._key!r} failed authentication at encrypted segment "
                f"{self._index}: the stored bytes were altered, truncated or reordered"
            )
            raise CorruptArtifactError(msg, details={"key": self._key}) from None
        self._index += 1
        self.done = final
        return plain
