"""SQLAlchemy schema of the coordinator database; uniqueness lives here, not in Python checks.

Every change here comes with an Alembic revision in ``migrations/versions/`` that makes it
(docs/migrations.md); a test checks that the newest revision builds exactly these tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = ["metadata"]

metadata = MetaData()

# The schema version before Alembic (4 since revision 0004, 5 since 0005, 6 since 0006). Code
# from before Alembic reads it and refuses any version but its own, so a revision that changes
# tables sets it to 4 or more.
schema_info = Table(
    "schema_info",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

participants = Table(
    "participants",
    metadata,
    Column("org_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    # Hex SHA-256 of the certificate (DER) of the organization's latest call; NULL before 0005.
    Column("certificate_sha256", String(64)),
)

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("spec_json", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("weight_specs_json", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("failed_rounds", Integer, nullable=False, default=0),
    Column("failure_reason", Text),
    Column("row_version", Integer, nullable=False, default=0),
)

rounds = Table(
    "rounds",
    metadata,
    Column("round_id", String(36), primary_key=True),
    Column("job_id", String(36), ForeignKey("jobs.job_id"), nullable=False, index=True),
    Column("number", Integer, nullable=False),
    Column("protection", String(16), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("row_version", Integer, nullable=False),
    Column("base_version", Integer, nullable=False),
    Column("cohort_json", Text, nullable=False),
    Column("deadline_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("contributors_json", Text, nullable=False),
    Column("total_weight", BigInteger, nullable=False),
    Column("train_loss_sum", Float, nullable=False),
    Column("accumulator_ref", String(64)),
    Column("result_ref", String(64)),
    Column("abort_reason", Text),
    UniqueConstraint("job_id", "number", name="uq_rounds_job_number"),
)

submissions = Table(
    "submissions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("round_id", String(36), ForeignKey("rounds.round_id"), nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("content_sha256", LargeBinary(32), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("num_examples", BigInteger, nullable=False),
    Column("acknowledgement_id", String(36), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("round_id", "org_id", "phase", name="uq_submissions_round_org_phase"),
)

phase_messages = Table(
    "phase_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("round_id", String(36), ForeignKey("rounds.round_id"), nullable=False, index=True),
    Column("org_id", String(64), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("certificate_pem", LargeBinary, nullable=False),
    UniqueConstraint("round_id", "org_id", "phase", name="uq_phase_messages_round_org_phase"),
)

job_messages = Table(
    "job_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.job_id"), nullable=False, index=True),
    Column("org_id", String(64), nullable=False),
    Column("kind", String(80), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("certificate_pem", LargeBinary, nullable=False),
    Column("acknowledgement_id", String(36), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("job_id", "org_id", "kind", name="uq_job_messages_job_org_kind"),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.job_id"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("blob_ref", String(64), nullable=False),
    Column("round_id", String(36)),
    Column("created_at", Float, nullable=False),
    # The strategy's optimizer state after this version (docs/strategies.md); NULL when the
    # strategy keeps none or the server step runs at the organizations (paillier).
    Column("optimizer_state_ref", String(64)),
)

metrics = Table(
    "metrics",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.job_id"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("org_id", String(64), primary_key=True),
    Column("num_examples", BigInteger, nullable=False),
    Column("loss", Float, nullable=False),
    Column("accuracy", Float, nullable=False),
    Column("created_at", Float, nullable=False),
)

revoked_certificates = Table(
    "revoked_certificates",
    metadata,
    Column("serial_hex", String(64), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("at", Float, nullable=False),
)

# The consortium CA's signed membership lists as the admin published them; the newest is handed
# to participants (fedsilo/membership.py). The serial is the list's own: it only goes up.
membership_lists = Table(
    "membership_lists",
    metadata,
    Column("serial", BigInteger, primary_key=True, autoincrement=False),
    Column("document", LargeBinary, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("at", Float, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("detail", Text, nullable=False),
)
