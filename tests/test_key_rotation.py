"""Master-key rotation: old keys stay readable, `mlrig storage rotate-key` re-encrypts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlrig.artifacts import ArtifactStore, generate_master_key, master_key_id
from mlrig.artifacts.rotation import rotate_master_key
from mlrig.errors import EncryptionKeyError
from mlrig.plugins.storage_local import LocalStorage
from mlrig.security import Principal
from mlrig.testing.fixtures import make_platform

OLD, NEW = generate_master_key(), generate_master_key()
OPERATOR = Principal(name="cli:ops", role="admin")


@pytest.fixture
def backend(tmp_path: Path) -> LocalStorage:
    return LocalStorage.from_options({"root": str(tmp_path / "store")}, where="storage.local")


def test_previous_keys_read_and_rotation_rewrites_under_the_new_key(backend):
    old = ArtifactStore(backend, encrypt=True, master_key=OLD, compression="zstd")
    blobs = {f"runs/{i}.bin": bytes([i]) * (1000 + i) for i in range(5)}
    for key, data in blobs.items():
        old.put(key, data)
    ArtifactStore(backend).put("plain/notes.txt", b"not secret")

    with pytest.raises(EncryptionKeyError, match="configured master keys are"):
        ArtifactStore(backend, master_key=NEW).get_bytes("runs/0.bin")
    both = ArtifactStore(backend, encrypt=True, master_key=NEW, previous_master_keys=[OLD])
    assert both.get_bytes("runs/3.bin") == blobs["runs/3.bin"]  # read with the old key
    assert both.describe()["previous_master_key_ids"] == [master_key_id(_raw(OLD))]

    dry = rotate_master_key(both, dry_run=True)
    assert (dry["rewritten"], dry["current"], dry["unencrypted"]) == (5, 0, 1)
    old_id = master_key_id(_raw(OLD))  # a dry run changes nothing
    assert both.header("runs/0.bin").encryption["master_key_id"] == old_id

    seen, records = [], []
    report = rotate_master_key(both, on_checked=seen.append, on_rewritten=records.append)
    assert report["master_key_id"] == master_key_id(_raw(NEW))
    assert (report["checked"], report["rewritten"], report["failed"]) == (6, 5, [])
    assert sorted(seen) == sorted([*blobs, "plain/notes.txt"])
    assert {r.key for r in records} == set(blobs)
    assert all(r.encryption["master_key_id"] == report["master_key_id"] for r in records)

    new_only = ArtifactStore(backend, master_key=NEW)  # the old key can go now
    for key, data in blobs.items():
        assert new_only.get_bytes(key) == data
    again = rotate_master_key(both)
    assert (again["rewritten"], again["current"]) == (0, 5)


def test_a_damaged_object_fails_alone_and_is_left_as_it_was(backend, tmp_path):
    old = ArtifactStore(backend, encrypt=True, master_key=OLD)
    old.put("a.bin", b"a" * 5000)
    old.put("b.bin", b"b" * 5000)
    target = tmp_path / "store" / "b.bin"
    damaged = bytearray(target.read_bytes())
    damaged[-40] ^= 0xFF
    target.write_bytes(bytes(damaged))

    both = ArtifactStore(backend, encrypt=True, master_key=NEW, previous_master_keys=[OLD])
    report = rotate_master_key(both)
    assert report["rewritten"] == 1
    assert [f["key"] for f in report["failed"]] == ["b.bin"]
    assert target.read_bytes() == bytes(damaged)  # not overwritten by a half-read copy
    assert ArtifactStore(backend, master_key=NEW).get_bytes("a.bin") == b"a" * 5000


def test_rotation_needs_a_current_key(backend):
    with pytest.raises(EncryptionKeyError, match="no master key to rotate to"):
        rotate_master_key(ArtifactStore(backend, previous_master_keys=[OLD]))


def test_cli_rotates_a_registered_version_and_its_rows(tmp_path):
    home = tmp_path / "home"
    storage = {"backend": "local", "local": {"root": str(home / "artifacts")}}
    before = make_platform(home, storage={**storage, "encryption": True, "master_key": OLD})
    version = before.registry.create_version(
        "rotated",
        files={"model.bin": b"weights" * 1000, "MLmodel.json": b"{}"},
        actor=OPERATOR,
        create_model=True,
    )
    before.close()

    config = tmp_path / "mlrig.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{home / "mlrig.db"}"\n'
        f'[storage]\nencryption = true\nmaster_key = "{NEW}"\n'
        f'previous_master_keys = ["{OLD}"]\n'
        f'[storage.local]\nroot = "{home / "artifacts"}"\n'
    )

    def mlrig(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mlrig.cli", "--config", str(config), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    dry = mlrig("storage", "rotate-key", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["rewritten"] == 2
    done = mlrig("storage", "rotate-key")
    assert done.returncode == 0, done.stderr
    assert "rewrote 2 under master key" in done.stdout and "0 failed" in done.stdout

    after = make_platform(
        home, storage={**storage, "encryption": True, "master_key": NEW}
    )  # the new key alone
    try:
        shown = after.registry.get_version("rotated", version["id"])
        new_id = master_key_id(_raw(NEW))
        rows = after.registry.list_artifacts("rotated", version["id"])
        assert len(rows) == 2
        for artifact in rows:
            _, stream = after.registry.open_artifact("rotated", version["id"], artifact["path"])
            with stream:
                assert stream.read()
        with after.db.session() as session:
            from sqlalchemy import select

            from mlrig.db.models import ModelArtifact

            facts = session.scalars(select(ModelArtifact.encryption)).all()
        assert [f["master_key_id"] for f in facts] == [new_id, new_id]
        assert shown["id"] == version["id"]
        entries = after.audit.query(action="rotate_master_key")
        assert [(e["outcome"], e["resource_id"]) for e in entries] == [("success", new_id)]
    finally:
        after.close()


def _raw(key: str) -> bytes:
    from mlrig.artifacts import parse_master_key

    return parse_master_key(key)
