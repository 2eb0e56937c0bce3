"""The KOS manifests the DRIMbox source published to the DMP

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 22:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imaging_manifest",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("document_id", sa.Integer(), sa.ForeignKey("document.id"), nullable=False),
        sa.Column("structure_id", sa.Integer(), sa.ForeignKey("structure.id"), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("series_uids", sa.JSON(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("entry_uuid", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_imaging_manifest_document_id", "imaging_manifest", ["document_id"])
    op.create_index("ix_imaging_manifest_study_instance_uid", "imaging_manifest", ["study_instance_uid"])


def downgrade() -> None:
    op.drop_index("ix_imaging_manifest_study_instance_uid", table_name="imaging_manifest")
    op.drop_index("ix_imaging_manifest_document_id", table_name="imaging_manifest")
    op.drop_table("imaging_manifest")
