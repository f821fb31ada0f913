"""In-process paillier jobs: participants' key ceremony, rounds and model chain, and a coordinator.

``CeremonyCoordinator`` keeps the ceremony's messages and hands out the steps as the wire
contract describes (the lowest org id deals once ``min_participants`` advertised, asked once;
the lowest confirmed holder seals for later job keys; a sealed key is received by its
addressee). ``PaillierRound`` runs one round at a real ``SecAggServer`` for the mask bookkeeping
and sums the encrypted inputs with ``add_ciphertexts``; at the end it publishes the model version
the coordinator would: the summed ciphertexts and the correction ``C = -masks mod R``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from secure_round_harness import (
    JOB_ID,
    TASK_NAME,
    TRAINING,
    Coordinator,
    FakeTransport,
    Sent,
    identity_files,
    membership_store,
    parameters,
)

from examples.synthetic.task import task
from fedsilo.codec import decode_tensors, tensors_sha256
from fedsilo.paillier_inputs import (
    ExclusionReport,
    RoundInputs,
    RoundInputsInfo,
    SignedInput,
    is_exclusion_report,
    verify_input,
)
from fedsilo.paillier_versions import (
    PaillierVersion,
    RoundTerms,
    RoundTranscript,
    round_key_fingerprint,
)
from fedsilo.pki import DemoPki
from fedsilo.protection import Protection, SecAggParameters, decode_share_list, flatten
from fedsilo.strategies import StrategyChoice
from fedsilo.tasks import LocalData, TrainingSettings, TrainResult
from participant.domain.assignments import (
    AdvertisedKeys,
    Assignment,
    AssignmentKind,
    KeyCeremonyStepData,
    SecAggPhase,
    StepOutcome,
    SubmissionReceipt,
)
from participant.domain.policy import AcceptPolicy
from participant.errors import CallStatus, RequestRefused
from participant.service.answers import AnswerStore
from participant.service.identity import IdentityFiles
from participant.service.job_terms import JobTermsStore
from participant.service.key_ceremony import CeremonyParticipant
from participant.service.ledger import ContributionLedger
from participant.service.membership import MembershipStore
from participant.service.paillier_jobs import PaillierJobs
from participant.service.paillier_state import PaillierStateStore
from participant.service.secagg_state import SecAggStateStore
from participant.service.secure_rounds import SecureRoundParticipant, round_config
from secagg import ConsistencySignature, SecAggServer, SignedKeys, decode_fields
from secagg.paillier import (
    DealtKey,
    JobKey,
    PaillierCiphertexts,
    PaillierPrivateKey,
    PaillierPublicKey,
    SealedKey,
    add_ciphertexts,
)

Weights = list[npt.NDArray[Any]]

ORGS4 = ("org-a", "org-b", "org-c", "org-d")
KEY_BITS = 2048
MIN_PARTICIPANTS = 3


def job_settings() -> SecAggParameters:
    """What the coordinator sends in a ceremony step: the job's settings, no round fields."""
    return replace(parameters(), threshold=0, cohort=())


def local_data(org: str) -> LocalData:
    return task.load_data({"partition": ORGS4.index(org), "num_partitions": 4, "seed": 0})


def initial_weights() -> Weights:
    return [np.asarray(w, dtype=np.float32) for w in task.initial_weights(3)]


