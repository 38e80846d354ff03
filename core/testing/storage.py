"""The storage contract suite, and an S3 server (moto) for tests.

A storage backend passes the contract by mixing :class:`StorageContract` into a test
class that provides a ``storage`` fixture (a fresh, empty backend per test) and a
``broken_storage`` fixture (the backend pointed at a location that cannot work)::

    from mlrig.testing.storage import StorageContract

    class TestMyStore(StorageContract):
        @pytest.fixture
        def storage(self, tmp_path):
            return MyStore.from_options({"root": str(tmp_path)}, where="storage.mine")

        @pytest.fixture
        def broken_storage(self, tmp_path):
            (tmp_path / "a-file").write_text("not a folder")
            return MyStore.from_options({"root": str(tmp_path / "a-file" / "x")}, where="s")

The suite covers the byte-level contract as :class:`mlrig.contracts.StorageBackend`
documents it (round trips, literal prefix listing, listing while deleting, deletion,
failed, invisible-until-done and repeated writes, threads, two processes (each
rebuilding the backend from its class and picklable ``options``), bounded memory while
streaming, ``modified``, secret-free ``describe``, a ``check`` that really probes) and
runs :class:`mlrig.artifacts.ArtifactStore` over the same backend (compression,
encryption, corruption, wrong keys, atomic cleanup), because those only work if the
backend keeps its promises. The class needs no pytest plugin.

Fixtures for S3-compatible backends (add ``pytest_plugins = ["mlrig.testing.storage"]``
to the top-level ``conftest.py``):

- ``moto_s3`` (session): endpoint URL of a moto S3 server on a free loopback port.
- ``s3_bucket``: a fresh bucket on it, with fake AWS credentials in the environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mlrig.artifacts import ArtifactStore, generate_master_key
from mlrig.contracts.storage import StaleUploads, StorageBackend
from mlrig.errors import (
    ArtifactNotFoundError,
    CorruptArtifactError,
    EncryptionKeyError,
    StorageError,
)

KiB = 1024
MiB = 1024 * KiB


def sample_bytes(size: int, seed: int = 0) -> bytes:
    """``size`` reproducible bytes, half noise and half runs, so zstd has work to do."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(512) + bytes([rng.randrange(256)]) * 512
    return bytes(out[:size])


