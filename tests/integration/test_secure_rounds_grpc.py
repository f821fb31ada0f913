"""Secure aggregation over real gRPC with mutual TLS: honest jobs and a scripted evil coordinator.

The daemons are the real participant daemons (threads in this process). The honest tests check
the oracle: each committed model is the weighted FedAvg of exactly the contributors, within the
quantization bound, and the coordinator's database, blob store and logs hold no organization's
update. The evil tests run the real coordinator with a participant API that deviates from the
protocol in one way (docs/fault-matrix.md S10-S15) and check that every honest daemon
refuses: it sends nothing for the tampered request, the round releases nothing, and its
secrets are deleted.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from inproc_consortium import ORGS, DaemonThread, initial_weights, shift_job_spec, wait_for_job
from integration_shift_task import ORG_SETTINGS

from coordinator.service.facade import CoordinatorService
from coordinator.service.membership import MembershipService
from coordinator.transport.interceptors import current_identity, status_for
from coordinator.transport.server import RunningCoordinator
from coordinator.transport.servicers import ParticipantServicer
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.v1 import fedsilo_pb2 as pb
from secagg import (
    ConsistencySignature,
    RevealedShare,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.primitives.shamir import FIELD_PRIME, Share

CLIP = 2.0
LEVELS_BITS = 12
BOUND = math.ldexp(1.0, -(LEVELS_BITS + 1)) + 1e-5  # quantization, plus float32 storage


def secure_spec(num_rounds: int = 1, phase_timeout: float = 30.0, **secagg: Any) -> pb.JobSpec:
    spec = shift_job_spec(num_rounds=num_rounds)
    spec.protection = pb.PROTECTION_SECAGG
    spec.phase_timeout_seconds = phase_timeout
    spec.max_failed_rounds = 0
    spec.secagg.CopyFrom(pb.SecAggSettings(**{"clip": CLIP, "levels_bits": LEVELS_BITS, **secagg}))
    return spec


def weighted_shift(orgs: tuple[str, ...] = ORGS) -> float:
    total = sum(int(ORG_SETTINGS[o]["examples"]) for o in orgs)
    return sum(
        float(ORG_SETTINGS[o]["offset"]) * int(ORG_SETTINGS[o]["examples"]) for o in orgs
    ) / (total)


def start_daemons(
    admin: AdminClient, target: str, run_daemon: Callable[..., DaemonThread]
) -> list[DaemonThread]:
    daemons = [run_daemon(org, target, poll_seconds=0.5) for org in ORGS]
    wait_for(
        lambda: sorted(p.org_id for p in admin.list_participants()) == list(ORGS),
        20,
        "three organizations to register",
        interval=0.02,
    )
    return daemons


def secret_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "participants").glob("*/secagg/*.json"))


# -- honest ---------------------------------------------------------------------------------------


def test_three_daemons_complete_a_secure_job(
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
    coordinator: RunningCoordinator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    start_daemons(admin, target, run_daemon)
    initial = initial_weights()
    job_id = admin.create_job(secure_spec(num_rounds=2), initial).job_id
    admin.start_job(job_id)

    def done(status: pb.JobStatus) -> bool:
        final = [m for m in status.metrics if m.version == 2]
        return status.state == pb.JOB_STATE_COMPLETED and bool(final) and final[0].reports == 3

    status = wait_for_job(admin, job_id, done, "the secure job to complete", 60)

    assert status.spec.protection == pb.PROTECTION_SECAGG
    for round_ in status.rounds:
        assert round_.phase == pb.ROUND_PHASE_COMMITTED, round_.abort_reason
        assert sorted(round_.contributors) == list(ORGS)
        assert round_.threshold == 2
        assert not round_.HasField("train_loss")  # never revealed under secure aggregation
    # Each version moves every weight by the weighted mean offset 0.4 (not the unweighted 0.83).
    shift = weighted_shift()
    assert shift == pytest.approx(0.4)
    for version in (1, 2):
        _, weights = admin.download_model(job_id, version)
        for got, start in zip(weights, initial, strict=True):
            assert np.max(np.abs(got - (start + version * shift))) <= version * BOUND
    # Every participant was told the rounds ended and deleted their secrets.
    wait_for(lambda: secret_files(tmp_path) == [], 20, "round secrets to be deleted", interval=0.05)

    # Privacy: nothing the coordinator stored or logged is (close to) one organization's update.
    trained = {org: [w + np.float32(ORG_SETTINGS[org]["offset"]) for w in initial] for org in ORGS}
    data_dir = tmp_path / "coordinator"
    stored = [p.read_bytes() for p in data_dir.rglob("*") if p.is_file()]
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records).encode()
    assert stored
    for org, weights in trained.items():
        raw = b"".join(w.tobytes() for w in weights)
        for data in (*stored, logged):
            assert raw[:24] not in data, org
    size = sum(w.size for w in initial)
    for data in stored:
        if len(data) == 4 * size:
            vector = np.frombuffer(data, dtype=np.float32)
            for org, weights in trained.items():
                flat = np.concatenate([w.ravel() for w in weights])
                assert np.max(np.abs(vector - flat)) > 0.1, org


def test_a_job_with_an_impossible_bit_budget_is_refused(admin: AdminClient) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        admin.create_job(secure_spec(levels_bits=20), initial_weights())
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "bit budget exceeded" in (refused.value.details() or "")
    assert admin.list_jobs() == []


# -- a scripted malicious coordinator ------------------------------------------------------------

Tamper = Callable[["EvilServicer", pb.GetTaskResponse, str], None]


@dataclass
class Evidence:
    """What the evil participant API saw: every SubmitMessage (org, phase) before it is served."""

    messages: list[tuple[str, int]] = field(default_factory=list)
    replayed: set[str] = field(default_factory=set)
    unmask_steps: dict[str, pb.GetTaskResponse] = field(default_factory=dict)
    equivocated: bytes = b""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, phase: int) -> list[str]:
        with self.lock:
            return sorted(org for org, p in self.messages if p == phase)


class EvilServicer(ParticipantServicer):
    """The real participant API with one deviation applied to the tasks it hands out."""

    def __init__(
        self,
        service: CoordinatorService,
        membership: MembershipService,
        tamper: Tamper,
        evidence: Evidence,
    ) -> None:
        super().__init__(service, membership)
        self.tamper = tamper
        self.evidence = evidence

    def GetTask(  # noqa: N802
        self, request: pb.GetTaskRequest, context: grpc.ServicerContext
    ) -> pb.GetTaskResponse:
        response = super().GetTask(request, context)
        self.tamper(self, response, current_identity().org_id)
        return response

    def SubmitMessage(  # noqa: N802
        self, request: pb.SubmitMessageRequest, context: grpc.ServicerContext
    ) -> pb.SubmitUpdateResponse:
        with self.evidence.lock:
            self.evidence.messages.append((current_identity().org_id, request.phase))
        return super().SubmitMessage(request, context)


def _unmask(response: pb.GetTaskResponse) -> UnmaskRequest | None:
    if response.kind == pb.TASK_KIND_SECAGG_STEP and response.phase == pb.ROUND_PHASE_UNMASK:
        return UnmaskRequest.from_bytes(response.secagg.unmask_request)
    return None


def both_shares_of_one_peer(evil: EvilServicer, response: pb.GetTaskResponse, org: str) -> None:
    """S10: ask for the self-mask share and the key share of the same peer."""
    request = _unmask(response)
    if request is not None:
        peer = next(m for m in request.survivors if m != org)
        tampered = UnmaskRequest(request.survivors, (peer,), request.signatures)
        response.secagg.unmask_request = tampered.to_bytes()


def recipient_listed_as_dropped(evil: EvilServicer, response: pb.GetTaskResponse, org: str) -> None:
    """S11: tell the participant that it dropped out itself."""
    request = _unmask(response)
    if request is not None:
        survivors = tuple(m for m in request.survivors if m != org)
        tampered = UnmaskRequest(survivors, (org,), request.signatures)
        response.secagg.unmask_request = tampered.to_bytes()


def fewer_than_t_survivors(evil: EvilServicer, response: pb.GetTaskResponse, org: str) -> None:
    """S12: an unmask request with one survivor, t = 2."""
    request = _unmask(response)
    if request is not None:
        tampered = UnmaskRequest((org,), request.dropped, request.signatures)
        response.secagg.unmask_request = tampered.to_bytes()


def substituted_keys(evil: EvilServicer, response: pb.GetTaskResponse, org: str) -> None:
    """S14: swap a peer's two public keys (its signature no longer covers them)."""
    if response.kind == pb.TASK_KIND_SECAGG_STEP and response.phase == pb.ROUND_PHASE_SHARES:
        for entry in response.secagg.keys:
            keys = SignedKeys.from_bytes(entry.signed_keys)
            if keys.participant != org:
                swapped = SignedKeys(
                    keys.participant, keys.masking_key, keys.encryption_key, keys.signature
                )
                entry.signed_keys = swapped.to_bytes()
                return