class CeremonyCoordinator:
    """The coordinator's ceremony bookkeeping and the job's published model versions."""

    def __init__(self, pki: DemoPki, job_id: str = JOB_ID) -> None:
        self.pki = pki
        self.job_id = job_id
        self.job_keys: dict[str, tuple[bytes, bytes]] = {}
        self.dealt: tuple[str, bytes] | None = None
        self.sealed: dict[str, tuple[str, bytes]] = {}  # receiver -> (sender, SealedKey bytes)
        self.confirmed: dict[str, bytes] = {}
        self.generation = 0
        """The job's key generation the steps and rounds are of (a test rotating sets it)."""
        self.stopped: dict[str, str] = {}
        self.received: list[tuple[str, str, bytes]] = []
        self.models: dict[int, Weights] = {0: initial_weights()}
        self.round_inputs: dict[tuple[str, str], bytes] = {}
        """What DownloadRoundInputs serves, by (round id, organization)."""

    def certificate(self, org: str) -> bytes:
        return self.pki.participants[org].cert_path.read_bytes()

    # -- what participants send -------------------------------------------------------------

    def submit(self, org: str, action: str, body: bytes) -> SubmissionReceipt:
        duplicate = (org, action, body) in self.received
        self.received.append((org, action, body))
        if action == "job_key":
            assert JobKey.from_bytes(body).participant == org
            self.job_keys.setdefault(org, (body, self.certificate(org)))
        elif action == "dealt_key":
            assert self.dealt is None or self.dealt == (org, body)
            self.dealt = (org, body)
        elif action == "sealed":
            for item in decode_fields(body):
                sealed = SealedKey.from_bytes(item)
                assert sealed.sender == org
                self.sealed.setdefault(sealed.receiver, (org, item))
        elif action == "stopped":
            self.stopped[org] = body.decode()
        else:
            assert action == "confirm"
            self.confirmed[org] = body
        return SubmissionReceipt(f"ack-{len(self.received)}", duplicate)

    def sent_by(self, org: str) -> list[tuple[str, bytes]]:
        return [(action, body) for sender, action, body in self.received if sender == org]

    # -- the steps ----------------------------------------------------------------------------

    def public_key(self) -> PaillierPublicKey:
        assert self.dealt is not None
        return PaillierPublicKey.from_bytes(DealtKey.from_bytes(self.dealt[1]).public_key)

    def advertised(self, orgs: Sequence[str]) -> tuple[AdvertisedKeys, ...]:
        return tuple(AdvertisedKeys(*self.job_keys[org]) for org in orgs)

    def step_data(self, org: str) -> KeyCeremonyStepData | None:
        base = KeyCeremonyStepData(
            "", key_bits=KEY_BITS, parameters=job_settings(), generation=self.generation
        )
        if org not in self.job_keys:
            return replace(base, action="advertise")
        if self.dealt is None:
            if len(self.job_keys) < MIN_PARTICIPANTS or org != min(self.job_keys):
                return None
            return replace(
                base, action="deal", dealer=org, job_keys=self.advertised(sorted(self.job_keys))
            )
        dealer, dealt = self.dealt
        if org in self.confirmed:
            waiting = [
                o for o in sorted(self.job_keys) if o not in self.sealed and o not in (dealer, org)
            ]
            if waiting and org == min(self.confirmed):
                return replace(
                    base,
                    action="seal",
                    dealer=dealer,
                    job_keys=self.advertised(waiting),
                    dealt_key=dealt,
                )
            return None
        if org not in self.sealed:
            return None
        sender, sealed = self.sealed[org]
        return replace(
            base,
            action="receive",
            dealer=dealer,
            job_keys=self.advertised([sender]),
            dealt_key=dealt,
            dealer_certificate_pem=self.certificate(dealer),
            sealed_key=sealed,
        )

    def task(self, org: str, data: KeyCeremonyStepData | None = None) -> Assignment:
        data = data or self.step_data(org)
        assert data is not None, f"no ceremony step for {org}"
        return Assignment(
            AssignmentKind.KEY_CEREMONY,
            job_id=self.job_id,
            task_name=TASK_NAME,
            protection=Protection.PAILLIER,
            training=TRAINING,
            ceremony=data,
        )

    def latest(self) -> int:
        return max(self.models)


