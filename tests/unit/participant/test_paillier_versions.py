"""A coordinator that re-serves a paillier sum with its own corrections learns nothing.

docs/paillier.md, "Authenticated versions": the correction and the contributor count are
recomputed from the round's signed messages, the summed ciphertexts carry the tag of inputs made
for the round and base version they are served as, and one version that fails any check stops
the job at that participant for good. Each test here is one query of the decryption oracle a
coordinator would otherwise have: a version that would decrypt to a plausible mean, refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from paillier_harness import (
    ORGS4,
    CeremonyCoordinator,
    PaillierParticipant,
    PaillierRound,
    make_participants,
    run_ceremony,
)
from secure_round_harness import JOB_ID

from fedsilo.codec import PayloadHeader, encode_tensors
from fedsilo.paillier_versions import PaillierVersion
from fedsilo.pki import DemoPki, make_demo_pki
from fedsilo.protection import SecAggParameters, decode_share_list
from participant.domain.assignments import SecAggPhase, SecAggStepData, StepOutcome
from participant.errors import ModelUnavailable
from participant.service import paillier_jobs, secure_rounds
from participant.service.paillier_jobs import MalformedAggregate, VersionRefused
from participant.service.paillier_vetting import Vetted
from secagg import (
    ConsistencySignature,
    RevealedShare,
    SecAggServer,
    SignedKeys,
    UnmaskResponse,
)
from secagg.paillier import (
    PackingLayout,
    PaillierCiphertexts,
    PaillierPrivateKey,
    add_ciphertexts,
    encrypt_integers,
    encrypt_vector,
    input_tag,
)
from secagg.primitives.shamir import FIELD_PRIME, Share


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), ORGS4)


@pytest.fixture
def coordinator(pki: DemoPki) -> CeremonyCoordinator:
    return CeremonyCoordinator(pki)


@pytest.fixture
def participants(
    pki: DemoPki,
    tmp_path: Path,
    coordinator: CeremonyCoordinator,
    paillier_key: PaillierPrivateKey,
) -> list[PaillierParticipant]:
    generate: Callable[[int], PaillierPrivateKey] = lambda bits: paillier_key  # noqa: E731
    return make_participants(pki, tmp_path, coordinator, generate)


@pytest.fixture
def released(
    pki: DemoPki, coordinator: CeremonyCoordinator, participants: list[PaillierParticipant]
) -> PaillierRound:
    """Round 1 of the job, run by three organizations and published as version 1."""
    run_ceremony(coordinator, participants)
    round_ = PaillierRound(pki, coordinator, [p.org for p in participants])
    assert round_.run(participants) == 1
    return round_


def _record(coordinator: CeremonyCoordinator, version: int) -> PaillierVersion:
    return PaillierVersion.from_bytes(coordinator.models[version][0].tobytes())


def _serve(
    coordinator: CeremonyCoordinator,
    version: int,
    record: PaillierVersion,
    correction: np.ndarray,
) -> None:
    data = np.frombuffer(record.to_bytes(), dtype=np.uint8).copy()
    coordinator.models[version] = [data, correction]


def _one_quantum(round_: PaillierRound) -> np.ndarray:
    """The smallest change of the first coordinate: what a bisecting coordinator adds."""
    spec = round_.params.quantization()
    delta = np.zeros(round_.params.vector_length, dtype=spec.dtype)
    delta[0] = 1
    return delta


def test_an_honest_version_verifies_and_decrypts(
    released: PaillierRound, participants: list[PaillierParticipant]
) -> None:
    versions = [p.paillier.model(JOB_ID, 1)[0] for p in participants]
    assert versions == [1, 1, 1]
    assert all(p.paillier.stopped(JOB_ID) == "" for p in participants)


def test_a_tampered_correction_is_refused(
    released: PaillierRound,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    record, correction = coordinator.models[1]
    # One quantum more in the first coordinate: still a plausible mean, so only the
    # recomputed correction tells it from the round's.
    _serve(coordinator, 1, _record(coordinator, 1), correction + _one_quantum(released))

    with pytest.raises(VersionRefused, match="served mask correction is not the one"):
        participants[0].paillier.model(JOB_ID, 1)
    assert participants[0].store.model_versions(JOB_ID) == [0]


def test_a_tampered_contributor_count_is_refused(
    released: PaillierRound,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
) -> None:
    record = _record(coordinator, 1)
    summed = PaillierCiphertexts.from_bytes(record.ciphertexts, paillier_key.public_key)
    assert summed.contributions == 3
    # A larger count widens every slot and weight bound the participant checks against.
    inflated = PaillierCiphertexts(
        summed.fingerprint, summed.layout, 4, summed.value_count, summed.ciphertexts
    )
    forged = replace(record, ciphertexts=inflated.to_bytes())
    _serve(coordinator, 1, forged, coordinator.models[1][1])

    with pytest.raises(VersionRefused, match="count 4 contributions, the round's signed"):
        participants[0].paillier.model(JOB_ID, 1)


def test_a_sum_shifted_by_an_encryption_of_the_coordinators_choice_is_refused(
    released: PaillierRound,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
) -> None:
    """The oracle's query: the round's sum times Enc(delta), the correction untouched."""
    public = paillier_key.public_key
    record = _record(coordinator, 1)
    summed = PaillierCiphertexts.from_bytes(record.ciphertexts, public)
    layout = PackingLayout(32, released.params.max_participants, public.bits)
    shift = encrypt_vector(public, layout, _one_quantum(released))
    shifted = add_ciphertexts(public, [summed, shift])
    # Counted as the round's three contributions: everything else in the record is the round's.
    shifted = PaillierCiphertexts(
        shifted.fingerprint, layout, 3, shifted.value_count, shifted.ciphertexts
    )
    forged = replace(record, ciphertexts=shifted.to_bytes())
    _serve(coordinator, 1, forged, coordinator.models[1][1])

    with pytest.raises(VersionRefused, match="their tag does not match"):
        participants[1].paillier.model(JOB_ID, 1)
    assert participants[1].store.model_versions(JOB_ID) == [0]


def test_a_sum_re_served_under_another_version_is_refused(
    released: PaillierRound,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    """Round 1's record, transcript and correction included, served again as version 2."""
    assert participants[0].paillier.model(JOB_ID, 1)[0] == 1
    coordinator.models[2] = [w.copy() for w in coordinator.models[1]]

    # Its transcript signs the context of a round on version 0: refused before decrypting.
    with pytest.raises(VersionRefused, match="version 2: the round context its transcript signs"):
        participants[0].paillier.model(JOB_ID, 2)
    assert participants[0].store.model_versions(JOB_ID) == [0, 1]


