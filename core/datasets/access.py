"""Reading datasets a user names, on the server's side, within configured bounds.

A ``dataset_uri`` (an evaluation's, an experiment's ``--data``) is read by the server or a
worker with their file system and credentials, so it must not reach further than the
operator allowed (``[datasets]`` in ``mlrig.toml``):

- ``artifact://KEY``: the artifact store, always;
- a path (or ``file://``): only a regular file under the bundled datasets or one of
  ``allowed_roots``, symlinks resolved first; FIFOs, devices and folders are refused;
- ``s3://``, ``gs://``, ...: only the schemes in ``allowed_schemes``, and a missing
  fsspec implementation is a 400 that names what to install.

Every read is streamed and stops at ``max_bytes`` (413 beyond). Errors name the URI the
user gave and what to change, never the file's contents.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mlrig.errors import (
    ArtifactNotFoundError,
    MissingExtraError,
    MlrigError,
    NotFoundError,
    TooLargeError,
    ValidationError,
)

if TYPE_CHECKING:
    from mlrig.artifacts import ArtifactStore
    from mlrig.config import Settings

#: the folder of the bundled datasets, whose CSV files are always readable
BUNDLED = Path(__file__).resolve().parent

#: object-store schemes that may be allowed, and what provides each
REMOTE_SCHEMES: dict[str, str] = {
    "s3": "pip install 'mlrig[s3]'",
    "s3a": "pip install 'mlrig[s3]'",
    "gs": "pip install gcsfs",
    "gcs": "pip install gcsfs",
    "az": "pip install adlfs",
    "abfs": "pip install adlfs",
}
_PIECE = 1024 * 1024


class DatasetAccess:
    """Where datasets may be read from, and how much of one.

    :param artifacts: the store ``artifact://KEY`` reads.
    :param roots: folders whose regular files may be read (the bundled datasets always).
    :param schemes: remote schemes (``s3``, ``gs``...) that may be read through fsspec.
    :param max_bytes: the largest dataset read; more is :class:`TooLargeError` (413).
    :param base_dir: the folder relative paths start at (the config file's).
    :param any_local_file: let paths reach any regular file (the local operator's CLI,
        which reads as the user who runs it; never the server).
    """

    def __init__(
        self,
        *,
        artifacts: ArtifactStore | None,
        roots: Iterable[str | os.PathLike[str]] = (),
        schemes: Sequence[str] = (),
        max_bytes: int = 256 * 1024 * 1024,
        base_dir: Path | None = None,
        any_local_file: bool = False,
    ) -> None:
        self.artifacts = artifacts
        self.base_dir = (base_dir or Path.cwd()).resolve()
        self.roots = [self._absolute(r).resolve() for r in roots]
        self.schemes = tuple(schemes)
        self.max_bytes = max_bytes
        self.any_local_file = any_local_file

    @classmethod
    def from_settings(
        cls, settings: Settings, artifacts: ArtifactStore | None, *, any_local_file: bool = False
    ) -> DatasetAccess:
        """The access the ``[datasets]`` section of the config allows."""
        section = settings.datasets
        return cls(
            artifacts=artifacts,
            roots=section.allowed_roots,
            schemes=section.allowed_schemes,
            max_bytes=int(section.max_bytes),
            base_dir=settings.base_dir,
            any_local_file=any_local_file,
        )

    def local_operator(self) -> DatasetAccess:
        """The same bounds, but any regular file the operator can read, relative paths
        taken from the working directory (the CLI's, as typed in a shell)."""
        copy = DatasetAccess(
            artifacts=self.artifacts,
            schemes=self.schemes,
            max_bytes=self.max_bytes,
            base_dir=Path.cwd(),
            any_local_file=True,
        )
        copy.roots = list(self.roots)
        return copy

    def _absolute(self, value: str | os.PathLike[str]) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    # --- checking ------------------------------------------------------------------------

    def check(self, uri: str) -> None:
        """Refuse ``uri`` now if no read of it could be allowed (for create-time checks)."""
        scheme = _scheme(uri)
        if scheme == "artifact":
            self._artifact_key(uri)
        elif scheme in ("", "file"):
            self._local_path(uri)
        else:
            self._remote(uri, scheme)

    def _artifact_key(self, uri: str) -> str:
        from mlrig.artifacts import normalize_key

        if self.artifacts is None:
            msg = f"dataset {uri!r}: artifact:// needs the artifact store, not configured here"
            raise ValidationError(msg)
        return normalize_key(uri.removeprefix("artifact://"))

    def _local_path(self, uri: str) -> Path:
        raw = uri.removeprefix("file://")
        if not raw or "\x00" in raw:
            msg = f"dataset {uri!r} is not a file path"
            raise ValidationError(msg)
        path = Path(os.path.realpath(self._absolute(raw)))  # symlinks and ".." resolved
        if (
            self.any_local_file
            # the bundled CSV files, not their folder's other files (mlrig's code)
            or (path.parent == BUNDLED and path.suffix == ".csv")
            or any(path.is_relative_to(root) for root in self.roots)
        ):
            return path
        msg = (
            f"dataset {uri!r} is outside the folders the server may read; upload it to the "
            "artifact store and use artifact://KEY, or add its folder to [datasets] "
            "allowed_roots"
        )
        raise ValidationError(msg, details={"uri": uri, "reason": "outside_allowed_roots"})

    def _remote(self, uri: str, scheme: str) -> Any:
        if "::" in uri:  # fsspec URL chaining would let one URL reach another file system
            msg = f"dataset {uri!r}: chained URLs ('::') are not allowed; give one plain URL"
            raise ValidationError(msg, details={"uri": uri, "reason": "chained_url"})
        if scheme not in self.schemes:
            allowed = ", ".join(f"{s}://" for s in self.schemes) or "none"
            msg = (
                f"dataset {uri!r}: scheme {scheme + '://'!r} is not allowed (allowed: "
                f"artifact://, paths under [datasets] allowed_roots, and {allowed}); "
                "an operator can add it to [datasets] allowed_schemes"
            )
            raise ValidationError(msg, details={"uri": uri, "reason": "scheme_not_allowed"})
        import fsspec

        try:
            return fsspec.get_filesystem_class(scheme)
        except (ImportError, ValueError) as exc:
            hint = REMOTE_SCHEMES.get(scheme, "install its fsspec implementation")
            msg = f"dataset {uri!r}: reading {scheme}:// needs: {hint}"
            raise MissingExtraError(msg, details={"missing": [scheme]}) from exc

    # --- reading ------------------------------------------------------------------------

    def read(self, uri: str) -> bytes:
        """The bytes of ``uri``, if allowed and not larger than :attr:`max_bytes`."""
        scheme = _scheme(uri)
        if scheme == "artifact":
            key = self._artifact_key(uri)
            assert self.artifacts is not None  # checked by _artifact_key
            try:
                with self.artifacts.open(key) as stream:
                    return self._capped(uri, stream)
            except ArtifactNotFoundError:
                # the backend's message names its root folder or bucket: not for users
                msg = f"dataset {uri!r} not found in the artifact store"
                raise NotFoundError(msg, details={"uri": uri}) from None
        if scheme in ("", "file"):
            return self._read_local(uri, self._local_path(uri))
        return self._read_remote(uri, scheme)

    def _read_local(self, uri: str, path: Path) -> bytes:
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; refused just below
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise NotFoundError(f"dataset {uri!r} not found", details={"uri": uri}) from None
        except OSError as exc:
            msg = f"cannot read dataset {uri!r}: {exc.strerror or type(exc).__name__}"
            raise ValidationError(msg, details={"uri": uri}) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            msg = f"dataset {uri!r} is not a regular file (a folder, device or pipe)"
            raise ValidationError(msg, details={"uri": uri, "reason": "not_a_file"})
        with os.fdopen(fd, "rb") as handle:
            self._check_size(uri, info.st_size)
            if hasattr(os, "set_blocking"):
                os.set_blocking(handle.fileno(), True)
            return self._capped(uri, handle)

    def _read_remote(self, uri: str, scheme: str) -> bytes:
        self._remote(uri, scheme)  # allowed and installed
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(uri)
            info = fs.info(path)
            if info.get("type") != "file":
                msg = f"dataset {uri!r} is not a file"
                raise ValidationError(msg, details={"uri": uri, "reason": "not_a_file"})
            if isinstance(info.get("size"), int):
                self._check_size(uri, info["size"])
            with fs.open(path, "rb") as handle:
                return self._capped(uri, handle)
        except MlrigError:
            raise
        except FileNotFoundError:
            raise NotFoundError(f"dataset {uri!r} not found", details={"uri": uri}) from None
        except Exception as exc:  # the fsspec boundary: any backend's failure
            msg = f"cannot read dataset {uri!r}: {_reason(exc)}"
            raise ValidationError(msg, details={"uri": uri}) from None

    def _check_size(self, uri: str, size: int) -> None:
        if size > self.max_bytes:
            msg = (
                f"dataset {uri!r} is {size} bytes, more than the {self.max_bytes} the server "
                "reads ([datasets] max_bytes)"
            )
            raise TooLargeError(msg, details={"uri": uri, "limit": self.max_bytes})

    def _capped(self, uri: str, stream: IO[bytes]) -> bytes:
        """Read to the end, but never more than :attr:`max_bytes` (a file may grow)."""
        out = io.BytesIO()
        while chunk := stream.read(min(_PIECE, self.max_bytes + 1 - out.tell())):
            out.write(chunk)
            if out.tell() > self.max_bytes:
                self._check_size(uri, out.tell())
        return out.getvalue()

    def read_frame(self, uri: str) -> tuple[Any, str]:
        """The dataset as a pandas DataFrame (CSV, or parquet by extension) and the sha256
        of its bytes."""
        raw = self.read(uri)
        return parse_frame(uri, raw), hashlib.sha256(raw).hexdigest()


def parse_frame(uri: str, raw: bytes) -> Any:
    """Parse CSV (or ``.parquet``) bytes; the error names the format, not the content."""
    try:
        import pandas as pd
    except ModuleNotFoundError as exc:
        msg = f"reading datasets needs pandas: pip install 'mlrig[sklearn]' ({exc.name} missing)"
        raise MissingExtraError(msg, details={"missing": [exc.name]}) from exc
    try:
        if uri.endswith(".parquet"):
            return pd.read_parquet(io.BytesIO(raw))
        return pd.read_csv(io.BytesIO(raw))
    except Exception as exc:  # pandas raises many types for a malformed file
        msg = f"dataset {uri!r} is not a readable CSV/parquet file ({type(exc).__name__})"
        raise ValidationError(msg, details={"uri": uri}) from None


def _scheme(uri: str) -> str:
    head, sep, _rest = uri.partition("://")
    if not sep:
        return ""
    return head.lower()


def _reason(exc: Exception) -> str:
    name = type(exc).__name__
    if name == "NoCredentialsError":
        return "no credentials for it on the server"
    if isinstance(exc, PermissionError):
        return "access denied with the server's credentials"
    return name
