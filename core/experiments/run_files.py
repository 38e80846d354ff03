"""Files a run logged (``run.log_artifact``): stored by the artifact store under
``experiments/<id>/artifacts/`` (kept by the garbage collector while the run exists),
listed from ``run_artifacts``."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mlrig import validation as v
from mlrig.artifacts.keys import MAX_KEY_BYTES, normalize_key
from mlrig.db.models import RunArtifact, TrainingExperiment
from mlrig.errors import ArtifactNotFoundError, InvalidKeyError, ValidationError
from mlrig.experiments.views import iso
from mlrig.validation import find_bad_text

if TYPE_CHECKING:
    from mlrig.artifacts import ArtifactStore
    from mlrig.db import Database

View = dict[str, Any]
Views = list[dict[str, Any]]
#: bytes per piece of a download
READ_CHUNK = 1024 * 1024
MAX_PATH_LENGTH = 1000


_CHAR = r"[^/\\\x00-\x1f\x7f]"  # any but / \ and control characters
_FIRST = r"[^./\\\x00-\x1f\x7f]"  # ...nor a dot
#: one path segment: not empty, not ``.`` nor ``..``
_SEGMENT = f"(?:{_FIRST}{_CHAR}*|\\.{_FIRST}{_CHAR}*|\\.\\.{_CHAR}+)"
#: a run artifact path: ``/``-separated segments, none empty, ``.`` or ``..`` (also the
#: API's schema, so what it lets through the service takes)
PATH_PATTERN = f"^{_SEGMENT}(?:/{_SEGMENT})*$"
_PATH = re.compile(PATH_PATTERN)


def check_path(path: object) -> str:
    """A run artifact path: relative, ``/``-separated, no empty, ``.`` or ``..`` segment,
    no backslash, NUL or other control character, at most 1000 characters. Taken as
    given (no trimming, no Unicode normalisation): the path is the file's name."""
    if not isinstance(path, str):
        msg = f"artifact path must be a string, got {type(path).__name__}"
        raise ValidationError(msg, details={"field": "path"})
    if len(path) > MAX_PATH_LENGTH or find_bad_text(path) is not None or not _PATH.fullmatch(path):
        msg = (
            f"artifact path {path[:200]!r} must be a relative path of /-separated names "
            f"such as 'plots/loss.png' (no empty, '.' or '..' part, no backslash or "
            f"control character, at most {MAX_PATH_LENGTH} characters)"
        )
        raise ValidationError(msg, details={"path": path[:200]})
    return path


def storage_key(experiment_id: uuid.UUID, path: str) -> str:
    """Where the file ``path`` of a run is stored: ``experiments/<id>/artifacts/<path>``
    when that is a key every store takes as it is, else the path's sha256 in its place
    (a long name in many-byte characters, a name that Unicode normalisation changes)."""
    readable = f"experiments/{experiment_id}/artifacts/{path}"
    try:
        if normalize_key(readable) == readable and len(readable.encode()) <= MAX_KEY_BYTES:
            return readable
    except InvalidKeyError:
        pass
    digest = hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()
    return f"experiments/{experiment_id}/artifacts/by-hash/{digest}"


def artifact_view(row: RunArtifact) -> View:
    """``{"path", "size_bytes", "checksum", "created_at"}``."""
    return {
        "path": row.path,
        "size_bytes": row.size_bytes,
        "checksum": row.checksum,
        "created_at": iso(row.created_at),
    }


class RunFiles:
    """Upload, list and download the files of a run (a mixin of the experiment service)."""

    db: Database
    artifacts: ArtifactStore

    if TYPE_CHECKING:

        def _row(self, session: Session, ref: str | uuid.UUID) -> TrainingExperiment: ...

    def _run_key(self, ref: str | uuid.UUID) -> uuid.UUID:
        with self.db.session() as session:
            return self._row(session, ref).id

    def put_run_artifact(
        self, ref: str | uuid.UUID, path: str, data: bytes | BinaryIO | Any
    ) -> View:
        """Store ``data`` (bytes, a binary stream or a :class:`~pathlib.Path`) as the run's
        file ``path``; the same path again replaces it. Returns the file's record."""
        path = check_path(path)
        key = self._run_key(ref)
        stored = self.artifacts.put(storage_key(key, path), data)
        for _ in range(3):
            with self.db.session() as session:
                row = session.scalar(
                    select(RunArtifact).where(
                        RunArtifact.experiment_id == key, RunArtifact.path == path
                    )
                )
                if row is not None:
                    row.storage_key = stored.key
                    row.size_bytes = stored.size
                    row.checksum = stored.sha256
                    session.flush()
                    return artifact_view(row)
            try:
                with self.db.session() as session:
                    row = RunArtifact(
                        id=uuid.uuid4(),
                        experiment_id=key,
                        path=path,
                        storage_key=stored.key,
                        size_bytes=stored.size,
                        checksum=stored.sha256,
                    )
                    session.add(row)
                    session.flush()
                    return artifact_view(row)
            except IntegrityError:  # the same path uploaded concurrently: update it
                continue
        msg = f"artifact {path!r} could not be recorded; try again"
        raise ValidationError(msg)

    def list_run_artifacts(self, ref: str | uuid.UUID, prefix: str | None = None) -> Views:
        """The run's files, by path; ``prefix`` keeps those under it (``plots/``)."""
        start = prefix or ""
        v.check_text(start, field="prefix", max_length=MAX_PATH_LENGTH)
        with self.db.session() as session:
            key = self._row(session, ref).id
            stmt = select(RunArtifact).where(RunArtifact.experiment_id == key)
            if start:
                stmt = stmt.where(RunArtifact.path.startswith(start, autoescape=True))
            rows = session.scalars(stmt.order_by(RunArtifact.path)).all()
            return [artifact_view(r) for r in rows]

    def run_artifact(self, ref: str | uuid.UUID, path: str) -> View:
        """The record of one file of the run.

        :raises ArtifactNotFoundError: the run has no file ``path``.
        """
        path = check_path(path)
        with self.db.session() as session:
            row = self._row(session, ref)
            found = session.scalar(
                select(RunArtifact).where(
                    RunArtifact.experiment_id == row.id, RunArtifact.path == path
                )
            )
            if found is None:
                msg = f"run {row.name!r} has no artifact {path!r}; see its artifact list"
                raise ArtifactNotFoundError(msg, details={"path": path})
            view = artifact_view(found)
            view["storage_key"] = found.storage_key
            return view

    def open_run_artifact(self, ref: str | uuid.UUID, path: str) -> tuple[Iterator[bytes], int]:
        """The bytes of the run's file ``path`` as an iterator of pieces (verified against
        the recorded size and sha256 as they are read), and its size."""
        record = self.run_artifact(ref, path)
        stream = self.artifacts.open(
            record["storage_key"],
            expected_sha256=record["checksum"],
            expected_size=record["size_bytes"],
        )

        def pieces() -> Iterator[bytes]:
            with stream:
                while chunk := stream.read(READ_CHUNK):
                    yield chunk

        return pieces(), record["size_bytes"]
