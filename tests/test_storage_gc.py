"""``mlrig storage gc``: orphans a killed upload leaves (S3 on moto, local files), the
grace period, the namespaces it never touches, and the audit entry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from mlrig.artifacts.gc import References, collect_garbage, database_references
from mlrig.db.models import AuditLog, TrainingExperiment
from mlrig.platform import Platform
from mlrig.security import Principal
from mlrig.testing.storage import MotoBucket

MiB = 1024 * 1024
ADMIN = Principal(name="tester", role="admin")

# A registration whose second file stalls after 6 MiB: its first file is a complete
# object without a row, the second an open multipart upload (5 MiB parts).
CHILD = textwrap.dedent(
    """
    import io, sys, time
    from mlrig.platform import Platform
    from mlrig.security import Principal

    class Stalling(io.RawIOBase):
        def __init__(self):
            self.left = 6 * 1024 * 1024
        def readable(self):
            return True
        def readinto(self, buffer):
            if self.left <= 0:
                print("stalled", flush=True)
                time.sleep(600)
            n = min(len(buffer), self.left)
            memoryview(buffer).cast("B")[:n] = b"z" * n
            self.left -= n
            return n

    platform = Platform.from_config(sys.argv[1])
    platform.registry.create_version(
        "gcm",
        files={"a-config.json": b'{"half": "done"}', "model.bin": Stalling()},
        actor=Principal(name="child", role="admin"),
        create_model=True,
    )
    """
)


def _config(home: Path, storage: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    config = home / "mlrig.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{home / "mlrig.db"}"\n\n{storage}', encoding="utf-8"
    )
    return config


def _kill_mid_upload(config: Path) -> None:
    """Run the stalling registration in a real process and SIGKILL it mid-upload."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "stalled", child.stderr.read()  # type: ignore[union-attr]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL


def _gc(run_cli, config: Path, *args: str) -> dict:
    result = run_cli("--config", str(config), "storage", "gc", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _referenced_version(platform: Platform) -> dict:
    return platform.registry.create_version(
        "kept",
        files={"model.bin": b"weights" * 1000, "config.json": b"{}"},
        actor=ADMIN,
        create_model=True,
    )


@pytest.mark.s3
def test_gc_removes_what_a_killed_upload_left_on_s3(
    s3_bucket: MotoBucket, tmp_path: Path, run_cli
) -> None:
    config = _config(
        tmp_path / "home",
        f'[storage]\nbackend = "s3"\n[storage.s3]\nbucket = "{s3_bucket.name}"\n'
        f'endpoint_url = "{s3_bucket.endpoint_url}"\nprefix = "team"\nblock_size = {5 * MiB}\n',
    )
    platform = Platform.from_config(config)
    kept = _referenced_version(platform)
    platform.artifacts.put("datasets/users-own.csv", b"a,b\n1,2\n")  # not mlrig's
    _kill_mid_upload(config)

    client = s3_bucket.client()
    uploads = client.list_multipart_uploads(Bucket=s3_bucket.name)["Uploads"]
    assert len(uploads) == 1 and uploads[0]["Key"].endswith("/model.bin")
    orphan = uploads[0]["Key"].removeprefix("team/").removesuffix("model.bin") + "a-config.json"
    assert platform.artifacts.exists(orphan)

    # The default grace period (1 h) protects the fresh object.
    young = _gc(run_cli, config, "--dry-run")
    assert young["orphans"] == [] and young["too_young"] == 1

    listed = _gc(run_cli, config, "--dry-run", "--older-than", "0")
    assert [o["key"] for o in listed["orphans"]] == [orphan]
    assert [(u["key"], u["upload_id"]) for u in listed["uploads"]] == [
        (uploads[0]["Key"].removeprefix("team/"), uploads[0]["UploadId"])
    ]
    assert listed["referenced"] == 3  # the two kept artifacts and the user's dataset
    assert platform.artifacts.exists(orphan)  # a dry run changes nothing
    assert len(client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])) == 1

    text = run_cli("--config", str(config), "storage", "gc", "--dry-run", "--older-than", "0s")
    assert text.exit_code == 0, text.stderr
    assert f"orphan  {orphan}" in text.stdout and uploads[0]["UploadId"] in text.stdout
    assert "would remove 1 orphans and 1 unfinished uploads" in text.stdout

    done = _gc(run_cli, config, "--older-than", "0")
    assert (done["removed"], done["aborted"], done["failed"]) == (1, 1, [])
    assert not platform.artifacts.exists(orphan)
    assert client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    assert platform.artifacts.get_bytes("datasets/users-own.csv") == b"a,b\n1,2\n"
    _info, stream = platform.registry.open_artifact("kept", kept["version"], "model.bin")
    with stream:
        assert stream.read() == b"weights" * 1000  # verified against the row's sha256
    assert _gc(run_cli, config, "--dry-run", "--older-than", "0")["orphans"] == []

    with platform.db.session() as session:
        entries = session.query(AuditLog).filter(AuditLog.action == "storage_gc").all()
        assert [e.outcome for e in entries] == ["success"]  # dry runs are not audited


