"""registered models count their versions

The next version number was read as max()+1 and then inserted, so two registrations
into the same model at once both took the same number and one failed. Each model now
keeps the last number it handed out (``last_version``), raised under the model row's
lock in the transaction that inserts the version: numbers are unique, without gaps, and
never reused, even after a deleted version is purged.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "registered_models",
        sa.Column("last_version", sa.Integer(), server_default="0", nullable=False),
    )
    bind = op.get_bind()
    # numeric version names only ("v1.0" is a name, not a number); done in Python as
    # SQLite and PostgreSQL disagree on casting text to integers
    highest: dict[object, int] = {}
    for model_id, version in bind.execute(
        sa.text("SELECT registered_model_id, version FROM ml_models")
    ):
        if version.isdigit():
            highest[model_id] = max(highest.get(model_id, 0), int(version))
    for model_id, number in highest.items():
        bind.execute(
            sa.text("UPDATE registered_models SET last_version = :n WHERE id = :id"),
            {"n": number, "id": model_id},
        )


def downgrade() -> None:
    with op.batch_alter_table("registered_models") as batch:
        batch.drop_column("last_version")
