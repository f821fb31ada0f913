"""The consortium CA's signed membership lists as the admin published them."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "membership_lists",
        sa.Column("serial", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("document", sa.LargeBinary, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.execute("UPDATE schema_info SET version = 6")


def downgrade() -> None:
    op.drop_table("membership_lists")
    op.execute("UPDATE schema_info SET version = 5")
