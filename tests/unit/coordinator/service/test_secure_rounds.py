"""Secure-aggregation rounds in the coordinator service, driven with real secagg participants.

No gRPC: each organization is a real ``SecAggClient`` with a CA-issued certificate, answering
what ``next_work`` asks through ``submit_message``/``submit_update``. The oracle: a
committed model equals base + the weighted mean delta over exactly the recorded contributors,
within the quantization bound; nothing is released with fewer than ``t``; bad messages change
nothing; the coordinator's files never hold one organization's update.

Longer than 600 lines on purpose: every phase, dropout point and refused message of a secure
round is driven by the same real participants, and each test starts from the phase before.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import load_pem_x509_certificate
from sqlalchemy import select

from coordinator.domain.jobs import Job, JobSpec, JobState, MetricReport, SecAggSettings
from coordinator.domain.rounds import Phase, Round
from coordinator.errors import ConflictingSubmission, InvalidRequest, NotFound, WrongRoundPhase
from coordinator.persistence import schema
from coordinator.persistence.blobs import BlobStore
from coordinator.persistence.store import Store
from coordinator.service.facade import CoordinatorService
from coordinator.service.membership import MembershipService
from coordinator.service.views import MessageSubmission, UpdateSubmission, WorkItem, WorkKind
from fedsilo.codec import PayloadHeader, decode_tensors, encode_tensors
from fedsilo.paillier_inputs import (
    ExclusionReport,
    RoundInputs,
    SignedInput,
    input_defect,
    sign_input,
    verify_input,
)
from fedsilo.paillier_versions import (
    PaillierVersion,
    key_scope,
    replay_correction,
    round_key_fingerprint,
    tag_binding,
)
from fedsilo.pki import Role, create_ca, make_csr, make_key, sign_csr
from fedsilo.protection import (
    Protection,
    SecAggParameters,
    decode_share_list,
    encode_share_list,
    flatten,
    round_context,
)
from fedsilo.strategies import StrategyChoice
from fedsilo.tasks import TrainingSettings
from secagg import (
    AgreementKeyPair,
    CohortPolicy,
    EncryptedShare,
    ParticipantContext,
    RevealedShare,
    RoundConfig,
    SecAggClient,
    SignedKeys,
    UnmaskRequest,
    VerifyingKey,
    encode_fields,
    verifying_key,
)
from secagg.paillier import (
    DealtKey,
    JobKey,
    PackingLayout,
    PaillierCiphertexts,
    PaillierPrivateKey,
    SealedKey,
    decrypt_integers,
    decrypt_vector,
    encrypt_integers,
    encrypt_vector,
    generate_private_key,
    input_tag,
    make_job_key,
    open_private_key,
    seal_private_key,
    sign_public_key,
    tag_matches,
)
from secagg.primitives.shamir import FIELD_PRIME, Share

T0 = 1_700_000_000.0
SHAPES = ((4, 3), (3,))
PHASE_S = 10.0
INPUTS_S = 60.0


@dataclass(frozen=True)
class Org:
    org_id: str
    key: Any
    certificate_pem: bytes


@pytest.fixture(scope="module")
def orgs() -> dict[str, Org]:
    ca = create_ca(now=dt.datetime.now(dt.UTC))
    made = {}
    for org_id in ("org-a", "org-b", "org-c", "org-d", "org-e", "mallory"):
        key = make_key()
        cert = sign_csr(ca, make_csr(org_id, Role.PARTICIPANT, key))
        made[org_id] = Org(org_id, key, cert.public_bytes(serialization.Encoding.PEM))
    return made


def base_weights() -> list[npt.NDArray[np.float32]]:
    return [np.full(shape, 0.25, dtype=np.float32) for shape in SHAPES]


def trained_weights(org_id: str) -> list[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(sum(org_id.encode()))
    return [(0.25 + rng.uniform(-0.6, 0.6, size=s)).astype(np.float32) for s in SHAPES]


EXAMPLES = {"org-a": 120, "org-b": 300, "org-c": 45, "org-d": 77, "org-e": 500}


class Clock:
    def __init__(self) -> None:
        self.now = T0


@dataclass
class Participant:
    """An honest secagg participant; ``stop_before`` is the first phase it no longer answers."""

    org: Org
    peers: dict[str, VerifyingKey]
    stop_before: Phase | None = None
    client: SecAggClient | None = None
    answered: list[Phase] = field(default_factory=list)
    dealer_key: PaillierPrivateKey | None = None
    job_pair: AgreementKeyPair | None = None
    paillier: PaillierPrivateKey | None = None
    generation: int = 0
    """The key generation of ``paillier``: a paillier round's context names that key."""
    tamper_input: Callable[[npt.NDArray[Any], SecAggParameters], npt.NDArray[Any]] | None = None
    """A malicious organization's change to its encoded input, before it is masked."""
    tamper_plaintexts: Callable[[PackingLayout, list[int]], None] | None = None
    """A malicious key holder's change to its packed plaintexts, before they are encrypted."""

    def ceremony(self, service: CoordinatorService, item: WorkItem) -> bool:
        """Answer one key-ceremony step honestly."""
        assert item.job is not None and item.ceremony is not None
        job_id, me, step = item.job.job_id, self.org.org_id, item.ceremony
        pem = self.org.certificate_pem
        # What the generation's keys sign and seal under (the job id for the first key).
        scope = key_scope(job_id, step.generation)

        def send(action: str, body: bytes) -> None:
            service.submit_ceremony(me, job_id, action, body, pem)

        def seal_for(advertised: tuple[tuple[bytes, bytes], ...]) -> None:
            assert self.paillier is not None and self.job_pair is not None
            sealed = []
            for signed, _ in advertised:
                receiver = JobKey.from_bytes(signed)
                receiver.verify(scope, self.peers[receiver.participant])
                sealed.append(
                    seal_private_key(scope, self.paillier, me, self.job_pair, receiver, os.urandom)
                )
            send("sealed", encode_fields(item.to_bytes() for item in sealed))

        if step.action == "advertise":
            self.job_pair, job_key = make_job_key(scope, me, self.org.key, os.urandom)
            send("job_key", job_key.to_bytes())
        elif step.action == "deal":
            assert self.dealer_key is not None
            self.paillier, self.generation = self.dealer_key, step.generation
            dealt = sign_public_key(scope, me, self.paillier.public_key, self.org.key)
            send("dealt_key", dealt.to_bytes())
            seal_for(tuple(k for k in step.job_keys if JobKey.from_bytes(k[0]).participant != me))
            send("confirm", self.paillier.public_key.fingerprint)
        elif step.action == "seal":
            seal_for(step.job_keys)
        else:
            assert step.action == "receive" and self.job_pair is not None
            dealt = DealtKey.from_bytes(step.dealt_key)
            public = dealt.verify(scope, self.peers[dealt.dealer])
            sender = JobKey.from_bytes(step.job_keys[0][0])
            sender.verify(scope, self.peers[sender.participant])
            sealed = SealedKey.from_bytes(step.sealed_key)
            self.paillier = open_private_key(scope, sealed, self.job_pair, sender, public)
            self.generation = step.generation
            send("confirm", public.fingerprint)
        return True

    def key_fingerprint(self, job: Job) -> bytes:
        """What a round of ``job`` binds of the job key held here (nothing under secagg)."""
        if job.spec.protection is not Protection.PAILLIER or self.paillier is None:
            return b""
        return round_key_fingerprint(job.job_id, self.generation, self.paillier.public_key)

    def act(self, service: CoordinatorService, item: WorkItem) -> bool:
        if item.kind is WorkKind.KEY_CEREMONY:
            return self.ceremony(service, item)
        assert item.round is not None and item.job is not None and item.secagg is not None
        phase = item.round.phase
        if self.stop_before is not None and _order(phase) >= _order(self.stop_before):
            return False
        p = item.secagg.parameters
        if phase is Phase.KEYS:
            config = RoundConfig(
                item.job.job_id,
                item.round.round_id,
                p.cohort,
                p.threshold,
                p.vector_length,
                p.modulus_bits,
                context=_context_as_an_honest_participant_computes_it(
                    service, item, self.key_fingerprint(item.job)
                ),
            )
            context = ParticipantContext(self.org.org_id, self.org.key, self.peers)
            # A simulated participant: it accepts any round the coordinator opens.
            policy = CohortPolicy(min_threshold_fraction=Fraction(1, 2), min_cohort=2)
            self.client = SecAggClient.start(config, context, policy)
            body = self.client.advertise_keys().to_bytes()
        else:
            assert self.client is not None
            if phase is Phase.SHARES:
                keys = [SignedKeys.from_bytes(signed) for signed, _ in item.secagg.keys]
                body = encode_share_list(self.client.share_keys(keys))
            elif phase is Phase.INPUTS:
                self.submit_input(service, item, p)
                self.answered.append(phase)
                return True
            elif phase is Phase.CONSISTENCY:
                body = self.consistency(service, item)
            else:
                request = UnmaskRequest.from_bytes(item.secagg.unmask_request)
                body = self.client.unmask(request).to_bytes()
        service.submit_message(
            self.org.org_id,
            MessageSubmission(item.job.job_id, item.round.round_id, phase, body),
            self.org.certificate_pem,
        )
        self.answered.append(phase)
        return True

    def consistency(self, service: CoordinatorService, item: WorkItem) -> bytes:
        """Sign U3; a key holder first vets the inputs shown and leaves malformed senders out."""
        assert self.client is not None and item.secagg is not None and item.round is not None
        survivors = list(item.secagg.survivors)
        bad: list[str] = []
        if self.paillier is not None:
            # The step announces the inputs; the member downloads them (DownloadRoundInputs).
            announced = item.secagg.round_inputs
            assert announced is not None
            payload = service.round_inputs(self.org.org_id, item.job.job_id, item.round.round_id)
            downloaded = RoundInputs.from_bytes(payload)
            assert downloaded.info() == announced
            p = item.secagg.parameters
            layout = PackingLayout(
                p.modulus_bits, p.max_participants, self.paillier.public_key.bits
            )
            binding = _binding(service, item)
            for raw in downloaded.inputs:
                shown = SignedInput.from_bytes(raw)
                verify_input(self.peers[shown.sender], self.client.config, shown)
                if input_defect(self.paillier, layout, p.vector_length, binding, shown):
                    bad.append(shown.sender)
        signature = self.client.sign_survivors([m for m in survivors if m not in bad]).to_bytes()
        return ExclusionReport(signature, tuple(bad)).to_bytes() if bad else signature

    def submit_input(
        self, service: CoordinatorService, item: WorkItem, p: SecAggParameters
    ) -> None:
        assert self.client is not None and item.round is not None and item.secagg is not None
        shares = [EncryptedShare.from_bytes(s) for s in item.secagg.shares]
        vector = p.quantization().quantize(delta(self.org.org_id), EXAMPLES[self.org.org_id])
        if self.tamper_input is not None:
            vector = self.tamper_input(vector.copy(), p)
        masked = self.client.mask_input(shares, vector)
        header, payload = encode_tensors([masked.vector])
        if self.paillier is not None:
            header, payload = _encrypted_input(
                service, item, self.paillier, masked.vector, p, self.tamper_plaintexts
            )
            data, tag = decode_tensors(header, payload)
            signed = sign_input(
                self.org.key, self.client.config, self.org.org_id, data.tobytes(), tag.tobytes()
            )
            header, payload = encode_tensors(
                [data, tag, np.frombuffer(signed.signature, dtype=np.uint8)]
            )
        service.submit_update(
            self.org.org_id,
            UpdateSubmission(
                item.round.job_id,
                item.round.round_id,
                Phase.INPUTS,
                item.round.base_version,
                0,
                0.0,
                header,
            ),
            payload,
        )


