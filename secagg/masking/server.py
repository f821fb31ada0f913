"""Server side of Bonawitz et al. 2017: collect, route, track survivors, unmask the sum.

Pure logic: the caller (the coordinator's services) authenticates every sender by its
certificate, decides when a phase closes (all answers in, or the deadline), persists what it
received, and calls :meth:`SecAggServer.finish` to get ``sum(x_u) mod R`` over exactly the
survivors U3 (:attr:`SecAggServer.contributors`). The object holds no randomness, so it can be
rebuilt after a crash by replaying the stored submissions in order.

Participant sets, as in the paper: U1 sent keys (round 0), U2 sent shares (round 1), U3 sent
masked inputs (round 2), U4 signed U3 (round 3), U5 answered the unmask request (round 4).
Every phase needs at least ``t`` of them, else the round aborts with NotEnoughSurvivors.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from secagg.errors import (
    InvalidInput,
    InvalidShare,
    InvalidSignature,
    NotEnoughSurvivors,
    SecAggError,
    WrongPhase,
)
from secagg.masking.config import RoundConfig
from secagg.masking.derivation import (
    advertise_keys_payload,
    consistency_payload,
    key_list_digest,
    mask_is_added,
    pairwise_mask_seeds,
    unmask_payload,
)
from secagg.masking.messages import (
    ConsistencySignature,
    EncryptedShare,
    MaskedInput,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.primitives.agreement import KEY_BYTES, public_key_of
from secagg.primitives.prg import MaskVector, apply_masks
from secagg.primitives.shamir import LagrangeBasis
from secagg.primitives.signatures import VerifyingKey, verify

__all__ = ["SecAggServer", "ServerPhase"]

_log = logging.getLogger("secagg")


class ServerPhase(enum.StrEnum):
    """What the server is collecting."""

    KEYS = "keys"
    """Round 0: signed public keys. Next: SHARES; ABORTED."""
    SHARES = "shares"
    """Round 1: encrypted shares. Next: INPUTS; ABORTED."""
    INPUTS = "inputs"
    """Round 2: masked inputs. Next: CONSISTENCY; ABORTED."""
    CONSISTENCY = "consistency"
    """Round 3: signatures on U3. Next: UNMASK; ABORTED."""
    UNMASK = "unmask"
    """Round 4: unmask responses. Next: FINISHED; ABORTED."""
    FINISHED = "finished"
    """Terminal: the sum was released."""
    ABORTED = "aborted"
    """Terminal: nothing released."""


class SecAggServer:
    """The server's bookkeeping for one round.

    ``verifying_keys`` (participant id -> certificate public key) is optional: with it, bad
    signatures are rejected on arrival instead of making honest participants abort later.
    ``workers`` threads regenerate masks in :meth:`finish`.
    """

    def __init__(
        self,
        config: RoundConfig,
        *,
        verifying_keys: Mapping[str, VerifyingKey] | None = None,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise InvalidInput("workers must be at least 1")
        self._config = config
        self._verifying_keys = verifying_keys
        self._workers = workers
        self._phase = ServerPhase.KEYS
        self._abort_reason = ""
        self._keys: dict[str, SignedKeys] = {}
        self._shares: dict[str, tuple[EncryptedShare, ...]] = {}
        self._sum: MaskVector | None = None
        self._signatures: dict[str, ConsistencySignature] = {}
        self._responses: dict[str, UnmaskResponse] = {}
        self._key_holders: tuple[str, ...] = ()  # U1
        self._share_senders: tuple[str, ...] = ()  # U2
        self._input_senders: list[str] = []  # U3 while collecting
        self._survivors: tuple[str, ...] = ()  # U3
        self._signers: tuple[str, ...] = ()  # U4

    @property
    def config(self) -> RoundConfig:
        return self._config

    @property
    def phase(self) -> ServerPhase:
        return self._phase

    @property
    def abort_reason(self) -> str:
        return self._abort_reason

    @property
    def contributors(self) -> tuple[str, ...]:
        """U3: the participants whose inputs are in the sum (known once inputs are closed)."""
        return self._survivors

    def abort(self, reason: str) -> None:
        """Abort the round (deadline, admin); nothing will be released."""
        if self._phase not in (ServerPhase.FINISHED, ServerPhase.ABORTED):
            self._abort(reason)

    # -- round 0: AdvertiseKeys ---------------------------------------------------------------

    def receive_keys(self, sender: str, keys: SignedKeys) -> None:
        """Accept ``sender``'s signed keys; an identical repeat is a no-op."""
        self._require(ServerPhase.KEYS)
        self._check_sender(sender, self._config.cohort, "is not in the cohort")
        if not isinstance(keys, SignedKeys) or keys.participant != sender:
            raise InvalidInput(f"the keys sent by {sender!r} are not signed keys of {sender!r}")
        if len(keys.encryption_key) != KEY_BYTES or len(keys.masking_key) != KEY_BYTES:
            raise InvalidInput(f"the public keys of {sender!r} are not {KEY_BYTES} bytes")
        if self._repeat(self._keys, sender, keys):
            return
        offered = {keys.encryption_key, keys.masking_key}
        used = {
            key
            for entry in self._keys.values()
            for key in (entry.encryption_key, entry.masking_key)
        }
        if len(offered) != 2 or used & offered:
            raise InvalidInput(f"{sender!r} advertised a public key that is already in use")
        if self._verifying_keys is not None:
            payload = advertise_keys_payload(
                self._config, sender, keys.encryption_key, keys.masking_key
            )
            verify(self._verifying_key(sender), keys.signature, payload)
        self._keys[sender] = keys

    def close_keys(self) -> tuple[SignedKeys, ...]:
        """End round 0: U1 is everyone who sent keys; returns the list for every member of U1."""
        self._require(ServerPhase.KEYS)
        self._key_holders = self._close(sorted(self._keys), "keys", ServerPhase.SHARES)
        return tuple(self._keys[member] for member in self._key_holders)

    # -- round 1: ShareKeys -------------------------------------------------------------------

    def receive_shares(self, sender: str, shares: Sequence[EncryptedShare]) -> None:
        """Accept one encrypted share from ``sender`` for every other member of U1."""
        self._require(ServerPhase.SHARES)
        self._check_sender(sender, self._key_holders, "did not advertise keys")
        if not all(isinstance(item, EncryptedShare) and item.sender == sender for item in shares):
            raise InvalidInput(f"the shares sent by {sender!r} are not all from {sender!r}")
        shares = tuple(sorted(shares, key=lambda item: item.receiver))
        receivers = [item.receiver for item in shares]
        if receivers != [member for member in self._key_holders if member != sender]:
            raise InvalidInput(f"{sender!r} must send exactly one share to every other key holder")
        if self._repeat(self._shares, sender, shares):
            return
        self._shares[sender] = shares

    def close_shares(self) -> None:
        """End round 1: U2 is everyone in U1 who sent shares."""
        self._require(ServerPhase.SHARES)
        self._share_senders = self._close(sorted(self._shares), "shares", ServerPhase.INPUTS)

    def shares_for(self, receiver: str) -> tuple[EncryptedShare, ...]:
        """The shares from U2 addressed to ``receiver`` (a member of U2), for round 2."""
        self._require(ServerPhase.INPUTS, ServerPhase.CONSISTENCY, ServerPhase.UNMASK)
        self._check_sender(receiver, self._share_senders, "did not send shares")
        return tuple(
            item
            for sender in self._share_senders
            if sender != receiver
            for item in self._shares[sender]
            if item.receiver == receiver
        )

    # -- round 2: MaskedInputCollection -------------------------------------------------------

    def receive_masked_input(self, sender: str, masked: MaskedInput) -> None:
        """Add ``y_u`` to the running sum (mod R); memory stays one vector.

        A second input from one sender is refused: an identical retry is answered by the caller
        from its submission record (it stores the content hash), which keeps hashing of large
        vectors out of this hot path.
        """
        self._require(ServerPhase.INPUTS)
        self._check_sender(sender, self._share_senders, "did not send shares")
        if not isinstance(masked, MaskedInput) or masked.participant != sender:
            raise InvalidInput(f"the input sent by {sender!r} is not a masked input of {sender!r}")
        vector = masked.vector
        if not isinstance(vector, np.ndarray) or vector.ndim != 1:
            raise InvalidInput("a masked input must be a 1-D numpy array")
        if vector.dtype != self._config.dtype or vector.size != self._config.vector_length:
            raise InvalidInput(
                f"a masked input must be {self._config.vector_length} words of "
                f"{self._config.dtype}, got {vector.size} of {vector.dtype}"
            )
        if sender in self._input_senders:
            raise InvalidInput(f"a masked input from {sender!r} was already added")
        if self._sum is None:
            self._sum = np.array(vector, dtype=self._config.dtype, copy=True)
        else:
            np.add(self._sum, vector, out=self._sum)
        self._input_senders.append(sender)

    def restore_inputs(self, senders: Sequence[str], total: MaskVector | None) -> None:
        """Rebuild round 2 from durable state: ``senders`` and their running sum ``total``.

        A caller that keeps the modular sum of the masked inputs itself (in a blob store, so a
        restart does not lose it) uses this instead of :meth:`receive_masked_input`. ``total``
        may be None when only the survivor bookkeeping is needed; :meth:`finish` then refuses.
        """
        self._require(ServerPhase.INPUTS)
        if self._input_senders:
            raise WrongPhase("inputs were already received in this round")
        if len(set(senders)) != len(senders):
            raise InvalidInput("the input senders list a participant twice")
        for sender in senders:
            self._check_sender(sender, self._share_senders, "did not send shares")
        if total is not None:
            if not isinstance(total, np.ndarray) or total.ndim != 1:
                raise InvalidInput("the sum of masked inputs must be a 1-D numpy array")
            if total.dtype != self._config.dtype or total.size != self._config.vector_length:
                raise InvalidInput(
                    f"the sum of masked inputs must be {self._config.vector_length} words of "
                    f"{self._config.dtype}, got {total.size} of {total.dtype}"
                )
            self._sum = np.array(total, dtype=self._config.dtype, copy=True)
        self._input_senders = list(senders)

    def close_inputs(self) -> tuple[str, ...]:
        """End round 2: U3 is everyone in U2 who sent a masked input; returns U3."""
        self._require(ServerPhase.INPUTS)
        self._survivors = self._close(
            sorted(self._input_senders), "masked inputs", ServerPhase.CONSISTENCY
        )
        return self._survivors

    # -- round 3: ConsistencyCheck ------------------------------------------------------------

    def receive_consistency(self, sender: str, signature: ConsistencySignature) -> None:
        """Accept ``sender``'s signature on U3; an identical repeat is a no-op."""
        self._require(ServerPhase.CONSISTENCY)
        self._check_sender(sender, self._survivors, "is not a survivor")
        if not isinstance(signature, ConsistencySignature) or signature.participant != sender:
            raise InvalidInput(f"the signature sent by {sender!r} is not {sender!r}'s")
        if self._repeat(self._signatures, sender, signature):
            return
        if self._verifying_keys is not None:
            keys = (self._keys[member] for member in self._key_holders)
            payload = consistency_payload(
                self._config, sender, self._survivors, key_list_digest(keys)
            )
            verify(self._verifying_key(sender), signature.signature, payload)
        self._signatures[sender] = signature

    def close_consistency(self) -> UnmaskRequest:
        """End round 3: U4 signed; returns the unmask request for every member of U4."""
        self._require(ServerPhase.CONSISTENCY)
        self._signers = self._close(sorted(self._signatures), "signatures", ServerPhase.UNMASK)
        return UnmaskRequest(
            survivors=self._survivors,
            dropped=self._dropped(),
            signatures=tuple(self._signatures[member] for member in self._signers),
        )

    # -- round 4: Unmasking -------------------------------------------------------------------

    def receive_unmask(self, sender: str, response: UnmaskResponse) -> None:
        """Accept ``sender``'s shares: ``b`` for each of U3, ``s_sk`` for each of U2 \\ U3."""
        self._require(ServerPhase.UNMASK)
        self._check_sender(sender, self._signers, "did not sign the survivor set")
        if not isinstance(response, UnmaskResponse) or response.participant != sender:
            raise InvalidInput(f"the unmask response sent by {sender!r} is not {sender!r}'s")
        expected_x = self._config.x_coordinate(sender)
        for revealed, owners in (
            (response.self_mask_shares, self._survivors),
            (response.masking_key_shares, self._dropped()),
        ):
            if tuple(item.owner for item in revealed) != owners:
                raise InvalidInput(f"the unmask response of {sender!r} has the wrong share owners")
            if any(item.share.x != expected_x for item in revealed):
                raise InvalidInput(f"the unmask response of {sender!r} has shares of another x")
        if self._repeat(self._responses, sender, response):
            return
        if self._verifying_keys is not None:
            keys = (self._keys[member] for member in self._key_holders)
            payload = unmask_payload(
                self._config, self._survivors, self._dropped(), key_list_digest(keys), response
            )
            try:
                verify(self._verifying_key(sender), response.signature, payload)
            except InvalidSignature:
                raise InvalidSignature(
                    f"the unmask response of {sender!r} is not signed by {sender!r} for this "
                    "round and survivor set"
                ) from None
        self._responses[sender] = response

    def finish(self) -> MaskVector:
        """End round 4: reconstruct ``b_u`` (U3) and ``s_sk_v`` (U2 \\ U3), remove every mask.

        Returns ``sum_{u in U3} x_u mod R``. Inconsistent shares abort the round (InvalidShare).
        """
        self._require(ServerPhase.UNMASK)
        responders = self._close(sorted(self._responses), "unmask responses", ServerPhase.UNMASK)
        try:
            add, subtract = self._mask_seeds(responders)
        except SecAggError as error:
            self._abort(str(error))
            raise
        total = self._sum
        if total is None:
            raise WrongPhase("the sum of the masked inputs is not known to this server")
        apply_masks(total, add=add, subtract=subtract, workers=self._workers)
        self._sum = None
        self._phase = ServerPhase.FINISHED
        _log.info(
            "secagg round unmasked: job=%s round=%s contributors=%d dropped=%d responders=%d",
            self._config.job_id,
            self._config.round_id,
            len(self._survivors),
            len(self._dropped()),
            len(responders),
        )
        return total

    def _mask_seeds(self, responders: Sequence[str]) -> tuple[list[bytes], list[bytes]]:
        # The x coordinates are the same for every secret: one Lagrange basis for the round.
        basis = LagrangeBasis(
            [self._config.x_coordinate(member) for member in responders], self._config.threshold
        )
        responses = [self._responses[member] for member in responders]
        add: list[bytes] = []
        subtract: list[bytes] = []
        for index in range(len(self._survivors)):
            seed = basis.combine([item.self_mask_shares[index].share.y for item in responses])
            subtract.append(seed)
        for index, owner in enumerate(self._dropped()):
            private = basis.combine([item.masking_key_shares[index].share.y for item in responses])
            if public_key_of(private) != self._keys[owner].masking_key:
                raise InvalidShare(f"the reconstructed s_sk of {owner!r} does not match its s_pk")
            seeds = pairwise_mask_seeds(
                self._config,
                private,
                [self._keys[member].masking_key for member in self._survivors],
            )
            for survivor, seed in zip(self._survivors, seeds, strict=True):
                # The survivor added PRG(s_uv) if owner > survivor, so remove it the other way.
                (subtract if mask_is_added(survivor, owner) else add).append(seed)
        return add, subtract

    # -- bookkeeping --------------------------------------------------------------------------

    def _dropped(self) -> tuple[str, ...]:
        return tuple(member for member in self._share_senders if member not in self._survivors)

    def _require(self, *phases: ServerPhase) -> None:
        if self._phase not in phases:
            raise WrongPhase(
                f"the round is in phase {self._phase.value}, not "
                + " or ".join(phase.value for phase in phases)
            )

    def _check_sender(self, sender: str, allowed: Sequence[str], reason: str) -> None:
        if sender not in allowed:
            raise WrongPhase(f"{sender!r} {reason} in this round")

    def _verifying_key(self, sender: str) -> VerifyingKey:
        assert self._verifying_keys is not None
        key = self._verifying_keys.get(sender)
        if key is None:
            raise InvalidInput(f"no organization key is known for {sender!r}")
        return key

    @staticmethod
    def _repeat(received: Mapping[str, object], sender: str, message: object) -> bool:
        previous = received.get(sender)
        if previous is None:
            return False
        if previous == message:
            return True
        raise InvalidInput(f"{sender!r} already sent a different message in this phase")

    def _close(self, members: list[str], what: str, next_phase: ServerPhase) -> tuple[str, ...]:
        if len(members) < self._config.threshold:
            reason = (
                f"only {len(members)} {what}, fewer than t={self._config.threshold} "
                f"(phase {self._phase.value})"
            )
            self._abort(reason)
            raise NotEnoughSurvivors(reason)
        self._phase = next_phase
        return tuple(members)

    def _abort(self, reason: str) -> None:
        _log.warning(
            "secagg round aborted: job=%s round=%s phase=%s reason=%s",
            self._config.job_id,
            self._config.round_id,
            self._phase.value,
            reason,
        )
        self._phase = ServerPhase.ABORTED
        self._abort_reason = reason
