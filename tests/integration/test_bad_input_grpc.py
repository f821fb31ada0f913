"""Bad input over real gRPC with mutual TLS: a clear status code and no state change.

docs/fault-matrix.md R7-R10 (duplicates, conflicts, late and out-of-order submissions),
S1-S3 (identity from the certificate only, roles), S6 (oversized messages), S7 (garbage
bytes on every RPC) and S8 (wrong tensors, NaN/Inf, bad headers). Raw stubs and raw
channels are used so that the test controls every byte the coordinator receives.

Longer than 600 lines on purpose: one table of malformed requests per RPC, all against one
in-process coordinator, so that a new RPC gets its bad-input rows in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from inproc_consortium import (
    ORGS,
    RPC_TIMEOUT_S,
    WAIT_S,
    ConsortiumPki,
    initial_weights,
    open_round,
    rpc_error,
    shift_job_spec,
    wait_for_job,
)
from integration_shift_task import ORG_SETTINGS, expected_fedavg

from coordinator.transport.server import RunningCoordinator
from fedsilo import chunking
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.codec import encode_tensors, header_to_proto
from fedsilo.tls import TlsFiles
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc
from fedsilo.wire import refused_as_busy

ORG_A, ORG_B, ORG_C = ORGS
GARBAGE = b"\xff\x00garbage"
OVERSIZED = chunking.MAX_MESSAGE_BYTES + (1 << 20)

Weights = list[npt.NDArray[Any]]
StartRound = Callable[..., tuple[str, pb.RoundStatus]]
StubFor = Callable[[str], pb_grpc.ParticipantServiceStub]


# -- building and sending updates ------------------------------------------------------------------


@dataclass(frozen=True)
class Update:
    """Everything one SubmitUpdate stream says; ``requests()`` turns it into wire messages."""

    job_id: str
    round_id: str
    base_version: int
    weights: Weights
    num_examples: int
    train_loss: float = 0.5
    phase: int = pb.ROUND_PHASE_INPUTS

    def header(self) -> pb.UpdateHeader:
        payload_header, _ = encode_tensors(self.weights)
        return pb.UpdateHeader(
            job_id=self.job_id,
            round_id=self.round_id,
            phase=self.phase,
            base_version=self.base_version,
            num_examples=self.num_examples,
            train_loss=self.train_loss,
            payload=header_to_proto(payload_header),
        )

    def payload(self) -> bytes:
        return encode_tensors(self.weights)[1]

    def requests(self) -> list[pb.SubmitUpdateRequest]:
        return with_header(self.header(), self.payload())


def with_header(header: pb.UpdateHeader, payload: bytes) -> list[pb.SubmitUpdateRequest]:
    return [
        pb.SubmitUpdateRequest(header=header),
        *(pb.SubmitUpdateRequest(data=piece) for piece in chunking.split(payload)),
    ]


def shifted(weights: Weights, org: str, extra: float = 0.0) -> Weights:
    """What org's daemon would send (its offset added), optionally changed by ``extra``."""
    offset = np.float32(ORG_SETTINGS[org]["offset"]) + np.float32(extra)
    return [np.asarray(w, dtype=np.float32) + offset for w in weights]


def update_for(
    org: str, job_id: str, round_: pb.RoundStatus, base: Weights | None = None, extra: float = 0.0
) -> Update:
    return Update(
        job_id=job_id,
        round_id=round_.round_id,
        base_version=round_.base_version,
        weights=shifted(initial_weights() if base is None else base, org, extra),
        num_examples=int(ORG_SETTINGS[org]["examples"]),
    )


def submit(stub: pb_grpc.ParticipantServiceStub, requests: list[Any]) -> pb.SubmitUpdateResponse:
    return stub.SubmitUpdate(iter(requests), timeout=RPC_TIMEOUT_S)


def contributions(*orgs: str) -> list[tuple[float, int]]:
    return [(float(ORG_SETTINGS[o]["offset"]), int(ORG_SETTINGS[o]["examples"])) for o in orgs]


def job_snapshot(admin: AdminClient, job_id: str) -> tuple[int, int, list[bytes]]:
    """State, model version and every round exactly as the admin API reports them."""
    status = admin.get_job(job_id)
    rounds = [r.SerializeToString(deterministic=True) for r in status.rounds]
    return status.state, status.model_version, rounds


def round_status(admin: AdminClient, job_id: str, round_id: str) -> pb.RoundStatus:
    return next(r for r in admin.get_job(job_id).rounds if r.round_id == round_id)


def stored_submissions(coordinator: RunningCoordinator, round_id: str) -> list[Any]:
    with coordinator.store.transaction() as tx:
        return tx.list_submissions(round_id)


def audit_log(coordinator: RunningCoordinator) -> list[dict[str, Any]]:
    with coordinator.store.transaction() as tx:
        return tx.list_audit(limit=1000)


