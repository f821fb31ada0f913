"""Signed encrypted inputs of a paillier round, and how a key holder tells a malformed one.

Under ``paillier`` an organization's input is the Paillier encryption of its masked vector and
a tag (docs/paillier.md). One malformed input (a non-zero padding slot, a slot above ``R - 1``,
a wrong tag) would make the round's sum undecodable, or its tag fail, for everyone. So each
sender signs its input with its organization key over the round configuration
(:func:`sign_input`): the coordinator can neither forge nor swap one, and a malformed input with
a valid signature is evidence against its sender. Before signing the survivor set, every key
holder decrypts the other contributors' inputs and checks them (:func:`input_defect`); a sender
of a malformed input is left out of the set it signs, like a dropout, and named in its answer
(:class:`ExclusionReport`). Decrypting one input reveals nothing: it is the encryption of a
vector masked by its sender's self mask and pairwise masks, uniformly random on its own, and
only an input its sender signed for this very round is decrypted (docs/threat-model.md,
"Out-of-range inputs from a malicious organization").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from secagg import (
    InvalidInput,
    RoundConfig,
    SecAggError,
    SigningKey,
    VerifyingKey,
    decode_fields,
    decode_text,
    encode_fields,
    encode_text,
    encode_uint,
    sign,
    verify,
)
from secagg.paillier import (
    PackingLayout,
    PaillierCiphertexts,
    PaillierPrivateKey,
    PaillierWorkers,
    add_ciphertexts,
    check_ciphertexts,
    decrypt_integers,
    tag_matches,
)

__all__ = [
    "DecryptedSum",
    "ExclusionReport",
    "RoundInputs",
    "RoundInputsInfo",
    "SignedInput",
    "input_defect",
    "inputs_defect",
    "input_statement",
    "is_exclusion_report",
    "round_inputs_limit",
    "sign_input",
    "verify_input",
    "vet_sum",
]

_STATEMENT_LABEL = b"fedsilo/paillier/v1/input-statement"
_SIGNED_INPUT_LABEL = b"fedsilo/paillier/v1/signed-input"
_REPORT_LABEL = b"fedsilo/paillier/v1/exclusion-report"
_ROUND_INPUTS_LABEL = b"fedsilo/paillier/v1/round-inputs"

_INPUT_OVERHEAD_BYTES = 4096
"""Bound on what a signed input holds beyond its ciphertexts and tag: labels, length prefixes,
the ciphertexts' header, the sender's id and its signature (a few hundred bytes in practice)."""


def input_statement(config: RoundConfig, sender: str, ciphertexts: bytes, tag: bytes) -> bytes:
    """What a sender signs: the whole round configuration (job, round id, cohort, ``t``, vector
    length, ``k``, round context), its id and the SHA-256 of its ciphertexts and its tag."""
    return encode_fields(
        [
            _STATEMENT_LABEL,
            encode_text(config.job_id),
            encode_text(config.round_id),
            encode_fields(encode_text(member) for member in config.cohort),
            encode_uint(config.threshold, 4),
            encode_uint(config.vector_length, 8),
            encode_uint(config.modulus_bits, 1),
            config.context,
            encode_text(sender),
            hashlib.sha256(ciphertexts).digest(),
            hashlib.sha256(tag).digest(),
        ]
    )


@dataclass(frozen=True)
class SignedInput:
    """One organization's encrypted input (``PaillierCiphertexts`` bytes and its tag ciphertext)
    with its signature over :func:`input_statement`."""

    sender: str
    ciphertexts: bytes
    tag: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return encode_fields(
            [
                _SIGNED_INPUT_LABEL,
                encode_text(self.sender),
                self.ciphertexts,
                self.tag,
                self.signature,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedInput:
        fields = decode_fields(data)
        if len(fields) != 5 or fields[0] != _SIGNED_INPUT_LABEL:
            raise InvalidInput("not a signed encrypted input")
        sender = decode_text(fields[1])
        if not sender:
            raise InvalidInput("a signed encrypted input names no sender")
        return cls(sender, fields[2], fields[3], fields[4])

    @property
    def sha256(self) -> bytes:
        """The digest that names this input in logs and the audit trail."""
        return hashlib.sha256(self.to_bytes()).digest()


def sign_input(
    key: SigningKey, config: RoundConfig, sender: str, ciphertexts: bytes, tag: bytes
) -> SignedInput:
    """The sender's signature on its encrypted input for the round ``config``."""
    statement = input_statement(config, sender, ciphertexts, tag)
    return SignedInput(sender, ciphertexts, tag, sign(key, statement))


