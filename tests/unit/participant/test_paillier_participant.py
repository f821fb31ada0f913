"""A participant in paillier jobs: the key ceremony, encrypted rounds and the model chain.

The test plays the coordinator (``paillier_harness``): a real ``SecAggServer`` keeps the mask
bookkeeping and ``add_ciphertexts`` sums the encrypted inputs, as the coordinator does.

Longer than 600 lines on purpose: the ceremony, the encrypted rounds and the model chain run
through one scripted coordinator, and each stage needs the state the one before left.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from paillier_harness import (
    KEY_BITS,
    ORGS4,
    CeremonyCoordinator,
    Crash,
    PaillierParticipant,
    PaillierRound,
    PaillierTransport,
    expected_total,
    initial_weights,
    job_settings,
    local_data,
    make_participants,
    run_ceremony,
)
from secure_round_harness import JOB_ID, Coordinator, membership_store

from examples.synthetic.task import task
from fedsilo import faults
from fedsilo.codec import specs_of, tensors_sha256
from fedsilo.paillier_versions import tag_binding
from fedsilo.pki import DemoPki, Role, create_ca, issue, load_private_key, make_demo_pki
from fedsilo.protection import Protection, flatten, unflatten
from fedsilo.strategies import StrategyChoice, StrategyParameters, apply_server_step
from participant.domain.assignments import (
    AdvertisedKeys,
    KeyCeremonyStepData,
    SecAggPhase,
    StepOutcome,
)
from participant.errors import ModelUnavailable, RequestRefused, SecAggUnavailable
from participant.service import key_ceremony
from participant.service.key_ceremony import CeremonyParticipant
from participant.service.paillier_state import PaillierJobState, PaillierStateStore
from secagg import SignedKeys, decode_fields
from secagg.paillier import (
    DealtKey,
    JobKey,
    PackingLayout,
    PaillierCiphertexts,
    PaillierPrivateKey,
    SealedKey,
    decrypt_vector,
    encrypt_integers,
    make_job_key,
    sign_public_key,
)
from secagg.paillier.tags import input_tag

DEALER = "org-a"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), ORGS4)


@pytest.fixture
def coordinator(pki: DemoPki) -> CeremonyCoordinator:
    return CeremonyCoordinator(pki)


@pytest.fixture
def generated(paillier_key: PaillierPrivateKey) -> list[int]:
    """Key sizes the dealer's generator was asked for."""
    return []


@pytest.fixture
def generate(
    paillier_key: PaillierPrivateKey, generated: list[int]
) -> Callable[[int], PaillierPrivateKey]:
    def make(bits: int) -> PaillierPrivateKey:
        generated.append(bits)
        return paillier_key

    return make


@pytest.fixture
def participants(
    pki: DemoPki,
    tmp_path: Path,
    coordinator: CeremonyCoordinator,
    generate: Callable[[int], PaillierPrivateKey],
) -> list[PaillierParticipant]:
    return make_participants(pki, tmp_path, coordinator, generate)


def _late_participant(
    pki: DemoPki,
    tmp_path: Path,
    coordinator: CeremonyCoordinator,
    generate: Callable[[int], PaillierPrivateKey],
) -> PaillierParticipant:
    (late,) = make_participants(pki, tmp_path, coordinator, generate, orgs=("org-d",))
    return late


def _advertise(coordinator: CeremonyCoordinator, participants: list[PaillierParticipant]) -> None:
    for participant in participants:
        assert participant.step(coordinator.task(participant.org)) is StepOutcome.ANSWERED


# -- the key ceremony ---------------------------------------------------------------------------


def test_the_ceremony_gives_every_participant_the_dealers_key(
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
    generated: list[int],
) -> None:
    run_ceremony(coordinator, participants)

    assert generated == [KEY_BITS]
    fingerprint = paillier_key.public_key.fingerprint
    assert coordinator.confirmed == {org: fingerprint for org in ("org-a", "org-b", "org-c")}
    for participant in participants:
        held = participant.private_key()
        assert held is not None and held.public_key == paillier_key.public_key
    # The dealer sent its job key, then the signed public key, the sealed keys and its confirmation.
    assert [action for action, _ in coordinator.sent_by(DEALER)] == [
        "job_key",
        "dealt_key",
        "sealed",
        "confirm",
    ]
    sealed = [
        SealedKey.from_bytes(item) for item in decode_fields(coordinator.sent_by(DEALER)[2][1])
    ]
    assert sorted(s.receiver for s in sealed) == ["org-b", "org-c"]
    assert coordinator.sent_by("org-b") == [
        ("job_key", coordinator.job_keys["org-b"][0]),
        ("confirm", fingerprint),
    ]


