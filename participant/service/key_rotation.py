"""When this participant leaves a paillier job's key for a new key generation (a rotation).

A coordinator that could start a new key generation at will could have a key dealt again and
again until a dealer or receiver of its choice holds it. So a key-ceremony step of a later
generation is taken only when the consortium CA's membership list shows the current key
compromised (docs/paillier.md, "Key rotation"):

- an organization this participant itself knows holds the key (the dealer, the sender of its
  sealed key, those it sealed for, the cohorts of the job's rounds) is revoked or unlisted; or
- the step carries the job key that an organization signed for this very generation's ceremony
  (checked against its certificate of the consortium CA), and the list revokes that
  organization by name.

A participant that holds no key yet (it joined after the deal, or its ceremony did not
complete) has nothing to protect and takes the newer generation. A step of an older generation
than the one held is always refused: the generation, kept in the job's state, only goes up.
The dealer and every organization the new key is sealed to are checked against the list by the
ceremony steps themselves (``participant/service/key_ceremony.py``), as in the first ceremony.
On a rotation the old key is kept read-only (``RetiredKey``): the versions made under it are
still decrypted and verified with it, and nothing is encrypted under it again. It keeps the
highest round number this participant had started in the job (its contribution ledger): a
version of a later round that claims the old key is refused, since the revoked organization
holds that key and could make such a version's tag.
"""

from __future__ import annotations

import datetime as dt
import logging

from fedsilo.logs import context
from fedsilo.membership import MembershipList, NotAMember
from fedsilo.paillier_versions import key_scope
from fedsilo.pki import Role, verify_peer_certificate
from participant.domain.assignments import KeyCeremonyStepData
from participant.service.identity import OrgIdentity
from participant.service.paillier_state import PaillierJobState, RetiredKey, known_key_holders
from secagg import ProtocolViolation
from secagg.paillier import JobKey

__all__ = ["compromised_holders", "enter_generation"]

log = logging.getLogger("participant")


def enter_generation(
    job_id: str,
    state: PaillierJobState,
    data: KeyCeremonyStepData,
    identity: OrgIdentity,
    membership: MembershipList | None,
    now: dt.datetime,
    last_round: int = 0,
) -> PaillierJobState:
    """The job's state for the step's key generation: ``state`` itself for the current one, a
    fresh generation (the old key retired) for a later one when the rotation is justified.

    Raises secagg's ProtocolViolation for an older generation or an unjustified rotation, and
    PeerCertificateError or SecAggError for a revoked holder's job key that does not verify.
    """
    if data.generation == state.generation:
        return state
    if data.generation < state.generation:
        raise ProtocolViolation(
            f"the key-ceremony step is for key generation {data.generation} of the job; this "
            f"participant is at generation {state.generation} (a job's key never goes back)"
        )
    retired = state.retired
    if state.private_key:
        revoked = compromised_holders(job_id, state, data, identity, membership, now)
        if not revoked:
            raise ProtocolViolation(
                f"asked to start key generation {data.generation} of the job while every known "
                f"holder of generation {state.generation}'s key is admitted by the membership "
                "list: a job's key is rotated only after a holder is revoked"
            )
        retired = (
            *retired,
            RetiredKey(state.generation, state.dealt_key, state.private_key, last_round),
        )
        log.warning(
            "the job's Paillier key of generation %d was held by %s, which the membership list "
            "no longer admits: taking part in key generation %d",
            state.generation,
            ", ".join(revoked),
            data.generation,
            **context(job=job_id, phase="ceremony", org=identity.participant_id),
        )
    # Only the job's settings (and a pending report that the job was stopped here) carry over:
    # job key, key, holders and the ceremony's messages are per generation.
    return PaillierJobState(
        outbox=tuple(message for message in state.outbox if message.action == "stopped"),
        parameters=state.parameters,
        key_bits=state.key_bits,
        strategy=state.strategy,
        stopped=state.stopped,
        stopped_version=state.stopped_version,
        generation=data.generation,
        retired=retired,
    )


def compromised_holders(
    job_id: str,
    state: PaillierJobState,
    data: KeyCeremonyStepData,
    identity: OrgIdentity,
    membership: MembershipList | None,
    now: dt.datetime,
) -> tuple[str, ...]:
    """The holders of the key of ``state.generation`` that the membership list shows
    compromised (see the module docstring); empty without a list."""
    if membership is None:
        return ()
    me = identity.participant_id
    known = known_key_holders(state)
    found = {org for org in known if org != me and not _admitted(membership, org)}
    scope = key_scope(job_id, state.generation)
    for holder in data.revoked_holders:
        if holder.generation != state.generation:
            continue
        entry = JobKey.from_bytes(holder.job_key.signed_keys)
        # Named by the CA as revoked: an unlisted organization's word that it took part in a
        # ceremony is no proof that it was ever sealed the key.
        if entry.participant == me or entry.participant not in membership.revoked:
            continue
        verifying = verify_peer_certificate(
            holder.job_key.certificate_pem, identity.ca, entry.participant, Role.PARTICIPANT, now
        )
        entry.verify(scope, verifying)
        found.add(entry.participant)
    return tuple(sorted(found))


def _admitted(membership: MembershipList, org: str) -> bool:
    try:
        membership.check_peer(org)
    except NotAMember:
        return False
    return True
