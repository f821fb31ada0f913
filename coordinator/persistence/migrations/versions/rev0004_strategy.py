"""Optimizer state of a job's strategy beside each model version (docs/strategies.md)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = "job_id, version, blob_ref, round_id, created_at"


def _model_versions(*extra: sa.Column[str]) -> None:
    op.create_table(
        "model_versions",
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.job_id"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("blob_ref", sa.String(64), nullable=False),
        sa.Column("round_id", sa.String(36)),
        sa.Column("created_at", sa.Float, nullable=False),
        *extra,
    )


def _rebuild_on_sqlite(*extra: sa.Column[str]) -> None:
    # SQLite's ALTER TABLE keeps the old DDL text (and a rename quotes the name), so the table
    # is created anew under its own name: its stored DDL is then exactly schema.py's.
    op.rename_table("model_versions", "model_versions_before_0004")
    _model_versions(*extra)
    op.execute(
        f"INSERT INTO model_versions ({_COLUMNS}) "  # noqa: S608 - constants only
        f"SELECT {_COLUMNS} FROM model_versions_before_0004"
    )
    op.drop_table("model_versions_before_0004")


def upgrade() -> None:
    column = sa.Column("optimizer_state_ref", sa.String(64))
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_on_sqlite(column)
    else:
        op.add_column("model_versions", column)
    op.execute("UPDATE schema_info SET version = 4")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_on_sqlite()
    else:
        op.drop_column("model_versions", "optimizer_state_ref")
    op.execute("UPDATE schema_info SET version = 3")
