"""Logins under way shared by every serving host

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 18:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_flow",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_auth_flow_expires_at", "auth_flow", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_auth_flow_expires_at", table_name="auth_flow")
    op.drop_table("auth_flow")
