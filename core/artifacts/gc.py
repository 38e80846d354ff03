"""Garbage collection of the artifact store: objects no database row references, and
writes that never finished.

A process killed mid-upload (a worker, a server, a client's connection) leaves either an
object whose row was never written (the upload completes before the row is inserted) or
an unfinished write (an S3 multipart upload, a local temporary file). ``mlrig storage
gc`` finds both and removes them.

It is safe while the server works: nothing younger than the grace period is touched (an
upload in progress writes its object before its row), the references are read again
just before anything is deleted, and only mlrig's own namespaces are considered:

- ``models/<model id>/<version id>/...``: referenced by a ``model_artifacts`` row;
- ``experiments/<id>/checkpoints/...``: referenced by the experiment's last checkpoint;
- ``experiments/<id>/logs/...`` and ``experiments/<id>/artifacts/...``: kept while the
  experiment row exists.

Any other key (a dataset uploaded for evaluation, ``quickstart/hello.txt``) is the
user's and is never removed, nor is an unfinished upload outside those namespaces (a
bucket may be shared with other writers).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mlrig.contracts.storage import PendingUpload, StaleUploads
from mlrig.errors import ArtifactNotFoundError, MlrigError

if TYPE_CHECKING:
    from mlrig.contracts.storage import StorageBackend
    from mlrig.db import Database

#: the default grace period: objects and uploads younger than this are never touched
DEFAULT_GRACE = timedelta(hours=1)

#: the key namespaces mlrig writes; keys outside them belong to the user
MANAGED_PREFIXES = ("models/", "experiments/")


@dataclass(frozen=True)
class References:
    """What the database points at, read in one go."""

    #: exact keys (model artifacts, last checkpoints)
    keys: frozenset[str]
    #: ids of existing experiments (their logs and artifacts are kept whole)
    experiments: frozenset[str]

    def holds(self, key: str) -> bool:
        """Whether ``key`` is referenced, or not mlrig's to judge."""
        if key in self.keys or not key.startswith(MANAGED_PREFIXES):
            return True
        parts = key.split("/")
        if parts[0] == "experiments" and len(parts) >= 3:
            if parts[2] == "checkpoints":
                return False  # only the last checkpoint counts, and it is in ``keys``
            return parts[1] in self.experiments
        return False


def database_references(db: Database) -> References:
    """The keys the database references now."""
    from sqlalchemy import select

    from mlrig.db.models import ModelArtifact, TrainingExperiment

    with db.session() as session:
        keys = set(session.scalars(select(ModelArtifact.storage_path)))
        experiments = set()
        for ident, checkpoint in session.execute(
            select(TrainingExperiment.id, TrainingExperiment.last_checkpoint)
        ):
            experiments.add(str(uuid.UUID(str(ident))))
            if isinstance(checkpoint, dict) and isinstance(checkpoint.get("key"), str):
                keys.add(checkpoint["key"])
    return References(keys=frozenset(keys), experiments=frozenset(experiments))


@dataclass
class GcReport:
    """What a run found and did (``removed``/``aborted`` stay 0 on a dry run)."""

    dry_run: bool
    older_than_s: float
    #: ``{"key", "size", "modified"}`` of each unreferenced object past the grace period
    orphans: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"key", "upload_id", "started", "size"}`` of each stale unfinished write
    uploads: list[dict[str, Any]] = field(default_factory=list)
    checked: int = 0
    referenced: int = 0
    #: unreferenced objects still inside the grace period (or of unknown age)
    too_young: int = 0
    removed: int = 0
    aborted: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` and the audit log."""
        return asdict(self)


def collect_garbage(
    backend: StorageBackend,
    references: Callable[[], References],
    *,
    older_than: timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
    now: datetime | None = None,
    on_checked: Callable[[str], None] | None = None,
) -> GcReport:
    """Find (and unless ``dry_run`` remove) unreferenced objects and stale uploads.

    :param references: reads what the database references; called before the listing
        and again just before deleting, so a row written meanwhile saves its object.
    :param older_than: the grace period; younger objects and uploads are left alone.
        An object whose age the backend cannot tell is only removed when it is 0.
    :param on_checked: called with each listed key (for progress).
    """
    if older_than < timedelta(0):
        msg = f"the grace period must not be negative, got {older_than}"
        raise MlrigError(msg)
    now = now or datetime.now(UTC)
    cutoff = now - older_than
    report = GcReport(dry_run=dry_run, older_than_s=older_than.total_seconds())
    before = references()
    candidates: list[dict[str, Any]] = []
    for key in backend.list():
        report.checked += 1
        if on_checked is not None:
            on_checked(key)
        if before.holds(key):
            report.referenced += 1
            continue
        try:
            modified = backend.modified(key)
            size = backend.size(key)
        except ArtifactNotFoundError:
            continue  # deleted meanwhile
        if (modified is None and older_than > timedelta(0)) or (
            modified is not None and modified > cutoff
        ):
            report.too_young += 1
            continue
        candidates.append(
            {"key": key, "size": size, "modified": modified.isoformat() if modified else None}
        )
    uploads: list[PendingUpload] = []
    if isinstance(backend, StaleUploads):
        # mlrig's namespaces only: a bucket may be shared with other writers
        uploads = [
            u
            for u in backend.pending_uploads(started_before=cutoff)
            if u.key.startswith(MANAGED_PREFIXES)
        ]
    report.uploads = [_upload_view(u) for u in uploads]

    # A row committed since the first read keeps its object (its upload was older than
    # the grace period, so this is rare: a slow transaction, a clock skew).
    after = references()
    report.orphans = [c for c in candidates if not after.holds(c["key"])]
    report.referenced += len(candidates) - len(report.orphans)
    if dry_run:
        return report
    for orphan in report.orphans:
        try:
            backend.delete(orphan["key"])
            report.removed += 1
        except MlrigError as exc:
            report.failed.append({"key": orphan["key"], "error": str(exc)})
    if isinstance(backend, StaleUploads):
        for upload in uploads:
            try:
                backend.abort_upload(upload)
                report.aborted += 1
            except MlrigError as exc:
                report.failed.append({"key": upload.key, "error": str(exc)})
    return report


def _upload_view(upload: PendingUpload) -> dict[str, Any]:
    return {
        "key": upload.key,
        "upload_id": upload.upload_id,
        "started": upload.started.isoformat() if upload.started else None,
        "size": upload.size,
    }
