"""initial schema

The platform spec's ten tables with their indexes (spec names), plus users and API
tokens, the audit log, the registry's grouping, aliases, approvals and evaluations, the
training engine's queue fields and experiment events.

Types are spelled out here rather than imported from the models, so this revision keeps
creating the same schema whatever the models become.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
METRIC = sa.Numeric(20, 10)
STAGES = "'none', 'staging', 'production', 'archived'"
# ml_models <-> training_experiments point at each other: this key is added last.
SOURCE_EXPERIMENT_FK = "fk_ml_models_source_experiment_id_training_experiments"


def _id() -> sa.Column:
    """``id UUID PRIMARY KEY DEFAULT gen_random_uuid()`` (random hex on SQLite)."""
    if op.get_context().dialect.name == "postgresql":
        default = sa.text("gen_random_uuid()")
    else:
        default = sa.text("(lower(hex(randomblob(16))))")
    return sa.Column("id", sa.Uuid(), server_default=default, nullable=False)


def _now(name: str, *, nullable: bool) -> sa.Column:
    """A ``TIMESTAMP WITH TIME ZONE DEFAULT NOW()`` column."""
    return sa.Column(name, TIMESTAMP, server_default=sa.func.now(), nullable=nullable)


def _ts(name: str) -> sa.Column:
    """A nullable ``TIMESTAMP WITH TIME ZONE`` column without default."""
    return sa.Column(name, TIMESTAMP, nullable=True)


def _json(name: str, default: str | None = "{}", *, nullable: bool = True) -> sa.Column:
    """A JSON (JSONB on PostgreSQL) column, ``DEFAULT '<default>'`` unless ``None``."""
    server_default = None if default is None else sa.text(f"'{default}'")
    return sa.Column(name, JSON, server_default=server_default, nullable=nullable)


def _fk(column: str, target: str, ondelete: str | None = None) -> sa.ForeignKeyConstraint:
    """A foreign key, named ``fk_<table>_<column>_<referred table>`` by _create_table."""
    fk = sa.ForeignKeyConstraint([column], [target], ondelete=ondelete)
    fk.info["name_suffix"] = f"{column}_{target.partition('.')[0]}"
    return fk


def _create_table(name: str, *items: sa.SchemaItem) -> None:
    """``op.create_table`` with the constraint names of :mod:`mlrig.db.models.base`."""
    for item in items:
        if isinstance(item, sa.ForeignKeyConstraint) and item.name is None:
            item.name = f"fk_{name}_{item.info['name_suffix']}"
    op.create_table(name, *items, sa.PrimaryKeyConstraint("id", name=f"pk_{name}"))


def _index(name: str, table: str, columns: list[str | sa.TextClause]) -> None:
    op.create_index(name, table, columns, unique=False)


def upgrade() -> None:
    # --- users, tokens, audit -----------------------------------------------------------
    _create_table(
        "users",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("role", sa.String(20), server_default="viewer", nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        _now("created_at", nullable=False),
        sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        # op.f(): the name is final; the naming convention would prefix it a second time.
        sa.CheckConstraint(
            "role IN ('viewer', 'developer', 'deployer', 'admin')", name=op.f("ck_users_role")
        ),
        sa.UniqueConstraint("name", name="uq_users_name"),
    )
    _create_table(
        "api_tokens",
        _id(),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("token_prefix", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        _now("created_at", nullable=False),
        _ts("last_used_at"),
        _ts("expires_at"),
        _ts("revoked_at"),
        _fk("user_id", "users.id", "CASCADE"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )
    _index("ix_api_tokens_token_prefix", "api_tokens", ["token_prefix"])
    _index("ix_api_tokens_user_id", "api_tokens", ["user_id"])
    _create_table(
        "audit_log",
        _id(),
        _now("at", nullable=False),
        sa.Column("actor", sa.String(255), nullable=True),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("resource_type", sa.String(100), nullable=True),
        sa.Column("resource_id", sa.String(255), nullable=True),
        sa.Column("outcome", sa.String(50), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=True),
        _json("details", nullable=False),
    )
    _index("ix_audit_log_at", "audit_log", ["at"])

    # --- model registry -----------------------------------------------------------------
    _create_table(
        "registered_models",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        _json("tags", nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _now("created_at", nullable=False),
        _now("updated_at", nullable=False),
        _ts("deleted_at"),
        _fk("created_by", "users.id"),
        sa.UniqueConstraint("name", name="uq_registered_models_name"),
    )
    _create_table(
        "ml_models",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("framework", sa.String(100), nullable=True),
        sa.Column("model_type", sa.String(100), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _now("created_at", nullable=True),
        _now("updated_at", nullable=True),
        sa.Column("registered_model_id", sa.Uuid(), nullable=False),
        sa.Column("stage", sa.String(20), server_default="none", nullable=False),
        sa.Column("status", sa.String(50), server_default="ready", nullable=False),
        _json("tags", nullable=False),
        _json("params", nullable=False),
        _json("metrics", nullable=False),
        _json("signature", None),
        _json("requirements", "[]", nullable=False),
        _ts("deleted_at"),
        sa.Column("source_experiment_id", sa.Uuid(), nullable=True),
        sa.Column("source_run", sa.String(255), nullable=True),
        sa.Column("parent_version_id", sa.Uuid(), nullable=True),
        _json("datasets", "[]", nullable=False),
        sa.Column("code_version", sa.String(255), nullable=True),
        sa.CheckConstraint(f"stage IN ({STAGES})", name=op.f("ck_ml_models_stage")),
        _fk("created_by", "users.id"),
        _fk("registered_model_id", "registered_models.id", "CASCADE"),
        _fk("parent_version_id", "ml_models.id", "SET NULL"),
        # SQLite accepts a key to a table that does not exist yet (and cannot add one
        # later); PostgreSQL gets it below, once training_experiments exists.
        sa.ForeignKeyConstraint(
            ["source_experiment_id"],
            ["training_experiments.id"],
            name=SOURCE_EXPERIMENT_FK,
            ondelete="SET NULL",
            use_alter=True,
        ),
        sa.UniqueConstraint("name", "version", name="uq_ml_models_name_version"),
    )
    _index("idx_ml_models_name_version", "ml_models", ["name", "version"])
    _index("idx_ml_models_created_at", "ml_models", [sa.text("created_at DESC")])
    _index("idx_ml_models_framework", "ml_models", ["framework"])
    _index("ix_ml_models_registered_model_id", "ml_models", ["registered_model_id"])
    _index("ix_ml_models_source_experiment_id", "ml_models", ["source_experiment_id"])
    _index("ix_ml_models_parent_version_id", "ml_models", ["parent_version_id"])

    _create_table(
        "model_artifacts",
        _id(),
        sa.Column("model_id", sa.Uuid(), nullable=True),
        sa.Column("artifact_type", sa.String(100), nullable=False),
        sa.Column("storage_path", sa.Text(), nullable=False),
        sa.Column("file_size", sa.BigInteger(), nullable=True),
        sa.Column("checksum", sa.String(255), nullable=True),
        _json("metadata"),
        _now("created_at", nullable=True),
        sa.Column("compression", sa.String(20), nullable=True),
        _json("encryption", None),
        _fk("model_id", "ml_models.id", "CASCADE"),
    )
    _index("ix_model_artifacts_model_id", "model_artifacts", ["model_id"])
    _create_table(
        "model_aliases",
        _id(),
        sa.Column("registered_model_id", sa.Uuid(), nullable=False),
        sa.Column("alias", sa.String(255), nullable=False),
        sa.Column("model_version_id", sa.Uuid(), nullable=False),
        _now("created_at", nullable=False),
        _now("updated_at", nullable=False),
        _fk("registered_model_id", "registered_models.id", "CASCADE"),
        _fk("model_version_id", "ml_models.id", "CASCADE"),
        sa.UniqueConstraint(
            "registered_model_id", "alias", name="uq_model_aliases_registered_model_id_alias"
        ),
    )
    _index("ix_model_aliases_model_version_id", "model_aliases", ["model_version_id"])
    _create_table(
        "approval_requests",
        _id(),
        sa.Column("model_version_id", sa.Uuid(), nullable=False),
        sa.Column("target_stage", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), server_default="pending", nullable=False),
        sa.Column("requested_by", sa.Uuid(), nullable=True),
        _now("requested_at", nullable=False),
        sa.Column("decided_by", sa.Uuid(), nullable=True),
        _ts("decided_at"),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.CheckConstraint(
            f"target_stage IN ({STAGES})", name=op.f("ck_approval_requests_target_stage")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected')",
            name=op.f("ck_approval_requests_status"),
        ),
        _fk("model_version_id", "ml_models.id", "CASCADE"),
        _fk("requested_by", "users.id"),
        _fk("decided_by", "users.id"),
    )
    _index(
        "ix_approval_requests_version_status", "approval_requests", ["model_version_id", "status"]
    )
    _create_table(
        "model_evaluations",
        _id(),
        sa.Column("model_version_id", sa.Uuid(), nullable=False),
        sa.Column("dataset_uri", sa.Text(), nullable=False),
        sa.Column("dataset_hash", sa.String(128), nullable=True),
        sa.Column("runtime", sa.String(100), nullable=True),
        _json("metrics", nullable=False),
        _now("created_at", nullable=False),
        _fk("model_version_id", "ml_models.id", "CASCADE"),
    )
    _index("ix_model_evaluations_model_version_id", "model_evaluations", ["model_version_id"])

    # --- training -----------------------------------------------------------------------
    _create_table(
        "training_experiments",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("model_id", sa.Uuid(), nullable=True),
        sa.Column("status", sa.String(50), server_default="created", nullable=True),
        _json("configuration"),
        _json("hyperparameters"),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _ts("started_at"),
        _ts("completed_at"),
        _now("created_at", nullable=True),
        _now("updated_at", nullable=True),
        sa.Column("trainer", sa.String(255), nullable=True),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        _ts("lease_expires_at"),
        _ts("heartbeat_at"),
        _ts("queued_at"),
        sa.Column("status_detail", sa.Text(), nullable=True),
        _json("resources", nullable=False),
        sa.Column("checkpoint_interval_s", sa.Integer(), server_default="600", nullable=False),
        _json("early_stopping", None),
        _json("last_checkpoint", None),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        _json("reproducibility", nullable=False),
        _fk("model_id", "ml_models.id"),
        _fk("created_by", "users.id"),
    )
    _index("idx_training_experiments_model_id", "training_experiments", ["model_id"])
    _index("idx_training_experiments_status", "training_experiments", ["status"])
    _index(
        "ix_training_experiments_claim",
        "training_experiments",
        ["status", sa.text("priority DESC"), "queued_at"],
    )
    _index("ix_training_experiments_lease", "training_experiments", ["status", "lease_expires_at"])
    if op.get_context().dialect.name != "sqlite":
        op.create_foreign_key(
            SOURCE_EXPERIMENT_FK,
            "ml_models",
            "training_experiments",
            ["source_experiment_id"],
            ["id"],
            ondelete="SET NULL",
        )

    _create_table(
        "training_metrics",
        _id(),
        sa.Column("experiment_id", sa.Uuid(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("metric_name", sa.String(100), nullable=False),
        sa.Column("metric_value", METRIC, nullable=True),
        sa.Column("metric_type", sa.String(50), nullable=True),
        _now("recorded_at", nullable=True),
        _fk("experiment_id", "training_experiments.id", "CASCADE"),
    )
    _index("idx_training_metrics_experiment_epoch", "training_metrics", ["experiment_id", "epoch"])
    _index(
        "ix_training_metrics_experiment_name_step",
        "training_metrics",
        ["experiment_id", "metric_name", "step"],
    )
    _create_table(
        "experiment_events",
        _id(),
        sa.Column("experiment_id", sa.Uuid(), nullable=False),
        sa.Column("old_status", sa.String(50), nullable=True),
        sa.Column("new_status", sa.String(50), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        _now("at", nullable=False),
        _fk("experiment_id", "training_experiments.id", "CASCADE"),
    )
    _index("ix_experiment_events_experiment_at", "experiment_events", ["experiment_id", "at"])
    _create_table(
        "automl_jobs",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("task_type", sa.String(100), nullable=False),
        _json("dataset_config"),
        sa.Column("target_column", sa.String(255), nullable=True),
        sa.Column("optimization_metric", sa.String(100), nullable=True),
        sa.Column("time_budget_minutes", sa.Integer(), server_default="60", nullable=True),
        sa.Column("status", sa.String(50), server_default="queued", nullable=True),
        sa.Column("best_model_id", sa.Uuid(), nullable=True),
        _json("results"),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _ts("started_at"),
        _ts("completed_at"),
        _now("created_at", nullable=True),
        _now("updated_at", nullable=True),
        _fk("best_model_id", "ml_models.id"),
        _fk("created_by", "users.id"),
    )
    _index("idx_automl_jobs_status", "automl_jobs", ["status"])
    _index("idx_automl_jobs_created_at", "automl_jobs", [sa.text("created_at DESC")])

    # --- serving ------------------------------------------------------------------------
    _create_table(
        "model_deployments",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("model_id", sa.Uuid(), nullable=True),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("endpoint_url", sa.Text(), nullable=True),
        _json("deployment_config"),
        sa.Column("status", sa.String(50), server_default="pending", nullable=True),
        sa.Column("environment", sa.String(100), nullable=True),
        _json("resources"),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _ts("deployed_at"),
        _now("created_at", nullable=True),
        _now("updated_at", nullable=True),
        _fk("model_id", "ml_models.id"),
        _fk("created_by", "users.id"),
    )
    _index("idx_model_deployments_model_version", "model_deployments", ["model_id", "version"])
    _index("idx_model_deployments_status_env", "model_deployments", ["status", "environment"])
    _create_table(
        "ab_test_experiments",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("status", sa.String(50), server_default="draft", nullable=True),
        _json("traffic_split"),
        sa.Column("control_model_id", sa.Uuid(), nullable=True),
        _json("treatment_models", "[]"),
        _json("success_metrics", "[]"),
        _json("configuration"),
        _ts("started_at"),
        _ts("ended_at"),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _now("created_at", nullable=True),
        _now("updated_at", nullable=True),
        _fk("control_model_id", "model_deployments.id"),
        _fk("created_by", "users.id"),
    )
    _index("idx_ab_test_experiments_status", "ab_test_experiments", ["status"])
    _create_table(
        "model_performance_metrics",
        _id(),
        sa.Column("deployment_id", sa.Uuid(), nullable=True),
        sa.Column("metric_name", sa.String(100), nullable=False),
        sa.Column("metric_value", METRIC, nullable=True),
        _json("metric_metadata"),
        _now("recorded_at", nullable=True),
        _fk("deployment_id", "model_deployments.id", "CASCADE"),
    )
    _index(
        "idx_model_performance_deployment_time",
        "model_performance_metrics",
        ["deployment_id", sa.text("recorded_at DESC")],
    )
    _create_table(
        "inference_requests",
        _id(),
        sa.Column("deployment_id", sa.Uuid(), nullable=True),
        sa.Column("request_id", sa.String(255), nullable=True),
        _json("input_features", None),
        _json("prediction", None),
        sa.Column("confidence_score", sa.Numeric(5, 4), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("ab_test_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        _now("timestamp", nullable=True),
        _fk("deployment_id", "model_deployments.id"),
        _fk("ab_test_id", "ab_test_experiments.id"),
    )
    _index(
        "idx_inference_requests_deployment_time",
        "inference_requests",
        ["deployment_id", sa.text("timestamp DESC")],
    )
    _index("idx_inference_requests_ab_test", "inference_requests", ["ab_test_id", "timestamp"])

    # --- feature store ------------------------------------------------------------------
    _create_table(
        "feature_definitions",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("feature_type", sa.String(100), nullable=False),
        sa.Column("data_source", sa.String(255), nullable=True),
        sa.Column("transformation_logic", sa.Text(), nullable=True),
        _json("tags", "[]"),
        _json("schema_definition"),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _now("created_at", nullable=True),
        _now("updated_at", nullable=True),
        _fk("created_by", "users.id"),
        sa.UniqueConstraint("name", name="uq_feature_definitions_name"),
    )
    _index("idx_feature_definitions_name", "feature_definitions", ["name"])
    _index("idx_feature_definitions_type", "feature_definitions", ["feature_type"])


#: every table of this revision, in creation order (dropped in reverse)
TABLES = (
    "users",
    "api_tokens",
    "audit_log",
    "registered_models",
    "ml_models",
    "model_artifacts",
    "model_aliases",
    "approval_requests",
    "model_evaluations",
    "training_experiments",
    "training_metrics",
    "experiment_events",
    "automl_jobs",
    "model_deployments",
    "ab_test_experiments",
    "model_performance_metrics",
    "inference_requests",
    "feature_definitions",
)


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        # Break the ml_models <-> training_experiments cycle first.
        op.drop_constraint(SOURCE_EXPERIMENT_FK, "ml_models", type_="foreignkey")
    for table in reversed(TABLES):
        op.drop_table(table)  # drops the table's indexes and constraints with it