def test_a_sum_of_another_round_is_refused(
    pki: DemoPki,
    tmp_path: Path,
    released: PaillierRound,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
) -> None:
    """Round 2's record served as version 1: its transcript replays, its tag names base 1."""
    assert PaillierRound(pki, coordinator, [p.org for p in participants]).run(participants) == 2
    (late,) = make_participants(
        pki, tmp_path, coordinator, lambda bits: paillier_key, orgs=("org-d",)
    )
    run_ceremony(coordinator, [*participants, late])
    coordinator.models[1] = [w.copy() for w in coordinator.models[2]]

    # org-d joined later: it rebuilds version 1 first, and is served round 2's sum for it.
    # Its transcript signs the context of a round on version 1: refused before decrypting.
    with pytest.raises(VersionRefused, match="version 1: the round context its transcript signs"):
        late.paillier.model(JOB_ID, 2)
    assert late.store.model_versions(JOB_ID) == [0]


def test_one_refused_version_stops_the_job_for_good_across_a_restart(
    pki: DemoPki,
    released: PaillierRound,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    honest = [w.copy() for w in coordinator.models[1]]
    _serve(coordinator, 1, _record(coordinator, 1), honest[1] + _one_quantum(released))
    with caplog.at_level(logging.ERROR, logger="participant"):
        with pytest.raises(VersionRefused):
            participants[0].paillier.model(JOB_ID, 1)
    (line,) = [r.getMessage() for r in caplog.records if "stopped serving" in r.getMessage()]
    assert f"job {JOB_ID}" in line and "model version 1 failed verification" in line
    assert "served mask correction" in line

    # The report waits in the job's outbox; the restarted daemon sends it to the coordinator,
    # which shows it to the admin (the job's waiting reason) and leaves org-a out of cohorts.
    state = participants[0].store.load(JOB_ID)
    assert state is not None and [m.action for m in state.outbox] == ["stopped"]
    assert coordinator.stopped == {}

    # The coordinator serves the honest version now: too late, whatever it serves.
    coordinator.models[1] = honest
    restarted = participants[0].restart()
    restarted.ceremony.resume()
    assert coordinator.stopped["org-a"].startswith("version 1: the served mask correction")
    state = restarted.store.load(JOB_ID)
    assert state is not None and state.outbox == ()
    assert "model version 1 failed verification" in restarted.paillier.stopped(JOB_ID)
    with pytest.raises(ModelUnavailable, match="stopped serving the job for good"):
        restarted.paillier.model(JOB_ID, 1)
    with pytest.raises(ModelUnavailable, match="stopped serving the job for good"):
        restarted.paillier.model(JOB_ID, -1)
    # The job's next round is refused before any key leaves; the others take part.
    round_ = PaillierRound(pki, coordinator, [p.org for p in participants])
    caplog.clear()
    sent = len(restarted.transport.sent)
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert restarted.step(round_.keys_task()) is StepOutcome.REFUSED
    assert "stopped serving the job for good" in caplog.text
    assert len(restarted.transport.sent) == sent
    assert participants[1].step(round_.keys_task()) is StepOutcome.ANSWERED


def test_a_malformed_input_of_a_contributor_is_refused_without_stopping_the_job(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """org-c holds the key and tags its input properly, but one slot of it overflows. The
    members signed U3 without vetting the inputs (no honest member does,
    tests/unit/participant/test_paillier_vetting.py), so nobody excluded org-c: the version
    verifies (it is the round's), its sum is no aggregate. The coordinator did nothing wrong,
    so nothing is held against it; the round's contributors are named."""
    run_ceremony(coordinator, participants)
    bad = participants[2]
    public = paillier_key.public_key

    def oversized(
        job_id: str, parameters: SecAggParameters, masked: np.ndarray, binding: bytes
    ) -> tuple[PayloadHeader, bytes]:
        layout = PackingLayout(parameters.modulus_bits, parameters.max_participants, public.bits)
        plaintexts = layout.pack(masked)
        # Every carry bit of the first slot set: far above what one input may hold.
        plaintexts[0] += ((1 << layout.carry_bits) - 1) << parameters.modulus_bits
        tag = input_tag(paillier_key, binding, plaintexts)
        *encrypted, tag_ciphertext = encrypt_integers(public, [*plaintexts, tag])
        data = PaillierCiphertexts(public.fingerprint, layout, 1, masked.size, tuple(encrypted))
        tag_bytes = tag_ciphertext.to_bytes(public.ciphertext_bytes, "big")
        return encode_tensors(
            [
                np.frombuffer(data.to_bytes(), dtype=np.uint8),
                np.frombuffer(tag_bytes, dtype=np.uint8),
            ]
        )

    monkeypatch.setattr(bad.paillier, "encrypt_input", oversized)
    round_ = PaillierRound(pki, coordinator, [p.org for p in participants])

    def unvetted(
        paillier: object, assignment: object, data: SecAggStepData, *rest: object, **kw: object
    ) -> Vetted:
        return Vetted(tuple(sorted(data.survivors)), ())

    monkeypatch.setattr(secure_rounds, "vet_inputs", unvetted)
    assert round_.run(participants) == 1

    with caplog.at_level(logging.ERROR, logger="participant"):
        with pytest.raises(MalformedAggregate, match="one of its contributors org-a, org-b, org-c"):
            participants[0].paillier.model(JOB_ID, 1)
    assert "malformed input from one of its contributors" in caplog.text
    assert participants[0].paillier.stopped(JOB_ID) == ""
    state = participants[0].store.load(JOB_ID)
    assert state is not None and state.outbox == ()


def test_a_version_with_a_dropout_verifies_from_the_dropped_masking_key(
    pki: DemoPki,
    tmp_path: Path,
    coordinator: CeremonyCoordinator,
    paillier_key: PaillierPrivateKey,
) -> None:
    """org-d drops after SHARES: the replay reconstructs its masking key from the unmask
    answers, checks it against its signed public key and removes its pairwise masks."""
    everyone = make_participants(pki, tmp_path, coordinator, lambda bits: paillier_key, ORGS4)
    run_ceremony(coordinator, everyone)
    round_ = PaillierRound(pki, coordinator, ORGS4)
    survivors = everyone[:3]
    for phase in (SecAggPhase.KEYS, SecAggPhase.SHARES):
        round_.run_phase(phase, everyone)
    for phase in (SecAggPhase.INPUTS, SecAggPhase.CONSISTENCY, SecAggPhase.UNMASK):
        round_.run_phase(phase, survivors)
    assert round_.publish() == 1
    transcript = _record(coordinator, 1).transcript
    assert transcript.contributors == ("org-a", "org-b", "org-c")
    assert [org for org, _, _ in transcript.keys] == list(ORGS4)

    assert [p.paillier.model(JOB_ID, 1)[0] for p in everyone] == [1, 1, 1, 1]
    # The same version with the dropped organization's answers left out of the shares: the
    # replay no longer knows who sent shares, so it cannot account for org-d's masks.
    record = _record(coordinator, 1)
    shares = tuple(item for item in record.transcript.shares if item[0] != "org-d")
    forged = replace(record, transcript=replace(record.transcript, shares=shares))
    late = make_participants(
        pki, tmp_path / "again", coordinator, lambda bits: paillier_key, ORGS4[:1]
    )[0]
    late.store.save(JOB_ID, everyone[0].store.load(JOB_ID))  # the same key, nothing decrypted
    _serve(coordinator, 1, forged, coordinator.models[1][1])
    with pytest.raises(VersionRefused, match="signed messages do not verify"):
        late.paillier.model(JOB_ID, 1)


def test_a_transcript_certificate_that_does_not_verify_now_refuses_without_stopping(
    tmp_path: Path,
    released: PaillierRound,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    """Checked before anything is decrypted: the refusal says nothing about the aggregate, and
    a certificate may just have expired since the round, so the job is not stopped for it."""
    foreign = make_demo_pki(tmp_path / "foreign", ORGS4)
    record = _record(coordinator, 1)
    keys = tuple(
        (org, body, foreign.participants[org].cert_path.read_bytes() if org == "org-b" else pem)
        for org, body, pem in record.transcript.keys
    )
    forged = replace(record, transcript=replace(record.transcript, keys=keys))
    honest = [w.copy() for w in coordinator.models[1]]
    _serve(coordinator, 1, forged, honest[1])

    with pytest.raises(ModelUnavailable, match="certificate in the round's transcript"):
        participants[0].paillier.model(JOB_ID, 1)
    assert participants[0].paillier.stopped(JOB_ID) == ""
    coordinator.models[1] = honest
    assert participants[0].paillier.model(JOB_ID, 1)[0] == 1


def _correction_a_coordinator_computes(
    round_: PaillierRound, record: PaillierVersion
) -> np.ndarray:
    """The correction the transcript's shares give, replayed without checking one signature:
    what a coordinator serves beside a transcript it forged, so that the two agree."""
    server = SecAggServer(round_.config)
    transcript = record.transcript
    for org, body, _ in transcript.keys:
        server.receive_keys(org, SignedKeys.from_bytes(body))
    server.close_keys()
    for org, body in transcript.shares:
        server.receive_shares(org, decode_share_list(body))
    server.close_shares()
    length = round_.params.vector_length
    server.restore_inputs(transcript.contributors, np.zeros(length, dtype=round_.config.dtype))
    server.close_inputs()
    for org, body in transcript.consistency:
        server.receive_consistency(org, ConsistencySignature.from_bytes(body))
    server.close_consistency()
    for org, body in transcript.unmask:
        server.receive_unmask(org, UnmaskResponse.from_bytes(body))
    return server.finish()


def _shifted_self_mask_seed(response: UnmaskResponse) -> UnmaskResponse:
    """Every responder's share of the first survivor's self-mask seed, plus one: the shares
    still lie on one polynomial, which now hides another seed (its signature kept)."""
    first, *rest = response.self_mask_shares
    moved = Share(first.share.x, (first.share.y + 1) % FIELD_PRIME)
    return replace(response, self_mask_shares=(RevealedShare(first.owner, moved), *rest))


def _unsigned(response: UnmaskResponse) -> UnmaskResponse:
    return replace(response, signature=b"")


@pytest.mark.parametrize(
    "forge",
    [_shifted_self_mask_seed, _unsigned],
    ids=["shares changed by the coordinator", "unsigned answers"],
)
def test_unmask_answers_their_senders_did_not_sign_are_refused_before_decrypting(
    released: PaillierRound,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    monkeypatch: pytest.MonkeyPatch,
    forge: Callable[[UnmaskResponse], UnmaskResponse],
) -> None:
    """The coordinator forwards the round's unmask answers in the transcript. Shares it changed
    consistently (so they reconstruct, to a seed it moved) with the correction they give, or
    answers stripped of their signatures, are refused at the replay: the job stops, and nothing
    was decrypted, so the refusal says nothing about the aggregate."""
    record = _record(coordinator, 1)
    assert np.array_equal(
        _correction_a_coordinator_computes(released, record), coordinator.models[1][1]
    )
    unmask = tuple(
        (org, forge(UnmaskResponse.from_bytes(body)).to_bytes())
        for org, body in record.transcript.unmask
    )
    forged = replace(record, transcript=replace(record.transcript, unmask=unmask))
    _serve(coordinator, 1, forged, _correction_a_coordinator_computes(released, forged))

    def no_decryption(*args: object, **kwargs: object) -> list[int]:
        raise AssertionError("a version whose unmask answers do not verify was decrypted")

    monkeypatch.setattr(paillier_jobs, "decrypt_integers", no_decryption)
    monkeypatch.setattr(participants[0].paillier, "_remembered_sum", lambda *args: None)

    with pytest.raises(VersionRefused, match="the unmask response of 'org-a' is not signed"):
        participants[0].paillier.model(JOB_ID, 1)
    assert "model version 1 failed verification" in participants[0].paillier.stopped(JOB_ID)
    assert participants[0].store.model_versions(JOB_ID) == [0]
