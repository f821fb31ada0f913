"""Rounds under pairwise-masked secure aggregation (``secagg``): the coordinator learns the sum.

Masked inputs are added modulo ``R`` into one running sum; closing UNMASK removes every mask
and stores base + the weighted mean delta as the new model (docs/secagg.md).
"""

from __future__ import annotations

from coordinator.domain.jobs import Job
from coordinator.domain.rounds import Round, RoundEvent
from coordinator.persistence.store import Transaction
from coordinator.service.engines.masked_engine import MaskedRoundEngine
from coordinator.service.payloads import ReceivedPayload, decode_payload
from coordinator.service.views import UpdateSubmission
from fedsilo.codec import PayloadHeader, decode_tensors, encode_tensors
from fedsilo.faults import crash_point
from secagg import SecAggError

__all__ = ["SecAggRoundEngine"]


class SecAggRoundEngine(MaskedRoundEngine):
    """The ``secagg`` protection."""

    def _check_masked_header(
        self, tx: Transaction, round_: Round, job: Job, org_id: str, update: UpdateSubmission
    ) -> None:
        self._secure.check_masked_input(tx, round_, job, org_id, update.header)

    def _fold_masked(
        self,
        round_: Round,
        job: Job,
        org_id: str,
        update: UpdateSubmission,
        payload: ReceivedPayload,
    ) -> str:
        with self._ctx.store.transaction() as tx:
            self._secure.check_masked_input(tx, round_, job, org_id, update.header)
        (vector,) = decode_payload(update.header, payload, self._ctx.settings.max_payload_bytes)
        sum_ref, _ = self._secure.add_input(round_, job, vector)
        return sum_ref

    def _unmask(self, round_: Round, job: Job, now: float) -> None:
        """Reconstruct the masks from the UNMASK answers and store the new model (AGGREGATED)."""
        _, _, base_ref = self._ledger.model_blob(job.job_id, round_.base_version)
        base_payload = self._ctx.blobs.get(base_ref)
        # A blob is named by the SHA-256 of its bytes: the header's hash without hashing again.
        base_header = PayloadHeader(job.weight_specs, len(base_payload), bytes.fromhex(base_ref))
        base = decode_tensors(base_header, base_payload)
        try:
            with self._ctx.store.transaction() as tx:
                result = self._secure.unmask(tx, round_, job, base)
        except SecAggError as exc:
            self._ledger.abort(round_, job, f"unmasking failed: {exc}", now)
            return
        _, payload = encode_tensors(result.weights)
        result_ref = self._ctx.blobs.put(payload)
        crash_point("coordinator.secagg.before_aggregated")
        self._ledger.write_transition(
            round_,
            RoundEvent.PHASE_COMPLETE,
            now,
            result_ref=result_ref,
            total_weight=result.total_weight,
        )