def test_gc_on_local_storage_removes_orphans_and_temp_files(tmp_path: Path, run_cli) -> None:
    root = tmp_path / "home" / "artifacts"
    config = _config(
        tmp_path / "home", f'[storage]\nbackend = "local"\n[storage.local]\nroot = "{root}"\n'
    )
    platform = Platform.from_config(config)
    kept = _referenced_version(platform)
    # a writer killed mid-write leaves its temporary file (SIGKILL runs no cleanup)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mlrig.platform import Platform\n"
            "p = Platform.from_config(sys.argv[1]).storage_backend\n"
            "with p.open_write('models/x/y/big.bin') as out:\n"
            "    out.write(b'p' * 100_000); out.flush(); print('writing', flush=True)\n"
            "    time.sleep(600)\n",
            str(config),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "writing"  # type: ignore[union-attr]
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    temps = list(root.rglob("*.mlrig-tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size == 100_000

    # experiments: logs are kept with their experiment; only the last checkpoint counts
    experiment = platform.experiments.create(name="e1", trainer="sklearn", actor=ADMIN)
    ident = experiment["id"]
    platform.experiments.logs.append(ident, b"hello\n")
    last = f"experiments/{ident}/checkpoints/002-b.pkl"
    for key in (last, f"experiments/{ident}/checkpoints/001-a.pkl"):
        platform.artifacts.put(key, b"state")
    with platform.db.session() as session:
        session.execute(
            update(TrainingExperiment)
            .where(TrainingExperiment.id == uuid.UUID(ident))
            .values(last_checkpoint={"key": last})
        )
    stray_log = f"experiments/{uuid.uuid4()}/logs/00000000-000000000000-000000000002"
    stray_model = f"models/{kept['model_id']}/{uuid.uuid4()}/model.bin"  # a version never saved
    platform.artifacts.put(stray_log, b"x\n")
    platform.artifacts.put(stray_model, b"no row")
    platform.artifacts.put("quickstart/hello.txt", b"hello")

    listed = _gc(run_cli, config, "--dry-run", "--older-than", "0")
    assert sorted(o["key"] for o in listed["orphans"]) == sorted(
        [f"experiments/{ident}/checkpoints/001-a.pkl", stray_log, stray_model]
    )
    assert [u["key"] for u in listed["uploads"]] == ["models/x/y/big.bin"]

    done = _gc(run_cli, config, "--older-than", "0")
    assert (done["removed"], done["aborted"]) == (3, 1)
    assert list(root.rglob("*.mlrig-tmp")) == []
    assert platform.artifacts.get_bytes(last) == b"state"
    assert platform.experiments.logs.read(ident)[0] == b"hello\n"
    assert platform.artifacts.get_bytes("quickstart/hello.txt") == b"hello"
    _info, stream = platform.registry.open_artifact("kept", kept["version"], "model.bin")
    with stream:
        assert stream.read() == b"weights" * 1000  # verified against the row's sha256


def test_grace_period_protects_young_objects_and_temp_files(platform: Platform) -> None:
    backend = platform.storage_backend
    platform.artifacts.put(f"models/{uuid.uuid4()}/{uuid.uuid4()}/model.bin", b"fresh")
    temp = Path(backend.root, "models", ".w.bin.abcdefgh.mlrig-tmp")
    temp.write_bytes(b"in progress")
    theirs = Path(backend.root, ".other.csv.abcdefgh.mlrig-tmp")  # not mlrig's namespace
    theirs.write_bytes(b"someone else's")
    report = collect_garbage(backend, lambda: database_references(platform.db))
    assert (report.orphans, report.uploads, report.too_young) == ([], [], 1)
    assert temp.exists()
    # an hour later both are fair game
    old = time.time() - 7200
    for path in Path(backend.root).rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))
    report = collect_garbage(backend, lambda: database_references(platform.db))
    assert len(report.orphans) == 1 and [u["key"] for u in report.uploads] == ["models/w.bin"]
    assert report.removed == 1 and report.aborted == 1 and not temp.exists()
    assert theirs.exists()


def test_a_row_written_during_the_run_saves_its_object(platform: Platform) -> None:
    """References are read again before deleting: a row committed meanwhile wins."""
    backend = platform.storage_backend
    key = f"models/{uuid.uuid4()}/{uuid.uuid4()}/model.bin"
    platform.artifacts.put(key, b"late row")
    reads = iter([frozenset(), frozenset({key})])

    def references() -> References:
        return References(keys=next(reads), experiments=frozenset())

    report = collect_garbage(backend, references, older_than=timedelta(0))
    assert report.orphans == [] and report.removed == 0 and backend.exists(key)


def test_gc_bad_duration_is_one_line(tmp_path: Path, run_cli) -> None:
    config = _config(tmp_path / "home", "")
    result = run_cli("--config", str(config), "storage", "gc", "--older-than", "soon")
    assert result.exit_code == 2
    assert "'soon' is not a duration" in result.stderr and "Traceback" not in result.stderr


def test_gc_needs_admin_with_a_token(tmp_path: Path, run_cli) -> None:
    config = _config(tmp_path / "home", "")
    platform = Platform.from_config(config)
    platform.security.create_user(name="dev", role="developer")
    secret = platform.security.create_token(user="dev")["token"]
    refused = run_cli("--config", str(config), "--token", secret, "storage", "gc")
    assert refused.exit_code != 0 and "Traceback" not in refused.stderr
    assert "admin" in refused.stderr
    listed = run_cli("--config", str(config), "--token", secret, "storage", "gc", "--dry-run")
    assert listed.exit_code == 0, listed.stderr
    bad = run_cli("--config", str(config), "--token", "mlr_nope", "storage", "gc", "--dry-run")
    assert bad.exit_code != 0 and "Traceback" not in bad.stderr
