"""Run groups: the study tracked runs are grouped under (``start_run(experiment="churn")``,
an MLflow experiment). A run names its group by ``group_name``; a group is made on first
use and deleted softly (its runs stay)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mlrig import validation as v
from mlrig.db.models import RunGroup, TrainingExperiment
from mlrig.errors import ConflictError, NotFoundError, ValidationError
from mlrig.experiments.views import iso

if TYPE_CHECKING:
    from mlrig.db import Database

View = dict[str, Any]
Views = list[dict[str, Any]]
MAX_GROUP_NAME_LENGTH = 255


def check_group_name(name: object) -> str:
    """A group name: storable text of 1-255 characters, not only spaces. MLflow
    experiment names (``/Users/me/churn``) fit. (A name that looks like another group's
    id would be found as that group: :meth:`RunGroups.get_group` tries ids first.)"""
    v.check_text(name, field="group", min_length=1, max_length=MAX_GROUP_NAME_LENGTH)
    assert isinstance(name, str)
    if not name.strip():
        msg = "group must have something besides spaces"
        raise ValidationError(msg, details={"field": "group"})
    return name


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def name_stem(group: str | None) -> str:
    """The start of a generated run name: the group's name made name-safe (``run``
    without a group)."""
    if not group:
        return "run"
    stem = _UNSAFE.sub("-", group).strip("-._")[:150]
    return stem or "run"


def group_view(row: RunGroup, runs: int = 0) -> View:
    """A group: ``{"id", "name", "description", "tags", "runs", "created_at", "deleted_at"}``."""
    return {
        "id": str(row.id),
        "name": row.name,
        "description": row.description,
        "tags": dict(row.tags or {}),
        "runs": runs,
        "created_at": iso(row.created_at),
        "deleted_at": iso(row.deleted_at),
    }


class RunGroups:
    """Create, find, list, change and (softly) delete run groups."""

    db: Database

    def _group_row(self, session: Session, ref: str | uuid.UUID, *, deleted: bool) -> RunGroup:
        row = None
        key = ref if isinstance(ref, uuid.UUID) else None
        if key is None:
            try:
                key = uuid.UUID(str(ref))
            except ValueError:
                key = None
        if key is not None:
            row = session.get(RunGroup, key)
        if row is None and isinstance(ref, str):
            row = session.scalar(select(RunGroup).where(RunGroup.name == ref))
        if row is None or (row.deleted_at is not None and not deleted):
            msg = f"no run group {str(ref)!r} (an id or a name); see: GET /api/ml/groups"
            raise NotFoundError(msg, details={"group": str(ref)})
        return row

    def _lock_group(self, session: Session, row: RunGroup) -> None:
        """Hold ``row`` for a read-merge-write of its tags: concurrent tag changes with
        different keys all land (on PostgreSQL each merge saw the same old tags)."""
        if self.db.dialect == "postgresql":
            session.refresh(row, with_for_update=True)

    def _run_count(self, session: Session, name: str) -> int:
        return (
            session.scalar(
                select(func.count())
                .select_from(TrainingExperiment)
                .where(TrainingExperiment.group_name == name)
            )
            or 0
        )

    def ensure_group(
        self,
        name: str,
        *,
        description: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> View:
        """The group ``name``, made if missing (race-safe: two callers get one group); a
        softly deleted one is restored. ``description`` and ``tags`` apply to a new group
        (and are merged into an existing one when given)."""
        name = check_group_name(name)
        description = v.check_optional_text(
            description, field="description", max_length=v.MAX_DESCRIPTION_LENGTH
        )
        checked_tags = v.check_tags(tags or {})
        changes = description is not None or bool(checked_tags)
        for _ in range(3):
            with self.db.session() as session:
                if changes:
                    self.db.begin_write(session)
                row = session.scalar(select(RunGroup).where(RunGroup.name == name))
                if row is not None:
                    if changes:
                        self._lock_group(session, row)
                    row.deleted_at = None
                    if description is not None:
                        row.description = description
                    if checked_tags:
                        merged = {**(row.tags or {}), **checked_tags}
                        v.check_tags(merged)
                        row.tags = merged
                    session.flush()
                    return group_view(row, self._run_count(session, name))
            try:
                with self.db.session() as session:
                    row = RunGroup(
                        id=uuid.uuid4(), name=name, description=description, tags=checked_tags
                    )
                    session.add(row)
                    session.flush()
                    return group_view(row)
            except IntegrityError:  # made by a concurrent caller since the lookup
                continue
        msg = f"run group {name!r} could not be created; try again"
        raise ConflictError(msg, details={"group": name})

    def get_group(self, ref: str | uuid.UUID) -> View:
        """A group by id or name, with its number of runs."""
        with self.db.session() as session:
            row = self._group_row(session, ref, deleted=False)
            return group_view(row, self._run_count(session, row.name))

    def list_groups(self, *, include_deleted: bool = False) -> Views:
        """Every group, oldest first, with its number of runs."""
        with self.db.session() as session:
            stmt = select(RunGroup).order_by(RunGroup.created_at, RunGroup.name)
            if not include_deleted:
                stmt = stmt.where(RunGroup.deleted_at.is_(None))
            rows = session.scalars(stmt).all()
            counts = dict(
                session.execute(
                    select(TrainingExperiment.group_name, func.count())
                    .where(TrainingExperiment.group_name.is_not(None))
                    .group_by(TrainingExperiment.group_name)
                ).all()
            )
        return [group_view(row, counts.get(row.name, 0)) for row in rows]

    def update_group(
        self,
        ref: str | uuid.UUID,
        *,
        name: str | None = None,
        description: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> View:
        """Rename a group (its runs follow), change its description, merge ``tags``.

        :raises ConflictError: another group has the new name.
        """
        new_name = None if name is None else check_group_name(name)
        description = v.check_optional_text(
            description, field="description", max_length=v.MAX_DESCRIPTION_LENGTH
        )
        checked_tags = v.check_tags(tags or {})
        try:
            with self.db.session() as session:
                self.db.begin_write(session)
                row = self._group_row(session, ref, deleted=False)
                self._lock_group(session, row)
                if new_name is not None and new_name != row.name:
                    session.execute(
                        update(TrainingExperiment)
                        .where(TrainingExperiment.group_name == row.name)
                        .values(group_name=new_name)
                    )
                    row.name = new_name
                if description is not None:
                    row.description = description
                if checked_tags:
                    merged = {**(row.tags or {}), **checked_tags}
                    v.check_tags(merged)
                    row.tags = merged
                session.flush()
                return group_view(row, self._run_count(session, row.name))
        except IntegrityError:
            msg = f"a run group named {new_name!r} already exists"
            raise ConflictError(msg, details={"group": new_name}) from None

    def delete_group(self, ref: str | uuid.UUID) -> View:
        """Delete a group softly: it leaves listings, its runs stay (and keep its name);
        :meth:`ensure_group` of the name restores it."""
        with self.db.session() as session:
            row = self._group_row(session, ref, deleted=False)
            row.deleted_at = datetime.now(timezone.utc)
            session.flush()
            return group_view(row, self._run_count(session, row.name))

    def restore_group(self, ref: str | uuid.UUID) -> View:
        """Undo :meth:`delete_group`."""
        with self.db.session() as session:
            row = self._group_row(session, ref, deleted=True)
            row.deleted_at = None
            session.flush()
            return group_view(row, self._run_count(session, row.name))