def assert_weights_equal(got: Weights, want: Weights) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def unknown_field(number: int, data: bytes) -> bytes:
    """Wire bytes of a length-delimited field the schema does not define (kept as unknown)."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            if value:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(data)) + data


# -- R7 / R8: repeated submissions -----------------------------------------------------------------


def test_identical_resubmission_gets_the_original_acknowledgement(
    running_round: StartRound,
    participant_stub: StubFor,
    admin: AdminClient,
    coordinator: RunningCoordinator,
) -> None:
    job_id, round_ = running_round()
    stub = participant_stub(ORG_A)
    update = update_for(ORG_A, job_id, round_)

    first = submit(stub, update.requests())
    again = submit(stub, update.requests())

    assert first.acknowledgement_id
    assert first.duplicate is False
    assert again.acknowledgement_id == first.acknowledgement_id
    assert again.duplicate is True
    assert list(round_status(admin, job_id, round_.round_id).contributors) == [ORG_A]
    assert [
        (s.org_id, s.acknowledgement_id) for s in stored_submissions(coordinator, round_.round_id)
    ] == [(ORG_A, first.acknowledgement_id)]

    for org in (ORG_B, ORG_C):
        submit(participant_stub(org), update_for(org, job_id, round_).requests())
    wait_for_job(admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the job to complete")
    # Counted once: a second count of org-a would change the weighted mean.
    _, model = admin.download_model(job_id, 1)
    assert_weights_equal(model, expected_fedavg(initial_weights(), contributions(*ORGS)))

    after_commit = submit(stub, update.requests())
    assert (after_commit.acknowledgement_id, after_commit.duplicate) == (
        first.acknowledgement_id,
        True,
    )


def test_conflicting_resubmission_is_rejected_and_the_original_kept(
    running_round: StartRound,
    participant_stub: StubFor,
    admin: AdminClient,
    coordinator: RunningCoordinator,
) -> None:
    job_id, round_ = running_round()
    stub = participant_stub(ORG_A)
    original = update_for(ORG_A, job_id, round_)
    conflicting = update_for(ORG_A, job_id, round_, extra=0.25)
    first = submit(stub, original.requests())

    error = rpc_error(lambda: submit(stub, conflicting.requests()))

    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    rows = stored_submissions(coordinator, round_.round_id)
    assert len(rows) == 1
    assert rows[0].content_sha256 == hashlib.sha256(original.payload()).digest()
    retry = submit(stub, original.requests())
    assert (retry.acknowledgement_id, retry.duplicate) == (first.acknowledgement_id, True)

    for org in (ORG_B, ORG_C):
        submit(participant_stub(org), update_for(org, job_id, round_).requests())
    wait_for_job(admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the job to complete")
    _, model = admin.download_model(job_id, 1)
    assert_weights_equal(model, expected_fedavg(initial_weights(), contributions(*ORGS)))


def test_conflicting_resubmission_is_audited(
    running_round: StartRound, participant_stub: StubFor, coordinator: RunningCoordinator
) -> None:
    job_id, round_ = running_round()
    stub = participant_stub(ORG_A)
    submit(stub, update_for(ORG_A, job_id, round_).requests())
    error = rpc_error(
        lambda: submit(stub, update_for(ORG_A, job_id, round_, extra=0.25).requests())
    )
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS

    conflicts = [
        (a["actor"], a["outcome"])
        for a in audit_log(coordinator)
        if a["action"] == "submission.conflict"
    ]
    assert conflicts == [(ORG_A, "rejected")]


# -- R9: late submissions --------------------------------------------------------------------------


def test_late_submission_after_the_round_committed_is_refused_and_not_counted(
    running_round: StartRound, participant_stub: StubFor, admin: AdminClient
) -> None:
    job_id, round_ = running_round(min_participants=2, round_timeout_seconds=1.0)
    for org in (ORG_A, ORG_B):
        submit(participant_stub(org), update_for(org, job_id, round_).requests())
    status = wait_for_job(
        admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the deadline to close round 1"
    )
    assert sorted(status.rounds[0].contributors) == [ORG_A, ORG_B]
    before = job_snapshot(admin, job_id)

    late = update_for(ORG_C, job_id, round_)
    error = rpc_error(lambda: submit(participant_stub(ORG_C), late.requests()))

    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert job_snapshot(admin, job_id) == before
    _, model = admin.download_model(job_id, 1)
    assert_weights_equal(model, expected_fedavg(initial_weights(), contributions(ORG_A, ORG_B)))


def test_late_submission_to_a_round_aborted_at_its_deadline_is_refused(
    running_round: StartRound, participant_stub: StubFor, admin: AdminClient
) -> None:
    job_id, round_ = running_round(orgs=(ORG_A, ORG_B), round_timeout_seconds=1.0)
    submit(participant_stub(ORG_A), update_for(ORG_A, job_id, round_).requests())
    aborted = wait_for_job(
        admin,
        job_id,
        lambda s: s.rounds[0].phase == pb.ROUND_PHASE_ABORTED,
        "the deadline to abort round 1",
    ).rounds[0]
    assert "deadline" in aborted.abort_reason

    error = rpc_error(
        lambda: submit(participant_stub(ORG_B), update_for(ORG_B, job_id, round_).requests())
    )

    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    status = admin.get_job(job_id)
    assert list(status.rounds[0].contributors) == [ORG_A]
    assert status.rounds[0].phase == pb.ROUND_PHASE_ABORTED
    assert all(ORG_B not in r.contributors for r in status.rounds)
    assert status.model_version == 0


@pytest.mark.parametrize("coordinator", [{"tick_seconds": 3600.0}], indirect=True)
def test_late_submission_is_refused_by_its_deadline_even_before_the_round_is_closed(
    coordinator: RunningCoordinator,
    running_round: StartRound,
    participant_stub: StubFor,
    admin: AdminClient,
) -> None:
    # The driver never ticks on its own here, so the round stays in INPUTS after its deadline:
    # only the deadline check of the submission itself can refuse org-b.
    job_id, round_ = running_round(orgs=(ORG_A, ORG_B), round_timeout_seconds=1.0)
    submit(participant_stub(ORG_A), update_for(ORG_A, job_id, round_).requests())
    stub_b = participant_stub(ORG_B)
    wait_for(
        lambda: (
            stub_b.GetTask(pb.GetTaskRequest(wait_seconds=0), timeout=RPC_TIMEOUT_S).kind
            == pb.TASK_KIND_WAIT
        ),
        WAIT_S,
        "the coordinator to stop offering the round (deadline passed)",
        interval=0.02,
    )
    before = job_snapshot(admin, job_id)
    assert round_status(admin, job_id, round_.round_id).phase == pb.ROUND_PHASE_INPUTS

    error = rpc_error(lambda: submit(stub_b, update_for(ORG_B, job_id, round_).requests()))

    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "deadline" in error.details()
    assert job_snapshot(admin, job_id) == before
    assert list(round_status(admin, job_id, round_.round_id).contributors) == [ORG_A]


# -- R10: out-of-order messages and unknown or old round ids ---------------------------------------


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unknown round id", grpc.StatusCode.NOT_FOUND),
        ("round id of another job", grpc.StatusCode.NOT_FOUND),
        ("phase KEYS in a plain round", grpc.StatusCode.FAILED_PRECONDITION),
        ("phase UNMASK in a plain round", grpc.StatusCode.FAILED_PRECONDITION),
        ("phase COMMITTED", grpc.StatusCode.FAILED_PRECONDITION),
        ("stale base version", grpc.StatusCode.FAILED_PRECONDITION),
        ("future base version", grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_out_of_order_submission_is_refused_without_a_state_change(
    case: str,
    code: grpc.StatusCode,
    running_round: StartRound,
    participant_stub: StubFor,
    admin: AdminClient,
    blob_refs: Callable[[], list[str]],
) -> None:
    job_id, round_ = running_round()
    update = update_for(ORG_A, job_id, round_)
    if case == "unknown round id":
        update = dataclasses.replace(update, round_id=str(uuid.uuid4()))
    elif case == "round id of another job":
        other_job = admin.create_job(shift_job_spec(name="other"), initial_weights()).job_id
        update = dataclasses.replace(update, job_id=other_job)
    elif case.startswith("phase "):
        phase = pb.RoundPhase.Value("ROUND_PHASE_" + case.split()[1])
        update = dataclasses.replace(update, phase=phase)
    elif case == "stale base version":
        update = dataclasses.replace(update, base_version=-1)
    else:
        update = dataclasses.replace(update, base_version=round_.base_version + 1)
    before, blobs_before = job_snapshot(admin, job_id), blob_refs()

    error = rpc_error(lambda: submit(participant_stub(ORG_A), update.requests()))

    assert error.code() is code, error.details()
    assert job_snapshot(admin, job_id) == before
    assert blob_refs() == blobs_before
    # Nothing was recorded for org-a: its real update is still accepted as a first submission.
    accepted = submit(participant_stub(ORG_A), update_for(ORG_A, job_id, round_).requests())
    assert accepted.duplicate is False


def test_old_round_id_and_replay_into_the_next_round_are_refused(
    running_round: StartRound,
    participant_stub: StubFor,
    admin: AdminClient,
    register: Callable[..., None],
) -> None:
    job_id, round_1 = running_round(orgs=(ORG_A, ORG_B), num_rounds=2)
    updates_1 = {org: update_for(org, job_id, round_1) for org in (ORG_A, ORG_B)}
    for org, update in updates_1.items():
        submit(participant_stub(org), update.requests())
    status = wait_for_job(admin, job_id, lambda s: open_round(s) is not None, "round 2 to open")
    round_2 = open_round(status)
    assert round_2 is not None and round_2.number == 2 and round_2.base_version == 1
    register(ORG_C)  # live now, but member of neither round's cohort
    before = job_snapshot(admin, job_id)

    old_round = rpc_error(
        lambda: submit(participant_stub(ORG_C), update_for(ORG_C, job_id, round_1).requests())
    )
    # org-a's round-1 update (built on version 0) replayed into round 2 (which trains version 1).
    replay = dataclasses.replace(updates_1[ORG_A], round_id=round_2.round_id)
    replayed = rpc_error(lambda: submit(participant_stub(ORG_A), replay.requests()))
    outsider = rpc_error(
        lambda: submit(participant_stub(ORG_C), update_for(ORG_C, job_id, round_2).requests())
    )

    assert old_round.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert replayed.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert outsider.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert job_snapshot(admin, job_id) == before


# -- S8: wrong tensors and bad headers -------------------------------------------------------------


def _corrupt_header(update: Update, change: Callable[[pb.UpdateHeader], None]) -> list[Any]:
    header = update.header()
    change(header)
    return with_header(header, update.payload())


def _poisoned(update: Update, value: float) -> list[Any]:
    weights = [w.copy() for w in update.weights]
    weights[1][2] = value
    return dataclasses.replace(update, weights=weights).requests()


def _set_total_bytes(header: pb.UpdateHeader, total: int) -> None:
    header.payload.total_bytes = total


def _short_payload_with_matching_hash(update: Update) -> list[Any]:
    # Self-consistent size and hash, but four bytes fewer than the tensor shapes need.
    payload = update.payload()[:-4]
    header = update.header()
    header.payload.total_bytes = len(payload)
    header.payload.sha256 = hashlib.sha256(payload).digest()
    return with_header(header, payload)


def _overflowing_empty_tensor(update: Update) -> list[Any]:
    # Zero bytes (0 * 2**62 * 2**62), but no array of that shape can exist.
    header = update.header()
    del header.payload.tensors[:]
    header.payload.tensors.add(dtype=pb.D_TYPE_FLOAT32, shape=[0, 1 << 62, 1 << 62])
    header.payload.total_bytes = 0
    header.payload.sha256 = hashlib.sha256(b"").digest()
    return with_header(header, b"")


BAD_UPDATES: dict[str, Callable[[Update], list[Any]]] = {
    "one tensor too few": lambda u: dataclasses.replace(u, weights=u.weights[:1]).requests(),
    "one tensor too many": lambda u: dataclasses.replace(
        u, weights=[*u.weights, np.zeros(2, np.float32)]
    ).requests(),
    "transposed shape (same byte count)": lambda u: dataclasses.replace(
        u, weights=[np.ascontiguousarray(u.weights[0].T), u.weights[1]]
    ).requests(),
    "float64 instead of float32": lambda u: dataclasses.replace(
        u, weights=[w.astype(np.float64) for w in u.weights]
    ).requests(),
    "int32 instead of float32 (same byte count)": lambda u: dataclasses.replace(
        u, weights=[w.view(np.int32) for w in u.weights]
    ).requests(),
    "NaN": lambda u: _poisoned(u, float("nan")),
    "+Inf": lambda u: _poisoned(u, float("inf")),
    "-Inf": lambda u: _poisoned(u, float("-inf")),
    "zero examples": lambda u: dataclasses.replace(u, num_examples=0).requests(),
    "negative examples": lambda u: dataclasses.replace(u, num_examples=-10).requests(),
    "NaN train loss": lambda u: dataclasses.replace(u, train_loss=float("nan")).requests(),
    "hash of other bytes": lambda u: _corrupt_header(
        u, lambda h: setattr(h.payload, "sha256", hashlib.sha256(b"other").digest())
    ),
    "hash of wrong length": lambda u: _corrupt_header(
        u, lambda h: setattr(h.payload, "sha256", b"\x00" * 31)
    ),
    "more data than announced": lambda u: [*u.requests(), pb.SubmitUpdateRequest(data=b"\x00")],
    "less data than announced": lambda u: [
        pb.SubmitUpdateRequest(header=u.header()),
        pb.SubmitUpdateRequest(data=u.payload()[:-4]),
    ],
    "size disagrees with the shapes": _short_payload_with_matching_hash,
    "announced size over the payload limit": lambda u: _corrupt_header(
        u, lambda h: _set_total_bytes(h, 1 << 40)
    ),
    "negative announced size": lambda u: _corrupt_header(u, lambda h: _set_total_bytes(h, -1)),
    "unknown dtype": lambda u: _corrupt_header(
        u, lambda h: setattr(h.payload.tensors[0], "dtype", 99)
    ),
    "unspecified dtype": lambda u: _corrupt_header(
        u, lambda h: setattr(h.payload.tensors[0], "dtype", pb.D_TYPE_UNSPECIFIED)
    ),
    "negative dimension": lambda u: _corrupt_header(
        u, lambda h: h.payload.tensors[0].shape.__setitem__(0, -4)
    ),
    "rank above the limit": lambda u: _corrupt_header(
        u, lambda h: h.payload.tensors[0].shape.extend([1] * 8)
    ),
    "unspecified phase": lambda u: dataclasses.replace(
        u, phase=pb.ROUND_PHASE_UNSPECIFIED
    ).requests(),
    "unknown phase": lambda u: dataclasses.replace(u, phase=42).requests(),
    "data before the header": lambda u: [u.requests()[1], u.requests()[0]],
    "second header instead of data": lambda u: [u.requests()[0], *u.requests()],
    "empty stream": lambda u: [],
    "zero-size tensor with overflowing dimensions": lambda u: _overflowing_empty_tensor(u),
}


@pytest.mark.parametrize("case", list(BAD_UPDATES))
def test_bad_update_is_invalid_argument_and_nothing_is_stored(
    case: str,
    running_round: StartRound,
    participant_stub: StubFor,
    admin: AdminClient,
    coordinator: RunningCoordinator,
    blob_refs: Callable[[], list[str]],
) -> None:
    job_id, round_ = running_round()
    stub = participant_stub(ORG_A)
    good = update_for(ORG_A, job_id, round_)
    before, blobs_before = job_snapshot(admin, job_id), blob_refs()

    error = rpc_error(lambda: submit(stub, BAD_UPDATES[case](good)))

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert job_snapshot(admin, job_id) == before
    assert list(round_status(admin, job_id, round_.round_id).contributors) == []
    assert stored_submissions(coordinator, round_.round_id) == []
    assert blob_refs() == blobs_before
    # The same organization can still send its real update: no half-stored rejected one.
    accepted = submit(stub, good.requests())
    assert accepted.duplicate is False


BAD_METRICS: dict[str, tuple[dict[str, Any], grpc.StatusCode]] = {
    "zero examples": ({"num_examples": 0}, grpc.StatusCode.INVALID_ARGUMENT),
    "NaN loss": ({"loss": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT),
    "infinite loss": ({"loss": float("inf")}, grpc.StatusCode.INVALID_ARGUMENT),
    "accuracy above 1": ({"accuracy": 1.5}, grpc.StatusCode.INVALID_ARGUMENT),
    "negative accuracy": ({"accuracy": -0.1}, grpc.StatusCode.INVALID_ARGUMENT),
    "version not committed yet": ({"model_version": 1}, grpc.StatusCode.NOT_FOUND),
    "negative version": ({"model_version": -1}, grpc.StatusCode.NOT_FOUND),
    "unknown job": ({"job_id": "no-such-job"}, grpc.StatusCode.NOT_FOUND),
}


def test_bad_metric_reports_are_refused_and_not_recorded(
    running_round: StartRound, participant_stub: StubFor, admin: AdminClient
) -> None:
    job_id, _ = running_round()
    stub = participant_stub(ORG_A)
    good = {"job_id": job_id, "model_version": 0, "num_examples": 5, "loss": 0.5, "accuracy": 0.5}

    codes = {}
    for case, (change, _) in BAD_METRICS.items():
        request = pb.ReportMetricsRequest(**{**good, **change})
        codes[case] = rpc_error(lambda r=request: stub.ReportMetrics(r, timeout=RPC_TIMEOUT_S))

    assert {c: e.code() for c, e in codes.items()} == {c: v[1] for c, v in BAD_METRICS.items()}
    assert list(admin.get_job(job_id).metrics) == []
    first = stub.ReportMetrics(pb.ReportMetricsRequest(**good), timeout=RPC_TIMEOUT_S)
    assert first.duplicate is False
    conflict = pb.ReportMetricsRequest(**{**good, "loss": 0.25})
    error = rpc_error(lambda: stub.ReportMetrics(conflict, timeout=RPC_TIMEOUT_S))
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    [metrics] = admin.get_job(job_id).metrics
    assert (metrics.version, metrics.reports, metrics.loss) == (0, 1, 0.5)


InputsRequest = Callable[[str, str], pb.DownloadRoundInputsRequest]

BAD_ROUND_INPUTS: dict[str, tuple[InputsRequest, grpc.StatusCode]] = {
    "unknown job": (
        lambda job, round_id: pb.DownloadRoundInputsRequest(job_id="no-job", round_id=round_id),
        grpc.StatusCode.NOT_FOUND,
    ),
    "unknown round": (
        lambda job, round_id: pb.DownloadRoundInputsRequest(job_id=job, round_id=str(uuid.uuid4())),
        grpc.StatusCode.NOT_FOUND,
    ),
    "empty round id": (
        lambda job, round_id: pb.DownloadRoundInputsRequest(job_id=job),
        grpc.StatusCode.NOT_FOUND,
    ),
    "empty request": (
        lambda job, round_id: pb.DownloadRoundInputsRequest(),
        grpc.StatusCode.NOT_FOUND,
    ),
    # Only a paillier round's members vet inputs, and only at CONSISTENCY: outsiders and other
    # phases of such a round are in tests/unit/coordinator/service/test_secure_rounds.py.
    "a round whose protection vets no inputs": (
        lambda job, round_id: pb.DownloadRoundInputsRequest(job_id=job, round_id=round_id),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
}


def test_bad_round_inputs_requests_are_refused_and_change_nothing(
    running_round: StartRound,
    participant_stub: StubFor,
    admin: AdminClient,
    coordinator: RunningCoordinator,
    blob_refs: Callable[[], list[str]],
) -> None:
    job_id, round_ = running_round()
    stub = participant_stub(ORG_A)
    before, blobs_before = job_snapshot(admin, job_id), blob_refs()

    codes = {}
    for case, (make, _) in BAD_ROUND_INPUTS.items():
        request = make(job_id, round_.round_id)
        codes[case] = rpc_error(
            lambda r=request: list(stub.DownloadRoundInputs(r, timeout=RPC_TIMEOUT_S))
        ).code()

    assert codes == {case: code for case, (_, code) in BAD_ROUND_INPUTS.items()}
    assert job_snapshot(admin, job_id) == before
    assert blob_refs() == blobs_before
    assert stored_submissions(coordinator, round_.round_id) == []
    accepted = submit(stub, update_for(ORG_A, job_id, round_).requests())
    assert accepted.duplicate is False


def test_bad_admin_requests_are_refused_and_create_nothing(
    admin: AdminClient, blob_refs: Callable[[], list[str]]
) -> None:
    weights = initial_weights()
    cases: dict[str, tuple[Callable[[], object], grpc.StatusCode]] = {
        "NaN initial weights": (
            lambda: admin.create_job(shift_job_spec(), [np.full(3, np.nan, np.float32)]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "int32 initial weights": (
            lambda: admin.create_job(shift_job_spec(), [np.arange(3, dtype=np.int32)]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "round timeout below 1 s": (
            lambda: admin.create_job(shift_job_spec(round_timeout_seconds=0.5), weights),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "too many rounds": (
            lambda: admin.create_job(shift_job_spec(num_rounds=100_001), weights),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "paillier key too short": (
            lambda: admin.create_job(
                _with(shift_job_spec(), protection=pb.PROTECTION_PAILLIER, paillier_key_bits=1024),
                weights,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "secagg bit budget exceeded": (
            lambda: admin.create_job(
                _with(
                    shift_job_spec(),
                    protection=pb.PROTECTION_SECAGG,
                    secagg=pb.SecAggSettings(levels_bits=30),
                ),
                weights,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "unknown protection": (
            lambda: admin.create_job(_with(shift_job_spec(), protection=17), weights),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "task config not JSON": (
            lambda: admin.create_job(_with(shift_job_spec(), task_config_json="{oops"), weights),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "start an unknown job": (
            lambda: admin.start_job("no-such-job"),
            grpc.StatusCode.NOT_FOUND,
        ),
        "download an unknown job": (
            lambda: admin.download_model("no-such-job"),
            grpc.StatusCode.NOT_FOUND,
        ),
    }
    blobs_before = blob_refs()

    codes = {case: rpc_error(call).code() for case, (call, _) in cases.items()}

    assert codes == {case: code for case, (_, code) in cases.items()}
    assert admin.list_jobs() == []
    assert blob_refs() == blobs_before

    job_id = admin.create_job(shift_job_spec(), weights).job_id
    admin.start_job(job_id)
    twice = rpc_error(lambda: admin.start_job(job_id))
    missing = rpc_error(lambda: admin.download_model(job_id, 5))
    assert twice.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert missing.code() is grpc.StatusCode.NOT_FOUND
    assert admin.get_job(job_id).state == pb.JOB_STATE_RUNNING


def test_initial_weights_with_an_overflowing_empty_tensor_are_invalid_argument(
    open_channel: Callable[..., grpc.Channel],
    tls_for: Callable[[str], TlsFiles],
    admin: AdminClient,
) -> None:
    weights_header = pb.PayloadHeader(
        tensors=[pb.TensorSpec(dtype=pb.D_TYPE_FLOAT32, shape=[0, 1 << 62, 1 << 62])],
        total_bytes=0,
        sha256=hashlib.sha256(b"").digest(),
    )
    first = pb.CreateJobRequest(
        header=pb.CreateJobHeader(spec=shift_job_spec(), initial_weights=weights_header)
    )
    stub = pb_grpc.AdminServiceStub(open_channel(tls_for("admin")))

    error = rpc_error(
        lambda: stub.CreateJob(iter([first, pb.CreateJobRequest(data=b"")]), timeout=RPC_TIMEOUT_S)
    )

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert admin.list_jobs() == []


def _with(spec: pb.JobSpec, **fields: Any) -> pb.JobSpec:
    changed = pb.JobSpec()
    changed.CopyFrom(spec)
    for name, value in fields.items():
        if isinstance(value, Message):
            getattr(changed, name).CopyFrom(value)
        else:
            setattr(changed, name, value)
    return changed


# -- S7: garbage bytes on every RPC ----------------------------------------------------------------

PARTICIPANT_SERVICE = pb.DESCRIPTOR.services_by_name["ParticipantService"]
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"]


def _methods() -> list[tuple[str, str, bool, bool]]:
    """(role, full method path, client streams, server streams) of every fedsilo RPC."""
    found = []
    for role, service in (("participant", PARTICIPANT_SERVICE), ("admin", ADMIN_SERVICE)):
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            found.append((role, path, method.client_streaming, method.server_streaming))
    return found


def _method_id(value: object) -> str:
    """Test ids: the caller role and Service.Method; booleans are left out."""
    if isinstance(value, str) and value.startswith("/"):
        service, method = value.lstrip("/").rsplit("/", 1)
        return f"{service.rsplit('.', 1)[1]}.{method}"
    return value if isinstance(value, str) else ""


ALL_METHODS = _methods()
assert len(ALL_METHODS) == 25  # 9 participant + 16 admin RPCs; update when the API grows


def _raw_call(
    channel: grpc.Channel,
    path: str,
    client_streams: bool,
    server_streams: bool,
    messages: list[bytes],
) -> object:
    """Send raw bytes (no serializer) and drain the answer; raises grpc.RpcError on a status."""
    if client_streams and server_streams:
        return list(channel.stream_stream(path)(iter(messages), timeout=RPC_TIMEOUT_S))
    if client_streams:
        return channel.stream_unary(path)(iter(messages), timeout=RPC_TIMEOUT_S)
    [message] = messages
    if server_streams:
        return list(channel.unary_stream(path)(message, timeout=RPC_TIMEOUT_S))
    return channel.unary_unary(path)(message, timeout=RPC_TIMEOUT_S)


@pytest.fixture
def tls_for(pki: ConsortiumPki) -> Callable[[str], TlsFiles]:
    return lambda role: pki.admin_tls() if role == "admin" else pki.participant_tls(ORG_A)


@pytest.mark.parametrize(
    ("role", "path", "client_streams", "server_streams"),
    [
        *ALL_METHODS,
        ("participant", "/grpc.health.v1.Health/Check", False, False),
        ("admin", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True, True),
    ],
    ids=_method_id,
)
def test_garbage_bytes_are_invalid_argument_and_the_server_stays_healthy(
    role: str,
    path: str,
    client_streams: bool,
    server_streams: bool,
    open_channel: Callable[..., grpc.Channel],
    tls_for: Callable[[str], TlsFiles],
    health_check: Callable[[], int],
    admin: AdminClient,
    participant_stub: StubFor,
) -> None:
    channel = open_channel(tls_for(role))

    error = rpc_error(lambda: _raw_call(channel, path, client_streams, server_streams, [GARBAGE]))

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert health_check() == health_pb2.HealthCheckResponse.SERVING
    assert admin.list_jobs() == []
    task = participant_stub(ORG_B).GetTask(pb.GetTaskRequest(wait_seconds=0), timeout=RPC_TIMEOUT_S)
    assert task.kind == pb.TASK_KIND_WAIT
    if not client_streams:
        # A unary call is refused before any servicer code: org-a was not even registered.
        assert [p.org_id for p in admin.list_participants()] == [ORG_B]


@pytest.mark.parametrize("role", ["participant", "admin"])
def test_garbage_after_a_valid_header_is_invalid_argument(
    role: str,
    running_round: StartRound,
    open_channel: Callable[..., grpc.Channel],
    tls_for: Callable[[str], TlsFiles],
    admin: AdminClient,
    coordinator: RunningCoordinator,
) -> None:
    job_id, round_ = running_round()
    before = job_snapshot(admin, job_id)
    if role == "participant":
        path = "/fedsilo.v1.ParticipantService/SubmitUpdate"
        header = update_for(ORG_A, job_id, round_).requests()[0].SerializeToString()
    else:
        path = "/fedsilo.v1.AdminService/CreateJob"
        weights_header, _ = encode_tensors(initial_weights())
        header = pb.CreateJobRequest(
            header=pb.CreateJobHeader(
                spec=shift_job_spec(), initial_weights=header_to_proto(weights_header)
            )
        ).SerializeToString()
    channel = open_channel(tls_for(role))

    error = rpc_error(lambda: _raw_call(channel, path, True, False, [header, GARBAGE]))

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert job_snapshot(admin, job_id) == before
    assert [j.job_id for j in admin.list_jobs()] == [job_id]
    assert stored_submissions(coordinator, round_.round_id) == []


# -- S6: oversized messages ------------------------------------------------------------------------


def test_oversized_messages_are_resource_exhausted_before_application_code(
    running_round: StartRound,
    open_channel: Callable[..., grpc.Channel],
    tls_for: Callable[[str], TlsFiles],
    pki: ConsortiumPki,
    admin: AdminClient,
    coordinator: RunningCoordinator,
    health_check: Callable[[], int],
    participant_stub: StubFor,
) -> None:
    job_id, round_ = running_round(orgs=(ORG_A, ORG_B))
    before = job_snapshot(admin, job_id)
    padding = unknown_field(1000, b"\x00" * OVERSIZED)
    # A well-formed GetTask from org-c that would register it, if it ever reached the servicer.
    big_get_task = pb.GetTaskRequest(wait_seconds=0).SerializeToString() + padding
    c_channel = open_channel(pki.participant_tls(ORG_C))
    # A header the round accepts (it is checked before any payload is read), then a data
    # message over the cap.
    submit_messages = [
        update_for(ORG_A, job_id, round_).requests()[0].SerializeToString(),
        pb.SubmitUpdateRequest(data=b"\x00" * OVERSIZED).SerializeToString(),
    ]
    big_header = pb.SubmitUpdateRequest(header=update_for(ORG_A, job_id, round_).header())
    admin_channel = open_channel(tls_for("admin"))
    big_create = pb.CreateJobRequest(data=b"\x00" * OVERSIZED).SerializeToString()

    errors = {
        "unary GetTask": rpc_error(
            lambda: _raw_call(
                c_channel, "/fedsilo.v1.ParticipantService/GetTask", False, False, [big_get_task]
            )
        ),
        "SubmitUpdate data chunk": rpc_error(
            lambda: _raw_call(
                open_channel(tls_for("participant")),
                "/fedsilo.v1.ParticipantService/SubmitUpdate",
                True,
                False,
                submit_messages,
            )
        ),
        "SubmitUpdate header": rpc_error(
            lambda: _raw_call(
                open_channel(tls_for("participant")),
                "/fedsilo.v1.ParticipantService/SubmitUpdate",
                True,
                False,
                [big_header.SerializeToString() + padding],
            )
        ),
        "CreateJob message": rpc_error(
            lambda: _raw_call(
                admin_channel, "/fedsilo.v1.AdminService/CreateJob", True, False, [big_create]
            )
        ),
    }

    assert {k: e.code() for k, e in errors.items()} == dict.fromkeys(
        errors, grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    # Not the call cap's mark: a participant does not send such a message again.
    assert [k for k, e in errors.items() if refused_as_busy(e.trailing_metadata())] == []
    assert health_check() == health_pb2.HealthCheckResponse.SERVING
    assert sorted(p.org_id for p in admin.list_participants()) == [ORG_A, ORG_B]
    assert [j.job_id for j in admin.list_jobs()] == [job_id]
    assert job_snapshot(admin, job_id) == before
    assert stored_submissions(coordinator, round_.round_id) == []
    accepted = submit(participant_stub(ORG_A), update_for(ORG_A, job_id, round_).requests())
    assert accepted.duplicate is False


# -- S2 / S3: identity from the certificate, roles -------------------------------------------------


def _valid_request(path: str, job_id: str) -> list[bytes]:
    """A well-formed request body for every fedsilo RPC, as raw bytes."""
    name = path.rsplit("/", 1)[1]
    if name == "GetServerInfo":
        return [pb.GetServerInfoRequest().SerializeToString()]
    if path.startswith("/fedsilo.v1.AdminService/"):
        if name == "CreateJob":
            header, payload = encode_tensors(initial_weights())
            first = pb.CreateJobRequest(
                header=pb.CreateJobHeader(
                    spec=shift_job_spec(name="sneaky"), initial_weights=header_to_proto(header)
                )
            )
            return [
                first.SerializeToString(),
                pb.CreateJobRequest(data=payload).SerializeToString(),
            ]
        if name in ("StartJob", "GetJob", "PauseJob", "ResumeJob", "AbortJob", "DeleteJob"):
            return [pb.JobRef(job_id=job_id).SerializeToString()]
        if name == "ListJobs":
            return [pb.ListJobsRequest().SerializeToString()]
        if name == "ListParticipants":
            return [pb.ListParticipantsRequest().SerializeToString()]
        if name in ("ApproveParticipant", "RevokeParticipant"):
            return [pb.OrgRef(org_id=ORG_A).SerializeToString()]
        if name == "RevokeCertificate":
            return [pb.RevokeCertificateRequest(serial_hex="abc123").SerializeToString()]
        if name == "ListAuditEvents":
            return [pb.ListAuditEventsRequest(limit=5).SerializeToString()]
        return [pb.DownloadModelRequest(job_id=job_id, version=0).SerializeToString()]
    if name == "GetTask":
        return [pb.GetTaskRequest(wait_seconds=0).SerializeToString()]
    if name == "DownloadModel":
        return [pb.DownloadModelRequest(job_id=job_id, version=0).SerializeToString()]
    if name == "DownloadRoundInputs":
        request = pb.DownloadRoundInputsRequest(job_id=job_id, round_id=str(uuid.uuid4()))
        return [request.SerializeToString()]
    if name == "ReportMetrics":
        request = pb.ReportMetricsRequest(
            job_id=job_id, model_version=0, num_examples=5, loss=0.5, accuracy=0.5
        )
        return [request.SerializeToString()]
    if name == "SubmitCeremony":
        request = pb.SubmitCeremonyRequest(job_id=job_id, action="job_key", body=b"key")
        return [request.SerializeToString()]
    if name == "SubmitMessage":
        request = pb.SubmitMessageRequest(
            job_id=job_id, round_id=str(uuid.uuid4()), phase=pb.ROUND_PHASE_KEYS, body=b"keys"
        )
        return [request.SerializeToString()]
    round_ = pb.RoundStatus(round_id=str(uuid.uuid4()))
    return [m.SerializeToString() for m in update_for(ORG_A, job_id, round_).requests()]


@pytest.mark.parametrize(
    ("caller", "path", "client_streams", "server_streams"),
    [
        *(("participant", *m[1:]) for m in ALL_METHODS if m[0] == "admin"),
        *(("admin", *m[1:]) for m in ALL_METHODS if m[0] == "participant"),
        *(("coordinator", *m[1:]) for m in ALL_METHODS),
    ],
    ids=_method_id,
)
def test_wrong_role_is_permission_denied_and_changes_nothing(
    caller: str,
    path: str,
    client_streams: bool,
    server_streams: bool,
    pki: ConsortiumPki,
    open_channel: Callable[..., grpc.Channel],
    admin: AdminClient,
    coordinator: RunningCoordinator,
) -> None:
    job_id = admin.create_job(shift_job_spec(), initial_weights()).job_id
    tls = {
        "participant": pki.participant_tls(ORG_A),
        "admin": pki.admin_tls(),
        "coordinator": TlsFiles(
            pki.demo.ca_cert, pki.demo.coordinator_cert, pki.demo.coordinator_key
        ),
    }[caller]
    channel = open_channel(tls)

    error = rpc_error(
        lambda: _raw_call(
            channel, path, client_streams, server_streams, _valid_request(path, job_id)
        )
    )

    assert error.code() is grpc.StatusCode.PERMISSION_DENIED, (error.code(), error.details())
    status = admin.get_job(job_id)
    assert status.state == pb.JOB_STATE_CREATED
    assert list(status.metrics) == []
    assert [j.job_id for j in admin.list_jobs()] == [job_id]
    assert admin.list_participants() == []
    refusals = [a for a in audit_log(coordinator) if a["outcome"] == "permission_denied"]
    expected_actor = {"participant": ORG_A, "admin": "admin", "coordinator": "coordinator"}[caller]
    assert [(a["actor"], a["action"]) for a in refusals] == [(expected_actor, path)]


def test_submission_is_recorded_under_the_certificate_identity(
    running_round: StartRound,
    participant_stub: StubFor,
    admin: AdminClient,
    coordinator: RunningCoordinator,
) -> None:
    job_id, round_ = running_round()
    # org-b's certificate, a body that names org-a in a field the schema does not define.
    claim = unknown_field(99, ORG_A.encode())
    header = pb.UpdateHeader()
    header.ParseFromString(update_for(ORG_B, job_id, round_).header().SerializeToString() + claim)
    assert header.SerializeToString().endswith(claim)
    requests = with_header(header, update_for(ORG_B, job_id, round_).payload())

    submit(participant_stub(ORG_B), requests)

    assert list(round_status(admin, job_id, round_.round_id).contributors) == [ORG_B]
    assert [s.org_id for s in stored_submissions(coordinator, round_.round_id)] == [ORG_B]
    own = submit(participant_stub(ORG_A), update_for(ORG_A, job_id, round_).requests())
    assert own.duplicate is False
    assert sorted(round_status(admin, job_id, round_.round_id).contributors) == [ORG_A, ORG_B]


# -- S1: certificates from a foreign CA or none ----------------------------------------------------


# No membership list published at start: its audit record would hide an unauthenticated one.
@pytest.mark.parametrize("coordinator", [{"publish_membership": False}], indirect=True)
def test_foreign_ca_or_missing_client_certificate_fails_the_handshake(
    pki: ConsortiumPki,
    target: str,
    open_channel: Callable[..., grpc.Channel],
    admin: AdminClient,
    coordinator: RunningCoordinator,
    health_check: Callable[[], int],
) -> None:
    foreign = open_channel(pki.foreign_tls())
    anonymous_credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.demo.ca_cert.read_bytes()
    )
    with grpc.secure_channel(target, anonymous_credentials) as anonymous:
        calls: dict[str, Callable[[], object]] = {
            "foreign GetTask": lambda: pb_grpc.ParticipantServiceStub(foreign).GetTask(
                pb.GetTaskRequest(wait_seconds=0), timeout=RPC_TIMEOUT_S
            ),
            "foreign ListJobs": lambda: pb_grpc.AdminServiceStub(foreign).ListJobs(
                pb.ListJobsRequest(), timeout=RPC_TIMEOUT_S
            ),
            "anonymous GetTask": lambda: pb_grpc.ParticipantServiceStub(anonymous).GetTask(
                pb.GetTaskRequest(wait_seconds=0), timeout=RPC_TIMEOUT_S
            ),
        }
        codes = {name: rpc_error(call).code() for name, call in calls.items()}

    assert codes == dict.fromkeys(calls, grpc.StatusCode.UNAVAILABLE)
    assert admin.list_participants() == []
    # The interceptor never ran for them: it would have audited an unauthenticated caller.
    assert audit_log(coordinator) == []
    assert health_check() == health_pb2.HealthCheckResponse.SERVING
