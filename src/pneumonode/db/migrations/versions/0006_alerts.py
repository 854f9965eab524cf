"""alerts: HL7 ORU and webhook alerts per result and receiver, with attempts and dead letters

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 00:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import pneumonode.db.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("destination", sa.String(length=2048), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=128), nullable=True),
        sa.Column("sop_uid", sa.String(length=128), nullable=True),
        sa.Column("control_id", sa.String(length=64), nullable=False),
        sa.Column("correction", sa.Boolean(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.String(length=16), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "next_attempt_at", pneumonode.db.models.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("created_at", pneumonode.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", pneumonode.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("result_id", "channel", "destination", name="uq_alerts_result_target"),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index("ix_alerts_state_next", ["state", "next_attempt_at"], unique=False)
        batch_op.create_index("ix_alerts_study_uid", ["study_uid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_study_uid")
        batch_op.drop_index("ix_alerts_state_next")
    op.drop_table("alerts")
