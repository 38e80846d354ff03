"""index model versions by creator

Search by creator (``created_by=ada``) with the newest first scanned the whole
``ml_models`` table on PostgreSQL; this index serves it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_ml_models_created_by_created_at"


def upgrade() -> None:
    op.create_index(INDEX, "ml_models", ["created_by", sa.text("created_at DESC")])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="ml_models")
