"""The model registry: registered models, their versions (the spec's ``ml_models``),
artifacts, aliases, approval requests and evaluations."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mlrig.db.models.base import (
    Base,
    choices_check,
    created_at,
    json_array,
    json_object,
    updated_at,
    uuid_pk,
)
from mlrig.db.types import JSONType, UTCDateTime

#: The lifecycle stages of a model version.
STAGES = ("none", "staging", "production", "archived")
#: The states of an approval request.
APPROVAL_STATUSES = ("pending", "approved", "rejected")


class RegisteredModel(Base):
    """A model name that groups its versions; soft-deleted through ``deleted_at``."""

    __tablename__ = "registered_models"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[dict[str, Any]] = json_object(nullable=False)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: the last version number handed out (migration 0004); raised under this row's lock
    #: in the transaction that inserts the version, so numbers are never taken twice
    last_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    versions: Mapped[list[MLModel]] = relationship(
        back_populates="registered_model",
        cascade="all, delete-orphan",
        passive_deletes=True,
        foreign_keys="MLModel.registered_model_id",
    )


class MLModel(Base):
    """One version of a registered model (the spec's ``ml_models``, ``UNIQUE(name, version)``).

    ``name`` repeats the registered model's name, as the spec keys versions by
    (name, version). Lineage: ``source_experiment_id``/``source_run``, ``parent_version_id``,
    ``datasets`` (a list of ``{"uri", "hash"}``), ``code_version``, ``params``, ``metrics``.
    """

    __tablename__ = "ml_models"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        CheckConstraint(choices_check("stage", STAGES), name="stage"),
        # ml_models and training_experiments point at each other: on PostgreSQL this
        # key is added after both tables exist (use_alter).
        ForeignKeyConstraint(
            ["source_experiment_id"],
            ["training_experiments.id"],
            name="fk_ml_models_source_experiment_id_training_experiments",
            ondelete="SET NULL",
            use_alter=True,
        ),
    )

    # --- the spec's columns
    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    framework: Mapped[str | None] = mapped_column(String(100))
    model_type: Mapped[str | None] = mapped_column(String(100))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = created_at(nullable=True)
    updated_at: Mapped[datetime] = updated_at(nullable=True)
    # --- registry
    registered_model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE"), index=True
    )
    stage: Mapped[str] = mapped_column(String(20), default="none", server_default="none")
    status: Mapped[str] = mapped_column(String(50), default="ready", server_default="ready")
    tags: Mapped[dict[str, Any]] = json_object(nullable=False)
    params: Mapped[dict[str, Any]] = json_object(nullable=False)
    metrics: Mapped[dict[str, Any]] = json_object(nullable=False)
    signature: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    requirements: Mapped[list[Any]] = json_array(nullable=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # --- lineage
    source_experiment_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    source_run: Mapped[str | None] = mapped_column(String(255))
    parent_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ml_models.id", ondelete="SET NULL"), index=True
    )
    datasets: Mapped[list[Any]] = json_array(nullable=False)
    code_version: Mapped[str | None] = mapped_column(String(255))

    registered_model: Mapped[RegisteredModel] = relationship(
        back_populates="versions", foreign_keys=[registered_model_id]
    )
    artifacts: Mapped[list[ModelArtifact]] = relationship(
        back_populates="model", cascade="all, delete-orphan", passive_deletes=True
    )


Index("idx_ml_models_name_version", MLModel.name, MLModel.version)
Index("idx_ml_models_created_at", MLModel.created_at.desc())
Index("idx_ml_models_framework", MLModel.framework)
# Search by creator, newest first (migration 0002).
Index("ix_ml_models_created_by_created_at", MLModel.created_by, MLModel.created_at.desc())


class ModelArtifact(Base):
    """A stored file of a model version; the bytes live in the artifact store.

    ``storage_path`` is the store key, ``checksum`` the sha256 of the original bytes;
    ``compression`` and ``encryption`` (algorithm, wrapped data key, nonce) describe how
    the stored object was transformed.
    """

    __tablename__ = "model_artifacts"

    id: Mapped[uuid.UUID] = uuid_pk()
    model_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ml_models.id", ondelete="CASCADE"), index=True
    )
    artifact_type: Mapped[str] = mapped_column(String(100))
    storage_path: Mapped[str] = mapped_column(Text)
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    checksum: Mapped[str | None] = mapped_column(String(255))
    # "metadata" is reserved on declarative classes; the column keeps the spec's name.
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONType, nullable=True, default=dict, server_default=text("'{}'")
    )
    created_at: Mapped[datetime] = created_at(nullable=True)
    compression: Mapped[str | None] = mapped_column(String(20))
    encryption: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    model: Mapped[MLModel | None] = relationship(back_populates="artifacts")


class ModelAlias(Base):
    """A movable name (``champion``) pointing at one version of a registered model."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("registered_model_id", "alias"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    registered_model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE")
    )
    alias: Mapped[str] = mapped_column(String(255))
    model_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ml_models.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class ApprovalRequest(Base):
    """A request to move a version to ``target_stage``, decided by another user."""

    __tablename__ = "approval_requests"
    __table_args__ = (
        CheckConstraint(choices_check("target_stage", STAGES), name="target_stage"),
        CheckConstraint(choices_check("status", APPROVAL_STATUSES), name="status"),
        Index("ix_approval_requests_version_status", "model_version_id", "status"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    model_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ml_models.id", ondelete="CASCADE")
    )
    target_stage: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    requested_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    requested_at: Mapped[datetime] = created_at()
    decided_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    comment: Mapped[str | None] = mapped_column(Text)


class ModelEvaluation(Base):
    """Quality and speed figures of one version on one dataset with one runtime."""

    __tablename__ = "model_evaluations"

    id: Mapped[uuid.UUID] = uuid_pk()
    model_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ml_models.id", ondelete="CASCADE"), index=True
    )
    dataset_uri: Mapped[str] = mapped_column(Text)
    dataset_hash: Mapped[str | None] = mapped_column(String(128))
    runtime: Mapped[str | None] = mapped_column(String(100))
    metrics: Mapped[dict[str, Any]] = json_object(nullable=False)
    created_at: Mapped[datetime] = created_at()