_PHASES = (Phase.KEYS, Phase.SHARES, Phase.INPUTS, Phase.CONSISTENCY, Phase.UNMASK)


def _order(phase: Phase) -> int:
    return _PHASES.index(phase)


def delta(org_id: str) -> npt.NDArray[np.float64]:
    return flatten(trained_weights(org_id)) - flatten(base_weights())


@dataclass
class Consortium:
    tmp: Path
    orgs: dict[str, Org]
    members: tuple[str, ...]
    clock: Clock = field(default_factory=Clock)
    stores: list[Store] = field(default_factory=list)
    participants: dict[str, Participant] = field(init=False)
    service: CoordinatorService = field(init=False)
    blobs: BlobStore = field(init=False)

    def __post_init__(self) -> None:
        self.restart()
        peers = {o: v.certificate_pem for o, v in self.orgs.items()}
        from cryptography import x509

        keys: dict[str, VerifyingKey] = {
            o: x509.load_pem_x509_certificate(pem).public_key()  # type: ignore[misc]
            for o, pem in peers.items()
        }
        self.participants = {
            m: Participant(self.orgs[m], {o: k for o, k in keys.items() if o != m})
            for m in self.members
        }
        membership = MembershipService(self.store, auto_approve=True, clock=lambda: self.clock.now)
        for member in self.members:
            membership.authenticate_participant(member, require_active=False)

    def restart(self) -> None:
        self.stores.append(Store(f"sqlite:///{self.tmp / 'coordinator.db'}"))
        self.blobs = BlobStore(self.tmp / "blobs")
        ids = itertools.count(1)
        prefix = len(self.stores)
        self.service = CoordinatorService(
            self.stores[-1],
            self.blobs,
            clock=lambda: self.clock.now,
            new_id=lambda: f"id-{prefix}-{next(ids)}",
        )

    @property
    def store(self) -> Store:
        return self.stores[-1]

    def start(self, **changes: Any) -> Job:
        spec = JobSpec(
            name="secure",
            task_name="digits-linear",
            num_rounds=1,
            min_participants=2,
            round_timeout_seconds=INPUTS_S,
            phase_timeout_seconds=PHASE_S,
            max_failed_rounds=0,
            training=TrainingSettings(seed=1),
        )
        header, payload = encode_tensors(base_weights())
        job = self.service.create_job(
            dataclasses.replace(spec, **changes), header, payload, "admin"
        )
        self.service.start_job(job.job_id, "admin")
        return job

    def round(self, job: Job) -> Round:
        return self.service.get_job(job.job_id).rounds[-1]

    def step(self) -> bool:
        """Every participant answers what it is asked once; True if anyone answered."""
        acted = False
        for member, participant in self.participants.items():
            item = self.service.next_work(member)
            if item.kind in (WorkKind.SECAGG_STEP, WorkKind.TRAIN, WorkKind.KEY_CEREMONY):
                acted |= participant.act(self.service, item)
        return acted

    def run(self, job: Job, max_steps: int = 20) -> Round:
        """Answer until nobody has anything to do, then let deadlines pass until the round ends."""
        for _ in range(max_steps):
            if not self.service.get_job(job.job_id).rounds:  # a key ceremony comes first
                assert self.step(), "nothing to do and no round"
                continue
            round_ = self.round(job)
            if round_.is_terminal:
                return round_
            if not self.step():
                self.clock.now = round_.deadline_at + 1
                self.service.tick()
        raise AssertionError("the round did not end")

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture
def consortium(
    tmp_path: Path, orgs: dict[str, Org], new_coordinator_db: Callable[[Path], str]
) -> Iterator[Consortium]:
    new_coordinator_db(tmp_path / "coordinator.db")  # the schema made once per session
    made = Consortium(tmp_path, orgs, ("org-a", "org-b", "org-c", "org-d", "org-e"))
    yield made
    made.close()


def committed_delta(c: Consortium, job: Job) -> npt.NDArray[np.float64]:

    version, header, payload = c.service.read_model(job.job_id, -1)
    assert version == 1
    assert hashlib.sha256(payload).digest() == header.sha256
    return flatten(decode_tensors(header, payload)) - flatten(base_weights())


def expected_delta(contributors: tuple[str, ...]) -> npt.NDArray[np.float64]:
    total = sum(EXAMPLES[m] for m in contributors)
    clip = SecAggSettings().clip
    return sum(np.clip(delta(m), -clip, clip) * EXAMPLES[m] for m in contributors) / total  # type: ignore[return-value]


def bound() -> float:
    # The quantization bound plus the float32 rounding of the stored weights.
    return math.ldexp(1.0, -(SecAggSettings().levels_bits + 1)) + 1e-6


# -- honest rounds ------------------------------------------------------------------------------


def test_a_secure_round_commits_the_weighted_mean_of_everyone(consortium: Consortium) -> None:
    job = consortium.start()
    assert consortium.round(job).phase is Phase.KEYS
    finished = consortium.run(job)
    assert finished.phase is Phase.COMMITTED, finished.abort_reason
    assert sorted(finished.contributors) == sorted(consortium.members)
    assert finished.total_weight == sum(EXAMPLES.values())
    got = committed_delta(consortium, job)
    assert np.max(np.abs(got - expected_delta(consortium.members))) <= bound()
    for participant in consortium.participants.values():
        assert participant.answered == list(_PHASES)


def _oversized_coordinate(vector: npt.NDArray[Any], p: SecAggParameters) -> npt.NDArray[Any]:
    vector[0] = vector.dtype.type(1 << (p.modulus_bits - 3))  # far outside the clip box
    return vector


