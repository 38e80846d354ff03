"""experiment names are unique

The service refused a taken name by looking it up first, so two concurrent creates with
the same name could both pass the check; a unique index makes the database refuse the
second. A database that already holds duplicate names (from that race) is not changed:
the upgrade stops and lists them, to be renamed first.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mlrig.errors import ConflictError

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "uq_training_experiments_name"


def upgrade() -> None:
    duplicates = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT name, COUNT(*) FROM training_experiments GROUP BY name "
                "HAVING COUNT(*) > 1 ORDER BY name"
            )
        )
        .all()
    )
    if duplicates:
        names = ", ".join(f"{name!r} ({count}x)" for name, count in duplicates[:20])
        msg = (
            f"experiment names must be unique from this version on, and these are not: "
            f"{names}; rename all but one of each (UPDATE training_experiments SET name = ...) "
            "and run mlrig db upgrade again"
        )
        raise ConflictError(msg, details={"duplicates": [row[0] for row in duplicates]})
    op.create_index(INDEX, "training_experiments", ["name"], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="training_experiments")
