"""The instances the PACS withdrew (IOCM Rejection Notes), left out of the manifests published after

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 02:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imaging_rejection",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("note_sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("study_instance_uid", "sop_instance_uid"),
    )
    op.create_index("ix_imaging_rejection_study_instance_uid", "imaging_rejection", ["study_instance_uid"])


def downgrade() -> None:
    op.drop_index("ix_imaging_rejection_study_instance_uid", table_name="imaging_rejection")
    op.drop_table("imaging_rejection")