def second_aggregation(evil: EvilServicer, response: pb.GetTaskResponse, org: str) -> None:
    """S15: after the round, ask again for the unmask shares of a different survivor subset."""
    request = _unmask(response)
    evidence = evil.evidence
    if request is not None:
        stale = pb.GetTaskResponse()
        stale.CopyFrom(response)
        with evidence.lock:
            evidence.unmask_steps.setdefault(org, stale)
        return
    with evidence.lock:
        stale = evidence.unmask_steps.get(org)
        if stale is None or org in evidence.replayed or response.kind == pb.TASK_KIND_SECAGG_STEP:
            return
        evidence.replayed.add(org)
    old = UnmaskRequest.from_bytes(stale.secagg.unmask_request)
    others = tuple(m for m in old.survivors if m != org)
    subset = UnmaskRequest((org, others[0]), (others[1],), old.signatures)
    response.Clear()
    response.CopyFrom(stale)
    response.secagg.unmask_request = subset.to_bytes()


@pytest.fixture
def evil_consortium(
    start_test_coordinator: Callable[..., RunningCoordinator],
    request: pytest.FixtureRequest,
) -> Iterator[tuple[RunningCoordinator, Evidence]]:
    tamper: Tamper = request.param
    evidence = Evidence()
    running = start_test_coordinator(
        0,
        participant_servicer=lambda s, m: EvilServicer(s, m, tamper, evidence),
    )
    yield running, evidence