def _oversized_weight(vector: npt.NDArray[Any], p: SecAggParameters) -> npt.NDArray[Any]:
    vector[-1] = vector.dtype.type(p.max_weight * len(p.cohort) * 4)
    return vector


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_oversized_coordinate, "outside the clip box"),
        (_oversized_weight, "out-of-range weight"),
    ],
    ids=["coordinate", "weight"],
)
def test_an_aggregate_no_honest_inputs_can_add_up_to_is_never_committed(
    consortium: Consortium,
    tamper: Callable[[npt.NDArray[Any], SecAggParameters], npt.NDArray[Any]],
    reason: str,
) -> None:
    # One organization sends masked words outside its range (the mask hides which); the sum
    # would make its input the model. The round is aborted, nothing is committed.
    consortium.participants["org-a"].tamper_input = tamper
    job = consortium.start()
    finished = consortium.run(job)
    assert finished.phase is Phase.ABORTED
    assert reason in finished.abort_reason
    with consortium.store.transaction() as tx:
        assert tx.get_model_version(job.job_id, 1) is None


def test_the_default_protection_is_secure_aggregation(consortium: Consortium) -> None:
    header, payload = encode_tensors(base_weights())
    job = consortium.service.create_job(JobSpec(name="d", task_name="t"), header, payload, "admin")
    assert job.spec.protection is Protection.SECAGG


def test_protection_none_is_logged_as_a_warning(
    consortium: Consortium, caplog: pytest.LogCaptureFixture
) -> None:
    header, payload = encode_tensors(base_weights())
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        consortium.service.create_job(
            JobSpec(name="plain", task_name="t", protection=Protection.NONE), header, payload, "a"
        )
    assert any("protection 'none'" in r.getMessage() for r in caplog.records)


def test_dropout_after_shares_is_cancelled_and_left_out_of_the_sum(
    consortium: Consortium,
) -> None:
    # R2: org-e sent its shares but no masked input; its pairwise masks are removed via s_sk.
    consortium.participants["org-e"].stop_before = Phase.INPUTS
    job = consortium.start()
    finished = consortium.run(job)
    assert finished.phase is Phase.COMMITTED, finished.abort_reason
    survivors = ("org-a", "org-b", "org-c", "org-d")
    assert sorted(finished.contributors) == list(survivors)
    assert finished.total_weight == sum(EXAMPLES[m] for m in survivors)
    assert np.max(np.abs(committed_delta(consortium, job) - expected_delta(survivors))) <= bound()


def test_an_organization_revoked_mid_round_is_a_dropout_at_once(consortium: Consortium) -> None:
    # org-e sent its keys and shares, then is revoked while the others train: the round goes on
    # without it as soon as the others answered, on a clock that never reaches a deadline.
    consortium.participants["org-e"].stop_before = Phase.INPUTS
    job = consortium.start()
    for _ in range(20):
        if consortium.service.get_job(job.job_id).rounds and (
            _order(consortium.round(job).phase) >= _order(Phase.INPUTS)
        ):
            break
        consortium.step()
    assert consortium.round(job).phase is Phase.INPUTS
    MembershipService(consortium.store, clock=lambda: consortium.clock.now).revoke("org-e", "admin")
    start = consortium.clock.now
    for _ in range(20):
        if consortium.round(job).is_terminal:
            break
        consortium.step()
        consortium.service.tick()
    finished = consortium.round(job)
    assert consortium.clock.now == start  # no deadline was let pass
    assert finished.phase is Phase.COMMITTED, finished.abort_reason
    survivors = ("org-a", "org-b", "org-c", "org-d")
    assert sorted(finished.contributors) == list(survivors)
    assert np.max(np.abs(committed_delta(consortium, job) - expected_delta(survivors))) <= bound()


@pytest.mark.parametrize("phase", [Phase.CONSISTENCY, Phase.UNMASK])
def test_dropout_after_the_masked_input_stays_in_the_sum(
    consortium: Consortium, phase: Phase
) -> None:
    # R1: org-a sent its input and then vanished; 4 of 5 still reach t = secure_threshold(5) = 4.
    consortium.participants["org-a"].stop_before = phase
    job = consortium.start()
    finished = consortium.run(job)
    assert finished.phase is Phase.COMMITTED, finished.abort_reason
    assert sorted(finished.contributors) == sorted(consortium.members)
    got = committed_delta(consortium, job)
    assert np.max(np.abs(got - expected_delta(consortium.members))) <= bound()


@pytest.mark.parametrize("phase", _PHASES)
def test_fewer_than_t_answers_abort_and_release_nothing(
    consortium: Consortium, phase: Phase
) -> None:
    # R3/R4: 3 of 5 stop answering at `phase`; t = 4 cannot be met.
    for member in ("org-c", "org-d", "org-e"):
        consortium.participants[member].stop_before = phase
    job = consortium.start()
    finished = consortium.run(job)
    assert finished.phase is Phase.ABORTED
    assert f"phase {phase.value} closed with 2 of" in (finished.abort_reason or "")
    assert consortium.service.get_job(job.job_id).job.model_version == 0
    # The participants are told when they ask about the round.
    (outcome,) = consortium.service.round_outcomes([finished.round_id])
    assert outcome.phase is Phase.ABORTED and outcome.reason == finished.abort_reason


def test_a_configured_threshold_above_the_majority_is_enforced(consortium: Consortium) -> None:
    consortium.participants["org-e"].stop_before = Phase.INPUTS
    job = consortium.start(secagg=SecAggSettings(threshold=5))
    finished = consortium.run(job)
    assert finished.phase is Phase.ABORTED
    assert "fewer than the 5 required" in (finished.abort_reason or "")


def test_no_organization_live_opens_no_round_and_fails_no_tick(consortium: Consortium) -> None:
    # Every organization down at once (a chaos run kills them all): the next round waits.
    for participant in consortium.participants.values():
        participant.stop_before = Phase.KEYS
    job = consortium.start(num_rounds=2, max_failed_rounds=5)
    assert consortium.run(job).phase is Phase.ABORTED
    consortium.clock.now += 3600.0  # nobody called in since: no organization is live
    consortium.service.tick()  # a cohort of none raised InvalidInput here
    view = consortium.service.get_job(job.job_id)
    assert view.job.state is JobState.RUNNING and len(view.rounds) == 1
    membership = MembershipService(consortium.store, clock=lambda: consortium.clock.now)
    for member in consortium.members:
        membership.authenticate_participant(member)
    consortium.service.tick()
    assert len(consortium.service.get_job(job.job_id).rounds) == 2


def test_a_restarted_coordinator_continues_the_round_from_the_database(
    consortium: Consortium,
) -> None:
    job = consortium.start()
    for _ in range(3):  # keys, shares, inputs
        consortium.step()
    assert consortium.round(job).phase is Phase.CONSISTENCY
    consortium.restart()
    finished = consortium.run(job)
    assert finished.phase is Phase.COMMITTED, finished.abort_reason
    got = committed_delta(consortium, job)
    assert np.max(np.abs(got - expected_delta(consortium.members))) <= bound()


def test_unknown_rounds_are_reported_as_ended(consortium: Consortium) -> None:
    job = consortium.start()
    open_round = consortium.round(job)
    assert consortium.service.round_outcomes([open_round.round_id]) == []
    (unknown,) = consortium.service.round_outcomes(["no-such-round"])
    assert unknown.phase is Phase.ABORTED


# -- bad messages change nothing -----------------------------------------------------------------


def _state(c: Consortium) -> tuple[int, int, int]:
    with c.store.engine.connect() as conn:
        counts = [
            len(conn.execute(select(table)).all())
            for table in (schema.submissions, schema.phase_messages)
        ]
        versions = conn.execute(select(schema.rounds.c.row_version)).all()
    return counts[0], counts[1], sum(v[0] for v in versions)


def _keys_message(c: Consortium, job: Job, member: str) -> tuple[MessageSubmission, bytes]:
    item = c.service.next_work(member)
    assert item.kind is WorkKind.SECAGG_STEP and item.round is not None
    participant = c.participants[member]
    assert participant.act(c.service, item)  # sends and records its keys
    assert participant.client is not None
    body = participant.client.advertise_keys().to_bytes()
    return MessageSubmission(job.job_id, item.round.round_id, Phase.KEYS, body), body


def test_an_identical_message_is_acknowledged_once_and_a_different_one_refused(
    consortium: Consortium,
) -> None:
    job = consortium.start()
    message, _ = _keys_message(consortium, job, "org-a")
    pem = consortium.orgs["org-a"].certificate_pem
    before = _state(consortium)
    again = consortium.service.submit_message("org-a", message, pem)
    assert again.duplicate
    other = dataclasses.replace(message, body=message.body[:-1] + bytes([message.body[-1] ^ 1]))
    with pytest.raises(ConflictingSubmission):
        consortium.service.submit_message("org-a", other, pem)
    assert _state(consortium) == before


