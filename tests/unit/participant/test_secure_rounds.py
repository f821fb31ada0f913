"""The participant's secure-aggregation phases, driven in-process against a real SecAggServer."""

from __future__ import annotations

import logging
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from secure_round_harness import (
    ORGS,
    PHASES,
    Coordinator,
    Participant,
    certificate_pem,
    expected_mean,
    make_participant,
    membership_store,
    parameters,
)

from fedsilo.pki import DemoPki, Role, create_ca, issue, load_private_key, make_demo_pki
from participant.domain.assignments import AdvertisedKeys, EndedRound, SecAggPhase, StepOutcome
from participant.domain.policy import AcceptPolicy
from participant.errors import SecAggUnavailable
from participant.service.job_terms import JobTermsStore
from participant.service.ledger import ContributionLedger
from participant.service.secure_rounds import SecureRoundParticipant
from secagg import (
    CohortPolicy,
    EncryptedShare,
    ParticipantContext,
    RoundConfig,
    SecAggClient,
    UnmaskRequest,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), ORGS)


@pytest.fixture
def participants(pki: DemoPki, tmp_path: Path) -> list[Participant]:
    return [make_participant(org, tmp_path / org, pki) for org in ORGS]


def _client_phase(participant: Participant, round_id: str) -> str:
    state = participant.states.load(round_id)
    assert state is not None and state.client is not None
    return str(state.client["state"]["phase"])


def _finish(coordinator: Coordinator, participants: list[Participant]) -> None:
    for phase in PHASES:
        coordinator.run_phase(phase, participants)


def test_a_whole_round_releases_the_weighted_mean_delta(
    participants: list[Participant], pki: DemoPki
) -> None:
    coordinator = Coordinator(pki)
    _finish(coordinator, participants)

    total = coordinator.server.finish()
    spec = coordinator.params.quantization()
    result = spec.dequantize(total)
    settings = coordinator.keys_task().round_settings()
    mean, total_weight = expected_mean(coordinator.params, ORGS, settings)
    assert sorted(coordinator.server.contributors) == list(ORGS)
    assert result.total_weight == total_weight
    assert np.max(np.abs(result.mean - mean)) <= spec.mean_error_bound + 1e-12
    # The update is not trivially zero: the test would not notice a lost contribution otherwise.
    assert np.max(np.abs(mean)) > 100 * spec.mean_error_bound


def test_the_masked_input_travels_as_one_word_tensor_without_count_or_loss(
    participants: list[Participant], pki: DemoPki
) -> None:
    coordinator = Coordinator(pki)
    for phase in PHASES[:2]:
        coordinator.run_phase(phase, participants)
    answers = coordinator.run_phase(SecAggPhase.INPUTS, participants)

    for sent in answers.values():
        assert sent.header is not None
        assert [(s.dtype, s.shape) for s in sent.header.tensors] == [
            ("uint32", (coordinator.params.vector_length,))
        ]
        assert sent.num_examples == 0 and sent.train_loss == 0.0
        assert sent.assignment.model_version == 0


