"""The feature store's tables (the spec's ``feature_definitions``; migration 0009).

- ``feature_entities``: what features describe, with their join keys;
- ``feature_views``: groups of features over one source (or an on-demand function);
- ``feature_definitions``: one row per feature (names unique across the store), in its view;
- ``feature_definition_versions``: every definition a feature has had, who and when;
- ``feature_statistics``: per-feature statistics of a materialisation window;
- ``feature_online_values``: the ``sql`` online store (one row per view and entity key);
- ``feature_push_rows``: the offline rows of push sources.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

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

#: the kinds of feature view
VIEW_KINDS = ("batch", "on_demand")
#: what a feature_definition_versions row records
CHANGE_KINDS = ("created", "updated")


class FeatureEntity(Base):
    """A thing features describe (a customer), keyed by one or more join keys."""

    __tablename__ = "feature_entities"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(255), unique=True)
    join_keys: Mapped[list[Any]] = json_array(nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class FeatureView(Base):
    """A group of features over one source (``batch``) or computed at read time by a
    registered function (``on_demand``)."""

    __tablename__ = "feature_views"
    __table_args__ = (CheckConstraint(choices_check("kind", VIEW_KINDS), name="kind"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(20), default="batch", server_default="batch")
    #: entity names, in order
    entities: Mapped[list[Any]] = json_array(nullable=False)
    #: the SourceSpec's fields (batch views)
    source: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    ttl_seconds: Mapped[int | None] = mapped_column(Integer)
    online: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    tags: Mapped[list[Any]] = json_array(nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    #: on-demand views: the import string of the function, its input features and the
    #: request-time fields (name -> type)
    function: Mapped[str | None] = mapped_column(String(1024))
    inputs: Mapped[list[Any]] = json_array(nullable=False)
    request_fields: Mapped[dict[str, Any]] = json_object(nullable=False)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: materialisation watermark: everything with an event time before it is online
    materialized_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class FeatureDefinition(Base):
    """A named feature (unique across the store): its type, view, source and transformation.

    ``data_source`` is the view's source as text (the uri, ``sql`` or ``push``),
    ``transformation_logic`` the feature's expression, ``schema_definition``
    ``{"dtype": ...}``; ``pii`` is derived from the ``pii`` tag.
    """

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
    view_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("feature_views.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    pii: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    #: position of the feature in its view (the order features were defined in)
    position: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


Index("idx_feature_definitions_name", FeatureDefinition.name)
Index("idx_feature_definitions_type", FeatureDefinition.feature_type)


class FeatureDefinitionVersion(Base):
    """One definition a feature had: the ``definition`` dict as of ``version``."""

    __tablename__ = "feature_definition_versions"
    __table_args__ = (CheckConstraint(choices_check("change", CHANGE_KINDS), name="change"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    feature_name: Mapped[str] = mapped_column(String(255))
    view_name: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    definition: Mapped[dict[str, Any]] = json_object(nullable=False)
    #: the principal's name (kept when the user is deleted)
    changed_by: Mapped[str | None] = mapped_column(String(255))
    changed_at: Mapped[datetime] = created_at()
    change: Mapped[str] = mapped_column(String(20))


Index(
    "uq_feature_definition_versions_feature_name_version",
    FeatureDefinitionVersion.feature_name,
    FeatureDefinitionVersion.version,
    unique=True,
)


class FeatureStatistics(Base):
    """Statistics of one feature over one materialisation window (monitoring's reference)."""

    __tablename__ = "feature_statistics"

    id: Mapped[uuid.UUID] = uuid_pk()
    view_name: Mapped[str] = mapped_column(String(255))
    feature_name: Mapped[str] = mapped_column(String(255))
    computed_at: Mapped[datetime] = created_at()
    #: the materialisation experiment
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_experiments.id", ondelete="SET NULL")
    )
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: count, nulls, min, max, mean, std, quantiles, top categories
    stats: Mapped[dict[str, Any]] = json_object(nullable=False)


Index(
    "ix_feature_statistics_view_name_feature_name_computed_at",
    FeatureStatistics.view_name,
    FeatureStatistics.feature_name,
    FeatureStatistics.computed_at,
)


class FeatureOnlineValue(Base):
    """The ``sql`` online store: the latest values of one view for one entity key."""

    __tablename__ = "feature_online_values"

    view: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: the encoded entity key (mlrig.features.online.encode_key)
    entity_key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    values: Mapped[dict[str, Any]] = json_object(nullable=False)
    event_timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    created_timestamp: Mapped[datetime | None] = mapped_column(UTCDateTime)
    written_at: Mapped[datetime] = created_at()


class FeaturePushRow(Base):
    """One row pushed to a push-source view (its offline history)."""

    __tablename__ = "feature_push_rows"

    id: Mapped[uuid.UUID] = uuid_pk()
    view_name: Mapped[str] = mapped_column(String(255))
    #: typed entity key values by join key
    entity_key: Mapped[dict[str, Any]] = json_object(nullable=False)
    values: Mapped[dict[str, Any]] = json_object(nullable=False)
    event_timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    created_timestamp: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pushed_at: Mapped[datetime] = created_at()


Index(
    "ix_feature_push_rows_view_name_event_timestamp",
    FeaturePushRow.view_name,
    FeaturePushRow.event_timestamp,
)
