"""serving: deployment status reasons and soft deletes, scoped tokens, idempotent inference records

A deployment's failure needs its reason (``status_reason``) and a deleted deployment keeps
its row (``deleted_at``) so the inference records that point at it stay readable; a
deployment's name is unique. A token can be narrowed to some permissions or deployments
(``scopes``: ``["predict:*"]``, ``["predict:churn-prod"]``; NULL: everything its role
allows). An inference record names the version that answered and its variant (primary,
canary, shadow), and a client's ``request_id`` is recorded once per deployment.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# spelled out (as in 0001) so this revision keeps meaning what it meant
TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("model_deployments") as table:
        table.add_column(sa.Column("status_reason", sa.Text(), nullable=True))
        table.add_column(sa.Column("deleted_at", TIMESTAMP, nullable=True))
    op.create_index("uq_model_deployments_name", "model_deployments", ["name"], unique=True)
    with op.batch_alter_table("api_tokens") as table:
        table.add_column(sa.Column("scopes", JSON, nullable=True))
    with op.batch_alter_table("inference_requests") as table:
        table.add_column(sa.Column("model_version_id", sa.Uuid(), nullable=True))
        table.add_column(sa.Column("variant", sa.String(50), nullable=True))
    op.create_index(
        "uq_inference_requests_deployment_request",
        "inference_requests",
        ["deployment_id", "request_id"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_inference_requests_deployment_request", table_name="inference_requests")
    with op.batch_alter_table("inference_requests") as table:
        table.drop_column("variant")
        table.drop_column("model_version_id")
    with op.batch_alter_table("api_tokens") as table:
        table.drop_column("scopes")
    op.drop_index("uq_model_deployments_name", table_name="model_deployments")
    with op.batch_alter_table("model_deployments") as table:
        table.drop_column("deleted_at")
        table.drop_column("status_reason")