def test_the_weight_is_capped_at_max_weight_with_a_warning(
    participants: list[Participant], pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = Coordinator(pki, parameters(max_weight=50))
    with caplog.at_level(logging.WARNING, logger="participant"):
        _finish(coordinator, participants)

    result = coordinator.params.quantization().dequantize(coordinator.server.finish())
    assert result.total_weight == 50 * len(ORGS)
    settings = coordinator.keys_task().round_settings()
    mean, _ = expected_mean(coordinator.params, ORGS, settings)
    assert np.max(np.abs(result.mean - mean)) <= coordinator.params.quantization().mean_error_bound
    assert sum("capped at max_weight=50" in r.getMessage() for r in caplog.records) == len(ORGS)


def test_a_participant_that_drops_after_its_shares_is_masked_out(
    participants: list[Participant], pki: DemoPki
) -> None:
    coordinator = Coordinator(pki)
    for phase in PHASES[:2]:
        coordinator.run_phase(phase, participants)
    survivors = participants[:2]
    for phase in PHASES[2:]:
        coordinator.run_phase(phase, survivors)

    result = coordinator.params.quantization().dequantize(coordinator.server.finish())
    settings = coordinator.keys_task().round_settings()
    mean, weight = expected_mean(coordinator.params, ORGS[:2], settings)
    assert coordinator.server.contributors == ORGS[:2]
    assert result.total_weight == weight
    assert np.max(np.abs(result.mean - mean)) <= coordinator.params.quantization().mean_error_bound


@pytest.mark.parametrize("restart_after", PHASES)
def test_a_restart_answers_every_phase_byte_identically_and_completes(
    participants: list[Participant], pki: DemoPki, restart_after: SecAggPhase
) -> None:
    coordinator = Coordinator(pki)
    answered: dict[tuple[SecAggPhase, str], bytes] = {}
    for phase in PHASES:
        for org, sent in coordinator.run_phase(phase, participants).items():
            answered[phase, org] = sent.body or sent.payload
        if phase is restart_after:
            break

    participants = [p.restart() for p in participants]
    for phase in PHASES[: PHASES.index(restart_after) + 1]:
        for participant in participants:
            # Only the current phase is offered again by a real coordinator, but every earlier
            # answer must come back the same too.
            assert participant.step(coordinator.task_for(phase, participant.org)) is (
                StepOutcome.ANSWERED
            )
            sent = participant.last()
            assert (sent.body or sent.payload) == answered[phase, participant.org]

    for phase in PHASES[PHASES.index(restart_after) + 1 :]:
        coordinator.run_phase(phase, participants)
    result = coordinator.params.quantization().dequantize(coordinator.server.finish())
    assert result.total_weight > 0 and sorted(coordinator.server.contributors) == list(ORGS)


def test_a_crash_between_saving_the_state_and_the_answer_retrains_to_the_same_bytes(
    participants: list[Participant], pki: DemoPki
) -> None:
    coordinator = Coordinator(pki)
    for phase in PHASES[:2]:
        coordinator.run_phase(phase, participants)
    first = coordinator.run_phase(SecAggPhase.INPUTS, participants)

    # The client state says "input sent" but the stored answer is gone: the daemon trains again
    # with the round's seed and the client reproduces exactly the first masked input (R17).
    victim = participants[0].restart()
    victim.answers.forget(coordinator.round_id, SecAggPhase.INPUTS)
    downloads = victim.transport.downloads
    assert victim.step(coordinator.inputs_task(victim.org)) is StepOutcome.ANSWERED
    assert victim.transport.downloads == downloads + 1
    assert victim.last().payload == first[victim.org].payload


def test_the_stored_masked_input_is_resent_without_training_again(
    participants: list[Participant], pki: DemoPki
) -> None:
    coordinator = Coordinator(pki)
    for phase in PHASES[:3]:
        coordinator.run_phase(phase, participants)
    participant = participants[0]
    downloads = participant.transport.downloads

    assert participant.step(coordinator.inputs_task(participant.org)) is StepOutcome.ANSWERED
    assert participant.transport.downloads == downloads
    assert participant.last().payload == participant.transport.sent[-2].payload


def test_an_unmask_request_listing_the_participant_as_dropped_is_refused_for_good(
    participants: list[Participant], pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = Coordinator(pki)
    for phase in PHASES[:4]:
        coordinator.run_phase(phase, participants)
    victim, others = participants[0], participants[1:]
    honest = coordinator.unmask
    assert honest is not None
    evil = UnmaskRequest(
        tuple(m for m in honest.survivors if m != victim.org),
        (victim.org,),
        honest.signatures,
    )
    sent = len(victim.transport.sent)

    with caplog.at_level(logging.ERROR, logger="participant"):
        outcome = victim.step(coordinator.unmask_task(evil))
    assert outcome is StepOutcome.REFUSED
    assert "refused the round" in caplog.text and "dropped" in caplog.text
    assert _client_phase(victim, coordinator.round_id) == "aborted"
    # Neither the same request, nor the honest one, nor one after a restart gets an answer.
    assert victim.step(coordinator.unmask_task(evil)) is StepOutcome.LEFT
    assert victim.step(coordinator.unmask_task(honest)) is StepOutcome.LEFT
    assert victim.restart().step(coordinator.unmask_task(honest)) is StepOutcome.LEFT
    assert len(victim.transport.sent) == sent

    # The others still complete the round with t = 2 answers.
    coordinator.run_phase(SecAggPhase.UNMASK, others)
    assert sorted(coordinator.server.contributors) == list(ORGS)
    coordinator.server.finish()


def _substituted_keys(
    coordinator: Coordinator, target: str, signing_pem_key: Path, certificate: bytes
) -> list[AdvertisedKeys]:
    """The key list with ``target``'s keys replaced by keys signed with another key."""
    attacker = SecAggClient.start(
        coordinator.config,
        ParticipantContext(target, load_private_key(signing_pem_key), {}),
        CohortPolicy(min_threshold_fraction=Fraction(1, 2), min_cohort=2),
    )
    keys = []
    for entry in coordinator.key_list:
        if entry.participant == target:
            keys.append(AdvertisedKeys(attacker.advertise_keys().to_bytes(), certificate))
        else:
            keys.append(
                AdvertisedKeys(
                    entry.to_bytes(), certificate_pem(coordinator.pki, entry.participant)
                )
            )
    return keys


@pytest.mark.parametrize("certificate", ["foreign-ca", "genuine"])
def test_substituted_keys_are_refused_and_nothing_is_sent(
    participants: list[Participant], pki: DemoPki, tmp_path: Path, certificate: str
) -> None:
    coordinator = Coordinator(pki)
    coordinator.run_phase(SecAggPhase.KEYS, participants)
    # The attacker holds a certificate for org-b from a CA of its own (S14), or forwards org-b's
    # genuine certificate with keys it signed itself.
    forged = issue(create_ca(), "org-b", Role.PARTICIPANT, tmp_path / "evil")
    pem = (
        forged.cert_path.read_bytes()
        if certificate == "foreign-ca"
        else certificate_pem(pki, "org-b")
    )
    task = coordinator.shares_task(_substituted_keys(coordinator, "org-b", forged.key_path, pem))
    victim = participants[0]
    sent = len(victim.transport.sent)

    assert victim.step(task) is StepOutcome.REFUSED
    assert _client_phase(victim, coordinator.round_id) == "aborted"
    assert victim.step(coordinator.shares_task()) is StepOutcome.LEFT
    assert len(victim.transport.sent) == sent
    state = victim.states.load(coordinator.round_id)
    assert state is not None and state.peer_certificates == {}


def test_a_certificate_of_another_org_for_a_peer_is_refused(
    participants: list[Participant], pki: DemoPki
) -> None:
    coordinator = Coordinator(pki)
    coordinator.run_phase(SecAggPhase.KEYS, participants)
    keys = [
        AdvertisedKeys(
            entry.to_bytes(),
            certificate_pem(pki, "org-c" if entry.participant == "org-b" else entry.participant),
        )
        for entry in coordinator.key_list
    ]
    assert participants[0].step(coordinator.shares_task(keys)) is StepOutcome.REFUSED


def test_changed_parameters_in_a_later_phase_are_refused(
    participants: list[Participant], pki: DemoPki
) -> None:
    coordinator = Coordinator(pki)
    coordinator.run_phase(SecAggPhase.KEYS, participants)
    task = coordinator.shares_task()
    assert task.secagg is not None
    changed = replace(task, secagg=replace(task.secagg, parameters=parameters(clip=0.5)))
    victim = participants[0]

    assert victim.step(changed) is StepOutcome.REFUSED
    assert victim.step(task) is StepOutcome.LEFT


def test_the_cohort_order_on_the_wire_does_not_matter(
    participants: list[Participant], pki: DemoPki
) -> None:
    coordinator = Coordinator(pki)
    coordinator.run_phase(SecAggPhase.KEYS, participants)
    task = coordinator.shares_task()
    assert task.secagg is not None
    reordered = parameters(cohort=tuple(reversed(ORGS)))
    assert (
        participants[0].step(replace(task, secagg=replace(task.secagg, parameters=reordered)))
        is StepOutcome.ANSWERED
    )


def test_a_round_over_the_bit_budget_is_refused_before_any_key_is_sent(
    participants: list[Participant], pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = Coordinator(pki, parameters(max_weight=1_000_000))
    participant = participants[0]

    with caplog.at_level(logging.ERROR, logger="participant"):
        assert participant.step(coordinator.keys_task()) is StepOutcome.REFUSED
    assert "bit budget exceeded" in caplog.text
    assert participant.transport.sent == []
    assert participant.rounds.held_round_ids() == [coordinator.round_id]
    assert participant.step(coordinator.keys_task()) is StepOutcome.LEFT
    assert participant.transport.sent == []


def test_a_model_whose_update_does_not_fit_the_vector_length_is_refused(
    participants: list[Participant], pki: DemoPki
) -> None:
    coordinator = Coordinator(pki, parameters(vector_length=100))
    for phase in PHASES[:2]:
        coordinator.run_phase(phase, participants)
    victim = participants[0]
    sent = len(victim.transport.sent)

    assert victim.step(coordinator.inputs_task(victim.org)) is StepOutcome.REFUSED
    assert len(victim.transport.sent) == sent
    assert victim.answers.load(coordinator.round_id, SecAggPhase.INPUTS) is None


def test_another_model_version_is_not_trained_on(
    participants: list[Participant], pki: DemoPki
) -> None:
    coordinator = Coordinator(pki)
    for phase in PHASES[:2]:
        coordinator.run_phase(phase, participants)
    # Restarted after SHARES, the daemon downloads the base again and gets another version.
    first = participants[0]
    first.transport.version = 5
    participant = make_participant(first.org, first.state_dir, pki, first.transport)
    sent = len(participant.transport.sent)

    assert participant.step(coordinator.inputs_task(participant.org)) is StepOutcome.SKIPPED
    assert len(participant.transport.sent) == sent
    assert _client_phase(participant, coordinator.round_id) == "shares_sent"


def test_lost_secrets_make_the_participant_act_as_dropped(
    participants: list[Participant], pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = Coordinator(pki)
    coordinator.run_phase(SecAggPhase.KEYS, participants)
    victim = participants[0]
    victim.states.delete(coordinator.round_id)
    sent = len(victim.transport.sent)

    with caplog.at_level(logging.WARNING, logger="participant"):
        assert victim.step(coordinator.shares_task()) is StepOutcome.DROPPED
    assert "acting as dropped" in caplog.text
    assert len(victim.transport.sent) == sent


def test_a_damaged_state_file_counts_as_lost(participants: list[Participant], pki: DemoPki) -> None:
    coordinator = Coordinator(pki)
    coordinator.run_phase(SecAggPhase.KEYS, participants)
    victim = participants[0]
    (victim.state_dir / "secagg" / f"{coordinator.round_id}.json").write_text("{not json")

    assert victim.step(coordinator.shares_task()) is StepOutcome.DROPPED


def test_ended_rounds_are_deleted_with_their_stored_answer(
    participants: list[Participant], pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = Coordinator(pki)
    for phase in PHASES[:3]:
        coordinator.run_phase(phase, participants)
    participant = participants[0]
    assert participant.rounds.held_round_ids() == [coordinator.round_id]
    assert participant.answers.load(coordinator.round_id, SecAggPhase.INPUTS) is not None

    with caplog.at_level(logging.INFO, logger="participant"):
        participant.rounds.finish_rounds(
            [
                EndedRound("not-held", committed=True),
                EndedRound(coordinator.round_id, committed=False, reason="quorum lost"),
            ]
        )
    assert participant.rounds.held_round_ids() == []
    assert participant.answers.load(coordinator.round_id, SecAggPhase.INPUTS) is None
    assert list((participant.state_dir / "secagg").iterdir()) == []
    assert "ended (aborted: quorum lost)" in caplog.text
    # With its secrets gone the participant can only act as dropped.
    assert participant.step(coordinator.consistency_task()) is StepOutcome.DROPPED


def test_without_an_identity_secure_work_is_refused_and_nothing_is_stored(
    pki: DemoPki, tmp_path: Path
) -> None:
    participant = make_participant("org-a", tmp_path / "org-a", pki)
    rounds = SecureRoundParticipant(
        participant.transport,
        participant.states,
        participant.answers,
        None,
        lambda assignment, weights: pytest.fail("no training without an identity"),
        terms=JobTermsStore(tmp_path / "org-a", AcceptPolicy()),
        ledger=ContributionLedger(tmp_path / "org-a"),
        membership=membership_store(tmp_path / "org-a", pki),
    )
    with pytest.raises(SecAggUnavailable, match="without TLS"):
        rounds.step(Coordinator(pki).keys_task())
    assert rounds.held_round_ids() == []
    assert participant.transport.sent == []


def test_an_identity_for_another_org_cannot_use_the_stored_state(
    participants: list[Participant], pki: DemoPki
) -> None:
    coordinator = Coordinator(pki)
    coordinator.run_phase(SecAggPhase.KEYS, participants)
    # org-b's daemon pointed at org-a's state directory: the state is not its own.
    impostor = make_participant("org-b", participants[0].state_dir, pki)
    assert impostor.step(coordinator.shares_task()) is StepOutcome.DROPPED
    assert impostor.transport.sent == []


def test_a_participant_outside_the_cohort_refuses(pki: DemoPki, tmp_path: Path) -> None:
    coordinator = Coordinator(pki, parameters(cohort=("org-b", "org-c"), threshold=2))
    participant = make_participant("org-a", tmp_path / "org-a", pki)
    assert participant.step(coordinator.keys_task()) is StepOutcome.REFUSED
    assert participant.transport.sent == []


def test_no_secret_reaches_the_log(
    participants: list[Participant], pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = Coordinator(pki)
    secrets: list[str] = []
    with caplog.at_level(logging.DEBUG):
        for phase in PHASES:
            for participant in participants:
                state = participant.states.load(coordinator.round_id)
                if state is not None and state.client is not None:
                    data = state.client["state"]
                    secrets += [
                        value
                        for key, value in data.items()
                        if key.endswith(("private", "seed")) and isinstance(value, str)
                    ]
            answers = coordinator.run_phase(phase, participants)
            for sent in answers.values():
                raw = sent.body or sent.payload
                secrets.append(raw[-32:].hex())
        coordinator.server.finish()

    assert secrets and not [s for s in secrets if s[:32] in caplog.text]


def test_the_round_config_matches_the_coordinator(
    participants: list[Participant], pki: DemoPki
) -> None:
    coordinator = Coordinator(pki)
    coordinator.run_phase(SecAggPhase.KEYS, participants)
    state = participants[0].states.load(coordinator.round_id)
    assert state is not None and state.client is not None
    assert RoundConfig.from_dict(state.client["config"]) == coordinator.config


def test_offers_of_a_round_it_left_are_logged_once_per_phase(
    participants: list[Participant], pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = Coordinator(pki, parameters(max_weight=1_000_000))
    participant = participants[0]
    with caplog.at_level(logging.INFO, logger="participant"):
        for _ in range(4):
            participant.step(coordinator.keys_task())

    messages = [r.getMessage() for r in caplog.records if r.name == "participant"]
    assert sum(m.startswith("refused the round:") for m in messages) == 1
    assert sum("not answering" in m for m in messages) == 1


def test_a_tampered_share_is_refused_and_its_sender_named_in_the_log(
    participants: list[Participant], pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = Coordinator(pki)
    for phase in PHASES[:2]:
        coordinator.run_phase(phase, participants)
    victim = participants[0]
    task = coordinator.inputs_task(victim.org)
    assert task.secagg is not None
    first = EncryptedShare.from_bytes(task.secagg.shares[0])
    tampered = replace(first, ciphertext=first.ciphertext[:-1] + bytes([first.ciphertext[-1] ^ 1]))
    shares = (tampered.to_bytes(), *task.secagg.shares[1:])
    sent = len(victim.transport.sent)
    with caplog.at_level(logging.ERROR, logger="participant"):
        outcome = victim.step(replace(task, secagg=replace(task.secagg, shares=shares)))
    assert outcome is StepOutcome.REFUSED
    assert len(victim.transport.sent) == sent
    assert f"organization {first.sender} sent this participant a bad key share" in caplog.text
