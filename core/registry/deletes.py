"""Deleting, restoring and purging models and versions.

Deletes are soft (``deleted_at``): the rows and artifacts stay, hidden from lookups, until
:meth:`RegistryDeletes.restore_model`/:meth:`~RegistryDeletes.restore_version` bring them
back or :meth:`RegistryDeletes.purge` removes those deleted longer ago than the retention
period. A version in production, aliased or deployed is protected: deleting it (or its
model) takes an admin's ``force``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from mlrig.db.models import Base, MLModel, ModelAlias, ModelArtifact, RegisteredModel
from mlrig.errors import ConflictError, NotFoundError, PermissionDeniedError, StorageError
from mlrig.security import Permission
from mlrig.validation import check_int

if TYPE_CHECKING:
    from mlrig.db import Database
    from mlrig.registry.service import ModelRegistry
    from mlrig.security import Principal


#: the longest purge horizon, in days (a century)
MAX_PURGE_DAYS = 36_500


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _clear_references(session: Session, table: Table, ids: list[uuid.UUID]) -> None:
    """Set to NULL the nullable foreign keys (without ``ON DELETE``) that point at the
    rows ``ids`` of ``table``, so that those rows can be deleted."""
    for other in Base.metadata.sorted_tables:
        for fk in other.foreign_keys:
            if fk.column.table is table and fk.ondelete is None and fk.parent.nullable:
                session.execute(
                    other.update().where(fk.parent.in_(ids)).values({fk.parent.name: None})
                )


class RegistryDeletes:
    """Soft deletes, restores and purges over a :class:`ModelRegistry`."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    @property
    def db(self) -> Database:
        return self.registry.db

    def _guards(self, session: Session, versions: list[MLModel]) -> dict[str, list[str]]:
        """Why each version may not simply be deleted: ``{version: [reasons]}``.

        A version in production, pointed at by an alias or deployed is what someone
        relies on; deleting it takes an admin's ``force``.
        """
        reasons: dict[str, list[str]] = {}
        aliases = self.registry._aliases_of(session, [v.id for v in versions])
        deployed = set(self.registry._deployed(session, [v.id for v in versions]))
        for version in versions:
            found = []
            if version.stage == "production":
                found.append("is in production")
            if aliases.get(version.id):
                found.append(f"has the alias {', '.join(aliases[version.id])}")
            if version.version in deployed:
                found.append("is deployed")
            if found:
                reasons[version.version] = found
        return reasons

    @staticmethod
    def check_allowed(actor: Principal, *, force: bool = False) -> None:
        """Raise :class:`PermissionDeniedError` unless ``actor`` may delete (the ``delete``
        permission) and, with ``force``, force a delete (the admin role)."""
        actor.require(Permission.DELETE)
        if force and not actor.can(Permission.ADMIN):
            msg = (
                f"user {actor.name!r} (role {actor.role}) cannot force a delete: "
                "forcing the delete of a version in production, aliased or deployed "
                "needs the admin role"
            )
            raise PermissionDeniedError(msg, details={"permission": Permission.ADMIN.value})

    @staticmethod
    def _refuse_guarded(what: str, reasons: dict[str, list[str]]) -> None:
        listed = "; ".join(f"version {v} {' and '.join(r)}" for v, r in sorted(reasons.items()))
        msg = (
            f"cannot delete {what}: {listed}. Move it out of production, remove its aliases "
            "and stop its deployments first, or have an admin delete it anyway "
            "(--force; force=true over REST)"
        )
        raise ConflictError(msg, details={"reasons": reasons})

    def _purge_after(self, deleted_at: datetime | None) -> str | None:
        if deleted_at is None:
            return None
        return (deleted_at + timedelta(days=self.registry.retention_days)).isoformat()

    def _deletion_event(self, version: MLModel, action: str, actor: Principal) -> None:
        self.registry.hooks.model_stage_changed(
            {
                "model_id": str(version.registered_model_id),
                "version_id": str(version.id),
                "name": version.name,
                "version": version.version,
                "action": action,
                "from": version.stage if action == "restored" else None,
                "to": None,
                "actor": actor.name,
            }
        )

    def delete_model(self, ref: str, *, actor: Principal, force: bool = False) -> dict[str, Any]:
        """Soft-delete a model and its versions (restorable with :meth:`restore_model`).

        Needs the ``delete`` permission. Refused (:class:`ConflictError`) while a version
        is in production, aliased or deployed, unless an admin passes ``force``.
        """
        self.check_allowed(actor, force=force)
        with self.db.session() as session:
            model = self.registry._model(session, ref)
            versions = list(
                session.scalars(
                    select(MLModel).where(
                        MLModel.registered_model_id == model.id, MLModel.deleted_at.is_(None)
                    )
                )
            )
            reasons = self._guards(session, versions)
            if reasons and not force:
                self._refuse_guarded(f"model {model.name!r}", reasons)
            now = _now()
            model.deleted_at = now
            for version in versions:
                version.deleted_at = now
            # the versions deleted with the model come back with it; aliases do not
            session.execute(
                ModelAlias.__table__.delete().where(ModelAlias.registered_model_id == model.id)
            )
            session.flush()
            for version in versions:
                self._deletion_event(version, "deleted", actor)
            return {
                "id": str(model.id),
                "name": model.name,
                "deleted": True,
                "forced": bool(reasons),
                "versions": sorted(v.version for v in versions),
                "deleted_at": now.isoformat(),
                "purge_after": self._purge_after(now),
            }

    def restore_model(self, ref: str, *, actor: Principal) -> dict[str, Any]:
        """Bring back a deleted model with the versions deleted along with it."""
        actor.require(Permission.DELETE)
        with self.db.session() as session:
            model = self.registry._deleted_model(session, ref)
            if model is None:
                try:  # by name, id or prefix, as the other routes find it
                    live = self.registry._model(session, ref)
                except NotFoundError:
                    live = None
                if live is not None:  # it exists: restoring it conflicts with its state
                    msg = f"model {live.name!r} is not deleted; there is nothing to restore"
                    raise ConflictError(msg, details={"model": ref, "deleted": False})
                msg = f"no deleted model {ref!r}; see: mlrig models list --deleted"
                raise NotFoundError(msg, details={"model": ref})
            versions = list(
                session.scalars(
                    select(MLModel).where(
                        MLModel.registered_model_id == model.id,
                        MLModel.deleted_at == model.deleted_at,
                    )
                )
            )
            model.deleted_at = None
            for version in versions:
                version.deleted_at = None
            session.flush()
            for version in versions:
                self._deletion_event(version, "restored", actor)
            view = self.registry._model_detail(session, model)
            view["restored_versions"] = sorted(v.version for v in versions)
            return view

    def restore_version(
        self, model_ref: str, version_ref: str, *, actor: Principal
    ) -> dict[str, Any]:
        """Bring back a deleted version of a live model (its aliases stay removed)."""
        actor.require(Permission.DELETE)
        with self.db.session() as session:
            model = self.registry._model(session, model_ref)
            try:
                version = self.registry._version(session, model, version_ref, deleted=True)
            except NotFoundError:
                try:
                    live = self.registry._version(session, model, version_ref)
                except NotFoundError:
                    live = None
                if live is None:
                    raise
                msg = f"version {live.version!r} of {model.name!r} is not deleted"
                raise ConflictError(
                    msg, details={"version": version_ref, "deleted": False}
                ) from None
            version.deleted_at = None
            session.flush()
            self._deletion_event(version, "restored", actor)
            return self.registry._version_detail(session, version)

    def list_deleted(self, model_ref: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """What can be restored: ``{"models": [...], "versions": [...]}``, newest first.

        ``versions`` are the deleted versions of live models (those of a deleted model
        come back with it); each entry has ``deleted_at`` and ``purge_after``.
        """
        with self.db.session() as session:
            models: list[dict[str, Any]] = []
            if model_ref is None:
                for model in session.scalars(
                    select(RegisteredModel)
                    .where(RegisteredModel.deleted_at.is_not(None))
                    .order_by(RegisteredModel.deleted_at.desc())
                ):
                    count = session.scalar(
                        select(func.count())
                        .select_from(MLModel)
                        .where(
                            MLModel.registered_model_id == model.id,
                            MLModel.deleted_at == model.deleted_at,
                        )
                    )
                    models.append(
                        {
                            "id": str(model.id),
                            "name": model.name,
                            "versions": count,
                            "deleted_at": model.deleted_at.isoformat(),
                            "purge_after": self._purge_after(model.deleted_at),
                        }
                    )
            stmt = (
                select(MLModel)
                .join(RegisteredModel, RegisteredModel.id == MLModel.registered_model_id)
                .where(MLModel.deleted_at.is_not(None), RegisteredModel.deleted_at.is_(None))
                .order_by(MLModel.deleted_at.desc())
            )
            if model_ref is not None:
                stmt = stmt.where(
                    MLModel.registered_model_id == self.registry._model(session, model_ref).id
                )
            versions = [
                {
                    "id": str(v.id),
                    "name": v.name,
                    "version": v.version,
                    "stage": v.stage,
                    "deleted_at": v.deleted_at.isoformat() if v.deleted_at else None,
                    "purge_after": self._purge_after(v.deleted_at),
                }
                for v in session.scalars(stmt)
            ]
            return {"models": models, "versions": versions}

    def purge(
        self, *, actor: Principal, older_than_days: int | None = None, dry_run: bool = False
    ) -> dict[str, Any]:
        """Remove for good the models and versions deleted more than ``older_than_days``
        (default: the retention period) ago: their rows, then their artifacts.

        Needs the admin role. Rows that pointed at a purged version (experiments,
        deployments) keep their history with the link cleared. An object that cannot be
        removed is left to ``mlrig storage gc``.
        """
        actor.require(Permission.ADMIN)
        days = self.registry.retention_days if older_than_days is None else older_than_days
        # bounded: a cutoff before year 1 cannot be computed (it was an OverflowError)
        check_int(days, field="older_than_days", low=0, high=MAX_PURGE_DAYS)
        cutoff = _now() - timedelta(days=days)
        with self.db.session() as session:
            models = list(
                session.scalars(select(RegisteredModel).where(RegisteredModel.deleted_at < cutoff))
            )
            model_ids = [m.id for m in models]
            versions = list(
                session.scalars(
                    select(MLModel).where(
                        (MLModel.deleted_at < cutoff) | MLModel.registered_model_id.in_(model_ids)
                    )
                )
            )
            version_ids = [v.id for v in versions]
            keys = list(
                session.scalars(
                    select(ModelArtifact.storage_path).where(
                        ModelArtifact.model_id.in_(version_ids)
                    )
                )
            )
            result = {
                "models": sorted(m.name for m in models),
                "versions": sorted(f"{v.name}/{v.version}" for v in versions),
                "objects": len(keys),
                "older_than_days": days,
                "dry_run": dry_run,
            }
            if dry_run or (not versions and not models):
                return result
            _clear_references(session, MLModel.__table__, version_ids)
            session.execute(MLModel.__table__.delete().where(MLModel.id.in_(version_ids)))
            session.execute(
                RegisteredModel.__table__.delete().where(RegisteredModel.id.in_(model_ids))
            )
        # the rows are gone: from here on a failure only leaves an orphan for storage gc
        left = 0
        for key in keys:
            try:
                self.registry.artifacts.delete(key)
            except StorageError:
                left += 1
        result["objects_left"] = left
        return result

    def delete_version(
        self, model_ref: str, version_ref: str, *, actor: Principal, force: bool = False
    ) -> dict[str, Any]:
        """Soft-delete a version (restorable with :meth:`restore_version`).

        Needs the ``delete`` permission. Refused (:class:`ConflictError`) while the version
        is in production, aliased or deployed, unless an admin passes ``force`` (its
        aliases are then removed).
        """
        self.check_allowed(actor, force=force)
        with self.db.session() as session:
            version = self.registry._version(
                session, self.registry._model(session, model_ref), version_ref
            )
            reasons = self._guards(session, [version])
            if reasons and not force:
                self._refuse_guarded(f"version {version.version!r} of {version.name!r}", reasons)
            aliases = self.registry._aliases_of(session, [version.id]).get(version.id, [])
            version.deleted_at = _now()
            session.execute(
                ModelAlias.__table__.delete().where(ModelAlias.model_version_id == version.id)
            )
            session.flush()
            self._deletion_event(version, "deleted", actor)
            return {
                "id": str(version.id),
                "name": version.name,
                "version": version.version,
                "deleted": True,
                "forced": bool(reasons),
                "removed_aliases": aliases,
                "deleted_at": version.deleted_at.isoformat(),
                "purge_after": self._purge_after(version.deleted_at),
            }
