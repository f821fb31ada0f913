"""Paillier rounds: sign this organization's encrypted input, vet the others' before CONSISTENCY.

At INPUTS the participant signs its encrypted input with its organization key over the round
configuration (``fedsilo.paillier_inputs``): the coordinator cannot forge or swap it, and a
malformed one is evidence against its sender. At CONSISTENCY, before it signs the survivor set,
it downloads the signed inputs the step announces (in chunks, whatever the model's size), and
checks every other contributor's: one well-formed masked vector with the right tag. Without
all of them it does not sign. A sender whose signed input is malformed is
left out of the set it signs, like a dropout (so secure aggregation removes its masks), named
in an ERROR line and in the answer. Evidence the coordinator shows for organizations it already
excluded is checked the same way; an exclusion without a validly signed malformed input, or an
input its sender did not sign for this round, makes the participant refuse the round.

The sum it decrypts is that of the whole survivor set, its own input included: the product the
round's version will carry. What it decrypts to is kept (``PaillierJobs.remember_sum``), so the
version is not decrypted a second time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography import x509

from fedsilo.codec import PayloadHeader, decode_tensors, encode_tensors
from fedsilo.paillier_inputs import (
    ExclusionReport,
    RoundInputs,
    SignedInput,
    input_defect,
    round_inputs_limit,
    sign_input,
    verify_input,
    vet_sum,
)
from fedsilo.paillier_versions import tag_binding
from participant.domain.assignments import Assignment, SecAggStepData
from participant.service.answers import StoredAnswer
from participant.service.calls import SecureRoundCalls
from participant.service.paillier_jobs import PaillierJobs
from secagg import (
    InvalidSignature,
    ProtocolViolation,
    RoundConfig,
    SecAggClient,
    SecAggError,
    SigningKey,
    VerifyingKey,
    verifying_key,
)
from secagg.paillier import PackingLayout, PaillierPrivateKey

__all__ = [
    "Vetted",
    "fetch_round_inputs",
    "own_signed_input",
    "sign_encrypted_input",
    "signed_consistency_answer",
    "vet_inputs",
]

log = logging.getLogger("participant")


def sign_encrypted_input(
    header: PayloadHeader,
    payload: bytes,
    key: SigningKey,
    config: RoundConfig,
    sender: str,
) -> tuple[PayloadHeader, bytes]:
    """The encrypted input (ciphertexts, tag) with a third uint8 tensor: the sender's signature
    over the round configuration and both (``fedsilo.paillier_inputs.sign_input``)."""
    data, tag = decode_tensors(header, payload)
    signed = sign_input(key, config, sender, data.tobytes(), tag.tobytes())
    signature = np.frombuffer(signed.signature, dtype=np.uint8)
    return encode_tensors([data, tag, signature])


def own_signed_input(stored: StoredAnswer | None, sender: str) -> SignedInput | None:
    """This participant's own signed input from its stored INPUTS answer (None without one)."""
    if stored is None:
        return None
    try:
        data, tag, signature = decode_tensors(stored.header, stored.payload)
    except ValueError:
        return None
    return SignedInput(sender, data.tobytes(), tag.tobytes(), signature.tobytes())


@dataclass(frozen=True)
class Vetted:
    """The survivor set to sign and the senders this participant found malformed inputs from."""

    survivors: tuple[str, ...]
    excluded: tuple[str, ...]


