"""A paillier model version as served: summed ciphertexts, their summed tag, the round's transcript.

Version ``v >= 1`` of a paillier job is what round ``v`` released (docs/paillier.md, "In the
service: models of a paillier job"). Participants decrypt it, so nothing in it may be the
coordinator's choice: the record carries the round's signed messages (every organization's
signed keys with its certificate, the encrypted shares, the survivor set and its consistency
signatures, the unmask answers), from which each participant recomputes the mask correction and
the contributor count itself (:func:`replay_correction`), and the product of the contributors'
input tags, which binds the summed ciphertexts to the job, the round and the base version they
were made for (:func:`tag_binding`, ``secagg.paillier.tags``). The coordinator builds the record
in ``coordinator/service/engines/paillier_engine.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedsilo.protection import decode_share_list
from secagg import (
    ConsistencySignature,
    InvalidInput,
    RoundConfig,
    SecAggServer,
    SignedKeys,
    UnmaskResponse,
    VerifyingKey,
    decode_fields,
    decode_text,
    decode_uint,
    encode_fields,
    encode_text,
    encode_uint,
)

__all__ = [
    "PaillierVersion",
    "RoundTranscript",
    "key_scope",
    "replay_correction",
    "tag_binding",
]

_VERSION_LABEL = b"fedsilo/paillier/v1/version"
_TRANSCRIPT_LABEL = b"fedsilo/paillier/v1/transcript"
_BINDING_LABEL = b"fedsilo/paillier/v1/tag-binding"


def key_scope(job_id: str, generation: int) -> str:
    """The name a job's key ceremony of key generation ``generation`` signs and seals under.

    Generation 0 (the job's first key) is the job id itself; a later generation (a rotation,
    docs/paillier.md, "Key rotation") appends ``/key-generation/<n>``, which no job id contains
    (ids are safe file names): a job key, dealt key or sealed key of one generation never
    verifies or opens in another.
    """
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise InvalidInput("a key generation is a non-negative integer")
    return job_id if generation == 0 else f"{job_id}/key-generation/{generation}"


def tag_binding(
    job_id: str, round_id: str, base_version: int, base_sha256: bytes, generation: int = 0
) -> bytes:
    """What an input tag is bound to: the job, the round, its base version, the SHA-256 of
    that version's bytes as served and the key generation the input is encrypted under. A sum
    re-served under another round, version or generation fails."""
    fields = [
        _BINDING_LABEL,
        encode_text(job_id),
        encode_text(round_id),
        encode_uint(base_version, 8),
        base_sha256,
    ]
    if generation:
        # Generation 0 keeps the encoding from before rotations existed.
        fields.append(encode_uint(generation, 4))
    return encode_fields(fields)


def _names(names: Sequence[str]) -> bytes:
    return encode_fields(encode_text(name) for name in names)


def _read_names(data: bytes) -> tuple[str, ...]:
    return tuple(decode_text(item) for item in decode_fields(data))


def _messages(items: Sequence[tuple[str, bytes]]) -> bytes:
    return encode_fields(encode_fields([encode_text(org), body]) for org, body in items)


def _read_messages(data: bytes) -> tuple[tuple[str, bytes], ...]:
    out = []
    for item in decode_fields(data):
        org, body = decode_fields(item, 2)
        out.append((decode_text(org), body))
    return tuple(out)


@dataclass(frozen=True)
class RoundTranscript:
    """The signed messages of one round, in the order the coordinator accepted them.

    ``keys`` are (org, ``SignedKeys`` bytes, certificate PEM); ``shares``, ``consistency`` and
    ``unmask`` (org, message body); ``contributors`` is U3.
    """

    round_id: str
    cohort: tuple[str, ...]
    threshold: int
    context: bytes
    keys: tuple[tuple[str, bytes, bytes], ...]
    shares: tuple[tuple[str, bytes], ...]
    contributors: tuple[str, ...]
    consistency: tuple[tuple[str, bytes], ...]
    unmask: tuple[tuple[str, bytes], ...]

    def to_bytes(self) -> bytes:
        return encode_fields(
            [
                _TRANSCRIPT_LABEL,
                encode_text(self.round_id),
                _names(self.cohort),
                encode_uint(self.threshold, 4),
                self.context,
                encode_fields(
                    encode_fields([encode_text(org), body, pem]) for org, body, pem in self.keys
                ),
                _messages(self.shares),
                _names(self.contributors),
                _messages(self.consistency),
                _messages(self.unmask),
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundTranscript:
        fields = decode_fields(data)
        if len(fields) != 10 or fields[0] != _TRANSCRIPT_LABEL:
            raise InvalidInput("not a round transcript")
        keys = []
        for item in decode_fields(fields[5]):
            org, body, pem = decode_fields(item, 3)
            keys.append((decode_text(org), body, pem))
        return cls(
            round_id=decode_text(fields[1]),
            cohort=_read_names(fields[2]),
            threshold=decode_uint(fields[3], 4),
            context=fields[4],
            keys=tuple(keys),
            shares=_read_messages(fields[6]),
            contributors=_read_names(fields[7]),
            consistency=_read_messages(fields[8]),
            unmask=_read_messages(fields[9]),
        )


@dataclass(frozen=True)
class PaillierVersion:
    """The first tensor of a served paillier version (the second is the served correction)."""

    ciphertexts: bytes
    """``PaillierCiphertexts`` bytes: the product of the contributors' encrypted inputs."""
    tag: bytes
    """The product of their tag ciphertexts, big-endian in ``2 * bits(n) / 8`` bytes."""
    transcript: RoundTranscript
    generation: int = 0
    """The job's key generation the inputs are encrypted and tagged under (0: the first key;
    each rotation adds one)."""

    def to_bytes(self) -> bytes:
        fields = [_VERSION_LABEL, self.ciphertexts, self.tag, self.transcript.to_bytes()]
        if self.generation:
            # Generation 0 keeps the four fields from before rotations existed.
            fields.append(encode_uint(self.generation, 4))
        return encode_fields(fields)

    @classmethod
    def from_bytes(cls, data: bytes) -> PaillierVersion:
        fields = decode_fields(data)
        if len(fields) not in (4, 5) or fields[0] != _VERSION_LABEL:
            raise InvalidInput("not a paillier model version")
        generation = decode_uint(fields[4], 4) if len(fields) == 5 else 0
        if len(fields) == 5 and generation == 0:
            raise InvalidInput("generation 0 is written without its field")
        return cls(fields[1], fields[2], RoundTranscript.from_bytes(fields[3]), generation)


