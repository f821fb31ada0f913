"""Repositories over SQLAlchemy: one ``Store`` per database, one transaction per use case.

``sqlite://`` (in memory), a SQLite file and PostgreSQL all run the same code and pass the same
contract tests (tests/unit/coordinator/persistence); ``migrate.py`` checks (and for an empty
database creates) the schema when a ``Store`` opens. Rounds and jobs are updated with a
compare-and-set on their ``row_version`` so a stale writer can never half-apply a transition.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, exists, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

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
from coordinator.errors import ConcurrentUpdate, CoordinatorError, StorageUnavailable
from coordinator.persistence import migrate
from coordinator.persistence import schema as t
from coordinator.persistence.engine import failure_reason, make_engine
from fedsilo.codec import TensorSpec
from fedsilo.privacy import DifferentialPrivacy
from fedsilo.protection import Protection
from fedsilo.strategies import StrategyParameters
from fedsilo.tasks import TrainingSettings

__all__ = ["DuplicateKey", "StaleWrite", "Store", "Transaction"]


class DuplicateKey(CoordinatorError):
    """A unique constraint refused the row (a concurrent or repeated insert)."""


class StaleWrite(ConcurrentUpdate):
    """A compare-and-set update found another row_version: someone else changed the row."""


class Store:
    """A database holding the coordinator's state."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = make_engine(url)
        try:
            with self._engine.begin() as conn:
                # An empty database is created at the newest revision; any other must already be
                # there (fedsilo coordinator migrate), so serving never changes a schema unasked.
                migrate.ensure_current(conn)
        except DBAPIError as exc:
            self._engine.dispose()
            raise StorageUnavailable(f"cannot open the database: {failure_reason(exc)}") from exc
        except StorageUnavailable:
            self._engine.dispose()
            raise

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One database transaction; committed on success, rolled back on any error."""
        try:
            with self._engine.begin() as conn:
                yield Transaction(conn)
        except IntegrityError as exc:
            raise DuplicateKey("a unique constraint refused the change") from exc
        except DBAPIError as exc:
            raise StorageUnavailable(f"database unavailable: {failure_reason(exc)}") from exc


# The queries every round step runs (each submission, long poll and driver tick), built once:
# a statement object built per call costs SQLAlchemy several times the query itself (its cache
# key is computed again for every new object), and a secure round runs hundreds of them.
_p, _j, _r = t.participants.c, t.jobs.c, t.rounds.c
_GET_PARTICIPANT = select(t.participants).where(_p.org_id == bindparam("org_id"))
_TOUCH_PARTICIPANT = update(t.participants).where(_p.org_id == bindparam("b_org_id"))
_LIST_PARTICIPANTS = select(t.participants).order_by(_p.org_id)
_GET_JOB = select(t.jobs).where(_j.job_id == bindparam("job_id"))
_LIST_JOBS = select(t.jobs).order_by(_j.created_at, _j.job_id)
_LIST_JOBS_IN = _LIST_JOBS.where(_j.state.in_(bindparam("states", expanding=True)))
_GET_ROUND = select(t.rounds).where(_r.round_id == bindparam("round_id"))
_OPEN_ROUNDS = (
    select(t.rounds)
    .where(_r.phase.not_in([Phase.COMMITTED.value, Phase.ABORTED.value]))
    .order_by(_r.created_at)
)
_UPDATE_ROUND = update(t.rounds).where(
    _r.round_id == bindparam("b_round_id"), _r.row_version == bindparam("b_row_version")
)
_GET_SUBMISSION = select(t.submissions).where(
    t.submissions.c.round_id == bindparam("round_id"),
    t.submissions.c.org_id == bindparam("org_id"),
    t.submissions.c.phase == bindparam("phase"),
)
_INSERT_SUBMISSION = insert(t.submissions)
_INSERT_PHASE_MESSAGE = insert(t.phase_messages)
_ROUND_MESSAGES = (
    select(t.phase_messages)
    .where(t.phase_messages.c.round_id == bindparam("round_id"))
    .order_by(t.phase_messages.c.id)
)
_PHASE_MESSAGES = _ROUND_MESSAGES.where(t.phase_messages.c.phase == bindparam("phase"))
_GET_MODEL_VERSION = select(t.model_versions).where(
    t.model_versions.c.job_id == bindparam("job_id"),
    t.model_versions.c.version == bindparam("version"),
)
_JOBS_AWAITING_METRIC = (
    select(t.jobs)
    .where(
        _j.state.in_(bindparam("states", expanding=True)),
        _j.model_version >= 1,
        ~exists().where(
            t.metrics.c.job_id == _j.job_id,
            t.metrics.c.version == _j.model_version,
            t.metrics.c.org_id == bindparam("org_id"),
        ),
    )
    .order_by(_j.created_at, _j.job_id)
)
_GET_METRIC = select(t.metrics).where(
    t.metrics.c.job_id == bindparam("job_id"),
    t.metrics.c.version == bindparam("version"),
    t.metrics.c.org_id == bindparam("org_id"),
)


class Transaction:
    """Repository operations inside one open transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.superseded_blobs: list[str] = []

    def supersede_blob(self, ref: str | None) -> None:
        """Note a blob this transaction stops pointing at. The caller discards it once the
        transaction has committed (``RoundLedger.discard_blob``); a rollback keeps it in use."""
        if ref is not None:
            self.superseded_blobs.append(ref)

    # -- participants ------------------------------------------------------------------------

    def get_participant(self, org_id: str) -> Participant | None:
        row = self._conn.execute(_GET_PARTICIPANT, {"org_id": org_id}).first()
        return None if row is None else _participant(row)

    def add_participant(self, participant: Participant) -> None:
        self._conn.execute(
            insert(t.participants).values(
                org_id=participant.org_id,
                status=participant.status.value,
                first_seen=participant.first_seen,
                last_seen=participant.last_seen,
                certificate_sha256=participant.certificate_sha256 or None,
            )
        )

    def touch_participant(self, org_id: str, now: float, certificate_sha256: str = "") -> None:
        """Record a call: its time and, when given, the fingerprint of the caller's certificate."""
        values: dict[str, Any] = {"b_org_id": org_id, "last_seen": now}
        if certificate_sha256:
            values["certificate_sha256"] = certificate_sha256
        self._conn.execute(_TOUCH_PARTICIPANT, values)

    def set_participant_status(self, org_id: str, status: ParticipantStatus) -> None:
        self._conn.execute(
            update(t.participants)
            .where(t.participants.c.org_id == org_id)
            .values(status=status.value)
        )

    def list_participants(self) -> list[Participant]:
        return [_participant(r) for r in self._conn.execute(_LIST_PARTICIPANTS)]

    # -- jobs --------------------------------------------------------------------------------

    def add_job(self, job: Job) -> None:
        self._conn.execute(insert(t.jobs).values(**_job_values(job), row_version=0))

    def get_job(self, job_id: str) -> Job | None:
        row = self._conn.execute(_GET_JOB, {"job_id": job_id}).first()
        return None if row is None else _job(row)

    def list_jobs(self, states: tuple[JobState, ...] | None = None) -> list[Job]:
        if states is None:
            rows = self._conn.execute(_LIST_JOBS)
        else:
            rows = self._conn.execute(_LIST_JOBS_IN, {"states": [s.value for s in states]})
        return [_job(r) for r in rows]

    def jobs_awaiting_metric(self, org_id: str, states: tuple[JobState, ...]) -> list[Job]:
        """Jobs in ``states`` with a model version after version 0 whose latest version
        ``org_id`` has reported no evaluation of, oldest first (one query, however many jobs
        the coordinator has run)."""
        rows = self._conn.execute(
            _JOBS_AWAITING_METRIC, {"states": [s.value for s in states], "org_id": org_id}
        )
        return [_job(r) for r in rows]

    def update_job(self, job: Job) -> None:
        """Write the job's mutable fields (state, version, weight layout, failures); the layout
        changes once, when a job whose version 0 is built from its seed gets it."""
        values = _job_values(job)
        result = self._conn.execute(
            update(t.jobs)
            .where(t.jobs.c.job_id == job.job_id)
            .values(
                state=values["state"],
                model_version=values["model_version"],
                weight_specs_json=values["weight_specs_json"],
                failed_rounds=values["failed_rounds"],
                failure_reason=values["failure_reason"],
                row_version=t.jobs.c.row_version + 1,
            )
        )
        if result.rowcount != 1:
            raise StaleWrite(f"job {job.job_id} vanished")

    def delete_job(self, job_id: str) -> set[str]:
        """Mark a job DELETED and drop what it stored: model versions, metrics and messages.

        Its rounds and submissions stay as bookkeeping (ids, phases, sizes, hashes; their blob
        references cleared), so counts of past rounds and submissions never go down. Returns the
        blob references the job held; the caller deletes each blob no other row still references
        (blobs are content-addressed and may be shared). The audit log is not touched.
        """
        r, m = t.rounds.c, t.model_versions.c
        refs: set[str] = set()
        for row in self._conn.execute(
            select(r.accumulator_ref, r.result_ref).where(r.job_id == job_id)
        ):
            refs.update(ref for ref in row if ref is not None)
        for row in self._conn.execute(
            select(m.blob_ref, m.optimizer_state_ref).where(m.job_id == job_id)
        ):
            refs.update(ref for ref in row if ref is not None)
        round_ids = select(r.round_id).where(r.job_id == job_id)
        self._conn.execute(
            delete(t.phase_messages).where(t.phase_messages.c.round_id.in_(round_ids))
        )
        for table in (t.job_messages, t.metrics, t.model_versions):
            self._conn.execute(delete(table).where(table.c.job_id == job_id))
        self._conn.execute(
            update(t.rounds)
            .where(r.job_id == job_id)
            .values(accumulator_ref=None, result_ref=None, row_version=r.row_version + 1)
        )
        result = self._conn.execute(
            update(t.jobs)
            .where(t.jobs.c.job_id == job_id, t.jobs.c.state != JobState.DELETED.value)
            .values(state=JobState.DELETED.value, row_version=t.jobs.c.row_version + 1)
        )
        if result.rowcount != 1:
            raise StaleWrite(f"job {job_id} vanished")
        return refs

    # -- rounds ------------------------------------------------------------------------------

    def add_round(self, round_: Round) -> None:
        self._conn.execute(insert(t.rounds).values(**_round_values(round_)))

    def get_round(self, round_id: str) -> Round | None:
        row = self._conn.execute(_GET_ROUND, {"round_id": round_id}).first()
        return None if row is None else _round(row)

    def list_rounds(self, job_id: str) -> list[Round]:
        rows = self._conn.execute(
            select(t.rounds).where(t.rounds.c.job_id == job_id).order_by(t.rounds.c.number)
        )
        return [_round(r) for r in rows]

    def open_rounds(self) -> list[Round]:
        """Rounds of any job that are not yet committed or aborted."""
        return [_round(r) for r in self._conn.execute(_OPEN_ROUNDS)]

    def update_round(self, round_: Round, expected_row_version: int) -> None:
        """Compare-and-set: write only if the stored row_version is still the expected one."""
        values = _round_values(round_)
        del values["round_id"]
        values.update(b_round_id=round_.round_id, b_row_version=expected_row_version)
        result = self._conn.execute(_UPDATE_ROUND, values)
        if result.rowcount != 1:
            raise StaleWrite(f"round {round_.round_id} changed concurrently")

    # -- submissions -------------------------------------------------------------------------

    def get_submission(self, round_id: str, org_id: str, phase: str) -> Submission | None:
        row = self._conn.execute(
            _GET_SUBMISSION, {"round_id": round_id, "org_id": org_id, "phase": phase}
        ).first()
        return None if row is None else _submission(row)

    def add_submission(self, sub: Submission) -> None:
        self._conn.execute(
            _INSERT_SUBMISSION,
            {
                "round_id": sub.round_id,
                "org_id": sub.org_id,
                "phase": sub.phase,
                "content_sha256": sub.content_sha256,
                "size_bytes": sub.size_bytes,
                "num_examples": sub.num_examples,
                "acknowledgement_id": sub.acknowledgement_id,
                "created_at": sub.created_at,
            },
        )

    def list_submissions(self, round_id: str) -> list[Submission]:
        rows = self._conn.execute(
            select(t.submissions)
            .where(t.submissions.c.round_id == round_id)
            .order_by(t.submissions.c.id)
        )
        return [_submission(r) for r in rows]

    # -- secure-aggregation phase messages ---------------------------------------------------

    def add_phase_message(self, message: PhaseMessage) -> None:
        self._conn.execute(
            _INSERT_PHASE_MESSAGE,
            {
                "round_id": message.round_id,
                "org_id": message.org_id,
                "phase": message.phase,
                "body": message.body,
                "certificate_pem": message.certificate_pem,
            },
        )

    def delete_phase_messages(self, round_id: str, phase: str) -> None:
        """Forget a phase's accepted messages (a paillier round's consistency signatures on a
        survivor set that changed when a malformed input was excluded)."""
        c = t.phase_messages.c
        self._conn.execute(delete(t.phase_messages).where(c.round_id == round_id, c.phase == phase))

    def list_phase_messages(self, round_id: str, phase: str | None = None) -> list[PhaseMessage]:
        """The accepted messages of a round (of one phase), in the order they were accepted."""
        if phase is None:
            rows = self._conn.execute(_ROUND_MESSAGES, {"round_id": round_id})
        else:
            rows = self._conn.execute(_PHASE_MESSAGES, {"round_id": round_id, "phase": phase})
        return [
            PhaseMessage(r.round_id, r.org_id, r.phase, bytes(r.body), bytes(r.certificate_pem))
            for r in rows
        ]

    # -- job-level messages (the paillier key ceremony) ----------------------------------------

    def add_job_message(self, message: JobMessage) -> None:
        self._conn.execute(
            insert(t.job_messages).values(
                job_id=message.job_id,
                org_id=message.org_id,
                kind=message.kind,
                body=message.body,
                certificate_pem=message.certificate_pem,
                acknowledgement_id=message.acknowledgement_id,
                created_at=message.created_at,
            )
        )

    def list_job_messages(self, job_id: str) -> list[JobMessage]:
        """Every accepted ceremony message of a job, in the order they were accepted."""
        c = t.job_messages.c
        rows = self._conn.execute(select(t.job_messages).where(c.job_id == job_id).order_by(c.id))
        return [
            JobMessage(
                r.job_id,
                r.org_id,
                r.kind,
                bytes(r.body),
                bytes(r.certificate_pem),
                r.acknowledgement_id,
                r.created_at,
            )
            for r in rows
        ]

    # -- model versions ----------------------------------------------------------------------

    def add_model_version(self, mv: ModelVersion) -> None:
        self._conn.execute(
            insert(t.model_versions).values(
                job_id=mv.job_id,
                version=mv.version,
                blob_ref=mv.blob_ref,
                round_id=mv.round_id,
                created_at=mv.created_at,
                optimizer_state_ref=mv.optimizer_state_ref,
            )
        )

    def get_model_version(self, job_id: str, version: int) -> ModelVersion | None:
        row = self._conn.execute(_GET_MODEL_VERSION, {"job_id": job_id, "version": version}).first()
        return (
            None
            if row is None
            else ModelVersion(
                row.job_id,
                row.version,
                row.blob_ref,
                row.round_id,
                row.created_at,
                row.optimizer_state_ref,
            )
        )

    # -- metrics -----------------------------------------------------------------------------

    def add_metric(self, report: MetricReport) -> None:
        self._conn.execute(
            insert(t.metrics).values(
                job_id=report.job_id,
                version=report.version,
                org_id=report.org_id,
                num_examples=report.num_examples,
                loss=report.loss,
                accuracy=report.accuracy,
                created_at=report.created_at,
            )
        )

    def get_metric(self, job_id: str, version: int, org_id: str) -> MetricReport | None:
        row = self._conn.execute(
            _GET_METRIC, {"job_id": job_id, "version": version, "org_id": org_id}
        ).first()
        return None if row is None else _metric(row)

    def list_metrics(self, job_id: str) -> list[MetricReport]:
        c = t.metrics.c
        rows = self._conn.execute(
            select(t.metrics).where(c.job_id == job_id).order_by(c.version, c.org_id)
        )
        return [_metric(r) for r in rows]

    def blob_in_use(self, ref: str) -> bool:
        """Whether any round or model version still references the blob."""
        r, m = t.rounds.c, t.model_versions.c
        in_rounds = select(r.round_id).where((r.accumulator_ref == ref) | (r.result_ref == ref))
        in_models = select(m.version).where((m.blob_ref == ref) | (m.optimizer_state_ref == ref))
        return (
            self._conn.execute(in_rounds.limit(1)).first() is not None
            or self._conn.execute(in_models.limit(1)).first() is not None
        )

    # -- certificate revocation --------------------------------------------------------------

    def add_revoked_certificate(self, serial_hex: str, reason: str, actor: str, at: float) -> None:
        self._conn.execute(
            insert(t.revoked_certificates).values(
                serial_hex=serial_hex, reason=reason, actor=actor, at=at
            )
        )

    def revoked_serials(self) -> set[str]:
        return set(self._conn.execute(select(t.revoked_certificates.c.serial_hex)).scalars())

    # -- membership lists ----------------------------------------------------------------------

    def add_membership_list(self, serial: int, document: bytes, actor: str, at: float) -> None:
        self._conn.execute(
            insert(t.membership_lists).values(serial=serial, document=document, actor=actor, at=at)
        )

    def latest_membership_list(self) -> tuple[int, bytes] | None:
        """The published list with the highest serial, as (serial, document); None if none."""
        row = self._conn.execute(
            select(t.membership_lists.c.serial, t.membership_lists.c.document)
            .order_by(t.membership_lists.c.serial.desc())
            .limit(1)
        ).first()
        return None if row is None else (int(row.serial), bytes(row.document))

    # -- audit -------------------------------------------------------------------------------

    def add_audit(self, at: float, actor: str, action: str, outcome: str, detail: str) -> None:
        self._conn.execute(
            insert(t.audit_log).values(
                at=at, actor=actor, action=action, outcome=outcome, detail=detail
            )
        )

    def list_audit(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            select(t.audit_log).order_by(t.audit_log.c.id.desc()).limit(limit)
        )
        return [dict(r._mapping) for r in rows]


