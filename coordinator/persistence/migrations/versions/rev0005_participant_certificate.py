"""The fingerprint of the certificate each organization last called with (participants approve)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_COLUMNS = "org_id, status, first_seen, last_seen"


def _participants(*extra: sa.Column[str]) -> None:
    op.create_table(
        "participants",
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        *extra,
    )


def _rebuild_on_sqlite(*extra: sa.Column[str]) -> None:
    # As in 0004: a table created anew keeps SQLite's stored DDL exactly schema.py's.
    op.rename_table("participants", "participants_before_0005")
    _participants(*extra)
    op.execute(
        f"INSERT INTO participants ({_COLUMNS}) "  # noqa: S608 - constants only
        f"SELECT {_COLUMNS} FROM participants_before_0005"
    )
    op.drop_table("participants_before_0005")


def upgrade() -> None:
    column = sa.Column("certificate_sha256", sa.String(64))
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_on_sqlite(column)
    else:
        op.add_column("participants", column)
    op.execute("UPDATE schema_info SET version = 5")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_on_sqlite()
    else:
        op.drop_column("participants", "certificate_sha256")
    op.execute("UPDATE schema_info SET version = 4")
