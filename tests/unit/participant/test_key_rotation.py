"""Rotating a paillier job's key: taken only after a revocation, never back, never to a revoked org.

The test plays the coordinator (``paillier_harness``) for generation 0, then hands out the steps
of generation 1 itself: each is what a coordinator sends after a revocation, or what one that
deviates would send instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from paillier_harness import (
    KEY_BITS,
    ORGS4,
    CeremonyCoordinator,
    PaillierParticipant,
    PaillierRound,
    expected_total,
    job_settings,
    make_participants,
    run_ceremony,
)
from secure_round_harness import JOB_ID, identity_files

from fedsilo.codec import tensors_sha256
from fedsilo.membership import certificate_sha256, sign_membership_list
from fedsilo.paillier_versions import PaillierVersion, key_scope, tag_binding
from fedsilo.pki import DemoPki, load_ca, load_certificate, load_private_key, make_demo_pki
from participant.domain.assignments import (
    AdvertisedKeys,
    KeyCeremonyStepData,
    RevokedKeyHolder,
    SecAggPhase,
    StepOutcome,
)
from participant.domain.policy import AcceptPolicy
from participant.errors import ModelUnavailable
from participant.service.identity import IdentityFiles
from participant.service.key_ceremony import CeremonyParticipant
from participant.service.ledger import ContributionLedger
from participant.service.paillier_jobs import VersionRefused
from participant.service.paillier_state import PaillierStateStore
from secagg import CohortPolicy, decode_fields
from secagg.paillier import (
    PackingLayout,
    PaillierCiphertexts,
    PaillierPrivateKey,
    SealedKey,
    encrypt_integers,
    generate_private_key,
    input_tag,
    make_job_key,
    sign_public_key,
)

DEALER = "org-a"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), ORGS4)


@pytest.fixture(scope="module")
def second_key() -> PaillierPrivateKey:
    """The key of generation 1 (another key than generation 0's)."""
    return generate_private_key(KEY_BITS, os.urandom)


@pytest.fixture
def keys(
    paillier_key: PaillierPrivateKey, second_key: PaillierPrivateKey
) -> list[PaillierPrivateKey]:
    """What the dealer's generator hands out, in order."""
    return [paillier_key, second_key]


@pytest.fixture
def participants(
    pki: DemoPki, tmp_path: Path, keys: list[PaillierPrivateKey]
) -> list[PaillierParticipant]:
    coordinator = CeremonyCoordinator(pki)
    everyone = make_participants(pki, tmp_path, coordinator, lambda bits: keys.pop(0))
    run_ceremony(coordinator, everyone)
    return everyone


def signed_list(
    pki: DemoPki, serial: int, members: Sequence[str], revoked: Sequence[str] = ()
) -> bytes:
    ca = load_ca(pki.ca_cert, pki.ca_key)
    prints = {
        org: [certificate_sha256(load_certificate(pki.participants[org].cert_path))]
        for org in members
    }
    return sign_membership_list(ca.cert, ca.key, prints, revoked, serial)


def publish(participants: Sequence[PaillierParticipant], document: bytes) -> None:
    for participant in participants:
        assert participant.membership.offer(document)


def certificate(pki: DemoPki, org: str) -> bytes:
    return pki.participants[org].cert_path.read_bytes()


def job_keys_sent(participant: PaillierParticipant) -> list[bytes]:
    """Every job key the participant sent, one per generation it advertised in."""
    coordinator = participant.transport.coordinator
    return [body for action, body in coordinator.sent_by(participant.org) if action == "job_key"]


def job_key_of(participant: PaillierParticipant) -> bytes:
    """The job key the participant sent last (its current generation's)."""
    return job_keys_sent(participant)[-1]


def evidence(pki: DemoPki, participant: PaillierParticipant) -> tuple[RevokedKeyHolder, ...]:
    """The job key ``participant`` advertised in generation 0, as a revoked holder's."""
    body = job_keys_sent(participant)[0]
    return (RevokedKeyHolder(0, AdvertisedKeys(body, certificate(pki, participant.org))),)


def revoke_org_c(pki: DemoPki, participants: Sequence[PaillierParticipant], serial: int) -> None:
    """The CA revokes org-c; the coordinator's view of the ceremony starts generation 1."""
    publish(participants, signed_list(pki, serial, ["org-a", "org-b", "org-d"], ["org-c"]))
    coordinator = participants[0].transport.coordinator
    coordinator.job_keys.clear()
    coordinator.dealt = None
    coordinator.sealed.clear()
    coordinator.confirmed.clear()


def step(participant: PaillierParticipant, data: KeyCeremonyStepData) -> StepOutcome:
    return participant.step(participant.transport.coordinator.task(participant.org, data))


def advertise(generation: int, revoked: tuple[RevokedKeyHolder, ...] = ()) -> KeyCeremonyStepData:
    return KeyCeremonyStepData(
        "advertise",
        key_bits=KEY_BITS,
        parameters=job_settings(),
        generation=generation,
        revoked_holders=revoked,
    )


def refused(
    participant: PaillierParticipant,
    data: KeyCeremonyStepData,
    caplog: pytest.LogCaptureFixture,
    reason: str,
) -> None:
    """Refused with ``reason``, nothing sent, the participant's key and generation unchanged."""
    coordinator = participant.transport.coordinator
    before = participant.store.load(JOB_ID)
    sent = len(coordinator.received)
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert step(participant, data) is StepOutcome.REFUSED
    assert reason in caplog.text
    assert len(coordinator.received) == sent
    after = participant.store.load(JOB_ID)
    assert before is not None and after is not None
    assert (after.generation, after.private_key) == (before.generation, before.private_key)


# -- no rotation without a revocation -----------------------------------------------------------


def test_a_rotation_while_every_holder_is_admitted_is_refused(
    pki: DemoPki, participants: list[PaillierParticipant], caplog: pytest.LogCaptureFixture
) -> None:
    org_a, org_b, org_c = participants
    # Every holder is a member: a coordinator asking for generation 1 wants a key dealt again.
    refused(org_a, advertise(1), caplog, "rotated only after a holder is revoked")
    # A holder's job key passed off as a revoked one's changes nothing while the list admits it.
    refused(org_b, advertise(1, evidence(pki, org_c)), caplog, "rotated only after")
    # Unlisted without a revocation by name: its word that it took part proves nothing.
    publish(participants, signed_list(pki, 2, ["org-a", "org-b"]))
    refused(org_b, advertise(1, evidence(pki, org_c)), caplog, "rotated only after")


# -- a revocation rotates the key ---------------------------------------------------------------


def test_a_revocation_rotates_the_key_and_the_old_key_is_kept_read_only(
    pki: DemoPki,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
    second_key: PaillierPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    org_a, org_b, org_c = participants
    revoke_org_c(pki, participants, 2)
    # The dealer sealed the key for org-c itself: the list alone shows the key compromised.
    assert step(org_a, advertise(1)) is StepOutcome.ANSWERED
    # org-b knows only the dealer holds it: it needs org-c's signed job key of generation 0.
    refused(org_b, advertise(1), caplog, "rotated only after")
    assert step(org_b, advertise(1, evidence(pki, org_c))) is StepOutcome.ANSWERED
    new_keys = tuple(AdvertisedKeys(job_key_of(p), certificate(pki, p.org)) for p in (org_a, org_b))
    deal = KeyCeremonyStepData(
        "deal",
        dealer=DEALER,
        key_bits=KEY_BITS,
        job_keys=new_keys,
        parameters=job_settings(),
        generation=1,
    )
    assert step(org_a, deal) is StepOutcome.ANSWERED
    coordinator = org_a.transport.coordinator
    dealt, sealed_body = [body for action, body in coordinator.sent_by(DEALER)][-3:-1]
    (sealed,) = decode_fields(sealed_body)
    assert SealedKey.from_bytes(sealed).receiver == "org-b"  # never org-c
    receive = KeyCeremonyStepData(
        "receive",
        dealer=DEALER,
        key_bits=KEY_BITS,
        job_keys=new_keys[:1],
        dealt_key=dealt,
        dealer_certificate_pem=certificate(pki, DEALER),
        sealed_key=sealed,
        parameters=job_settings(),
        generation=1,
    )
    assert step(org_b, receive) is StepOutcome.ANSWERED

    for participant in (org_a, org_b):
        state = participant.store.load(JOB_ID)
        assert state is not None and state.generation == 1
        assert participant.paillier.private_key(JOB_ID) == second_key
        assert participant.paillier.generation(JOB_ID) == 1
        assert [(r.generation, r.private_key) for r in state.retired] == [
            (0, paillier_key.to_bytes())
        ]
    # org-c never advertised for generation 1 and holds only the old key.
    assert org_c.paillier.private_key(JOB_ID) == paillier_key


def test_a_step_of_an_older_generation_is_refused_also_after_a_restart(
    pki: DemoPki, participants: list[PaillierParticipant], caplog: pytest.LogCaptureFixture
) -> None:
    org_a = participants[0]
    revoke_org_c(pki, participants, 2)
    assert step(org_a, advertise(1)) is StepOutcome.ANSWERED
    # Back to generation 0 (whose key a revoked organization holds): never.
    refused(org_a, advertise(0), caplog, "a job's key never goes back")
    # A new process over the same state directory remembers the generation.
    identity = IdentityFiles(identity_files(pki, "org-a"))
    restarted = CeremonyParticipant(
        org_a.transport, PaillierStateStore(org_a.state_dir), identity, membership=org_a.membership
    )
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="participant"):
        again = advertise(0, evidence(pki, participants[2]))
        assert restarted.step(org_a.transport.coordinator.task("org-a", again)) is (
            StepOutcome.REFUSED
        )
    assert "never goes back" in caplog.text
    state = org_a.store.load(JOB_ID)
    assert state is not None and state.generation == 1


# -- the new key goes to admitted organizations only --------------------------------------------


def _generation_one(
    pki: DemoPki, participants: list[PaillierParticipant]
) -> tuple[AdvertisedKeys, ...]:
    """org-c revoked; org-a and org-b advertised for generation 1; org-c's generation-1 job key
    (signed with its real key, as a colluding org-c would) next to theirs."""
    org_a, org_b, org_c = participants
    revoke_org_c(pki, participants, 2)
    assert step(org_a, advertise(1)) is StepOutcome.ANSWERED
    assert step(org_b, advertise(1, evidence(pki, org_c))) is StepOutcome.ANSWERED
    signing = load_private_key(pki.participants["org-c"].key_path)
    _, revoked_key = make_job_key(key_scope(JOB_ID, 1), "org-c", signing, os.urandom)
    return (
        AdvertisedKeys(job_key_of(org_a), certificate(pki, "org-a")),
        AdvertisedKeys(job_key_of(org_b), certificate(pki, "org-b")),
        AdvertisedKeys(revoked_key.to_bytes(), certificate(pki, "org-c")),
    )


def test_a_new_key_sealed_to_a_revoked_org_is_refused(
    pki: DemoPki, participants: list[PaillierParticipant], caplog: pytest.LogCaptureFixture
) -> None:
    new_keys = _generation_one(pki, participants)
    deal = KeyCeremonyStepData(
        "deal",
        dealer=DEALER,
        key_bits=KEY_BITS,
        job_keys=new_keys,
        parameters=job_settings(),
        generation=1,
    )
    refused(participants[0], deal, caplog, "'org-c' is revoked in membership list 2")
    state = participants[0].store.load(JOB_ID)
    assert state is not None and not state.private_key and not state.sealed


def test_a_new_key_dealt_by_a_revoked_org_is_refused(
    pki: DemoPki,
    participants: list[PaillierParticipant],
    second_key: PaillierPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    new_keys = _generation_one(pki, participants)
    signing = load_private_key(pki.participants["org-c"].key_path)
    dealt = sign_public_key(key_scope(JOB_ID, 1), "org-c", second_key.public_key, signing)
    receive = KeyCeremonyStepData(
        "receive",
        dealer="org-c",
        key_bits=KEY_BITS,
        # Sealed by admitted org-a, as far as the sender goes: the dealer alone is refused.
        job_keys=new_keys[:1],
        dealt_key=dealt.to_bytes(),
        dealer_certificate_pem=certificate(pki, "org-c"),
        sealed_key=SealedKey("org-a", "org-b", b"\0" * 64).to_bytes(),
        parameters=job_settings(),
        generation=1,
    )
    refused(participants[1], receive, caplog, "'org-c' is revoked in membership list 2")


# -- the versions' transcripts and generations --------------------------------------------------


def _version_one(
    pki: DemoPki, participants: list[PaillierParticipant]
) -> tuple[PaillierRound, int]:
    round_ = PaillierRound(pki, participants[0].transport.coordinator, ORGS4[:3])
    return round_, round_.run(participants)


def test_a_transcript_naming_an_org_the_list_does_not_admit_is_refused(
    pki: DemoPki, participants: list[PaillierParticipant]
) -> None:
    _, version = _version_one(pki, participants)
    org_a = participants[0]
    # org-c signed round 1's keys; the list no longer names it (nor revokes it).
    assert org_a.membership.offer(signed_list(pki, 2, ["org-a", "org-b"]))
    with pytest.raises(ModelUnavailable, match="does not admit"):
        org_a.paillier.model(JOB_ID, version)
    assert org_a.store.model_versions(JOB_ID) == [0]
    # Nothing was decrypted: not held against the coordinator, the job is not stopped.
    assert org_a.paillier.stopped(JOB_ID) == ""
    # With org-c a member again, the same version decrypts.
    assert org_a.membership.offer(signed_list(pki, 3, ["org-a", "org-b", "org-c"]))
    assert org_a.paillier.model(JOB_ID, version)[0] == version


def test_a_version_under_a_generation_this_participant_does_not_hold_is_not_decrypted(
    pki: DemoPki, participants: list[PaillierParticipant]
) -> None:
    _, version = _version_one(pki, participants)
    coordinator = participants[0].transport.coordinator
    record, correction = coordinator.models[version]
    # The same ciphertexts, relabelled as under generation 3: no key of it is held here.
    served = PaillierVersion.from_bytes(record.tobytes())
    relabelled = replace(served, generation=3).to_bytes()
    coordinator.models[version] = [np.frombuffer(relabelled, dtype=np.uint8).copy(), correction]
    with pytest.raises(ModelUnavailable, match="key generation 3") as raised:
        participants[1].paillier.model(JOB_ID, version)
    assert not isinstance(raised.value, VersionRefused)
    # Under its true generation the tag binds generation 0: relabelled back, it decrypts.
    coordinator.models[version] = [record, correction]
    assert participants[1].paillier.model(JOB_ID, version)[0] == version


def test_a_later_round_passed_off_as_under_the_retired_key_is_refused(
    pki: DemoPki,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
) -> None:
    """org-c, revoked, still holds key 0 and can make its tags: with the coordinator it could
    serve a sum of its choice under key 0 as the version of a round after the rotation. An
    organization that took part in that round after leaving generation 0 refuses it unread."""
    _, version = _version_one(pki, participants)  # round 1, under key 0
    org_a = participants[0]
    org_a.paillier.model(JOB_ID, version)  # version 1 decrypted and kept
    revoke_org_c(pki, participants, 2)
    assert step(org_a, advertise(1)) is StepOutcome.ANSWERED
    state = org_a.store.load(JOB_ID)
    assert state is not None and [r.last_round for r in state.retired] == [1]
    # Round 2 ran after the rotation (org-a sent its keys in it), then the coordinator serves
    # version 2 under key 0 with round 2's transcript.
    coordinator = org_a.transport.coordinator
    record, correction = coordinator.models[version]
    served = PaillierVersion.from_bytes(record.tobytes())
    round_2 = replace(served.transcript, round_id="round-2")
    ContributionLedger(org_a.state_dir).start(JOB_ID, "round-2", 2, version)
    forged = PaillierVersion(served.ciphertexts, served.tag, round_2, generation=0).to_bytes()
    coordinator.models[version + 1] = [np.frombuffer(forged, dtype=np.uint8).copy(), correction]
    with pytest.raises(VersionRefused, match="took part in its round .number 2. under a later"):
        org_a.paillier.model(JOB_ID, version + 1)
    assert org_a.paillier.stopped(JOB_ID)
    # Version 1, from round 1 (started under key 0), is still read with the retired key.
    assert org_a.store.model_versions(JOB_ID) == [0, 1]


# -- a round after the rotation, passed off as under the old key --------------------------------


def _round_two_after_a_rotation(
    pki: DemoPki, root: Path, keys: list[PaillierPrivateKey]
) -> tuple[list[PaillierParticipant], PaillierRound]:
    """Round 1 of all four organizations under key 0; org-c revoked; org-a, org-b and org-d
    take key generation 1; round 2 runs among org-a and org-b only (org-d stays out)."""
    coordinator = CeremonyCoordinator(pki)
    # Cohorts of two: org-d can stay out of round 2 while the revoked org-c is gone.
    policy = AcceptPolicy(cohort=CohortPolicy(min_cohort=2))
    everyone = make_participants(
        pki, root, coordinator, lambda bits: keys.pop(0), orgs=ORGS4, policy=policy
    )
    run_ceremony(coordinator, everyone)
    assert PaillierRound(pki, coordinator, ORGS4).run(everyone) == 1
    revoke_org_c(pki, everyone, 2)
    org_a, org_b, _, org_d = everyone
    # Each knows org-c held key 0 (it was in round 1's cohort): the list shows it compromised.
    coordinator.generation = 1
    run_ceremony(coordinator, [org_a, org_b, org_d])
    assert all(p.paillier.generation(JOB_ID) == 1 for p in (org_a, org_b, org_d))
    round_2 = PaillierRound(pki, coordinator, ["org-a", "org-b"])
    assert round_2.run([org_a, org_b]) == 2
    return everyone, round_2


def test_a_round_after_the_rotation_decrypts_at_an_organization_outside_its_cohort(
    pki: DemoPki, tmp_path: Path, keys: list[PaillierPrivateKey]
) -> None:
    everyone, _ = _round_two_after_a_rotation(pki, tmp_path, keys)
    org_a, org_d = everyone[0], everyone[3]
    # org-d rebuilds version 1 with the retired key 0 and version 2 with key 1.
    version, weights = org_d.paillier.model(JOB_ID, 2)
    assert version == 2 and org_d.store.model_versions(JOB_ID) == [0, 1, 2]
    assert org_d.paillier.stopped(JOB_ID) == ""
    for mine, theirs in zip(weights, org_a.paillier.model(JOB_ID, 2)[1], strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_a_round_after_the_rotation_forged_under_the_old_key_is_refused_outside_its_cohort(
    pki: DemoPki,
    tmp_path: Path,
    keys: list[PaillierPrivateKey],
    paillier_key: PaillierPrivateKey,
) -> None:
    """org-c, revoked, still holds key 0 and makes its tags. With the coordinator it serves,
    as version 2, a sum of its choice encrypted and tagged under key 0 for round 2, with round
    2's honest transcript and correction. org-d was not in round 2: its ledger cannot tell the
    round came after the rotation. But round 2's cohort signed a context naming key generation
    1's key, and org-d computes the context under the key 0 the record names."""
    everyone, round_2 = _round_two_after_a_rotation(pki, tmp_path, keys)
    org_a, org_d = everyone[0], everyone[3]
    coordinator = org_d.transport.coordinator
    honest, correction = coordinator.models[2]
    served = PaillierVersion.from_bytes(honest.tobytes())
    assert served.generation == 1
    # The chosen update: a well-formed sum of two contributions, org-c's and org-d's.
    _, base = org_a.paillier.model(JOB_ID, 1)
    settings = round_2.task(SecAggPhase.KEYS).round_settings()
    params = round_2.params
    chosen = expected_total(params, base, ("org-c", "org-d"), settings) - correction
    public = paillier_key.public_key
    layout = PackingLayout(params.modulus_bits, params.max_participants, public.bits)
    plaintexts = layout.pack(chosen)
    summed = PaillierCiphertexts(
        public.fingerprint,
        layout,
        2,
        params.vector_length,
        tuple(encrypt_integers(public, plaintexts)),
    )
    binding = tag_binding(
        JOB_ID, served.transcript.round_id, 1, tensors_sha256(coordinator.models[1]), 0
    )
    (tag,) = encrypt_integers(public, [input_tag(paillier_key, binding, plaintexts)])
    forged = replace(
        served,
        ciphertexts=summed.to_bytes(),
        tag=tag.to_bytes(public.ciphertext_bytes, "big"),
        generation=0,
    )
    coordinator.models[2] = [np.frombuffer(forged.to_bytes(), dtype=np.uint8).copy(), correction]

    with pytest.raises(VersionRefused, match="round context its transcript signs") as refused:
        org_d.paillier.model(JOB_ID, 2)
    assert "key of generation 0" in str(refused.value)
    assert org_d.store.model_versions(JOB_ID) == [0, 1]
    assert "model version 2 failed verification" in org_d.paillier.stopped(JOB_ID)
