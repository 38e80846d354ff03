"""Registered models and their immutable versions, with artifacts and lineage."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mlrig.db.lookup import find_by_id_prefix
from mlrig.db.models import (
    MLModel,
    ModelAlias,
    ModelArtifact,
    ModelDeployment,
    RegisteredModel,
    TrainingExperiment,
    User,
)
from mlrig.errors import (
    ConflictError,
    NotFoundError,
    ValidationError,
)
from mlrig.registry.deletes import RegistryDeletes
from mlrig.registry.inputs import check_artifact_paths, check_model_fields, check_version_fields
from mlrig.registry.names import check_model_name, check_version_name
from mlrig.registry.search import VersionQuery, build_query, metric_sort_name, next_cursor
from mlrig.registry.views import artifact_view, model_view, version_view
from mlrig.validation import INT64_MAX

if TYPE_CHECKING:
    from mlrig.artifacts import ArtifactStore
    from mlrig.artifacts.record import StoredArtifact
    from mlrig.db import Database
    from mlrig.hooks import Hooks
    from mlrig.security import Principal

ArtifactSource = BinaryIO | bytes | Path
#: ``[registry] delete_retention_days`` when not configured
DEFAULT_RETENTION_DAYS = 30
#: deployment states in which a version counts as deployed
LIVE_DEPLOYMENT_STATES = ("pending", "deploying", "active")
#: version fields that are frozen once registered
FROZEN_FIELDS = frozenset(
    {
        "version",
        "framework",
        "model_type",
        "params",
        "metrics",
        "signature",
        "requirements",
        "lineage",
        "artifacts",
        "name",
    }
)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _artifact_type(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if name == "mlrig-model.json":
        return "config"
    if name == "requirements.txt":
        return "requirements"
    if re.search(r"\.(onnx|joblib|pkl|pt|pth|keras|h5|pb|safetensors)$", name):
        return "model"
    return "file"


class ModelRegistry:
    """Create, find, update and delete models and versions; store their artifacts."""

    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        hooks: Hooks,
        *,
        retention_days: int = DEFAULT_RETENTION_DAYS,
    ) -> None:
        self.db = db
        self.artifacts = artifacts
        self.hooks = hooks
        #: how long deleted models and versions are kept before a purge may remove them
        self.retention_days = retention_days
        #: deletes, restores and purges
        self.deletes = RegistryDeletes(self)

    def record_rewritten_artifact(self, stored: StoredArtifact) -> int:
        """Bring the rows of an artifact rewritten in place (a master-key rotation) up to
        date: compression, encryption facts, stored record. Returns how many rows."""
        with self.db.session() as session:
            rows = session.scalars(
                select(ModelArtifact).where(ModelArtifact.storage_path == stored.key)
            ).all()
            for row in rows:
                row.compression = stored.compression
                row.encryption = stored.encryption
                row.metadata_ = stored.to_metadata()
            return len(rows)

    # --- lookups ------------------------------------------------------------------------

    def _model(self, session: Session, ref: str) -> RegisteredModel:
        """A live registered model by id, name or a unique id prefix."""
        live = RegisteredModel.deleted_at.is_(None)
        key = _as_uuid(ref)
        if key is not None:
            model = session.scalar(select(RegisteredModel).where(RegisteredModel.id == key, live))
        else:
            model = session.scalar(select(RegisteredModel).where(RegisteredModel.name == ref, live))
            if model is None:
                key = find_by_id_prefix(
                    session, RegisteredModel.id, ref, where=[live], what="model"
                )
                if key is not None:
                    model = session.get(RegisteredModel, key)
        if model is None:
            deleted = self._deleted_model(session, ref)
            if deleted is not None:
                msg = (
                    f"model {deleted.name!r} was deleted; restore it with: "
                    f"mlrig models restore {deleted.name}"
                )
                raise NotFoundError(msg, details={"model": ref, "deleted": True})
            msg = f"no model {ref!r}; see: mlrig models list"
            raise NotFoundError(msg, details={"model": ref})
        return model

    def _deleted_model(self, session: Session, ref: str) -> RegisteredModel | None:
        """A soft-deleted model by id, name or a unique id prefix (for restore)."""
        gone = RegisteredModel.deleted_at.is_not(None)
        key = _as_uuid(ref)
        if key is None:
            found = session.scalar(select(RegisteredModel).where(RegisteredModel.name == ref, gone))
            if found is not None:
                return found
            key = find_by_id_prefix(
                session, RegisteredModel.id, ref, where=[gone], what="deleted model"
            )
            if key is None:
                return None
        return session.scalar(select(RegisteredModel).where(RegisteredModel.id == key, gone))

    def _version(
        self, session: Session, model: RegisteredModel, ref: str, *, deleted: bool = False
    ) -> MLModel:
        """A live version of ``model`` by version name, alias, ``latest``, id or a unique
        id prefix; with ``deleted``, a soft-deleted one by name, id or id prefix."""
        state = MLModel.deleted_at.is_not(None) if deleted else MLModel.deleted_at.is_(None)
        query = select(MLModel).where(MLModel.registered_model_id == model.id, state)
        key = _as_uuid(ref)
        if key is not None:
            found = session.scalar(query.where(MLModel.id == key))
        elif ref == "latest" and not deleted:
            found = session.scalar(query.order_by(MLModel.created_at.desc()).limit(1))
        else:
            found = session.scalar(query.where(MLModel.version == ref))
            if found is None and not deleted:
                alias = session.scalar(
                    select(ModelAlias.model_version_id).where(
                        ModelAlias.registered_model_id == model.id, ModelAlias.alias == ref
                    )
                )
                if alias is not None:
                    found = session.scalar(query.where(MLModel.id == alias))
            if found is None:
                key = find_by_id_prefix(
                    session,
                    MLModel.id,
                    ref,
                    where=[MLModel.registered_model_id == model.id, state],
                    what="version",
                )
                if key is not None:
                    found = session.get(MLModel, key)
        if found is None:
            if deleted:
                msg = f"model {model.name!r} has no deleted version {ref!r}"
            else:
                msg = f"model {model.name!r} has no version or alias {ref!r}"
            raise NotFoundError(msg, details={"model": model.name, "version": ref})
        return found

    def _user_names(self, session: Session, ids: set[uuid.UUID | None]) -> dict[uuid.UUID, str]:
        ids = {i for i in ids if i is not None}
        if not ids:
            return {}
        return dict(session.execute(select(User.id, User.name).where(User.id.in_(ids))).all())

    def _aliases_of(
        self, session: Session, version_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, list[str]]:
        found: dict[uuid.UUID, list[str]] = {}
        if not version_ids:
            return found
        rows = session.execute(
            select(ModelAlias.model_version_id, ModelAlias.alias)
            .where(ModelAlias.model_version_id.in_(version_ids))
            .order_by(ModelAlias.alias)
        )
        for version_id, alias in rows:
            found.setdefault(version_id, []).append(alias)
        return found

    @staticmethod
    def artifact_prefix(version: MLModel) -> str:
        return f"models/{version.registered_model_id}/{version.id}/"

    # --- registered models -------------------------------------------------------------

    def create_model(
        self,
        *,
        name: str,
        actor: Principal,
        description: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Register a model name; :class:`ConflictError` if it exists."""
        check_model_name(name)
        description, tags = check_model_fields(description=description, tags=tags)
        try:
            with self.db.session() as session:
                model = RegisteredModel(
                    name=name,
                    description=description,
                    tags=dict(tags or {}),
                    created_by=actor.user_id,
                )
                session.add(model)
                session.flush()
                return model_view(model, creator=actor.name, version_count=0, aliases={})
        except IntegrityError:
            msg = f"a model named {name!r} already exists (or was deleted: names are not reused)"
            raise ConflictError(msg) from None

    def get_model(self, ref: str) -> dict[str, Any]:
        with self.db.session() as session:
            model = self._model(session, ref)
            return self._model_detail(session, model)

    def _model_detail(self, session: Session, model: RegisteredModel) -> dict[str, Any]:
        versions = session.scalars(
            select(MLModel)
            .where(MLModel.registered_model_id == model.id, MLModel.deleted_at.is_(None))
            .order_by(MLModel.created_at)
        ).all()
        aliases = dict(
            session.execute(
                select(ModelAlias.alias, MLModel.version)
                .join(MLModel, MLModel.id == ModelAlias.model_version_id)
                .where(ModelAlias.registered_model_id == model.id)
            ).all()
        )
        names = self._user_names(session, {model.created_by})
        view = model_view(
            model,
            creator=names.get(model.created_by),
            latest=versions[-1] if versions else None,
            version_count=len(versions),
            aliases=aliases,
        )
        view["versions"] = [
            {"version": v.version, "stage": v.stage, "created_at": v.created_at.isoformat()}
            for v in versions
        ]
        return view

    def list_models(
        self,
        *,
        name_prefix: str | None = None,
        name_contains: str | None = None,
        tag: dict[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Registered models, by name."""
        if not (1 <= limit <= 1000) or not 0 <= offset <= INT64_MAX:
            msg = "limit must be 1-1000 and offset >= 0"
            raise ValidationError(msg)
        counts = (
            select(MLModel.registered_model_id, func.count().label("n"))
            .where(MLModel.deleted_at.is_(None))
            .group_by(MLModel.registered_model_id)
            .subquery()
        )
        stmt = (
            select(RegisteredModel, func.coalesce(counts.c.n, 0), User.name)
            .outerjoin(counts, counts.c.registered_model_id == RegisteredModel.id)
            .outerjoin(User, User.id == RegisteredModel.created_by)
            .where(RegisteredModel.deleted_at.is_(None))
            .order_by(RegisteredModel.name)
            .limit(limit)
            .offset(offset)
        )
        if name_prefix:
            stmt = stmt.where(RegisteredModel.name.startswith(name_prefix, autoescape=True))
        if name_contains:
            stmt = stmt.where(RegisteredModel.name.icontains(name_contains, autoescape=True))
        for key, value in (tag or {}).items():
            stmt = stmt.where(RegisteredModel.tags[key].as_string() == value)
        with self.db.session() as session:
            return [
                model_view(m, creator=creator, version_count=n)
                for m, n, creator in session.execute(stmt)
            ]

    def update_model(
        self, ref: str, *, description: str | None = None, tags: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Change a model's description and/or replace its tags."""
        description, tags = check_model_fields(description=description, tags=tags)
        with self.db.session() as session:
            model = self._model(session, ref)
            if description is not None:
                model.description = description
            if tags is not None:
                model.tags = dict(tags)
            session.flush()
            return self._model_detail(session, model)

    def _deployed(self, session: Session, version_ids: list[uuid.UUID]) -> list[str]:
        """The names of those of ``version_ids`` a live deployment serves: as its primary
        version, a canary or its shadow (the latter two live in the deployment's config)."""
        if not version_ids:
            return []
        wanted = {str(v): v for v in version_ids}
        served: set[uuid.UUID] = set()
        rows = session.execute(
            select(ModelDeployment.model_id, ModelDeployment.deployment_config).where(
                ModelDeployment.status.in_(LIVE_DEPLOYMENT_STATES),
                ModelDeployment.deleted_at.is_(None),
            )
        )
        for primary, config in rows:
            if primary is not None and str(primary) in wanted:
                served.add(wanted[str(primary)])
            config = config if isinstance(config, dict) else {}
            others = [t for t in config.get("traffic") or [] if isinstance(t, dict)]
            if isinstance(config.get("shadow"), dict):
                others.append(config["shadow"])
            for target in others:
                key = str(target.get("version_id"))
                if key in wanted:
                    served.add(wanted[key])
        if not served:
            return []
        return list(session.scalars(select(MLModel.version).where(MLModel.id.in_(served))))

    # --- deletes and restores (mlrig.registry.deletes) ---------------------------------

    def delete_model(self, ref: str, *, actor: Principal, force: bool = False) -> dict[str, Any]:
        """See :meth:`RegistryDeletes.delete_model`."""
        return self.deletes.delete_model(ref, actor=actor, force=force)

    def delete_version(
        self, model_ref: str, version_ref: str, *, actor: Principal, force: bool = False
    ) -> dict[str, Any]:
        """See :meth:`RegistryDeletes.delete_version`."""
        return self.deletes.delete_version(model_ref, version_ref, actor=actor, force=force)

    def restore_model(self, ref: str, *, actor: Principal) -> dict[str, Any]:
        """See :meth:`RegistryDeletes.restore_model`."""
        return self.deletes.restore_model(ref, actor=actor)

    def restore_version(
        self, model_ref: str, version_ref: str, *, actor: Principal
    ) -> dict[str, Any]:
        """See :meth:`RegistryDeletes.restore_version`."""
        return self.deletes.restore_version(model_ref, version_ref, actor=actor)

    def list_deleted(self, model_ref: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """See :meth:`RegistryDeletes.list_deleted`."""
        return self.deletes.list_deleted(model_ref)

    def purge(
        self, *, actor: Principal, older_than_days: int | None = None, dry_run: bool = False
    ) -> dict[str, Any]:
        """See :meth:`RegistryDeletes.purge`."""
        return self.deletes.purge(actor=actor, older_than_days=older_than_days, dry_run=dry_run)

    # --- versions ------------------------------------------------------------------------

    def _claim_version(
        self,
        session: Session,
        model_id: uuid.UUID,
        version: str | None,
        *,
        recreate: RegisteredModel | None = None,
    ) -> str:
        """The version name to insert, taken under the model row's lock.

        The update is the transaction's first write: it waits for any other registration
        into the same model to commit (PostgreSQL's row lock, SQLite's single writer), and
        a failed insert rolls it back, so numbers are unique and leave no gap.

        :param recreate: the model row to insert again if it is gone: a registration that
            created the model and failed removes it (see :meth:`_drop_if_empty`) while
            this one, which asked for ``create_model``, was uploading into it.
        """
        table = RegisteredModel.__table__
        counter = table.c.last_version
        if version is not None and not version.isdigit():
            return version  # a chosen name: the unique constraint is enough
        if version is None:
            raised = counter + 1
        else:  # a chosen number: automatic numbering continues after it
            raised = case((counter < int(version), int(version)), else_=counter)
        number = session.execute(
            table.update()
            .where(table.c.id == model_id, table.c.deleted_at.is_(None))
            .values(last_version=raised, updated_at=_now())
            .returning(counter)
        ).scalar_one_or_none()
        if (
            number is None
            and recreate is not None
            and session.get(RegisteredModel, model_id) is None
        ):
            try:
                with session.begin_nested():
                    session.add(recreate)
            except IntegrityError:
                msg = (
                    f"model {recreate.name!r} was removed and created again while this version "
                    "was being registered; register it again"
                )
                raise ConflictError(msg) from None
            return self._claim_version(session, model_id, version)
        if number is None:
            msg = "the model was deleted while the version was being registered"
            raise NotFoundError(msg, details={"model": str(model_id)})
        return version if version is not None else str(number)

    def _ensure_model(self, name: str, actor: Principal) -> uuid.UUID | None:
        """Create the model ``name`` unless it exists; its id if this call created it."""
        with self.db.session() as session:
            if session.scalar(select(RegisteredModel.id).where(RegisteredModel.name == name)):
                return None
        try:
            return uuid.UUID(self.create_model(name=name, actor=actor)["id"])
        except ConflictError:
            return None  # created concurrently

    def _drop_if_empty(self, model_id: uuid.UUID) -> None:
        """Remove a model this registration created and that still has no version."""
        with self.db.session() as session:
            has_versions = (
                select(MLModel.id).where(MLModel.registered_model_id == model_id).exists()
            )
            session.execute(
                RegisteredModel.__table__.delete().where(
                    RegisteredModel.id == model_id, ~has_versions
                )
            )

    def _creator_id(self, session: Session, created_by: uuid.UUID | str) -> uuid.UUID:
        """A user id from a user id or name (the creator recorded on a version)."""
        key = created_by if isinstance(created_by, uuid.UUID) else _as_uuid(created_by)
        if key is None:
            key = session.scalar(select(User.id).where(User.name == created_by))
        elif session.get(User, key) is None:
            key = None
        if key is None:
            msg = f"no user {str(created_by)!r} to record as the creator; see: mlrig users list"
            raise ValidationError(msg)
        return key

    def create_version(
        self,
        model_ref: str,
        *,
        files: Mapping[str, ArtifactSource],
        actor: Principal,
        version: str | None = None,
        create_model: bool = False,
        description: str | None = None,
        framework: str | None = None,
        model_type: str | None = None,
        tags: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        signature: dict[str, Any] | None = None,
        requirements: list[str] | None = None,
        source_experiment_id: str | None = None,
        source_run: str | None = None,
        parent_version: str | None = None,
        datasets: list[dict[str, str]] | None = None,
        code_version: str | None = None,
        created_by: uuid.UUID | str | None = None,
    ) -> dict[str, Any]:
        """Register a new immutable version with its artifact files.

        The files are uploaded first, then the row is written with the next version
        number (taken atomically: concurrent registrations into one model never collide);
        if anything fails, the uploaded objects are removed again and a model this call
        created is removed too, so a failed registration leaves nothing.

        :param created_by: the user recorded as the creator (an id or a name), when it is
            not ``actor`` itself: a trainer registers for the experiment's creator.
        """
        if not files:
            msg = "a version needs at least one artifact file"
            raise ValidationError(msg)
        if version is not None:
            check_version_name(version)
        check_artifact_paths(files)
        # every recorded field, checked before anything is uploaded (registry/inputs.py)
        recorded = check_version_fields(
            {
                "description": description,
                "framework": framework,
                "model_type": model_type,
                "tags": tags,
                "params": params,
                "metrics": metrics,
                "signature": signature,
                "requirements": requirements,
                "source_run": source_run,
                "datasets": datasets,
                "code_version": code_version,
            }
        )
        created_model = self._ensure_model(model_ref, actor) if create_model else None
        try:
            view = self._insert_version(
                model_ref,
                files=files,
                actor=actor,
                version=version,
                created_by=created_by,
                parent_version=parent_version,
                source_experiment_id=source_experiment_id,
                fields=recorded,
                create_model=create_model,
            )
        except BaseException:
            if created_model is not None:
                self._drop_if_empty(created_model)
            raise
        self.hooks.model_version_created(view)
        return view

    def _insert_version(
        self,
        model_ref: str,
        *,
        files: Mapping[str, ArtifactSource],
        actor: Principal,
        version: str | None,
        created_by: uuid.UUID | str | None,
        parent_version: str | None,
        source_experiment_id: str | None,
        fields: dict[str, Any],
        create_model: bool,
    ) -> dict[str, Any]:
        with self.db.session() as session:
            model = self._model(session, model_ref)
            parent_id = self._version(session, model, parent_version).id if parent_version else None
            experiment = _as_uuid(source_experiment_id) if source_experiment_id else None
            if parent_version is None and source_experiment_id is not None:
                if experiment is None or session.get(TrainingExperiment, experiment) is None:
                    msg = f"no experiment {source_experiment_id!r} to record as the source"
                    raise NotFoundError(msg, details={"experiment": source_experiment_id})
            creator = actor.user_id if created_by is None else self._creator_id(session, created_by)
            creator_name = (
                actor.name if created_by is None else self._user_names(session, {creator})[creator]
            )
            model_id, model_name = model.id, model.name
        row = MLModel(
            id=uuid.uuid4(),
            registered_model_id=model_id,
            name=model_name,
            created_by=creator,
            source_experiment_id=experiment,
            parent_version_id=parent_id,
            **fields,
        )
        prefix = self.artifact_prefix(row)
        try:
            with self.artifacts.atomic() as tx:
                # upload before taking the model's lock: other registrations wait only
                # for the insert, not for these bytes
                for path in sorted(files):
                    stored = tx.put(prefix + path, files[path])
                    row.artifacts.append(
                        ModelArtifact(
                            artifact_type=_artifact_type(path),
                            storage_path=stored.key,
                            file_size=stored.size,
                            checksum=stored.sha256,
                            metadata_=stored.to_metadata(),
                            compression=stored.compression,
                            encryption=stored.encryption,
                        )
                    )
                # committed inside the artifact transaction: if the row cannot be written
                # (a duplicate version, a lost connection), the objects go too
                with self.db.session() as session:
                    again = (
                        RegisteredModel(
                            id=model_id, name=model_name, tags={}, created_by=actor.user_id
                        )
                        if create_model
                        else None
                    )
                    row.version = self._claim_version(session, model_id, version, recreate=again)
                    session.add(row)
        except IntegrityError:
            msg = f"model {model_name!r} already has a version {row.version!r}"
            raise ConflictError(msg) from None
        artifacts = [artifact_view(a, prefix) for a in row.artifacts]
        return version_view(row, creator=creator_name, aliases=[], artifacts=artifacts)

    def get_version(self, model_ref: str, version_ref: str) -> dict[str, Any]:
        """A version with its artifacts, aliases and lineage both ways."""
        with self.db.session() as session:
            model = self._model(session, model_ref)
            version = self._version(session, model, version_ref)
            return self._version_detail(session, version)

    def _version_detail(self, session: Session, version: MLModel) -> dict[str, Any]:
        names = self._user_names(session, {version.created_by})
        prefix = self.artifact_prefix(version)
        artifacts = session.scalars(
            select(ModelArtifact)
            .where(ModelArtifact.model_id == version.id)
            .order_by(ModelArtifact.storage_path)
        ).all()
        view = version_view(
            version,
            creator=names.get(version.created_by),
            aliases=self._aliases_of(session, [version.id]).get(version.id, []),
            artifacts=[artifact_view(a, prefix) for a in artifacts],
        )
        view["lineage"].update(self._lineage(session, version))
        return view

    def _lineage(self, session: Session, version: MLModel) -> dict[str, Any]:
        parent = None
        if version.parent_version_id is not None:
            p = session.get(MLModel, version.parent_version_id)
            if p is not None:
                parent = {"id": str(p.id), "name": p.name, "version": p.version}
        experiment = None
        if version.source_experiment_id is not None:
            e = session.get(TrainingExperiment, version.source_experiment_id)
            if e is not None:
                experiment = {"id": str(e.id), "name": e.name, "status": e.status}
        children = session.execute(
            select(MLModel.id, MLModel.name, MLModel.version).where(
                MLModel.parent_version_id == version.id, MLModel.deleted_at.is_(None)
            )
        ).all()
        deployments = session.execute(
            select(
                ModelDeployment.id,
                ModelDeployment.name,
                ModelDeployment.status,
                ModelDeployment.environment,
            ).where(ModelDeployment.model_id == version.id)
        ).all()
        return {
            "parent": parent,
            "experiment": experiment,
            "derived": [{"id": str(i), "name": n, "version": v} for i, n, v in children],
            "deployments": [
                {"id": str(i), "name": n, "status": s, "environment": env}
                for i, n, s, env in deployments
            ],
        }

    def update_version(
        self,
        model_ref: str,
        version_ref: str,
        *,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        frozen: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Edit a version's description or tags; anything else is frozen (409)."""
        description, tags = check_model_fields(description=description, tags=tags)
        if frozen:
            fields = sorted(set(frozen) & FROZEN_FIELDS) or sorted(frozen)
            msg = (
                f"a registered version is immutable: {', '.join(fields)} cannot change; "
                "register a new version instead (tags and description stay editable)"
            )
            raise ConflictError(msg, details={"fields": fields})
        with self.db.session() as session:
            version = self._version(session, self._model(session, model_ref), version_ref)
            if description is not None:
                version.description = description
            if tags is not None:
                version.tags = dict(tags)
            session.flush()
            return self._version_detail(session, version)

    def _check_metric_names(self, session: Session, query: VersionQuery) -> None:
        """Refuse a filter or a sort on a metric that no version in scope has: it would
        answer an empty (or unsorted) page, as if the data were missing."""
        names = {m.name for m in query.metrics}
        sort_metric = metric_sort_name(query.sort)
        if sort_metric is not None:
            names.add(sort_metric)
        if not names:
            return
        scope = [MLModel.deleted_at.is_(None)]
        if query.model_id is not None:
            scope.append(MLModel.registered_model_id == query.model_id)
        if query.name is not None:
            scope.append(MLModel.name == query.name)
        missing = sorted(
            name
            for name in names
            if not session.scalar(
                select(
                    select(MLModel.id)
                    .where(*scope, MLModel.metrics[name].as_float().is_not(None))
                    .exists()
                )
            )
        )
        if not missing:
            return
        known: set[str] = set()
        for metrics in session.scalars(select(MLModel.metrics).where(*scope).limit(10_000)):
            known.update(metrics or {})
        where = "of this model " if query.model_id is not None or query.name else ""
        listed = ", ".join(sorted(known)) if known else "none (no version has metrics)"
        msg = (
            f"no version {where}has the metric {', '.join(map(repr, missing))}; "
            f"the metrics that exist: {listed}"
        )
        raise ValidationError(msg, details={"unknown": missing, "metrics": sorted(known)})

    def search_versions(self, query: VersionQuery) -> dict[str, Any]:
        """One page of versions matching ``query``: ``{"items", "next_cursor"}``."""
        stmt, _ = build_query(query)
        with self.db.session() as session:
            self._check_metric_names(session, query)
            rows = session.execute(stmt).all()
            has_more = len(rows) > query.limit
            rows = rows[: query.limit]
            versions = [r[0] for r in rows]
            aliases = self._aliases_of(session, [v.id for v in versions])
            items = [
                version_view(v, creator=creator, aliases=aliases.get(v.id, []))
                for v, creator in rows
            ]
            return {"items": items, "next_cursor": next_cursor(query, versions, has_more)}

    def model_id(self, model_ref: str) -> uuid.UUID:
        with self.db.session() as session:
            return self._model(session, model_ref).id

    # --- artifacts ------------------------------------------------------------------------

    def list_artifacts(self, model_ref: str, version_ref: str) -> list[dict[str, Any]]:
        return self.get_version(model_ref, version_ref)["artifacts"]

    def _artifact_row(self, model_ref: str, version_ref: str, path: str) -> ModelArtifact:
        with self.db.session() as session:
            version = self._version(session, self._model(session, model_ref), version_ref)
            key = self.artifact_prefix(version) + path
            row = session.scalar(
                select(ModelArtifact).where(
                    ModelArtifact.model_id == version.id, ModelArtifact.storage_path == key
                )
            )
            if row is None:
                msg = f"version {version.version!r} of {version.name!r} has no artifact {path!r}"
                raise NotFoundError(msg)
            return row

    def open_artifact(
        self, model_ref: str, version_ref: str, path: str
    ) -> tuple[dict[str, Any], BinaryIO]:
        """``(info, stream)``: the stream verifies size and sha256 as it is read."""
        row = self._artifact_row(model_ref, version_ref, path)
        stream = self.artifacts.open(
            row.storage_path, expected_sha256=row.checksum, expected_size=row.file_size
        )
        prefix = row.storage_path[: len(row.storage_path) - len(path)]
        return artifact_view(row, prefix), stream

    def download_version(self, model_ref: str, version_ref: str, folder: Path) -> list[Path]:
        """Write every artifact of a version under ``folder``; return the paths written."""
        written = []
        for artifact in self.list_artifacts(model_ref, version_ref):
            target = folder / artifact["path"]
            row = self._artifact_row(model_ref, version_ref, artifact["path"])
            target.parent.mkdir(parents=True, exist_ok=True)
            self.artifacts.download(row.storage_path, target, expected_sha256=row.checksum)
            written.append(target)
        return written

    def iter_versions(self, model_ref: str) -> Iterator[dict[str, Any]]:
        """Every live version of a model, oldest first."""
        cursor = None
        model_id = self.model_id(model_ref)
        while True:
            page = self.search_versions(
                VersionQuery(model_id=model_id, sort="created_at", limit=500, cursor=cursor)
            )
            yield from page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return
