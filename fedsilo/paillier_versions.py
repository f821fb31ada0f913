"""A paillier model version as served: summed ciphertexts, their summed tag, the round's transcript.

Version ``v >= 1`` of a paillier job is what round ``v`` released (docs/paillier.md, "In the
service: models of a paillier job"). Participants decrypt it, so nothing in it may be the
coordinator's choice: the record carries the round's signed messages (every organization's
signed keys with its certificate, the encrypted shares, the survivor set and its consistency
signatures, the unmask answers), from which each participant recomputes the mask correction and
the contributor count itself (:func:`replay_correction`), and the product of the contributors'
input tags, which binds the summed ciphertexts to the job, the round and the base version they
were made for (:func:`tag_binding`, ``secagg.paillier.tags``). The record also carries the
round's terms (:class:`RoundTerms`), from which each participant recomputes the round context
the transcript's signatures cover, with the job key it holds for the record's key generation
(:func:`round_key_fingerprint`). The coordinator builds the record in
``coordinator/service/engines/paillier_engine.py``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedsilo.privacy import DifferentialPrivacy
from fedsilo.protection import Protection, SecAggParameters, decode_share_list, round_context
from fedsilo.tasks import TrainingSettings
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
from secagg.paillier import PaillierPublicKey

__all__ = [
    "PaillierVersion",
    "RoundTerms",
    "RoundTranscript",
    "key_scope",
    "replay_correction",
    "round_key_fingerprint",
    "tag_binding",
]

_VERSION_LABEL = b"fedsilo/paillier/v1/version"
_TRANSCRIPT_LABEL = b"fedsilo/paillier/v1/transcript"
_BINDING_LABEL = b"fedsilo/paillier/v1/tag-binding"
_TERMS_LABEL = b"fedsilo/paillier/v1/round-terms"
_ROUND_KEY_LABEL = b"fedsilo/paillier/v1/round-key"


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


def round_key_fingerprint(job_id: str, generation: int, public_key: PaillierPublicKey) -> bytes:
    """What a paillier round's context names of the job key its inputs are encrypted under.

    SHA-256 over a label, ``key_scope(job_id, generation)`` and the public key's own fingerprint
    (SHA-256 of ``n`` and ``h_s``): the generation and the key, so a round signed under one
    generation's key never verifies as a round of another (docs/paillier.md, "Key rotation").
    """
    scope = key_scope(job_id, generation)
    encoded = encode_fields([_ROUND_KEY_LABEL, encode_text(scope), public_key.fingerprint])
    return hashlib.sha256(encoded).digest()


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


def _f64(value: float) -> bytes:
    return struct.pack(">d", float(value))


def _read_f64(data: bytes) -> float:
    if len(data) != 8:
        raise InvalidInput("a round term is not an 8-byte float")
    value: float = struct.unpack(">d", data)[0]
    return value


def _read_count(data: bytes) -> int:
    if len(data) != 8:
        raise InvalidInput("a round term is not an 8-byte integer")
    return int.from_bytes(data, "big", signed=True)


@dataclass(frozen=True)
class RoundTerms:
    """What a paillier round's context binds beyond its transcript and the model chain.

    The coordinator writes them into the version record; they are its claim, which only counts
    because the transcript's signatures cover the context computed from them. A participant
    computes that context itself (:meth:`context`): with these terms, the base version and the
    digest of its bytes as it holds them, the job's quantization settings, the threshold the
    transcript signs, and the fingerprint of the key it holds for the record's generation.
    """

    round_number: int
    task_name: str
    algorithm: str
    training: TrainingSettings
    min_participants: int
    dp: DifferentialPrivacy | None = None

    def to_bytes(self) -> bytes:
        dp = self.dp or DifferentialPrivacy()
        privacy = (
            b""
            if dp == DifferentialPrivacy()
            else encode_fields(
                [_f64(dp.clip), _f64(dp.noise_multiplier), _f64(dp.delta), _f64(dp.epsilon_budget)]
            )
        )
        training = self.training
        return encode_fields(
            [
                _TERMS_LABEL,
                encode_uint(self.round_number, 8),
                encode_text(self.task_name),
                encode_text(self.algorithm),
                encode_uint(training.local_epochs, 8),
                encode_uint(training.batch_size, 8),
                _f64(training.learning_rate),
                training.seed.to_bytes(8, "big", signed=True),
                encode_uint(self.min_participants, 8),
                privacy,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundTerms:
        fields = decode_fields(data)
        if len(fields) != 10 or fields[0] != _TERMS_LABEL:
            raise InvalidInput("not a round's terms")
        dp = None
        if fields[9]:
            clip, noise, delta, budget = (_read_f64(item) for item in decode_fields(fields[9], 4))
            dp = DifferentialPrivacy(clip, noise, delta, budget)
        training = TrainingSettings(
            local_epochs=decode_uint(fields[4], 8),
            batch_size=decode_uint(fields[5], 8),
            learning_rate=_read_f64(fields[6]),
            seed=_read_count(fields[7]),
        )
        return cls(
            round_number=decode_uint(fields[1], 8),
            task_name=decode_text(fields[2]),
            algorithm=decode_text(fields[3]),
            training=training,
            min_participants=decode_uint(fields[8], 8),
            dp=dp,
        )

    def context(
        self,
        *,
        job_id: str,
        base_version: int,
        base_model_sha256: bytes,
        parameters: SecAggParameters,
        key_fingerprint: bytes,
    ) -> bytes:
        """The round context (``fedsilo.protection.round_context``) of a paillier round with
        these terms, under the job key ``key_fingerprint`` names (:func:`round_key_fingerprint`)."""
        return round_context(
            protection=Protection.PAILLIER,
            job_id=job_id,
            round_number=self.round_number,
            task_name=self.task_name,
            algorithm=self.algorithm,
            base_version=base_version,
            base_model_sha256=base_model_sha256,
            training=self.training,
            parameters=parameters,
            min_participants=self.min_participants,
            paillier_key_fingerprint=key_fingerprint,
            dp=self.dp,
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
    terms: RoundTerms | None = None
    """The round's terms, from which a participant recomputes the context its transcript
    signs; None only in records written before they were (such a version is not verified)."""

    def to_bytes(self) -> bytes:
        fields = [_VERSION_LABEL, self.ciphertexts, self.tag, self.transcript.to_bytes()]
        if self.terms is not None:
            # Six fields: the generation is always written, then the round's terms.
            fields += [encode_uint(self.generation, 4), self.terms.to_bytes()]
        elif self.generation:
            # Generation 0 keeps the four fields from before rotations existed.
            fields.append(encode_uint(self.generation, 4))
        return encode_fields(fields)

    @classmethod
    def from_bytes(cls, data: bytes) -> PaillierVersion:
        fields = decode_fields(data)
        if len(fields) not in (4, 5, 6) or fields[0] != _VERSION_LABEL:
            raise InvalidInput("not a paillier model version")
        generation = decode_uint(fields[4], 4) if len(fields) >= 5 else 0
        if len(fields) == 5 and generation == 0:
            raise InvalidInput("generation 0 is written without its field")
        terms = RoundTerms.from_bytes(fields[5]) if len(fields) == 6 else None
        transcript = RoundTranscript.from_bytes(fields[3])
        return cls(fields[1], fields[2], transcript, generation, terms)


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
    consistency signatures, each unmask answer against its sender's signature over the round and
    U3 before any of its shares is used. The unmask answers reconstruct the self-mask seeds of U3
    and the masking keys of the dropped (each checked against its signed public key), as the
    coordinator did. Raises secagg's SecAggError when anything does not replay.
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
