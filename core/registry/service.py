"""Registered models and their immutable versions, with artifacts and lineage."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mlrig.db.models import (
    MLModel,
    ModelAlias,
    ModelArtifact,
    ModelDeployment,
    RegisteredModel,
    TrainingExperiment,
    User,
)
from mlrig.errors import ConflictError, NotFoundError, ValidationError
from mlrig.registry.names import check_model_name, check_version_name
from mlrig.registry.search import VersionQuery, build_query, next_cursor
from mlrig.registry.views import artifact_view, model_view, version_view

if TYPE_CHECKING:
    from mlrig.artifacts import ArtifactStore
    from mlrig.artifacts.record import StoredArtifact
    from mlrig.db import Database
    from mlrig.hooks import Hooks
    from mlrig.security import Principal

ArtifactSource = BinaryIO | bytes | Path
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

    def __init__(self, db: Database, artifacts: ArtifactStore, hooks: Hooks) -> None:
        self.db = db
        self.artifacts = artifacts
        self.hooks = hooks

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
        """A live registered model by id or name."""
        key = _as_uuid(ref)
        column = RegisteredModel.id if key is not None else RegisteredModel.name
        model = session.scalar(
            select(RegisteredModel).where(
                column == (key if key is not None else ref), RegisteredModel.deleted_at.is_(None)
            )
        )
        if model is None:
            msg = f"no model {ref!r}; see: mlrig models list"
            raise NotFoundError(msg, details={"model": ref})
        return model

    def _version(self, session: Session, model: RegisteredModel, ref: str) -> MLModel:
        """A live version of ``model`` by version name, alias, ``latest`` or id."""
        query = select(MLModel).where(
            MLModel.registered_model_id == model.id, MLModel.deleted_at.is_(None)
        )
        key = _as_uuid(ref)
        if key is not None:
            found = session.scalar(query.where(MLModel.id == key))
        elif ref == "latest":
            found = session.scalar(query.order_by(MLModel.created_at.desc()).limit(1))
        else:
            found = session.scalar(query.where(MLModel.version == ref))
            if found is None:
                alias = session.scalar(
                    select(ModelAlias.model_version_id).where(
                        ModelAlias.registered_model_id == model.id, ModelAlias.alias == ref
                    )
                )
                if alias is not None:
                    found = session.scalar(query.where(MLModel.id == alias))
        if found is None:
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
        if not (1 <= limit <= 1000) or offset < 0:
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
        with self.db.session() as session:
            model = self._model(session, ref)
            if description is not None:
                model.description = description
            if tags is not None:
                model.tags = dict(tags)
            session.flush()
            return self._model_detail(session, model)

    def _deployed(self, session: Session, version_ids: list[uuid.UUID]) -> list[str]:
        if not version_ids:
            return []
        return list(
            session.scalars(
                select(MLModel.version)
                .join(ModelDeployment, ModelDeployment.model_id == MLModel.id)
                .where(
                    MLModel.id.in_(version_ids),
                    ModelDeployment.status.in_(LIVE_DEPLOYMENT_STATES),
                )
            )
        )

    def delete_model(self, ref: str) -> dict[str, Any]:
        """Soft-delete a model and its versions; :class:`ConflictError` while one is deployed."""
        with self.db.session() as session:
            model = self._model(session, ref)
            versions = session.scalars(
                select(MLModel).where(
                    MLModel.registered_model_id == model.id, MLModel.deleted_at.is_(None)
                )
            ).all()
            deployed = self._deployed(session, [v.id for v in versions])
            if deployed:
                msg = (
                    f"model {model.name!r} has deployed versions ({', '.join(sorted(deployed))}); "
                    "stop their deployments first"
                )
                raise ConflictError(msg, details={"deployed_versions": sorted(deployed)})
            now = _now()
            model.deleted_at = now
            for version in versions:
                version.deleted_at = now
            return {"id": str(model.id), "name": model.name, "deleted": True}

    # --- versions ------------------------------------------------------------------------

    def _next_version(self, session: Session, model: RegisteredModel) -> str:
        existing = session.scalars(
            select(MLModel.version).where(MLModel.registered_model_id == model.id)
        ).all()
        numbers = [int(v) for v in existing if v.isdigit()]
        return str(max(numbers, default=0) + 1)

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
    ) -> dict[str, Any]:
        """Register a new immutable version with its artifact files.

        The files are uploaded first, then the row is written; if anything fails, the
        uploaded objects are removed again, so a failed registration leaves nothing.
        """
        if not files:
            msg = "a version needs at least one artifact file"
            raise ValidationError(msg)
        if version is not None:
            check_version_name(version)
        for metric, value in (metrics or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                msg = f"metric {metric!r} must be a number, got {value!r}"
                raise ValidationError(msg)
        if create_model:
            try:
                self.get_model(model_ref)
            except NotFoundError:
                try:
                    self.create_model(name=model_ref, actor=actor)
                except ConflictError:
                    pass  # created concurrently
        version_id = uuid.uuid4()
        with self.db.session() as session:
            model = self._model(session, model_ref)
            parent_id = self._version(session, model, parent_version).id if parent_version else None
            if parent_version is None and source_experiment_id is not None:
                experiment = _as_uuid(source_experiment_id)
                if experiment is None or session.get(TrainingExperiment, experiment) is None:
                    msg = f"no experiment {source_experiment_id!r} to record as the source"
                    raise ValidationError(msg)
            row = MLModel(
                id=version_id,
                registered_model_id=model.id,
                name=model.name,
                version=version or self._next_version(session, model),
                description=description,
                framework=framework,
                model_type=model_type,
                created_by=actor.user_id,
                tags=dict(tags or {}),
                params=dict(params or {}),
                metrics={k: float(v) for k, v in (metrics or {}).items()},
                signature=signature,
                requirements=list(requirements or []),
                source_experiment_id=_as_uuid(source_experiment_id)
                if source_experiment_id
                else None,
                source_run=source_run,
                parent_version_id=parent_id,
                datasets=list(datasets or []),
                code_version=code_version,
            )
            prefix = self.artifact_prefix(row)
            model_name, version_name = model.name, row.version
            try:
                with self.artifacts.atomic() as tx:
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
                    session.add(row)
                    # commit inside the artifact transaction: if the row cannot be
                    # written (a duplicate version, a lost connection), the objects go too
                    session.commit()
            except IntegrityError:
                session.rollback()
                msg = f"model {model_name!r} already has a version {version_name!r}"
                raise ConflictError(msg) from None
            artifacts = [artifact_view(a, prefix) for a in row.artifacts]
            view = version_view(row, creator=actor.name, aliases=[], artifacts=artifacts)
        self.hooks.model_version_created(view)
        return view

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

    def delete_version(self, model_ref: str, version_ref: str) -> dict[str, Any]:
        """Soft-delete a version; :class:`ConflictError` while it is deployed."""
        with self.db.session() as session:
            version = self._version(session, self._model(session, model_ref), version_ref)
            if self._deployed(session, [version.id]):
                msg = (
                    f"version {version.version!r} of {version.name!r} is deployed; "
                    "stop its deployments first"
                )
                raise ConflictError(msg)
            version.deleted_at = _now()
            session.execute(
                ModelAlias.__table__.delete().where(ModelAlias.model_version_id == version.id)
            )
            return {
                "id": str(version.id),
                "name": version.name,
                "version": version.version,
                "deleted": True,
            }

    def search_versions(self, query: VersionQuery) -> dict[str, Any]:
        """One page of versions matching ``query``: ``{"items", "next_cursor"}``."""
        stmt, _ = build_query(query)
        with self.db.session() as session:
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