def _bad_messages(c: Consortium, job: Job) -> Iterator[tuple[str, str, MessageSubmission, bytes]]:
    round_id = c.round(job).round_id
    pem = c.orgs["org-b"].certificate_pem
    mallory_pem = c.orgs["mallory"].certificate_pem
    good, body = _keys_message(c, job, "org-b")
    keys = SignedKeys.from_bytes(body)
    forged = SignedKeys(keys.participant, keys.masking_key, keys.encryption_key, keys.signature)
    yield "org-c", "garbage", dataclasses.replace(good, body=b"\x00garbage"), pem
    yield "org-c", "not signed", dataclasses.replace(good, body=forged.to_bytes()), pem
    yield "org-c", "keys of another org", good, pem
    yield "mallory", "not in the cohort", good, mallory_pem
    yield "org-c", "wrong phase", dataclasses.replace(good, phase=Phase.SHARES), pem
    yield "org-c", "INPUTS by message", dataclasses.replace(good, phase=Phase.INPUTS), pem
    yield "org-c", "other round", dataclasses.replace(good, round_id="nope"), pem
    yield "org-c", "no certificate", dataclasses.replace(good, body=body), b""
    assert round_id


def test_bad_messages_are_refused_and_change_nothing(consortium: Consortium) -> None:
    job = consortium.start()
    cases = list(_bad_messages(consortium, job))
    before = _state(consortium)
    for sender, what, message, pem in cases:
        with pytest.raises((InvalidRequest, WrongRoundPhase, NotFound)):
            consortium.service.submit_message(sender, message, pem)
        assert _state(consortium) == before, what


def test_an_unmask_answer_not_signed_by_its_sender_is_refused_and_changes_nothing(
    consortium: Consortium,
) -> None:
    """The shares of an UNMASK answer count only with their sender's signature over them and
    the round: a forged or unsigned answer is refused like any bad message (INVALID_ARGUMENT)."""
    job = consortium.start()
    for _ in range(6):
        if consortium.round(job).phase is Phase.UNMASK:
            break
        assert consortium.step()
    round_ = consortium.round(job)
    assert round_.phase is Phase.UNMASK
    answers = {}
    for member in ("org-a", "org-b"):
        item = consortium.service.next_work(member)
        assert item.secagg is not None and consortium.participants[member].client is not None
        request = UnmaskRequest.from_bytes(item.secagg.unmask_request)
        answers[member] = consortium.participants[member].client.unmask(request)
    honest = answers["org-a"]
    share = honest.self_mask_shares[0]
    changed = RevealedShare(share.owner, Share(share.share.x, (share.share.y + 1) % FIELD_PRIME))
    forged = {
        "unsigned": dataclasses.replace(honest, signature=b""),
        "a share changed by the coordinator": dataclasses.replace(
            honest, self_mask_shares=(changed, *honest.self_mask_shares[1:])
        ),
        "another member's signature": dataclasses.replace(
            honest, signature=answers["org-b"].signature
        ),
    }
    pem = consortium.orgs["org-a"].certificate_pem
    before = _state(consortium)
    for what, answer in forged.items():
        message = MessageSubmission(job.job_id, round_.round_id, Phase.UNMASK, answer.to_bytes())
        with pytest.raises(InvalidRequest, match="unmask response of 'org-a' is not signed"):
            consortium.service.submit_message("org-a", message, pem)
        assert _state(consortium) == before, what
    # The answer as it was before answers were signed: refused as malformed.
    self_mask, masking_key = honest.shares_bytes()
    unsigned_format = encode_fields(
        [b"secagg/v1/unmask-response", b"org-a", self_mask, masking_key]
    )
    message = MessageSubmission(job.job_id, round_.round_id, Phase.UNMASK, unsigned_format)
    with pytest.raises(InvalidRequest, match="unmask message was refused"):
        consortium.service.submit_message("org-a", message, pem)
    assert _state(consortium) == before
    # Nothing was taken from them: the honest answers unmask the round's sum.
    finished = consortium.run(job)
    assert finished.phase is Phase.COMMITTED, finished.abort_reason
    got = committed_delta(consortium, job)
    assert np.max(np.abs(got - expected_delta(consortium.members))) <= bound()


def test_bad_masked_inputs_are_refused_and_change_nothing(consortium: Consortium) -> None:
    job = consortium.start()
    consortium.step()
    consortium.step()
    round_ = consortium.round(job)
    assert round_.phase is Phase.INPUTS
    length = sum(math.prod(s) for s in SHAPES) + 1
    good = np.zeros(length, dtype=np.uint32)
    cases: list[tuple[str, list[npt.NDArray[Any]], dict[str, Any]]] = [
        ("wrong dtype", [good.astype(np.uint64)], {}),
        ("float", [good.astype(np.float32)], {}),
        ("too short", [good[:-1]], {}),
        ("two tensors", [good, good], {}),
        ("examples revealed", [good], {"num_examples": 10}),
        ("loss revealed", [good], {"train_loss": 0.5}),
        ("old base version", [good], {"base_version": 7}),
    ]
    before = _state(consortium)
    for what, tensors, changes in cases:
        header, payload = encode_tensors(tensors)
        update = UpdateSubmission(job.job_id, round_.round_id, Phase.INPUTS, 0, 0, 0.0, header)
        with pytest.raises((InvalidRequest, WrongRoundPhase)):
            consortium.service.submit_update(
                "org-a", dataclasses.replace(update, **changes), payload
            )
        assert _state(consortium) == before, what


def test_an_organization_that_sent_no_shares_may_not_send_an_input(
    consortium: Consortium,
) -> None:
    consortium.participants["org-e"].stop_before = Phase.SHARES
    job = consortium.start()
    consortium.step()
    consortium.step()
    consortium.clock.now = consortium.round(job).deadline_at + 1
    consortium.service.tick()  # SHARES closes at its deadline without org-e
    round_ = consortium.round(job)
    assert round_.phase is Phase.INPUTS
    assert consortium.service.next_work("org-e").kind is WorkKind.WAIT
    vector = np.zeros(sum(math.prod(s) for s in SHAPES) + 1, dtype=np.uint32)
    header, payload = encode_tensors([vector])
    before = _state(consortium)
    with pytest.raises(WrongRoundPhase, match="sent no shares"):
        consortium.service.submit_update(
            "org-e",
            UpdateSubmission(job.job_id, round_.round_id, Phase.INPUTS, 0, 0, 0.0, header),
            payload,
        )
    assert _state(consortium) == before


# -- privacy ------------------------------------------------------------------------------------


def _assert_no_individual_update(c: Consortium, members: tuple[str, ...]) -> None:
    """No blob or database value is, or decodes to something close to, one org's update."""
    spec = SecAggSettings()
    params = SecAggParameters(3, 32, 0, (), spec.clip, spec.levels_bits, 16, 8192)
    blobs = [p.read_bytes() for p in (c.tmp / "blobs").rglob("*") if p.is_file()]
    with c.store.engine.connect() as conn:
        rows = [
            value
            for table in schema.metadata.sorted_tables
            for row in conn.execute(select(table)).all()
            for value in row
            if isinstance(value, bytes)
        ]
    size = sum(math.prod(s) for s in SHAPES)
    for member in members:
        quantized = params.quantization().quantize(delta(member), EXAMPLES[member])
        trained = flatten(trained_weights(member))
        for data in (*blobs, *rows, (c.tmp / "coordinator.db").read_bytes()):
            assert quantized[:8].tobytes() not in data, member
            assert trained.astype(np.float32)[:8].tobytes() not in data, member
        for data in blobs:
            for dtype in (np.float32, np.float64):
                if len(data) != size * np.dtype(dtype).itemsize:
                    continue
                vector = np.frombuffer(data, dtype=dtype).astype(np.float64)
                for scale in (1.0, float(EXAMPLES[member])):
                    assert np.max(np.abs(vector / scale - trained)) > bound(), member


def test_the_coordinator_files_hold_no_individual_update_at_any_step(
    consortium: Consortium,
) -> None:
    consortium.participants["org-e"].stop_before = Phase.INPUTS
    job = consortium.start()
    for _ in range(20):
        round_ = consortium.round(job)
        if round_.is_terminal:
            break
        if not consortium.step():
            consortium.clock.now = round_.deadline_at + 1
            consortium.service.tick()
        _assert_no_individual_update(consortium, consortium.members)
    assert consortium.round(job).phase is Phase.COMMITTED


def test_the_privacy_scan_finds_a_plain_update(consortium: Consortium) -> None:
    # The control: under protection none the running sum holds the first update times its
    # example count, and the scan must see it.
    job = consortium.start(protection=Protection.NONE)
    round_ = consortium.round(job)
    assert round_.phase is Phase.INPUTS
    header, payload = encode_tensors(trained_weights("org-a"))
    update = UpdateSubmission(
        job.job_id, round_.round_id, Phase.INPUTS, 0, EXAMPLES["org-a"], 0.1, header
    )
    consortium.service.submit_update("org-a", update, payload)
    with pytest.raises(AssertionError, match="org-a"):
        _assert_no_individual_update(consortium, ("org-a",))