class PaillierTransport(FakeTransport):
    """One participant's view of the coordinator: the job's models, its ceremony and rounds."""

    def __init__(self, coordinator: CeremonyCoordinator, org: str) -> None:
        super().__init__(initial_weights())
        self.coordinator = coordinator
        self.org = org
        self.fail_ceremony_after: int | None = None
        self.refused_actions: set[str] = set()
        self.ceremony_calls = 0
        self.downloaded: list[int] = []
        self.downloaded_inputs = 0

    def download_model(self, job_id: str, version: int) -> tuple[int, Weights]:
        assert job_id == self.coordinator.job_id
        self.downloads += 1
        if version < 0:
            version = self.coordinator.latest()
        self.downloaded.append(version)
        return version, [w.copy() for w in self.coordinator.models[version]]

    def download_round_inputs(
        self, job_id: str, round_id: str, announced: RoundInputsInfo
    ) -> bytes | None:
        assert job_id == self.coordinator.job_id
        payload = self.coordinator.round_inputs.get((round_id, self.org))
        if payload is None:
            raise Refusal("a round's inputs are vetted only in its consistency phase")
        if RoundInputs.from_bytes(payload).info() != announced:
            return None
        self.downloaded_inputs += 1
        return payload

    def submit_ceremony(self, job_id: str, action: str, body: bytes) -> SubmissionReceipt:
        assert job_id == self.coordinator.job_id
        if self.fail_ceremony_after is not None and self.ceremony_calls >= self.fail_ceremony_after:
            raise Crash(f"{self.org} crashed before sending {action}")
        if action in self.refused_actions:
            raise Refusal(f"the coordinator refused the {action} message")
        self.ceremony_calls += 1
        return self.coordinator.submit(self.org, action, body)


class Crash(Exception):
    """Stands for a process killed between two calls."""


class Refusal(RequestRefused):
    """A definite refusal by the coordinator (FAILED_PRECONDITION)."""

    def __init__(self, details: str) -> None:
        super().__init__(CallStatus.FAILED_PRECONDITION, details)


@dataclass
class PaillierParticipant:
    org: str
    state_dir: Path
    transport: PaillierTransport
    pki: DemoPki
    generate: Callable[[int], PaillierPrivateKey]
    min_key_bits: int = KEY_BITS
    policy: AcceptPolicy = field(default_factory=AcceptPolicy)
    rounds: SecureRoundParticipant = field(init=False)
    ceremony: CeremonyParticipant = field(init=False)
    membership: MembershipStore = field(init=False)
    paillier: PaillierJobs = field(init=False)
    data: LocalData = field(init=False, repr=False)

    def __post_init__(self) -> None:
        identity = IdentityFiles(identity_files(self.pki, self.org))
        store = PaillierStateStore(self.state_dir)
        self.membership = membership_store(self.state_dir, self.pki)
        ledger = ContributionLedger(self.state_dir)
        self.paillier = PaillierJobs(
            store, self.transport, identity=identity, membership=self.membership, ledger=ledger
        )
        self.ceremony = CeremonyParticipant(
            self.transport,
            store,
            identity,
            membership=self.membership,
            ledger=ledger,
            generate_key=self.generate,
            min_key_bits=self.min_key_bits,
        )
        self.data = local_data(self.org)

        def train(assignment: Assignment, weights: Weights) -> TrainResult:
            return task.train(weights, self.data, assignment.round_settings())

        self.rounds = SecureRoundParticipant(
            self.transport,
            SecAggStateStore(self.state_dir),
            AnswerStore(self.state_dir),
            identity,
            train,
            paillier=self.paillier,
            terms=JobTermsStore(self.state_dir, self.policy),
            ledger=ledger,
            membership=self.membership,
        )

    def step(self, assignment: Assignment) -> StepOutcome:
        if assignment.kind is AssignmentKind.KEY_CEREMONY:
            return self.ceremony.step(assignment)
        return self.rounds.step(assignment)

    def last(self) -> Sent:
        return self.transport.sent[-1]

    def restart(self) -> PaillierParticipant:
        """New objects over the same state directory and transport (a process restart)."""
        self.transport.fail_ceremony_after = None
        return PaillierParticipant(
            self.org,
            self.state_dir,
            self.transport,
            self.pki,
            self.generate,
            self.min_key_bits,
            self.policy,
        )

    @property
    def store(self) -> PaillierStateStore:
        return PaillierStateStore(self.state_dir)

    def private_key(self) -> PaillierPrivateKey | None:
        """The job's key as a fresh process would read it from the state directory."""
        job_id = self.transport.coordinator.job_id
        return PaillierJobs(self.store, self.transport).private_key(job_id)

    def jobs(self) -> PaillierJobs:
        """The paillier jobs as a restarted process reads them from the state directory."""
        identity = IdentityFiles(identity_files(self.pki, self.org))
        return PaillierJobs(self.store, self.transport, identity=identity)