def replay_correction(
    transcript: RoundTranscript,
    *,
    job_id: str,
    vector_length: int,
    modulus_bits: int,
    verifying_keys: Mapping[str, VerifyingKey],
) -> npt.NDArray[np.unsignedinteger]:
    """The mask correction ``-(every mask) mod R`` of the round, recomputed from its messages.

    Every signature is checked against ``verifying_keys`` (the caller verified the certificates):
    the signed keys against the round's configuration, the survivor set against at least ``t``
    consistency signatures. The unmask answers reconstruct the self-mask seeds of U3 and the
    masking keys of the dropped (each checked against its signed public key), as the coordinator
    did. Raises secagg's SecAggError when anything does not replay.
    """
    config = RoundConfig(
        job_id,
        transcript.round_id,
        transcript.cohort,
        transcript.threshold,
        vector_length,
        modulus_bits,
        context=transcript.context,
    )
    server = SecAggServer(config, verifying_keys=dict(verifying_keys))
    for org, body, _ in transcript.keys:
        server.receive_keys(org, SignedKeys.from_bytes(body))
    server.close_keys()
    for org, body in transcript.shares:
        server.receive_shares(org, decode_share_list(body))
    server.close_shares()
    server.restore_inputs(transcript.contributors, np.zeros(vector_length, dtype=config.dtype))
    server.close_inputs()
    for org, body in transcript.consistency:
        server.receive_consistency(org, ConsistencySignature.from_bytes(body))
    server.close_consistency()
    for org, body in transcript.unmask:
        server.receive_unmask(org, UnmaskResponse.from_bytes(body))
    return server.finish()
