"""The participant's side of a paillier job's key ceremony: advertise, deal, seal, receive.

Each step (docs/paillier.md, "In the service") is checked before anything is sent: every job
key must come with a certificate of the consortium CA for the org id it names and carry that
org's signature; the dealt public key must carry the dealer's; a sealed key must be addressed
to this participant and open to the signed public key. A step that fails a check is refused:
logged as an error (never with key bytes), remembered in the job's state (the same step is
never answered again), and nothing is sent.

What a step sends is computed from persisted material and persisted *before* the first send, in
the job's outbox (:mod:`participant.service.paillier_state`): the job key pair, the generated
Paillier key, the dealer's signature and every sealed key are made once, so a retry or a
restart sends the same bytes. Messages leave the outbox once acknowledged; after a restart,
:meth:`CeremonyParticipant.resume` sends what is still in it (the coordinator asks the dealer
only once).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import Any

from fedsilo.faults import crash_point
from fedsilo.logs import context
from fedsilo.paillier_versions import key_scope
from fedsilo.pki import PeerCertificateError, Role, verify_peer_certificate
from participant.domain.assignments import (
    AdvertisedKeys,
    Assignment,
    KeyCeremonyStepData,
    StepOutcome,
)
from participant.errors import (
    MembershipStale,
    MembershipUnavailable,
    PaillierStateUnreadable,
    RequestRefused,
    SecAggUnavailable,
    StateUnreadable,
    UntrustedMessage,
)
from participant.service.calls import CeremonyCalls
from participant.service.identity import OrgIdentity, utc_now
from participant.service.key_rotation import enter_generation
from participant.service.ledger import ContributionLedger
from participant.service.membership import MembershipStore, log_refused_member
from participant.service.paillier_jobs import job_parameters
from participant.service.paillier_state import (
    OutgoingMessage,
    PaillierJobState,
    PaillierStateStore,
    SealedFor,
    known_key_holders,
)
from secagg import (
    AgreementKeyPair,
    ProtocolViolation,
    RandomSource,
    SecAggError,
    encode_fields,
    encode_text,
)
from secagg.paillier import (
    MIN_KEY_BITS,
    DealtKey,
    JobKey,
    PackingLayout,
    PaillierPrivateKey,
    SealedKey,
    generate_private_key,
    make_job_key,
    open_private_key,
    seal_private_key,
    sign_public_key,
)

__all__ = ["ACTIONS", "CeremonyParticipant", "KeyGenerator"]

log = logging.getLogger("participant")

ACTIONS = ("advertise", "deal", "seal", "receive")
"""The steps a coordinator may ask for."""

KeyGenerator = Callable[[int], PaillierPrivateKey]
"""Makes the job's Paillier key of the given size (the dealer's step)."""


class _LostMaterial(Exception):
    """This participant lost what the step needs (its job key or Paillier key): it cannot act."""


class CeremonyParticipant:
    """Answers key-ceremony steps for one organization, one state directory per job."""

    def __init__(
        self,
        client: CeremonyCalls,
        store: PaillierStateStore,
        identity: Callable[[], OrgIdentity] | None,
        *,
        membership: MembershipStore,
        ledger: ContributionLedger | None = None,
        generate_key: KeyGenerator | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        random: RandomSource = os.urandom,
        min_key_bits: int = MIN_KEY_BITS,
    ) -> None:
        self._client = client
        self._min_key_bits = min_key_bits
        self._store = store
        self._identity = identity
        self._membership = membership
        self._ledger = ledger
        self._random = random
        self._generate = generate_key or (lambda bits: generate_private_key(bits, random))
        self._clock = clock
        self._resumed = False
        self._silenced: set[tuple[str, str, StepOutcome]] = set()

    def step(self, assignment: Assignment) -> StepOutcome:
        """Take one ceremony step, or refuse it (see the module docstring)."""
        data = assignment.ceremony
        if data is None:
            raise UntrustedMessage("a key-ceremony task came without its step")
        identity = self._current_identity()
        job_id = assignment.job_id
        ctx = context(job=job_id, phase=f"ceremony-{data.action}", org=identity.participant_id)
        try:
            self._membership.ready()
        except MembershipUnavailable as exc:
            # Not recorded as a refusal: the step is answered once the CA's (newer) list has
            # arrived. A stale list is an error: the admin has to act, or it is being withheld.
            level = logging.ERROR if isinstance(exc, MembershipStale) else logging.WARNING
            return self._silent(job_id, data, StepOutcome.SKIPPED, level, str(exc), ctx)
        try:
            state = self._store.load(job_id) or PaillierJobState()
        except PaillierStateUnreadable as exc:
            return self._silent(job_id, data, StepOutcome.DROPPED, logging.ERROR, str(exc), ctx)
        # Under a newer membership list a refused step is weighed again (e.g. a rotation the
        # coordinator asked for before this organization held the list revoking a holder).
        digest = _step_digest(data, self._membership.serial)
        if state.refusal and state.refused_step == digest:
            return self._silent(
                job_id,
                data,
                StepOutcome.LEFT,
                logging.INFO,
                f"this participant refused this key-ceremony step ({state.refusal}): not answering",
                ctx,
            )
        try:
            # A step of a later key generation is a rotation: taken only if the membership list
            # shows the current key compromised (participant/service/key_rotation.py).
            current = enter_generation(
                job_id,
                state,
                data,
                identity,
                self._membership.current(),
                self._clock(),
                self._last_round(job_id),
            )
            checked = self._check_job(current, data)
            # A key already dealt or sealed to an organization revoked since is not used again.
            self._membership.check_key_holders(identity.participant_id, known_key_holders(checked))
            scope = key_scope(job_id, checked.generation)
            if data.action == "advertise":
                new_state = self._advertise(job_id, scope, identity, checked)
            elif data.action == "deal":
                new_state = self._deal(job_id, scope, identity, checked, data)
            elif data.action == "seal":
                new_state = self._seal(job_id, scope, identity, checked, data)
            elif data.action == "receive":
                new_state = self._receive(job_id, scope, identity, checked, data)
            else:
                raise ProtocolViolation(f"unknown key-ceremony step {data.action!r}")
        except _LostMaterial as exc:
            return self._silent(job_id, data, StepOutcome.DROPPED, logging.ERROR, str(exc), ctx)
        except (SecAggError, PeerCertificateError) as exc:
            self._store.save(job_id, replace(state, refused_step=digest, refusal=str(exc)))
            log.error("refused the key-ceremony step: %s", exc, **ctx)
            log_refused_member(exc, ctx)
            return StepOutcome.REFUSED
        self._flush(job_id, new_state, ctx, data.action)
        return StepOutcome.ANSWERED

    def resume(self, *, again: bool = False) -> None:
        """Send what the outboxes still hold (after a restart); once per process, or ``again``
        when something was queued outside a ceremony step (a job stopped for good)."""
        if self._resumed and not again:
            return
        for job_id in self._store.job_ids():
            try:
                state = self._store.load(job_id)
            except PaillierStateUnreadable as exc:
                log.error("%s", exc, **context(job=job_id))
                continue
            if state is not None and state.outbox:
                ctx = context(job=job_id, phase="ceremony")
                log.info("sending %d pending key-ceremony messages", len(state.outbox), **ctx)
                self._flush(job_id, state, ctx)
        self._resumed = True

    # -- the steps ------------------------------------------------------------------------------

    def _check_job(self, state: PaillierJobState, data: KeyCeremonyStepData) -> PaillierJobState:
        """The job's settings: recorded at the first step, the same in every later one."""
        if data.parameters is None:
            if state.parameters is None:
                raise ProtocolViolation("the key ceremony came without the job's parameters")
            parameters = state.parameters
        else:
            parameters = job_parameters(data.parameters)
        # The bit budget and the packing layout (key size, modulus, largest cohort).
        parameters.quantization()
        PackingLayout(parameters.modulus_bits, parameters.max_participants, data.key_bits)
        if data.key_bits < self._min_key_bits:
            # The organization's own floor (accept.min_paillier_key_bits), whatever the job says.
            raise ProtocolViolation(
                f"the job's Paillier key has {data.key_bits} bits, below this organization's "
                f"minimum of {self._min_key_bits}"
            )
        if state.parameters is not None and state.parameters != parameters:
            raise ProtocolViolation("the job's quantization settings changed during its ceremony")
        if state.key_bits and state.key_bits != data.key_bits:
            raise ProtocolViolation(
                f"the job's key size changed from {state.key_bits} to {data.key_bits} bits"
            )
        return replace(state, parameters=parameters, key_bits=data.key_bits)

    def _advertise(
        self, job_id: str, scope: str, identity: OrgIdentity, state: PaillierJobState
    ) -> PaillierJobState:
        """Make and sign the job key once; every retry sends the same bytes."""
        if state.job_key_pair is None:
            pair, job_key = make_job_key(
                scope, identity.participant_id, identity.signing_key, self._random
            )
            state = replace(state, job_key_pair=pair, job_key=job_key.to_bytes())
        else:
            self._own_job_key(state, identity)
        return self._queue(job_id, state, [OutgoingMessage("job_key", state.job_key)])

    def _deal(
        self,
        job_id: str,
        scope: str,
        identity: OrgIdentity,
        state: PaillierJobState,
        data: KeyCeremonyStepData,
    ) -> PaillierJobState:
        """Generate the job's key, sign its public key, seal it for every other key holder."""
        me = identity.participant_id
        pair = self._own_job_key(state, identity)
        if data.dealer and data.dealer != me:
            raise ProtocolViolation(f"asked to deal the key of dealer {data.dealer!r}")
        holders = self._verified_job_keys(scope, data.job_keys, identity, state)
        if state.private_key:
            if not state.dealt_key or DealtKey.from_bytes(state.dealt_key).dealer != me:
                raise ProtocolViolation(
                    "asked to deal a key for a job whose key this participant received"
                )
            key = PaillierPrivateKey.from_bytes(state.private_key)
            if key.public_key.bits != data.key_bits:
                raise ProtocolViolation("asked to deal a key of another size than the one dealt")
        else:
            key = self._generate(data.key_bits)
            if key.public_key.bits != data.key_bits:
                # A generator that breaks its contract is a programming error: it surfaces.
                raise ValueError(f"the key generator made a {key.public_key.bits}-bit key")
            dealt = sign_public_key(scope, me, key.public_key, identity.signing_key)
            state = replace(state, private_key=key.to_bytes(), dealt_key=dealt.to_bytes())
            # The key exists only here until it is sealed: persisted before anything is sent.
            self._store.save(job_id, state)
            log.info(
                "dealt a %d-bit Paillier key for the job",
                key.public_key.bits,
                **context(job=job_id, phase="ceremony-deal", org=me),
            )
        receivers = [entry for org, entry in holders.items() if org != me]
        state = _with_holders(state, holders)
        state, sealed = self._seal_for(scope, me, pair, key, state, receivers)
        messages = [OutgoingMessage("dealt_key", state.dealt_key)]
        if sealed:
            messages.append(OutgoingMessage("sealed", encode_fields(sealed)))
        messages.append(OutgoingMessage("confirm", key.public_key.fingerprint))
        return self._queue(job_id, state, messages)

    def _seal(
        self,
        job_id: str,
        scope: str,
        identity: OrgIdentity,
        state: PaillierJobState,
        data: KeyCeremonyStepData,
    ) -> PaillierJobState:
        """Seal the key this participant holds for organizations that joined later."""
        me = identity.participant_id
        pair = self._own_job_key(state, identity)
        if not state.private_key:
            raise _LostMaterial("asked to seal the job's key, which this participant does not hold")
        key = PaillierPrivateKey.from_bytes(state.private_key)
        if data.dealt_key and DealtKey.from_bytes(data.dealt_key).public_key != (
            key.public_key.to_bytes()
        ):
            raise ProtocolViolation("the seal step names another key than the one held here")
        receivers = self._verified_job_keys(scope, data.job_keys, identity, state)
        if me in receivers:
            raise ProtocolViolation("asked to seal the job's key for this participant itself")
        if not receivers:
            raise ProtocolViolation("the seal step lists no job key to seal for")
        state = _with_holders(state, receivers)
        state, sealed = self._seal_for(scope, me, pair, key, state, list(receivers.values()))
        return self._queue(job_id, state, [OutgoingMessage("sealed", encode_fields(sealed))])

    def _receive(
        self,
        job_id: str,
        scope: str,
        identity: OrgIdentity,
        state: PaillierJobState,
        data: KeyCeremonyStepData,
    ) -> PaillierJobState:
        """Check the dealt public key and the sender, open the sealed key, confirm it."""
        me = identity.participant_id
        pair = self._own_job_key(state, identity)
        dealt = DealtKey.from_bytes(data.dealt_key)
        if data.dealer and dealt.dealer != data.dealer:
            raise ProtocolViolation(
                f"the dealt key is signed by {dealt.dealer!r}, not the dealer {data.dealer!r}"
            )
        dealer_key = verify_peer_certificate(
            data.dealer_certificate_pem, identity.ca, dealt.dealer, Role.PARTICIPANT, self._clock()
        )
        # The dealer made the key: a key from an organization the CA's list does not admit is
        # never used.
        self._membership.check_peers(me, {dealt.dealer: data.dealer_certificate_pem})
        public = dealt.verify(scope, dealer_key)
        if public.bits != data.key_bits:
            raise ProtocolViolation(
                f"the dealt key has {public.bits} bits, the job asks for {data.key_bits}"
            )
        if state.private_key:
            held = PaillierPrivateKey.from_bytes(state.private_key)
            if held.public_key.fingerprint != public.fingerprint:
                raise ProtocolViolation("the dealt key is not the key this participant holds")
        else:
            sealed = SealedKey.from_bytes(data.sealed_key)
            if sealed.receiver != me:
                raise ProtocolViolation(f"the sealed key is addressed to {sealed.receiver!r}")
            if len(data.job_keys) != 1:
                raise ProtocolViolation("a receive step names exactly one sender's job key")
            senders = self._verified_job_keys(scope, data.job_keys, identity, state)
            (sender,) = senders.values()
            if sender.participant == me:
                raise ProtocolViolation("the sealed key claims to come from this participant")
            key = open_private_key(scope, sealed, pair, sender, public)
            state = replace(
                state,
                private_key=key.to_bytes(),
                dealt_key=data.dealt_key,
                key_holders=state.key_holders | {me, dealt.dealer, sender.participant},
            )
            log.info(
                "opened the job's %d-bit Paillier key sealed by %s",
                public.bits,
                sender.participant,
                **context(job=job_id, phase="ceremony-receive", org=me),
            )
        return self._queue(job_id, state, [OutgoingMessage("confirm", public.fingerprint)])

    # -- checks and material --------------------------------------------------------------------

    def _last_round(self, job_id: str) -> int:
        """The highest round number this organization started in the job (0: none, or no
        ledger)."""
        if self._ledger is None:
            return 0
        try:
            rounds = self._ledger.rounds(job_id)
        except StateUnreadable as exc:
            raise _LostMaterial(str(exc)) from None
        return max((entry.number for entry in rounds.values()), default=0)

    def _own_job_key(self, state: PaillierJobState, identity: OrgIdentity) -> AgreementKeyPair:
        if state.job_key_pair is None or not state.job_key:
            raise _LostMaterial(
                "this participant has no job key for the job (its state was lost): it cannot "
                "take part in the job's key ceremony"
            )
        if JobKey.from_bytes(state.job_key).participant != identity.participant_id:
            raise _LostMaterial("the stored job key belongs to another organization")
        return state.job_key_pair

    def _verified_job_keys(
        self,
        scope: str,
        offered: tuple[AdvertisedKeys, ...],
        identity: OrgIdentity,
        state: PaillierJobState,
    ) -> dict[str, JobKey]:
        """Job keys with a certificate of the consortium CA for the org each names and a valid
        signature by it; this participant's own entry must be the key it advertised."""
        now = self._clock()
        keys: dict[str, JobKey] = {}
        for item in offered:
            entry = JobKey.from_bytes(item.signed_keys)
            if entry.participant in keys:
                raise ProtocolViolation(f"two job keys are listed for {entry.participant!r}")
            if entry.participant == identity.participant_id:
                if item.signed_keys != state.job_key:
                    raise ProtocolViolation(
                        "the job key listed for this participant is not the one it advertised"
                    )
            else:
                verifying = verify_peer_certificate(
                    item.certificate_pem, identity.ca, entry.participant, Role.PARTICIPANT, now
                )
                entry.verify(scope, verifying)
                # A key is sealed for, or received from, admitted organizations only.
                self._membership.check_peers(
                    identity.participant_id, {entry.participant: item.certificate_pem}
                )
            keys[entry.participant] = entry
        return keys

    def _seal_for(
        self,
        scope: str,
        me: str,
        pair: AgreementKeyPair,
        key: PaillierPrivateKey,
        state: PaillierJobState,
        receivers: list[JobKey],
    ) -> tuple[PaillierJobState, list[bytes]]:
        """The sealed key for each receiver: made once per receiver job key, then reused."""
        kept = dict(state.sealed)
        bodies: list[bytes] = []
        for receiver in receivers:
            encoded = receiver.to_bytes()
            previous = kept.get(receiver.participant)
            if previous is None or previous.job_key != encoded:
                sealed = seal_private_key(scope, key, me, pair, receiver, self._random)
                previous = SealedFor(encoded, sealed.to_bytes())
                kept[receiver.participant] = previous
            bodies.append(previous.sealed)
        return replace(state, sealed=kept), bodies

    def _queue(
        self, job_id: str, state: PaillierJobState, messages: list[OutgoingMessage]
    ) -> PaillierJobState:
        """Persist the step's messages before the first is sent."""
        state = replace(state, outbox=tuple(messages))
        self._store.save(job_id, state)
        return state

    def _flush(
        self, job_id: str, state: PaillierJobState, ctx: dict[str, Any], step: str | None = None
    ) -> None:
        """Send the outbox in order; each message leaves it once acknowledged.

        ``step`` is the action whose messages these are (None: an outbox left by a restart).
        """
        while state.outbox:
            message = state.outbox[0]
            try:
                receipt = self._client.retrying(
                    functools.partial(
                        self._client.submit_ceremony, job_id, message.action, message.body
                    )
                )
            except RequestRefused:
                # A definite refusal (the daemon retries every other failure): the coordinator
                # will not accept this message or the ones that depend on it.
                state = replace(state, outbox=())
                if message.action == "dealt_key":
                    # Another organization's key is the job's: forget the one made here, so
                    # that this participant can receive that key.
                    state = replace(state, private_key=b"", dealt_key=b"", sealed={})
                    log.warning("the coordinator refused the key dealt here; discarded it", **ctx)
                self._store.save(job_id, state)
                raise
            state = replace(state, outbox=state.outbox[1:])
            self._store.save(job_id, state)
            log.info(
                "key ceremony: %s acknowledged%s",
                message.action,
                " (duplicate)" if receipt.duplicate else "",
                **ctx,
            )
            if step is not None:
                crash_point(f"participant.ceremony.after_{step}")

    def _silent(
        self,
        job_id: str,
        data: KeyCeremonyStepData,
        outcome: StepOutcome,
        level: int,
        message: str,
        ctx: dict[str, Any],
    ) -> StepOutcome:
        """Log why nothing is sent; repeats of the same step go to DEBUG."""
        key = (job_id, data.action, outcome)
        log.log(logging.DEBUG if key in self._silenced else level, "%s", message, **ctx)
        self._silenced.add(key)
        return outcome

    def _current_identity(self) -> OrgIdentity:
        if self._identity is None:
            raise SecAggUnavailable(
                "the paillier key ceremony needs the organization's TLS key and certificate; "
                "this participant runs without TLS"
            )
        return self._identity()


def _with_holders(state: PaillierJobState, holders: Mapping[str, JobKey]) -> PaillierJobState:
    return replace(state, key_holders=state.key_holders | set(holders))


def _step_digest(data: KeyCeremonyStepData, membership_serial: int) -> bytes:
    """What identifies a step under the membership list held: a refused one is recognised when
    it is offered again."""
    parameters = None if data.parameters is None else asdict(data.parameters)
    fields = [
        encode_text(data.action),
        encode_text(data.dealer),
        str(data.key_bits).encode(),
        encode_fields(
            field for item in data.job_keys for field in (item.signed_keys, item.certificate_pem)
        ),
        data.dealt_key,
        data.dealer_certificate_pem,
        data.sealed_key,
        json.dumps(parameters, sort_keys=True).encode(),
        str(data.generation).encode(),
        str(membership_serial).encode(),
        encode_fields(
            field
            for holder in data.revoked_holders
            for field in (
                str(holder.generation).encode(),
                holder.job_key.signed_keys,
                holder.job_key.certificate_pem,
            )
        ),
    ]
    return hashlib.sha256(encode_fields(fields)).digest()
