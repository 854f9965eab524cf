"""instances.pruned_at: when retention deleted an instance's files

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 22:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import pneumonode.db.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("pruned_at", pneumonode.db.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("pruned_at")