def vet_inputs(
    paillier: PaillierJobs,
    assignment: Assignment,
    data: SecAggStepData,
    inputs: RoundInputs,
    config: RoundConfig,
    base_sha256: bytes,
    certificates: Mapping[str, bytes],
    me: str,
    ctx: Mapping[str, Any],
    own: SignedInput | None = None,
) -> Vetted:
    """Check the signed inputs of a paillier CONSISTENCY step (see the module docstring).

    ``inputs`` are those the step announced (:func:`fetch_round_inputs`); ``certificates`` are
    the peers' certificates accepted at SHARES; ``own`` is the input this participant sent in
    the round (None if it no longer has it: the others' sum is checked alone and nothing is kept
    for the version). Raises ProtocolViolation when the coordinator deviated: an input not
    signed by its sender for this round, inputs that do not cover the survivor set, or an
    exclusion whose evidence is a well-formed input.
    """
    survivors = tuple(sorted(data.survivors))
    key, layout = _key_and_layout(paillier, assignment, data)
    parameters = data.parameters
    # Inputs are tagged under the generation of the key they are encrypted with, as at INPUTS.
    generation = paillier.generation(assignment.job_id)
    binding = tag_binding(
        assignment.job_id,
        assignment.round_id,
        assignment.model_version,
        base_sha256,
        generation,
    )
    keys = {org: _key_of(pem) for org, pem in certificates.items()}

    def signed(raw: bytes, allowed: set[str], what: str) -> SignedInput:
        try:
            item = SignedInput.from_bytes(raw)
        except SecAggError as exc:
            raise ProtocolViolation(f"a {what} is not a signed encrypted input: {exc}") from None
        if item.sender not in allowed:
            raise ProtocolViolation(f"a {what} of {item.sender!r} is not expected in this step")
        allowed.discard(item.sender)  # one per sender
        verifier = keys.get(item.sender)
        if verifier is None:
            raise ProtocolViolation(f"no certificate of {item.sender!r} was accepted this round")
        try:
            verify_input(verifier, config, item)
        except InvalidSignature:
            raise ProtocolViolation(
                f"the {what} shown for {item.sender!r} was not signed by it for this round"
            ) from None
        return item

    expected = set(survivors) - {me}
    shown = [signed(raw, expected, "contributor's input") for raw in inputs.inputs]
    if expected:
        raise ProtocolViolation(
            f"the step shows no signed encrypted input of {sorted(expected)}, members of the "
            "survivor set"
        )
    outsiders = set(config.cohort) - set(survivors) - {me}
    for raw in inputs.excluded:
        item = signed(raw, outsiders, "excluded organization's input")
        reason = input_defect(
            key, layout, parameters.vector_length, binding, item, paillier.workers
        )
        if not reason:
            raise ProtocolViolation(
                f"the coordinator excluded organization {item.sender} as the sender of a "
                "malformed input, but the input it signed for this round is well formed"
            )
        _log_malformed(item, reason, "the coordinator excluded it; checked here", ctx)
    excluded: list[str] = []
    # One decryption of the survivors' sum in the usual case (this participant's own input
    # included: that is the very sum the round's version carries, checked as every key holder
    # will decrypt it); each input alone only when the sum shows that one of them is malformed.
    reason, decrypted = "", None
    mine = [own] if own is not None and own.sender == me and me in survivors else []
    if shown:
        reason, decrypted = vet_sum(
            key, layout, parameters.vector_length, binding, [*shown, *mine], paillier.workers
        )
    if decrypted is not None and mine:
        # The product of exactly U3's inputs: what the version of this round is made of.
        paillier.remember_sum(assignment.job_id, assignment.round_id, generation, decrypted)
    if reason:
        for item in shown:
            reason = input_defect(
                key, layout, parameters.vector_length, binding, item, paillier.workers
            )
            if reason:
                excluded.append(item.sender)
                _log_malformed(
                    item, reason, "left out of the survivor set this participant signs", ctx
                )
    remaining = tuple(org for org in survivors if org not in excluded)
    return Vetted(remaining, tuple(sorted(excluded)))


def fetch_round_inputs(
    client: SecureRoundCalls,
    paillier: PaillierJobs,
    assignment: Assignment,
    data: SecAggStepData,
) -> RoundInputs | None:
    """Download the signed inputs a paillier CONSISTENCY step announces (of any size, in
    chunks); None if the coordinator has other inputs for this participant now (U3 changed
    since the step: it is asked again). The announced size must fit ``n - 1`` inputs of the
    job's layout (``round_inputs_limit``) before a byte is read, and the bytes must be exactly
    those announced. Raises ProtocolViolation when the step announces none or too many: U3 is
    never signed without every other member's input vetted.
    """
    announced = data.round_inputs
    if announced is None:
        raise ProtocolViolation(
            "the consistency step of a paillier round announces no inputs to vet: the survivor "
            "set is not signed without them"
        )
    key, layout = _key_and_layout(paillier, assignment, data)
    parameters = data.parameters
    limit = round_inputs_limit(layout, parameters.vector_length, len(parameters.cohort))
    if not 0 < announced.total_bytes <= limit:
        raise ProtocolViolation(
            f"the consistency step announces {announced.total_bytes} bytes of inputs to vet, "
            f"where {len(parameters.cohort) - 1} inputs of the job's layout take at most {limit}"
        )
    payload = client.retrying(
        lambda: client.download_round_inputs(assignment.job_id, assignment.round_id, announced)
    )
    if payload is None:
        return None
    try:
        return RoundInputs.from_bytes(payload)
    except SecAggError as exc:
        raise ProtocolViolation(f"the round's inputs to vet do not decode: {exc}") from None


def signed_consistency_answer(client: SecAggClient, vetted: Vetted) -> bytes:
    """The CONSISTENCY answer: the signature on the vetted set, wrapped in an exclusion report
    when this participant left senders of malformed inputs out of it."""
    signature = client.sign_survivors(list(vetted.survivors)).to_bytes()
    if not vetted.excluded:
        return signature
    return ExclusionReport(signature, vetted.excluded).to_bytes()


def _key_and_layout(
    paillier: PaillierJobs, assignment: Assignment, data: SecAggStepData
) -> tuple[PaillierPrivateKey, PackingLayout]:
    """The job's key this participant holds and the round's packing layout under it."""
    key = paillier.private_key(assignment.job_id)
    if key is None:
        raise ProtocolViolation("this participant holds no Paillier key for the job")
    parameters = data.parameters
    return key, PackingLayout(
        parameters.modulus_bits, parameters.max_participants, key.public_key.bits
    )


def _log_malformed(item: SignedInput, reason: str, outcome: str, ctx: Mapping[str, Any]) -> None:
    log.error(
        "organization %s sent a malformed encrypted input in this round (%s; signed input "
        "sha256 %s): %s",
        item.sender,
        reason,
        item.sha256.hex(),
        outcome,
        **ctx,
    )


def _key_of(pem: bytes) -> VerifyingKey:
    """The key of a certificate accepted earlier in the round (checked when it was)."""
    return verifying_key(x509.load_pem_x509_certificate(pem).public_key())