def test_the_key_is_kept_in_private_files(
    coordinator: CeremonyCoordinator, participants: list[PaillierParticipant]
) -> None:
    run_ceremony(coordinator, participants)

    for participant in participants:
        job_dir = participant.state_dir / "paillier" / JOB_ID
        assert stat.S_IMODE(job_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((participant.state_dir / "paillier").stat().st_mode) == 0o700
        assert stat.S_IMODE((job_dir / "job.json").stat().st_mode) == 0o600
        state = participant.store.load(JOB_ID)
        assert state is not None and state.outbox == () and state.refusal == ""
        assert state.parameters is not None and state.parameters.cohort == ()


def test_a_late_participant_gets_the_key_sealed_by_a_holder(
    pki: DemoPki,
    tmp_path: Path,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    generate: Callable[[int], PaillierPrivateKey],
    generated: list[int],
    paillier_key: PaillierPrivateKey,
) -> None:
    run_ceremony(coordinator, participants)
    late = _late_participant(pki, tmp_path, coordinator, generate)

    assert late.step(coordinator.task(late.org)) is StepOutcome.ANSWERED  # advertise
    seal = coordinator.step_data("org-a")
    assert seal is not None and seal.action == "seal"
    assert participants[0].step(coordinator.task("org-a", seal)) is StepOutcome.ANSWERED
    receive = coordinator.step_data(late.org)
    assert receive is not None and receive.action == "receive"
    assert late.step(coordinator.task(late.org, receive)) is StepOutcome.ANSWERED

    held = late.private_key()
    assert held is not None and held.public_key == paillier_key.public_key
    assert coordinator.confirmed[late.org] == paillier_key.public_key.fingerprint
    assert generated == [KEY_BITS]  # one key for the job, however many join


def test_a_restarted_dealer_deals_the_same_bytes_once(
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    generated: list[int],
) -> None:
    _advertise(coordinator, participants)
    dealer = participants[0]
    deal = coordinator.task(DEALER)
    dealer.transport.fail_ceremony_after = dealer.transport.ceremony_calls  # dies before sending

    with pytest.raises(Crash):
        dealer.step(deal)
    state = dealer.store.load(JOB_ID)
    assert state is not None and [m.action for m in state.outbox] == [
        "dealt_key",
        "sealed",
        "confirm",
    ]
    assert coordinator.dealt is None

    dealer = dealer.restart()
    assert dealer.step(deal) is StepOutcome.ANSWERED
    assert generated == [KEY_BITS]
    assert [(DEALER, m.action, m.body) for m in state.outbox] == coordinator.received[-3:]


def test_a_dealer_whose_dealt_key_is_refused_discards_it_and_receives_the_jobs_key(
    coordinator: CeremonyCoordinator, participants: list[PaillierParticipant]
) -> None:
    # Another organization's key became the job's first: the one made here must not stay, or
    # this participant would refuse to receive the job's key.
    _advertise(coordinator, participants)
    dealer, other = participants[0], participants[1]
    dealer.transport.refused_actions = {"dealt_key"}
    with pytest.raises(RequestRefused):
        dealer.step(coordinator.task(DEALER))
    state = dealer.store.load(JOB_ID)
    assert state is not None
    assert (state.private_key, state.dealt_key, state.sealed, state.outbox) == (b"", b"", {}, ())
    assert state.job_key  # it still takes part with its job key
    deal = KeyCeremonyStepData(
        "deal",
        dealer=other.org,
        key_bits=KEY_BITS,
        job_keys=coordinator.advertised(sorted(coordinator.job_keys)),
        parameters=job_settings(),
    )
    assert other.step(coordinator.task(other.org, deal)) is StepOutcome.ANSWERED
    receive = coordinator.step_data(DEALER)
    assert receive is not None and receive.action == "receive"
    assert dealer.step(coordinator.task(DEALER, receive)) is StepOutcome.ANSWERED
    assert coordinator.confirmed[DEALER] == coordinator.public_key().fingerprint


def test_a_dealer_that_crashed_after_the_dealt_key_finishes_without_being_asked(
    coordinator: CeremonyCoordinator, participants: list[PaillierParticipant]
) -> None:
    _advertise(coordinator, participants)
    dealer = participants[0]
    dealer.transport.fail_ceremony_after = dealer.transport.ceremony_calls + 1

    with pytest.raises(Crash):
        dealer.step(coordinator.task(DEALER))
    assert coordinator.dealt is not None and DEALER not in coordinator.confirmed
    # The coordinator asks a dealer only once; the restarted daemon sends what is left.
    assert coordinator.step_data(DEALER) is None
    dealer = dealer.restart()
    dealer.ceremony.resume()
    dealer.ceremony.resume()  # once per process

    assert [action for action, _ in coordinator.sent_by(DEALER)] == [
        "job_key",
        "dealt_key",
        "sealed",
        "confirm",
    ]
    run_ceremony(coordinator, participants[1:])
    assert sorted(coordinator.confirmed) == ["org-a", "org-b", "org-c"]


def test_each_step_reaches_its_crash_point_after_each_acknowledged_message(
    pki: DemoPki,
    tmp_path: Path,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    generate: Callable[[int], PaillierPrivateKey],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (point, the message just acknowledged, what the saved outbox still holds)
    reached: list[tuple[str, str, list[str]]] = []

    def crash_point(name: str) -> None:
        assert name in faults.POINTS
        org, action, _ = coordinator.received[-1]
        state = PaillierStateStore(tmp_path / org).load(JOB_ID)
        assert state is not None
        reached.append((name.removeprefix("participant.ceremony."), action, outbox(state)))

    def outbox(state: PaillierJobState) -> list[str]:
        return [m.action for m in state.outbox]

    monkeypatch.setattr(key_ceremony, "crash_point", crash_point)
    run_ceremony(coordinator, participants)
    late = _late_participant(pki, tmp_path, coordinator, generate)
    run_ceremony(coordinator, [*participants, late])

    # A process killed at a point dies at its first message: the rest of the outbox is saved.
    assert reached == [
        *[("after_advertise", "job_key", [])] * 3,
        ("after_deal", "dealt_key", ["sealed", "confirm"]),
        ("after_deal", "sealed", ["confirm"]),
        ("after_deal", "confirm", []),
        *[("after_receive", "confirm", [])] * 2,
        ("after_advertise", "job_key", []),  # the late participant
        ("after_seal", "sealed", []),
        ("after_receive", "confirm", []),
    ]


def test_a_dealer_killed_after_its_public_key_resends_the_rest_without_a_crash_point(
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reached: list[str] = []

    def crash_point(name: str) -> None:
        reached.append(name)
        if name == "participant.ceremony.after_deal":
            raise Crash(name)

    monkeypatch.setattr(key_ceremony, "crash_point", crash_point)
    _advertise(coordinator, participants)
    with pytest.raises(Crash):
        participants[0].step(coordinator.task(DEALER))
    assert coordinator.sent_by(DEALER)[-1][0] == "dealt_key"

    before = list(reached)
    dealer = participants[0].restart()
    dealer.ceremony.resume()  # the outbox a restart finds: no step of this process, no point
    assert reached == before
    assert [action for action, _ in coordinator.sent_by(DEALER)][-2:] == ["sealed", "confirm"]
    run_ceremony(coordinator, participants[1:])
    assert sorted(coordinator.confirmed) == ["org-a", "org-b", "org-c"]


def test_a_restarted_participant_advertises_and_confirms_the_same_bytes(
    coordinator: CeremonyCoordinator, participants: list[PaillierParticipant]
) -> None:
    victim = participants[1]
    task = coordinator.task(victim.org)
    victim.transport.fail_ceremony_after = 0
    with pytest.raises(Crash):
        victim.step(task)
    stored = victim.store.load(JOB_ID)
    assert stored is not None and stored.job_key

    victim = victim.restart()
    assert victim.step(task) is StepOutcome.ANSWERED
    assert coordinator.job_keys[victim.org][0] == stored.job_key
    participants[1] = victim
    _advertise(coordinator, [participants[0], participants[2]])
    assert participants[0].step(coordinator.task(DEALER)) is StepOutcome.ANSWERED

    receive = coordinator.task(victim.org)
    victim.transport.fail_ceremony_after = victim.transport.ceremony_calls
    with pytest.raises(Crash):
        victim.step(receive)
    opened = victim.private_key()
    assert opened is not None  # persisted before the confirmation was sent

    victim = victim.restart()
    assert victim.step(receive) is StepOutcome.ANSWERED
    assert victim.private_key() == opened
    assert coordinator.confirmed[victim.org] == opened.public_key.fingerprint


def _refused(
    participant: PaillierParticipant,
    coordinator: CeremonyCoordinator,
    step: KeyCeremonyStepData,
    caplog: pytest.LogCaptureFixture,
    reason: str,
) -> None:
    """The step is refused, nothing is sent, and the same step is never answered again."""
    bad = coordinator.task(participant.org, step)
    sent = len(coordinator.received)
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert participant.step(bad) is StepOutcome.REFUSED
    assert reason in caplog.text and "refused the key-ceremony step" in caplog.text
    assert participant.step(bad) is StepOutcome.LEFT
    assert participant.restart().step(bad) is StepOutcome.LEFT
    assert len(coordinator.received) == sent
    state = participant.store.load(JOB_ID)
    assert state is not None and state.refusal and not state.private_key


def _dealt(coordinator: CeremonyCoordinator, participants: list[PaillierParticipant]) -> None:
    _advertise(coordinator, participants)
    assert participants[0].step(coordinator.task(DEALER)) is StepOutcome.ANSWERED


def test_a_substituted_dealt_key_is_refused(
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _dealt(coordinator, participants)
    honest = coordinator.step_data("org-b")
    assert honest is not None and honest.action == "receive"
    genuine = DealtKey.from_bytes(honest.dealt_key)
    # Another public key (here: one bit changed) under the dealer's name and signature.
    changed = genuine.public_key[:-1] + bytes([genuine.public_key[-1] ^ 1])
    forged = DealtKey(genuine.dealer, changed, genuine.signature)

    _refused(
        participants[1],
        coordinator,
        replace(honest, dealt_key=forged.to_bytes()),
        caplog,
        "signature",
    )
    # The honest step is another step: it is checked afresh and accepted.
    assert participants[1].step(coordinator.task("org-b")) is StepOutcome.ANSWERED


def test_a_dealt_key_signed_under_a_foreign_ca_certificate_is_refused(
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    tmp_path: Path,
    paillier_key: PaillierPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _dealt(coordinator, participants)
    honest = coordinator.step_data("org-c")
    assert honest is not None
    forged = issue(create_ca(), DEALER, Role.PARTICIPANT, tmp_path / "evil")
    dealt = sign_public_key(
        JOB_ID, DEALER, paillier_key.public_key, load_private_key(forged.key_path)
    )

    _refused(
        participants[2],
        coordinator,
        replace(
            honest,
            dealt_key=dealt.to_bytes(),
            dealer_certificate_pem=forged.cert_path.read_bytes(),
        ),
        caplog,
        "not issued by the consortium CA",
    )


def test_a_sealed_key_for_someone_else_is_refused(
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _dealt(coordinator, participants)
    for_c = coordinator.step_data("org-c")
    for_b = coordinator.step_data("org-b")
    assert for_b is not None and for_c is not None

    _refused(
        participants[1],
        coordinator,
        replace(for_b, sealed_key=for_c.sealed_key),
        caplog,
        "addressed to 'org-c'",
    )


def test_a_job_key_under_a_foreign_ca_certificate_makes_the_dealer_refuse(
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    tmp_path: Path,
    generated: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _advertise(coordinator, participants)
    honest = coordinator.step_data(DEALER)
    assert honest is not None and honest.action == "deal"
    # The coordinator slips in a job key of its own for org-b, certified by a CA of its own.
    forged = issue(create_ca(), "org-b", Role.PARTICIPANT, tmp_path / "evil")
    _, job_key = make_job_key(JOB_ID, "org-b", load_private_key(forged.key_path), os.urandom)
    keys = tuple(
        AdvertisedKeys(job_key.to_bytes(), forged.cert_path.read_bytes())
        if JobKey.from_bytes(item.signed_keys).participant == "org-b"
        else item
        for item in honest.job_keys
    )

    _refused(
        participants[0],
        coordinator,
        replace(honest, job_keys=keys),
        caplog,
        "not issued by the consortium CA",
    )
    assert generated == []  # no key exists before every job key checked out


def test_changed_job_settings_are_refused(
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _dealt(coordinator, participants)
    honest = coordinator.step_data("org-b")
    assert honest is not None and honest.parameters is not None
    changed = replace(honest.parameters, clip=0.5)

    _refused(
        participants[1],
        coordinator,
        replace(honest, parameters=changed),
        caplog,
        "settings changed",
    )


def test_a_key_below_2048_bits_is_refused(
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = coordinator.step_data("org-b")
    assert first is not None
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert participants[1].step(coordinator.task("org-b", replace(first, key_bits=1024))) is (
            StepOutcome.REFUSED
        )
    assert "at least 2048 bits" in caplog.text
    assert coordinator.received == []


def test_a_key_below_the_organizations_configured_minimum_is_refused(
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # org-b asks for 3072-bit keys at least (accept.min_paillier_key_bits); the job's are 2048.
    strict = replace(participants[1], min_key_bits=3072)
    first = coordinator.step_data("org-b")
    assert first is not None and first.key_bits == 2048
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert strict.step(coordinator.task("org-b", first)) is StepOutcome.REFUSED
    assert "2048 bits, below this organization's minimum of 3072" in caplog.text
    assert coordinator.received == []
    # The same step is answered by an organization whose minimum the key meets.
    assert participants[2].step(coordinator.task("org-c")) is StepOutcome.ANSWERED


def test_without_an_identity_the_ceremony_is_refused(
    coordinator: CeremonyCoordinator, tmp_path: Path
) -> None:
    ceremony = CeremonyParticipant(
        PaillierTransport(coordinator, "org-a"),
        PaillierStateStore(tmp_path),
        None,
        membership=membership_store(tmp_path, coordinator.pki),
    )
    with pytest.raises(SecAggUnavailable, match="without TLS"):
        ceremony.step(coordinator.task("org-a"))
    assert PaillierStateStore(tmp_path).job_ids() == []


def test_a_participant_that_lost_its_job_key_cannot_receive(
    coordinator: CeremonyCoordinator, participants: list[PaillierParticipant]
) -> None:
    _dealt(coordinator, participants)
    victim = participants[1]
    (victim.state_dir / "paillier" / JOB_ID / "job.json").unlink()

    assert victim.step(coordinator.task(victim.org)) is StepOutcome.DROPPED
    assert victim.org not in coordinator.confirmed


# -- rounds and models --------------------------------------------------------------------------


def _round(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> PaillierRound:
    round_ = PaillierRound(pki, coordinator, [p.org for p in participants])
    round_.run(participants)
    return round_


def _secagg_model(
    round_: PaillierRound, base: list[np.ndarray], orgs: tuple[str, ...]
) -> list[np.ndarray]:
    """What the coordinator of a secagg round would commit: base + the dequantized mean delta."""
    settings = round_.task(SecAggPhase.KEYS).round_settings()
    total = expected_total(round_.params, base, orgs, settings)
    mean = round_.params.quantization().dequantize(total)
    delta = unflatten(mean.mean, specs_of(base), "float64")
    return [(w.astype(np.float64) + d).astype(np.float32) for w, d in zip(base, delta, strict=True)]


def test_a_paillier_round_gives_every_participant_what_secagg_would(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    run_ceremony(coordinator, participants)
    round_ = _round(pki, coordinator, participants)

    base = initial_weights()
    expected = _secagg_model(round_, base, ("org-a", "org-b", "org-c"))
    settings = round_.task(SecAggPhase.KEYS).round_settings()
    bound = round_.params.quantization().mean_error_bound
    for participant in participants:
        version, weights = participant.paillier.model(JOB_ID, -1)
        assert version == 1
        for got, want in zip(weights, expected, strict=True):
            assert got.dtype == np.float32 and np.array_equal(got, want)
    # And that is FedAvg of the clipped deltas, within the quantization bound.
    deltas = []
    weights_of = []
    for org in ("org-a", "org-b", "org-c"):
        result = task.train([w.copy() for w in base], local_data(org), settings)
        deltas.append(np.clip(flatten(result.weights) - flatten(base), -1.0, 1.0))
        weights_of.append(min(result.num_examples, round_.params.max_weight))
    mean = sum(w * d for w, d in zip(weights_of, deltas, strict=True)) / sum(weights_of)
    got = flatten(participants[0].paillier.model(JOB_ID, 1)[1]) - flatten(base)
    assert np.max(np.abs(got - mean)) <= bound + 1e-6
    assert np.max(np.abs(mean)) > 100 * bound


def test_the_encrypted_input_is_byte_tensors_without_count_or_loss(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    run_ceremony(coordinator, participants)
    round_ = PaillierRound(pki, coordinator, [p.org for p in participants])
    for phase in (SecAggPhase.KEYS, SecAggPhase.SHARES):
        round_.run_phase(phase, participants)
    answers = round_.run_phase(SecAggPhase.INPUTS, participants)

    for org, sent in answers.items():
        assert sent.header is not None
        # The ciphertexts, their tag (one ciphertext), and the sender's signature over both
        # and the round (docs/paillier.md).
        data, tag, signature = [(s.dtype, s.shape) for s in sent.header.tensors]
        assert data == ("uint8", (len(round_.encrypted[org]),))
        assert tag == ("uint8", (round_.public.ciphertext_bytes,))
        assert signature == ("uint8", (len(round_.signed[org].signature),))
        assert sent.num_examples == 0 and sent.train_loss == 0.0
        assert sent.assignment.protection is Protection.PAILLIER


def test_a_late_participant_rebuilds_the_current_model_from_version_zero(
    pki: DemoPki,
    tmp_path: Path,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    generate: Callable[[int], PaillierPrivateKey],
) -> None:
    run_ceremony(coordinator, participants)
    _round(pki, coordinator, participants)
    late = _late_participant(pki, tmp_path, coordinator, generate)
    everyone = [*participants, late]
    run_ceremony(coordinator, everyone)
    assert late.private_key() is not None

    round_ = _round(pki, coordinator, everyone)  # base version 1: org-d rebuilds it first
    # Version 1 as served (its digest goes into the round's keys), then the rebuild from 0.
    assert late.transport.downloaded[:3] == [1, 0, 1]

    v1 = participants[0].paillier.model(JOB_ID, 1)[1]
    expected = _secagg_model(round_, v1, ORGS4)
    models = [p.paillier.model(JOB_ID, 2) for p in everyone]
    for version, weights in models:
        assert version == 2
        for got, want in zip(weights, expected, strict=True):
            assert np.array_equal(got, want)
    # Each version is decrypted once, then kept: no download for a kept version.
    downloads = late.transport.downloads
    assert late.restart().paillier.model(JOB_ID, 2)[0] == 2
    assert late.transport.downloads == downloads
    assert participants[1].store.model_versions(JOB_ID) == [0, 1, 2]
    model_file = participants[1].state_dir / "paillier" / JOB_ID / "models" / "2.bin"
    assert stat.S_IMODE(model_file.stat().st_mode) == 0o600


def test_one_ciphertext_passed_off_as_the_aggregate_reveals_no_update(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
) -> None:
    """docs/fault-matrix.md S16: a single participant's input decrypts only to a masked vector."""
    run_ceremony(coordinator, participants)
    round_ = _round(pki, coordinator, participants)
    assert round_.correction is not None
    spec = round_.params.quantization()
    settings = round_.task(SecAggPhase.KEYS).round_settings()
    updates = {
        org: expected_total(round_.params, initial_weights(), (org,), settings)
        for org in ("org-a", "org-b", "org-c")
    }
    victim = "org-b"
    single = PaillierCiphertexts.from_bytes(round_.encrypted[victim], paillier_key.public_key)
    masked = decrypt_vector(paillier_key, single)
    for correction in (round_.correction, np.zeros_like(round_.correction)):
        revealed = (masked + correction.astype(np.uint64)).astype(spec.dtype)
        for update in updates.values():
            # Uniformly random words: about one coordinate in 2^32 agrees by chance.
            assert np.count_nonzero(revealed == update) <= 2
        signed = revealed.view(np.int32)[:-1].astype(np.float64)
        assert np.median(np.abs(signed)) > 2**20  # nowhere near quantized clipped values

    # Served as model version 2 with its own tag, the participants refuse to build on it.
    record = round_.record(single, int.from_bytes(round_.tags[victim], "big"))
    coordinator.models[2] = [np.frombuffer(record, dtype=np.uint8).copy(), round_.correction]
    with pytest.raises(ModelUnavailable, match="version 2"):
        participants[0].paillier.model(JOB_ID, 2)
    assert participants[0].store.model_versions(JOB_ID) == [0, 1]


def test_a_version_that_is_no_mean_of_clipped_updates_is_refused(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
) -> None:
    run_ceremony(coordinator, participants)
    _round(pki, coordinator, participants)
    # Round 2, on version 1: its signed messages are served with the crafted sum as version 2.
    round_ = _round(pki, coordinator, participants)
    assert round_.correction is not None
    params = round_.params
    spec = params.quantization()
    # The last line of defence, against a holder of the key: a sum that passes every check of
    # the record (its tag made with the key) but decrypts to huge values with a plausible weight.
    crafted = np.full(params.vector_length, 2**30, dtype=spec.dtype)
    crafted[-1] = 3
    crafted -= round_.correction  # the participants add the round's correction back
    layout = PackingLayout(32, params.max_participants, paillier_key.public_key.bits)
    plaintexts = layout.pack(crafted)
    public = paillier_key.public_key
    summed = PaillierCiphertexts(
        public.fingerprint,
        layout,
        3,
        params.vector_length,
        tuple(encrypt_integers(public, plaintexts)),
    )
    served_v1 = tensors_sha256(coordinator.models[1])
    binding = tag_binding(JOB_ID, round_.round_id, 1, served_v1)
    (tag,) = encrypt_integers(public, [input_tag(paillier_key, binding, plaintexts)])
    record = round_.record(summed, tag)
    coordinator.models[2] = [np.frombuffer(record, dtype=np.uint8).copy(), round_.correction]

    with pytest.raises(ModelUnavailable, match="not the aggregate of a round"):
        participants[0].paillier.model(JOB_ID, 2)
    assert participants[0].paillier.model(JOB_ID, 1)[0] == 1
    # Tagged with the key: only a key holder could make it, so the job is not stopped.
    assert participants[0].paillier.stopped(JOB_ID) == ""


def test_a_malformed_model_version_is_refused(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    run_ceremony(coordinator, participants)
    _round(pki, coordinator, participants)
    summed, correction = coordinator.models[1]
    coordinator.models[1] = [summed[:-1], correction]

    with pytest.raises(ModelUnavailable, match="version 1 is malformed"):
        participants[0].paillier.model(JOB_ID, 1)
    coordinator.models[1] = [summed, correction[:-1]]
    with pytest.raises(ModelUnavailable, match="must be the version record"):
        participants[1].paillier.model(JOB_ID, 1)


def test_a_restart_mid_round_resends_the_stored_ciphertexts(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    run_ceremony(coordinator, participants)
    round_ = PaillierRound(pki, coordinator, [p.org for p in participants])
    for phase in (SecAggPhase.KEYS, SecAggPhase.SHARES):
        round_.run_phase(phase, participants)
    first = round_.run_phase(SecAggPhase.INPUTS, participants)

    restarted = [p.restart() for p in participants]
    downloads = restarted[0].transport.downloads
    assert restarted[0].step(round_.inputs_task("org-a")) is StepOutcome.ANSWERED
    assert restarted[0].last().payload == first["org-a"].payload  # randomized: from the store
    assert restarted[0].transport.downloads == downloads
    for phase in (SecAggPhase.CONSISTENCY, SecAggPhase.UNMASK):
        round_.run_phase(phase, restarted)
    assert round_.publish() == 1
    assert restarted[2].paillier.model(JOB_ID, 1)[0] == 1


def test_a_round_needs_the_jobs_key(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _advertise(coordinator, participants)  # no key dealt yet
    keys = replace(Coordinator(pki).keys_task(), protection=Protection.PAILLIER)
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert participants[1].step(keys) is StepOutcome.REFUSED
    assert "holds no Paillier key" in caplog.text
    assert participants[1].transport.sent == []


def test_weaker_protection_in_a_paillier_job_is_refused(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    run_ceremony(coordinator, participants)
    secagg = Coordinator(pki)  # the same job, as a plain secagg round
    assert participants[0].step(secagg.keys_task()) is StepOutcome.REFUSED

    # A paillier round whose later phase claims secagg: the masked input would go out in clear.
    round_ = PaillierRound(pki, coordinator, [p.org for p in participants])
    round_.run_phase(SecAggPhase.KEYS, participants)
    shares = replace(round_.shares_task(), protection=Protection.SECAGG)
    assert participants[1].step(shares) is StepOutcome.REFUSED
    assert participants[1].transport.sent[-1].assignment.phase == "keys"


def test_no_key_material_reaches_the_log(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        run_ceremony(coordinator, participants)
        _round(pki, coordinator, participants)
        participants[0].paillier.model(JOB_ID, 1)
    secrets = [
        format(paillier_key.p, "x")[:32],
        format(paillier_key.q, "x")[:32],
        str(paillier_key.p)[:32],
    ]
    for participant in participants:
        state = participant.store.load(JOB_ID)
        assert state is not None and state.job_key_pair is not None
        secrets.append(state.job_key_pair.private_key.hex()[:32])
        secrets.append(state.private_key.hex()[-64:-32])
    assert not [s for s in secrets if s in caplog.text]


# -- strategies with a server step (docs/strategies.md) -------------------------------------------

FEDADAM = StrategyChoice(
    "fedadam", StrategyParameters(server_learning_rate=0.05, beta1=0.9, beta2=0.99, tau=1e-3)
)


def test_every_participant_runs_the_server_step_and_gets_the_same_bits(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    run_ceremony(coordinator, participants)
    strategy = FEDADAM.load()
    orgs = tuple(p.org for p in participants)
    base = initial_weights()
    first = PaillierRound(pki, coordinator, orgs, strategy=FEDADAM)
    first.run(participants)
    expected1, state1 = apply_server_step(strategy, base, _secagg_model(first, base, orgs), None)
    second = PaillierRound(pki, coordinator, orgs, strategy=FEDADAM)
    second.run(participants)  # each participant rebuilt version 1 as its base
    mean2 = _secagg_model(second, expected1, orgs)
    expected2, _ = apply_server_step(strategy, expected1, mean2, state1)
    assert np.max(np.abs(flatten(expected2) - flatten(mean2))) > 1e-3  # not FedAvg

    for participant in participants:
        for version, expected in ((1, expected1), (2, expected2)):
            got = participant.paillier.model(JOB_ID, version)[1]
            assert [w.tobytes() for w in got] == [w.tobytes() for w in expected]
    directory = participants[0].state_dir / "paillier" / JOB_ID
    state_file = directory / "optimizer" / "1.bin"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert participants[0].store.load(JOB_ID).strategy == FEDADAM  # type: ignore[union-attr]

    # A restart resumes the chain from version 1 and its kept state...
    (directory / "models" / "2.bin").unlink()
    (directory / "models" / "2.json").unlink()
    restarted = participants[0].restart()
    downloads = list(restarted.transport.downloaded)
    got = restarted.paillier.model(JOB_ID, 2)[1]
    assert [w.tobytes() for w in got] == [w.tobytes() for w in expected2]
    assert restarted.transport.downloaded[len(downloads) :] == [2]
    # ...and without the state of version 1 it rebuilds from version 0, to the same bits.
    for name in ("models/2.bin", "models/2.json", "optimizer/1.bin", "optimizer/2.bin"):
        (directory / name).unlink()
    got = restarted.restart().paillier.model(JOB_ID, 2)[1]
    assert [w.tobytes() for w in got] == [w.tobytes() for w in expected2]


def test_a_round_naming_another_strategy_is_refused(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    run_ceremony(coordinator, participants)
    orgs = tuple(p.org for p in participants)
    PaillierRound(pki, coordinator, orgs, strategy=FEDADAM).run(participants)
    other = replace(FEDADAM, parameters=replace(FEDADAM.parameters, server_learning_rate=1.0))
    round_ = PaillierRound(pki, coordinator, orgs, strategy=other)
    for participant in participants:
        assert participant.step(round_.task(SecAggPhase.KEYS)) is StepOutcome.REFUSED
    with pytest.raises(ModelUnavailable, match="strategy differs"):
        participants[0].paillier.model(JOB_ID, 1, StrategyChoice())
    # An unknown strategy is refused before anything is recorded.
    fresh = PaillierRound(pki, coordinator, orgs, strategy=StrategyChoice("fedsgd"))
    assert participants[1].store.load(JOB_ID).strategy == FEDADAM  # type: ignore[union-attr]
    assert participants[1].step(fresh.task(SecAggPhase.KEYS)) is StepOutcome.REFUSED


def test_other_ciphertexts_of_the_base_version_for_one_organization_stop_the_round(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    # A coordinator serves one organization other bytes for the round's base version: its
    # keys are signed over another round context, and the others refuse them at SHARES.
    run_ceremony(coordinator, participants)
    _round(pki, coordinator, participants)  # version 1 exists, as ciphertexts
    victim = participants[0]
    honest_download = victim.transport.download_model

    def tampered(job_id: str, version: int) -> tuple[int, list[np.ndarray]]:
        got, tensors = honest_download(job_id, version)
        if got == 1:
            last = tensors[-1].copy()
            last.view(np.uint8)[-1] ^= 1  # one bit of the served bytes
            tensors = [*tensors[:-1], last]
        return got, tensors

    victim.transport.download_model = tampered  # type: ignore[method-assign]
    round_ = PaillierRound(pki, coordinator, [p.org for p in participants])
    keys = []
    for participant in participants:
        assert participant.step(round_.keys_task()) is StepOutcome.ANSWERED
        signed = SignedKeys.from_bytes(participant.last().body)
        pem = pki.participants[participant.org].cert_path.read_bytes()
        keys.append(AdvertisedKeys(signed.to_bytes(), pem))
    sent = {p.org: len(p.transport.sent) for p in participants}
    outcomes = {p.org: p.step(round_.shares_task(keys)) for p in participants}
    assert set(outcomes.values()) == {StepOutcome.REFUSED}, outcomes
    assert {p.org: len(p.transport.sent) for p in participants} == sent
