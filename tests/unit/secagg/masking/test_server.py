"""Server bookkeeping: phases, who may submit, idempotent repeats, validation, aborts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from secagg_harness import Cohort, Driven, Drop, Stage, drive, make_cohort, plain_sum, signed_unmask

from secagg import (
    ConsistencySignature,
    InvalidInput,
    InvalidShare,
    InvalidSignature,
    MaskedInput,
    NotEnoughSurvivors,
    RevealedShare,
    SecAggServer,
    ServerPhase,
    UnmaskResponse,
    WrongPhase,
)
from secagg.primitives.shamir import FIELD_PRIME, Share

A, B, C, D, E = (f"org-{i:02d}" for i in range(5))


def _cohort() -> Cohort:
    return make_cohort(5, 3, vector_length=6)


# -- round 0 ---------------------------------------------------------------------------------------


def test_keys_validation() -> None:
    cohort = _cohort()
    server = SecAggServer(cohort.config, verifying_keys=cohort.verifying_keys)
    keys = cohort.start(A).advertise_keys()
    with pytest.raises(WrongPhase, match="not in the cohort"):
        server.receive_keys("org-99", keys)
    with pytest.raises(InvalidInput, match="not signed keys of 'org-01'"):
        server.receive_keys(B, keys)
    with pytest.raises(InvalidInput, match="not 32 bytes"):
        server.receive_keys(A, dataclasses.replace(keys, masking_key=b"short"))
    with pytest.raises(InvalidSignature):
        server.receive_keys(A, dataclasses.replace(keys, signature=b"bad"))
    server.receive_keys(A, keys)
    server.receive_keys(A, keys)  # an identical repeat is a no-op (R7)
    with pytest.raises(InvalidInput, match="different message"):
        server.receive_keys(A, dataclasses.replace(keys, signature=b"other"))  # R8
    reused = dataclasses.replace(cohort.start(B).advertise_keys(), masking_key=keys.masking_key)
    with pytest.raises(InvalidInput, match="already in use"):
        server.receive_keys(B, reused)
    same = dataclasses.replace(reused, encryption_key=reused.masking_key)
    with pytest.raises(InvalidInput, match="already in use"):
        server.receive_keys(B, same)


def test_keys_without_verifying_keys_are_not_checked_but_unknown_orgs_are() -> None:
    cohort = _cohort()
    unchecked = SecAggServer(cohort.config)
    keys = cohort.start(A).advertise_keys()
    unchecked.receive_keys(A, dataclasses.replace(keys, signature=b"unchecked"))
    partial = SecAggServer(cohort.config, verifying_keys={B: cohort.verifying_keys[B]})
    with pytest.raises(InvalidInput, match="no organization key"):
        partial.receive_keys(A, keys)
    with pytest.raises(InvalidInput, match="workers"):
        SecAggServer(cohort.config, workers=0)


# -- phase order and membership --------------------------------------------------------------------


def test_calls_out_of_phase_are_wrong_phase() -> None:
    cohort = _cohort()
    server = SecAggServer(cohort.config)
    for call in (
        server.close_shares,
        server.close_inputs,
        server.close_consistency,
        server.finish,
        lambda: server.shares_for(A),
        lambda: server.receive_shares(A, []),
        lambda: server.receive_masked_input(A, MaskedInput(A, np.zeros(6, np.uint32))),
        lambda: server.receive_consistency(A, ConsistencySignature(A, b"")),
        lambda: server.receive_unmask(A, UnmaskResponse(A, (), (), b"")),
    ):
        with pytest.raises(WrongPhase, match="phase keys"):
            call()
    assert server.phase is ServerPhase.KEYS


def test_shares_validation() -> None:
    cohort = _cohort()
    driven = drive(cohort, cohort.vectors(), {E: Drop.BEFORE_KEYS}, through=Stage.KEYS)
    server = driven.server
    shares = cohort.clients[A].share_keys(driven.keys)
    with pytest.raises(WrongPhase, match="did not advertise keys"):
        server.receive_shares(E, shares)
    with pytest.raises(InvalidInput, match="not all from"):
        server.receive_shares(B, shares)
    with pytest.raises(InvalidInput, match="not all from"):
        server.receive_shares(A, ["share"])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="exactly one share to every other"):
        server.receive_shares(A, shares[:-1])
    with pytest.raises(InvalidInput, match="exactly one share to every other"):
        server.receive_shares(A, [*shares, shares[0]])
    server.receive_shares(A, list(reversed(shares)))
    server.receive_shares(A, shares)  # the same shares in another order: a repeat
    with pytest.raises(InvalidInput, match="different message"):
        server.receive_shares(A, [dataclasses.replace(shares[0], ciphertext=b"x"), *shares[1:]])


def test_routing_delivers_exactly_the_shares_of_u2() -> None:
    cohort = _cohort()
    driven = drive(cohort, cohort.vectors(), {E: Drop.AFTER_KEYS}, through=Stage.SHARES)
    routed = driven.server.shares_for(A)
    assert [(s.sender, s.receiver) for s in routed] == [(B, A), (C, A), (D, A)]
    with pytest.raises(WrongPhase, match="did not send shares"):
        driven.server.shares_for(E)


def test_masked_input_validation() -> None:
    cohort = _cohort()
    inputs = cohort.vectors()
    driven = drive(cohort, inputs, {E: Drop.AFTER_KEYS}, through=Stage.SHARES)
    server = driven.server
    good = cohort.clients[A].mask_input(server.shares_for(A), inputs[A])
    with pytest.raises(WrongPhase, match="did not send shares"):
        server.receive_masked_input(E, MaskedInput(E, good.vector))
    with pytest.raises(InvalidInput, match="not a masked input of 'org-01'"):
        server.receive_masked_input(B, good)
    for vector, message in (
        (good.vector.astype(np.uint64), "6 words of uint32"),
        (good.vector[:5], "6 words of uint32"),
        (good.vector.reshape(2, 3), "1-D"),
        ([1, 2, 3], "1-D"),
    ):
        with pytest.raises(InvalidInput, match=message):
            server.receive_masked_input(A, MaskedInput(A, vector))  # type: ignore[arg-type]
    server.receive_masked_input(A, good)
    with pytest.raises(InvalidInput, match="already added"):
        server.receive_masked_input(A, good)


def test_consistency_validation() -> None:
    cohort = _cohort()
    driven = drive(cohort, cohort.vectors(), {E: Drop.AFTER_SHARES}, through=Stage.INPUTS)
    server = driven.server
    assert server.contributors == (A, B, C, D)
    signature = cohort.clients[A].sign_survivors(driven.survivors)
    with pytest.raises(WrongPhase, match="is not a survivor"):
        server.receive_consistency(E, ConsistencySignature(E, b"x"))
    with pytest.raises(InvalidInput, match="is not 'org-01'"):
        server.receive_consistency(B, signature)
    with pytest.raises(InvalidSignature):
        server.receive_consistency(A, dataclasses.replace(signature, signature=b"forged"))
    server.receive_consistency(A, signature)
    server.receive_consistency(A, signature)
    with pytest.raises(InvalidInput, match="different message"):
        server.receive_consistency(A, dataclasses.replace(signature, signature=b"other"))
    for member in (B, C):
        server.receive_consistency(member, cohort.clients[member].sign_survivors(driven.survivors))
    request = server.close_consistency()
    assert request.survivors == (A, B, C, D)
    assert request.dropped == (E,)
    assert [s.participant for s in request.signatures] == [A, B, C]


def _unmask_stage(drops: dict[str, Drop]) -> tuple[Cohort, Driven, dict[str, UnmaskResponse]]:
    cohort = _cohort()
    driven = drive(cohort, cohort.vectors(), drops, through=Stage.CONSISTENCY)
    assert driven.request is not None
    responses = {
        s.participant: cohort.clients[s.participant].unmask(driven.request)
        for s in driven.request.signatures
    }
    return cohort, driven, responses


def test_unmask_response_validation() -> None:
    cohort, driven, responses = _unmask_stage({E: Drop.AFTER_SHARES, D: Drop.AFTER_INPUT})
    server = driven.server
    response = responses[A]
    with pytest.raises(WrongPhase, match="did not sign"):
        server.receive_unmask(D, dataclasses.replace(response, participant=D))
    with pytest.raises(InvalidInput, match="is not 'org-01'"):
        server.receive_unmask(B, response)
    with pytest.raises(InvalidInput, match="wrong share owners"):
        server.receive_unmask(A, dataclasses.replace(response, masking_key_shares=()))
    with pytest.raises(InvalidInput, match="wrong share owners"):
        server.receive_unmask(
            A, dataclasses.replace(response, self_mask_shares=response.self_mask_shares[1:])
        )
    wrong_x = tuple(RevealedShare(r.owner, Share(5, r.share.y)) for r in response.self_mask_shares)
    with pytest.raises(InvalidInput, match="shares of another x"):
        server.receive_unmask(A, dataclasses.replace(response, self_mask_shares=wrong_x))
    server.receive_unmask(A, response)
    server.receive_unmask(A, response)
    other = (RevealedShare(E, Share(response.masking_key_shares[0].share.x, 1)),)
    with pytest.raises(InvalidInput, match="different message"):
        server.receive_unmask(A, dataclasses.replace(response, masking_key_shares=other))


def test_an_unmask_response_must_carry_its_senders_signature_on_this_round() -> None:
    cohort, driven, responses = _unmask_stage({E: Drop.AFTER_SHARES, D: Drop.AFTER_INPUT})
    server = driven.server
    response = responses[A]
    bad = response.self_mask_shares[0]
    changed = dataclasses.replace(
        response,
        self_mask_shares=(
            RevealedShare(bad.owner, Share(bad.share.x, (bad.share.y + 1) % FIELD_PRIME)),
            *response.self_mask_shares[1:],
        ),
    )
    refused = {
        "unsigned": dataclasses.replace(response, signature=b""),
        "a share changed after signing": changed,
        "signed by another organization": signed_unmask(cohort, driven, changed, signer=B),
        "the signature of another member's answer": dataclasses.replace(
            response, signature=responses[B].signature
        ),
    }
    for what, forged in refused.items():
        with pytest.raises(InvalidSignature, match="not signed by 'org-00'"):
            server.receive_unmask(A, forged)
        assert server.phase is ServerPhase.UNMASK, what
    # Nothing was accepted: the honest answers still unmask the round.
    for member, honest in responses.items():
        server.receive_unmask(member, honest)
    assert np.array_equal(server.finish(), plain_sum(cohort.vectors(), (A, B, C, D)))


def test_an_unmask_response_signed_for_another_survivor_set_or_run_is_refused() -> None:
    # The same shares signed over another U3, or over another run's key list, do not verify.
    cohort, driven, responses = _unmask_stage({E: Drop.AFTER_SHARES, D: Drop.AFTER_INPUT})
    assert driven.request is not None
    other_set = dataclasses.replace(
        driven, request=dataclasses.replace(driven.request, survivors=(A, B, C))
    )
    other_run = dataclasses.replace(driven, keys=driven.keys[1:])
    for elsewhere in (other_set, other_run):
        forged = signed_unmask(cohort, elsewhere, responses[A])
        with pytest.raises(InvalidSignature, match="for this round and survivor set"):
            driven.server.receive_unmask(A, forged)


def test_unmask_responses_without_verifying_keys_are_not_checked() -> None:
    cohort = _cohort()
    server = SecAggServer(cohort.config)
    driven = drive(cohort, cohort.vectors(), through=Stage.CONSISTENCY, server=server)
    assert driven.request is not None
    for signature in driven.request.signatures:
        response = cohort.clients[signature.participant].unmask(driven.request)
        server.receive_unmask(signature.participant, dataclasses.replace(response, signature=b""))
    assert np.array_equal(server.finish(), plain_sum(cohort.vectors(), cohort.config.cohort))


def test_inconsistent_b_shares_abort_the_round() -> None:
    # Four responders, t = 3: the extra share exposes a share that is off the polynomial.
    # B itself sends (and signs) a share off the polynomial.
    cohort, driven, responses = _unmask_stage({})
    server = driven.server
    for member, response in responses.items():
        if member == B:
            bad = response.self_mask_shares[0]
            tampered = RevealedShare(bad.owner, Share(bad.share.x, (bad.share.y + 1) % FIELD_PRIME))
            response = dataclasses.replace(
                response, self_mask_shares=(tampered, *response.self_mask_shares[1:])
            )
            response = signed_unmask(cohort, driven, response)
        server.receive_unmask(member, response)
    with pytest.raises(InvalidShare, match="one polynomial"):
        server.finish()
    assert server.phase is ServerPhase.ABORTED
    assert "one polynomial" in server.abort_reason


def test_a_wrong_masking_key_share_is_detected_by_its_public_key() -> None:
    # Exactly t responders: a bad s_sk share cannot be outvoted but yields a key that does not
    # match the signed s_pk of the dropped participant.
    cohort, driven, responses = _unmask_stage({E: Drop.AFTER_SHARES, D: Drop.AFTER_INPUT})
    server = driven.server
    for member, response in responses.items():
        if member == C:
            bad = response.masking_key_shares[0]
            tampered = RevealedShare(bad.owner, Share(bad.share.x, (bad.share.y + 1) % FIELD_PRIME))
            response = dataclasses.replace(response, masking_key_shares=(tampered,))
            response = signed_unmask(cohort, driven, response)
        server.receive_unmask(member, response)
    with pytest.raises(InvalidShare, match="does not match its s_pk"):
        server.finish()
    assert server.phase is ServerPhase.ABORTED


@pytest.mark.parametrize("stage", list(Stage))
def test_not_enough_survivors_at_each_phase_aborts_for_good(stage: Stage) -> None:
    # R4: at each phase only two of five answer (t = 3); the round aborts and releases nothing.
    cohort = _cohort()
    drop = {
        Stage.KEYS: Drop.BEFORE_KEYS,
        Stage.SHARES: Drop.AFTER_KEYS,
        Stage.INPUTS: Drop.AFTER_SHARES,
        Stage.CONSISTENCY: Drop.AFTER_INPUT,
        Stage.UNMASK: Drop.DURING_UNMASK,
    }[stage]
    server = SecAggServer(cohort.config)
    with pytest.raises(NotEnoughSurvivors, match="only 2 .* fewer than t=3"):
        drive(cohort, cohort.vectors(), {C: drop, D: drop, E: drop}, stage, server=server)
        server.finish()
    assert server.phase is ServerPhase.ABORTED
    assert "fewer than t=3" in server.abort_reason
    with pytest.raises(WrongPhase, match="phase aborted"):
        server.finish()


def test_after_an_abort_nothing_is_accepted_or_released() -> None:
    cohort = _cohort()
    driven = drive(cohort, cohort.vectors(), through=Stage.UNMASK)
    driven.server.abort("admin abort")
    with pytest.raises(WrongPhase, match="phase aborted"):
        driven.server.finish()
    driven.server.abort("again")
    assert driven.server.abort_reason == "admin abort"


def test_finish_releases_once() -> None:
    cohort = _cohort()
    inputs = cohort.vectors()
    driven = drive(cohort, inputs, through=Stage.UNMASK)
    total = driven.server.finish()
    assert np.array_equal(total, plain_sum(inputs, cohort.config.cohort))
    assert driven.server.phase is ServerPhase.FINISHED
    with pytest.raises(WrongPhase, match="phase finished"):
        driven.server.finish()
    driven.server.abort("too late")
    assert driven.server.phase is ServerPhase.FINISHED
    assert driven.server.config is cohort.config
