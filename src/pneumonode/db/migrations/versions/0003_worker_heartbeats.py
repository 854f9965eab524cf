"""worker heartbeats

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 17:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import pneumonode.db.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("device", sa.String(length=32), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("started_at", pneumonode.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("seen_at", pneumonode.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.create_index("ix_workers_seen_at", ["seen_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_index("ix_workers_seen_at")
    op.drop_table("workers")
