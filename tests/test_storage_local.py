"""The ``local`` backend: the storage contract, plus what only a file system can show."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrig.errors import InvalidKeyError, StorageError
from mlrig.plugins.storage_local import TEMP_SUFFIX, LocalStorage
from mlrig.testing.storage import StorageContract


def make_local(root: Path, **options: object) -> LocalStorage:
    return LocalStorage.from_options({"root": str(root), **options}, where="storage.local")


def broken_local(tmp_path: Path) -> LocalStorage:
    """A root below a regular file: no folder can ever be made there."""
    (tmp_path / "a-file").write_bytes(b"not a folder")
    return make_local(tmp_path / "a-file" / "artifacts")


class TestLocalContract(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> LocalStorage:
        return make_local(tmp_path / "artifacts")

    @pytest.fixture
    def broken_storage(self, tmp_path: Path) -> LocalStorage:
        return broken_local(tmp_path)


class TestLocalFsyncContract(StorageContract):
    """The same promises with ``fsync = true`` (a different write path)."""

    large_size = 1024 * 1024

    @pytest.fixture
    def storage(self, tmp_path: Path) -> LocalStorage:
        return make_local(tmp_path / "artifacts", fsync=True)

    @pytest.fixture
    def broken_storage(self, tmp_path: Path) -> LocalStorage:
        return broken_local(tmp_path)


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    storage = make_local(tmp_path)
    with pytest.raises(RuntimeError), storage.open_write("a/b.bin") as out:
        out.write(b"partial")
        raise RuntimeError
    assert [p.name for p in (tmp_path / "a").iterdir()] == []


def test_listing_ignores_temp_files_of_running_writes(tmp_path: Path) -> None:
    storage = make_local(tmp_path)
    with storage.open_write("a/done.bin") as out:
        out.write(b"1")
    with storage.open_write("a/running.bin") as out:
        out.write(b"not yet")
        temps = [p.name for p in (tmp_path / "a").iterdir() if p.name.endswith(TEMP_SUFFIX)]
        assert len(temps) == 1
        assert list(storage.list()) == ["a/done.bin"]
        assert not storage.exists("a/running.bin")
    assert list(storage.list()) == ["a/done.bin", "a/running.bin"]


def test_delete_prunes_empty_folders_but_not_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    storage = make_local(root)
    with storage.open_write("m/1/deep/x.bin") as out:
        out.write(b"x")
    with storage.open_write("m/2.bin") as out:
        out.write(b"y")
    storage.delete("m/1/deep/x.bin")
    assert not (root / "m" / "1").exists()
    assert (root / "m" / "2.bin").is_file()
    storage.delete("m/2.bin")
    assert root.is_dir() and list(root.iterdir()) == []


@pytest.mark.parametrize("key", ["../escape.bin", "/etc/passwd", "a//b", "x" + TEMP_SUFFIX])
def test_rejects_keys_that_escape_or_collide(tmp_path: Path, key: str) -> None:
    storage = make_local(tmp_path / "root")
    with pytest.raises(InvalidKeyError):
        storage.open_write(key).__enter__()
    assert not (tmp_path / "escape.bin").exists()


def test_write_error_becomes_storage_error(tmp_path: Path) -> None:
    storage = make_local(tmp_path)
    with storage.open_write("file.bin") as out:
        out.write(b"a file")
    # "file.bin" is a file, so nothing can live below it.
    with pytest.raises(StorageError, match=r"file\.bin/below\.bin"):
        storage.open_write("file.bin/below.bin").__enter__()


def test_check_reports_unwritable_root(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError, match="not-a-folder"):
        make_local(blocker / "artifacts").check()


def test_root_resolved_and_described(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = make_local(Path("rel/artifacts"))
    assert storage.describe() == {"root": str(tmp_path / "rel" / "artifacts"), "fsync": False}


def test_platform_builds_local_store_relative_to_config(tmp_path: Path) -> None:
    from mlrig.platform import Platform

    (tmp_path / "mlrig.toml").write_text(
        '[storage]\ncompression = "zstd"\n[storage.local]\nroot = "store"\n'
    )
    platform = Platform.from_config(tmp_path / "mlrig.toml")
    stored = platform.artifacts.put("m/1/model.bin", b"weights" * 1000)
    assert (tmp_path / "store" / "m" / "1" / "model.bin").is_file()
    assert stored.compression == "zstd" and stored.stored_size < stored.size
    assert platform.artifacts.get_bytes("m/1/model.bin") == b"weights" * 1000


def test_a_key_the_file_system_cannot_hold_is_the_callers_mistake(tmp_path: Path) -> None:
    from mlrig.errors import ConflictError, InvalidKeyError

    storage = make_local(tmp_path)
    with storage.open_write("dir/file.bin") as out:
        out.write(b"x")
    # a file where a folder is needed, a folder where a file is named: 409, not 500
    for key in ("dir/file.bin/below.bin", "dir"):
        with pytest.raises(ConflictError, match="conflicts with an existing one"):
            with storage.open_write(key) as out:
                out.write(b"y")
    with pytest.raises(InvalidKeyError, match="longer than the file system takes"):
        storage.open_write("n" * 300).__enter__()
    with storage.open_read("dir/file.bin") as read:
        assert read.read() == b"x"
