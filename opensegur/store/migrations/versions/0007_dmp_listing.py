"""The list of a patient's DMP documents each professional last saw (prefetch on admission, delta refresh)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 21:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "dmp_listing",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("patient_id", sa.Integer(), sa.ForeignKey("patient.id"), nullable=False),
        sa.Column("rpps", sa.String(11), nullable=False),
        sa.Column("fetched_at", TS, nullable=False),
        sa.Column("since", TS, nullable=True),
        sa.Column("searched_at", TS, nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("documents", sa.JSON(), nullable=False),
        sa.UniqueConstraint("patient_id", "rpps", name="uq_dmp_listing_patient_rpps"),
    )
    op.create_index("ix_dmp_listing_patient_id", "dmp_listing", ["patient_id"])
    op.create_index("ix_dmp_listing_searched_at", "dmp_listing", ["searched_at"])


def downgrade() -> None:
    op.drop_index("ix_dmp_listing_searched_at", table_name="dmp_listing")
    op.drop_index("ix_dmp_listing_patient_id", table_name="dmp_listing")
    op.drop_table("dmp_listing")
