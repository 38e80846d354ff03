"""Aliases, stages and the approval workflow of model versions.

Aliases (``champion``, ``challenger``...) point at one version each and move freely.
Stages are ``none``, ``staging``, ``production`` and ``archived``; reaching a stage listed
in ``[registry] approval_required_for`` (default: production) takes an approval request
that another user with the ``approve`` permission decides.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from mlrig.db.lookup import find_by_id_prefix
from mlrig.db.models import STAGES, ApprovalRequest, MLModel, ModelAlias
from mlrig.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from mlrig.registry.names import check_alias
from mlrig.registry.views import iso
from mlrig.security import Permission

if TYPE_CHECKING:
    from mlrig.config import RegistrySection
    from mlrig.hooks import Hooks
    from mlrig.registry.service import ModelRegistry
    from mlrig.security import Principal


def _now() -> datetime:
    return datetime.now(timezone.utc)


def request_view(
    request: ApprovalRequest, version: MLModel, names: dict[Any, str]
) -> dict[str, Any]:
    return {
        "id": str(request.id),
        "model": version.name,
        "version": version.version,
        "version_id": str(version.id),
        "target_stage": request.target_stage,
        "status": request.status,
        "requested_by": names.get(request.requested_by),
        "requested_at": iso(request.requested_at),
        "decided_by": names.get(request.decided_by),
        "decided_at": iso(request.decided_at),
        "comment": request.comment,
    }


class ModelLifecycle:
    """Aliases, stage transitions and approvals over a :class:`ModelRegistry`."""

    def __init__(self, registry: ModelRegistry, policy: RegistrySection, hooks: Hooks) -> None:
        self.registry = registry
        self.policy = policy
        self.hooks = hooks
        self.db = registry.db

    def _event(
        self,
        version: MLModel,
        action: str,
        old: str | None,
        new: str | None,
        actor: Principal,
        **extra: Any,
    ) -> None:
        self.hooks.model_stage_changed(
            {
                "model_id": str(version.registered_model_id),
                "version_id": str(version.id),
                "name": version.name,
                "version": version.version,
                "action": action,
                "from": old,
                "to": new,
                "actor": actor.name,
                **extra,
            }
        )

    # --- aliases -------------------------------------------------------------------------

    def set_alias(
        self, model_ref: str, alias: str, version_ref: str, *, actor: Principal
    ) -> dict[str, Any]:
        """Point ``alias`` at a version (moving it if it pointed elsewhere)."""
        check_alias(alias)
        if alias == "latest":
            msg = "'latest' is reserved: it always means the newest version"
            raise ValidationError(msg)
        with self.db.session() as session:
            model = self.registry._model(session, model_ref)
            version = self.registry._version(session, model, version_ref)
            row = session.scalar(
                select(ModelAlias).where(
                    ModelAlias.registered_model_id == model.id, ModelAlias.alias == alias
                )
            )
            old = None
            if row is None:
                session.add(
                    ModelAlias(
                        registered_model_id=model.id, alias=alias, model_version_id=version.id
                    )
                )
            else:
                old_version = session.get(MLModel, row.model_version_id)
                old = old_version.version if old_version else None
                row.model_version_id = version.id
            try:
                session.flush()
            except IntegrityError:
                msg = f"alias {alias!r} of {model.name!r} was set concurrently; try again"
                raise ConflictError(msg) from None
            self._event(version, "alias_set", old, version.version, actor, alias=alias)
            return {
                "model": model.name,
                "alias": alias,
                "version": version.version,
                "previous": old,
            }

    def delete_alias(self, model_ref: str, alias: str, *, actor: Principal) -> dict[str, Any]:
        with self.db.session() as session:
            model = self.registry._model(session, model_ref)
            row = session.scalar(
                select(ModelAlias).where(
                    ModelAlias.registered_model_id == model.id, ModelAlias.alias == alias
                )
            )
            if row is None:
                msg = f"model {model.name!r} has no alias {alias!r}"
                raise NotFoundError(msg)
            version = session.get(MLModel, row.model_version_id)
            session.delete(row)
            if version is not None:
                self._event(version, "alias_deleted", version.version, None, actor, alias=alias)
            return {"model": model.name, "alias": alias, "deleted": True}

    # --- stages ---------------------------------------------------------------------------

    def transition(
        self,
        model_ref: str,
        version_ref: str,
        stage: str,
        *,
        actor: Principal,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Move a version to ``stage``, or open an approval request where policy says so.

        Returns ``{"status": "moved", "version": ...}`` or
        ``{"status": "pending_approval", "request": ...}``.
        """
        if stage not in STAGES:
            msg = f"unknown stage {stage!r}; stages are: {', '.join(STAGES)}"
            raise ValidationError(msg)
        if stage in self.policy.approval_required_for:
            return {
                "status": "pending_approval",
                "request": self.request_approval(
                    model_ref, version_ref, stage, actor=actor, comment=comment
                ),
            }
        with self.db.session() as session:
            version = self.registry._version(
                session, self.registry._model(session, model_ref), version_ref
            )
            old = version.stage
            version.stage = stage
            session.flush()
            self._event(version, "stage_changed", old, stage, actor, comment=comment)
            return {"status": "moved", "version": version.version, "from": old, "to": stage}

    def request_approval(
        self,
        model_ref: str,
        version_ref: str,
        stage: str,
        *,
        actor: Principal,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Open a pending request to move a version to ``stage``."""
        with self.db.session() as session:
            version = self.registry._version(
                session, self.registry._model(session, model_ref), version_ref
            )
            if version.stage == stage:
                msg = f"version {version.version!r} of {version.name!r} is already in {stage}"
                raise ConflictError(msg)
            pending = session.scalar(
                select(ApprovalRequest).where(
                    ApprovalRequest.model_version_id == version.id,
                    ApprovalRequest.target_stage == stage,
                    ApprovalRequest.status == "pending",
                )
            )
            if pending is not None:
                msg = f"a request to move it to {stage} is already pending: {pending.id}"
                raise ConflictError(msg, details={"request_id": str(pending.id)})
            request = ApprovalRequest(
                model_version_id=version.id,
                target_stage=stage,
                requested_by=actor.user_id,
                comment=comment,
            )
            session.add(request)
            session.flush()
            names = {actor.user_id: actor.name}
            view = request_view(request, version, names)
            self._event(
                version, "approval_requested", version.stage, stage, actor, request_id=view["id"]
            )
            return view

    def list_requests(
        self, *, status: str | None = "pending", model: str | None = None
    ) -> list[dict[str, Any]]:
        stmt = (
            select(ApprovalRequest, MLModel)
            .join(MLModel, MLModel.id == ApprovalRequest.model_version_id)
            .order_by(ApprovalRequest.requested_at.desc())
        )
        if status is not None:
            stmt = stmt.where(ApprovalRequest.status == status)
        if model is not None:
            stmt = stmt.where(MLModel.name == model)
        with self.db.session() as session:
            rows = session.execute(stmt).all()
            ids = {r.requested_by for r, _ in rows} | {r.decided_by for r, _ in rows}
            names = self.registry._user_names(session, ids)
            return [request_view(r, v, names) for r, v in rows]

    def decide(
        self, request_id: str, *, approve: bool, actor: Principal, comment: str | None = None
    ) -> dict[str, Any]:
        """Approve (the version moves) or reject a pending request."""
        actor.require(Permission.APPROVE)
        with self.db.session() as session:
            try:
                key: uuid.UUID | None = uuid.UUID(request_id)
            except ValueError:  # a unique id prefix, as `models approvals` shows
                key = find_by_id_prefix(
                    session, ApprovalRequest.id, request_id, what="approval request"
                )
            request = (
                session.get(ApprovalRequest, key, with_for_update=True) if key is not None else None
            )
            if request is None:
                msg = f"no approval request {request_id!r}; see: mlrig models approvals"
                raise NotFoundError(msg)
            if request.status != "pending":
                msg = f"request {request_id} was already {request.status}"
                raise ConflictError(msg)
            same_person = (
                request.requested_by == actor.user_id
                if request.requested_by is not None or actor.user_id is not None
                else True
            )
            if self.policy.approver_must_differ and same_person:
                msg = (
                    "the approver must be another user than the requester "
                    "([registry] approver_must_differ = true)"
                )
                raise PermissionDeniedError(msg)
            version = session.get(MLModel, request.model_version_id)
            assert version is not None  # cascade: a request dies with its version
            if version.deleted_at is not None:
                msg = (
                    f"version {version.version!r} of {version.name!r} was deleted; restore it "
                    f"first (mlrig models restore {version.name} {version.version})"
                )
                raise ConflictError(msg)
            request.status = "approved" if approve else "rejected"
            request.decided_by = actor.user_id
            request.decided_at = _now()
            if comment:
                request.comment = f"{request.comment}\n{comment}" if request.comment else comment
            old = version.stage
            archived: list[str] = []
            if approve:
                if request.target_stage == "production" and self.policy.archive_previous_production:
                    for other in session.scalars(
                        select(MLModel).where(
                            MLModel.registered_model_id == version.registered_model_id,
                            MLModel.stage == "production",
                            MLModel.id != version.id,
                        )
                    ):
                        other.stage = "archived"
                        archived.append(other.version)
                version.stage = request.target_stage
            session.flush()
            names = self.registry._user_names(session, {request.requested_by})
            names[actor.user_id] = actor.name
            view = request_view(request, version, names)
            view["archived_versions"] = archived
            self._event(
                version,
                "approved" if approve else "rejected",
                old,
                version.stage,
                actor,
                request_id=view["id"],
                comment=comment,
            )
            return view
