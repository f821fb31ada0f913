"""A malicious server, scripted from the library's own pieces.

docs/fault-matrix.md S10-S15, "Scripted attackers".

Every refusal must raise, leave the participant ABORTED, and make every later request fail.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from secagg_harness import ANY_MAJORITY, Cohort, Drop, Stage, drive, make_cohort

from secagg import (
    ClientPhase,
    ConsistencySignature,
    DecryptionFailed,
    EncryptedShare,
    InvalidInput,
    InvalidShare,
    InvalidSignature,
    ProtocolViolation,
    RoundConfig,
    SecAggClient,
    SignedKeys,
    UnmaskRequest,
)
from secagg.masking.client import KeysAdvertised, SharesSent
from secagg.masking.derivation import (
    advertise_keys_payload,
    share_associated_data,
    share_channel_keys,
)
from secagg.primitives import aead
from secagg.primitives.agreement import generate_key_pair
from secagg.primitives.encoding import encode_fields
from secagg.primitives.shamir import Share
from secagg.primitives.signatures import sign

A, B, C, D, E = (f"org-{i:02d}" for i in range(5))


def _refused(
    client: SecAggClient,
    call: Callable[[], object],
    error: type[Exception] = ProtocolViolation,
    match: str | None = None,
) -> None:
    with pytest.raises(error, match=match):
        call()
    assert client.phase is ClientPhase.ABORTED
    # Sticky: nothing more is answered for this round, not even a repeat of an old request.
    with pytest.raises(ProtocolViolation, match="aborted the round"):
        client.advertise_keys()
    with pytest.raises(ProtocolViolation, match="aborted the round"):
        client.sign_survivors([A, B, C])


def _keys_stage(n: int = 5, t: int = 3) -> tuple[Cohort, tuple[SignedKeys, ...]]:
    cohort = make_cohort(n, t)
    driven = drive(cohort, cohort.vectors(), through=Stage.KEYS)
    return cohort, driven.keys


def _replace(keys: tuple[SignedKeys, ...], member: str, **changes: Any) -> list[SignedKeys]:
    return [dataclasses.replace(k, **changes) if k.participant == member else k for k in keys]


# -- round 1: the key list (S14) ----------------------------------------------------------------


def test_substituted_peer_key_is_refused() -> None:
    cohort, keys = _keys_stage()
    forged = _replace(keys, B, encryption_key=generate_key_pair(lambda n: b"\x05" * n).public_key)
    _refused(cohort.clients[A], lambda: cohort.clients[A].share_keys(forged), InvalidSignature, B)


def test_unsigned_peer_keys_are_refused() -> None:
    cohort, keys = _keys_stage()
    _refused(
        cohort.clients[A],
        lambda: cohort.clients[A].share_keys(_replace(keys, B, signature=b"")),
        InvalidSignature,
        "not signed by its organization",
    )


def test_keys_signed_by_another_organization_are_refused() -> None:
    cohort, keys = _keys_stage()
    entry = next(k for k in keys if k.participant == B)
    payload = advertise_keys_payload(cohort.config, B, entry.encryption_key, entry.masking_key)
    forged = _replace(keys, B, signature=sign(cohort.signing_keys[C], payload))
    _refused(cohort.clients[A], lambda: cohort.clients[A].share_keys(forged), InvalidSignature)


def test_keys_replayed_from_another_round_are_refused() -> None:
    cohort, keys = _keys_stage()
    old = make_cohort(5, 3, round_id="round-0")
    old_keys = drive(old, old.vectors(), through=Stage.KEYS).keys
    stale = [k if k.participant != B else old_keys[1] for k in keys]
    _refused(cohort.clients[A], lambda: cohort.clients[A].share_keys(stale), InvalidSignature)


def test_duplicate_entries_are_refused() -> None:
    cohort, keys = _keys_stage()
    _refused(
        cohort.clients[A],
        lambda: cohort.clients[A].share_keys([*keys, keys[1]]),
        match="two entries",
    )


def test_a_peer_reusing_another_peers_keys_is_refused() -> None:
    cohort, keys = _keys_stage()
    copied = next(k for k in keys if k.participant == B)
    payload = advertise_keys_payload(cohort.config, C, copied.encryption_key, copied.masking_key)
    forged = _replace(
        keys,
        C,
        encryption_key=copied.encryption_key,
        masking_key=copied.masking_key,
        signature=sign(cohort.signing_keys[C], payload),
    )
    _refused(cohort.clients[A], lambda: cohort.clients[A].share_keys(forged), match="are equal")


def test_injected_participant_is_refused() -> None:
    cohort, keys = _keys_stage()
    stranger = dataclasses.replace(keys[1], participant="org-99")
    _refused(
        cohort.clients[A],
        lambda: cohort.clients[A].share_keys([*keys, stranger]),
        match="not in the cohort",
    )


@pytest.mark.parametrize("change", ["missing", "substituted"])
def test_own_keys_must_come_back_unchanged(change: str) -> None:
    cohort, keys = _keys_stage()
    if change == "missing":
        tampered = [k for k in keys if k.participant != A]
    else:
        tampered = _replace(keys, A, masking_key=bytes(range(32)))
    _refused(cohort.clients[A], lambda: cohort.clients[A].share_keys(tampered), match="own keys")


def test_fewer_than_t_keys_are_refused() -> None:
    cohort, keys = _keys_stage()
    _refused(
        cohort.clients[A],
        lambda: cohort.clients[A].share_keys(keys[:2]),
        match="fewer than t=3",
    )


def test_peer_without_a_known_certificate_key_is_refused() -> None:
    cohort, keys = _keys_stage()
    client = cohort.clients[A]
    context = dataclasses.replace(
        cohort.context(A), peer_keys={m: k for m, k in cohort.verifying_keys.items() if m != B}
    )
    restored = SecAggClient.restore(client.to_dict(), context)
    _refused(restored, lambda: restored.share_keys(keys), match="no organization key")


@pytest.mark.parametrize(
    ("key", "message"),
    [(bytes(32), "low-order"), (bytes(31), "not 32 bytes")],
    ids=["low-order", "short"],
)
def test_malformed_keys_signed_by_a_malicious_peer_are_refused(key: bytes, message: str) -> None:
    cohort, keys = _keys_stage()
    entry = next(k for k in keys if k.participant == B)
    payload = advertise_keys_payload(cohort.config, B, entry.encryption_key, key)
    forged = _replace(keys, B, masking_key=key, signature=sign(cohort.signing_keys[B], payload))
    _refused(cohort.clients[A], lambda: cohort.clients[A].share_keys(forged), match=message)


def test_a_wrongly_typed_key_list_is_the_callers_error() -> None:
    cohort, keys = _keys_stage()
    with pytest.raises(InvalidInput, match="sequence of SignedKeys"):
        cohort.clients[A].share_keys([*keys, "not keys"])  # type: ignore[list-item]
    assert cohort.clients[A].phase is ClientPhase.KEYS_ADVERTISED


# -- round 2: routed shares -----------------------------------------------------------------------


def _shares_stage() -> tuple[Cohort, tuple[EncryptedShare, ...], dict[str, np.ndarray]]:
    cohort = make_cohort(5, 3)
    inputs = cohort.vectors()
    driven = drive(cohort, inputs, through=Stage.SHARES)
    return cohort, driven.server.shares_for(A), inputs


def _encrypt_as(cohort: Cohort, sender: str, receiver: str, plaintext: bytes) -> EncryptedShare:
    """What a malicious but key-holding peer can send: well encrypted, bad content."""
    state = cohort.clients[sender].state
    assert isinstance(state, SharesSent)
    receiver_keys = next(k for k in state.keys if k.participant == receiver)
    (channel,) = share_channel_keys(
        cohort.config, state.encryption.private_key, [receiver_keys.encryption_key]
    )
    associated = share_associated_data(cohort.config, sender, receiver)
    return EncryptedShare(sender, receiver, aead.encrypt(channel, plaintext, associated, bytes))


@pytest.mark.parametrize(
    ("tamper", "error", "message"),
    [
        (lambda s: [*s, dataclasses.replace(s[0], receiver=C)], ProtocolViolation, "addressed to"),
        (lambda s: [*s, dataclasses.replace(s[0], sender=A)], ProtocolViolation, "not in the key"),
        (lambda s: [*s, s[0]], ProtocolViolation, "two shares"),
        (lambda s: s[:1], ProtocolViolation, "fewer than t=3"),
        (
            lambda s: [
                dataclasses.replace(s[0], ciphertext=s[0].ciphertext[:-1] + b"\x00"),
                *s[1:],
            ],
            DecryptionFailed,
            "does not decrypt",
        ),
        (
            # B's share for A relabelled as coming from C: wrong key and associated data.
            lambda s: [dataclasses.replace(s[0], sender=C), *s[2:]],
            DecryptionFailed,
            "does not decrypt",
        ),
    ],
    ids=["misrouted", "from-self", "duplicate", "too-few", "tampered", "relabelled"],
)
def test_bad_share_lists_are_refused(
    tamper: Callable[[tuple[EncryptedShare, ...]], list[EncryptedShare]],
    error: type[Exception],
    message: str,
) -> None:
    cohort, shares, inputs = _shares_stage()
    assert [s.sender for s in shares] == [B, C, D, E]
    client = cohort.clients[A]
    _refused(client, lambda: client.mask_input(tamper(shares), inputs[A]), error, message)


@pytest.mark.parametrize(
    ("plaintext", "message"),
    [
        (b"garbage", "malformed"),
        (encode_fields([Share(2, 1).to_bytes(), Share(2, 1).to_bytes()]), "another x"),
    ],
    ids=["garbage", "wrong-x"],
)
def test_bad_share_content_from_a_malicious_peer(plaintext: bytes, message: str) -> None:
    cohort, shares, inputs = _shares_stage()
    bad = _encrypt_as(cohort, B, A, plaintext)
    client = cohort.clients[A]
    _refused(
        client, lambda: client.mask_input([bad, *shares[1:]], inputs[A]), InvalidShare, message
    )


@pytest.mark.parametrize(
    ("update", "message"),
    [
        (np.zeros(8, dtype=np.uint64), "must be uint32"),
        (np.zeros(7, dtype=np.uint32), "expects 8"),
        (np.zeros((2, 4), dtype=np.uint32), "1-D"),
    ],
)
def test_a_bad_update_is_the_callers_error_not_an_abort(update: np.ndarray, message: str) -> None:
    cohort, shares, _ = _shares_stage()
    with pytest.raises(InvalidInput, match=message):
        cohort.clients[A].mask_input(shares, update)
    assert cohort.clients[A].phase is ClientPhase.SHARES_SENT
    with pytest.raises(InvalidInput, match="sequence of EncryptedShare"):
        cohort.clients[A].mask_input(["share"], np.zeros(8, dtype=np.uint32))  # type: ignore[list-item]


def test_a_second_different_input_is_refused() -> None:
    # R17: never two different masked inputs for one round.
    cohort, shares, inputs = _shares_stage()
    client = cohort.clients[A]
    first = client.mask_input(shares, inputs[A])
    again = client.mask_input(list(reversed(shares)), inputs[A].copy())
    assert np.array_equal(first.vector, again.vector)
    _refused(client, lambda: client.mask_input(shares, inputs[B]), match="second, different")


# -- round 3: the survivor set (S12) ------------------------------------------------------------


def _inputs_stage(drops: dict[str, Drop] | None = None) -> Cohort:
    cohort = make_cohort(5, 3)
    drive(cohort, cohort.vectors(), drops, through=Stage.INPUTS)
    return cohort


@pytest.mark.parametrize(
    ("survivors", "message"),
    [
        ([A, B, B, C], "twice"),
        ([A, B, C, E], "sent no shares"),  # E dropped after keys: no shares, not a survivor
        ([B, C, D], "leaves out this participant"),
        ([A, B], "fewer than t=3"),
    ],
)
def test_bad_survivor_sets_are_refused(survivors: list[str], message: str) -> None:
    cohort = _inputs_stage({E: Drop.AFTER_KEYS})
    client = cohort.clients[A]
    _refused(client, lambda: client.sign_survivors(survivors), match=message)


# -- round 4: the unmask request (S10, S11, S12, S13, S15) --------------------------------------


def _unmask_stage(drops: dict[str, Drop] | None = None) -> tuple[Cohort, UnmaskRequest]:
    cohort = make_cohort(5, 3)
    driven = drive(cohort, cohort.vectors(), drops, through=Stage.CONSISTENCY)
    assert driven.request is not None
    return cohort, driven.request


def test_s10_both_shares_of_one_peer_are_refused() -> None:
    cohort, request = _unmask_stage({E: Drop.AFTER_SHARES})
    assert request.dropped == (E,)
    evil = dataclasses.replace(request, dropped=(B, E))
    _refused(cohort.clients[A], lambda: cohort.clients[A].unmask(evil), match="both shares")


def test_s11_itself_listed_as_dropped_is_refused() -> None:
    cohort, request = _unmask_stage({E: Drop.AFTER_SHARES})
    evil = dataclasses.replace(request, survivors=(B, C, D), dropped=(A, E))
    _refused(cohort.clients[A], lambda: cohort.clients[A].unmask(evil), match="itself|as dropped")


def test_s11_a_peer_dropped_earlier_is_refused() -> None:
    cohort, request = _unmask_stage({E: Drop.AFTER_KEYS})
    assert request.dropped == ()
    evil = dataclasses.replace(request, dropped=(E,))
    _refused(cohort.clients[A], lambda: cohort.clients[A].unmask(evil), match="already dropped")


def test_s12_fewer_than_t_survivors_are_refused() -> None:
    cohort, request = _unmask_stage()
    evil = dataclasses.replace(request, survivors=(A, B), dropped=(C, D, E))
    _refused(cohort.clients[A], lambda: cohort.clients[A].unmask(evil), match="fewer than t=3")


def test_s13_equivocation_on_the_survivor_set_is_detected() -> None:
    # The server shows A, B, C the full set and D a set without E, hoping to unmask a subset.
    cohort = make_cohort(5, 3)
    driven = drive(cohort, cohort.vectors(), through=Stage.INPUTS)
    full = driven.survivors
    partial = (A, B, C, D)
    signatures = [cohort.clients[m].sign_survivors(full) for m in (A, B, C)]
    signatures.append(cohort.clients[D].sign_survivors(partial))
    to_d = UnmaskRequest(partial, (E,), tuple(signatures))
    _refused(cohort.clients[D], lambda: cohort.clients[D].unmask(to_d), InvalidSignature, "org-00")
    # A signed the full set; a request for the partial set is not the set it signed.
    to_a = UnmaskRequest(partial, (E,), tuple(signatures))
    _refused(cohort.clients[A], lambda: cohort.clients[A].unmask(to_a), match="differs")


def test_s15_a_second_unmask_for_another_subset_is_refused() -> None:
    cohort, request = _unmask_stage()
    client = cohort.clients[A]
    response = client.unmask(request)
    assert client.phase is ClientPhase.COMPLETED
    # A retry of the same request (in any order) is the same answer, not a second aggregation.
    shuffled = UnmaskRequest(
        tuple(reversed(request.survivors)), (), tuple(reversed(request.signatures))
    )
    assert client.unmask(shuffled).to_bytes() == response.to_bytes()
    subset = dataclasses.replace(request, survivors=request.survivors[:4], dropped=(E,))
    with pytest.raises(ProtocolViolation, match="second, different"):
        client.unmask(subset)
    with pytest.raises(ProtocolViolation, match="second, different"):
        client.unmask(subset)
    assert client.phase is ClientPhase.COMPLETED


@pytest.mark.parametrize(
    ("tamper", "error", "message"),
    [
        (
            lambda r: dataclasses.replace(r, survivors=(*r.survivors, r.survivors[0])),
            ProtocolViolation,
            "twice",
        ),
        (lambda r: dataclasses.replace(r, dropped=()), ProtocolViolation, "not exactly"),
        (
            lambda r: dataclasses.replace(r, signatures=r.signatures[:2]),
            ProtocolViolation,
            "only 2",
        ),
        (
            lambda r: dataclasses.replace(r, signatures=(*r.signatures, r.signatures[0])),
            ProtocolViolation,
            "two signatures",
        ),
        (
            lambda r: dataclasses.replace(
                r, signatures=(*r.signatures, ConsistencySignature(E, b"x"))
            ),
            ProtocolViolation,
            "non-survivors",
        ),
        (
            lambda r: dataclasses.replace(
                r,
                signatures=(
                    r.signatures[0],
                    ConsistencySignature(B, b"forged"),
                    *r.signatures[2:],
                ),
            ),
            InvalidSignature,
            "not on this survivor set",
        ),
    ],
    ids=[
        "duplicate-survivor",
        "incomplete-dropped",
        "too-few-signatures",
        "duplicate-signer",
        "outsider-signer",
        "forged",
    ],
)
def test_bad_unmask_requests_are_refused(
    tamper: Callable[[UnmaskRequest], UnmaskRequest], error: type[Exception], message: str
) -> None:
    cohort, request = _unmask_stage({E: Drop.AFTER_SHARES})
    client = cohort.clients[A]
    _refused(client, lambda: client.unmask(tamper(request)), error, message)


def test_a_wrongly_typed_unmask_request_is_the_callers_error() -> None:
    cohort, _ = _unmask_stage()
    with pytest.raises(InvalidInput, match="UnmaskRequest"):
        cohort.clients[A].unmask("request")  # type: ignore[arg-type]
    assert cohort.clients[A].phase is ClientPhase.SURVIVORS_SIGNED


# -- ordering, abort, logging ---------------------------------------------------------------------


def test_out_of_order_requests_are_refused() -> None:
    cohort, request = _unmask_stage()
    fresh = make_cohort(5, 3)
    client = fresh.start(A)
    _refused(client, lambda: client.unmask(request), match="out of order")
    client = fresh.start(B)
    _refused(client, lambda: client.sign_survivors([A, B, C]), match="out of order")


def test_nothing_is_resent_after_completion() -> None:
    cohort = make_cohort(3, 2)
    inputs = cohort.vectors()
    driven = drive(cohort, inputs, through=Stage.UNMASK)
    client = cohort.clients[A]
    assert client.phase is ClientPhase.COMPLETED
    with pytest.raises(ProtocolViolation, match="complete"):
        client.mask_input(driven.server.shares_for(A), inputs[A])
    with pytest.raises(ProtocolViolation, match="second, different"):
        client.sign_survivors([A, B])
    # Refused, but a finished round stays finished and its answers stay available.
    assert client.phase is ClientPhase.COMPLETED
    assert driven.request is not None
    assert client.unmask(driven.request).participant == A
    client.abort("late abort")  # a finished round stays finished
    assert client.phase is ClientPhase.COMPLETED


def test_abort_on_request_forgets_secrets() -> None:
    cohort, keys = _keys_stage()
    client = cohort.clients[A]
    client.abort("the coordinator aborted the round")
    state = client.to_dict()["state"]
    assert state == {"phase": "aborted", "reason": "the coordinator aborted the round"}
    with pytest.raises(ProtocolViolation, match="coordinator aborted"):
        client.share_keys(keys)


def test_refusals_are_logged_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    cohort, request = _unmask_stage({E: Drop.AFTER_SHARES})
    client = cohort.clients[A]
    secrets = client.to_dict()["state"]
    evil = dataclasses.replace(request, dropped=(B, E))
    with (
        caplog.at_level(logging.WARNING, logger="secagg"),
        pytest.raises(ProtocolViolation) as info,
    ):
        client.unmask(evil)
    record = caplog.records[-1]
    text = record.getMessage() + str(info.value)
    assert "job=job-1 round=round-1 participant=org-00 phase=survivors_signed" in text
    for name in ("masking_private", "self_mask_seed"):
        assert secrets[name] not in text
    for share in secrets["self_mask_shares"].values():
        assert share not in text


def test_start_checks_membership() -> None:
    cohort = make_cohort(3, 2)
    config = RoundConfig("job-1", "round-1", ("x", "y"), 2, 8, context=bytes(32))
    with pytest.raises(InvalidInput, match="not in the round's cohort"):
        SecAggClient.start(config, cohort.context(A), ANY_MAJORITY)
    with pytest.raises(InvalidInput, match="workers"):
        SecAggClient.start(
            cohort.config, dataclasses.replace(cohort.context(A), workers=0), ANY_MAJORITY
        )
    client = cohort.start(A)
    assert isinstance(client.state, KeysAdvertised)
    assert client.config is cohort.config
    assert client.advertise_keys() == client.advertise_keys()


@pytest.mark.parametrize(
    "plaintext",
    [
        b"garbage",
        encode_fields([Share(2, 1).to_bytes(), Share(2, 1).to_bytes()]),
        # Two well-formed fields, but not share-sized: Share.from_bytes refuses them.
        encode_fields([b"\x00" * 5, b"\x00" * 5]),
    ],
    ids=["garbage", "wrong-x", "short-share"],
)
def test_a_malformed_share_names_its_sender(plaintext: bytes) -> None:
    # docs/fault-matrix.md S10-S15: an operator must learn which peer sent the bad share.
    cohort, shares, inputs = _shares_stage()
    bad = _encrypt_as(cohort, B, A, plaintext)
    with pytest.raises(InvalidShare, match=repr(B)) as raised:
        cohort.clients[A].mask_input([bad, *shares[1:]], inputs[A])
    assert raised.value.sender == B


def test_an_undecryptable_share_names_its_sender() -> None:
    cohort, shares, inputs = _shares_stage()
    tampered = dataclasses.replace(shares[1], ciphertext=shares[1].ciphertext[:-1] + b"\x00")
    with pytest.raises(DecryptionFailed) as raised:
        cohort.clients[A].mask_input([shares[0], tampered, *shares[2:]], inputs[A])
    assert raised.value.sender == shares[1].sender == C
