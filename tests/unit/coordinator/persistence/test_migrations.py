"""Alembic migrations: a database made by every earlier schema version keeps all its rows.

The DDL of schema versions 1 to 3 below is copied from the history of
coordinator/persistence/schema.py and frozen (it must not follow later changes), and the rows are
written the way those versions wrote them (a version-1 job's spec has no secure-aggregation
keys). Each database is upgraded, compared with schema.py (Alembic's autogenerate finds nothing
to change), read back through the Store and written to. The newest revision must build exactly
schema.py's tables, a database newer than the code is refused, and ``fedsilo coordinator
migrate`` is run as a function. The module is long because each version's tables are spelled out.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
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
    create_engine,
    inspect,
    text,
)

from coordinator.domain.jobs import (
    Job,
    JobMessage,
    JobSpec,
    JobState,
    MetricReport,
    ModelVersion,
    Participant,
    ParticipantStatus,
    PhaseMessage,
    SecAggSettings,
    Submission,
)
from coordinator.domain.rounds import Phase, Round
from coordinator.persistence import migrate
from coordinator.persistence.migrate import SchemaMismatch
from coordinator.persistence.schema import metadata
from coordinator.persistence.store import DuplicateKey, Store
from fedsilo.cli import main
from fedsilo.codec import TensorSpec
from fedsilo.protection import Protection
from fedsilo.tasks import TrainingSettings

HEAD = "0006"
HEAD_SCHEMA_INFO = 6  # what schema_info records at HEAD, for code from before Alembic
T0 = 1_700_000_000.123456

# (schema version, whether revoked_certificates exists): that table arrived after version 1
# without a version change, so version-1 databases exist with and without it.
LEGACY = [
    pytest.param(1, False, id="version-1-first"),
    pytest.param(1, True, id="version-1"),
    pytest.param(2, True, id="version-2"),
    pytest.param(3, True, id="version-3"),
]
BACKENDS = [
    pytest.param("sqlite-file", id="sqlite-file"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite-file":
        return f"sqlite:///{tmp_path / 'coordinator.db'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


# -- the tables each earlier version created -------------------------------------------------------


def legacy_metadata(version: int, revocations: bool) -> MetaData:
    """The tables SQLAlchemy's create_all made for ``version`` (from schema.py's history)."""
    md = MetaData()
    Table(
        "schema_info",
        md,
        Column("id", Integer, primary_key=True),
        Column("version", Integer, nullable=False),
    )
    Table(
        "participants",
        md,
        Column("org_id", String(64), primary_key=True),
        Column("status", String(16), nullable=False),
        Column("first_seen", Float, nullable=False),
        Column("last_seen", Float, nullable=False),
    )
    Table(
        "jobs",
        md,
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
    Table(
        "rounds",
        md,
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
    Table(
        "submissions",
        md,
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
    if version >= 2:
        Table(
            "phase_messages",
            md,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column(
                "round_id", String(36), ForeignKey("rounds.round_id"), nullable=False, index=True
            ),
            Column("org_id", String(64), nullable=False),
            Column("phase", String(16), nullable=False),
            Column("body", LargeBinary, nullable=False),
            Column("certificate_pem", LargeBinary, nullable=False),
            UniqueConstraint(
                "round_id", "org_id", "phase", name="uq_phase_messages_round_org_phase"
            ),
        )
    if version >= 3:
        Table(
            "job_messages",
            md,
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
    Table(
        "model_versions",
        md,
        Column("job_id", String(36), ForeignKey("jobs.job_id"), primary_key=True),
        Column("version", Integer, primary_key=True),
        Column("blob_ref", String(64), nullable=False),
        Column("round_id", String(36)),
        Column("created_at", Float, nullable=False),
    )
    Table(
        "metrics",
        md,
        Column("job_id", String(36), ForeignKey("jobs.job_id"), primary_key=True),
        Column("version", Integer, primary_key=True),
        Column("org_id", String(64), primary_key=True),
        Column("num_examples", BigInteger, nullable=False),
        Column("loss", Float, nullable=False),
        Column("accuracy", Float, nullable=False),
        Column("created_at", Float, nullable=False),
    )
    if revocations:
        Table(
            "revoked_certificates",
            md,
            Column("serial_hex", String(64), primary_key=True),
            Column("reason", Text, nullable=False),
            Column("actor", String(64), nullable=False),
            Column("at", Float, nullable=False),
        )
    Table(
        "audit_log",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("at", Float, nullable=False),
        Column("actor", String(64), nullable=False),
        Column("action", String(64), nullable=False),
        Column("outcome", String(32), nullable=False),
        Column("detail", Text, nullable=False),
    )
    return md


# -- what a database of each version held ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Contents:
    """Everything one legacy database holds, as the domain objects the Store must read back."""

    participants: list[Participant]
    jobs: list[Job]
    rounds: list[Round]
    submissions: list[Submission]
    model_versions: list[ModelVersion]
    metrics: list[MetricReport]
    revoked: dict[str, tuple[str, str, float]]
    audit: list[tuple[float, str, str, str, str]]
    phase_messages: list[PhaseMessage]
    job_messages: list[JobMessage]


ROUND_TUPLES = ("cohort", "contributors")  # stored as JSON text
WEIGHT_SPECS = (TensorSpec("float32", (64, 10)), TensorSpec("float32", (10,)))


def contents(version: int, revocations: bool) -> Contents:
    training = TrainingSettings(local_epochs=2, batch_size=16, learning_rate=0.125, seed=42)
    plain = JobSpec(
        name="digits",
        task_name="digits-linear",
        protection=Protection.NONE,
        num_rounds=7,
        min_participants=2,
        round_timeout_seconds=123.5,
        max_failed_rounds=4,
        training=training,
        task_config_json='{"note": "\\u00e9"}',
    )
    secure = dataclasses.replace(plain, name="secure", protection=Protection.NONE)
    if version >= 2:
        # Version 2 stored the secure-aggregation settings; version 1 jobs read back the defaults.
        secure = dataclasses.replace(
            secure,
            protection=Protection.SECAGG,
            secagg=SecAggSettings(threshold=2, clip=0.5, levels_bits=11, max_weight=4096),
            phase_timeout_seconds=45.5,
        )
    jobs = [
        Job("job-1", plain, JobState.COMPLETED, 2, WEIGHT_SPECS, T0, 1, None),
        Job("job-2", secure, JobState.FAILED, 1, WEIGHT_SPECS, T0 + 1, 3, "three rounds failed"),
    ]
    if version >= 3:
        paillier = dataclasses.replace(
            plain, name="paillier", protection=Protection.PAILLIER, paillier_key_bits=3072
        )
        jobs.append(Job("job-3", paillier, JobState.RUNNING, 0, WEIGHT_SPECS, T0 + 2))
    rounds = [
        Round(
            "round-1",
            "job-1",
            1,
            Protection.NONE,
            Phase.COMMITTED,
            4,
            0,
            ("org-b", "org-a"),
            T0 + 300.25,
            T0 + 10,
            finished_at=T0 + 20.5,
            contributors=("org-b", "org-a"),
            total_weight=(1 << 33) + 7,
            train_loss_sum=1.25,
            result_ref="ab" * 32,
        ),
        Round(
            "round-2",
            "job-1",
            2,
            Protection.NONE,
            Phase.ABORTED,
            2,
            1,
            ("org-a", "org-b"),
            T0 + 600.5,
            T0 + 30,
            finished_at=T0 + 601,
            abort_reason="deadline passed with 1 of 2 inputs",
        ),
        Round(
            "round-3",
            "job-2",
            1,
            secure.protection,
            Phase.INPUTS,
            3,
            0,
            ("org-a", "org-b", "org-c"),
            T0 + 900.75,
            T0 + 40,
            accumulator_ref="cd" * 32,
        ),
    ]
    submissions = [
        Submission("round-1", "org-b", "inputs", bytes(range(32)), 1 << 33, 40, "ack-1", T0 + 11),
        Submission("round-1", "org-a", "inputs", bytes(32), 1200, (1 << 35) + 1, "ack-2", T0 + 12),
        Submission("round-3", "org-a", "inputs", b"\xff" * 32, 77, 5, "ack-3", T0 + 41),
    ]
    model_versions = [
        ModelVersion("job-1", 0, "01" * 32, None, T0),
        ModelVersion("job-1", 1, "02" * 32, "round-1", T0 + 21),
        ModelVersion("job-2", 0, "03" * 32, None, T0 + 1),
    ]
    metrics = [
        MetricReport("job-1", 1, "org-a", 600, 0.5, 0.875, T0 + 22),
        MetricReport("job-1", 1, "org-b", 601, 0.25, 0.9375, T0 + 23),
    ]
    revoked = {"0a1b2c": ("key lost", "admin", T0 + 50.5)} if revocations else {}
    audit = [
        (T0 + 5, "admin", "CreateJob", "ok", "job-1"),
        (T0 + 6, "org-x", "GetTask", "refused", "unknown organization"),
    ]
    phase_messages = []
    if version >= 2:
        phase_messages = [
            PhaseMessage("round-3", "org-a", "keys", b"\x00\x01keys-a", b"-----PEM a-----"),
            PhaseMessage("round-3", "org-b", "keys", b"keys-b\x00", b"-----PEM b-----"),
        ]
    job_messages = []
    if version >= 3:
        job_messages = [
            JobMessage("job-3", "org-a", "dealer_public_key", b"pk", b"PEM a", "ack-j1", T0 + 3),
        ]
    return Contents(
        participants=[
            Participant("org-a", ParticipantStatus.ACTIVE, T0, T0 + 99.5),
            Participant("org-b", ParticipantStatus.ACTIVE, T0 + 1, T0 + 98),
            Participant("org-c", ParticipantStatus.REVOKED, T0 + 2, T0 + 3),
        ],
        jobs=jobs,
        rounds=rounds,
        submissions=submissions,
        model_versions=model_versions,
        metrics=metrics,
        revoked=revoked,
        audit=audit,
        phase_messages=phase_messages,
        job_messages=job_messages,
    )


def spec_json(spec: JobSpec, version: int) -> str:
    """A job's spec as ``version`` serialized it."""
    data: dict[str, Any] = {
        "name": spec.name,
        "task_name": spec.task_name,
        "protection": spec.protection.value,
        "algorithm": spec.algorithm,
        "num_rounds": spec.num_rounds,
        "min_participants": spec.min_participants,
        "round_timeout_seconds": spec.round_timeout_seconds,
        "max_failed_rounds": spec.max_failed_rounds,
        "training": dataclasses.asdict(spec.training),
        "task_config_json": spec.task_config_json,
    }
    if version >= 2:
        data["secagg"] = dataclasses.asdict(spec.secagg)
        data["phase_timeout_seconds"] = spec.phase_timeout_seconds
    if version >= 3:
        data["paillier_key_bits"] = spec.paillier_key_bits
    return json.dumps(data, sort_keys=True)


