"""Schema version 1: participants, jobs, rounds, submissions, model versions, metrics, audit log.

The tables as the first coordinator created them (with SQLAlchemy's create_all), and the one-row
schema_info table that recorded the version before Alembic.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema_info = op.create_table(
        "schema_info",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "participants",
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("weight_specs_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("failed_rounds", sa.Integer, nullable=False),
        sa.Column("failure_reason", sa.Text),
        sa.Column("row_version", sa.Integer, nullable=False),
    )
    op.create_table(
        "rounds",
        sa.Column("round_id", sa.String(36), primary_key=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.job_id"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("protection", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("row_version", sa.Integer, nullable=False),
        sa.Column("base_version", sa.Integer, nullable=False),
        sa.Column("cohort_json", sa.Text, nullable=False),
        sa.Column("deadline_at", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("contributors_json", sa.Text, nullable=False),
        sa.Column("total_weight", sa.BigInteger, nullable=False),
        sa.Column("train_loss_sum", sa.Float, nullable=False),
        sa.Column("accumulator_ref", sa.String(64)),
        sa.Column("result_ref", sa.String(64)),
        sa.Column("abort_reason", sa.Text),
        sa.UniqueConstraint("job_id", "number", name="uq_rounds_job_number"),
    )
    op.create_index("ix_rounds_job_id", "rounds", ["job_id"])
    op.create_table(
        "submissions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("round_id", sa.String(36), sa.ForeignKey("rounds.round_id"), nullable=False),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("content_sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("num_examples", sa.BigInteger, nullable=False),
        sa.Column("acknowledgement_id", sa.String(36), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("round_id", "org_id", "phase", name="uq_submissions_round_org_phase"),
    )
    op.create_table(
        "model_versions",
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.job_id"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("blob_ref", sa.String(64), nullable=False),
        sa.Column("round_id", sa.String(36)),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "metrics",
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.job_id"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("num_examples", sa.BigInteger, nullable=False),
        sa.Column("loss", sa.Float, nullable=False),
        sa.Column("accuracy", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.bulk_insert(schema_info, [{"id": 1, "version": 1}])


def downgrade() -> None:
    for table in (
        "audit_log",
        "metrics",
        "model_versions",
        "submissions",
        "rounds",
        "jobs",
        "participants",
        "schema_info",
    ):
        op.drop_table(table)
