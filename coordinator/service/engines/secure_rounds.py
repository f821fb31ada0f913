"""The coordinator's part of secure aggregation: route messages, track survivors, unmask the sum.

Nothing here is kept only in memory. Every accepted small message (signed keys, encrypted shares,
consistency signatures, unmask shares) is a row in ``phase_messages``; the masked inputs are
added into one running sum modulo ``R`` in the blob store. The participant sets of the paper are
read back from those rows:

    U1 = who sent KEYS, U2 = who sent SHARES, U3 = the round's contributors (masked inputs),
    U4 = who sent CONSISTENCY, U5 = who sent UNMASK.

A phase accepts messages only while the round is in it and before its deadline, so once the
round has moved on the stored rows are exactly the set that closed the phase. To check a new
message, or to unmask, the pure ``secagg.SecAggServer`` is rebuilt by replaying the rows in the
order they were accepted; it verifies every signature against the certificate the sender
presented in the TLS handshake when it sent its keys.

The coordinator learns the sum over U3 and the sets, never one participant's update: each masked
input is uniformly random on its own, and the coordinator never holds both the self-mask share
and the key share of one participant (the participants refuse to reveal both; docs/secagg.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography import x509

from coordinator.domain.jobs import Job, PhaseMessage
from coordinator.domain.rounds import Phase, Round
from coordinator.errors import InvalidRequest, NotFound, WrongRoundPhase
from coordinator.persistence.blobs import BlobStore
from coordinator.persistence.store import Transaction
from fedsilo.codec import CodecError, PayloadHeader, TensorSpec
from fedsilo.paillier_inputs import RoundInputsInfo
from fedsilo.paillier_versions import RoundTerms
from fedsilo.protection import (
    SecAggParameters,
    decode_share_list,
    round_context,
    unflatten,
)
from fedsilo.strategies import StrategyChoice
from secagg import (
    ConsistencySignature,
    RoundConfig,
    SecAggError,
    SecAggServer,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
    VerifyingKey,
    verifying_key,
)
from secagg import WrongPhase as SecAggWrongPhase

__all__ = ["SMALL_PHASES", "SecAggStep", "SecureRoundCoordinator", "certificate_key"]

SMALL_PHASES = (Phase.KEYS, Phase.SHARES, Phase.CONSISTENCY, Phase.UNMASK)
"""The phases answered with SubmitMessage; INPUTS is answered with SubmitUpdate."""

_MAX_MESSAGE_BYTES = 1 << 20
_UNMASK_WORKERS = max(1, min(os.cpu_count() or 1, 8))
"""Threads that regenerate masks when a round is unmasked (AES releases the GIL)."""


@dataclass(frozen=True)
class SecAggStep:
    """What one participant needs for the current phase of a secure round."""

    parameters: SecAggParameters
    keys: tuple[tuple[bytes, bytes], ...] = ()
    """SHARES: (signed keys, certificate PEM) of every member of U1."""
    shares: tuple[bytes, ...] = ()
    """INPUTS: the encrypted shares addressed to this participant."""
    survivors: tuple[str, ...] = ()
    """CONSISTENCY: U3."""
    unmask_request: bytes = b""
    """UNMASK: the request every member of U4 answers."""
    round_inputs: RoundInputsInfo | None = None
    """CONSISTENCY (paillier): the signed inputs to vet, downloaded with DownloadRoundInputs."""


@dataclass(frozen=True)
class Unmasked:
    """The result of a secure round: the new weights and the sum of the participants' weights."""

    weights: list[npt.NDArray[np.float32]]
    total_weight: int


