"""The feature store's definitions (the spec's ``feature_definitions``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from mlrig.db.models.base import Base, created_at, json_array, json_object, updated_at, uuid_pk


class FeatureDefinition(Base):
    """A named feature: its type, source and transformation."""

    __tablename__ = "feature_definitions"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    feature_type: Mapped[str] = mapped_column(String(100))
    data_source: Mapped[str | None] = mapped_column(String(255))
    transformation_logic: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[Any]] = json_array()
    schema_definition: Mapped[dict[str, Any]] = json_object()
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = created_at(nullable=True)
    updated_at: Mapped[datetime] = updated_at(nullable=True)


Index("idx_feature_definitions_name", FeatureDefinition.name)
Index("idx_feature_definitions_type", FeatureDefinition.feature_type)
