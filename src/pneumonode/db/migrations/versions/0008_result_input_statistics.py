"""results.input_mean/std/dark_share: the model input's statistics, for drift

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 04:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = ("input_mean", "input_std", "input_dark_share")


def upgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