class SecureRoundCoordinator:
    """Secure-aggregation bookkeeping of the coordinator over its store and blob store."""

    def __init__(
        self,
        blobs: BlobStore,
        key_fingerprint: Callable[[Transaction, Job], bytes] | None = None,
    ) -> None:
        self._blobs = blobs
        # Under paillier: the fingerprint of the job key a round's inputs are encrypted under
        # (``fedsilo.paillier_versions.round_key_fingerprint``), bound into its context.
        self._key_fingerprint = key_fingerprint

    # -- round parameters -----------------------------------------------------------------------

    @staticmethod
    def vector_length(job: Job) -> int:
        """Every weight of the model plus the weight word (``QuantizationSpec.encoded_length``)."""
        return sum(math.prod(spec.shape) for spec in job.weight_specs) + 1

    def parameters(self, round_: Round, job: Job) -> SecAggParameters:
        settings = job.spec.secagg
        return SecAggParameters(
            threshold=settings.threshold_for(len(round_.cohort)),
            modulus_bits=settings.modulus_bits,
            vector_length=self.vector_length(job),
            cohort=tuple(sorted(round_.cohort)),
            clip=settings.clip,
            levels_bits=settings.levels_bits,
            max_participants=settings.max_participants,
            max_weight=settings.max_weight,
        )

    def job_parameters(self, job: Job) -> SecAggParameters:
        """The job-level settings (no round: threshold 0, no cohort), e.g. for the ceremony."""
        settings = job.spec.secagg
        return SecAggParameters(
            threshold=0,
            modulus_bits=settings.modulus_bits,
            vector_length=self.vector_length(job),
            cohort=(),
            clip=settings.clip,
            levels_bits=settings.levels_bits,
            max_participants=settings.max_participants,
            max_weight=settings.max_weight,
        )

    def config(self, tx: Transaction, round_: Round, job: Job) -> RoundConfig:
        p = self.parameters(round_, job)
        return RoundConfig(
            job.job_id,
            round_.round_id,
            p.cohort,
            p.threshold,
            p.vector_length,
            p.modulus_bits,
            context=self.context(tx, round_, job, p),
        )

    def context(
        self, tx: Transaction, round_: Round, job: Job, parameters: SecAggParameters
    ) -> bytes:
        """The round context every organization signs (``fedsilo.protection.round_context``).

        The base model is bound by the digest of the exact bytes served for the round's base
        version (blobs are named by their SHA-256): under paillier, its ciphertexts. A paillier
        round binds the job key of its generation too; a secagg round binds no key (an empty
        field, the encoding from before paillier rounds bound one).
        """
        # Blobs are named by the SHA-256 of their bytes, which are what is served: the model,
        # or under paillier the version's ciphertexts (version 0 is plain).
        model = tx.get_model_version(job.job_id, round_.base_version)
        if model is None:
            raise NotFound(f"model version {round_.base_version} of job {job.job_id} is gone")
        base = bytes.fromhex(model.blob_ref)
        terms = self.terms(round_, job)
        fingerprint = b"" if self._key_fingerprint is None else self._key_fingerprint(tx, job)
        return round_context(
            protection=job.spec.protection,
            job_id=job.job_id,
            round_number=terms.round_number,
            task_name=terms.task_name,
            algorithm=terms.algorithm,
            base_version=round_.base_version,
            base_model_sha256=base,
            training=terms.training,
            parameters=parameters,
            min_participants=terms.min_participants,
            paillier_key_fingerprint=fingerprint,
            dp=terms.dp,
        )

    @staticmethod
    def terms(round_: Round, job: Job) -> RoundTerms:
        """What the round context binds of the job and the round, besides the base model, the
        quantization settings and the key: written into a paillier version's record."""
        spec = job.spec
        return RoundTerms(
            round_number=round_.number,
            task_name=spec.task_name,
            algorithm=StrategyChoice(spec.algorithm, spec.strategy).canonical(),
            training=spec.training,
            min_participants=spec.min_participants,
            dp=spec.dp,
        )

    def input_spec(self, job: Job) -> TensorSpec:
        """The one tensor a masked input is: ``vector_length`` words of ``uint<k>``."""
        return TensorSpec(f"uint{job.spec.secagg.modulus_bits}", (self.vector_length(job),))

    # -- participant sets -----------------------------------------------------------------------

    @staticmethod
    def senders(tx: Transaction, round_: Round, phase: Phase) -> tuple[str, ...]:
        """Who had a message of ``phase`` accepted (U1, U2, U4, U5), in acceptance order."""
        if phase is Phase.INPUTS:
            return round_.contributors
        return tuple(m.org_id for m in tx.list_phase_messages(round_.round_id, phase.value))

    def expected(self, tx: Transaction, round_: Round) -> tuple[str, ...]:
        """Who may still answer the round's current phase: the survivors of the phase before."""
        before = {
            Phase.KEYS: None,
            Phase.SHARES: Phase.KEYS,
            Phase.INPUTS: Phase.SHARES,
            Phase.CONSISTENCY: Phase.INPUTS,
            Phase.UNMASK: Phase.CONSISTENCY,
        }
        if round_.phase not in before:
            return ()
        previous = before[round_.phase]
        if previous is None:
            return round_.cohort
        return self.senders(tx, round_, previous)

    # -- what a participant is asked ------------------------------------------------------------

    def step_for(self, tx: Transaction, round_: Round, job: Job, org_id: str) -> SecAggStep | None:
        """The step ``org_id`` has to answer now, or None if it has nothing to do."""
        if org_id not in self.expected(tx, round_):
            return None
        if org_id in self.senders(tx, round_, round_.phase):
            return None
        parameters = self.parameters(round_, job)
        if round_.phase is Phase.KEYS:
            return SecAggStep(parameters)
        if round_.phase is Phase.SHARES:
            keys = tx.list_phase_messages(round_.round_id, Phase.KEYS.value)
            return SecAggStep(parameters, keys=tuple((m.body, m.certificate_pem) for m in keys))
        if round_.phase is Phase.INPUTS:
            routed = [
                share.to_bytes()
                for message in tx.list_phase_messages(round_.round_id, Phase.SHARES.value)
                if message.org_id != org_id
                for share in decode_share_list(message.body)
                if share.receiver == org_id
            ]
            return SecAggStep(parameters, shares=tuple(routed))
        if round_.phase is Phase.CONSISTENCY:
            return SecAggStep(parameters, survivors=tuple(sorted(round_.contributors)))
        return SecAggStep(parameters, unmask_request=self.unmask_request(tx, round_).to_bytes())

    def unmask_request(self, tx: Transaction, round_: Round) -> UnmaskRequest:
        survivors = tuple(sorted(round_.contributors))
        dropped = tuple(
            sorted(set(self.senders(tx, round_, Phase.SHARES)) - set(round_.contributors))
        )
        signatures = tuple(
            ConsistencySignature.from_bytes(m.body)
            for m in sorted(
                tx.list_phase_messages(round_.round_id, Phase.CONSISTENCY.value),
                key=lambda m: m.org_id,
            )
        )
        return UnmaskRequest(survivors, dropped, signatures)

    # -- receiving ------------------------------------------------------------------------------

    def check_message(
        self,
        tx: Transaction,
        round_: Round,
        job: Job,
        org_id: str,
        phase: Phase,
        body: bytes,
        certificate_pem: bytes,
    ) -> PhaseMessage:
        """Validate a small message against the replayed round; return the row to store."""
        if phase not in SMALL_PHASES:
            raise InvalidRequest(f"phase {phase.value} is not answered with a message")
        if len(body) > _MAX_MESSAGE_BYTES:
            raise InvalidRequest(f"a phase message is limited to {_MAX_MESSAGE_BYTES} bytes")
        if org_id not in self.expected(tx, round_):
            raise WrongRoundPhase(
                f"this organization does not take part in the {phase.value} phase"
            )
        newcomer = (org_id, certificate_pem) if phase is Phase.KEYS else None
        try:
            server = self._replay(tx, round_, job, newcomer=newcomer)
            if phase is Phase.KEYS:
                server.receive_keys(org_id, SignedKeys.from_bytes(body))
            elif phase is Phase.SHARES:
                server.receive_shares(org_id, decode_share_list(body))
            elif phase is Phase.CONSISTENCY:
                server.receive_consistency(org_id, ConsistencySignature.from_bytes(body))
            else:
                server.receive_unmask(org_id, UnmaskResponse.from_bytes(body))
        except SecAggWrongPhase as exc:
            raise WrongRoundPhase(str(exc)) from None
        except SecAggError as exc:
            raise InvalidRequest(f"the {phase.value} message was refused: {exc}") from None
        return PhaseMessage(
            round_.round_id,
            org_id,
            phase.value,
            body,
            certificate_pem if phase is Phase.KEYS else b"",
        )

    def check_masked_input(
        self, tx: Transaction, round_: Round, job: Job, org_id: str, header: PayloadHeader
    ) -> None:
        """A masked input comes from a member of U2 and is one vector of the round's words."""
        self.require_shares_sent(tx, round_, org_id)
        expected = self.input_spec(job)
        if header.tensors != (expected,):
            got = ", ".join(f"{s.dtype}{list(s.shape)}" for s in header.tensors) or "nothing"
            raise InvalidRequest(
                f"a masked input is one tensor {expected.dtype}{list(expected.shape)}, got {got}"
            )

    def require_shares_sent(self, tx: Transaction, round_: Round, org_id: str) -> None:
        """Only a member of U2 may send an input: the others' masks cannot be removed."""
        if org_id not in self.senders(tx, round_, Phase.SHARES):
            raise WrongRoundPhase("this organization sent no shares in this round")

    # -- the running sum of masked inputs -------------------------------------------------------

    def add_input(
        self, round_: Round, job: Job, vector: npt.NDArray[Any]
    ) -> tuple[str, PayloadHeader]:
        """Add one masked input to the round's sum (mod R); store it, return (ref, header)."""
        total = self.input_sum(round_, job)
        np.add(total, vector, out=total)  # unsigned wrap-around: addition modulo R = 2^k
        sum_payload = _little_endian(total).tobytes()
        # The blob is named by its SHA-256, which is the header's: hashed once, by the store.
        ref = self._blobs.put(sum_payload)
        header = PayloadHeader((self.input_spec(job),), len(sum_payload), bytes.fromhex(ref))
        return ref, header

    def input_sum(self, round_: Round, job: Job) -> npt.NDArray[Any]:
        spec = self.input_spec(job)
        if round_.accumulator_ref is None:
            return np.zeros(spec.shape, dtype=spec.dtype)
        # The store checks the bytes against their name (their SHA-256): no second hash here.
        payload = self._blobs.get(round_.accumulator_ref)
        if len(payload) != spec.nbytes:
            raise CodecError(f"the round's sum has {len(payload)} bytes, not {spec.nbytes}")
        stored = np.frombuffer(payload, dtype=np.dtype(spec.dtype).newbyteorder("<"))
        return stored.astype(spec.dtype, copy=True)

    def mask_correction(self, tx: Transaction, round_: Round, job: Job) -> npt.NDArray[Any]:
        """``-(every mask) mod R`` from the UNMASK answers: the unmasking of a zero sum.

        It reveals nothing on its own: it is a sum of uniformly random masks.
        """
        zeros = np.zeros(self.vector_length(job), dtype=self.config(tx, round_, job).dtype)
        return self._replay(tx, round_, job, total=zeros).finish()

    # -- unmasking ------------------------------------------------------------------------------

    def unmask(
        self, tx: Transaction, round_: Round, job: Job, base: list[npt.NDArray[Any]]
    ) -> Unmasked:
        """Remove every mask from the stored sum; the new weights are base + the mean delta.

        Raises secagg's SecAggError (inconsistent shares, too few answers) for the caller to
        abort the round with.
        """
        server = self._replay(tx, round_, job, total=self.input_sum(round_, job))
        total = server.finish()
        quantization = self.parameters(round_, job).quantization()
        mean = quantization.dequantize(total)
        # An aggregate no honest inputs can add up to is never committed (InvalidInput aborts).
        quantization.check_in_range(mean, len(round_.contributors))
        delta = unflatten(mean.mean, job.weight_specs, dtype="float64")
        # Each base tensor is widened to float64 inside the addition: one pass, no copy of it.
        weights = [
            np.add(b, d, dtype=np.float64).astype(np.float32)
            for b, d in zip(base, delta, strict=True)
        ]
        return Unmasked(weights, mean.total_weight)

    def _replay(
        self,
        tx: Transaction,
        round_: Round,
        job: Job,
        *,
        newcomer: tuple[str, bytes] | None = None,
        total: npt.NDArray[Any] | None = None,
    ) -> SecAggServer:
        """The pure server with every stored message of the round replayed, up to its phase."""
        messages = tx.list_phase_messages(round_.round_id)
        by_phase: dict[str, list[PhaseMessage]] = {}
        for message in messages:
            by_phase.setdefault(message.phase, []).append(message)
        keys = by_phase.get(Phase.KEYS.value, [])
        certificates = {m.org_id: m.certificate_pem for m in keys}
        if newcomer is not None:
            certificates.setdefault(*newcomer)
        server = SecAggServer(
            self.config(tx, round_, job),
            verifying_keys={org: certificate_key(pem) for org, pem in certificates.items()},
            workers=_UNMASK_WORKERS,
        )
        for message in keys:
            server.receive_keys(message.org_id, SignedKeys.from_bytes(message.body))
        if round_.phase is Phase.KEYS:
            return server
        server.close_keys()
        for message in by_phase.get(Phase.SHARES.value, []):
            server.receive_shares(message.org_id, decode_share_list(message.body))
        if round_.phase is Phase.SHARES:
            return server
        server.close_shares()
        server.restore_inputs(round_.contributors, total)
        if round_.phase is Phase.INPUTS:
            return server
        server.close_inputs()
        for message in by_phase.get(Phase.CONSISTENCY.value, []):
            server.receive_consistency(
                message.org_id, ConsistencySignature.from_bytes(message.body)
            )
        if round_.phase is Phase.CONSISTENCY:
            return server
        server.close_consistency()
        for message in by_phase.get(Phase.UNMASK.value, []):
            server.receive_unmask(message.org_id, UnmaskResponse.from_bytes(message.body))
        return server


def _little_endian(vector: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The vector's words as they are stored and sent: little-endian (``fedsilo.codec``)."""
    return np.ascontiguousarray(vector, dtype=vector.dtype.newbyteorder("<"))


def certificate_key(pem: bytes) -> VerifyingKey:
    """The organization key in a certificate the TLS handshake already verified."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise InvalidRequest("the sender's certificate could not be read") from None
    try:
        return verifying_key(certificate.public_key())
    except SecAggError as exc:
        raise InvalidRequest(str(exc)) from None
