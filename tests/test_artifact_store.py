"""ArtifactStore details: envelope encryption, the object format, streaming, atomicity.

The backend-independent promises run in the storage contract (test_storage_*.py); these
tests look inside the stored objects, over the local backend.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from mlrig.artifacts import (
    ArtifactStore,
    StoredArtifact,
    generate_master_key,
    master_key_id,
    parse_master_key,
)
from mlrig.artifacts.format import FORMAT_VERSION, read_header
from mlrig.config import StorageSection
from mlrig.errors import (
    ConflictError,
    CorruptArtifactError,
    EncryptionKeyError,
    InvalidKeyError,
    StorageError,
    ValidationError,
)
from mlrig.plugins.storage_local import LocalStorage
from mlrig.testing.storage import GeneratedStream, sample_bytes

KiB = 1024
MiB = 1024 * KiB
SEGMENT = 1024
SEALED = SEGMENT + 16


@pytest.fixture
def backend(tmp_path: Path) -> LocalStorage:
    return LocalStorage.from_options({"root": str(tmp_path / "store")}, where="storage.local")


@pytest.fixture
def master() -> str:
    return generate_master_key()


def encrypted_store(backend: LocalStorage, master: str, **kwargs: Any) -> ArtifactStore:
    return ArtifactStore(backend, encrypt=True, master_key=master, segment_size=SEGMENT, **kwargs)


def raw_object(backend: LocalStorage, key: str) -> bytes:
    with backend.open_read(key) as f:
        return f.read()


def write_raw(backend: LocalStorage, key: str, data: bytes) -> None:
    with backend.open_write(key) as f:
        f.write(data)


def split_object(raw: bytes, key: str = "k") -> tuple[bytes, list[bytes]]:
    """``(header, sealed segments)`` of an encrypted object."""
    header = read_header(io.BytesIO(raw), key=key)
    body = raw[len(header.raw) :]
    return header.raw, [body[i : i + SEALED] for i in range(0, len(body), SEALED)]


# --- master keys -------------------------------------------------------------------------


def test_generated_keys_are_random_256_bit_base64() -> None:
    first, second = generate_master_key(), generate_master_key()
    assert first != second
    assert len(base64.b64decode(first)) == 32
    assert parse_master_key(first) == base64.b64decode(first)


def test_master_key_accepts_hex_and_urlsafe_base64() -> None:
    raw = bytes(range(32))
    assert parse_master_key(raw.hex()) == raw
    assert parse_master_key(f"  {raw.hex().upper()}\n") == raw
    assert parse_master_key(base64.urlsafe_b64encode(raw).decode()) == raw


@pytest.mark.parametrize(
    "text", ["short", base64.b64encode(b"x" * 16).decode(), "z" * 64, "é" * 44]
)
def test_bad_master_key_is_clear_and_not_echoed(text: str) -> None:
    with pytest.raises(EncryptionKeyError, match="32-byte key") as info:
        parse_master_key(text)
    assert text not in info.value.message
    assert "mlrig storage gen-key" in info.value.message


def test_key_id_is_stable_and_distinct() -> None:
    key = parse_master_key(generate_master_key())
    assert master_key_id(key) == master_key_id(key)
    assert master_key_id(key) != master_key_id(parse_master_key(generate_master_key()))
    assert key.hex()[:16] not in master_key_id(key)


# --- settings ----------------------------------------------------------------------------


def test_from_settings_encryption_without_key(backend: LocalStorage) -> None:
    with pytest.raises(EncryptionKeyError) as info:
        ArtifactStore.from_settings(backend, StorageSection(encryption=True))
    assert "[storage] master_key" in info.value.message
    assert "MLRIG_STORAGE__MASTER_KEY" in info.value.message


def test_from_settings(backend: LocalStorage, master: str) -> None:
    section = StorageSection(
        compression="zstd",
        compression_level=5,
        encryption=True,
        master_key=master,
        chunk_size=128 * KiB,
    )
    store = ArtifactStore.from_settings(backend, section)
    assert (store.compression, store.compression_level, store.encrypt, store.chunk_size) == (
        "zstd",
        5,
        True,
        128 * KiB,
    )
    stored = store.put("a.bin", b"abc" * 1000)
    assert stored.encryption is not None
    assert stored.encryption["master_key_id"] == master_key_id(parse_master_key(master))
    assert master not in json.dumps(store.describe())


def test_from_settings_bad_key_text(backend: LocalStorage) -> None:
    with pytest.raises(EncryptionKeyError, match=r"found 7 characters"):
        ArtifactStore.from_settings(backend, StorageSection(master_key="not-b64"))


# --- what put returns and what is stored ---------------------------------------------------


def test_metadata_round_trip_and_json(backend: LocalStorage, master: str) -> None:
    stored = encrypted_store(backend, master, compression="zstd").put("m/1.bin", b"x" * 5000)
    metadata = stored.to_metadata()
    assert json.loads(json.dumps(metadata)) == metadata
    assert metadata["format"] == FORMAT_VERSION
    assert StoredArtifact.from_metadata(metadata) == stored
    enc = metadata["encryption"]
    assert enc["algorithm"] == "AES-256-GCM" and enc["segment_size"] == SEGMENT
    assert len(base64.b64decode(enc["wrapped_key"])) == 12 + 32 + 16  # nonce, key, tag
    with pytest.raises(AttributeError):
        stored.size = 1  # type: ignore[misc]


def test_fresh_data_key_per_artifact(backend: LocalStorage, master: str) -> None:
    store = encrypted_store(backend, master)
    first = store.put("a.bin", b"same bytes" * 100)
    second = store.put("b.bin", b"same bytes" * 100)
    assert first.sha256 == second.sha256
    assert first.encryption and second.encryption
    assert first.encryption["wrapped_key"] != second.encryption["wrapped_key"]
    assert raw_object(backend, "a.bin")[-200:] != raw_object(backend, "b.bin")[-200:]


def test_objects_are_self_describing(backend: LocalStorage, master: str) -> None:
    encrypted_store(backend, master, compression="zstd").put("old.bin", b"old settings" * 99)
    # Settings changed since: no compression, no encryption, but the key is still there.
    reader = ArtifactStore(backend, master_key=master)
    assert reader.get_bytes("old.bin") == b"old settings" * 99


def test_plain_object_layout(backend: LocalStorage) -> None:
    stored = ArtifactStore(backend).put("p.bin", b"hello")
    raw = raw_object(backend, "p.bin")
    header = read_header(io.BytesIO(raw), key="p.bin")
    assert raw.startswith(b"MLRA\x01")
    assert (header.compression, header.encryption) == ("none", None)
    body = raw[len(header.raw) :]
    assert body == b"hello" + b"MLRT" + struct.pack(">Q", 5) + hashlib.sha256(b"hello").digest()
    assert stored.stored_size == len(raw)


# --- reading damaged or foreign objects ----------------------------------------------------


@pytest.fixture
def sealed(backend: LocalStorage, master: str) -> tuple[ArtifactStore, bytes, list[bytes]]:
    store = encrypted_store(backend, master)
    store.put("s.bin", sample_bytes(10 * SEGMENT, seed=9))  # + 44-byte trailer: 11 segments
    header, segments = split_object(raw_object(backend, "s.bin"))
    assert [len(s) for s in segments] == [SEALED] * 10 + [44 + 16]
    return store, header, segments


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h, s: h + b"".join([s[1], s[0], *s[2:]]), id="swap-segments"),
        pytest.param(lambda h, s: h + b"".join(s[:3] + s[4:]), id="drop-middle-segment"),
        pytest.param(lambda h, s: h + b"".join(s[:-1]), id="cut-at-segment-boundary"),
        pytest.param(lambda h, s: h + b"".join(s[:-1]) + s[-1][:5], id="final-segment-cut"),
        pytest.param(lambda h, s: h + b"".join(s) + b"more", id="data-after-final"),
        pytest.param(lambda h, s: h + b"".join(s[:-1]) + s[0][:60], id="replayed-final"),
        pytest.param(lambda h, s: h.replace(b'"none"', b'"zstd"') + b"".join(s), id="header"),
        pytest.param(lambda h, s: h, id="body-missing"),
    ],
)
def test_encrypted_tampering_is_detected(
    backend: LocalStorage, sealed: tuple[ArtifactStore, bytes, list[bytes]], tamper: Any
) -> None:
    store, header, segments = sealed
    write_raw(backend, "s.bin", tamper(header, segments))
    with pytest.raises(CorruptArtifactError):
        store.get_bytes("s.bin")


def test_damaged_wrapped_key_is_corruption_not_wrong_key(
    backend: LocalStorage, sealed: tuple[ArtifactStore, bytes, list[bytes]]
) -> None:
    store, header, segments = sealed
    enc = read_header(io.BytesIO(header), key="s").encryption
    assert enc is not None
    wrapped = bytearray(base64.b64decode(enc["wrapped_key"]))
    wrapped[20] ^= 1
    damaged = header.replace(enc["wrapped_key"].encode(), base64.b64encode(bytes(wrapped)))
    write_raw(backend, "s.bin", damaged + b"".join(segments))
    with pytest.raises(CorruptArtifactError, match="data key"):
        store.get_bytes("s.bin")


def test_wrong_master_key_names_both_fingerprints(backend: LocalStorage, master: str) -> None:
    encrypted_store(backend, master).put("w.bin", b"secret")
    other = generate_master_key()
    with pytest.raises(EncryptionKeyError) as info:
        encrypted_store(backend, other).open("w.bin")
    assert master_key_id(parse_master_key(master)) in info.value.message
    assert master_key_id(parse_master_key(other)) in info.value.message


def test_expected_values_are_checked(backend: LocalStorage) -> None:
    store = ArtifactStore(backend, compression="zstd")
    stored = store.put("e.bin", b"payload" * 100)
    assert store.get_bytes("e.bin", expected_sha256=stored.sha256.upper(), expected_size=700)
    with pytest.raises(CorruptArtifactError, match="expected"):
        store.get_bytes("e.bin", expected_sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(CorruptArtifactError, match="699"):
        store.get_bytes("e.bin", expected_size=699)
    with pytest.raises(CorruptArtifactError, match="expected 701"):
        store.get_bytes("e.bin", expected_size=701)
    with pytest.raises(ValidationError, match="64 hex"):
        store.open("e.bin", expected_sha256="abc")


def test_foreign_and_future_objects(backend: LocalStorage) -> None:
    write_raw(backend, "foreign.bin", b"PK\x03\x04 not ours")
    with pytest.raises(CorruptArtifactError, match="not an mlrig artifact"):
        ArtifactStore(backend).open("foreign.bin")
    write_raw(backend, "future.bin", b"MLRA\x09" + struct.pack(">I", 2) + b"{}")
    with pytest.raises(StorageError, match="upgrade mlrig") as info:
        ArtifactStore(backend).open("future.bin")
    assert not isinstance(info.value, CorruptArtifactError)


def test_download_only_leaves_verified_files(backend: LocalStorage, tmp_path: Path) -> None:
    store = ArtifactStore(backend, compression="zstd")
    stored = store.put("d.bin", sample_bytes(300 * KiB))
    target = store.download("d.bin", tmp_path / "out" / "d.bin", expected_sha256=stored.sha256)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == stored.sha256
    with pytest.raises(CorruptArtifactError):
        store.download("d.bin", tmp_path / "bad" / "d.bin", expected_size=1)
    assert list((tmp_path / "bad").iterdir()) == []  # neither the file nor a .part


# --- sources, keys ------------------------------------------------------------------------


def test_sources(backend: LocalStorage, tmp_path: Path) -> None:
    store = ArtifactStore(backend, chunk_size=1000)
    data = sample_bytes(5555)
    (tmp_path / "f.bin").write_bytes(data)
    assert store.put("path.bin", tmp_path / "f.bin").sha256 == hashlib.sha256(data).hexdigest()
    handle = io.BytesIO(b"skip:" + data)
    handle.read(5)  # read from the current position, as files do
    assert store.put("file.bin", handle).size == len(data)
    assert store.put("view.bin", memoryview(data)).size == len(data)
    assert store.get_bytes("path.bin") == store.get_bytes("file.bin") == data


def test_bad_sources_store_nothing(backend: LocalStorage, tmp_path: Path) -> None:
    store = ArtifactStore(backend)
    with pytest.raises(ValidationError, match="Path"):
        store.put("s.bin", "looks/like/a/path.bin")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="'rb'"):
        store.put("s.bin", io.StringIO("text"))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"missing\.bin"):
        store.put("s.bin", tmp_path / "missing.bin")
    assert list(store.list()) == []


def test_keys_are_checked_before_the_backend(backend: LocalStorage, tmp_path: Path) -> None:
    store = ArtifactStore(backend)
    with pytest.raises(InvalidKeyError):
        store.put("../../escape.bin", b"x")
    with pytest.raises(InvalidKeyError):
        list(store.list("/"))
    assert not (tmp_path / "escape.bin").exists()
    store.put("  spaced/key.bin ", b"x")
    assert list(store.list("spaced/")) == ["spaced/key.bin"]


# --- atomicity ----------------------------------------------------------------------------


def test_atomic_refuses_overwrite(backend: LocalStorage) -> None:
    store = ArtifactStore(backend)
    store.put("taken.bin", b"precious")
    with pytest.raises(ConflictError, match="already exists"), store.atomic() as tx:
        tx.put("new.bin", b"n")
        tx.put("taken.bin", b"would be lost on rollback")
    assert store.get_bytes("taken.bin") == b"precious"
    assert not store.exists("new.bin")


def test_atomic_cleans_up_after_half_upload(backend: LocalStorage) -> None:
    from mlrig.testing.storage import FailingStream

    store = ArtifactStore(backend, chunk_size=64 * KiB)
    with pytest.raises(OSError, match="went away"), store.atomic() as tx:
        tx.put("one.bin", b"1")
        tx.put("two.bin", FailingStream(fail_after=200 * KiB))
    assert list(store.list()) == []
    assert tx.stored == []


# --- streaming memory ----------------------------------------------------------------------


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        memoryview(buffer).cast("B")[:n] = bytes(n)
        self.left -= n
        return n


def _peak(fn: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _drain(store: ArtifactStore, key: str, sha256: str) -> int:
    total = 0
    with store.open(key, expected_sha256=sha256) as f:
        while chunk := f.read(MiB):
            total += len(chunk)
    return total


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_64_mib_streams_in_flat_memory(
    backend: LocalStorage, master: str, compression: str
) -> None:
    size = 64 * MiB
    store = ArtifactStore(
        backend, compression=compression, encrypt=True, master_key=master, chunk_size=MiB
    )
    source = GeneratedStream(size, seed=1)
    stored, up_peak = _peak(lambda: store.put("big.bin", source))
    assert stored.size == size and stored.sha256 == source.sha256.hexdigest()
    total, down_peak = _peak(lambda: _drain(store, "big.bin", stored.sha256))
    assert total == size
    # A handful of 1 MiB buffers, whatever the artifact's size.
    assert up_peak < 12 * MiB, up_peak
    assert down_peak < 12 * MiB, down_peak


def test_compressible_artifact_does_not_balloon_on_read(backend: LocalStorage) -> None:
    size = 64 * MiB
    store = ArtifactStore(backend, compression="zstd", chunk_size=MiB)
    stored = store.put("zeros.bin", _Zeros(size))
    assert stored.stored_size < 64 * KiB  # zstd squeezes 64 MiB of zeros to almost nothing
    total, peak = _peak(lambda: _drain(store, "zeros.bin", stored.sha256))
    assert total == size
    assert peak < 12 * MiB, peak
