"""Participant side of Bonawitz et al. 2017 (complete graph, with the consistency round).

One class per protocol state (as in Google FCP's secure aggregation client). Each state holds
exactly the secrets it still needs and handles the one server request that may follow it:

    KeysAdvertised --key list--> SharesSent --shares, update--> InputSent --survivors-->
    SurvivorsSigned --unmask request--> Completed           (any state --refusal--> Aborted)

:class:`SecAggClient` is the facade. It checks every server request against its own bookkeeping
before answering, refuses (``ProtocolViolation``) what an honest server never asks and then stays
aborted, and keeps a transcript: a byte-identical repeat of an answered request gets the stored
answer, any different request for an answered phase is refused (never a second, different
answer for one round). Its whole state is a JSON-able dict (:meth:`SecAggClient.to_dict`), so a
participant can persist it and answer byte-identically after a restart. The dict holds round
secrets: store it like a private key (mode 0600) and never log it.

Longer than 600 lines on purpose: the states, the facade that checks every request against
them, and the state's JSON encoding change together whenever the protocol does, and a reader
auditing what a participant reveals needs all three side by side.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

import numpy as np

from secagg.errors import (
    DecryptionFailed,
    InvalidInput,
    InvalidShare,
    InvalidSignature,
    ProtocolViolation,
    SecAggError,
)
from secagg.masking.config import RoundConfig
from secagg.masking.derivation import (
    advertise_keys_payload,
    consistency_payload,
    key_list_digest,
    mask_is_added,
    pairwise_mask_seeds,
    share_associated_data,
    share_channel_keys,
    unmask_payload,
)
from secagg.masking.messages import (
    ConsistencySignature,
    EncryptedShare,
    MaskedInput,
    RevealedShare,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.masking.policy import CohortPolicy
from secagg.primitives import aead
from secagg.primitives.agreement import (
    KEY_BYTES,
    AgreementKeyPair,
    generate_key_pair,
    public_key_of,
    shared_secret,
)
from secagg.primitives.encoding import decode_fields, encode_fields, encode_text
from secagg.primitives.prg import SEED_BYTES, MaskVector, apply_masks
from secagg.primitives.randomness import RandomSource, random_bytes
from secagg.primitives.shamir import Share, split_secret
from secagg.primitives.signatures import SigningKey, VerifyingKey, sign, verify

__all__ = [
    "ClientPhase",
    "Completed",
    "InputSent",
    "KeysAdvertised",
    "ParticipantContext",
    "SecAggClient",
    "SharesSent",
    "SurvivorsSigned",
    "Aborted",
]

_log = logging.getLogger("secagg")

_STATE_FORMAT = "fedsilo-secagg-client/2"


class ClientPhase(enum.StrEnum):
    """The last protocol step this participant completed."""

    KEYS_ADVERTISED = "keys_advertised"
    SHARES_SENT = "shares_sent"
    INPUT_SENT = "input_sent"
    SURVIVORS_SIGNED = "survivors_signed"
    COMPLETED = "completed"
    ABORTED = "aborted"


class _Request(enum.StrEnum):
    """The server requests a participant answers, one per Bonawitz round 1..4."""

    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"


@dataclass(frozen=True)
class ParticipantContext:
    """What a participant brings that is not round state: identity, keys, randomness, threads.

    ``peer_keys`` maps participant ids to the public keys of their certificates (issued by the
    consortium CA); signatures of the cohort are checked against them and nothing else.
    """

    participant_id: str
    signing_key: SigningKey = field(repr=False)
    peer_keys: Mapping[str, VerifyingKey] = field(repr=False)
    random: RandomSource = field(default=os.urandom, repr=False)
    workers: int = 1

    def verifying_key(self, participant: str) -> VerifyingKey:
        """The organization key of ``participant`` (this participant's own, or from its cert)."""
        if participant == self.participant_id:
            return self.signing_key.public_key()
        key = self.peer_keys.get(participant)
        if key is None:
            raise ProtocolViolation(f"no organization key is known for {participant!r}")
        return key


# ---------------------------------------------------------------------------------------------
# States


@dataclass(frozen=True)
class KeysAdvertised:
    """Round 0 (AdvertiseKeys) done: ``c_pk``, ``s_pk`` signed, sent. Next: SharesSent; Aborted."""

    phase: ClassVar[ClientPhase] = ClientPhase.KEYS_ADVERTISED
    encryption: AgreementKeyPair
    masking: AgreementKeyPair
    advertised: SignedKeys

    def share_keys(
        self, config: RoundConfig, context: ParticipantContext, keys: Sequence[SignedKeys]
    ) -> tuple[SharesSent, tuple[EncryptedShare, ...]]:
        """Bonawitz round 1 (ShareKeys): check U1, then share ``b`` and ``s_sk`` among U1."""
        me = context.participant_id
        by_id: dict[str, SignedKeys] = {}
        for entry in keys:
            if entry.participant not in config.cohort:
                raise ProtocolViolation(
                    f"the key list names {entry.participant!r}, who is not in the cohort"
                )
            if entry.participant in by_id:
                raise ProtocolViolation(f"the key list has two entries for {entry.participant!r}")
            by_id[entry.participant] = entry
        if by_id.get(me) != self.advertised:
            raise ProtocolViolation("the key list does not carry this participant's own keys")
        if len(by_id) < config.threshold:
            raise ProtocolViolation(
                f"the key list has {len(by_id)} participants, fewer than t={config.threshold}"
            )
        public_keys = [key for e in by_id.values() for key in (e.encryption_key, e.masking_key)]
        if len(set(public_keys)) != len(public_keys):
            raise ProtocolViolation("two advertised public keys are equal")
        for peer, entry in by_id.items():
            if peer != me:
                _check_peer_keys(config, context, self.masking, entry)

        members = sorted(by_id)
        peers = [member for member in members if member != me]
        channels = dict(
            zip(
                peers,
                share_channel_keys(
                    config,
                    self.encryption.private_key,
                    [by_id[peer].encryption_key for peer in peers],
                ),
                strict=True,
            )
        )
        xs = [config.x_coordinate(member) for member in members]
        seed = random_bytes(context.random, SEED_BYTES)
        seed_shares = split_secret(seed, config.threshold, xs, context.random)
        key_shares = split_secret(self.masking.private_key, config.threshold, xs, context.random)
        encrypted: list[EncryptedShare] = []
        own: tuple[Share, Share] | None = None
        for member, seed_share, key_share in zip(members, seed_shares, key_shares, strict=True):
            if member == me:
                own = (seed_share, key_share)
                continue
            plaintext = encode_fields([seed_share.to_bytes(), key_share.to_bytes()])
            associated = share_associated_data(config, me, member)
            ciphertext = aead.encrypt(channels[member], plaintext, associated, context.random)
            encrypted.append(EncryptedShare(me, member, ciphertext))
        assert own is not None  # me is in by_id, checked above
        state = SharesSent(
            encryption=self.encryption,
            masking=self.masking,
            self_mask_seed=seed,
            keys=tuple(by_id[member] for member in members),
            own_self_mask_share=own[0],
            own_masking_key_share=own[1],
        )
        return state, tuple(encrypted)


@dataclass(frozen=True)
class SharesSent:
    """Round 1 done: encrypted shares of ``b`` and ``s_sk`` sent. Next: InputSent; Aborted."""

    phase: ClassVar[ClientPhase] = ClientPhase.SHARES_SENT
    encryption: AgreementKeyPair
    masking: AgreementKeyPair
    self_mask_seed: bytes = field(repr=False)
    keys: tuple[SignedKeys, ...]
    own_self_mask_share: Share
    own_masking_key_share: Share

    def mask_input(
        self,
        config: RoundConfig,
        context: ParticipantContext,
        shares: Sequence[EncryptedShare],
        update: MaskVector,
    ) -> tuple[InputSent, MaskedInput]:
        """Bonawitz round 2 (MaskedInputCollection): decrypt the shares of U2, mask the input."""
        me = context.participant_id
        my_x = config.x_coordinate(me)
        keys = {entry.participant: entry for entry in self.keys}
        seed_shares = {me: self.own_self_mask_share}
        key_shares = {me: self.own_masking_key_share}
        senders: set[str] = set()
        for item in shares:
            if item.receiver != me:
                raise ProtocolViolation(
                    f"a share addressed to {item.receiver!r} was routed to this participant"
                )
            if item.sender == me or item.sender not in keys:
                raise ProtocolViolation(f"a share from {item.sender!r}, who is not in the key list")
            if item.sender in senders:
                raise ProtocolViolation(f"two shares from {item.sender!r}")
            senders.add(item.sender)
        channels = share_channel_keys(
            config,
            self.encryption.private_key,
            [keys[item.sender].encryption_key for item in shares],
        )
        for item, channel in zip(shares, channels, strict=True):
            seed_shares[item.sender], key_shares[item.sender] = _open_share(
                config, item, channel, me, my_x
            )
        input_senders = tuple(sorted(seed_shares))
        if len(input_senders) < config.threshold:
            raise ProtocolViolation(
                f"only {len(input_senders)} participants sent shares, "
                f"fewer than t={config.threshold}"
            )
        material = MaskingMaterial(
            masking_private=self.masking.private_key,
            self_mask_seed=self.self_mask_seed,
            peers=tuple((peer, keys[peer].masking_key) for peer in input_senders if peer != me),
        )
        vector = material.masked_vector(config, me, update, context.workers)
        state = InputSent(
            material=material,
            held=HeldShares(seed_shares, key_shares),
            input_senders=input_senders,
            keys_digest=key_list_digest(self.keys),
        )
        return state, MaskedInput(me, vector)


def _open_share(
    config: RoundConfig, item: EncryptedShare, channel: bytes, me: str, my_x: int
) -> tuple[Share, Share]:
    """Decrypt and check one peer's share pair; every failure names that peer (``sender``)."""
    sender = item.sender
    try:
        plaintext = aead.decrypt(
            channel, item.ciphertext, share_associated_data(config, sender, me)
        )
    except DecryptionFailed:
        raise DecryptionFailed(
            f"the share from {sender!r} does not decrypt", sender=sender
        ) from None
    try:
        seed_field, key_field = decode_fields(plaintext, 2)
        seed_share, key_share = Share.from_bytes(seed_field), Share.from_bytes(key_field)
    except (InvalidInput, InvalidShare):
        raise InvalidShare(f"the share from {sender!r} is malformed", sender=sender) from None
    if seed_share.x != my_x or key_share.x != my_x:
        raise InvalidShare(f"the share from {sender!r} is for another x coordinate", sender=sender)
    return seed_share, key_share


@dataclass(frozen=True)
class MaskingMaterial:
    """What recomputes ``y_u`` byte-identically: ``s_sk``, ``b`` and the ``s_pk`` of U2 peers."""

    masking_private: bytes = field(repr=False)
    self_mask_seed: bytes = field(repr=False)
    peers: tuple[tuple[str, bytes], ...]

    def masked_vector(
        self, config: RoundConfig, owner: str, update: MaskVector, workers: int
    ) -> MaskVector:
        """``y = x + PRG(b) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)  (mod R)``, round 2."""
        vector: MaskVector = np.array(update, dtype=config.dtype, copy=True)
        add = [self.self_mask_seed]
        subtract: list[bytes] = []
        seeds = pairwise_mask_seeds(config, self.masking_private, [key for _, key in self.peers])
        for (peer, _), seed in zip(self.peers, seeds, strict=True):
            (add if mask_is_added(owner, peer) else subtract).append(seed)
        apply_masks(vector, add=add, subtract=subtract, workers=workers)
        return vector


@dataclass(frozen=True)
class HeldShares:
    """The shares this participant holds of every U2 member's ``b`` and ``s_sk`` (its own too)."""

    self_mask: Mapping[str, Share] = field(repr=False)
    masking_key: Mapping[str, Share] = field(repr=False)


@dataclass(frozen=True)
class InputSent:
    """Round 2 done: masked input sent. Next: SurvivorsSigned; Aborted."""

    phase: ClassVar[ClientPhase] = ClientPhase.INPUT_SENT
    material: MaskingMaterial
    held: HeldShares
    input_senders: tuple[str, ...]
    keys_digest: bytes
    """Digest of the key list U1 accepted in round 1, bound into the consistency signature."""

    def sign_survivors(
        self, config: RoundConfig, context: ParticipantContext, survivors: Sequence[str]
    ) -> tuple[SurvivorsSigned, ConsistencySignature]:
        """Bonawitz round 3 (ConsistencyCheck): sign U3 after checking it against U2."""
        me = context.participant_id
        if len(set(survivors)) != len(survivors):
            raise ProtocolViolation("the survivor set lists a participant twice")
        unknown = sorted(set(survivors) - set(self.input_senders))
        if unknown:
            raise ProtocolViolation(
                f"the survivor set names {unknown}, who sent no shares to this participant"
            )
        if me not in survivors:
            raise ProtocolViolation("the survivor set leaves out this participant")
        if len(survivors) < config.threshold:
            raise ProtocolViolation(
                f"the survivor set has {len(survivors)} members, fewer than t={config.threshold}"
            )
        ordered = tuple(sorted(survivors))
        payload = consistency_payload(config, me, ordered, self.keys_digest)
        signature = sign(context.signing_key, payload)
        state = SurvivorsSigned(
            material=self.material,
            held=self.held,
            input_senders=self.input_senders,
            keys_digest=self.keys_digest,
            survivors=ordered,
        )
        return state, ConsistencySignature(me, signature)


@dataclass(frozen=True)
class SurvivorsSigned:
    """Round 3 done: U3 signed. Next: Completed (on a valid unmask request); Aborted."""

    phase: ClassVar[ClientPhase] = ClientPhase.SURVIVORS_SIGNED
    material: MaskingMaterial
    held: HeldShares
    input_senders: tuple[str, ...]
    keys_digest: bytes
    survivors: tuple[str, ...]

    def unmask(
        self, config: RoundConfig, context: ParticipantContext, request: UnmaskRequest
    ) -> tuple[Completed, UnmaskResponse]:
        """Bonawitz round 4 (Unmasking): ``b`` shares for U3, ``s_sk`` shares for U2 \\ U3."""
        me = context.participant_id
        survivors, dropped = set(request.survivors), set(request.dropped)
        if len(survivors) != len(request.survivors) or len(dropped) != len(request.dropped):
            raise ProtocolViolation("the unmask request lists a participant twice")
        both = sorted(survivors & dropped)
        if both:
            # S10: the b share and the s_sk share of one peer together reveal its input.
            raise ProtocolViolation(f"the server asked for both shares of {both}")
        if me in dropped:
            raise ProtocolViolation("the unmask request lists this participant as dropped")
        early = sorted(dropped - set(self.input_senders))
        if early:
            raise ProtocolViolation(
                f"the unmask request asks for s_sk shares of {early}, who had already dropped "
                "before the masked-input round"
            )
        if len(survivors) < config.threshold:
            raise ProtocolViolation(
                f"the unmask request has {len(survivors)} survivors, fewer than "
                f"t={config.threshold}"
            )
        if survivors != set(self.survivors):
            # S13/S15: unmasking any other set than the signed one would let a server aggregate
            # the same inputs twice in different subsets.
            raise ProtocolViolation(
                "the unmask survivor set differs from the set this participant signed"
            )
        if dropped != set(self.input_senders) - survivors:
            raise ProtocolViolation(
                "the dropped set is not exactly the participants that sent shares but no input"
            )
        signers = [item.participant for item in request.signatures]
        if len(set(signers)) != len(signers):
            raise ProtocolViolation("the unmask request carries two signatures of one participant")
        outside = sorted(set(signers) - survivors)
        if outside:
            raise ProtocolViolation(f"consistency signatures from non-survivors {outside}")
        if len(signers) < config.threshold:
            raise ProtocolViolation(
                f"only {len(signers)} consistency signatures, fewer than t={config.threshold}"
            )
        for item in request.signatures:
            payload = consistency_payload(
                config, item.participant, self.survivors, self.keys_digest
            )
            try:
                verify(context.verifying_key(item.participant), item.signature, payload)
            except InvalidSignature:
                # S13: a peer that was shown another survivor set signed that set instead.
                raise InvalidSignature(
                    f"the consistency signature of {item.participant!r} is not on this survivor set"
                ) from None
        unsigned = UnmaskResponse(
            participant=me,
            self_mask_shares=tuple(
                RevealedShare(owner, self.held.self_mask[owner]) for owner in self.survivors
            ),
            masking_key_shares=tuple(
                RevealedShare(owner, self.held.masking_key[owner]) for owner in sorted(dropped)
            ),
            signature=b"",
        )
        # Signed like every other answer: whoever uses the shares, the server or a participant
        # replaying the round from its transcript, can tell a share this participant revealed
        # from one the server forged (docs/secagg.md, round 4 of "The protocol").
        payload = unmask_payload(config, self.survivors, dropped, self.keys_digest, unsigned)
        response = replace(unsigned, signature=sign(context.signing_key, payload))
        return Completed(), response


@dataclass(frozen=True)
class Completed:
    """Round 4 done; every secret is forgotten. Terminal."""

    phase: ClassVar[ClientPhase] = ClientPhase.COMPLETED


@dataclass(frozen=True)
class Aborted:
    """This participant left the round; every secret is forgotten. Terminal."""

    phase: ClassVar[ClientPhase] = ClientPhase.ABORTED
    reason: str


ClientState = KeysAdvertised | SharesSent | InputSent | SurvivorsSigned | Completed | Aborted

_StateT = TypeVar("_StateT", KeysAdvertised, SharesSent, InputSent, SurvivorsSigned)
_ResultT = TypeVar("_ResultT")
_ItemT = TypeVar("_ItemT")


def _check_peer_keys(
    config: RoundConfig,
    context: ParticipantContext,
    masking: AgreementKeyPair,
    entry: SignedKeys,
) -> None:
    peer = entry.participant
    if len(entry.encryption_key) != KEY_BYTES or len(entry.masking_key) != KEY_BYTES:
        raise ProtocolViolation(f"the public keys of {peer!r} are not {KEY_BYTES} bytes")
    payload = advertise_keys_payload(config, peer, entry.encryption_key, entry.masking_key)
    try:
        verify(context.verifying_key(peer), entry.signature, payload)
    except InvalidSignature:
        # S14: substituted, unsigned or replayed keys.
        raise InvalidSignature(f"the keys of {peer!r} are not signed by its organization") from None
    for public in (entry.encryption_key, entry.masking_key):
        try:
            shared_secret(masking.private_key, public)
        except InvalidInput:
            raise ProtocolViolation(f"{peer!r} advertised a low-order public key") from None


def _vector_digest(vector: MaskVector) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(vector).data).digest()