def make_participants(
    pki: DemoPki,
    root: Path,
    coordinator: CeremonyCoordinator,
    generate: Callable[[int], PaillierPrivateKey],
    orgs: Sequence[str] = ORGS4[:3],
    policy: AcceptPolicy | None = None,
) -> list[PaillierParticipant]:
    return [
        PaillierParticipant(
            org,
            root / org,
            PaillierTransport(coordinator, org),
            pki,
            generate,
            policy=policy or AcceptPolicy(),
        )
        for org in orgs
    ]


def run_ceremony(
    coordinator: CeremonyCoordinator, participants: Sequence[PaillierParticipant]
) -> None:
    """Offer every participant its step until nobody has one left."""
    progress = True
    while progress:
        progress = False
        for participant in participants:
            data = coordinator.step_data(participant.org)
            if data is None:
                continue
            outcome = participant.step(coordinator.task(participant.org, data))
            assert outcome is StepOutcome.ANSWERED, (participant.org, data.action, outcome)
            progress = True


def dealt_participants(
    pki: DemoPki, root: Path, coordinator: CeremonyCoordinator, key: PaillierPrivateKey
) -> list[PaillierParticipant]:
    """Participants of the first three organizations, ``key`` dealt to them by the ceremony."""
    everyone = make_participants(pki, root, coordinator, lambda bits: key)
    run_ceremony(coordinator, everyone)
    return everyone


