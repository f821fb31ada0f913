"""The contribution ledger: one masked input per base version, no round id or number reused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from secure_round_harness import (
    ORGS,
    PHASES,
    Coordinator,
    Participant,
    make_participant,
)

from fedsilo.pki import DemoPki, make_demo_pki
from participant.domain.assignments import EndedRound, SecAggPhase, StepOutcome
from participant.errors import StateUnreadable, UntrustedMessage
from participant.service.ledger import ContributionLedger, Stage

JOB = "job-1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), ORGS)


@pytest.fixture
def participants(pki: DemoPki, tmp_path: Path) -> list[Participant]:
    return [make_participant(org, tmp_path / org, pki) for org in ORGS]


# -- the ledger on its own -------------------------------------------------------------------------


def test_a_round_id_is_started_once_even_by_a_new_ledger_object(tmp_path: Path) -> None:
    ContributionLedger(tmp_path).start(JOB, "r-1", 1, 0)
    with pytest.raises(UntrustedMessage, match="round_id r-1 was already taken part in"):
        ContributionLedger(tmp_path).start(JOB, "r-1", 2, 0)


def test_a_round_recorded_just_before_a_crash_may_start_again(tmp_path: Path) -> None:
    # The ledger is written before the round's state: a crash in between leaves only the entry.
    ContributionLedger(tmp_path).start(JOB, "r-1", 1, 0)
    ContributionLedger(tmp_path).start(JOB, "r-1", 1, 0)
    ledger = ContributionLedger(tmp_path)
    ledger.record_ending("r-1", committed=False)
    with pytest.raises(UntrustedMessage, match="already taken part in"):
        ledger.start(JOB, "r-1", 1, 0)


def test_round_numbers_increase_and_base_versions_never_go_back(tmp_path: Path) -> None:
    ledger = ContributionLedger(tmp_path)
    ledger.start(JOB, "r-3", 3, 2)
    with pytest.raises(UntrustedMessage, match="round_number 3 is not above round 3"):
        ledger.start(JOB, "r-3b", 3, 2)
    with pytest.raises(UntrustedMessage, match="round_number 2 is not above round 3"):
        ledger.start(JOB, "r-2", 2, 2)
    with pytest.raises(UntrustedMessage, match="base_version 1 is below version 2"):
        ledger.start(JOB, "r-4", 4, 1)
    ledger.start(JOB, "r-4", 4, 2)  # keys only in round 3: no input from version 2 yet
    # Another job has its own numbering.
    ledger.start("job-2", "r-1", 1, 0)


def test_a_second_input_from_a_base_version_is_refused_after_a_restart(tmp_path: Path) -> None:
    ledger = ContributionLedger(tmp_path)
    ledger.start(JOB, "r-1", 1, 0)
    ledger.record_input(JOB, "r-1", 1, 0)
    restarted = ContributionLedger(tmp_path)
    with pytest.raises(UntrustedMessage, match="base_version 0 of job job-1 already has"):
        restarted.start(JOB, "r-2", 2, 0)
    restarted.record_ending("r-1", committed=True)
    with pytest.raises(UntrustedMessage, match="committed"):
        restarted.start(JOB, "r-2", 2, 0)
    restarted.start(JOB, "r-2", 2, 1)  # the next version is a new base


def test_an_input_to_a_round_reported_aborted_before_any_reveal_may_be_given_again(
    tmp_path: Path,
) -> None:
    # The honest coordinator retries a failed round from the same base version.
    ledger = ContributionLedger(tmp_path)
    ledger.start(JOB, "r-1", 1, 0)
    ledger.record_input(JOB, "r-1", 1, 0)
    ledger.record_ending("r-1", committed=False)
    ledger.start(JOB, "r-2", 2, 0)
    ledger.record_input(JOB, "r-2", 2, 0)
    assert ledger.rounds(JOB)["r-2"].stage is Stage.INPUT


def test_after_revealing_unmask_shares_an_abort_does_not_free_the_base_version(
    tmp_path: Path,
) -> None:
    ledger = ContributionLedger(tmp_path)
    ledger.start(JOB, "r-1", 1, 0)
    ledger.record_input(JOB, "r-1", 1, 0)
    ledger.record_reveal(JOB, "r-1", 1, 0)
    ledger.record_ending("r-1", committed=False)
    with pytest.raises(UntrustedMessage, match="revealed sent, aborted"):
        ledger.start(JOB, "r-2", 2, 0)


def test_two_open_rounds_from_one_base_get_one_input(tmp_path: Path) -> None:
    ledger = ContributionLedger(tmp_path)
    ledger.start(JOB, "r-1", 1, 0)
    ledger.start(JOB, "r-2", 2, 0)
    ledger.record_input(JOB, "r-2", 2, 0)
    ledger.record_input(JOB, "r-2", 2, 0)  # a retry after a crash: the same input
    with pytest.raises(UntrustedMessage, match="already has this organization's masked input"):
        ledger.record_input(JOB, "r-1", 1, 0)


def test_the_first_word_on_how_a_round_ended_is_kept(tmp_path: Path) -> None:
    ledger = ContributionLedger(tmp_path)
    ledger.start(JOB, "r-1", 1, 0)
    ledger.record_input(JOB, "r-1", 1, 0)
    ledger.record_ending("r-1", committed=True)
    ledger.record_ending("r-1", committed=False)
    with pytest.raises(UntrustedMessage, match="committed"):
        ledger.start(JOB, "r-2", 2, 0)


def test_a_damaged_ledger_is_reported_not_ignored(tmp_path: Path) -> None:
    ledger = ContributionLedger(tmp_path)
    ledger.start(JOB, "r-1", 1, 0)
    (tmp_path / "ledger" / f"{JOB}.json").write_text("{not json")
    with pytest.raises(StateUnreadable, match="ledger of job job-1 is damaged"):
        ledger.start(JOB, "r-2", 2, 1)
    assert oct((tmp_path / "ledger").stat().st_mode & 0o777) == "0o700"


# -- in the participant's secure rounds ------------------------------------------------------------


def _complete(coordinator: Coordinator, participants: list[Participant]) -> None:
    for phase in PHASES:
        coordinator.run_phase(phase, participants)
    coordinator.server.finish()


def test_a_restarted_participant_refuses_a_second_round_from_the_same_base(
    participants: list[Participant], pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    _complete(Coordinator(pki), participants)
    restarted = [p.restart() for p in participants]
    again = Coordinator(pki, round_number=2, model_version=0)
    with caplog.at_level(logging.ERROR, logger="participant"):
        outcomes = [p.step(again.keys_task()) for p in restarted]
    assert outcomes == [StepOutcome.REFUSED] * len(ORGS)
    assert "base_version 0 of job job-1 already has this organization's masked input" in (
        caplog.text
    )
    assert all(s.assignment.round_id != again.round_id for p in restarted for s in p.transport.sent)


def test_a_round_id_reused_after_a_forged_ending_is_refused(
    participants: list[Participant], pki: DemoPki
) -> None:
    coordinator = Coordinator(pki)
    for phase in PHASES[:3]:
        coordinator.run_phase(phase, participants)
    target = participants[0]
    target.rounds.finish_rounds([EndedRound(coordinator.round_id, committed=True)])
    assert target.states.load(coordinator.round_id) is None
    sent = len(target.transport.sent)
    assert target.restart().step(coordinator.keys_task()) is StepOutcome.REFUSED
    assert len(target.transport.sent) == sent


def test_a_retry_from_the_same_base_after_an_abort_before_unmask_is_answered(
    participants: list[Participant], pki: DemoPki
) -> None:
    # The honest coordinator's recovery: the round failed at CONSISTENCY, it is reported
    # aborted, and the next round trains from the same model version.
    failed = Coordinator(pki)
    for phase in PHASES[:3]:
        failed.run_phase(phase, participants)
    for participant in participants:
        participant.rounds.finish_rounds([EndedRound(failed.round_id, committed=False)])
    _complete(Coordinator(pki, round_number=2, model_version=0), participants)


def test_a_participant_that_revealed_its_shares_does_not_contribute_again_from_that_base(
    participants: list[Participant], pki: DemoPki
) -> None:
    # A coordinator that reports "aborted" after collecting the unmask answers could still
    # have released the sum: the base version stays spent.
    coordinator = Coordinator(pki)
    for phase in PHASES:
        coordinator.run_phase(phase, participants)
    for participant in participants:
        participant.rounds.finish_rounds([EndedRound(coordinator.round_id, committed=False)])
    again = Coordinator(pki, round_number=2, model_version=0)
    assert [p.step(again.keys_task()) for p in participants] == [StepOutcome.REFUSED] * 3


def test_an_input_to_a_second_open_round_from_the_same_base_is_refused(
    participants: list[Participant], pki: DemoPki
) -> None:
    first = Coordinator(pki)
    second = Coordinator(pki, round_number=2, model_version=0)
    for phase in PHASES[:2]:
        first.run_phase(phase, participants)
        second.run_phase(phase, participants)
    first.run_phase(SecAggPhase.INPUTS, participants)
    target = participants[0]
    sent = len(target.transport.sent)
    assert target.step(second.inputs_task(target.org)) is StepOutcome.REFUSED
    assert len(target.transport.sent) == sent