def make_legacy_database(url: str, version: int, revocations: bool) -> Contents:
    """Create the tables of ``version`` at ``url``, record the version, and write its rows."""
    data = contents(version, revocations)
    md = legacy_metadata(version, revocations)
    tables = md.tables
    engine = create_engine(url)
    try:
        md.create_all(engine)
        with engine.begin() as conn:
            conn.execute(tables["schema_info"].insert().values(id=1, version=version))
            conn.execute(
                tables["participants"].insert(),
                [
                    {
                        "org_id": p.org_id,
                        "status": p.status.value,
                        "first_seen": p.first_seen,
                        "last_seen": p.last_seen,
                    }
                    for p in data.participants
                ],
            )
            conn.execute(
                tables["jobs"].insert(),
                [
                    {
                        "job_id": j.job_id,
                        "name": j.spec.name,
                        "spec_json": spec_json(j.spec, version),
                        "state": j.state.value,
                        "model_version": j.model_version,
                        "weight_specs_json": json.dumps(
                            [[s.dtype, list(s.shape)] for s in j.weight_specs]
                        ),
                        "created_at": j.created_at,
                        "failed_rounds": j.failed_rounds,
                        "failure_reason": j.failure_reason,
                        "row_version": 5,
                    }
                    for j in data.jobs
                ],
            )
            conn.execute(
                tables["rounds"].insert(),
                [
                    {k: v for k, v in dataclasses.asdict(r).items() if k not in ROUND_TUPLES}
                    | {
                        "protection": r.protection.value,
                        "phase": r.phase.value,
                        "cohort_json": json.dumps(list(r.cohort)),
                        "contributors_json": json.dumps(list(r.contributors)),
                    }
                    for r in data.rounds
                ],
            )
            # Autoincrement ids are left to the database, as the code did: a later insert must
            # not collide with them (PostgreSQL's sequences).
            conn.execute(
                tables["submissions"].insert(), [dataclasses.asdict(s) for s in data.submissions]
            )
            conn.execute(
                tables["model_versions"].insert(),
                [dataclasses.asdict(m) for m in data.model_versions],
            )
            conn.execute(tables["metrics"].insert(), [dataclasses.asdict(m) for m in data.metrics])
            if data.revoked:
                conn.execute(
                    tables["revoked_certificates"].insert(),
                    [
                        {"serial_hex": serial, "reason": reason, "actor": actor, "at": at}
                        for serial, (reason, actor, at) in data.revoked.items()
                    ],
                )
            conn.execute(
                tables["audit_log"].insert(),
                [
                    dict(zip(("at", "actor", "action", "outcome", "detail"), row, strict=True))
                    for row in data.audit
                ],
            )
            if data.phase_messages:
                conn.execute(
                    tables["phase_messages"].insert(),
                    [dataclasses.asdict(m) for m in data.phase_messages],
                )
            if data.job_messages:
                conn.execute(
                    tables["job_messages"].insert(),
                    [dataclasses.asdict(m) for m in data.job_messages],
                )
    finally:
        engine.dispose()
    return data


