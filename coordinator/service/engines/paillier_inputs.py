"""A paillier round's signed inputs at the coordinator: kept one by one, shown for vetting,
and a sender of a malformed input excluded from U3 on a key holder's signed report.

The coordinator cannot decrypt, so it cannot tell a malformed input; the key holders can
(``fedsilo.paillier_inputs``). It keeps every contributor's signed input beside the running
products, has each CONSISTENCY step announce the other contributors' inputs (downloaded with
DownloadRoundInputs, of any size), and when a member answers
with an ``ExclusionReport`` it drops the named senders from U3 (they become dropouts: the
unmask request asks for their masking keys, so their pairwise masks are removed), recomputes
the products without them, forgets the consistency signatures given for the old set, keeps each
excluded input as evidence (a blob, named in an audit event and an ERROR line) and shows it to
every member, who checks it before signing. The report's signature must verify against the new
set, so a member can only exclude what it signed without.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from coordinator.domain.jobs import Job
from coordinator.domain.rounds import Phase, Round
from coordinator.errors import InvalidRequest
from coordinator.persistence.blobs import BlobStore
from coordinator.persistence.store import Transaction
from coordinator.service.engines.secure_rounds import SecureRoundCoordinator, certificate_key
from fedsilo.logs import context
from fedsilo.paillier_inputs import ExclusionReport, RoundInputs, SignedInput, verify_input
from secagg import InvalidSignature, SecAggError, decode_fields, encode_fields
from secagg.paillier import PaillierCiphertexts, PaillierPublicKey, add_ciphertexts

__all__ = ["RunningInputs", "exclude_reported", "inputs_for", "signed_input"]

log = logging.getLogger("coordinator")

_LABEL = b"fedsilo/paillier/v1/running-inputs"


@dataclass(frozen=True)
class RunningInputs:
    """A paillier round's running products and the signed inputs they are made of."""

    summed: bytes
    """``PaillierCiphertexts`` bytes: the product of the current contributors' ciphertexts."""
    tag: bytes
    """The product of their tag ciphertexts, ``2 * bits(n) / 8`` bytes big-endian."""
    inputs: tuple[bytes, ...] = ()
    """``SignedInput`` bytes of every current contributor, in acceptance order."""
    excluded: tuple[bytes, ...] = ()
    """``SignedInput`` bytes of the senders excluded as malformed: the evidence."""

    def to_bytes(self) -> bytes:
        return encode_fields(
            [
                _LABEL,
                self.summed,
                self.tag,
                encode_fields(self.inputs),
                encode_fields(self.excluded),
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RunningInputs:
        try:
            fields = decode_fields(data)
            if len(fields) != 5 or fields[0] != _LABEL:
                raise InvalidRequest("the round's running sum is not a paillier one")
            return cls(
                fields[1],
                fields[2],
                tuple(decode_fields(fields[3])),
                tuple(decode_fields(fields[4])),
            )
        except SecAggError as exc:
            raise InvalidRequest(f"the round's running sum is unreadable: {exc}") from None


def signed_input(
    tx: Transaction,
    secure: SecureRoundCoordinator,
    round_: Round,
    job: Job,
    org_id: str,
    ciphertexts: bytes,
    tag: bytes,
    signature: bytes,
) -> SignedInput:
    """The input as its sender signed it, checked against the certificate it sent its keys with:
    an input nobody can be held to is refused at INPUTS."""
    item = SignedInput(org_id, ciphertexts, tag, signature)
    keys = tx.list_phase_messages(round_.round_id, Phase.KEYS.value)
    pem = next((m.certificate_pem for m in keys if m.org_id == org_id), None)
    if pem is None:
        raise InvalidRequest("this organization sent no keys in this round")
    try:
        verify_input(certificate_key(pem), secure.config(tx, round_, job), item)
    except InvalidSignature:
        raise InvalidRequest(
            "the encrypted input's signature does not verify for this round and organization"
        ) from None
    except SecAggError as exc:
        raise InvalidRequest(f"the encrypted input's signature was refused: {exc}") from None
    return item


def inputs_for(running: RunningInputs, org_id: str) -> RoundInputs:
    """What ``org_id`` vets at CONSISTENCY: the other contributors' signed inputs and the
    evidence against the excluded, whatever their size (downloaded in chunks)."""
    others = tuple(raw for raw in running.inputs if SignedInput.from_bytes(raw).sender != org_id)
    return RoundInputs(others, running.excluded)


def exclude_reported(
    tx: Transaction,
    blobs: BlobStore,
    public_key: PaillierPublicKey,
    round_: Round,
    job: Job,
    reporter: str,
    report: ExclusionReport,
    now: float,
) -> Round:
    """Drop the senders ``report`` names from U3 (see the module docstring); the round as it is
    now. Senders excluded before are accepted again (every honest member reports the same)."""
    if round_.accumulator_ref is None:
        raise InvalidRequest("the round has no inputs to exclude")
    if reporter in report.excluded:
        raise InvalidRequest("an organization cannot exclude its own input")
    running = RunningInputs.from_bytes(blobs.get(round_.accumulator_ref))
    current = {SignedInput.from_bytes(raw).sender: raw for raw in running.inputs}
    before = {SignedInput.from_bytes(raw).sender for raw in running.excluded}
    unknown = sorted(set(report.excluded) - set(current) - before)
    if unknown:
        raise InvalidRequest(f"the report excludes {unknown}, who sent no input in this round")
    new = [org for org in report.excluded if org in current]
    if not new:
        return round_
    kept = [raw for org, raw in current.items() if org not in new]
    if not kept:
        raise InvalidRequest("the report excludes every other contributor")
    items = [SignedInput.from_bytes(raw) for raw in kept]
    try:
        summed = add_ciphertexts(
            public_key,
            [PaillierCiphertexts.from_bytes(item.ciphertexts, public_key) for item in items],
        )
    except SecAggError as exc:
        raise InvalidRequest(f"the remaining inputs do not add up: {exc}") from None
    tag = 1
    for item in items:
        tag = tag * int.from_bytes(item.tag, "big") % public_key.n_squared
    evidence = tuple(current[org] for org in new)
    updated_running = RunningInputs(
        summed.to_bytes(),
        tag.to_bytes(public_key.ciphertext_bytes, "big"),
        tuple(kept),
        running.excluded + evidence,
    )
    updated = dataclasses.replace(
        round_,
        contributors=tuple(org for org in round_.contributors if org not in new),
        accumulator_ref=blobs.put(updated_running.to_bytes()),
        row_version=round_.row_version + 1,
    )
    tx.update_round(updated, expected_row_version=round_.row_version)
    tx.supersede_blob(round_.accumulator_ref)
    # Signatures on the old set are void: whoever gave one is asked again with the new set.
    tx.delete_phase_messages(round_.round_id, Phase.CONSISTENCY.value)
    for raw in evidence:
        item = SignedInput.from_bytes(raw)
        # Kept after the round for the operators: the blob is the input as its sender signed it.
        ref = blobs.put(raw)
        tx.add_audit(
            now,
            reporter,
            "round.malformed_input",
            "excluded",
            f"job={job.job_id} round={round_.round_id} org={item.sender} "
            f"input_sha256={item.sha256.hex()} evidence_blob={ref}",
        )
        log.error(
            "organization %s sent a malformed encrypted input (reported by %s): excluded from "
            "the survivor set; its signed input is kept as blob %s",
            item.sender,
            reporter,
            ref,
            **context(
                job=job.job_id, round=str(round_.number), phase="consistency", org=item.sender
            ),
        )
    return updated