class GeneratedStream(io.RawIOBase):
    """A readable stream of ``size`` pseudo-random bytes made on the fly (never held)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self._left = size
        self._rng = random.Random(seed)
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        data = self._rng.randbytes(n)
        self.sha256.update(data)
        memoryview(buffer).cast("B")[:n] = data
        self._left -= n
        return n


class FailingStream(io.RawIOBase):
    """Yields ``fail_after`` bytes, then raises ``OSError`` (a source that dies mid-upload)."""

    def __init__(self, fail_after: int) -> None:
        self._left = fail_after

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            msg = "source went away"
            raise OSError(msg)
        n = min(len(buffer), self._left)
        memoryview(buffer).cast("B")[:n] = b"x" * n
        self._left -= n
        return n


class _Boom(Exception):
    """Raised by the tests inside writes; must come out unchanged."""


# name -> ArtifactStore keyword arguments
STORE_MODES: dict[str, dict[str, Any]] = {
    "plain": {},
    "zstd": {"compression": "zstd"},
    "aes": {"encrypt": True},
    "zstd+aes": {"compression": "zstd", "encrypt": True},
}


#: ``describe()`` keys that name a secret: their values must never appear there
SECRET_KEY_NAMES = re.compile(
    r"secret|passw|token|credential|private|api_?key|access_?key|session|^key$|_key$", re.I
)


class StorageContract:
    """Tests every :class:`~mlrig.contracts.StorageBackend` must pass.

    Subclasses provide two fixtures: ``storage`` (fresh and empty for each test) and
    ``broken_storage`` (the same backend pointed at a location that cannot work: a
    missing bucket, a root below a regular file), whose ``check()`` must raise. They may
    raise :attr:`large_size` so that a "large" object crosses their multipart threshold,
    and :attr:`memory_bound` to what one write or read may hold (S3: about two parts).
    """

    #: size of the multi-chunk objects; S3 backends set it above their part size
    large_size: int = 3 * MiB
    #: size of the pieces written to ``open_write``
    write_piece: int = 256 * KiB
    #: the most Python memory one streaming write or read of :attr:`streaming_size` may
    #: hold at once (measured with tracemalloc)
    memory_bound: int = 4 * MiB
    #: size of the object of the memory tests: several times :attr:`memory_bound`
    streaming_size: int = 24 * MiB

    @pytest.fixture
    def broken_storage(self) -> StorageBackend:
        """Override: this backend pointed at a location that cannot work."""
        pytest.fail(
            "give the contract class a `broken_storage` fixture: the backend pointed at a "
            "location that cannot work (a missing bucket, a root below a regular file), "
            "so that the suite can check that check() fails there"
        )

    # --- helpers ------------------------------------------------------------------------

    def _write(self, storage: StorageBackend, key: str, data: bytes) -> None:
        with storage.open_write(key) as out:
            for start in range(0, len(data), self.write_piece):
                out.write(data[start : start + self.write_piece])

    def _read(self, storage: StorageBackend, key: str, piece: int = 100_000) -> bytes:
        parts = []
        with contextlib.closing(storage.open_read(key)) as handle:
            while chunk := handle.read(piece):
                parts.append(chunk)
        return b"".join(parts)

    def _warm_up(self, storage: StorageBackend) -> None:
        """One small write and read first: a client's lazy set-up is not the object."""
        self._write(storage, "warm/up.bin", b"warm")
        assert self._read(storage, "warm/up.bin") == b"warm"

    def _store(self, storage: StorageBackend, mode: str, **kwargs: Any) -> ArtifactStore:
        options = dict(STORE_MODES[mode])
        if options.get("encrypt"):
            options["master_key"] = kwargs.pop("master_key", None) or generate_master_key()
        return ArtifactStore(
            storage, chunk_size=64 * KiB, segment_size=32 * KiB, **options, **kwargs
        )

    # --- bytes --------------------------------------------------------------------------

    @pytest.mark.parametrize("size", [0, 1, 1000])
    def test_round_trip_small(self, storage: StorageBackend, size: int) -> None:
        data = sample_bytes(size, seed=size)
        self._write(storage, "small.bin", data)
        assert self._read(storage, "small.bin") == data
        assert storage.size("small.bin") == size

    def test_round_trip_multi_chunk(self, storage: StorageBackend) -> None:
        data = sample_bytes(self.large_size + 12_345, seed=1)
        self._write(storage, "big/blob.bin", data)
        back = self._read(storage, "big/blob.bin", piece=777_777)
        assert len(back) == len(data)
        assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()

    def test_nested_keys(self, storage: StorageBackend) -> None:
        keys = ["a.txt", "models/m/1/model.onnx", "models/m/1/deep/er/still/x.json"]
        for i, key in enumerate(keys):
            self._write(storage, key, f"content {i}".encode())
        for i, key in enumerate(keys):
            assert self._read(storage, key) == f"content {i}".encode()
        assert list(storage.list()) == sorted(keys)

    def test_exists_and_size(self, storage: StorageBackend) -> None:
        assert not storage.exists("x/y.bin")
        self._write(storage, "x/y.bin", b"12345")
        assert storage.exists("x/y.bin")
        assert storage.size("x/y.bin") == 5
        # A folder-like prefix is not an object.
        assert not storage.exists("x")

    def test_delete(self, storage: StorageBackend) -> None:
        self._write(storage, "d/one.bin", b"1")
        self._write(storage, "d/two.bin", b"2")
        storage.delete("d/one.bin")
        assert not storage.exists("d/one.bin")
        assert list(storage.list()) == ["d/two.bin"]
        with pytest.raises(ArtifactNotFoundError):
            storage.open_read("d/one.bin")
        storage.delete("d/one.bin")  # deleting a missing key is not an error
        storage.delete("never/was.bin")
        assert self._read(storage, "d/two.bin") == b"2"

    def test_list_prefix(self, storage: StorageBackend) -> None:
        keys = ["a/1.bin", "a/2.bin", "a/sub/3.bin", "ab/4.bin", "b/5.bin", "top.bin"]
        for key in reversed(keys):
            self._write(storage, key, key.encode())
        assert list(storage.list()) == sorted(keys)
        assert list(storage.list("a/")) == ["a/1.bin", "a/2.bin", "a/sub/3.bin"]
        assert list(storage.list("a")) == ["a/1.bin", "a/2.bin", "a/sub/3.bin", "ab/4.bin"]
        assert list(storage.list("a/s")) == ["a/sub/3.bin"]
        assert list(storage.list("t")) == ["top.bin"]
        assert list(storage.list("zzz/")) == []

    def test_missing_key(self, storage: StorageBackend) -> None:
        with pytest.raises(ArtifactNotFoundError):
            storage.open_read("no/such/key.bin")
        with pytest.raises(ArtifactNotFoundError):
            storage.size("no/such/key.bin")
        assert not storage.exists("no/such/key.bin")

    @pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
    def test_failed_write_leaves_nothing(self, storage: StorageBackend, large: bool) -> None:
        data = sample_bytes(self.large_size if large else 1000, seed=2)
        with pytest.raises(_Boom), storage.open_write("half/written.bin") as out:
            for start in range(0, len(data), self.write_piece):
                out.write(data[start : start + self.write_piece])
            raise _Boom
        assert not storage.exists("half/written.bin")
        assert list(storage.list()) == []
        with pytest.raises(ArtifactNotFoundError):
            storage.open_read("half/written.bin")

    def test_overwrite_replaces(self, storage: StorageBackend) -> None:
        self._write(storage, "o.bin", b"first version, longer")
        self._write(storage, "o.bin", b"second")
        assert self._read(storage, "o.bin") == b"second"
        assert storage.size("o.bin") == 6
        assert list(storage.list()) == ["o.bin"]

    def test_failed_overwrite_keeps_old(self, storage: StorageBackend) -> None:
        self._write(storage, "keep.bin", b"old")
        with pytest.raises(_Boom), storage.open_write("keep.bin") as out:
            out.write(sample_bytes(self.large_size, seed=3))
            raise _Boom
        assert self._read(storage, "keep.bin") == b"old"

    def test_list_prefix_is_literal_and_case_sensitive(self, storage: StorageBackend) -> None:
        """A prefix is a plain string: ``_`` and ``%`` are no wildcards (SQL ``LIKE``),
        ``*`` and ``?`` none either (glob), and case counts."""
        keys = [
            "a_b/1.bin",
            "axb/2.bin",
            "a%c/3.bin",
            "abc/4.bin",
            "A_B/5.bin",
            "a_bc/6.bin",
            "x*y/7.bin",
            "xzy/8.bin",
        ]
        for key in keys:
            self._write(storage, key, b"k")
        assert list(storage.list("a_b/")) == ["a_b/1.bin"]
        assert list(storage.list("a_b")) == ["a_b/1.bin", "a_bc/6.bin"]
        assert list(storage.list("a%")) == ["a%c/3.bin"]
        assert list(storage.list("a%c/")) == ["a%c/3.bin"]
        assert list(storage.list("A")) == ["A_B/5.bin"]
        assert list(storage.list("a_B/")) == []
        assert list(storage.list("x*")) == ["x*y/7.bin"]
        assert list(storage.list("%")) == []
        assert list(storage.list("_")) == []

    def test_list_is_safe_while_deleting(self, storage: StorageBackend) -> None:
        """Deleting each key as the listing yields it (what gc does) neither fails nor
        skips or repeats a key."""
        keys = [f"gc/{i:02d}/obj.bin" for i in range(12)]
        for key in keys:
            self._write(storage, key, b"x")
        seen = []
        for key in storage.list("gc/"):
            seen.append(key)
            storage.delete(key)
        assert seen == keys
        assert list(storage.list()) == []

    def test_write_is_invisible_until_the_block_exits(self, storage: StorageBackend) -> None:
        with storage.open_write("pending/obj.bin") as out:
            out.write(sample_bytes(self.large_size, seed=6))
            assert not storage.exists("pending/obj.bin")
            assert list(storage.list()) == []
        assert storage.size("pending/obj.bin") == self.large_size

    def test_concurrent_writers_and_readers(self, storage: StorageBackend) -> None:
        """One backend object is shared by the server's threads."""
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                data = sample_bytes(50_000 + n, seed=n)
                for round_ in range(3):
                    self._write(storage, f"t/{n}.bin", data + bytes([round_]))
                    assert self._read(storage, f"t/{n}.bin") == data + bytes([round_])
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert list(storage.list("t/")) == sorted(f"t/{n}.bin" for n in range(8))

    def test_concurrent_processes(self, storage: StorageBackend, tmp_path: Path) -> None:
        """The server, workers and the CLI are separate processes on one store: two
        processes, each with its own instance built from the same options, write at once
        and see each other's objects."""
        spec = tmp_path / "backend.pickle"
        spec.write_bytes(
            pickle.dumps((type(storage).__module__, type(storage).__qualname__, storage.options))
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        children = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD_WRITER, str(spec), str(n)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for n in range(2)
        ]
        for child in children:
            _out, err = child.communicate(timeout=300)
            assert child.returncode == 0, err.decode()[-2000:]
        for n in range(2):
            for i in range(5):
                assert self._read(storage, f"proc/{n}/{i}.bin") == _child_bytes(n, i)
        assert len(list(storage.list("proc/"))) == 10

    def test_streaming_write_holds_bounded_memory(self, storage: StorageBackend) -> None:
        """A write never buffers the whole object (only what a part/chunk needs)."""
        self._warm_up(storage)
        rng = random.Random(7)
        digest = hashlib.sha256()
        tracemalloc.start()
        try:
            with storage.open_write("stream/big.bin") as out:
                for _ in range(self.streaming_size // self.write_piece):
                    piece = rng.randbytes(self.write_piece)  # fresh bytes, dropped after
                    digest.update(piece)
                    out.write(piece)
                    del piece
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < self.memory_bound, (
            f"writing {self.streaming_size} bytes held {peak} bytes at once "
            f"(bound {self.memory_bound}): open_write must stream"
        )
        assert storage.size("stream/big.bin") == self.streaming_size
        back = hashlib.sha256()
        with contextlib.closing(storage.open_read("stream/big.bin")) as handle:
            while chunk := handle.read(MiB):
                back.update(chunk)
        assert back.digest() == digest.digest()

    def test_streaming_read_holds_bounded_memory(self, storage: StorageBackend) -> None:
        """A read never loads the whole object (the caller reads it piece by piece)."""
        rng = random.Random(8)
        with storage.open_write("stream/read.bin") as out:
            for _ in range(self.streaming_size // self.write_piece):
                out.write(rng.randbytes(self.write_piece))
        self._warm_up(storage)
        total = 0
        tracemalloc.start()
        try:
            with contextlib.closing(storage.open_read("stream/read.bin")) as handle:
                while chunk := handle.read(256 * KiB):
                    total += len(chunk)
                    del chunk
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert total == self.streaming_size
        assert peak < self.memory_bound, (
            f"reading {self.streaming_size} bytes held {peak} bytes at once "
            f"(bound {self.memory_bound}): open_read must stream"
        )

    def test_modified_is_aware_and_recent(self, storage: StorageBackend) -> None:
        before = datetime.now(UTC) - timedelta(minutes=5)  # clock skew of a remote store
        self._write(storage, "m/when.bin", b"1")
        when = storage.modified("m/when.bin")
        if when is not None:  # None: the backend cannot tell (gc then keeps its objects)
            assert when.tzinfo is not None, "modified() must return an aware datetime"
            assert before <= when <= datetime.now(UTC) + timedelta(minutes=5)
        with pytest.raises(ArtifactNotFoundError):
            storage.modified("m/never.bin")

    def test_finished_writes_leave_no_pending_upload(self, storage: StorageBackend) -> None:
        if not isinstance(storage, StaleUploads):
            pytest.skip("the backend has no unfinished writes to list (StaleUploads)")
        self._write(storage, "p/done.bin", sample_bytes(self.large_size, seed=9))
        with pytest.raises(_Boom), storage.open_write("p/failed.bin") as out:
            out.write(sample_bytes(self.large_size, seed=10))
            raise _Boom
        future = datetime.now(UTC) + timedelta(days=1)
        assert [u.key for u in storage.pending_uploads(started_before=future)] == []

    def test_describe_and_check(self, storage: StorageBackend) -> None:
        storage.check()
        description = storage.describe()
        json.dumps(description)  # plain data for the health endpoint
        text = json.dumps(description).lower()
        assert "secret" not in text and "password" not in text
        for key, value in _flatten(description):
            if SECRET_KEY_NAMES.search(key):
                assert value in (None, "", "***"), f"describe() shows the secret {key!r}"

    def test_check_fails_where_the_store_cannot_work(self, broken_storage: StorageBackend) -> None:
        """check() really probes the store: pointed at a broken location, it raises."""
        with pytest.raises(StorageError):
            broken_storage.check()

    # --- the artifact store over this backend -----------------------------------------

    @pytest.mark.parametrize("mode", list(STORE_MODES))
    @pytest.mark.parametrize("size", [0, 100, 200 * KiB + 7])
    def test_store_round_trip(self, storage: StorageBackend, mode: str, size: int) -> None:
        store = self._store(storage, mode)
        data = sample_bytes(size, seed=size)
        stored = store.put("art/model.bin", data)
        assert stored.size == size
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
        assert stored.stored_size == storage.size("art/model.bin")
        assert (stored.encryption is not None) == store.encrypt
        assert store.get_bytes("art/model.bin", expected_sha256=stored.sha256) == data
        if "zstd" in mode and size > 1000:
            assert stored.stored_size < size  # sample_bytes is half runs
        if "aes" in mode and size > 1000:
            raw = self._read(storage, "art/model.bin")
            assert data[:64] not in raw  # nothing of the plaintext shows

    @pytest.mark.parametrize("mode", list(STORE_MODES))
    def test_store_detects_flipped_byte(self, storage: StorageBackend, mode: str) -> None:
        key = "art/flipped.bin"
        store = self._store(storage, mode, master_key=(master := generate_master_key()))
        store.put(key, sample_bytes(200 * KiB, seed=4))
        raw = bytearray(self._read(storage, key))
        raw[len(raw) // 2] ^= 0x01
        self._write(storage, key, bytes(raw))
        reader = self._store(storage, mode, master_key=master)
        with pytest.raises(CorruptArtifactError):
            reader.get_bytes(key)

    @pytest.mark.parametrize("mode", list(STORE_MODES))
    def test_store_detects_truncation(self, storage: StorageBackend, mode: str) -> None:
        key = "art/cut.bin"
        store = self._store(storage, mode, master_key=(master := generate_master_key()))
        store.put(key, sample_bytes(200 * KiB, seed=5))
        raw = self._read(storage, key)
        self._write(storage, key, raw[: len(raw) - 100])
        with pytest.raises(CorruptArtifactError):
            self._store(storage, mode, master_key=master).get_bytes(key)

    def test_store_wrong_or_missing_master_key(self, storage: StorageBackend) -> None:
        writer = self._store(storage, "zstd+aes")
        writer.put("secret.bin", b"top secret weights")
        with pytest.raises(EncryptionKeyError, match="master key"):
            self._store(storage, "aes", master_key=generate_master_key()).open("secret.bin")
        with pytest.raises(EncryptionKeyError, match="MLRIG_STORAGE__MASTER_KEY"):
            ArtifactStore(storage).open("secret.bin")

    def test_store_failed_upload_leaves_nothing(self, storage: StorageBackend) -> None:
        store = self._store(storage, "zstd+aes")
        with pytest.raises(OSError, match="source went away"):
            store.put("art/half.bin", FailingStream(fail_after=self.large_size))
        assert not store.exists("art/half.bin")
        assert list(store.list()) == []

    def test_store_atomic_cleanup(self, storage: StorageBackend) -> None:
        store = self._store(storage, "zstd")
        store.put("keep/existing.bin", b"was here before")
        with pytest.raises(_Boom), store.atomic() as tx:
            tx.put("tx/a.bin", b"a")
            tx.put("tx/b.bin", sample_bytes(100 * KiB))
            assert store.exists("tx/b.bin")
            raise _Boom  # e.g. the database insert after the upload failed
        assert list(store.list()) == ["keep/existing.bin"]
        with store.atomic() as tx:
            stored = tx.put("tx/c.bin", b"c")
        assert store.get_bytes("tx/c.bin", expected_sha256=stored.sha256) == b"c"


def _child_bytes(n: int, i: int) -> bytes:
    return f"process {n} object {i} ".encode() * 5000


# Rebuilds the backend from its class and options, writes five objects of its own, and
# checks it sees the other process's objects appear (polling: the two run at once).
_CHILD_WRITER = """
import importlib, pickle, sys, time
module, name, options = pickle.loads(open(sys.argv[1], "rb").read())
cls = importlib.import_module(module)
for part in name.split("."):
    cls = getattr(cls, part)
store = cls(options)
n = int(sys.argv[2])
from mlrig.testing.storage import _child_bytes
for i in range(5):
    with store.open_write(f"proc/{n}/{i}.bin") as out:
        out.write(_child_bytes(n, i))
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    if len(list(store.list(f"proc/{1 - n}/"))) == 5:
        break
    time.sleep(0.05)
else:
    sys.exit("the other process's objects never appeared")
"""


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# --- the S3 server ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_server(timeout: float = 30.0) -> Iterator[str]:
    """Run moto's standalone server on a free loopback port; yield its endpoint URL."""
    try:
        import moto.server  # noqa: F401  (only checks that it is installed)
    except ModuleNotFoundError as exc:
        msg = f"the S3 tests need moto's server: pip install 'moto[server]' ({exc.name} is missing)"
        raise RuntimeError(msg) from exc
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_up(endpoint, process, log, timeout)
            yield endpoint
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_up(
    endpoint: str, process: subprocess.Popen[bytes], log: Any, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            msg = f"moto server exited with {process.returncode}: {log.read().decode()[-2000:]}"
            raise RuntimeError(msg)
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.05)
    msg = f"moto server on {endpoint} did not answer within {timeout} s"
    raise RuntimeError(msg)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """Endpoint URL (``http://127.0.0.1:PORT``) of a moto S3 server for this session."""
    with moto_server() as endpoint:
        yield endpoint


@dataclass(frozen=True)
class MotoBucket:
    """A bucket on the moto server."""

    name: str
    endpoint_url: str

    def client(self) -> Any:
        """A boto3 S3 client for looking behind the backend's back."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")

    def options(self, **extra: Any) -> dict[str, Any]:
        """``[storage.s3]`` options pointing at this bucket."""
        return {"bucket": self.name, "endpoint_url": self.endpoint_url, **extra}


def fake_aws_environment(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Fake credentials, and no real ones from ``~/.aws`` or the environment."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.fspath(home / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.fspath(home / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_bucket(
    moto_s3: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MotoBucket]:
    """A fresh, empty bucket on the moto server, with fake AWS credentials set."""
    fake_aws_environment(monkeypatch, tmp_path_factory.mktemp("aws"))
    bucket = MotoBucket(name=f"mlrig-test-{uuid.uuid4().hex[:12]}", endpoint_url=moto_s3)
    client = bucket.client()
    client.create_bucket(Bucket=bucket.name)
    yield bucket
    from botocore.exceptions import BotoCoreError, ClientError

    # Free the server's memory; the name is never reused, so leftovers would not leak.
    with contextlib.suppress(BotoCoreError, ClientError):
        uploads = client.list_multipart_uploads(Bucket=bucket.name).get("Uploads", [])
        for upload in uploads:
            client.abort_multipart_upload(
                Bucket=bucket.name, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket.name):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket.name, Key=item["Key"])
        client.delete_bucket(Bucket=bucket.name)


__all__ = [
    "SECRET_KEY_NAMES",
    "STORE_MODES",
    "FailingStream",
    "GeneratedStream",
    "MotoBucket",
    "StorageContract",
    "fake_aws_environment",
    "moto_server",
    "sample_bytes",
]