# -- row mapping -----------------------------------------------------------------------------


def _participant(row: Any) -> Participant:
    return Participant(
        row.org_id,
        ParticipantStatus(row.status),
        row.first_seen,
        row.last_seen,
        row.certificate_sha256 or "",
    )


def _spec_to_json(spec: JobSpec) -> str:
    return json.dumps(
        {
            "name": spec.name,
            "task_name": spec.task_name,
            "protection": spec.protection.value,
            "algorithm": spec.algorithm,
            "num_rounds": spec.num_rounds,
            "min_participants": spec.min_participants,
            "round_timeout_seconds": spec.round_timeout_seconds,
            "max_failed_rounds": spec.max_failed_rounds,
            "training": {
                "local_epochs": spec.training.local_epochs,
                "batch_size": spec.training.batch_size,
                "learning_rate": spec.training.learning_rate,
                "seed": spec.training.seed,
            },
            "task_config_json": spec.task_config_json,
            "secagg": dataclasses.asdict(spec.secagg),
            "phase_timeout_seconds": spec.phase_timeout_seconds,
            "paillier_key_bits": spec.paillier_key_bits,
            "strategy": spec.strategy.to_json(),
            "dp": spec.dp.to_json(),
            "initial_weights_from_seed": spec.initial_weights_from_seed,
        },
        sort_keys=True,
    )


