"""workers record their heartbeats

A queued job waited silently when no worker ran at all: nothing in the database said
whether any worker was alive. Each worker now keeps a row in ``engine_workers`` (its id,
host, pid, slots and heartbeat, and when it counts as dead), so `experiments start --wait`
can say that no worker is running and how to start one.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# spelled out (as in 0001) so this revision keeps meaning what it meant
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "engine_workers",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("heartbeat_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_engine_workers"),
    )
    op.create_index("ix_engine_workers_expires_at", "engine_workers", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_engine_workers_expires_at", table_name="engine_workers")
    op.drop_table("engine_workers")
