"""Consistency signatures are bound to one run of a round: its key list U1 (docs/secagg.md)."""

from __future__ import annotations

import pytest
from secagg_harness import ANY_MAJORITY, Cohort, Drop, Stage, drive, make_cohort

from secagg import ClientPhase, InvalidSignature, SecAggClient, SecAggServer, UnmaskRequest


def _rerun(cohort: Cohort) -> Cohort:
    """The same round id and cohort with fresh round keys: a second run a coordinator starts."""
    again = Cohort(cohort.config, cohort.signing_keys, cohort.verifying_keys, cohort.key_kind)

    def start(member: str) -> SecAggClient:
        client = SecAggClient.start(
            again.config, again.context(member, random_label="run-2"), ANY_MAJORITY
        )
        again.clients[member] = client
        return client

    again.start = start  # type: ignore[method-assign]
    return again


def test_signatures_of_one_run_do_not_unmask_another_run_of_the_same_round_id() -> None:
    first = make_cohort(5, threshold=4)
    inputs = first.vectors()
    run_one = drive(first, inputs, through=Stage.CONSISTENCY)
    assert run_one.request is not None
    survivors = run_one.request.survivors

    # Second run: the victim signs the same survivor set, but the others never do (here they
    # drop after their input); the coordinator tries the first run's signatures instead.
    second = _rerun(first)
    victim = survivors[0]
    drops = {member: Drop.AFTER_INPUT for member in survivors if member != victim}
    run_two = drive(second, inputs, drops=drops, through=Stage.INPUTS)
    assert run_two.survivors == survivors
    own = second.clients[victim].sign_survivors(run_two.survivors)
    replayed = tuple(s for s in run_one.request.signatures if s.participant != victim) + (own,)
    forged = UnmaskRequest(survivors=survivors, dropped=(), signatures=replayed)

    with pytest.raises(InvalidSignature, match="not on this survivor set"):
        second.clients[victim].unmask(forged)
    assert second.clients[victim].phase is ClientPhase.ABORTED


def test_the_server_refuses_a_consistency_signature_from_another_run() -> None:
    first = make_cohort(3)
    inputs = first.vectors()
    run_one = drive(first, inputs, through=Stage.CONSISTENCY)
    assert run_one.request is not None
    second = _rerun(first)
    server = SecAggServer(second.config, verifying_keys=second.verifying_keys)
    drive(second, inputs, through=Stage.INPUTS, server=server)
    with pytest.raises(InvalidSignature):
        server.receive_consistency(
            run_one.request.signatures[0].participant, run_one.request.signatures[0]
        )


def test_an_honest_round_still_completes() -> None:
    cohort = make_cohort(5, threshold=4)
    driven = drive(cohort, cohort.vectors(), through=Stage.UNMASK)
    assert driven.server.contributors == cohort.config.cohort