def _spec_from_json(text: str) -> JobSpec:
    data = json.loads(text)
    return JobSpec(
        name=data["name"],
        task_name=data["task_name"],
        protection=Protection(data["protection"]),
        algorithm=data["algorithm"],
        num_rounds=data["num_rounds"],
        min_participants=data["min_participants"],
        round_timeout_seconds=data["round_timeout_seconds"],
        max_failed_rounds=data["max_failed_rounds"],
        training=TrainingSettings(**data["training"]),
        task_config_json=data["task_config_json"],
        # Jobs stored before secure aggregation existed carry neither field: the defaults.
        secagg=SecAggSettings(**data.get("secagg", {})),
        phase_timeout_seconds=data.get("phase_timeout_seconds", 60.0),
        paillier_key_bits=data.get("paillier_key_bits", 2048),
        # Jobs stored before strategies had parameters: the strategy's defaults.
        strategy=StrategyParameters.from_json(data.get("strategy")),
        # Jobs stored before differential privacy existed have none.
        dp=DifferentialPrivacy.from_json(data.get("dp")),
        # Jobs stored before participants built version 0 came with it.
        initial_weights_from_seed=bool(data.get("initial_weights_from_seed", False)),
    )


def _job_values(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "name": job.spec.name,
        "spec_json": _spec_to_json(job.spec),
        "state": job.state.value,
        "model_version": job.model_version,
        "weight_specs_json": json.dumps([[s.dtype, list(s.shape)] for s in job.weight_specs]),
        "created_at": job.created_at,
        "failed_rounds": job.failed_rounds,
        "failure_reason": job.failure_reason,
    }


