"""tracking: runs from user code, nested and grouped, with tags and their own artifacts

An experiment is either a job the engine runs (``origin = 'engine'``) or a run a script
tracks itself (``'tracking'``; ``'mlflow'`` for one the MLflow-compatible routes made,
``'import'`` for one ``mlrig import`` brought in): one kind of record, listed and
compared alike. A run can be nested in another (``parent_id``) and grouped with the runs
of one study (``group_name``: what ``start_run(experiment=...)`` names, and where a sweep
puts its trials). ``tags`` are free-form strings. A group has its own row
(``run_groups``: description, tags; MLflow's "experiment"). A run's files (``run_artifacts``) are
stored like model artifacts, under the run.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# spelled out (as in 0001) so this revision keeps meaning what it meant
TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
PARENT_FK = "fk_training_experiments_parent_id_training_experiments"


def _id() -> sa.Column:
    if op.get_context().dialect.name == "postgresql":
        default = sa.text("gen_random_uuid()")
    else:
        default = sa.text("(lower(hex(randomblob(16))))")
    return sa.Column("id", sa.Uuid(), server_default=default, nullable=False)


def upgrade() -> None:
    with op.batch_alter_table("training_experiments") as table:
        table.add_column(
            sa.Column("origin", sa.String(20), server_default="engine", nullable=False)
        )
        table.add_column(sa.Column("parent_id", sa.Uuid(), nullable=True))
        table.add_column(sa.Column("group_name", sa.String(255), nullable=True))
        table.add_column(sa.Column("tags", JSON, server_default=sa.text("'{}'"), nullable=False))
        table.create_foreign_key(
            PARENT_FK, "training_experiments", ["parent_id"], ["id"], ondelete="SET NULL"
        )
    op.create_index("ix_training_experiments_group_name", "training_experiments", ["group_name"])
    op.create_index("ix_training_experiments_parent_id", "training_experiments", ["parent_id"])
    op.create_table(
        "run_groups",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("tags", JSON, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("deleted_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_run_groups"),
    )
    op.create_index("uq_run_groups_name", "run_groups", ["name"], unique=True)
    op.create_table(
        "run_artifacts",
        _id(),
        sa.Column("experiment_id", sa.Uuid(), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("storage_key", sa.String(1024), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("created_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["training_experiments.id"],
            name="fk_run_artifacts_experiment_id_training_experiments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_run_artifacts"),
    )
    op.create_index(
        "uq_run_artifacts_experiment_id_path",
        "run_artifacts",
        ["experiment_id", "path"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_run_artifacts_experiment_id_path", table_name="run_artifacts")
    op.drop_table("run_artifacts")
    op.drop_index("uq_run_groups_name", table_name="run_groups")
    op.drop_table("run_groups")
    op.drop_index("ix_training_experiments_parent_id", table_name="training_experiments")
    op.drop_index("ix_training_experiments_group_name", table_name="training_experiments")
    with op.batch_alter_table("training_experiments") as table:
        table.drop_constraint(PARENT_FK, type_="foreignkey")
        table.drop_column("tags")
        table.drop_column("group_name")
        table.drop_column("parent_id")
        table.drop_column("origin")
