"""Rounds under packed Paillier encryption on top of masking (``paillier``): the coordinator
learns nothing, not even the aggregate.

A job first runs its key ceremony (``paillier_ceremony``); a round opens only among the
organizations that hold the job's key. Each input is the Paillier encryption of a masked
vector with its tag; the coordinator multiplies the ciphertexts slot-wise, and the tags, into
running products, and closing UNMASK stores them with the round's signed messages and the mask
correction as the new (encrypted) model version, which only participants can decrypt and which
they verify from those messages (docs/paillier.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from coordinator.domain.jobs import Job, PhaseMessage
from coordinator.domain.rounds import Phase, Round, RoundEvent
from coordinator.errors import InvalidRequest, WrongRoundPhase
from coordinator.persistence.store import Transaction
from coordinator.service.context import ServiceContext
from coordinator.service.engines.base import CeremonyRow, revoked_orgs
from coordinator.service.engines.masked_engine import MaskedRoundEngine
from coordinator.service.engines.paillier_ceremony import CeremonyCoordinator, CeremonyStep
from coordinator.service.engines.paillier_inputs import (
    RunningInputs,
    exclude_reported,
    inputs_for,
    signed_input,
)
from coordinator.service.payloads import ReceivedPayload, decode_payload
from coordinator.service.round_ledger import RoundLedger
from coordinator.service.views import MessageSubmission, UpdateSubmission, WorkItem
from fedsilo.codec import PayloadHeader, TensorSpec, encode_tensors
from fedsilo.faults import crash_point
from fedsilo.paillier_inputs import (
    ExclusionReport,
    RoundInputs,
    SignedInput,
    is_exclusion_report,
)
from fedsilo.paillier_versions import PaillierVersion, RoundTranscript, round_key_fingerprint
from secagg import InvalidInput, SecAggError
from secagg.paillier import (
    PackingLayout,
    PaillierCiphertexts,
    PaillierPublicKey,
    add_ciphertexts,
    check_ciphertexts,
)

__all__ = ["PaillierRoundEngine"]


class PaillierRoundEngine(MaskedRoundEngine):
    """The ``paillier`` protection."""

    has_key_ceremony = True

    def __init__(self, ctx: ServiceContext, ledger: RoundLedger) -> None:
        self._ceremony = CeremonyCoordinator()
        # Every round's context names the job key of the current generation: a round signed
        # under one generation's key is never taken as a round of another (docs/paillier.md).
        super().__init__(ctx, ledger, key_fingerprint=self._key_fingerprint)

    def _key_fingerprint(self, tx: Transaction, job: Job) -> bytes:
        """The fingerprint of the job key the current round's inputs are encrypted under."""
        public_key = self._ceremony.public_key(tx, job.job_id)
        if public_key is None:
            # Rounds open only once the generation's key was dealt.
            raise WrongRoundPhase("the job's Paillier key of this generation is not dealt yet")
        generation = self._ceremony.generation(tx, job.job_id)
        return round_key_fingerprint(job.job_id, generation, public_key)

    # -- the key ceremony -----------------------------------------------------------------------

    def select_cohort(
        self, tx: Transaction, job: Job, live: tuple[str, ...], now: float
    ) -> tuple[str, ...] | None:
        # A key held by a revoked organization is not used for another round: a new key
        # generation is dealt among the organizations still admitted first (docs/paillier.md,
        # "Key rotation").
        if self._ceremony.rotate_if_revoked(tx, job, revoked_orgs(tx), now):
            return None
        # Only organizations that hold the job's key can take part; the first rounds wait
        # until the ceremony settles.
        if not self._ceremony.settled(tx, job, live, now):
            return None
        # An organization that stopped serving the job (a version failed its checks there)
        # refuses every later round: it is left out rather than waited for.
        holders = set(self._ceremony.holders(tx, job.job_id))
        holders -= set(self._ceremony.stopped(tx, job.job_id))
        return super().select_cohort(tx, job, tuple(org for org in live if org in holders), now)

    def status_note(self, tx: Transaction, job: Job) -> str:
        notes = []
        rotation = self._ceremony.rotation_note(tx, job.job_id)
        if rotation:
            notes.append(rotation)
        stopped = self._ceremony.stopped(tx, job.job_id)
        if stopped:
            notes.append(
                "stopped serving this job for good: "
                + "; ".join(f"{org} ({reason})" for org, reason in sorted(stopped.items()))
            )
        return "; ".join(notes)

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

    # -- vetting the inputs before CONSISTENCY (paillier_inputs.py) -----------------------------

    def round_work(
        self, tx: Transaction, round_: Round, org_id: str, now: float
    ) -> WorkItem | None:
        item = super().round_work(tx, round_, org_id, now)
        if (
            item is None
            or item.secagg is None
            or round_.phase is not Phase.CONSISTENCY
            or round_.accumulator_ref is None
        ):
            return item
        # Every member decrypts the others' signed inputs and checks them before it signs U3;
        # the step announces them, the member downloads them in chunks (any size).
        announced = self.round_inputs(tx, round_, org_id).info()
        step = dataclasses.replace(item.secagg, round_inputs=announced)
        return dataclasses.replace(item, secagg=step)

    def round_inputs(self, tx: Transaction, round_: Round, org_id: str) -> RoundInputs:
        if round_.phase is not Phase.CONSISTENCY or round_.accumulator_ref is None:
            raise WrongRoundPhase("a round's inputs are vetted only in its consistency phase")
        if org_id not in round_.contributors:
            raise WrongRoundPhase("this organization does not take part in the consistency phase")
        running = RunningInputs.from_bytes(self._ctx.blobs.get(round_.accumulator_ref))
        return inputs_for(running, org_id)

    def check_message(
        self,
        tx: Transaction,
        round_: Round,
        job: Job,
        org_id: str,
        message: MessageSubmission,
        certificate_pem: bytes,
        now: float,
    ) -> PhaseMessage:
        if message.phase is Phase.CONSISTENCY and is_exclusion_report(message.body):
            try:
                report = ExclusionReport.from_bytes(message.body)
            except SecAggError as exc:
                raise InvalidRequest(f"the exclusion report was refused: {exc}") from None
            if org_id not in round_.contributors:
                raise WrongRoundPhase(
                    "this organization does not take part in the consistency phase"
                )
            public_key = self._ceremony.public_key(tx, job.job_id)
            assert public_key is not None  # rounds open only after the key was dealt
            # U3 without the reported senders; the signature below must be on exactly that set.
            round_ = exclude_reported(
                tx, self._ctx.blobs, public_key, round_, job, org_id, report, now
            )
            message = dataclasses.replace(message, body=report.signature)
        return super().check_message(tx, round_, job, org_id, message, certificate_pem, now)

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
        # Checked like any payload (size, hash, the three uint8 vectors), read from the spool once.
        data, tag, signature = decode_payload(
            update.header, payload, self._ctx.settings.max_payload_bytes
        )
        with self._ctx.store.transaction() as tx:
            signed = signed_input(
                tx,
                self._secure,
                round_,
                job,
                org_id,
                data.tobytes(),
                tag.tobytes(),
                signature.tobytes(),
            )
        return self._add_encrypted(round_, job, public_key, signed)

    def _check_encrypted_input(
        self, tx: Transaction, round_: Round, org_id: str, header: PayloadHeader
    ) -> None:
        """An encrypted input comes from a member of U2: its ciphertexts, its tag and its
        sender's signature over both and the round (``fedsilo.paillier_inputs``), as bytes."""
        self._secure.require_shares_sent(tx, round_, org_id)
        if len(header.tensors) != 3 or any(t.dtype != "uint8" for t in header.tensors):
            raise InvalidRequest(
                "an encrypted input is three uint8 tensors: the Paillier ciphertexts, their tag "
                "and the sender's signature"
            )
        if any(len(t.shape) != 1 for t in header.tensors):
            raise InvalidRequest("an encrypted input is 1-D tensors of bytes")

    def _add_encrypted(
        self,
        round_: Round,
        job: Job,
        public_key: PaillierPublicKey,
        signed: SignedInput,
    ) -> str:
        """Multiply one participant's ciphertexts and tag into the round's running products,
        and keep its signed input beside them (shown to the members at CONSISTENCY)."""
        try:
            new = PaillierCiphertexts.from_bytes(signed.ciphertexts, public_key)
            tag = _decode_tag(signed.tag, public_key)
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
        inputs: tuple[bytes, ...] = ()
        excluded: tuple[bytes, ...] = ()
        if round_.accumulator_ref is not None:
            running = RunningInputs.from_bytes(self._ctx.blobs.get(round_.accumulator_ref))
            total = PaillierCiphertexts.from_bytes(running.summed, public_key)
            new = add_ciphertexts(public_key, [total, new])
            tag = tag * _decode_tag(running.tag, public_key) % public_key.n_squared
            inputs, excluded = running.inputs, running.excluded
        running = RunningInputs(
            new.to_bytes(),
            _encode_tag(tag, public_key),
            (*inputs, signed.to_bytes()),
            excluded,
        )
        return self._ctx.blobs.put(running.to_bytes())

    # -- the encrypted result -------------------------------------------------------------------

    def _unmask(self, round_: Round, job: Job, now: float) -> None:
        """Store the version record and the mask correction (AGGREGATED).

        The record (``fedsilo.paillier_versions.PaillierVersion``) holds the summed ciphertexts,
        the summed tags and the round's signed messages, from which every participant recomputes
        the correction and the contributor count before it decrypts (docs/paillier.md).
        """
        try:
            with self._ctx.store.transaction() as tx:
                correction = self._secure.mask_correction(tx, round_, job)
                transcript = self._transcript(tx, round_, job)
                # Rotations happen only between rounds: the round's inputs are under this one.
                generation = self._ceremony.generation(tx, job.job_id)
        except SecAggError as exc:
            self._ledger.abort(round_, job, f"unmasking failed: {exc}", now)
            return
        assert round_.accumulator_ref is not None  # U3 has at least t >= 2 members
        running = RunningInputs.from_bytes(self._ctx.blobs.get(round_.accumulator_ref))
        terms = self._secure.terms(round_, job)
        record = PaillierVersion(
            running.summed, running.tag, transcript, generation, terms
        ).to_bytes()
        _, payload = encode_tensors([np.frombuffer(record, dtype=np.uint8), correction])
        result_ref = self._ctx.blobs.put(payload)
        crash_point("coordinator.secagg.before_aggregated")
        self._ledger.write_transition(round_, RoundEvent.PHASE_COMPLETE, now, result_ref=result_ref)

    def _transcript(self, tx: Transaction, round_: Round, job: Job) -> RoundTranscript:
        """The round's accepted messages, in acceptance order, as participants replay them."""
        config = self._secure.config(tx, round_, job)

        def bodies(phase: Phase) -> tuple[tuple[str, bytes], ...]:
            return tuple(
                (m.org_id, m.body) for m in tx.list_phase_messages(round_.round_id, phase.value)
            )

        return RoundTranscript(
            round_id=round_.round_id,
            cohort=config.cohort,
            threshold=config.threshold,
            context=config.context,
            keys=tuple(
                (m.org_id, m.body, m.certificate_pem)
                for m in tx.list_phase_messages(round_.round_id, Phase.KEYS.value)
            ),
            shares=bodies(Phase.SHARES),
            contributors=round_.contributors,
            consistency=bodies(Phase.CONSISTENCY),
            unmask=bodies(Phase.UNMASK),
        )

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


def _decode_tag(data: bytes, public_key: PaillierPublicKey) -> int:
    """A tag ciphertext: big-endian in exactly ``2 * bits(n) / 8`` bytes, valid under the key."""
    if len(data) != public_key.ciphertext_bytes:
        raise InvalidInput(f"a tag ciphertext is {public_key.ciphertext_bytes} bytes")
    value = int.from_bytes(data, "big")
    check_ciphertexts([value], public_key)
    return value


def _encode_tag(value: int, public_key: PaillierPublicKey) -> bytes:
    return value.to_bytes(public_key.ciphertext_bytes, "big")
