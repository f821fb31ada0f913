"""The round state machine: the full transition table per protection mode, plus property tests."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.domain.rounds import (
    TERMINAL_PHASES,
    IllegalTransition,
    Phase,
    Protection,
    Round,
    RoundEvent,
    transition,
)

T0 = 1_700_000_000.0

# Written out here rather than read from the module, so a wrong table cannot agree with itself.
SEQUENCES: dict[Protection, tuple[Phase, ...]] = {
    Protection.NONE: (Phase.CREATED, Phase.INPUTS, Phase.AGGREGATED, Phase.COMMITTED),
    Protection.SECAGG: (
        Phase.CREATED,
        Phase.KEYS,
        Phase.SHARES,
        Phase.INPUTS,
        Phase.CONSISTENCY,
        Phase.UNMASK,
        Phase.AGGREGATED,
        Phase.COMMITTED,
    ),
    Protection.PAILLIER: (
        Phase.CREATED,
        Phase.KEYS,
        Phase.SHARES,
        Phase.INPUTS,
        Phase.CONSISTENCY,
        Phase.UNMASK,
        Phase.AGGREGATED,
        Phase.COMMITTED,
    ),
}


def legal(mode: Protection) -> dict[tuple[Phase, RoundEvent], Phase]:
    sequence = SEQUENCES[mode]
    table: dict[tuple[Phase, RoundEvent], Phase] = {}
    for current, following in itertools.pairwise(sequence):
        table[(current, RoundEvent.PHASE_COMPLETE)] = following
        table[(current, RoundEvent.ABORT)] = Phase.ABORTED
    return table


def make_round(mode: Protection, phase: Phase, **changes: object) -> Round:
    round_ = Round(
        round_id="round-1",
        job_id="job-1",
        number=1,
        protection=mode,
        phase=phase,
        row_version=7,
        base_version=0,
        cohort=("org-a", "org-b"),
        deadline_at=T0 + 60,
        created_at=T0,
    )
    return dataclasses.replace(round_, **changes)  # type: ignore[arg-type]


ALL_CASES = [(mode, phase, event) for mode in Protection for phase in Phase for event in RoundEvent]
LEGAL_CASES = [c for c in ALL_CASES if (c[1], c[2]) in legal(c[0])]
ILLEGAL_CASES = [c for c in ALL_CASES if (c[1], c[2]) not in legal(c[0])]


def test_every_case_is_classified() -> None:
    # none: 3 non-terminal phases x 2 events; secagg and paillier: 7 x 2 each.
    assert len(LEGAL_CASES) == 6 + 14 + 14
    assert len(LEGAL_CASES) + len(ILLEGAL_CASES) == len(Protection) * len(Phase) * len(RoundEvent)


@pytest.mark.parametrize(("mode", "phase", "event"), LEGAL_CASES)
def test_legal_transition(mode: Protection, phase: Phase, event: RoundEvent) -> None:
    before = make_round(mode, phase)
    after = transition(before, event, now=T0 + 5, reason="quorum lost")
    assert after.phase is legal(mode)[(phase, event)]
    assert after.row_version == before.row_version + 1
    assert before.phase is phase and before.row_version == 7  # the input is untouched
    if after.phase in TERMINAL_PHASES:
        assert after.finished_at == T0 + 5
        assert after.is_terminal
    else:
        assert after.finished_at is None
        assert not after.is_terminal
    if after.phase is Phase.ABORTED:
        assert after.abort_reason == "quorum lost"
    else:
        assert after.abort_reason is None  # a reason only belongs to an abort
    unchanged = (
        "round_id",
        "job_id",
        "number",
        "protection",
        "cohort",
        "deadline_at",
        "base_version",
    )
    for name in unchanged:
        assert getattr(after, name) == getattr(before, name)


@pytest.mark.parametrize(("mode", "phase", "event"), ILLEGAL_CASES)
def test_illegal_transition_raises(mode: Protection, phase: Phase, event: RoundEvent) -> None:
    with pytest.raises(IllegalTransition) as refused:
        transition(make_round(mode, phase), event, now=T0)
    message = str(refused.value)
    assert event.value in message and phase.value in message and mode.value in message


@pytest.mark.parametrize("mode", list(Protection))
@pytest.mark.parametrize("phase", sorted(TERMINAL_PHASES))
def test_terminal_phases_accept_nothing(mode: Protection, phase: Phase) -> None:
    done = make_round(mode, phase, finished_at=T0)
    for event in RoundEvent:
        with pytest.raises(IllegalTransition):
            transition(done, event, now=T0 + 1)


def test_terminal_phases_are_committed_and_aborted() -> None:
    assert frozenset({Phase.COMMITTED, Phase.ABORTED}) == TERMINAL_PHASES


@pytest.mark.parametrize("mode", list(Protection))
def test_happy_path_walks_the_whole_sequence(mode: Protection) -> None:
    round_ = make_round(mode, Phase.CREATED, row_version=0)
    seen = [round_.phase]
    while not round_.is_terminal:
        round_ = transition(round_, RoundEvent.PHASE_COMPLETE, now=T0 + len(seen))
        seen.append(round_.phase)
    assert tuple(seen) == SEQUENCES[mode]
    assert round_.row_version == len(SEQUENCES[mode]) - 1
    assert round_.finished_at == T0 + len(seen) - 1


def test_none_mode_skips_the_key_phases() -> None:
    created = make_round(Protection.NONE, Phase.CREATED)
    assert transition(created, RoundEvent.PHASE_COMPLETE, now=T0).phase is Phase.INPUTS
    for phase in (Phase.KEYS, Phase.SHARES, Phase.CONSISTENCY, Phase.UNMASK):
        with pytest.raises(IllegalTransition):
            transition(make_round(Protection.NONE, phase), RoundEvent.PHASE_COMPLETE, now=T0)


def test_a_reason_is_recorded_only_by_an_abort() -> None:
    # A reason passed with PHASE_COMPLETE is ignored; an abort without one invents none.
    inputs = make_round(Protection.NONE, Phase.INPUTS)
    assert transition(inputs, RoundEvent.PHASE_COMPLETE, now=T0, reason="x").abort_reason is None
    aborted = transition(inputs, RoundEvent.ABORT, now=T0 + 3)
    assert aborted.phase is Phase.ABORTED
    assert aborted.abort_reason is None  # no reason given: none invented
    assert aborted.finished_at == T0 + 3


# -- property: random event sequences --------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(
    mode=st.sampled_from(list(Protection)),
    events=st.lists(st.sampled_from(list(RoundEvent)), max_size=20),
)
def test_random_event_sequences_only_move_forward(
    mode: Protection, events: list[RoundEvent]
) -> None:
    sequence = SEQUENCES[mode]
    round_ = make_round(mode, Phase.CREATED, row_version=0)
    applied = 0
    for step, event in enumerate(events):
        before = round_
        try:
            round_ = transition(round_, event, now=T0 + step, reason=f"step {step}")
        except IllegalTransition:
            # Only terminal rounds refuse these two events; a refusal changes nothing.
            assert before.is_terminal
            assert round_ is before
            continue
        applied += 1
        assert not before.is_terminal, "left a terminal phase"
        if event is RoundEvent.ABORT:
            assert round_.phase is Phase.ABORTED
            assert round_.abort_reason == f"step {step}"
        else:
            assert sequence.index(round_.phase) == sequence.index(before.phase) + 1
        assert round_.row_version == applied
        assert (round_.finished_at is not None) == round_.is_terminal
    if round_.is_terminal:
        assert round_.phase in (Phase.ABORTED, sequence[-1])