def test_unmask_request_never_asks_for_both_shares_of_one_peer(consortium: Consortium) -> None:
    consortium.participants["org-e"].stop_before = Phase.INPUTS
    job = consortium.start()
    for _ in range(3):
        consortium.step()
    consortium.clock.now = consortium.round(job).deadline_at + 1
    consortium.service.tick()  # INPUTS closes at its deadline without org-e
    consortium.step()
    item = consortium.service.next_work("org-a")
    assert item.kind is WorkKind.SECAGG_STEP and item.secagg is not None
    request = UnmaskRequest.from_bytes(item.secagg.unmask_request)
    assert set(request.survivors).isdisjoint(request.dropped)
    assert request.dropped == ("org-e",)
    assert len(request.signatures) == 4
    assert consortium.round(job).phase is Phase.UNMASK


def test_shares_are_routed_only_to_their_receiver(consortium: Consortium) -> None:
    consortium.start()
    consortium.step()
    consortium.step()
    for member in consortium.members:
        item = consortium.service.next_work(member)
        assert item.kind is WorkKind.TRAIN and item.secagg is not None
        routed = [EncryptedShare.from_bytes(s) for s in item.secagg.shares]
        assert {s.receiver for s in routed} == {member}
        assert sorted(s.sender for s in routed) == sorted(set(consortium.members) - {member})
    assert decode_share_list(encode_share_list(routed)) == tuple(routed)


def test_stored_messages_keep_the_sender_certificate_for_keys_only(
    consortium: Consortium,
) -> None:
    job = consortium.start()
    consortium.run(job)
    with consortium.store.transaction() as tx:
        messages = tx.list_phase_messages(consortium.round(job).round_id)
    assert {m.phase for m in messages} == {"keys", "shares", "consistency", "unmask"}
    for message in messages:
        expected = (
            consortium.orgs[message.org_id].certificate_pem if message.phase == "keys" else b""
        )
        assert message.certificate_pem == expected


def test_payload_header_of_a_masked_input_is_checked(consortium: Consortium) -> None:
    job = consortium.start()
    consortium.step()
    consortium.step()
    round_ = consortium.round(job)
    vector = np.zeros(sum(math.prod(s) for s in SHAPES) + 1, dtype=np.uint32)
    header, payload = encode_tensors([vector])
    lying = PayloadHeader(header.tensors, header.total_bytes, b"\x00" * 32)
    update = UpdateSubmission(job.job_id, round_.round_id, Phase.INPUTS, 0, 0, 0.0, lying)
    before = _state(consortium)
    with pytest.raises(InvalidRequest):
        consortium.service.submit_update("org-a", update, payload)
    assert _state(consortium) == before


def test_small_secure_steps_come_before_evaluation_and_training_after_it(
    consortium: Consortium,
) -> None:
    job = consortium.start(num_rounds=2)
    assert consortium.run(job).phase is Phase.COMMITTED
    consortium.service.tick()  # opens round 2
    second = consortium.round(job)
    assert second.number == 2 and second.phase is Phase.KEYS
    # Round 2's KEYS step is served before evaluating model version 1 ...
    item = consortium.service.next_work("org-a")
    assert item.kind is WorkKind.SECAGG_STEP
    assert consortium.participants["org-a"].act(consortium.service, item)
    # ... and while the others send theirs, org-a waits rather than evaluates ...
    assert consortium.service.next_work("org-a").kind is WorkKind.WAIT
    consortium.step()  # everyone else sends keys
    consortium.step()  # and shares: the round is in INPUTS
    assert consortium.round(job).phase is Phase.INPUTS
    # ... and evaluates at the start of INPUTS, before training.
    item = consortium.service.next_work("org-a")
    assert item.kind is WorkKind.EVALUATE and item.model_version == 1


# -- paillier: the coordinator sees ciphertexts, the correction and nothing else ------------------


@pytest.fixture(scope="module")
def paillier_key() -> PaillierPrivateKey:
    return generate_private_key(2048)


def _encrypted_input(
    service: CoordinatorService,
    item: WorkItem,
    key: PaillierPrivateKey,
    vector: npt.NDArray[Any],
    p: SecAggParameters,
    tamper: Callable[[PackingLayout, list[int]], None] | None = None,
) -> tuple[PayloadHeader, bytes]:
    """What an honest participant encrypts: the packed ciphertexts and their tag, bound to the
    job, the round and the base version as served (``tamper``: what a malicious one changes)."""
    assert item.round is not None
    public = key.public_key
    layout = PackingLayout(p.modulus_bits, p.max_participants, public.bits)
    plaintexts = layout.pack(vector)
    if tamper is not None:
        tamper(layout, plaintexts)
    binding = _binding(service, item)
    *encrypted, tag = encrypt_integers(public, [*plaintexts, input_tag(key, binding, plaintexts)])
    data = PaillierCiphertexts(public.fingerprint, layout, 1, vector.size, tuple(encrypted))
    return encode_tensors(
        [
            np.frombuffer(data.to_bytes(), dtype=np.uint8),
            np.frombuffer(tag.to_bytes(public.ciphertext_bytes, "big"), dtype=np.uint8),
        ]
    )


def _binding(service: CoordinatorService, item: WorkItem) -> bytes:
    """The tag binding of the item's round, with the base version as served."""
    assert item.round is not None
    _, base, _ = service.read_model(item.round.job_id, item.round.base_version, encrypted=True)
    return tag_binding(item.round.job_id, item.round.round_id, item.round.base_version, base.sha256)


def _paillier_job(c: Consortium, key: PaillierPrivateKey, **changes: Any) -> Job:
    c.participants["org-a"].dealer_key = key  # org-a has the lowest id: the dealer
    return c.start(protection=Protection.PAILLIER, **changes)


def _decrypt_version(
    c: Consortium, job: Job, key: PaillierPrivateKey, version: int
) -> npt.NDArray[np.float64]:
    """What a participant does: replay the transcript to the served correction, check the tag,
    decrypt the summed ciphertexts, add the correction, decode."""

    _, header, payload = c.service.read_model(job.job_id, version, encrypted=True)
    data, correction = decode_tensors(header, payload)
    record = PaillierVersion.from_bytes(data.tobytes())
    transcript = record.transcript
    keys = {
        org: verifying_key(load_pem_x509_certificate(pem).public_key())
        for org, _, pem in transcript.keys
    }
    replayed = replay_correction(
        transcript,
        job_id=job.job_id,
        vector_length=correction.size,
        modulus_bits=32,
        verifying_keys=keys,
    )
    assert np.array_equal(replayed, correction)
    ciphertexts = PaillierCiphertexts.from_bytes(record.ciphertexts, key.public_key)
    assert ciphertexts.contributions == len(transcript.contributors)
    _, base, _ = c.service.read_model(job.job_id, version - 1, encrypted=True)
    binding = tag_binding(job.job_id, transcript.round_id, version - 1, base.sha256)
    (tag,) = decrypt_integers(key, [int.from_bytes(record.tag, "big")])
    assert tag_matches(key, binding, decrypt_integers(key, ciphertexts.ciphertexts), tag)
    total = (decrypt_vector(key, ciphertexts) + correction.astype(np.uint64)) % (1 << 32)
    spec = SecAggSettings()
    params = SecAggParameters(0, 32, 0, (), spec.clip, spec.levels_bits, 16, 8192)
    return params.quantization().dequantize(total.astype(np.uint32)).mean


def test_a_paillier_round_releases_only_ciphertexts_and_a_correction(
    consortium: Consortium, paillier_key: PaillierPrivateKey
) -> None:
    consortium.participants["org-e"].stop_before = Phase.INPUTS  # R2 in this mode too
    job = _paillier_job(consortium, paillier_key)
    for _ in range(3):  # the ceremony: keys, the deal, the receipts
        consortium.step()
    for member in consortium.members:
        held = consortium.participants[member].paillier
        assert held is not None and held.to_bytes() == paillier_key.to_bytes()
    finished = consortium.run(job)
    assert finished.phase is Phase.COMMITTED, finished.abort_reason
    survivors = ("org-a", "org-b", "org-c", "org-d")
    assert sorted(finished.contributors) == list(survivors)
    mean = _decrypt_version(consortium, job, paillier_key, 1)
    assert np.max(np.abs(mean - expected_delta(survivors))) <= bound()
    # Only participants get the encrypted version; anyone else is sent to a participant.
    with pytest.raises(WrongRoundPhase, match="export the model from a participant"):
        consortium.service.read_model(job.job_id, 1)
    # The coordinator's files hold no individual update and no plaintext aggregate.
    _assert_no_individual_update(consortium, consortium.members)
    blobs = [p.read_bytes() for p in (consortium.tmp / "blobs").rglob("*") if p.is_file()]
    size = sum(math.prod(s) for s in SHAPES)
    aggregate = flatten(base_weights()) + mean
    for data in blobs:
        for dtype in (np.float32, np.float64):
            if len(data) == size * np.dtype(dtype).itemsize:
                vector = np.frombuffer(data, dtype=dtype).astype(np.float64)
                assert np.max(np.abs(vector - aggregate)) > 0.01


