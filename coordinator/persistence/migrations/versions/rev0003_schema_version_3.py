"""Schema version 3: job-level messages (the paillier key ceremony)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.job_id"), nullable=False),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(80), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("certificate_pem", sa.LargeBinary, nullable=False),
        sa.Column("acknowledgement_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("job_id", "org_id", "kind", name="uq_job_messages_job_org_kind"),
    )
    op.create_index("ix_job_messages_job_id", "job_messages", ["job_id"])
    op.execute("UPDATE schema_info SET version = 3")


def downgrade() -> None:
    op.drop_table("job_messages")
    op.execute("UPDATE schema_info SET version = 2")
