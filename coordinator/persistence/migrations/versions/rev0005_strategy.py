"""Optimizer state of a job's strategy beside each model version (docs/strategies.md)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("optimizer_state_ref", sa.String(64), nullable=True))
    op.execute("UPDATE schema_info SET version = 5")


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("optimizer_state_ref")
    op.execute("UPDATE schema_info SET version = 3")
