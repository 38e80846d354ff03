"""The ``s3`` storage backend: S3 and S3-compatible stores (MinIO, Ceph, moto) via s3fs.

Needs ``pip install 'mlrig[s3]'``. s3fs (and boto, aiobotocore behind it) is imported on
first use, never when this module is imported, so listing or validating backends stays
fast. Large objects go up as a multipart upload of ``block_size`` parts; a write that
fails aborts the multipart upload, so nothing becomes visible and no parts linger.
Credentials come from the options if given, else from the usual AWS chain (environment,
``~/.aws`` profile, instance role).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from mlrig.artifacts.keys import normalize_key
from mlrig.contracts.storage import PendingUpload, StorageBackend
from mlrig.errors import ArtifactNotFoundError, MissingExtraError, MlrigError, StorageError

MiB = 1024 * 1024


class S3StorageOptions(BaseModel):
    """``[storage.s3]`` options."""

    model_config = ConfigDict(extra="forbid")
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-_]{1,253}[a-z0-9]$")
    #: folder inside the bucket that holds every artifact ("" for the bucket root)
    prefix: str = ""
    #: for S3-compatible stores, e.g. "http://127.0.0.1:9000" (MinIO)
    endpoint_url: str | None = None
    region: str | None = None
    #: a profile of ~/.aws/config; else the default credential chain
    profile: str | None = None
    key: str | None = None
    secret: SecretStr | None = None
    #: first multipart part size (S3 needs >= 5 MiB); it doubles every 1,000 parts, so
    #: memory stays at about two parts for common sizes and 5 TiB objects still fit
    block_size: int = Field(default=8 * MiB, ge=5 * MiB, le=5 * 1024 * MiB)
    #: retries of a failed request (connection errors, throttling) before giving up
    retries: int = Field(default=4, ge=0, le=20)

    @field_validator("prefix")
    @classmethod
    def _normal_prefix(cls, value: str) -> str:
        value = value.strip().strip("/")
        return normalize_key(value) if value else ""


class S3Storage(StorageBackend):
    """Artifacts as objects under ``s3://bucket/prefix/``."""

    Options = S3StorageOptions

    def __init__(self, options: S3StorageOptions) -> None:
        super().__init__(options)
        self.bucket = options.bucket
        self.prefix = options.prefix
        self._root = f"{options.bucket}/{options.prefix}" if options.prefix else options.bucket

    @cached_property
    def _fs(self) -> Any:
        try:
            import s3fs
        except ModuleNotFoundError as exc:
            msg = f"storage backend 's3' needs: pip install 'mlrig[s3]' ({exc.name} is missing)"
            raise MissingExtraError(msg, details={"missing": [exc.name]}) from exc
        opts = self.options
        client_kwargs = {"region_name": opts.region} if opts.region else {}
        fs = s3fs.S3FileSystem(
            key=opts.key,
            secret=opts.secret.get_secret_value() if opts.secret else None,
            profile=opts.profile,
            endpoint_url=opts.endpoint_url,
            client_kwargs=client_kwargs,
            config_kwargs={"retries": {"max_attempts": opts.retries + 1, "mode": "standard"}},
            default_block_size=opts.block_size,
            # Several processes share the bucket: never answer from a stale listing.
            # (fsspec reuses one instance per set of arguments, and its client with it.)
            use_listings_cache=False,
        )
        fs.retries = opts.retries + 1  # s3fs's own loop, around errors botocore lets through
        return fs

    def _path(self, key: str) -> str:
        return f"{self._root}/{normalize_key(key)}"

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        with _translated("open for writing", key, self.bucket):
            handle = self._fs.open(path, "wb", block_size=self.options.block_size)
        try:
            yield _Writer(handle, key, self.bucket)  # type: ignore[misc]
            with _translated("write", key, self.bucket):
                handle.close()  # completes the upload: only now is the object visible
        except BaseException:
            _discard(handle)
            raise

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        with self._missing_bucket_check(), _translated("open", key, self.bucket):
            handle = self._fs.open(path, "rb", block_size=self.options.block_size)
        return io.BufferedReader(_Reader(handle, key, self.bucket), buffer_size=MiB)  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        with _translated("check", key, self.bucket):
            try:
                info = self._fs.info(self._path(key))
            except FileNotFoundError as exc:
                if _is_missing_bucket(exc):
                    raise _missing_bucket(self.bucket) from None
                return False
        return info.get("type") == "file"

    def size(self, key: str) -> int:
        return int(self._info(key)["size"])

    def modified(self, key: str) -> datetime | None:
        stamp = self._info(key).get("LastModified")
        if isinstance(stamp, datetime):
            return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
        return None

    def _info(self, key: str) -> dict[str, Any]:
        with self._missing_bucket_check(), _translated("stat", key, self.bucket):
            info = self._fs.info(self._path(key))
        if info.get("type") != "file":
            raise _not_found(key)
        return info

    @contextlib.contextmanager
    def _missing_bucket_check(self) -> Iterator[None]:
        """Tell "no such bucket" from "no such key": S3 often says only "not found"."""
        try:
            yield
        except ArtifactNotFoundError:
            try:
                self._fs.call_s3("head_bucket", Bucket=self.bucket)
            except FileNotFoundError:
                raise _missing_bucket(self.bucket) from None
            except Exception:  # unreachable or denied: the key error stands
                pass
            raise

    def delete(self, key: str) -> None:
        with _translated("delete", key, self.bucket), contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(self._path(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        # s3fs's ``prefix`` filters on the server: only matching keys are listed.
        with _translated("list", prefix or "/", self.bucket):
            found = self._fs.find(self._root, prefix=prefix)
        start = len(self._root) + 1
        keys = (name[start:] for name in found if not name.endswith("/"))
        return iter(sorted(k for k in keys if k.startswith(prefix)))

    def describe(self) -> dict[str, Any]:
        opts = self.options
        return {
            "bucket": opts.bucket,
            "prefix": opts.prefix,
            "endpoint_url": opts.endpoint_url,
            "region": opts.region,
            "block_size": opts.block_size,
        }

    def check(self) -> None:
        with _translated("reach bucket", self.bucket, self.bucket):
            self._fs.call_s3("head_bucket", Bucket=self.bucket)

    def pending_uploads(self, *, started_before: datetime) -> Iterator[PendingUpload]:
        """Multipart uploads under the prefix begun before ``started_before``: a writer
        that was killed never completed or aborted them, and their parts cost space."""
        root = f"{self.prefix}/" if self.prefix else ""
        markers: dict[str, str] = {}
        while True:
            with _translated("list multipart uploads", root or "/", self.bucket):
                page = self._fs.call_s3(
                    "list_multipart_uploads", Bucket=self.bucket, Prefix=root, **markers
                )
            for upload in page.get("Uploads", []):
                started = upload.get("Initiated")
                if isinstance(started, datetime) and started.tzinfo is None:
                    started = started.replace(tzinfo=UTC)
                if isinstance(started, datetime) and started >= started_before:
                    continue
                yield PendingUpload(
                    key=upload["Key"][len(root) :],
                    upload_id=upload["UploadId"],
                    started=started if isinstance(started, datetime) else None,
                )
            if not page.get("IsTruncated"):
                return
            markers = {
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }

    def abort_upload(self, upload: PendingUpload) -> None:
        path = self._path(upload.key)[len(self.bucket) + 1 :]
        with _translated("abort multipart upload", upload.key, self.bucket):
            try:
                self._fs.call_s3(
                    "abort_multipart_upload",
                    Bucket=self.bucket,
                    Key=path,
                    UploadId=upload.upload_id,
                )
            except FileNotFoundError:
                return  # already completed or aborted (NoSuchUpload)


#: S3 allows 10,000 parts per upload; the part size doubles after each this many parts
PARTS_PER_SIZE = 1000


class _Writer:
    """The s3fs file, with S3 failures reported as :class:`StorageError`.

    It also grows the part size as the upload grows: a fixed part size either wastes
    memory on every upload or caps the object size (8 MiB x 10,000 parts = 78 GiB).
    """

    def __init__(self, handle: Any, key: str, bucket: str) -> None:
        self._handle = handle
        self._key = key
        self._bucket = bucket
        self._base = handle.blocksize

    def write(self, data: bytes) -> int:
        with _translated("write", self._key, self._bucket):
            written = self._handle.write(data)
        parts = len(getattr(self._handle, "parts", None) or ())
        self._handle.blocksize = self._base * 2 ** (parts // PARTS_PER_SIZE)
        return written

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._handle.tell()

    def flush(self) -> None:
        """A no-op: s3fs uploads whole parts as they fill, and the rest on close."""


class _Reader(io.RawIOBase):
    """The s3fs file as a raw stream, with S3 failures reported as :class:`StorageError`."""

    def __init__(self, handle: Any, key: str, bucket: str) -> None:
        self._handle = handle
        self._key = key
        self._bucket = bucket

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with _translated("read", self._key, self._bucket):
            data = self._handle.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._handle.close()
            super().close()


def _discard(handle: Any) -> None:
    """Abort the multipart upload (if one started) and drop the buffer.

    The key keeps its old object, or stays absent. Errors are ignored: the caller is
    already raising the reason the write failed, which matters more.
    """
    with contextlib.suppress(Exception):
        handle.discard()
    handle.closed = True  # else s3fs tries to upload the dropped buffer when collected


def _not_found(key: str) -> ArtifactNotFoundError:
    return ArtifactNotFoundError(f"no artifact {key!r} in the S3 store", details={"key": key})


def _missing_bucket(bucket: str) -> StorageError:
    msg = (
        f"S3 bucket {bucket!r} does not exist; create it (e.g. `aws s3 mb s3://{bucket}`, "
        "adding --endpoint-url for an S3-compatible store) or fix [storage.s3] bucket"
    )
    return StorageError(msg, details={"bucket": bucket, "reason": "no_such_bucket"})


def _is_missing_bucket(exc: BaseException) -> bool:
    """Whether an s3fs/botocore error says the bucket (not a key) is missing."""
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    text = str(exc)
    return code == "NoSuchBucket" or "NoSuchBucket" in text or "bucket does not exist" in text


@contextlib.contextmanager
def _translated(action: str, key: str, bucket: str) -> Iterator[None]:
    """Turn s3fs/botocore failures into mlrig errors (the plugin boundary)."""
    try:
        yield
    except MlrigError:
        raise
    except FileNotFoundError as exc:
        if _is_missing_bucket(exc) or action == "reach bucket":
            raise _missing_bucket(bucket) from None
        if action == "list":
            msg = f"S3 {action} {key!r} failed: bucket or prefix not found ({exc})"
            raise StorageError(msg, details={"key": key}) from exc
        raise _not_found(key) from None
    except PermissionError as exc:
        msg = (
            f"S3 {action} {key!r} was denied ({exc}); check the credentials "
            "([storage.s3] key/secret/profile or AWS_* variables) and the bucket policy"
        )
        raise StorageError(msg, details={"key": key}) from exc
    except Exception as exc:  # the plugin boundary: botocore/aiobotocore/s3fs errors
        if _is_missing_bucket(exc):
            raise _missing_bucket(bucket) from None
        raise StorageError(_describe(action, key, exc), details={"key": key}) from exc


def _describe(action: str, key: str, exc: Exception) -> str:
    name = type(exc).__name__
    if name == "NoCredentialsError":
        return (
            f"S3 {action} {key!r} failed: no AWS credentials found; set [storage.s3] "
            "key and secret, a profile, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"):
        return f"S3 {action} {key!r} failed: cannot reach the endpoint ({exc}); check endpoint_url"
    return f"S3 {action} {key!r} failed: {name}: {exc}"