# ---------------------------------------------------------------------------------------------
# Facade


@dataclass(frozen=True)
class _Answered:
    request: bytes
    answer: bytes


_NEXT_REQUEST: dict[ClientPhase, _Request] = {
    ClientPhase.KEYS_ADVERTISED: _Request.SHARE_KEYS,
    ClientPhase.SHARES_SENT: _Request.MASKED_INPUT,
    ClientPhase.INPUT_SENT: _Request.CONSISTENCY,
    ClientPhase.SURVIVORS_SIGNED: _Request.UNMASK,
}


class SecAggClient:
    """One participant in one round. Create with :meth:`start` or :meth:`restore`."""

    def __init__(
        self,
        config: RoundConfig,
        context: ParticipantContext,
        state: ClientState,
        advertised: SignedKeys,
        transcript: dict[_Request, _Answered],
    ) -> None:
        self._config = config
        self._context = context
        self._state: ClientState = state
        self._advertised = advertised
        self._transcript = transcript

    @classmethod
    def start(
        cls, config: RoundConfig, context: ParticipantContext, policy: CohortPolicy
    ) -> SecAggClient:
        """Bonawitz round 0 (AdvertiseKeys): make ``(c_pk, c_sk)``, ``(s_pk, s_sk)`` and sign.

        ``policy`` is this participant's own: a round whose threshold or cohort is below it is
        refused (``ProtocolViolation``) before any key is made.
        """
        if not isinstance(policy, CohortPolicy):
            raise InvalidInput("start needs this participant's CohortPolicy")
        policy.check(config)
        me = context.participant_id
        if me not in config.cohort:
            raise InvalidInput(f"participant {me!r} is not in the round's cohort")
        if context.workers < 1:
            raise InvalidInput("workers must be at least 1")
        encryption = generate_key_pair(context.random)
        masking = generate_key_pair(context.random)
        payload = advertise_keys_payload(config, me, encryption.public_key, masking.public_key)
        advertised = SignedKeys(
            me, encryption.public_key, masking.public_key, sign(context.signing_key, payload)
        )
        state = KeysAdvertised(encryption, masking, advertised)
        return cls(config, context, state, advertised, {})

    @property
    def config(self) -> RoundConfig:
        return self._config

    @property
    def phase(self) -> ClientPhase:
        return self._state.phase

    @property
    def state(self) -> ClientState:
        """The current state object (read-only; holds secrets, never log it)."""
        return self._state

    def advertise_keys(self) -> SignedKeys:
        """The round-0 message: the same bytes however often it is asked for."""
        if isinstance(self._state, Aborted):
            raise ProtocolViolation(f"this participant aborted the round: {self._state.reason}")
        return self._advertised

    def share_keys(self, keys: Sequence[SignedKeys]) -> tuple[EncryptedShare, ...]:
        """Answer the U1 key list with one encrypted share pair per peer (round 1)."""
        keys = _typed(keys, SignedKeys, "share_keys")
        digest = _digest(sorted(entry.to_bytes() for entry in keys))
        stored = self._replayed(_Request.SHARE_KEYS, digest)
        if stored is not None:
            return tuple(EncryptedShare.from_bytes(item) for item in decode_fields(stored))
        state = self._expect(KeysAdvertised, _Request.SHARE_KEYS)
        next_state, shares = self._guard(
            lambda: state.share_keys(self._config, self._context, keys)
        )
        answer = encode_fields(share.to_bytes() for share in shares)
        self._commit(next_state, _Request.SHARE_KEYS, digest, answer)
        return shares

    def mask_input(self, shares: Sequence[EncryptedShare], update: MaskVector) -> MaskedInput:
        """Answer the routed shares with ``y_u`` for the encoded ``update`` (round 2).

        ``update`` is the quantized vector (see :class:`QuantizationSpec`): 1-D, the round's
        dtype and ``vector_length``. A repeat of the same shares and update gets the same bytes;
        a different update for the same round is refused (never two different inputs).
        """
        self._check_update(update)
        shares = _typed(shares, EncryptedShare, "mask_input")
        digest = _digest(
            [encode_fields(sorted(item.to_bytes() for item in shares)), _vector_digest(update)]
        )
        stored = self._replayed(_Request.MASKED_INPUT, digest)
        if stored is not None:
            state = self._state
            if not isinstance(state, InputSent | SurvivorsSigned):
                raise ProtocolViolation("the round is complete; its masked input is not resent")
            # Deterministic from the stored secrets: the same bytes as the first answer.
            vector = state.material.masked_vector(
                self._config, self._context.participant_id, update, self._context.workers
            )
            return MaskedInput(self._context.participant_id, vector)
        state = self._expect(SharesSent, _Request.MASKED_INPUT)
        next_state, masked = self._guard(
            lambda: state.mask_input(self._config, self._context, shares, update)
        )
        self._commit(next_state, _Request.MASKED_INPUT, digest, b"")
        return masked

    def sign_survivors(self, survivors: Sequence[str]) -> ConsistencySignature:
        """Answer the survivor set U3 with a signature on it (round 3)."""
        survivors = _typed(survivors, str, "sign_survivors")
        digest = _digest(encode_text(member) for member in sorted(survivors))
        stored = self._replayed(_Request.CONSISTENCY, digest)
        if stored is not None:
            return ConsistencySignature.from_bytes(stored)
        state = self._expect(InputSent, _Request.CONSISTENCY)
        next_state, signature = self._guard(
            lambda: state.sign_survivors(self._config, self._context, survivors)
        )
        self._commit(next_state, _Request.CONSISTENCY, digest, signature.to_bytes())
        return signature

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Answer the unmask request with the shares it may reveal (round 4)."""
        if not isinstance(request, UnmaskRequest):
            raise InvalidInput("unmask takes an UnmaskRequest")
        canonical = UnmaskRequest(
            tuple(sorted(request.survivors)),
            tuple(sorted(request.dropped)),
            tuple(sorted(request.signatures, key=lambda item: item.to_bytes())),
        )
        digest = _digest([canonical.to_bytes()])
        stored = self._replayed(_Request.UNMASK, digest)
        if stored is not None:
            return UnmaskResponse.from_bytes(stored)
        state = self._expect(SurvivorsSigned, _Request.UNMASK)
        next_state, response = self._guard(
            lambda: state.unmask(self._config, self._context, request)
        )
        self._commit(next_state, _Request.UNMASK, digest, response.to_bytes())
        return response

    def abort(self, reason: str) -> None:
        """Leave the round (e.g. the server announced an abort); every secret is forgotten."""
        if not isinstance(self._state, Aborted | Completed):
            self._abort(reason)

    # -- bookkeeping ----------------------------------------------------------------------------

    def _replayed(self, request: _Request, digest: bytes) -> bytes | None:
        if isinstance(self._state, Aborted):
            raise ProtocolViolation(f"this participant aborted the round: {self._state.reason}")
        answered = self._transcript.get(request)
        if answered is None:
            return None
        if answered.request == digest:
            return answered.answer
        # S15 and R17: one answer per request kind and round, never a second different one.
        if not isinstance(self._state, Completed):
            self._abort(f"a different {request.value} request after it was answered")
        raise ProtocolViolation(f"a second, different {request.value} request for this round")

    def _expect(self, kind: type[_StateT], request: _Request) -> _StateT:
        state = self._state
        if not isinstance(state, kind):
            # Terminal states never get here: Aborted is refused and Completed has answered every
            # request kind, so _replayed already handled the request.
            reason = (
                f"out of order: a {request.value} request in phase {state.phase.value}"
                f" (expected {_NEXT_REQUEST[state.phase].value})"
            )
            self._abort(reason)
            raise ProtocolViolation(reason)
        return state

    def _guard(self, step: Callable[[], _ResultT]) -> _ResultT:
        try:
            return step()
        except SecAggError as error:
            self._abort(str(error))
            raise

    def _commit(self, state: ClientState, request: _Request, digest: bytes, answer: bytes) -> None:
        self._state = state
        self._transcript[request] = _Answered(digest, answer)

    def _abort(self, reason: str) -> None:
        _log.warning(
            "secagg participant aborted: job=%s round=%s participant=%s phase=%s reason=%s",
            self._config.job_id,
            self._config.round_id,
            self._context.participant_id,
            self._state.phase.value,
            reason,
        )
        self._state = Aborted(reason)

    def _check_update(self, update: MaskVector) -> None:
        if not isinstance(update, np.ndarray) or update.ndim != 1:
            raise InvalidInput("the update must be a 1-D numpy array")
        if update.dtype != self._config.dtype:
            raise InvalidInput(f"the update must be {self._config.dtype}, not {update.dtype}")
        if update.size != self._config.vector_length:
            raise InvalidInput(
                f"the update has {update.size} words, the round expects "
                f"{self._config.vector_length}"
            )

    # -- persistence ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the whole state, round secrets included (store it privately)."""
        return {
            "format": _STATE_FORMAT,
            "config": self._config.to_dict(),
            "participant": self._context.participant_id,
            "advertised": self._advertised.to_bytes().hex(),
            "state": _state_to_dict(self._state),
            "transcript": {
                request.value: {"request": item.request.hex(), "answer": item.answer.hex()}
                for request, item in self._transcript.items()
            },
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any], context: ParticipantContext) -> SecAggClient:
        """Rebuild a client from :meth:`to_dict` output, e.g. after a restart."""
        try:
            if data["format"] != _STATE_FORMAT:
                raise InvalidInput(f"unknown client state format {data['format']!r}")
            config = RoundConfig.from_dict(data["config"])
            if data["participant"] != context.participant_id:
                raise InvalidInput("the stored state belongs to another participant")
            advertised = SignedKeys.from_bytes(bytes.fromhex(data["advertised"]))
            state = _state_from_dict(data["state"], advertised)
            transcript = {
                _Request(name): _Answered(
                    bytes.fromhex(item["request"]), bytes.fromhex(item["answer"])
                )
                for name, item in data["transcript"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError, InvalidShare) as error:
            raise InvalidInput(f"malformed client state: {type(error).__name__}") from None
        if context.workers < 1:
            raise InvalidInput("workers must be at least 1")
        return cls(config, context, state, advertised, transcript)


def _digest(parts: Iterable[bytes]) -> bytes:
    return hashlib.sha256(encode_fields(parts)).digest()


def _typed(items: Sequence[_ItemT], kind: type[_ItemT], method: str) -> tuple[_ItemT, ...]:
    # A wrong type is the caller's bug (its decoder), not the server's: no abort.
    items = tuple(items)
    if not all(isinstance(item, kind) for item in items):
        raise InvalidInput(f"{method} takes a sequence of {kind.__name__}")
    return items


# ---------------------------------------------------------------------------------------------
# JSON-able state encoding


def _pair_to_dict(pair: AgreementKeyPair) -> str:
    return pair.private_key.hex()


def _pair_from_dict(data: str) -> AgreementKeyPair:
    private = bytes.fromhex(data)
    return AgreementKeyPair(private, public_key_of(private))


def _shares_to_dict(shares: Mapping[str, Share]) -> dict[str, str]:
    return {owner: share.to_bytes().hex() for owner, share in sorted(shares.items())}


def _shares_from_dict(data: Mapping[str, str]) -> dict[str, Share]:
    return {owner: Share.from_bytes(bytes.fromhex(value)) for owner, value in data.items()}


def _state_to_dict(state: ClientState) -> dict[str, Any]:
    data: dict[str, Any] = {"phase": state.phase.value}
    if isinstance(state, KeysAdvertised | SharesSent):
        data["encryption_private"] = _pair_to_dict(state.encryption)
        data["masking_private"] = _pair_to_dict(state.masking)
    if isinstance(state, SharesSent):
        data["self_mask_seed"] = state.self_mask_seed.hex()
        data["keys"] = [entry.to_bytes().hex() for entry in state.keys]
        data["own_self_mask_share"] = state.own_self_mask_share.to_bytes().hex()
        data["own_masking_key_share"] = state.own_masking_key_share.to_bytes().hex()
    elif isinstance(state, InputSent | SurvivorsSigned):
        data["masking_private"] = state.material.masking_private.hex()
        data["self_mask_seed"] = state.material.self_mask_seed.hex()
        data["peers"] = [[peer, key.hex()] for peer, key in state.material.peers]
        data["self_mask_shares"] = _shares_to_dict(state.held.self_mask)
        data["masking_key_shares"] = _shares_to_dict(state.held.masking_key)
        data["input_senders"] = list(state.input_senders)
        data["keys_digest"] = state.keys_digest.hex()
        if isinstance(state, SurvivorsSigned):
            data["survivors"] = list(state.survivors)
    elif isinstance(state, Aborted):
        data["reason"] = state.reason
    return data


def _state_from_dict(data: Mapping[str, Any], advertised: SignedKeys) -> ClientState:
    phase = ClientPhase(data["phase"])
    if phase is ClientPhase.COMPLETED:
        return Completed()
    if phase is ClientPhase.ABORTED:
        return Aborted(str(data["reason"]))
    if phase is ClientPhase.KEYS_ADVERTISED:
        return KeysAdvertised(
            encryption=_pair_from_dict(data["encryption_private"]),
            masking=_pair_from_dict(data["masking_private"]),
            advertised=advertised,
        )
    if phase is ClientPhase.SHARES_SENT:
        return SharesSent(
            encryption=_pair_from_dict(data["encryption_private"]),
            masking=_pair_from_dict(data["masking_private"]),
            self_mask_seed=bytes.fromhex(data["self_mask_seed"]),
            keys=tuple(SignedKeys.from_bytes(bytes.fromhex(item)) for item in data["keys"]),
            own_self_mask_share=Share.from_bytes(bytes.fromhex(data["own_self_mask_share"])),
            own_masking_key_share=Share.from_bytes(bytes.fromhex(data["own_masking_key_share"])),
        )
    material = MaskingMaterial(
        masking_private=bytes.fromhex(data["masking_private"]),
        self_mask_seed=bytes.fromhex(data["self_mask_seed"]),
        peers=tuple((str(peer), bytes.fromhex(key)) for peer, key in data["peers"]),
    )
    held = HeldShares(
        _shares_from_dict(data["self_mask_shares"]), _shares_from_dict(data["masking_key_shares"])
    )
    senders = tuple(str(member) for member in data["input_senders"])
    keys_digest = bytes.fromhex(data["keys_digest"])
    if phase is ClientPhase.INPUT_SENT:
        return InputSent(material, held, senders, keys_digest)
    survivors = tuple(str(m) for m in data["survivors"])
    return SurvivorsSigned(material, held, senders, keys_digest, survivors)