# -- checks ---------------------------------------------------------------------------------------


def schema_differences(url: str) -> list[Any]:
    """What Alembic's autogenerate would change to make the database match schema.py."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))
    finally:
        engine.dispose()


def scalar(url: str, sql: str) -> Any:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def assert_store_holds(store: Store, data: Contents) -> None:
    with store.transaction() as tx:
        assert tx.list_participants() == data.participants
        assert tx.list_jobs() == data.jobs
        for job in data.jobs:
            assert tx.list_rounds(job.job_id) == [r for r in data.rounds if r.job_id == job.job_id]
            assert tx.list_metrics(job.job_id) == [
                m for m in data.metrics if m.job_id == job.job_id
            ]
            assert tx.list_job_messages(job.job_id) == [
                m for m in data.job_messages if m.job_id == job.job_id
            ]
        for round_ in data.rounds:
            rid = round_.round_id
            assert tx.list_submissions(rid) == [s for s in data.submissions if s.round_id == rid]
            assert tx.list_phase_messages(rid) == [
                m for m in data.phase_messages if m.round_id == rid
            ]
        for mv in data.model_versions:
            assert tx.get_model_version(mv.job_id, mv.version) == mv
        assert tx.revoked_serials() == set(data.revoked)
        audit = [
            (r["at"], r["actor"], r["action"], r["outcome"], r["detail"]) for r in tx.list_audit()
        ]
        assert audit == list(reversed(data.audit))


def assert_store_works(store: Store) -> None:
    """New rows of every kind go in beside the old ones, and the constraints still hold."""
    job = Job("job-new", JobSpec(name="n", task_name="t"), JobState.RUNNING, 0, WEIGHT_SPECS, T0)
    new_round = Round(
        "round-new", "job-new", 1, Protection.SECAGG, Phase.KEYS, 0, 0, ("org-a",), T0 + 9, T0 + 1
    )
    submission = Submission("round-new", "org-a", "inputs", bytes(32), 10, 3, "ack-new", T0 + 2)
    message = PhaseMessage("round-new", "org-a", "keys", b"k", b"pem")
    job_message = JobMessage("job-new", "org-a", "kind", b"b", b"pem", "ack-jnew", T0 + 3)
    with store.transaction() as tx:
        tx.add_participant(Participant("org-new", ParticipantStatus.PENDING, T0, T0))
        tx.add_job(job)
        tx.add_round(new_round)
        tx.add_submission(submission)
        tx.add_phase_message(message)
        tx.add_job_message(job_message)
        tx.add_model_version(ModelVersion("job-new", 0, "ee" * 32, None, T0))
        tx.add_metric(MetricReport("job-new", 0, "org-a", 1, 0.5, 0.5, T0))
        tx.add_revoked_certificate("ffee", "test", "admin", T0)
        tx.add_audit(T0 + 99, "admin", "StartJob", "ok", "job-new")
        tx.update_job(dataclasses.replace(job, model_version=1))
    with store.transaction() as tx:
        assert tx.get_job("job-new") == dataclasses.replace(job, model_version=1)
        assert tx.list_rounds("job-new") == [new_round]
        assert tx.list_submissions("round-new") == [submission]
        assert tx.list_phase_messages("round-new") == [message]
        assert tx.list_job_messages("job-new") == [job_message]
        assert "ffee" in tx.revoked_serials()
        assert tx.list_audit(limit=1)[0]["action"] == "StartJob"
    with pytest.raises(DuplicateKey), store.transaction() as tx:
        tx.add_submission(dataclasses.replace(submission, org_id="org-b"))  # same acknowledgement


# -- tests ----------------------------------------------------------------------------------------


def test_head_follows_the_last_schema_version() -> None:
    assert migrate.head_revision() == HEAD
    assert migrate.LEGACY_REVISIONS[3] == "0003"


@pytest.mark.parametrize(("version", "revocations"), LEGACY)
def test_database_of_each_earlier_version_is_upgraded_with_every_row(
    url: str, version: int, revocations: bool
) -> None:
    data = make_legacy_database(url, version, revocations)
    assert migrate.current_revision(url) == migrate.LEGACY_REVISIONS[version]
    # Every version from before Alembic is older than HEAD: serving refuses it, names both
    # revisions and the command, and changes nothing.
    older = rf"schema version {version} \(revision 000{version}\) is older than .* {HEAD}"
    with pytest.raises(SchemaMismatch, match=older):
        migrate.check_schema(url)
    with pytest.raises(SchemaMismatch, match="run `fedsilo coordinator migrate"):
        Store(url)
    assert "alembic_version" not in table_names(url)
    assert scalar(url, "SELECT version FROM schema_info") == version
    before = migrate.upgrade(url)
    assert (before.revision, before.legacy_version) == (f"000{version}", version)
    store = Store(url)
    try:
        assert migrate.current_revision(url) == HEAD
        assert scalar(url, "SELECT version FROM schema_info") == HEAD_SCHEMA_INFO
        assert schema_differences(url) == []
        assert_store_holds(store, data)
        assert_store_works(store)
    finally:
        store.close()
    assert migrate.upgrade(url).is_current  # a second run has nothing to do


def test_empty_database_is_created_at_head_and_matches_the_schema(url: str) -> None:
    assert migrate.current_revision(url) is None
    assert migrate.check_schema(url).is_empty
    Store(url).close()
    assert migrate.current_revision(url) == HEAD
    assert scalar(url, "SELECT version FROM schema_info") == HEAD_SCHEMA_INFO
    assert schema_differences(url) == []
    assert table_names(url) == set(metadata.tables) | {"alembic_version"}


def test_revisions_build_the_same_sqlite_tables_as_the_schema() -> None:
    """Text for text: SQLite stores the same DDL for every table and index as create_all's."""

    def stored_ddl(store: Store) -> dict[str, str | None]:
        with store.engine.connect() as conn:
            rows = conn.execute(text("SELECT name, sql FROM sqlite_master"))
            return {name: sql for name, sql in rows if "alembic_version" not in name}

    migrated = Store("sqlite://")
    built = Store("sqlite://")
    with built.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(text(f"DROP TABLE {table.name}"))
        metadata.create_all(conn)
    try:
        assert stored_ddl(migrated) == stored_ddl(built)
        assert len(stored_ddl(built)) > len(metadata.tables)  # the indexes are compared too
    finally:
        migrated.close()
        built.close()