def verify_input(key: VerifyingKey, config: RoundConfig, item: SignedInput) -> None:
    """Return if ``item`` was signed by ``key`` for ``config``; else raise InvalidSignature."""
    verify(key, item.signature, input_statement(config, item.sender, item.ciphertexts, item.tag))


@dataclass(frozen=True)
class ExclusionReport:
    """A paillier CONSISTENCY answer that leaves senders of malformed inputs out of U3.

    ``signature`` is the ``ConsistencySignature`` bytes over the survivor set the coordinator
    sent minus ``excluded``; the coordinator adopts that set only after checking the signature
    against it, and shows every other member the excluded senders' signed inputs as evidence.
    An answer that excludes nobody is the plain ``ConsistencySignature``.
    """

    signature: bytes
    excluded: tuple[str, ...]

    def to_bytes(self) -> bytes:
        return encode_fields(
            [
                _REPORT_LABEL,
                self.signature,
                encode_fields(encode_text(org) for org in self.excluded),
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ExclusionReport:
        fields = decode_fields(data)
        if len(fields) != 3 or fields[0] != _REPORT_LABEL:
            raise InvalidInput("not an exclusion report")
        excluded = tuple(decode_text(name) for name in decode_fields(fields[2]))
        if not excluded or len(set(excluded)) != len(excluded) or not all(excluded):
            raise InvalidInput("an exclusion report names distinct organizations, at least one")
        return cls(fields[1], excluded)


@dataclass(frozen=True)
class RoundInputsInfo:
    """How a CONSISTENCY step announces the :class:`RoundInputs` to download: their size and
    SHA-256 (bytes that differ, say because U3 changed since the step, are not vetted)."""

    total_bytes: int
    sha256: bytes


@dataclass(frozen=True)
class RoundInputs:
    """What a member of a paillier round's U3 vets at CONSISTENCY: the other members' signed
    inputs and the evidence against the excluded senders (both ``SignedInput`` bytes).

    Downloaded in chunks (``DownloadRoundInputs``) as one payload: no gRPC message cap limits
    the size of the model whose inputs are vetted.
    """

    inputs: tuple[bytes, ...] = ()
    excluded: tuple[bytes, ...] = ()

    def to_bytes(self) -> bytes:
        return encode_fields(
            [_ROUND_INPUTS_LABEL, encode_fields(self.inputs), encode_fields(self.excluded)]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundInputs:
        fields = decode_fields(data)
        if len(fields) != 3 or fields[0] != _ROUND_INPUTS_LABEL:
            raise InvalidInput("not a round's signed inputs")
        return cls(tuple(decode_fields(fields[1])), tuple(decode_fields(fields[2])))

    def info(self) -> RoundInputsInfo:
        data = self.to_bytes()
        return RoundInputsInfo(len(data), hashlib.sha256(data).digest())


def round_inputs_limit(layout: PackingLayout, value_count: int, cohort_size: int) -> int:
    """The most bytes the :class:`RoundInputs` of a round can take: ``cohort_size - 1`` inputs
    (each member is shown every input but its own, the excluded ones included) of one
    contribution of ``value_count`` values in ``layout``, with their tags."""
    ciphertext_bytes = layout.key_bits // 4
    per_input = (layout.ciphertext_count(value_count) + 1) * ciphertext_bytes
    return 1024 + max(cohort_size - 1, 0) * (per_input + _INPUT_OVERHEAD_BYTES)


def is_exclusion_report(body: bytes) -> bool:
    """Whether a CONSISTENCY answer is an :class:`ExclusionReport` (not a plain signature)."""
    try:
        fields = decode_fields(body)
    except SecAggError:
        return False
    return bool(fields) and fields[0] == _REPORT_LABEL


def input_defect(
    key: PaillierPrivateKey,
    layout: PackingLayout,
    value_count: int,
    binding: bytes,
    item: SignedInput,
    workers: PaillierWorkers | None = None,
) -> str:
    """Why ``item`` is no well-formed input of the round (``""`` if it is one).

    Its ciphertexts must be one contribution of ``value_count`` values in ``layout`` under the
    key, and decrypt to words below ``R`` with zero padding and nothing above the last slot
    (``PackingLayout.unpack`` with one contribution); its tag must decrypt to the tag of those
    plaintexts under ``binding`` (``fedsilo.paillier_versions.tag_binding``). Only the holder of
    the key can tell. The caller checks the sender's signature first: nothing else is decrypted.
    """
    return inputs_defect(key, layout, value_count, binding, [item], workers)


def inputs_defect(
    key: PaillierPrivateKey,
    layout: PackingLayout,
    value_count: int,
    binding: bytes,
    items: Sequence[SignedInput],
    workers: PaillierWorkers | None = None,
) -> str:
    """Why the sum of ``items`` is no sum of well-formed inputs of the round (``""`` if it is).

    One decryption for all of them: every sum of well-formed inputs decodes (each slot at most
    ``len(items) * (R - 1)``, padding zero) and carries the tag of its plaintexts, and a sum
    does so only if every input that could brick the round's sum is well formed (a non-zero
    padding bit, or a tag that does not match, shows in the sum). :func:`input_defect` then
    finds the sender. A slot of one input above ``R - 1`` that the sum still holds is not
    caught: the sum decodes, and modulo ``R`` it is an aggregate a sender could reach by
    choosing its masked words, which any sender may do anyway.
    """
    return vet_sum(key, layout, value_count, binding, items, workers)[0]


@dataclass(frozen=True)
class DecryptedSum:
    """A product of encrypted inputs (ciphertexts and tags) and what it decrypts to.

    ``plaintexts`` and ``tag_plaintext`` are the decryption of exactly ``ciphertexts`` and
    ``tag`` under the key of ``ciphertexts.fingerprint``: a participant that meets the same
    product again (the round's version) may use them instead of decrypting it a second time.
    """

    ciphertexts: PaillierCiphertexts
    tag: int
    plaintexts: tuple[int, ...]
    tag_plaintext: int


def vet_sum(
    key: PaillierPrivateKey,
    layout: PackingLayout,
    value_count: int,
    binding: bytes,
    items: Sequence[SignedInput],
    workers: PaillierWorkers | None = None,
) -> tuple[str, DecryptedSum | None]:
    """:func:`inputs_defect`, and the decrypted product of ``items`` when the sum is a sum of
    well-formed inputs of the round (None otherwise)."""
    public = key.public_key
    parsed: list[PaillierCiphertexts] = []
    tag = 1
    try:
        for item in items:
            ciphertexts = PaillierCiphertexts.from_bytes(item.ciphertexts, public)
            if ciphertexts.layout != layout or ciphertexts.value_count != value_count:
                raise InvalidInput("the ciphertexts do not pack the round's values in the layout")
            if ciphertexts.contributions != 1:
                raise InvalidInput(f"it claims {ciphertexts.contributions} contributions")
            if len(item.tag) != public.ciphertext_bytes:
                raise InvalidInput("the tag is not one ciphertext")
            value = int.from_bytes(item.tag, "big")
            check_ciphertexts([value], public)
            parsed.append(ciphertexts)
            tag = tag * value % public.n_squared
        summed = add_ciphertexts(public, parsed)
    except SecAggError as exc:
        return f"invalid ciphertexts: {exc}", None
    try:
        plaintexts = decrypt_integers(key, summed.ciphertexts, workers=workers)
        (tag_plaintext,) = decrypt_integers(key, [tag])
        layout.unpack(plaintexts, value_count, len(items))
    except SecAggError as exc:
        return f"it does not decode as a sum of masked vectors: {exc}", None
    if not tag_matches(key, binding, plaintexts, tag_plaintext):
        return "the tag is not the tag of the ciphertexts for this round", None
    return "", DecryptedSum(summed, tag, tuple(plaintexts), tag_plaintext)