def test_one_ciphertext_passed_off_as_the_aggregate_reveals_nothing(
    consortium: Consortium, paillier_key: PaillierPrivateKey
) -> None:
    # S16: a coordinator that publishes org-a's ciphertexts with the round's correction.
    job = _paillier_job(consortium, paillier_key)
    captured: list[tuple[PayloadHeader, bytes]] = []
    original = consortium.service.submit_update

    def spy(org_id: str, update: UpdateSubmission, payload: bytes) -> Any:
        if org_id == "org-a":
            captured.append((update.header, payload))
        return original(org_id, update, payload)

    consortium.service.submit_update = spy  # type: ignore[method-assign]
    assert consortium.run(job).phase is Phase.COMMITTED
    _, header, payload = consortium.service.read_model(job.job_id, 1, encrypted=True)

    _, correction = decode_tensors(header, payload)
    ((header_a, first),) = captured
    data_a, _, _ = decode_tensors(header_a, first)
    alone = PaillierCiphertexts.from_bytes(data_a.tobytes(), paillier_key.public_key)
    words = (decrypt_vector(paillier_key, alone) + correction.astype(np.uint64)) % (1 << 32)
    signed = words.astype(np.uint32).view(np.int32)
    scale = math.ldexp(float(EXAMPLES["org-a"]), SecAggSettings().levels_bits)
    decoded = signed[:-1].astype(np.float64) / scale
    # Masked: the weight word is not org-a's weight and the values are noise, far from its delta.
    assert int(signed[-1]) != EXAMPLES["org-a"]
    assert np.max(np.abs(decoded - np.clip(delta("org-a"), -1, 1))) > 1.0


def test_organizations_that_stopped_serving_a_paillier_job_are_shown_and_left_out(
    consortium: Consortium, paillier_key: PaillierPrivateKey
) -> None:
    """A participant whose version failed verification reports it with a ``stopped`` ceremony
    message: the admin sees the reason, and no later cohort waits for that organization."""
    job = _paillier_job(consortium, paillier_key, num_rounds=2)
    consortium.step()  # the job keys
    dealer = consortium.service.next_work("org-a")
    assert dealer.kind is WorkKind.KEY_CEREMONY
    assert consortium.participants["org-a"].act(consortium.service, dealer)
    reason = b"model version 1: the served mask correction is not the one the round gives"
    for org in ("org-b", "org-c", "org-d", "org-e"):
        certificate = consortium.orgs[org].certificate_pem
        ack = consortium.service.submit_ceremony(org, job.job_id, "stopped", reason, certificate)
        assert not ack.duplicate
        again = consortium.service.submit_ceremony(org, job.job_id, "stopped", reason, certificate)
        assert again.duplicate
    with pytest.raises(InvalidRequest, match="UTF-8"):
        consortium.service.submit_ceremony(
            "org-a", job.job_id, "stopped", b"\xff", consortium.orgs["org-a"].certificate_pem
        )

    while consortium.step():  # the receipts, and whatever work there is
        pass
    consortium.service.tick()
    view = consortium.service.get_job(job.job_id)
    # One holder left: below min_participants = 2, so no round opens, and the admin sees why.
    assert view.rounds == ()
    assert "stopped serving this job for good: org-b (model version 1: the served" in (
        view.waiting_reason
    )
    assert "org-e (model version 1" in view.waiting_reason


def test_a_revoked_key_holder_starts_a_new_key_generation_before_the_next_round(
    consortium: Consortium, paillier_key: PaillierPrivateKey
) -> None:
    job = _paillier_job(consortium, paillier_key, num_rounds=2)
    first = consortium.run(job)
    assert first.phase is Phase.COMMITTED and "org-e" in first.contributors
    old_key_of_e = _job_key(consortium, job, "org-e").to_bytes()
    MembershipService(consortium.store, clock=lambda: consortium.clock.now).revoke("org-e", "admin")
    del consortium.participants["org-e"]  # refused at its next call

    consortium.service.tick()
    # No round under the key org-e holds: generation 1 starts first, with why it started.
    assert len(consortium.service.get_job(job.job_id).rounds) == 1
    # (The ceremony step alternates with other work, e.g. evaluating version 1.)
    items = [consortium.service.next_work("org-b") for _ in range(3)]
    step = next(i.ceremony for i in items if i.kind is WorkKind.KEY_CEREMONY)
    assert step is not None and (step.action, step.generation) == ("advertise", 1)
    assert [(g, key) for g, key, _ in step.revoked_holders] == [(0, old_key_of_e)]
    # The admin sees why no round opens.
    assert "key generation 1 is being dealt (revoked key holders: org-e)" in (
        consortium.service.get_job(job.job_id).waiting_reason
    )
    # A job key of generation 0 is not one of generation 1 (the signature binds the generation).
    with pytest.raises(InvalidRequest, match="job_key message was refused"):
        consortium.service.submit_ceremony(
            "org-b",
            job.job_id,
            "job_key",
            _job_key(consortium, job, "org-b").to_bytes(),
            consortium.orgs["org-b"].certificate_pem,
        )
    for org in consortium.participants:  # version 1 evaluated: no evaluation work is left
        consortium.service.report_metrics(
            MetricReport(job.job_id, 1, org, 1, 0.5, 0.5, consortium.clock.now)
        )
    for _ in range(10):  # the ceremony of generation 1, then round 2 opens
        if len(consortium.service.get_job(job.job_id).rounds) == 2:
            break
        consortium.step()
        consortium.service.tick()
    second = consortium.run(job)
    assert second.phase is Phase.COMMITTED, second.abort_reason
    assert (
        sorted(second.cohort) == sorted(second.contributors) == ["org-a", "org-b", "org-c", "org-d"]
    )
    records = {}
    for version in (1, 2):
        _, header, payload = consortium.service.read_model(job.job_id, version, encrypted=True)
        record, _ = decode_tensors(header, payload)
        records[version] = PaillierVersion.from_bytes(record.tobytes())
    assert [records[v].generation for v in (1, 2)] == [0, 1]
    # Each round's signed context names the key of its generation: its record's terms give that
    # context with that generation's key, and not with the other's.
    held = consortium.participants["org-a"].paillier
    assert held is not None
    keys = {0: paillier_key.public_key, 1: held.public_key}
    settings = job.spec.secagg
    for version, record in records.items():
        _, base, _ = consortium.service.read_model(job.job_id, version - 1, encrypted=True)
        assert record.terms is not None
        parameters = SecAggParameters(
            threshold=record.transcript.threshold,
            modulus_bits=settings.modulus_bits,
            vector_length=0,
            cohort=record.transcript.cohort,
            clip=settings.clip,
            levels_bits=settings.levels_bits,
            max_participants=settings.max_participants,
            max_weight=settings.max_weight,
        )
        contexts = {
            generation: record.terms.context(
                job_id=job.job_id,
                base_version=version - 1,
                base_model_sha256=base.sha256,
                parameters=parameters,
                key_fingerprint=round_key_fingerprint(job.job_id, generation, key),
            )
            for generation, key in keys.items()
        }
        assert contexts[record.generation] == record.transcript.context
        assert contexts[1 - record.generation] != record.transcript.context
    with consortium.store.transaction() as tx:
        kinds = [(m.org_id, m.kind) for m in tx.list_job_messages(job.job_id)]
    assert ("", "rotate:1") in kinds
    assert not any(org == "org-e" and kind.startswith("g1/") for org, kind in kinds)
    assert not any(kind == "g1/sealed:org-e" for _, kind in kinds)


def test_bad_ciphertexts_are_refused_and_change_nothing(
    consortium: Consortium, paillier_key: PaillierPrivateKey
) -> None:
    # S17: values outside [1, n^2), another key's fingerprint, a bundle of two contributions.
    job = _paillier_job(consortium, paillier_key)
    for participant in consortium.participants.values():
        participant.stop_before = Phase.INPUTS
    while consortium.step():  # the ceremony, keys and shares
        pass
    round_ = consortium.round(job)
    assert round_.phase is Phase.INPUTS
    public = paillier_key.public_key
    layout = PackingLayout(32, 16, public.bits)
    length = sum(math.prod(s) for s in SHAPES) + 1
    good = encrypt_vector(public, layout, np.zeros(length, dtype=np.uint32))
    other = generate_private_key(2048).public_key
    n_squared = public.n * public.n
    cases = {
        "zero": PaillierCiphertexts(
            good.fingerprint, layout, 1, length, (0, *good.ciphertexts[1:])
        ).to_bytes(),
        "n squared": PaillierCiphertexts(
            good.fingerprint, layout, 1, length, (n_squared, *good.ciphertexts[1:])
        ).to_bytes(),
        "other key": encrypt_vector(other, layout, np.zeros(length, np.uint32)).to_bytes(),
        "two contributions": PaillierCiphertexts(
            good.fingerprint, layout, 2, length, good.ciphertexts
        ).to_bytes(),
        "garbage": b"\x00" * 64,
    }
    before = _state(consortium)
    tag = good.ciphertexts[0].to_bytes(public.ciphertext_bytes, "big")
    cases["tag of zero"] = good.to_bytes()
    for what, data in cases.items():
        tensors = [np.frombuffer(data, dtype=np.uint8), np.frombuffer(tag, dtype=np.uint8)]
        if what == "tag of zero":
            tensors[1] = np.zeros(public.ciphertext_bytes, dtype=np.uint8)
        header, payload = encode_tensors(tensors)
        update = UpdateSubmission(job.job_id, round_.round_id, Phase.INPUTS, 0, 0, 0.0, header)
        with pytest.raises(InvalidRequest):
            consortium.service.submit_update("org-a", update, payload)
        assert _state(consortium) == before, what


