"""The ``s3`` backend against moto's standalone server: the contract plus S3 specifics."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlrig.errors import ArtifactNotFoundError, ConfigError, StorageError
from mlrig.plugins.storage_s3 import S3Storage
from mlrig.testing.storage import MotoBucket, StorageContract, sample_bytes

pytestmark = pytest.mark.s3

MiB = 1024 * 1024


def make_s3(bucket: MotoBucket, **options: object) -> S3Storage:
    return S3Storage.from_options(bucket.options(block_size=5 * MiB, **options), where="storage.s3")


def missing_bucket(bucket: MotoBucket) -> S3Storage:
    return S3Storage.from_options(
        {"bucket": f"{bucket.name}-missing", "endpoint_url": bucket.endpoint_url, "retries": 0},
        where="storage.s3",
    )


class TestS3Contract(StorageContract):
    # Above the 5 MiB part size: "large" objects go up as real multipart uploads.
    large_size = 11 * MiB
    write_piece = 1 * MiB
    # Parts are buffered and sent (about 3.5 parts of 5 MiB at the peak), never the object.
    memory_bound = 24 * MiB
    streaming_size = 48 * MiB

    @pytest.fixture
    def storage(self, s3_bucket: MotoBucket) -> S3Storage:
        return make_s3(s3_bucket, prefix="team/artifacts")

    @pytest.fixture
    def broken_storage(self, s3_bucket: MotoBucket) -> S3Storage:
        return missing_bucket(s3_bucket)


class TestS3BucketRootContract(StorageContract):
    """Without a prefix, keys sit at the bucket root."""

    large_size = 1 * MiB
    memory_bound = 24 * MiB
    streaming_size = 48 * MiB

    @pytest.fixture
    def storage(self, s3_bucket: MotoBucket) -> S3Storage:
        return make_s3(s3_bucket)

    @pytest.fixture
    def broken_storage(self, s3_bucket: MotoBucket) -> S3Storage:
        return missing_bucket(s3_bucket)


def test_failed_multipart_upload_is_aborted(s3_bucket: MotoBucket) -> None:
    storage = make_s3(s3_bucket)
    client = s3_bucket.client()
    with pytest.raises(RuntimeError), storage.open_write("big.bin") as out:
        out.write(sample_bytes(6 * MiB))  # one part uploaded: a multipart upload is open
        assert len(client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])) == 1
        raise RuntimeError
    assert client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=s3_bucket.name).get("KeyCount") == 0


def test_objects_live_under_the_prefix(s3_bucket: MotoBucket) -> None:
    storage = make_s3(s3_bucket, prefix="/team/a/")
    with storage.open_write("m/1.bin") as out:
        out.write(b"1")
    listed = s3_bucket.client().list_objects_v2(Bucket=s3_bucket.name)
    assert [item["Key"] for item in listed["Contents"]] == ["team/a/m/1.bin"]
    other = make_s3(s3_bucket, prefix="team/b")
    assert list(other.list()) == []
    with pytest.raises(ArtifactNotFoundError):
        other.open_read("m/1.bin")


def test_missing_bucket_fails_check(s3_bucket: MotoBucket) -> None:
    storage = S3Storage.from_options(
        {"bucket": "no-such-bucket-here", "endpoint_url": s3_bucket.endpoint_url}, where="s"
    )
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        storage.check()


def test_unreachable_endpoint_is_storage_error(s3_bucket: MotoBucket) -> None:
    storage = S3Storage.from_options(
        {"bucket": s3_bucket.name, "endpoint_url": "http://127.0.0.1:9", "retries": 0},
        where="storage.s3",
    )
    with pytest.raises(StorageError, match="cannot reach the endpoint"):
        storage.check()


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"storage\.s3\.block_size"):
        S3Storage.from_options({"bucket": "b-1", "block_size": 1024}, where="storage.s3")
    with pytest.raises(ConfigError, match=r"storage\.s3\.bucket"):
        S3Storage.from_options({}, where="storage.s3")


def test_describe_has_no_secret(s3_bucket: MotoBucket) -> None:
    storage = make_s3(s3_bucket, key="AKIAEXAMPLE", secret="very-secret")
    text = repr(storage.describe()) + repr(storage.options)
    assert "very-secret" not in text
    assert storage.describe()["bucket"] == s3_bucket.name


def test_platform_uses_s3_backend(s3_bucket: MotoBucket, tmp_path) -> None:
    from mlrig.artifacts import generate_master_key
    from mlrig.platform import Platform

    (tmp_path / "mlrig.toml").write_text(
        "[storage]\n"
        'backend = "s3"\n'
        'compression = "zstd"\n'
        "encryption = true\n"
        f'master_key = "{generate_master_key()}"\n'
        "[storage.s3]\n"
        f'bucket = "{s3_bucket.name}"\n'
        f'endpoint_url = "{s3_bucket.endpoint_url}"\n'
        'prefix = "mlrig"\n'
    )
    platform = Platform.from_config(tmp_path / "mlrig.toml")
    stored = platform.artifacts.put("m/1/model.bin", b"weights" * 1000)
    assert stored.encryption is not None
    assert platform.artifacts.get_bytes("m/1/model.bin", expected_sha256=stored.sha256) == (
        b"weights" * 1000
    )
    keys = [o["Key"] for o in s3_bucket.client().list_objects_v2(Bucket=s3_bucket.name)["Contents"]]
    assert keys == ["mlrig/m/1/model.bin"]


def test_module_import_does_not_import_s3fs() -> None:
    code = (
        "import sys, mlrig.plugins.storage_s3 as m;"
        "m.S3Storage.from_options({'bucket': 'b-1'}, where='s');"
        "print(sorted(n for n in sys.modules"
        " if n.split('.')[0] in ('s3fs', 'boto3', 'botocore', 'aiobotocore')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_part_size_grows_with_the_upload(
    s3_bucket: MotoBucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlrig.plugins.storage_s3 as plugin

    monkeypatch.setattr(plugin, "PARTS_PER_SIZE", 1)  # double after every part
    storage = make_s3(s3_bucket)
    data = sample_bytes(20 * MiB, seed=7)
    with storage.open_write("growing.bin") as out:
        for start in range(0, len(data), MiB):
            out.write(data[start : start + MiB])
    client = s3_bucket.client()
    heads = [
        client.head_object(Bucket=s3_bucket.name, Key="growing.bin", PartNumber=n)
        for n in (1, 2, 3)
    ]
    sizes = [head["ContentLength"] for head in heads]
    assert sizes == [5 * MiB, 10 * MiB, 5 * MiB]  # 5, then 10, then the 5 MiB rest
    with storage.open_read("growing.bin") as back:
        assert back.read() == data


def test_master_key_rotation_on_s3(s3_bucket: MotoBucket) -> None:
    """Rotation rewrites objects in place through S3 too (a multipart one included)."""
    from mlrig.artifacts import ArtifactStore, generate_master_key
    from mlrig.artifacts.rotation import rotate_master_key

    old_key, new_key = generate_master_key(), generate_master_key()
    storage = make_s3(s3_bucket, prefix="rotate")
    old = ArtifactStore(storage, encrypt=True, master_key=old_key)
    blobs = {"small.bin": b"s" * 100, "big.bin": sample_bytes(7 * MiB, seed=3)}
    for key, data in blobs.items():
        old.put(key, data)
    both = ArtifactStore(storage, encrypt=True, master_key=new_key, previous_master_keys=[old_key])
    report = rotate_master_key(both)
    assert (report["rewritten"], report["failed"]) == (2, [])
    new_only = ArtifactStore(storage, master_key=new_key)
    assert {key: new_only.get_bytes(key) for key in blobs} == blobs


def test_missing_bucket_is_named_with_the_fix(s3_bucket: MotoBucket) -> None:
    """Not "no artifact '.../mlrig-model.json'": the bucket is what is missing."""
    storage = S3Storage.from_options(
        {"bucket": "no-such-bucket-here", "endpoint_url": s3_bucket.endpoint_url, "retries": 0},
        where="storage.s3",
    )
    calls = {
        "check": storage.check,
        "open_read": lambda: storage.open_read("models/m/1/mlrig-model.json"),
        "size": lambda: storage.size("models/m/1/mlrig-model.json"),
        "exists": lambda: storage.exists("models/m/1/mlrig-model.json"),
        "list": lambda: list(storage.list("models/")),
        "write": lambda: _write_one(storage),
    }
    for name, call in calls.items():
        with pytest.raises(StorageError) as caught:
            call()
        message = str(caught.value)
        assert "bucket 'no-such-bucket-here' does not exist" in message, name
        assert "aws s3 mb s3://no-such-bucket-here" in message, name
        assert "[storage.s3] bucket" in message, name
        assert not isinstance(caught.value, ArtifactNotFoundError), name
    # a missing key in a bucket that exists is still "no artifact"
    present = make_s3(s3_bucket)
    with pytest.raises(ArtifactNotFoundError, match=r"no artifact 'models/m/1/mlrig-model\.json'"):
        present.open_read("models/m/1/mlrig-model.json")


def _write_one(storage: S3Storage) -> None:
    with storage.open_write("k.bin") as out:
        out.write(b"x")