@pytest.mark.parametrize(
    ("evil_consortium", "refused_phase", "reason"),
    [
        (both_shares_of_one_peer, pb.ROUND_PHASE_UNMASK, "asked for both shares"),
        (recipient_listed_as_dropped, pb.ROUND_PHASE_UNMASK, "lists this participant as dropped"),
        (fewer_than_t_survivors, pb.ROUND_PHASE_UNMASK, "fewer than t=2"),
        (substituted_keys, pb.ROUND_PHASE_SHARES, "not signed by its organization"),
    ],
    indirect=["evil_consortium"],
    ids=["S10", "S11", "S12", "S14"],
)
@pytest.mark.slow  # three daemons per case, each waiting out a refused round: 2-3 s each
def test_honest_daemons_refuse_a_deviating_coordinator(
    evil_consortium: tuple[RunningCoordinator, Evidence],
    refused_phase: int,
    reason: str,
    pki: Any,
    run_daemon: Callable[..., DaemonThread],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running, evidence = evil_consortium
    target = f"127.0.0.1:{running.port}"
    with AdminClient(target, pki.admin_tls()) as admin:
        start_daemons(admin, target, run_daemon)
        job_id = admin.create_job(secure_spec(phase_timeout=2.0), initial_weights()).job_id
        admin.start_job(job_id)
        status = wait_for_job(
            admin,
            job_id,
            lambda s: s.state == pb.JOB_STATE_FAILED,
            "the round to abort and the job to fail",
            40,
        )
    # Nobody answered the tampered request, so nothing was released.
    assert evidence.sent(refused_phase) == []
    (round_,) = status.rounds
    assert round_.phase == pb.ROUND_PHASE_ABORTED
    assert "closed with 0 of 3 answers" in round_.abort_reason
    assert status.model_version == 0
    refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum(reason in message for message in refusals) >= len(ORGS), refusals
    # R4: the participants are told the round ended and delete its secrets.
    wait_for(lambda: secret_files(tmp_path) == [], 20, "round secrets to be deleted", interval=0.05)


@pytest.mark.parametrize("evil_consortium", [second_aggregation], indirect=True, ids=["S15"])
def test_a_second_aggregation_of_one_round_is_refused(
    evil_consortium: tuple[RunningCoordinator, Evidence],
    pki: Any,
    run_daemon: Callable[..., DaemonThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    running, evidence = evil_consortium
    target = f"127.0.0.1:{running.port}"
    with AdminClient(target, pki.admin_tls()) as admin:
        start_daemons(admin, target, run_daemon)
        job_id = admin.create_job(secure_spec(), initial_weights()).job_id
        admin.start_job(job_id)
        wait_for(
            lambda: evidence.replayed == set(ORGS),
            40,
            "the evil coordinator to ask every organization a second time",
            interval=0.05,
        )
        wait_for(
            lambda: (
                sum(
                    "second, different unmask request" in r.getMessage()
                    for r in caplog.records
                    if r.levelno >= logging.ERROR
                )
                >= len(ORGS)
            ),
            20,
            "every organization to refuse",
            interval=0.05,
        )
    # One unmask answer per organization: the first aggregation only.
    assert evidence.sent(pb.ROUND_PHASE_UNMASK).count("org-a") == 1
    assert sorted(set(evidence.sent(pb.ROUND_PHASE_UNMASK))) == list(ORGS)


class EquivocatingServicer(EvilServicer):
    """S13: shows org-a a smaller survivor set than the others, and keeps its signature on it
    out of the real coordinator (which would refuse it) to pass it to the others at UNMASK."""

    def SubmitMessage(  # noqa: N802
        self, request: pb.SubmitMessageRequest, context: grpc.ServicerContext
    ) -> pb.SubmitUpdateResponse:
        org = current_identity().org_id
        if org == "org-a" and request.phase == pb.ROUND_PHASE_CONSISTENCY:
            with self.evidence.lock:
                self.evidence.messages.append((org, request.phase))
                self.evidence.equivocated = request.body
            return pb.SubmitUpdateResponse(acknowledgement_id="forged")
        return super().SubmitMessage(request, context)


def show_different_survivor_sets(
    evil: EvilServicer, response: pb.GetTaskResponse, org: str
) -> None:
    if response.kind != pb.TASK_KIND_SECAGG_STEP:
        return
    if response.phase == pb.ROUND_PHASE_CONSISTENCY and org == "org-a":
        del response.secagg.survivors[:]
        response.secagg.survivors.extend(["org-a", "org-b"])
    request = _unmask(response)
    signature = evil.evidence.equivocated
    if request is not None and signature:
        signatures = (*request.signatures, ConsistencySignature.from_bytes(signature))
        tampered = UnmaskRequest(request.survivors, request.dropped, signatures)
        response.secagg.unmask_request = tampered.to_bytes()


@pytest.mark.slow  # about 4 s
def test_equivocation_about_the_survivor_set_is_detected(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: Any,
    run_daemon: Callable[..., DaemonThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    evidence = Evidence()
    running = start_test_coordinator(
        0,
        participant_servicer=lambda s, m: EquivocatingServicer(
            s, m, show_different_survivor_sets, evidence
        ),
    )
    target = f"127.0.0.1:{running.port}"
    with AdminClient(target, pki.admin_tls()) as admin:
        start_daemons(admin, target, run_daemon)
        job_id = admin.create_job(secure_spec(phase_timeout=2.0), initial_weights()).job_id
        admin.start_job(job_id)
        status = wait_for_job(
            admin, job_id, lambda s: s.state == pb.JOB_STATE_FAILED, "the job to fail", 40
        )
    assert evidence.equivocated  # org-a signed the smaller set it was shown
    assert evidence.sent(pb.ROUND_PHASE_UNMASK) == []
    (round_,) = status.rounds
    assert "phase unmask closed with 0 of 2 answers" in round_.abort_reason
    refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    detected = [m for m in refusals if "is not on this survivor set" in m]
    assert len(detected) >= 2, refusals  # org-b and org-c


class ShareForgingServicer(EvilServicer):
    """The real participant API, but org-a's UNMASK answer reaches the coordinator with one
    share changed (its signature kept): what a coordinator that forged shares would hold."""

    refusals: list[tuple[grpc.StatusCode, str]]

    def SubmitMessage(  # noqa: N802
        self, request: pb.SubmitMessageRequest, context: grpc.ServicerContext
    ) -> pb.SubmitUpdateResponse:
        if current_identity().org_id != "org-a" or request.phase != pb.ROUND_PHASE_UNMASK:
            return super().SubmitMessage(request, context)
        answer = UnmaskResponse.from_bytes(request.body)
        first, *rest = answer.self_mask_shares
        moved = RevealedShare(first.owner, Share(first.share.x, (first.share.y + 1) % FIELD_PRIME))
        forged = dataclasses.replace(answer, self_mask_shares=(moved, *rest))
        tampered = pb.SubmitMessageRequest()
        tampered.CopyFrom(request)
        tampered.body = forged.to_bytes()
        try:
            return super().SubmitMessage(tampered, context)
        except Exception as exc:
            # What the transport's interceptor answers the daemon with.
            self.refusals.append(status_for(exc))
            raise


def _pass_tasks(evil: EvilServicer, response: pb.GetTaskResponse, org: str) -> None:
    """Tasks go out as the coordinator made them."""


@pytest.mark.slow  # about 5 s
def test_an_unmask_answer_with_a_forged_share_is_invalid_argument(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: Any,
    run_daemon: Callable[..., DaemonThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Over gRPC, the coordinator refuses an UNMASK answer whose share does not carry its
    sender's signature with INVALID_ARGUMENT and keeps nothing of it; the round completes with
    the answers of the others (t = 2 of 3), whose signatures verify."""
    servicer: list[ShareForgingServicer] = []

    def make(service: CoordinatorService, membership: MembershipService) -> ParticipantServicer:
        made = ShareForgingServicer(service, membership, _pass_tasks, Evidence())
        made.refusals = []
        servicer.append(made)
        return made

    running = start_test_coordinator(0, participant_servicer=make)
    target = f"127.0.0.1:{running.port}"
    with AdminClient(target, pki.admin_tls()) as admin:
        start_daemons(admin, target, run_daemon)
        job_id = admin.create_job(secure_spec(phase_timeout=5.0), initial_weights()).job_id
        admin.start_job(job_id)
        status = wait_for_job(
            admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the job to complete", 40
        )
    (round_,) = status.rounds
    assert round_.phase == pb.ROUND_PHASE_COMMITTED, round_.abort_reason
    assert sorted(round_.contributors) == list(ORGS)
    (made,) = servicer
    assert made.refusals, "org-a sent no unmask answer"
    refused = [r.getMessage() for r in caplog.records if "coordinator refused" in r.getMessage()]
    assert any("the unmask message was refused" in line for line in refused), refused
    # org-a answers again while the phase waits for it; once its deadline has passed, a late
    # answer is refused for that reason before its signature is looked at.
    late = [(c, d) for c, d in made.refusals if "the phase deadline has passed" in d]
    forged = [(c, d) for c, d in made.refusals if (c, d) not in late]
    assert forged, made.refusals
    for code, details in forged:
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert "the unmask response of 'org-a' is not signed by 'org-a'" in details
    assert all(code is grpc.StatusCode.FAILED_PRECONDITION for code, _ in late)
    with running.store.transaction() as tx:
        stored = tx.list_phase_messages(round_.round_id)
    assert sorted(m.org_id for m in stored if m.phase == "unmask") == ["org-b", "org-c"]