def test_an_organization_joining_later_gets_the_key_from_a_holder(
    tmp_path: Path, orgs: dict[str, Org], paillier_key: PaillierPrivateKey
) -> None:
    c = Consortium(tmp_path, orgs, ("org-a", "org-b", "org-c"))
    try:
        job = _paillier_job(c, paillier_key, min_participants=2)
        for _ in range(3):
            c.step()
        # org-d joins the consortium after the deal.
        c.participants["org-d"] = Participant(
            orgs["org-d"], dict(c.participants["org-a"].peers) | {"org-a": _key(orgs["org-a"])}
        )
        c.participants["org-d"].peers.pop("org-d", None)
        MembershipService(
            c.store, auto_approve=True, clock=lambda: c.clock.now
        ).authenticate_participant("org-d", require_active=False)
        for _ in range(3):  # advertise, then a holder seals, then org-d receives
            c.step()
        held = c.participants["org-d"].paillier
        assert held is not None and held.to_bytes() == paillier_key.to_bytes()
        with c.store.transaction() as tx:
            kinds = {(m.org_id, m.kind) for m in tx.list_job_messages(job.job_id)}
        assert ("org-a", "sealed:org-d") in kinds and ("org-d", "confirm") in kinds
    finally:
        c.close()


def test_the_dealer_stays_the_one_asked_when_a_lower_id_advertises_later(
    consortium: Consortium, paillier_key: PaillierPrivateKey
) -> None:
    # min_participants = 2: org-d and org-c advertise first, so org-c is asked to deal; org-a
    # advertising before org-c answers must not make org-c's dealt key unwelcome.
    job = _paillier_job(consortium, paillier_key)
    service, participants = consortium.service, consortium.participants
    participants["org-c"].dealer_key = paillier_key
    for org in ("org-d", "org-c"):
        item = service.next_work(org)
        assert item.ceremony is not None and item.ceremony.action == "advertise"
        assert participants[org].act(service, item)
    deal = service.next_work("org-c")
    assert deal.ceremony is not None and deal.ceremony.action == "deal"
    item = service.next_work("org-a")
    assert item.ceremony is not None and item.ceremony.action == "advertise"
    assert participants["org-a"].act(service, item)
    assert service.next_work("org-a").kind is WorkKind.WAIT  # not the dealer
    assert participants["org-c"].act(service, deal)
    for _ in range(4):
        consortium.step()
    with consortium.store.transaction() as tx:
        (dealt,) = [m for m in tx.list_job_messages(job.job_id) if m.kind == "dealt_key"]
    assert dealt.org_id == "org-c"
    for member in consortium.members:
        held = participants[member].paillier
        assert held is not None and held.to_bytes() == paillier_key.to_bytes(), member


def test_a_holder_may_resend_stored_sealed_keys_with_new_ones(
    tmp_path: Path, orgs: dict[str, Org], paillier_key: PaillierPrivateKey
) -> None:
    # A dealer that resumes its deal, or a holder sealing for newcomers, may send the sealed keys
    # the coordinator already stored along with new ones: the new ones are added, the stored ones
    # kept; other bytes for a stored receiver are a conflict and change nothing.
    c = Consortium(tmp_path, orgs, ("org-a", "org-b", "org-c"))
    try:
        job = _paillier_job(c, paillier_key, min_participants=2)
        for _ in range(3):
            c.step()
        MembershipService(
            c.store, auto_approve=True, clock=lambda: c.clock.now
        ).authenticate_participant("org-d", require_active=False)
        pair_d, key_d = make_job_key(job.job_id, "org-d", orgs["org-d"].key, os.urandom)
        pem = orgs["org-a"].certificate_pem
        c.service.submit_ceremony(
            "org-d", job.job_id, "job_key", key_d.to_bytes(), orgs["org-d"].certificate_pem
        )

        def stored() -> dict[str, bytes]:
            with c.store.transaction() as tx:
                return {m.kind: m.body for m in tx.list_job_messages(job.job_id)}

        pair_a = c.participants["org-a"].job_pair
        assert pair_a is not None
        for_b = stored()["sealed:org-b"]
        for_d = seal_private_key(job.job_id, paillier_key, "org-a", pair_a, key_d, os.urandom)
        mixed = encode_fields([for_b, for_d.to_bytes()])
        ack = c.service.submit_ceremony("org-a", job.job_id, "sealed", mixed, pem)
        assert not ack.duplicate
        assert stored()["sealed:org-d"] == for_d.to_bytes()
        assert stored()["sealed:org-b"] == for_b
        again = c.service.submit_ceremony("org-a", job.job_id, "sealed", mixed, pem)
        assert again.duplicate and again.acknowledgement_id == ack.acknowledgement_id
        before = stored()
        resealed = encode_fields(
            [
                seal_private_key(
                    job.job_id, paillier_key, "org-a", pair_a, _job_key(c, job, "org-b"), os.urandom
                ).to_bytes(),
                for_d.to_bytes(),
            ]
        )
        with pytest.raises(ConflictingSubmission):
            c.service.submit_ceremony("org-a", job.job_id, "sealed", resealed, pem)
        assert stored() == before
        # org-d opens the key sealed for it.
        c.participants["org-d"] = Participant(
            orgs["org-d"], {o: _key(orgs[o]) for o in ("org-a", "org-b", "org-c")}, job_pair=pair_d
        )
        c.step()
        held = c.participants["org-d"].paillier
        assert held is not None and held.to_bytes() == paillier_key.to_bytes()
    finally:
        c.close()


def _job_key(c: Consortium, job: Job, org_id: str) -> JobKey:
    with c.store.transaction() as tx:
        (message,) = [
            m for m in tx.list_job_messages(job.job_id) if (m.org_id, m.kind) == (org_id, "job_key")
        ]
    return JobKey.from_bytes(message.body)


def test_an_unanswered_ceremony_step_alternates_with_other_work(
    consortium: Consortium, paillier_key: PaillierPrivateKey
) -> None:
    # org-b refuses the key ceremonies by going silent: it still gets its other jobs' work.
    first = _paillier_job(consortium, paillier_key)
    # With nothing else to do, an unanswered step is offered again at once.
    for _ in range(2):
        item = consortium.service.next_work("org-c")
        assert item.kind is WorkKind.KEY_CEREMONY and item.job is not None
        assert item.job.job_id == first.job_id
    second = _paillier_job(consortium, paillier_key)
    plain = consortium.start(protection=Protection.NONE)
    offered = [consortium.service.next_work("org-b") for _ in range(6)]
    kinds = [(item.kind, item.job.job_id if item.job else "") for item in offered]
    ceremony, train = WorkKind.KEY_CEREMONY, WorkKind.TRAIN
    assert (
        kinds
        == [
            (ceremony, first.job_id),
            (ceremony, second.job_id),
            (train, plain.job_id),
        ]
        * 2
    )
    # An answered step leaves the rotation: org-a advertises and gets its next step first.
    item = consortium.service.next_work("org-a")
    assert item.kind is ceremony and item.ceremony is not None
    assert item.ceremony.action == "advertise"
    assert consortium.participants["org-a"].act(consortium.service, item)
    assert consortium.service.next_work("org-a").job.job_id == second.job_id  # type: ignore[union-attr]


def _key(org: Org) -> VerifyingKey:
    from cryptography import x509

    return x509.load_pem_x509_certificate(org.certificate_pem).public_key()  # type: ignore[return-value]


