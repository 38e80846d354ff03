"""sweeps: hyperparameter searches whose trials run on the job queue

A sweep is an experiment (``origin = 'sweep'``) with a ``sweeps`` row (the trial
template, the search space, the strategy and its saved state, objective, budget, pruning
rule, the driver's lease) and a ``sweep_trials`` row per trial asked (params, state,
objective value, rung where pruned, whether the strategy was told).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# spelled out (as in 0001) so this revision keeps meaning what it meant
TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _id() -> sa.Column:
    if op.get_context().dialect.name == "postgresql":
        default = sa.text("gen_random_uuid()")
    else:
        default = sa.text("(lower(hex(randomblob(16))))")
    return sa.Column("id", sa.Uuid(), server_default=default, nullable=False)


def _json(name: str) -> sa.Column:
    return sa.Column(name, JSON, server_default=sa.text("'{}'"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Uuid(), nullable=False),
        _json("template"),
        _json("space"),
        sa.Column("strategy", sa.String(100), nullable=False),
        _json("strategy_options"),
        sa.Column("strategy_state", sa.LargeBinary(), nullable=True),
        sa.Column("state_version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("objective", sa.String(100), nullable=False),
        sa.Column("objective_kind", sa.String(20), server_default="validation", nullable=False),
        sa.Column("direction", sa.String(10), nullable=False),
        sa.Column("max_trials", sa.Integer(), nullable=False),
        sa.Column("parallelism", sa.Integer(), server_default="1", nullable=False),
        sa.Column("max_seconds", sa.Integer(), nullable=True),
        sa.Column("pruner", JSON, nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("trials_asked", sa.Integer(), server_default="0", nullable=False),
        sa.Column("best_trial_id", sa.Uuid(), nullable=True),
        sa.Column("best_value", sa.Double(), nullable=True),
        sa.Column("model_version_id", sa.Uuid(), nullable=True),
        sa.Column("driver_owner", sa.String(255), nullable=True),
        sa.Column("driver_expires_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["id"],
            ["training_experiments.id"],
            name="fk_sweeps_id_training_experiments",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["ml_models.id"],
            name="fk_sweeps_model_version_id_ml_models",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sweeps"),
    )
    op.create_table(
        "sweep_trials",
        _id(),
        sa.Column("sweep_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Uuid(), nullable=True),
        _json("params"),
        _json("extra"),
        sa.Column("state", sa.String(20), server_default="queued", nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("rung", sa.Integer(), nullable=True),
        sa.Column("pruned_at_step", sa.Integer(), nullable=True),
        sa.Column("told", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("candidate_key", sa.String(1024), nullable=True),
        sa.Column("duration_s", sa.Double(), nullable=True),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("completed_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["sweep_id"],
            ["sweeps.id"],
            name="fk_sweep_trials_sweep_id_sweeps",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["training_experiments.id"],
            name="fk_sweep_trials_experiment_id_training_experiments",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sweep_trials"),
    )
    op.create_index(
        "uq_sweep_trials_sweep_id_number", "sweep_trials", ["sweep_id", "number"], unique=True
    )
    op.create_index("ix_sweep_trials_sweep_id_state", "sweep_trials", ["sweep_id", "state"])
    op.create_index("ix_sweep_trials_experiment_id", "sweep_trials", ["experiment_id"])


def downgrade() -> None:
    op.drop_index("ix_sweep_trials_experiment_id", table_name="sweep_trials")
    op.drop_index("ix_sweep_trials_sweep_id_state", table_name="sweep_trials")
    op.drop_index("uq_sweep_trials_sweep_id_number", table_name="sweep_trials")
    op.drop_table("sweep_trials")
    op.drop_table("sweeps")
