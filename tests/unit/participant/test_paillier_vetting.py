"""A malformed paillier input is attributed to its signed sender and excluded before CONSISTENCY.

docs/threat-model.md, "Out-of-range inputs from a malicious organization": every input is signed
by its sender over the round; before signing U3 every key holder decrypts the other members'
inputs and leaves a sender of a malformed one out, like a dropout, so the round commits the
others' exact sum. A coordinator cannot use the check to exclude an honest organization (the
evidence must be a malformed input its sender signed for this round), nor to have anything but
one signed input decrypted (a sum or a tampered input shown as someone's fails its signature).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from paillier_harness import (
    CeremonyCoordinator,
    PaillierParticipant,
    PaillierRound,
    dealt_participants,
    expected_total,
    initial_weights,
)
from secure_round_harness import JOB_ID

from fedsilo.codec import PayloadHeader, encode_tensors, specs_of
from fedsilo.paillier_inputs import RoundInputs, SignedInput, input_statement
from fedsilo.pki import DemoPki, make_demo_pki
from fedsilo.protection import SecAggParameters, unflatten
from participant.domain.assignments import SecAggPhase, StepOutcome
from secagg import decode_fields
from secagg.paillier import (
    PackingLayout,
    PaillierCiphertexts,
    PaillierPrivateKey,
    add_ciphertexts,
    encrypt_integers,
    input_tag,
)

ORGS = ("org-a", "org-b", "org-c")
BAD = "org-c"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), ORGS)


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
    return dealt_participants(pki, tmp_path, coordinator, paillier_key)


Tamper = Callable[[PackingLayout, list[int]], None]


def _oversized(layout: PackingLayout, plaintexts: list[int]) -> None:
    # Every carry bit of the first slot set: far above the R - 1 one input may hold.
    plaintexts[0] += ((1 << layout.carry_bits) - 1) << layout.modulus_bits


def _padding(layout: PackingLayout, plaintexts: list[int]) -> None:
    # A bit above the last slot of the first plaintext: a non-zero padding bit.
    plaintexts[0] |= 1 << layout.packed_bits


def _malformed_encryption(key: PaillierPrivateKey, tamper: Tamper) -> Callable[..., object]:
    """``PaillierJobs.encrypt_input`` of a key holder that breaks its own input but tags it
    properly (so only the range and padding checks can catch it)."""
    public = key.public_key

    def encrypt(
        job_id: str, parameters: SecAggParameters, masked: np.ndarray, binding: bytes
    ) -> tuple[PayloadHeader, bytes]:
        layout = PackingLayout(parameters.modulus_bits, parameters.max_participants, public.bits)
        plaintexts = layout.pack(masked)
        tamper(layout, plaintexts)
        tag = input_tag(key, binding, plaintexts)
        *encrypted, tag_ciphertext = encrypt_integers(public, [*plaintexts, tag])
        data = PaillierCiphertexts(public.fingerprint, layout, 1, masked.size, tuple(encrypted))
        return encode_tensors(
            [
                np.frombuffer(data.to_bytes(), dtype=np.uint8),
                np.frombuffer(tag_ciphertext.to_bytes(public.ciphertext_bytes, "big"), np.uint8),
            ]
        )

    return encrypt


def _to_inputs(round_: PaillierRound, participants: list[PaillierParticipant]) -> None:
    for phase in (SecAggPhase.KEYS, SecAggPhase.SHARES, SecAggPhase.INPUTS):
        round_.run_phase(phase, participants)


def _consistency_answers(participant: PaillierParticipant) -> int:
    """How many CONSISTENCY answers (signatures on U3) the participant sent."""
    phase = SecAggPhase.CONSISTENCY.value
    return sum(sent.assignment.phase == phase for sent in participant.transport.sent)


def _secagg_model(round_: PaillierRound, orgs: tuple[str, ...]) -> list[np.ndarray]:
    base = initial_weights()
    settings = round_.task(SecAggPhase.KEYS).round_settings()
    mean = round_.params.quantization().dequantize(
        expected_total(round_.params, base, orgs, settings)
    )
    delta = unflatten(mean.mean, specs_of(base), "float64")
    return [(w.astype(np.float64) + d).astype(np.float32) for w, d in zip(base, delta, strict=True)]


def test_a_malformed_input_is_excluded_and_the_round_commits_the_honest_sum(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """org-c's input has an oversized slot. org-a and org-b find it before signing U3, sign
    U3 without org-c and name it; the round then unmasks org-c like a dropout and version 1 is
    exactly the model of org-a's and org-b's inputs, which every holder decrypts."""
    monkeypatch.setattr(
        participants[2].paillier, "encrypt_input", _malformed_encryption(paillier_key, _oversized)
    )
    round_ = PaillierRound(pki, coordinator, ORGS)
    _to_inputs(round_, participants)
    with caplog.at_level(logging.ERROR, logger="participant"):
        round_.run_phase(SecAggPhase.CONSISTENCY, participants, close=False)
    assert sorted(round_.reports) == ["org-a", "org-b"]
    assert all(report.excluded == (BAD,) for report in round_.reports.values())
    named = [
        r.getMessage()
        for r in caplog.records
        if f"organization {BAD} sent a malformed" in r.getMessage()
    ]
    assert len(named) == 2 and all("does not decode" in line for line in named)
    # Each report's signature verifies on U3 without org-c (the coordinator adopts that set).
    round_.exclude([BAD])
    assert round_.survivors == ("org-a", "org-b")
    round_.close(SecAggPhase.CONSISTENCY)
    assert round_.unmask is not None and round_.unmask.dropped == (BAD,)
    round_.run_phase(SecAggPhase.UNMASK, participants[:2])
    assert round_.publish() == 1

    expected = _secagg_model(round_, ("org-a", "org-b"))
    for participant in participants:
        version, model = participant.paillier.model(JOB_ID, 1)
        assert version == 1
        assert all(np.array_equal(m, e) for m, e in zip(model, expected, strict=True))
        assert participant.paillier.stopped(JOB_ID) == ""


@pytest.mark.parametrize("tamper", [_oversized, _padding], ids=["oversized-slot", "padding"])
def test_every_malformed_kind_is_named_in_the_consistency_answer(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    tamper: Tamper,
) -> None:
    monkeypatch.setattr(
        participants[2].paillier, "encrypt_input", _malformed_encryption(paillier_key, tamper)
    )
    round_ = PaillierRound(pki, coordinator, ORGS)
    _to_inputs(round_, participants)
    assert participants[0].step(round_.consistency_task_for("org-a")) is StepOutcome.ANSWERED
    round_.receive(SecAggPhase.CONSISTENCY, "org-a", participants[0].last())
    assert round_.reports["org-a"].excluded == (BAD,)
    # Its signature is on U3 without org-c, for this round and key list (verified on replay).
    round_.exclude([BAD])
    assert [org for org, _ in round_.messages[SecAggPhase.CONSISTENCY]] == ["org-a"]


def test_a_tag_that_does_not_match_is_attributed_to_its_sender(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong tag would make the summed tag fail and every organization stop the job, blaming
    the coordinator: it is caught on the sender's own input instead."""
    honest = participants[2].paillier.encrypt_input

    def wrong_tag(
        job_id: str, parameters: SecAggParameters, masked: np.ndarray, binding: bytes
    ) -> tuple[PayloadHeader, bytes]:
        return honest(job_id, parameters, masked, binding + b"another round")

    monkeypatch.setattr(participants[2].paillier, "encrypt_input", wrong_tag)
    round_ = PaillierRound(pki, coordinator, ORGS)
    _to_inputs(round_, participants)
    assert participants[1].step(round_.consistency_task_for("org-b")) is StepOutcome.ANSWERED
    round_.receive(SecAggPhase.CONSISTENCY, "org-b", participants[1].last())
    assert round_.reports["org-b"].excluded == (BAD,)