def test_downgrade_to_version_1_and_back(url: str) -> None:
    Store(url).close()
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS_DIR))
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0001")
    finally:
        engine.dispose()
    tables = set(legacy_metadata(1, revocations=True).tables) | {"alembic_version"}
    assert table_names(url) == tables
    assert scalar(url, "SELECT version FROM schema_info") == 1
    with pytest.raises(SchemaMismatch, match=rf"revision 0001 is older than this fedsilo's {HEAD}"):
        Store(url)
    assert migrate.upgrade(url).revision == "0001"
    assert schema_differences(url) == []


def test_newer_database_is_refused_and_left_untouched(url: str) -> None:
    Store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0042'"))
    engine.dispose()
    newer = f"database schema revision 0042 is newer than this fedsilo, whose newest is {HEAD}"
    for attempt in (Store, migrate.upgrade, migrate.check_schema, migrate.current_revision):
        with pytest.raises(SchemaMismatch, match=newer) as refused:
            attempt(url)
        assert "\n" not in str(refused.value)
    assert scalar(url, "SELECT version_num FROM alembic_version") == "0042"


def test_unknown_version_from_before_alembic_is_refused(url: str) -> None:
    make_legacy_database(url, 3, revocations=True)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE schema_info SET version = 999"))
    engine.dispose()
    with pytest.raises(SchemaMismatch, match="database schema version 999 is not known"):
        Store(url)
    assert "alembic_version" not in table_names(url)


