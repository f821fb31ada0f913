"""In-process secure rounds: ``SecureRoundParticipant``s against a real ``SecAggServer``.

The server stands in for the coordinator: it builds each phase's task exactly as the wire
contract describes (key list with certificates, routed shares, survivor set, unmask request), and
each participant talks to it through a fake transport that records what was sent.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from examples.synthetic.task import task
from fedsilo.codec import PayloadHeader, decode_tensors
from fedsilo.paillier_inputs import RoundInputsInfo
from fedsilo.pki import DemoPki, load_certificate
from fedsilo.privacy import DifferentialPrivacy
from fedsilo.protection import (
    Protection,
    SecAggParameters,
    decode_share_list,
)
from fedsilo.tasks import LocalData, TrainingSettings, TrainResult
from fedsilo.tls import TlsFiles
from participant.domain.assignments import (
    AdvertisedKeys,
    Assignment,
    AssignmentKind,
    SecAggPhase,
    SecAggStepData,
    StepOutcome,
    SubmissionReceipt,
)
from participant.domain.policy import AcceptPolicy
from participant.service.answers import AnswerStore
from participant.service.identity import IdentityFiles
from participant.service.job_terms import JobTermsStore
from participant.service.ledger import ContributionLedger
from participant.service.membership import MembershipStore
from participant.service.secagg_state import SecAggStateStore
from participant.service.secure_rounds import SecureRoundParticipant, model_digest, round_config
from secagg import (
    ConsistencySignature,
    MaskedInput,
    RandomSource,
    SecAggServer,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
    verifying_key,
)

T = TypeVar("T")
Weights = list[npt.NDArray[Any]]

ORGS = ("org-a", "org-b", "org-c")
JOB_ID = "job-1"
TASK_NAME = "digits-linear"
TRAINING = TrainingSettings(local_epochs=1, batch_size=32, learning_rate=0.5, seed=7)
VECTOR_LENGTH = 64 * 10 + 10 + 1


def parameters(**overrides: Any) -> SecAggParameters:
    values: dict[str, Any] = {
        "threshold": 2,
        "modulus_bits": 32,
        "vector_length": VECTOR_LENGTH,
        "cohort": ORGS,
        "clip": 1.0,
        "levels_bits": 16,
        "max_participants": 8,
        "max_weight": 1000,
    }
    values.update(overrides)
    return SecAggParameters(**values)


def local_data(org: str) -> LocalData:
    return task.load_data({"partition": ORGS.index(org), "num_partitions": len(ORGS), "seed": 0})


def base_weights() -> Weights:
    return task.initial_weights(3)


@dataclass
class Sent:
    assignment: Assignment
    body: bytes = b""
    header: PayloadHeader | None = None
    payload: bytes = b""
    num_examples: int = -1
    train_loss: float = -1.0


class FakeTransport:
    """``SecureRoundClient`` in memory: serves one model version and records every answer."""

    def __init__(self, weights: Weights, version: int = 0) -> None:
        self.weights = weights
        self.version = version
        self.sent: list[Sent] = []
        self.downloads = 0

    def retrying(self, call: Callable[[], T]) -> T:
        return call()

    def download_model(self, job_id: str, version: int) -> tuple[int, Weights]:
        self.downloads += 1
        return self.version, [w.copy() for w in self.weights]

    def submit_update(
        self,
        assignment: Assignment,
        num_examples: int,
        train_loss: float,
        header: PayloadHeader,
        payload: bytes,
    ) -> SubmissionReceipt:
        duplicate = any(s.payload == payload for s in self.sent)
        self.sent.append(Sent(assignment, b"", header, payload, num_examples, train_loss))
        return SubmissionReceipt(f"ack-{len(self.sent)}", duplicate)

    def download_round_inputs(
        self, job_id: str, round_id: str, announced: RoundInputsInfo
    ) -> bytes | None:
        raise AssertionError("only a paillier round's members download inputs to vet")

    def submit_message(self, assignment: Assignment, body: bytes) -> SubmissionReceipt:
        duplicate = any(s.body == body for s in self.sent)
        self.sent.append(Sent(assignment, body))
        return SubmissionReceipt(f"ack-{len(self.sent)}", duplicate)


@dataclass
class Participant:
    org: str
    state_dir: Path
    transport: FakeTransport
    rounds: SecureRoundParticipant
    pki: DemoPki
    data: LocalData = field(repr=False)
    membership: MembershipStore | None = None

    def step(self, assignment: Assignment) -> StepOutcome:
        return self.rounds.step(assignment)

    def last(self) -> Sent:
        return self.transport.sent[-1]

    def restart(self) -> Participant:
        """New objects over the same state directory, as after a process restart."""
        return make_participant(self.org, self.state_dir, self.pki, self.transport, self.data)

    @property
    def states(self) -> SecAggStateStore:
        return SecAggStateStore(self.state_dir)

    @property
    def answers(self) -> AnswerStore:
        return AnswerStore(self.state_dir)


def identity_files(pki: DemoPki, org: str) -> TlsFiles:
    files = pki.participants[org]
    return TlsFiles(pki.ca_cert, files.cert_path, files.key_path)


def membership_store(
    state_dir: Path, pki: DemoPki, document: bytes | None = None, *, required: bool = True
) -> MembershipStore:
    """The participant's membership store holding ``document`` (the demo's list if None)."""
    ca = load_certificate(pki.ca_cert)
    store = MembershipStore(state_dir, lambda: ca, required=required)
    store.offer(pki.membership_list.read_bytes() if document is None else document)
    return store


def make_participant(
    org: str,
    state_dir: Path,
    pki: DemoPki,
    transport: FakeTransport | None = None,
    data: LocalData | None = None,
    accept: AcceptPolicy | None = None,
    membership: MembershipStore | None = None,
    random: RandomSource = os.urandom,
) -> Participant:
    """A participant with ``accept`` as its own limits (the configuration's defaults if None)
    holding ``membership`` (the demo consortium's list if None)."""
    membership = membership if membership is not None else membership_store(state_dir, pki)
    accept = accept if accept is not None else AcceptPolicy()
    transport = transport or FakeTransport(base_weights())
    data = data if data is not None else local_data(org)

    def train(assignment: Assignment, weights: Weights) -> TrainResult:
        assert assignment.task_name == TASK_NAME
        return task.train(weights, data, assignment.round_settings())

    rounds = SecureRoundParticipant(
        transport,
        SecAggStateStore(state_dir),
        AnswerStore(state_dir),
        IdentityFiles(identity_files(pki, org)),
        train,
        terms=JobTermsStore(state_dir, accept),
        ledger=ContributionLedger(state_dir),
        membership=membership,
        random=random,
    )
    return Participant(org, state_dir, transport, rounds, pki, data, membership)


def certificate_pem(pki: DemoPki, org: str) -> bytes:
    return pki.participants[org].cert_path.read_bytes()


class Coordinator:
    """One round at a real SecAggServer, producing the tasks the wire contract describes."""

    def __init__(
        self,
        pki: DemoPki,
        params: SecAggParameters | None = None,
        *,
        round_number: int = 1,
        model_version: int = 0,
        round_id: str | None = None,
        training: TrainingSettings = TRAINING,
        privacy: DifferentialPrivacy | None = None,
    ) -> None:
        self.pki = pki
        self.privacy = privacy or DifferentialPrivacy()
        self.params = params or parameters()
        self.round_id = round_id or str(uuid.uuid4())
        self.round_number = round_number
        self.model_version = model_version
        self.training = training
        # The round as honest participants sign it: its context binds the served base model.
        keys_task = Coordinator.task(self, SecAggPhase.KEYS)
        self.config = round_config(keys_task, self.params, model_digest(base_weights()))
        self.verifying_keys = {
            org: verifying_key(load_certificate(pki.participants[org].cert_path).public_key())
            for org in self.params.cohort
        }
        self.server = SecAggServer(self.config, verifying_keys=self.verifying_keys)
        self.key_list: tuple[SignedKeys, ...] = ()
        self.survivors: tuple[str, ...] = ()
        self.unmask: UnmaskRequest | None = None

    def task(self, phase: SecAggPhase, **step: Any) -> Assignment:
        return Assignment(
            kind=AssignmentKind.TRAIN
            if phase is SecAggPhase.INPUTS
            else AssignmentKind.SECAGG_STEP,
            job_id=JOB_ID,
            task_name=TASK_NAME,
            round_id=self.round_id,
            round_number=self.round_number,
            phase=phase.value,
            model_version=self.model_version,
            training=self.training,
            protection=Protection.SECAGG,
            secagg=SecAggStepData(parameters=step.pop("parameters", self.params), **step),
            privacy=self.privacy,
        )

    # -- the tasks of each phase ------------------------------------------------------------------

    def keys_task(self) -> Assignment:
        return self.task(SecAggPhase.KEYS)

    def shares_task(self, keys: Sequence[AdvertisedKeys] | None = None) -> Assignment:
        if keys is None:
            keys = [
                AdvertisedKeys(entry.to_bytes(), certificate_pem(self.pki, entry.participant))
                for entry in self.key_list
            ]
        return self.task(SecAggPhase.SHARES, keys=tuple(keys))

    def inputs_task(self, org: str) -> Assignment:
        shares = tuple(share.to_bytes() for share in self.server.shares_for(org))
        return self.task(SecAggPhase.INPUTS, shares=shares)

    def consistency_task(self) -> Assignment:
        return self.task(SecAggPhase.CONSISTENCY, survivors=self.survivors)

    def unmask_task(self, request: UnmaskRequest | None = None) -> Assignment:
        request = request or self.unmask
        assert request is not None
        return self.task(SecAggPhase.UNMASK, unmask_request=request.to_bytes())

    # -- receiving what participants sent ---------------------------------------------------------

    def receive(self, phase: SecAggPhase, org: str, sent: Sent) -> None:
        assert sent.assignment.phase == phase.value and sent.assignment.round_id == self.round_id
        if phase is SecAggPhase.KEYS:
            self.server.receive_keys(org, SignedKeys.from_bytes(sent.body))
        elif phase is SecAggPhase.SHARES:
            self.server.receive_shares(org, decode_share_list(sent.body))
        elif phase is SecAggPhase.INPUTS:
            assert sent.header is not None
            (vector,) = decode_tensors(sent.header, sent.payload)
            self.server.receive_masked_input(org, MaskedInput(org, vector))
        elif phase is SecAggPhase.CONSISTENCY:
            self.server.receive_consistency(org, ConsistencySignature.from_bytes(sent.body))
        else:
            self.server.receive_unmask(org, UnmaskResponse.from_bytes(sent.body))

    def close(self, phase: SecAggPhase) -> None:
        if phase is SecAggPhase.KEYS:
            self.key_list = tuple(self.server.close_keys())
        elif phase is SecAggPhase.SHARES:
            self.server.close_shares()
        elif phase is SecAggPhase.INPUTS:
            self.survivors = tuple(self.server.close_inputs())
        elif phase is SecAggPhase.CONSISTENCY:
            self.unmask = self.server.close_consistency()

    def task_for(self, phase: SecAggPhase, org: str) -> Assignment:
        if phase is SecAggPhase.KEYS:
            return self.keys_task()
        if phase is SecAggPhase.SHARES:
            return self.shares_task()
        if phase is SecAggPhase.INPUTS:
            return self.inputs_task(org)
        if phase is SecAggPhase.CONSISTENCY:
            return self.consistency_task()
        return self.unmask_task()

    def run_phase(
        self, phase: SecAggPhase, participants: Sequence[Participant], *, close: bool = True
    ) -> dict[str, Sent]:
        """Give every participant its task for ``phase``; each must answer once."""
        answers: dict[str, Sent] = {}
        for participant in participants:
            count = len(participant.transport.sent)
            outcome = participant.step(self.task_for(phase, participant.org))
            assert outcome is StepOutcome.ANSWERED, (participant.org, phase, outcome)
            assert len(participant.transport.sent) == count + 1
            answers[participant.org] = participant.last()
            self.receive(phase, participant.org, participant.last())
        if close:
            self.close(phase)
        return answers


PHASES = tuple(SecAggPhase)


def expected_mean(
    params: SecAggParameters, orgs: Sequence[str], settings: TrainingSettings
) -> tuple[npt.NDArray[np.float64], int]:
    """The weighted mean of the clipped deltas the named organizations train, and sum(w)."""
    base = base_weights()
    total = np.zeros(params.vector_length - 1)
    total_weight = 0
    for org in orgs:
        result = task.train(base, local_data(org), settings)
        delta = np.concatenate(
            [
                (np.asarray(t, np.float64) - np.asarray(b, np.float64)).ravel()
                for b, t in zip(base, result.weights, strict=True)
            ]
        )
        w = min(result.num_examples, params.max_weight)
        total += w * np.clip(delta, -params.clip, params.clip)
        total_weight += w
    return total / total_weight, total_weight
