"""Serving: deployments, A/B tests, performance metrics and inference records."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, Numeric, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from mlrig.db.models.base import Base, created_at, json_array, json_object, updated_at, uuid_pk
from mlrig.db.types import GUID, JSONType, UTCDateTime, utcnow


class ModelDeployment(Base):
    """A model version served at an endpoint (the spec's ``model_deployments``)."""

    __tablename__ = "model_deployments"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(255))
    model_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ml_models.id"))
    version: Mapped[str] = mapped_column(String(100))
    endpoint_url: Mapped[str | None] = mapped_column(Text)
    deployment_config: Mapped[dict[str, Any]] = json_object()
    status: Mapped[str] = mapped_column(
        String(50), nullable=True, default="pending", server_default="pending"
    )
    #: why the deployment failed (or was stopped), for ``status`` to show
    status_reason: Mapped[str | None] = mapped_column(Text)
    environment: Mapped[str | None] = mapped_column(String(100))
    resources: Mapped[dict[str, Any]] = json_object()
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    deployed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = created_at(nullable=True)
    updated_at: Mapped[datetime] = updated_at(nullable=True)
    #: set when deleted: the row stays for the inference records that point at it
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


Index("uq_model_deployments_name", ModelDeployment.name, unique=True)
Index("idx_model_deployments_model_version", ModelDeployment.model_id, ModelDeployment.version)
Index("idx_model_deployments_status_env", ModelDeployment.status, ModelDeployment.environment)


class ABTestExperiment(Base):
    """An A/B test between deployments (the spec's ``ab_test_experiments``)."""

    __tablename__ = "ab_test_experiments"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(
        String(50), nullable=True, default="draft", server_default="draft"
    )
    traffic_split: Mapped[dict[str, Any]] = json_object()
    control_model_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("model_deployments.id"))
    treatment_models: Mapped[list[Any]] = json_array()
    success_metrics: Mapped[list[Any]] = json_array()
    configuration: Mapped[dict[str, Any]] = json_object()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = created_at(nullable=True)
    updated_at: Mapped[datetime] = updated_at(nullable=True)


Index("idx_ab_test_experiments_status", ABTestExperiment.status)


class ModelPerformanceMetric(Base):
    """A monitored metric of a deployment (the spec's ``model_performance_metrics``)."""

    __tablename__ = "model_performance_metrics"

    id: Mapped[uuid.UUID] = uuid_pk()
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("model_deployments.id", ondelete="CASCADE")
    )
    metric_name: Mapped[str] = mapped_column(String(100))
    metric_value: Mapped[float | None] = mapped_column(Numeric(20, 10, asdecimal=False))
    metric_metadata: Mapped[dict[str, Any]] = json_object()
    recorded_at: Mapped[datetime] = mapped_column(
        UTCDateTime, nullable=True, default=utcnow, server_default=func.now()
    )


Index(
    "idx_model_performance_deployment_time",
    ModelPerformanceMetric.deployment_id,
    ModelPerformanceMetric.recorded_at.desc(),
)


class InferenceRequest(Base):
    """One served prediction (the spec's ``inference_requests``), written in batches."""

    __tablename__ = "inference_requests"

    id: Mapped[uuid.UUID] = uuid_pk()
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("model_deployments.id"))
    request_id: Mapped[str | None] = mapped_column(String(255))
    #: the version that answered, and as what (``primary``, ``canary``, ``shadow``)
    model_version_id: Mapped[uuid.UUID | None] = mapped_column(GUID)
    variant: Mapped[str | None] = mapped_column(String(50))
    input_features: Mapped[Any] = mapped_column(JSONType, nullable=True)
    prediction: Mapped[Any] = mapped_column(JSONType, nullable=True)
    confidence_score: Mapped[float | None] = mapped_column(Numeric(5, 4, asdecimal=False))
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    ab_test_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ab_test_experiments.id"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(GUID)
    timestamp: Mapped[datetime] = mapped_column(
        UTCDateTime, nullable=True, default=utcnow, server_default=func.now()
    )


Index(
    "idx_inference_requests_deployment_time",
    InferenceRequest.deployment_id,
    InferenceRequest.timestamp.desc(),
)
Index(
    "uq_inference_requests_deployment_request",
    InferenceRequest.deployment_id,
    InferenceRequest.request_id,
    unique=True,
)
Index("idx_inference_requests_ab_test", InferenceRequest.ab_test_id, InferenceRequest.timestamp)
