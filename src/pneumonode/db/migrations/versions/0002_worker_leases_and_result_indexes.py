"""worker leases, one result per job and model version, query indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 16:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import pneumonode.db.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lease_until", pneumonode.db.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("worker", sa.String(length=128), nullable=True))
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("side_assumed", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.create_unique_constraint("uq_results_job_model", ["job_id", "model_version"])
        batch_op.create_index("ix_results_created", ["created_at"], unique=False)
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.create_index("ix_studies_patient_id", ["patient_id"], unique=False)
        batch_op.create_index("ix_studies_accession_number", ["accession_number"], unique=False)
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.create_index("ix_instances_received_at", ["received_at"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deliveries_sop_destination", ["sop_uid", "destination"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_sop_destination")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index("ix_instances_received_at")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index("ix_studies_accession_number")
        batch_op.drop_index("ix_studies_patient_id")
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_index("ix_results_created")
        batch_op.drop_constraint("uq_results_job_model", type_="unique")
        batch_op.drop_column("side_assumed")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("worker")
        batch_op.drop_column("lease_until")