def test_an_exclusion_without_a_malformed_signed_input_is_refused(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The coordinator drops honest org-c and shows its (well-formed) signed input as the
    evidence: every member refuses the round rather than sign, and nobody names org-c."""
    round_ = PaillierRound(pki, coordinator, ORGS)
    _to_inputs(round_, participants)
    round_.evidence = (round_.signed[BAD],)
    round_.survivors = ("org-a", "org-b")
    with caplog.at_level(logging.ERROR, logger="participant"):
        for participant in participants[:2]:
            task = round_.consistency_task_for(participant.org)
            assert participant.step(task) is StepOutcome.REFUSED
    assert "but the input it signed for this round is well formed" in caplog.text
    assert f"organization {BAD} sent a malformed" not in caplog.text


def test_an_input_its_sender_did_not_sign_is_never_decrypted(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A decryption oracle on a sum: the coordinator shows org-a the sum of org-b's and
    org-c's inputs as org-c's (or as evidence against org-c). org-c never signed it: refused."""
    round_ = PaillierRound(pki, coordinator, ORGS)
    _to_inputs(round_, participants)
    public = paillier_key.public_key
    b, c = round_.signed["org-b"], round_.signed[BAD]
    summed = add_ciphertexts(
        public,
        [PaillierCiphertexts.from_bytes(item.ciphertexts, public) for item in (b, c)],
    )
    forged = SignedInput(BAD, summed.to_bytes(), c.tag, c.signature)
    statement = input_statement(round_.config, BAD, forged.ciphertexts, forged.tag)
    assert decode_fields(statement)[0]  # the statement covers the shown ciphertexts
    round_.signed[BAD] = forged
    with caplog.at_level(logging.ERROR, logger="participant"):
        task = round_.consistency_task_for("org-a")
        assert participants[0].step(task) is StepOutcome.REFUSED
    assert f"shown for '{BAD}' was not signed by it for this round" in caplog.text


def test_a_step_that_hides_a_member_input_is_refused(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    """Inputs shown must cover U3: one left out could be the malformed one."""
    round_ = PaillierRound(pki, coordinator, ORGS)
    _to_inputs(round_, participants)
    only_b = RoundInputs((round_.signed["org-b"].to_bytes(),))
    task = round_.serve_inputs("org-a", only_b)
    assert participants[0].step(task) is StepOutcome.REFUSED
    assert participants[0].transport.downloaded_inputs == 1
    assert _consistency_answers(participants[0]) == 0


def test_a_step_that_announces_no_inputs_is_refused(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """U3 is never signed unvetted: a step without inputs to download is refused."""
    round_ = PaillierRound(pki, coordinator, ORGS)
    _to_inputs(round_, participants)
    round_.show_inputs = False
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert participants[0].step(round_.consistency_task_for("org-a")) is StepOutcome.REFUSED
    assert "announces no inputs to vet" in caplog.text
    assert participants[0].transport.downloaded_inputs == 0
    assert _consistency_answers(participants[0]) == 0


def test_inputs_announced_above_what_the_cohort_can_send_are_not_downloaded(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The announced size is checked against n - 1 inputs of the job's layout before a byte is
    read: a coordinator cannot make a member hold more than the round's inputs."""
    round_ = PaillierRound(pki, coordinator, ORGS)
    _to_inputs(round_, participants)
    task = round_.consistency_task_for("org-a")
    assert task.secagg is not None and task.secagg.round_inputs is not None
    huge = replace(task.secagg.round_inputs, total_bytes=task.secagg.round_inputs.total_bytes * 4)
    with caplog.at_level(logging.ERROR, logger="participant"):
        step = replace(task, secagg=replace(task.secagg, round_inputs=huge))
        assert participants[0].step(step) is StepOutcome.REFUSED
    assert "bytes of inputs to vet" in caplog.text
    assert participants[0].transport.downloaded_inputs == 0


def test_inputs_that_changed_since_the_step_are_asked_again_not_signed(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    """The coordinator serves other inputs than the step announced (U3 changed meanwhile):
    nothing is signed, the round is not refused, and the fresh step is answered."""
    round_ = PaillierRound(pki, coordinator, ORGS)
    _to_inputs(round_, participants)
    stale = round_.consistency_task_for("org-a")
    round_.ceremony.round_inputs[(stale.round_id, "org-a")] = RoundInputs(
        (round_.signed["org-b"].to_bytes(),)
    ).to_bytes()
    assert participants[0].step(stale) is StepOutcome.SKIPPED
    assert _consistency_answers(participants[0]) == 0
    assert participants[0].step(round_.consistency_task_for("org-a")) is StepOutcome.ANSWERED
    assert _consistency_answers(participants[0]) == 1
