"""Rounds under packed Paillier encryption on top of masking (``paillier``): the coordinator
learns nothing, not even the aggregate.

A job first runs its key ceremony (``paillier_ceremony``); a round opens only among the
organizations that hold the job's key. Each input is the Paillier encryption of a masked
vector; the coordinator multiplies the ciphertexts slot-wise into a running product, and closing
UNMASK stores that product with the mask correction as the new (encrypted) model version, which
only participants can decrypt (docs/paillier.md).
"""

from __future__ import annotations

import numpy as np

from coordinator.domain.jobs import Job
from coordinator.domain.rounds import Round, RoundEvent
from coordinator.errors import InvalidRequest, WrongRoundPhase
from coordinator.persistence.store import Transaction
from coordinator.service.context import ServiceContext
from coordinator.service.engines.base import CeremonyRow
from coordinator.service.engines.masked_engine import MaskedRoundEngine
from coordinator.service.engines.paillier_ceremony import CeremonyCoordinator, CeremonyStep
from coordinator.service.payloads import ReceivedPayload, decode_payload, payload_bytes
from coordinator.service.round_ledger import RoundLedger
from coordinator.service.views import UpdateSubmission
from fedsilo.codec import PayloadHeader, TensorSpec, encode_tensors
from fedsilo.faults import crash_point
from secagg import SecAggError
from secagg.paillier import PackingLayout, PaillierCiphertexts, PaillierPublicKey, add_ciphertexts

__all__ = ["PaillierRoundEngine"]


class PaillierRoundEngine(MaskedRoundEngine):
    """The ``paillier`` protection."""

    has_key_ceremony = True

    def __init__(self, ctx: ServiceContext, ledger: RoundLedger) -> None:
        super().__init__(ctx, ledger)
        self._ceremony = CeremonyCoordinator()

    # -- the key ceremony -----------------------------------------------------------------------

    def select_cohort(
        self, tx: Transaction, job: Job, live: tuple[str, ...], now: float
    ) -> tuple[str, ...] | None:
        # Only organizations that hold the job's key can take part; the first rounds wait
        # until the ceremony settles.
        if not self._ceremony.settled(tx, job, live, now):
            return None
        holders = set(self._ceremony.holders(tx, job.job_id))
        return super().select_cohort(tx, job, tuple(org for org in live if org in holders), now)

    def ceremony_step(self, tx: Transaction, job: Job, org_id: str) -> CeremonyStep | None:
        return self._ceremony.step_for(tx, job, org_id, self._secure.job_parameters(job))

    def check_ceremony(
        self,
        tx: Transaction,
        job: Job,
        org_id: str,
        action: str,
        body: bytes,
        certificate_pem: bytes,
    ) -> list[CeremonyRow]:
        return self._ceremony.check(tx, job, org_id, action, body, certificate_pem)

    # -- encrypted inputs -----------------------------------------------------------------------

    def _check_masked_header(
        self, tx: Transaction, round_: Round, job: Job, org_id: str, update: UpdateSubmission
    ) -> None:
        self._check_encrypted_input(tx, round_, org_id, update.header)

    def _fold_masked(
        self,
        round_: Round,
        job: Job,
        org_id: str,
        update: UpdateSubmission,
        payload: ReceivedPayload,
    ) -> str:
        with self._ctx.store.transaction() as tx:
            self._check_encrypted_input(tx, round_, org_id, update.header)
            public_key = self._ceremony.public_key(tx, job.job_id)
        assert public_key is not None  # rounds open only after the key was dealt
        # Checked like any payload (size, hash, one uint8 vector), then parsed whole: the
        # ciphertexts are read from the spool once, not copied again.
        decode_payload(update.header, payload, self._ctx.settings.max_payload_bytes)
        return self._add_encrypted(round_, job, public_key, payload_bytes(payload))

    def _check_encrypted_input(
        self, tx: Transaction, round_: Round, org_id: str, header: PayloadHeader
    ) -> None:
        """An encrypted input comes from a member of U2 and is one vector of bytes."""
        self._secure.require_shares_sent(tx, round_, org_id)
        if len(header.tensors) != 1 or header.tensors[0].dtype != "uint8":
            raise InvalidRequest("an encrypted input is one uint8 tensor of Paillier ciphertexts")
        if len(header.tensors[0].shape) != 1:
            raise InvalidRequest("an encrypted input is a 1-D tensor of bytes")

    def _add_encrypted(
        self, round_: Round, job: Job, public_key: PaillierPublicKey, payload: bytes
    ) -> str:
        """Multiply one participant's ciphertexts into the round's running product; store it."""
        try:
            new = PaillierCiphertexts.from_bytes(payload, public_key)
        except SecAggError as exc:
            raise InvalidRequest(f"the encrypted input was refused: {exc}") from None
        length = self._secure.vector_length(job)
        expected = PackingLayout(
            job.spec.secagg.modulus_bits, job.spec.secagg.max_participants, public_key.bits
        )
        if new.layout != expected or new.value_count != length:
            raise InvalidRequest(f"an encrypted input packs {length} values in the job's layout")
        if new.contributions != 1:
            raise InvalidRequest("an encrypted input is one participant's contribution")
        if round_.accumulator_ref is not None:
            total = PaillierCiphertexts.from_bytes(
                self._ctx.blobs.get(round_.accumulator_ref), public_key
            )
            new = add_ciphertexts(public_key, [total, new])
        return self._ctx.blobs.put(new.to_bytes())

    # -- the encrypted result -------------------------------------------------------------------

    def _unmask(self, round_: Round, job: Job, now: float) -> None:
        """Store the summed ciphertexts with the mask correction (AGGREGATED).

        Participants decrypt the sum ``S`` and take ``(S + C) mod R`` with the correction ``C``.
        """
        try:
            with self._ctx.store.transaction() as tx:
                correction = self._secure.mask_correction(tx, round_, job)
        except SecAggError as exc:
            self._ledger.abort(round_, job, f"unmasking failed: {exc}", now)
            return
        assert round_.accumulator_ref is not None  # U3 has at least t >= 2 members
        summed = np.frombuffer(self._ctx.blobs.get(round_.accumulator_ref), dtype=np.uint8)
        _, payload = encode_tensors([summed, correction])
        result_ref = self._ctx.blobs.put(payload)
        crash_point("coordinator.secagg.before_aggregated")
        self._ledger.write_transition(round_, RoundEvent.PHASE_COMPLETE, now, result_ref=result_ref)

    def model_specs(
        self, job: Job, version: int, size: int, *, encrypted: bool
    ) -> tuple[TensorSpec, ...]:
        """Versions after 0 exist only encrypted (the summed ciphertexts and the mask
        correction): they are served only to participants, who hold the key."""
        if version < 1:
            return job.weight_specs
        if not encrypted:
            raise WrongRoundPhase(
                "the models of a paillier job exist only encrypted at the coordinator; "
                "export the model from a participant "
                "(fedsilo model export --participant-config ORG.yaml)"
            )
        correction = self._secure.input_spec(job)
        return (TensorSpec("uint8", (size - correction.nbytes,)), correction)