# -- fedsilo coordinator migrate -------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "coordinator.yaml"
    # The configuration is checked as serve checks it: TLS files, or insecure on loopback.
    config = {"data_dir": str(tmp_path / "data"), "tls": {"insecure": True}}
    path.write_text(yaml.safe_dump(config))
    return path


def test_migrate_command_upgrades_the_configured_database(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    url = f"sqlite:///{tmp_path / 'data' / 'coordinator.db'}"
    data = make_legacy_database(url, 1, revocations=False)
    assert main(["coordinator", "migrate", "--config", str(config_file)]) == 0
    assert capsys.readouterr().out == (
        f"database schema: schema version 1 (revision 0001) upgraded to revision {HEAD}\n"
    )
    store = Store(url)
    try:
        assert_store_holds(store, data)
    finally:
        store.close()
    assert main(["coordinator", "migrate", "--config", str(config_file)]) == 0
    assert capsys.readouterr().out == f"database schema already at revision {HEAD}\n"


def test_migrate_command_creates_an_empty_database_where_serve_would(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["coordinator", "migrate", "--config", str(config_file)]) == 0
    assert capsys.readouterr().out == f"database schema: empty upgraded to revision {HEAD}\n"
    assert migrate.current_revision(f"sqlite:///{tmp_path / 'data' / 'coordinator.db'}") == HEAD


def test_migrate_command_refuses_a_newer_database_by_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    Store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0042'"))
    engine.dispose()
    assert main(["coordinator", "migrate", "--database-url", url]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"error: database schema revision 0042 is newer than this fedsilo, whose newest is "
        f"{HEAD}: run the fedsilo release that migrated it, or restore a backup\n"
    )
    assert scalar(url, "SELECT version_num FROM alembic_version") == "0042"
