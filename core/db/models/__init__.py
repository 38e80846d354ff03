"""The ORM models of every mlrig table, on one :class:`Base` metadata.

The spec's ten tables keep their names, columns and index names; the platform's own
tables (users, tokens, audit, registry grouping, aliases, approvals, evaluations,
experiment events) sit beside them.
"""

from mlrig.db.models.auth import ROLES, ApiToken, AuditLog, PlatformSecret, User
from mlrig.db.models.base import NAMING_CONVENTION, Base
from mlrig.db.models.features import (
    FeatureDefinition,
    FeatureDefinitionVersion,
    FeatureEntity,
    FeatureOnlineValue,
    FeaturePushRow,
    FeatureStatistics,
    FeatureView,
)
from mlrig.db.models.registry import (
    APPROVAL_STATUSES,
    STAGES,
    ApprovalRequest,
    MLModel,
    ModelAlias,
    ModelArtifact,
    ModelEvaluation,
    RegisteredModel,
)
from mlrig.db.models.serving import (
    ABTestExperiment,
    InferenceRequest,
    ModelDeployment,
    ModelPerformanceMetric,
)
from mlrig.db.models.sweeps import TRIAL_STATES, Sweep, SweepTrial
from mlrig.db.models.training import (
    EXPERIMENT_STATUSES,
    AutoMLJob,
    EngineWorker,
    ExperimentEvent,
    RunArtifact,
    RunGroup,
    TrainingExperiment,
    TrainingMetric,
)

#: The ten tables of the platform spec's schema.
SPEC_TABLES = (
    "ml_models",
    "model_artifacts",
    "training_experiments",
    "training_metrics",
    "model_deployments",
    "ab_test_experiments",
    "feature_definitions",
    "model_performance_metrics",
    "inference_requests",
    "automl_jobs",
)

__all__ = [
    "APPROVAL_STATUSES",
    "EXPERIMENT_STATUSES",
    "NAMING_CONVENTION",
    "ROLES",
    "SPEC_TABLES",
    "STAGES",
    "TRIAL_STATES",
    "ABTestExperiment",
    "ApiToken",
    "ApprovalRequest",
    "AuditLog",
    "AutoMLJob",
    "Base",
    "EngineWorker",
    "ExperimentEvent",
    "FeatureDefinition",
    "FeatureDefinitionVersion",
    "FeatureEntity",
    "FeatureOnlineValue",
    "FeaturePushRow",
    "FeatureStatistics",
    "FeatureView",
    "InferenceRequest",
    "MLModel",
    "ModelAlias",
    "ModelArtifact",
    "ModelDeployment",
    "ModelEvaluation",
    "ModelPerformanceMetric",
    "PlatformSecret",
    "RegisteredModel",
    "RunArtifact",
    "RunGroup",
    "Sweep",
    "SweepTrial",
    "TrainingExperiment",
    "TrainingMetric",
    "User",
]
