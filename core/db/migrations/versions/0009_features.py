"""features: the feature store's entities, views, definition history, statistics,
online values (the ``sql`` online store) and push rows

``feature_definitions`` (the spec's table) gains the feature's view, version, PII flag
and position in its view.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
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


def _json(name: str, default: str = "{}", *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, JSON, server_default=sa.text(f"'{default}'"), nullable=nullable)


def _now(name: str) -> sa.Column:
    return sa.Column(name, TIMESTAMP, server_default=sa.func.now(), nullable=False)


def _user_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["created_by"], ["users.id"], name=f"fk_{table}_created_by_users", ondelete="SET NULL"
    )


def upgrade() -> None:
    op.create_table(
        "feature_entities",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        _json("join_keys", "[]"),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _now("created_at"),
        _now("updated_at"),
        _user_fk("feature_entities"),
        sa.PrimaryKeyConstraint("id", name="pk_feature_entities"),
        sa.UniqueConstraint("name", name="uq_feature_entities_name"),
    )
    op.create_table(
        "feature_views",
        _id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(20), server_default="batch", nullable=False),
        _json("entities", "[]"),
        sa.Column("source", JSON, nullable=True),
        sa.Column("ttl_seconds", sa.Integer(), nullable=True),
        sa.Column("online", sa.Boolean(), server_default="1", nullable=False),
        _json("tags", "[]"),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("function", sa.String(1024), nullable=True),
        _json("inputs", "[]"),
        _json("request_fields"),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("materialized_until", TIMESTAMP, nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        _now("created_at"),
        _now("updated_at"),
        sa.CheckConstraint("kind IN ('batch', 'on_demand')", name=op.f("ck_feature_views_kind")),
        _user_fk("feature_views"),
        sa.PrimaryKeyConstraint("id", name="pk_feature_views"),
        sa.UniqueConstraint("name", name="uq_feature_views_name"),
    )
    with op.batch_alter_table("feature_definitions") as table:
        table.add_column(sa.Column("view_id", sa.Uuid(), nullable=True))
        table.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))
        table.add_column(sa.Column("pii", sa.Boolean(), server_default="0", nullable=False))
        table.add_column(sa.Column("position", sa.Integer(), server_default="0", nullable=False))
        table.create_foreign_key(
            "fk_feature_definitions_view_id_feature_views",
            "feature_views",
            ["view_id"],
            ["id"],
            ondelete="CASCADE",
        )
        table.create_index("ix_feature_definitions_view_id", ["view_id"])
    op.create_table(
        "feature_definition_versions",
        _id(),
        sa.Column("feature_name", sa.String(255), nullable=False),
        sa.Column("view_name", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _json("definition"),
        sa.Column("changed_by", sa.String(255), nullable=True),
        _now("changed_at"),
        sa.Column("change", sa.String(20), nullable=False),
        sa.CheckConstraint(
            "change IN ('created', 'updated')", name=op.f("ck_feature_definition_versions_change")
        ),
        sa.PrimaryKeyConstraint("id", name="pk_feature_definition_versions"),
    )
    op.create_index(
        "uq_feature_definition_versions_feature_name_version",
        "feature_definition_versions",
        ["feature_name", "version"],
        unique=True,
    )
    op.create_table(
        "feature_statistics",
        _id(),
        sa.Column("view_name", sa.String(255), nullable=False),
        sa.Column("feature_name", sa.String(255), nullable=False),
        _now("computed_at"),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("window_start", TIMESTAMP, nullable=True),
        sa.Column("window_end", TIMESTAMP, nullable=True),
        _json("stats"),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["training_experiments.id"],
            name="fk_feature_statistics_job_id_training_experiments",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_feature_statistics"),
    )
    op.create_index(
        "ix_feature_statistics_view_name_feature_name_computed_at",
        "feature_statistics",
        ["view_name", "feature_name", "computed_at"],
    )
    op.create_table(
        "feature_online_values",
        sa.Column("view", sa.String(255), nullable=False),
        sa.Column("entity_key", sa.String(1024), nullable=False),
        _json("values"),
        sa.Column("event_timestamp", TIMESTAMP, nullable=False),
        sa.Column("created_timestamp", TIMESTAMP, nullable=True),
        _now("written_at"),
        sa.PrimaryKeyConstraint("view", "entity_key", name="pk_feature_online_values"),
    )
    op.create_table(
        "feature_push_rows",
        _id(),
        sa.Column("view_name", sa.String(255), nullable=False),
        _json("entity_key"),
        _json("values"),
        sa.Column("event_timestamp", TIMESTAMP, nullable=False),
        sa.Column("created_timestamp", TIMESTAMP, nullable=True),
        _now("pushed_at"),
        sa.PrimaryKeyConstraint("id", name="pk_feature_push_rows"),
    )
    op.create_index(
        "ix_feature_push_rows_view_name_event_timestamp",
        "feature_push_rows",
        ["view_name", "event_timestamp"],
    )


def downgrade() -> None:
    op.drop_index("ix_feature_push_rows_view_name_event_timestamp", table_name="feature_push_rows")
    op.drop_table("feature_push_rows")
    op.drop_table("feature_online_values")
    op.drop_index(
        "ix_feature_statistics_view_name_feature_name_computed_at", table_name="feature_statistics"
    )
    op.drop_table("feature_statistics")
    op.drop_index(
        "uq_feature_definition_versions_feature_name_version",
        table_name="feature_definition_versions",
    )
    op.drop_table("feature_definition_versions")
    with op.batch_alter_table("feature_definitions") as table:
        table.drop_index("ix_feature_definitions_view_id")
        table.drop_constraint("fk_feature_definitions_view_id_feature_views", type_="foreignkey")
        table.drop_column("position")
        table.drop_column("pii")
        table.drop_column("version")
        table.drop_column("view_id")
    op.drop_table("feature_views")
    op.drop_table("feature_entities")