class PaillierRound(Coordinator):
    """One paillier round: the SecAggServer keeps the mask bookkeeping, inputs are ciphertexts."""

    def __init__(
        self,
        pki: DemoPki,
        ceremony: CeremonyCoordinator,
        cohort: Sequence[str],
        base_version: int | None = None,
        strategy: StrategyChoice | None = None,
    ) -> None:
        super().__init__(pki, parameters(cohort=tuple(cohort), threshold=len(cohort) // 2 + 1))
        self.strategy = strategy or StrategyChoice()
        self.ceremony = ceremony
        self.base_version = ceremony.latest() if base_version is None else base_version
        self.public = ceremony.public_key()
        self.generation = ceremony.generation
        self.total: PaillierCiphertexts | None = None
        self.tag = 1
        self.encrypted: dict[str, bytes] = {}
        self.tags: dict[str, bytes] = {}
        self.signed: dict[str, SignedInput] = {}
        """Every input as its sender signed it (shown to the others at CONSISTENCY)."""
        self.evidence: tuple[SignedInput, ...] = ()
        """The signed inputs shown as evidence for exclusions (none in an honest round)."""
        self.reports: dict[str, ExclusionReport] = {}
        self.show_inputs = True
        """False: a coordinator whose CONSISTENCY step announces no inputs to vet."""
        self.messages: dict[SecAggPhase, list[tuple[str, bytes]]] = {}
        self.correction: npt.NDArray[Any] | None = None
        # Signed as a paillier round: its context binds the base version's served bytes.
        served = tensors_sha256(ceremony.models[self.base_version])
        key = round_key_fingerprint(ceremony.job_id, self.generation, self.public)
        self.config = round_config(self.keys_task(), self.params, served, key)
        self.server = SecAggServer(self.config, verifying_keys=self.verifying_keys)

    def task(self, phase: SecAggPhase, **step: Any) -> Assignment:
        return replace(
            super().task(phase, **step),
            protection=Protection.PAILLIER,
            model_version=self.base_version,
            round_number=self.base_version + 1,
            strategy=self.strategy,
        )

    def consistency_task_for(self, org: str) -> Assignment:
        """U3, announcing the other members' signed inputs and the evidence for any exclusion
        (served to ``org`` by its transport's ``download_round_inputs``)."""
        inputs = tuple(self.signed[other].to_bytes() for other in self.survivors if other != org)
        served = RoundInputs(inputs, tuple(item.to_bytes() for item in self.evidence))
        return self.serve_inputs(org, served)

    def serve_inputs(self, org: str, served: RoundInputs) -> Assignment:
        """The CONSISTENCY task of ``org`` announcing exactly ``served``."""
        task = self.task(SecAggPhase.CONSISTENCY, survivors=self.survivors)
        if not self.show_inputs:
            return task
        self.ceremony.round_inputs[(task.round_id, org)] = served.to_bytes()
        assert task.secagg is not None
        return replace(task, secagg=replace(task.secagg, round_inputs=served.info()))

    def task_for(self, phase: SecAggPhase, org: str) -> Assignment:
        if phase is SecAggPhase.CONSISTENCY:
            return self.consistency_task_for(org)
        return super().task_for(phase, org)

    def receive(self, phase: SecAggPhase, org: str, sent: Sent) -> None:
        if phase is SecAggPhase.CONSISTENCY and is_exclusion_report(sent.body):
            self.reports[org] = ExclusionReport.from_bytes(sent.body)
            return
        if phase is not SecAggPhase.INPUTS:
            super().receive(phase, org, sent)
            self.messages.setdefault(phase, []).append((org, sent.body))
            return
        assert sent.header is not None and sent.num_examples == 0 and sent.train_loss == 0.0
        data, tag, signature = decode_tensors(sent.header, sent.payload)
        assert data.dtype == np.uint8 and data.ndim == 1 and tag.dtype == np.uint8
        # Every input carries its sender's signature over the round: what the others vet.
        signed = SignedInput(org, data.tobytes(), tag.tobytes(), signature.tobytes())
        verify_input(self.verifying_keys[org], self.config, signed)
        self.signed[org] = signed
        item = PaillierCiphertexts.from_bytes(data.tobytes(), self.public)
        assert item.contributions == 1 and item.value_count == self.params.vector_length
        self.encrypted[org] = data.tobytes()
        self.tags[org] = tag.tobytes()
        self.total = (
            item if self.total is None else add_ciphertexts(self.public, [self.total, item])
        )
        self.tag = self.tag * int.from_bytes(tag.tobytes(), "big") % self.public.n_squared

    def exclude(self, orgs: Sequence[str]) -> None:
        """What the coordinator does on an exclusion report: U3 without ``orgs`` (dropouts now),
        the products without their inputs, their signed inputs kept as evidence, the server
        replayed up to CONSISTENCY with the new set."""
        self.evidence += tuple(self.signed[org] for org in orgs)
        for org in orgs:
            del self.encrypted[org], self.tags[org], self.signed[org]
        items = [
            PaillierCiphertexts.from_bytes(data, self.public) for data in self.encrypted.values()
        ]
        self.total = add_ciphertexts(self.public, items)
        self.tag = 1
        for tag in self.tags.values():
            self.tag = self.tag * int.from_bytes(tag, "big") % self.public.n_squared
        self.server = SecAggServer(self.config, verifying_keys=self.verifying_keys)
        for org, body in self.messages[SecAggPhase.KEYS]:
            self.server.receive_keys(org, SignedKeys.from_bytes(body))
        self.server.close_keys()
        for org, body in self.messages[SecAggPhase.SHARES]:
            self.server.receive_shares(org, decode_share_list(body))
        self.server.close_shares()
        zeros = np.zeros(self.params.vector_length, dtype=self.config.dtype)
        self.server.restore_inputs(sorted(self.encrypted), zeros)
        self.survivors = tuple(self.server.close_inputs())
        self.messages.pop(SecAggPhase.CONSISTENCY, None)
        for org, report in sorted(self.reports.items()):
            if org in self.encrypted:
                self.receive_signature(org, report.signature)

    def receive_signature(self, org: str, body: bytes) -> None:
        """A consistency signature (from a report, or as sent) on the current U3."""
        self.server.receive_consistency(org, ConsistencySignature.from_bytes(body))
        self.messages.setdefault(SecAggPhase.CONSISTENCY, []).append((org, body))

    def close(self, phase: SecAggPhase) -> None:
        if phase is SecAggPhase.INPUTS:
            zeros = np.zeros(self.params.vector_length, dtype=self.config.dtype)
            self.server.restore_inputs(sorted(self.encrypted), zeros)
        super().close(phase)

    def transcript(self) -> RoundTranscript:
        """The round's messages as the coordinator serves them with the version."""
        return RoundTranscript(
            round_id=self.round_id,
            cohort=self.config.cohort,
            threshold=self.config.threshold,
            context=self.config.context,
            keys=tuple(
                (org, body, self.ceremony.certificate(org))
                for org, body in self.messages.get(SecAggPhase.KEYS, [])
            ),
            shares=tuple(self.messages.get(SecAggPhase.SHARES, [])),
            contributors=tuple(sorted(self.encrypted)),
            consistency=tuple(self.messages.get(SecAggPhase.CONSISTENCY, [])),
            unmask=tuple(self.messages.get(SecAggPhase.UNMASK, [])),
        )

    def terms(self) -> RoundTerms:
        """What the round context binds of the job and the round, as the record carries it."""
        task = self.keys_task()
        return RoundTerms(
            round_number=task.round_number,
            task_name=task.task_name,
            algorithm=task.strategy.canonical(),
            training=task.training,
            min_participants=task.min_participants,
            dp=task.privacy,
        )

    def record(self, total: PaillierCiphertexts | None = None, tag: int | None = None) -> bytes:
        """The version record: summed ciphertexts, summed tag, transcript, generation, terms."""
        total = total or self.total
        assert total is not None
        tag_value = self.tag if tag is None else tag
        return PaillierVersion(
            total.to_bytes(),
            tag_value.to_bytes(self.public.ciphertext_bytes, "big"),
            self.transcript(),
            self.generation,
            self.terms(),
        ).to_bytes()

    def publish(self) -> int:
        """UNMASK is over: the correction from a zero sum, the new version (record, C)."""
        assert self.total is not None
        self.correction = self.server.finish()
        version = self.base_version + 1
        summed = np.frombuffer(self.record(), dtype=np.uint8).copy()
        self.ceremony.models[version] = [summed, self.correction]
        return version

    def run(self, participants: Sequence[PaillierParticipant]) -> int:
        for phase in SecAggPhase:
            self.run_phase(phase, participants)
        return self.publish()


def expected_total(
    params: SecAggParameters,
    base: Weights,
    orgs: Sequence[str],
    settings: TrainingSettings,
) -> npt.NDArray[Any]:
    """Σ quantize(delta_u, w_u) mod R: what a secagg round would unmask for these orgs."""
    spec = params.quantization()
    total = np.zeros(params.vector_length, dtype=spec.dtype)
    for org in orgs:
        result = task.train([w.copy() for w in base], local_data(org), settings)
        delta = [
            np.asarray(t, np.float64) - np.asarray(b, np.float64)
            for b, t in zip(base, result.weights, strict=True)
        ]
        weight = min(result.num_examples, params.max_weight)
        total += spec.quantize(flatten(delta), weight)
    return total


class ExportableTask:
    """The synthetic task with a Keras exporter that records what it was given (no TF)."""

    name = "exportable"

    def __init__(self) -> None:
        self.exported: list[tuple[Weights, Path]] = []

    def initial_weights(self, seed: int) -> Weights:
        return task.initial_weights(seed)

    def load_data(self, config: Any) -> LocalData:
        return task.load_data(config)

    def train(self, weights: Weights, data: LocalData, settings: TrainingSettings) -> TrainResult:
        return task.train(weights, data, settings)

    def evaluate(self, weights: Weights, data: LocalData) -> Any:
        return task.evaluate(weights, data)

    def export_keras(self, weights: Weights, path: Path) -> None:
        self.exported.append(([w.copy() for w in weights], path))
        path.write_bytes(b"keras")


exportable_task = ExportableTask()
"""Importable as ``paillier_harness:exportable_task`` from a participant configuration."""
