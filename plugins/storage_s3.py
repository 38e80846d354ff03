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
from functools import cached_property
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from mlrig.artifacts.keys import normalize_key
from mlrig.contracts.storage import StorageBackend
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
        with _translated("open for writing", key):
            handle = self._fs.open(path, "wb", block_size=self.options.block_size)
        try:
            yield _Writer(handle, key)  # type: ignore[misc]
            with _translated("write", key):
                handle.close()  # completes the upload: only now is the object visible
        except BaseException:
            _discard(handle)
            raise

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        with _translated("open", key):
            handle = self._fs.open(path, "rb", block_size=self.options.block_size)
        return io.BufferedReader(_Reader(handle, key), buffer_size=MiB)  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        with _translated("check", key):
            try:
                info = self._fs.info(self._path(key))
            except FileNotFoundError:
                return False
        return info.get("type") == "file"

    def size(self, key: str) -> int:
        with _translated("stat", key):
            info = self._fs.info(self._path(key))
        if info.get("type") != "file":
            raise _not_found(key)
        return int(info["size"])

    def delete(self, key: str) -> None:
        with _translated("delete", key), contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(self._path(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        # s3fs's ``prefix`` filters on the server: only matching keys are listed.
        with _translated("list", prefix or "/"):
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
        with _translated("reach bucket", self.bucket):
            self._fs.call_s3("head_bucket", Bucket=self.bucket)


#: S3 allows 10,000 parts per upload; the part size doubles after each this many parts
PARTS_PER_SIZE = 1000


class _Writer:
    """The s3fs file, with S3 failures reported as :class:`StorageError`.

    It also grows the part size as the upload grows: a fixed part size either wastes
    memory on every upload or caps the object size (8 MiB x 10,000 parts = 78 GiB).
    """

    def __init__(self, handle: Any, key: str) -> None:
        self._handle = handle
        self._key = key
        self._base = handle.blocksize

    def write(self, data: bytes) -> int:
        with _translated("write", self._key):
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

    def __init__(self, handle: Any, key: str) -> None:
        self._handle = handle
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with _translated("read", self._key):
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


@contextlib.contextmanager
def _translated(action: str, key: str) -> Iterator[None]:
    """Turn s3fs/botocore failures into mlrig errors (the plugin boundary)."""
    try:
        yield
    except MlrigError:
        raise
    except FileNotFoundError as exc:
        if action in ("reach bucket", "list"):
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
