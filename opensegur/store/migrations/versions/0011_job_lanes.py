"""Job lanes: the prompt jobs (ZAM, MDN, DMP list read ahead) are claimed before the bulk ones, each lane read
in order from one index

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 01:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# The kinds queued in the prompt lane when this revision was written (store.jobs.Lane.PROMPT = 0).
PROMPT_KINDS = ("zam.send", "mss.zam", "mss.mdn", "dmp.prefetch")


def upgrade() -> None:
    with op.batch_alter_table("job") as batch_op:
        batch_op.add_column(sa.Column("lane", sa.Integer(), nullable=False, server_default="1"))
        batch_op.drop_index("ix_job_ready")
        batch_op.create_index("ix_job_lane_ready", ["status", "lane", "run_after"], unique=False)
    job = sa.table("job", sa.column("kind", sa.String), sa.column("lane", sa.Integer))
    op.execute(job.update().where(job.c.kind.in_(PROMPT_KINDS)).values(lane=0))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch_op:
        batch_op.drop_index("ix_job_lane_ready")
        batch_op.create_index("ix_job_ready", ["status", "run_after"], unique=False)
        batch_op.drop_column("lane")
