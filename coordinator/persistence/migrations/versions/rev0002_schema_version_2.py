"""Schema version 2: certificate revocations and the secure-aggregation phase messages.

revoked_certificates came without a version change, so a version-1 database made after
certificate revocation arrived has it already: it is created only where it is missing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("revoked_certificates"):
        op.create_table(
            "revoked_certificates",
            sa.Column("serial_hex", sa.String(64), primary_key=True),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("actor", sa.String(64), nullable=False),
            sa.Column("at", sa.Float, nullable=False),
        )
    op.create_table(
        "phase_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("round_id", sa.String(36), sa.ForeignKey("rounds.round_id"), nullable=False),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("certificate_pem", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint(
            "round_id", "org_id", "phase", name="uq_phase_messages_round_org_phase"
        ),
    )
    op.create_index("ix_phase_messages_round_id", "phase_messages", ["round_id"])
    op.execute("UPDATE schema_info SET version = 2")


def downgrade() -> None:
    # revoked_certificates stays: dropping it would re-admit every revoked certificate.
    op.drop_table("phase_messages")
    op.execute("UPDATE schema_info SET version = 1")
