"""The exams the DRIMbox consumer retrieved from other hospitals into its image cache

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 01:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imaging_fetch",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("patient_id", sa.Integer(), sa.ForeignKey("patient.id"), nullable=False),
        sa.Column("kos_sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=True),
        sa.Column("source", sa.String(200), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("instances_expected", sa.Integer(), nullable=False),
        sa.Column("instances_done", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(500), nullable=True),
        sa.Column("requested_by", sa.String(100), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_access_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_imaging_fetch_patient_id", "imaging_fetch", ["patient_id"])
    op.create_index("ix_imaging_fetch_study_instance_uid", "imaging_fetch", ["study_instance_uid"])


def downgrade() -> None:
    op.drop_index("ix_imaging_fetch_study_instance_uid", table_name="imaging_fetch")
    op.drop_index("ix_imaging_fetch_patient_id", table_name="imaging_fetch")
    op.drop_table("imaging_fetch")