def test_bad_ceremony_messages_are_refused_and_change_nothing(
    consortium: Consortium, paillier_key: PaillierPrivateKey
) -> None:
    job = _paillier_job(consortium, paillier_key)
    service = consortium.service
    pem = {o: org.certificate_pem for o, org in consortium.orgs.items()}
    pair_b, key_b = make_job_key(job.job_id, "org-b", consortium.orgs["org-b"].key, os.urandom)
    _, other_job = make_job_key("another-job", "org-b", consortium.orgs["org-b"].key, os.urandom)
    _, forged = make_job_key(job.job_id, "org-b", consortium.orgs["org-c"].key, os.urandom)
    dealt_by_b = sign_public_key(
        job.job_id, "org-b", paillier_key.public_key, consortium.orgs["org-b"].key
    )
    cases: list[tuple[str, str, bytes, bytes, type[Exception]]] = [
        ("org-b", "job_key", b"garbage", pem["org-b"], InvalidRequest),
        ("org-b", "job_key", other_job.to_bytes(), pem["org-b"], InvalidRequest),
        ("org-b", "job_key", forged.to_bytes(), pem["org-b"], InvalidRequest),
        ("org-c", "job_key", key_b.to_bytes(), pem["org-c"], InvalidRequest),
        ("org-b", "unknown", b"", pem["org-b"], InvalidRequest),
        ("org-b", "dealt_key", dealt_by_b.to_bytes(), pem["org-b"], WrongRoundPhase),
        ("org-b", "confirm", paillier_key.public_key.fingerprint, pem["org-b"], WrongRoundPhase),
    ]

    def count() -> int:
        with consortium.store.transaction() as tx:
            return len(tx.list_job_messages(job.job_id))

    assert count() == 0
    for org, action, body, cert, error in cases:
        with pytest.raises(error):
            service.submit_ceremony(org, job.job_id, action, body, cert)
        assert count() == 0, (org, action)
    # A correct job key is accepted once; a different one from the same org is a conflict.
    assert not service.submit_ceremony(
        "org-b", job.job_id, "job_key", key_b.to_bytes(), pem["org-b"]
    ).duplicate
    assert service.submit_ceremony(
        "org-b", job.job_id, "job_key", key_b.to_bytes(), pem["org-b"]
    ).duplicate
    _, again = make_job_key(job.job_id, "org-b", consortium.orgs["org-b"].key, os.urandom)
    with pytest.raises(ConflictingSubmission):
        service.submit_ceremony("org-b", job.job_id, "job_key", again.to_bytes(), pem["org-b"])
    assert count() == 1
    consortium.participants["org-b"].job_pair = pair_b
    # org-b is not the dealer while org-a (a lower id) has a job key.
    while consortium.step():
        pass
    with pytest.raises(WrongRoundPhase):
        service.submit_ceremony(
            "org-b", job.job_id, "dealt_key", dealt_by_b.to_bytes(), pem["org-b"]
        )
    with pytest.raises(InvalidRequest):
        service.submit_ceremony("org-b", job.job_id, "confirm", b"\x00" * 32, pem["org-b"])


def _context_as_an_honest_participant_computes_it(
    service: CoordinatorService, item: WorkItem, key_fingerprint: bytes = b""
) -> bytes:
    """The round context from what the work item says, the base model as served and, under
    paillier, the job key the participant holds."""
    assert item.job is not None and item.round is not None and item.secagg is not None
    spec = item.job.spec
    # The bytes a participant is served: the model, or under paillier its ciphertexts.
    _, header, _ = service.read_model(item.job.job_id, item.round.base_version, encrypted=True)
    base = header.sha256
    return round_context(
        protection=spec.protection,
        job_id=item.job.job_id,
        round_number=item.round.number,
        task_name=spec.task_name,
        algorithm=StrategyChoice(spec.algorithm, spec.strategy).canonical(),
        base_version=item.round.base_version,
        base_model_sha256=base,
        training=spec.training,
        parameters=item.secagg.parameters,
        min_participants=spec.min_participants,
        paillier_key_fingerprint=key_fingerprint,
        dp=spec.dp,
    )


def _padding_bit(layout: PackingLayout, plaintexts: list[int]) -> None:
    # A malicious key holder sets a bit above the last slot: the sum would never decode.
    plaintexts[-1] |= 1 << layout.packed_bits


def test_a_malformed_paillier_input_is_excluded_on_the_members_signed_reports(
    consortium: Consortium, paillier_key: PaillierPrivateKey
) -> None:
    """org-c signs a malformed input. Every other member decrypts it at CONSISTENCY, signs U3
    without org-c and reports it; the coordinator drops org-c like a dropout, keeps its signed
    input as evidence and commits the other four's exact sum."""
    consortium.participants["org-c"].tamper_plaintexts = _padding_bit
    job = _paillier_job(consortium, paillier_key)
    finished = consortium.run(job)
    assert finished.phase is Phase.COMMITTED, finished.abort_reason
    honest = ("org-a", "org-b", "org-d", "org-e")
    assert sorted(finished.contributors) == list(honest)
    mean = _decrypt_version(consortium, job, paillier_key, 1)
    assert np.max(np.abs(mean - expected_delta(honest))) <= bound()
    events = _malformed_events(consortium)
    assert events and all("org=org-c" in detail for detail in events)
    evidence = events[0].split("evidence_blob=")[1]
    kept = SignedInput.from_bytes(consortium.blobs.get(evidence))
    assert kept.sender == "org-c"
    verify_input(
        consortium.participants["org-a"].peers["org-c"], _config_of(consortium, "org-a"), kept
    )
    # The running sum the exclusion replaced is gone; only versions and evidence are kept.
    evidence_refs = {detail.split("evidence_blob=")[1].split()[0] for detail in events}
    with consortium.store.transaction() as tx:
        unused = [ref for ref in consortium.blobs.refs() if not tx.blob_in_use(ref)]
    assert set(unused) == evidence_refs


def _config_of(consortium: Consortium, member: str) -> RoundConfig:
    client = consortium.participants[member].client
    assert client is not None
    return client.config


def test_an_exclusion_report_must_sign_the_set_it_leaves(
    consortium: Consortium, paillier_key: PaillierPrivateKey
) -> None:
    """A report is adopted only with the reporter's signature on U3 minus the excluded: a
    signature on another set, an exclusion of itself or of an unknown organization is
    refused, and U3 stays as it was."""
    job = _paillier_job(consortium, paillier_key)
    for _ in range(20):
        if consortium.service.get_job(job.job_id).rounds:
            round_ = consortium.round(job)
            if round_.phase is Phase.CONSISTENCY:
                break
        consortium.step()
    round_ = consortium.round(job)
    assert round_.phase is Phase.CONSISTENCY
    client = consortium.participants["org-a"].client
    assert client is not None
    whole = client.sign_survivors(list(round_.contributors)).to_bytes()
    for report in (
        ExclusionReport(whole, ("org-b",)),  # signed on U3, not on U3 without org-b
        ExclusionReport(whole, ("org-a",)),
        ExclusionReport(whole, ("org-z",)),
    ):
        with pytest.raises(InvalidRequest):
            consortium.service.submit_message(
                "org-a",
                MessageSubmission(
                    job.job_id, round_.round_id, Phase.CONSISTENCY, report.to_bytes()
                ),
                consortium.orgs["org-a"].certificate_pem,
            )
        assert consortium.round(job).contributors == round_.contributors
    assert not _malformed_events(consortium)


def test_only_a_member_of_u3_downloads_the_inputs_and_only_at_consistency(
    consortium: Consortium, paillier_key: PaillierPrivateKey
) -> None:
    """The inputs to vet go to members of U3 in the consistency phase only, each without its
    own input; an outsider, another phase, another job's id or an unknown round are refused,
    and asking changes nothing."""
    job = _paillier_job(consortium, paillier_key)
    round_ = None
    for _ in range(20):
        if consortium.service.get_job(job.job_id).rounds:
            round_ = consortium.round(job)
            if round_.phase is Phase.CONSISTENCY:
                break
            if round_.phase in (Phase.KEYS, Phase.SHARES, Phase.INPUTS):
                with pytest.raises(WrongRoundPhase):
                    consortium.service.round_inputs("org-a", job.job_id, round_.round_id)
        consortium.step()
    round_ = consortium.round(job)
    assert round_.phase is Phase.CONSISTENCY
    members = sorted(round_.contributors)
    for member in members:
        shown = RoundInputs.from_bytes(
            consortium.service.round_inputs(member, job.job_id, round_.round_id)
        )
        senders = [SignedInput.from_bytes(raw).sender for raw in shown.inputs]
        assert sorted(senders) == [m for m in members if m != member]
        assert shown.excluded == ()
    with pytest.raises(WrongRoundPhase):
        consortium.service.round_inputs("org-z", job.job_id, round_.round_id)
    for job_id, round_id in ((job.job_id, "no-such-round"), ("another-job", round_.round_id)):
        with pytest.raises(NotFound):
            consortium.service.round_inputs(members[0], job_id, round_id)
    assert consortium.round(job) == round_


def _malformed_events(consortium: Consortium) -> list[str]:
    """The audit details of the exclusions of malformed inputs."""
    with consortium.store.transaction() as tx:
        rows = tx.list_audit()
    return [str(r["detail"]) for r in rows if r["action"] == "round.malformed_input"]