def _job(row: Any) -> Job:
    specs = tuple(TensorSpec(d, tuple(shape)) for d, shape in json.loads(row.weight_specs_json))
    return Job(
        job_id=row.job_id,
        spec=_spec_from_json(row.spec_json),
        state=JobState(row.state),
        model_version=row.model_version,
        weight_specs=specs,
        created_at=row.created_at,
        failed_rounds=row.failed_rounds,
        failure_reason=row.failure_reason,
    )


def _round_values(r: Round) -> dict[str, Any]:
    return {
        "round_id": r.round_id,
        "job_id": r.job_id,
        "number": r.number,
        "protection": r.protection.value,
        "phase": r.phase.value,
        "row_version": r.row_version,
        "base_version": r.base_version,
        "cohort_json": json.dumps(list(r.cohort)),
        "deadline_at": r.deadline_at,
        "created_at": r.created_at,
        "finished_at": r.finished_at,
        "contributors_json": json.dumps(list(r.contributors)),
        "total_weight": r.total_weight,
        "train_loss_sum": r.train_loss_sum,
        "accumulator_ref": r.accumulator_ref,
        "result_ref": r.result_ref,
        "abort_reason": r.abort_reason,
    }


def _round(row: Any) -> Round:
    return Round(
        round_id=row.round_id,
        job_id=row.job_id,
        number=row.number,
        protection=Protection(row.protection),
        phase=Phase(row.phase),
        row_version=row.row_version,
        base_version=row.base_version,
        cohort=tuple(json.loads(row.cohort_json)),
        deadline_at=row.deadline_at,
        created_at=row.created_at,
        finished_at=row.finished_at,
        contributors=tuple(json.loads(row.contributors_json)),
        total_weight=row.total_weight,
        train_loss_sum=row.train_loss_sum,
        accumulator_ref=row.accumulator_ref,
        result_ref=row.result_ref,
        abort_reason=row.abort_reason,
    )


def _submission(row: Any) -> Submission:
    return Submission(
        round_id=row.round_id,
        org_id=row.org_id,
        phase=row.phase,
        content_sha256=bytes(row.content_sha256),
        size_bytes=row.size_bytes,
        num_examples=row.num_examples,
        acknowledgement_id=row.acknowledgement_id,
        created_at=row.created_at,
    )


def _metric(row: Any) -> MetricReport:
    return MetricReport(
        row.job_id,
        row.version,
        row.org_id,
        row.num_examples,
        row.loss,
        row.accuracy,
        row.created_at,
    )
