"""Protocol messages as frozen dataclasses with canonical, strictly decoded byte encodings."""

from __future__ import annotations

from dataclasses import dataclass, field

from secagg.errors import InvalidInput, InvalidShare
from secagg.primitives.encoding import decode_fields, decode_text, encode_fields, encode_text
from secagg.primitives.prg import MaskVector
from secagg.primitives.shamir import Share

__all__ = [
    "ConsistencySignature",
    "EncryptedShare",
    "MaskedInput",
    "RevealedShare",
    "SignedKeys",
    "UnmaskRequest",
    "UnmaskResponse",
]

_SIGNED_KEYS = b"secagg/v1/signed-keys"
_ENCRYPTED_SHARE = b"secagg/v1/encrypted-share"
_CONSISTENCY_SIGNATURE = b"secagg/v1/consistency-signature"
_UNMASK_REQUEST = b"secagg/v1/unmask-request"
_UNMASK_RESPONSE = b"secagg/v1/unmask-response"


def _open(data: bytes, tag: bytes, count: int) -> list[bytes]:
    fields = decode_fields(data)
    if len(fields) != count + 1 or fields[0] != tag:
        raise InvalidInput(f"not an encoded {tag.decode()} message")
    return fields[1:]


def _participant(data: bytes) -> str:
    text = decode_text(data)
    if not text:
        raise InvalidInput("empty participant id")
    return text


def _names(data: bytes) -> tuple[str, ...]:
    return tuple(_participant(item) for item in decode_fields(data))


def _encode_names(names: tuple[str, ...]) -> bytes:
    return encode_fields(encode_text(name) for name in names)


@dataclass(frozen=True)
class SignedKeys:
    """Round 0 (AdvertiseKeys): ``c_pk``, ``s_pk`` and the org-key signature over them."""

    participant: str
    encryption_key: bytes
    masking_key: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return encode_fields(
            [
                _SIGNED_KEYS,
                encode_text(self.participant),
                self.encryption_key,
                self.masking_key,
                self.signature,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedKeys:
        participant, encryption_key, masking_key, signature = _open(data, _SIGNED_KEYS, 4)
        return cls(_participant(participant), encryption_key, masking_key, signature)


@dataclass(frozen=True)
class EncryptedShare:
    """Round 1 (ShareKeys): ``sender``'s shares of ``b`` and ``s_sk`` encrypted for ``receiver``."""

    sender: str
    receiver: str
    ciphertext: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        return encode_fields(
            [
                _ENCRYPTED_SHARE,
                encode_text(self.sender),
                encode_text(self.receiver),
                self.ciphertext,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedShare:
        sender, receiver, ciphertext = _open(data, _ENCRYPTED_SHARE, 3)
        return cls(_participant(sender), _participant(receiver), ciphertext)


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Round 2 (MaskedInputCollection): ``y_u`` in Z_R. Travels as raw bytes via fedsilo's codec."""

    participant: str
    vector: MaskVector = field(repr=False)


@dataclass(frozen=True)
class ConsistencySignature:
    """Round 3 (ConsistencyCheck): a participant's signature on the survivor set U3."""

    participant: str
    signature: bytes

    def to_bytes(self) -> bytes:
        return encode_fields(
            [_CONSISTENCY_SIGNATURE, encode_text(self.participant), self.signature]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ConsistencySignature:
        participant, signature = _open(data, _CONSISTENCY_SIGNATURE, 2)
        return cls(_participant(participant), signature)


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 4 (Unmasking) request: U3, the dropped set U2 \\ U3, and >= t signatures on U3."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: tuple[ConsistencySignature, ...]

    def to_bytes(self) -> bytes:
        return encode_fields(
            [
                _UNMASK_REQUEST,
                _encode_names(self.survivors),
                _encode_names(self.dropped),
                encode_fields(signature.to_bytes() for signature in self.signatures),
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskRequest:
        survivors, dropped, signatures = _open(data, _UNMASK_REQUEST, 3)
        return cls(
            _names(survivors),
            _names(dropped),
            tuple(ConsistencySignature.from_bytes(item) for item in decode_fields(signatures)),
        )


@dataclass(frozen=True)
class RevealedShare:
    """The responder's share of ``owner``'s secret (``b`` or ``s_sk``)."""

    owner: str
    share: Share

    def to_bytes(self) -> bytes:
        return encode_fields([encode_text(self.owner), self.share.to_bytes()])

    @classmethod
    def from_bytes(cls, data: bytes) -> RevealedShare:
        owner, share = decode_fields(data, 2)
        try:
            return cls(_participant(owner), Share.from_bytes(share))
        except InvalidShare as error:
            raise InvalidInput(f"malformed revealed share: {error}") from None


@dataclass(frozen=True)
class UnmaskResponse:
    """Round 4 answer: shares of ``b`` for every survivor and of ``s_sk`` for every dropped peer,
    and the org-key signature over them and the round (``derivation.unmask_payload``)."""

    participant: str
    self_mask_shares: tuple[RevealedShare, ...] = field(repr=False)
    masking_key_shares: tuple[RevealedShare, ...] = field(repr=False)
    signature: bytes = field(repr=False)

    def shares_bytes(self) -> tuple[bytes, bytes]:
        """The canonical encodings of both share lists: what the signature covers of them."""
        return (
            encode_fields(item.to_bytes() for item in self.self_mask_shares),
            encode_fields(item.to_bytes() for item in self.masking_key_shares),
        )

    def to_bytes(self) -> bytes:
        self_mask, masking_key = self.shares_bytes()
        return encode_fields(
            [
                _UNMASK_RESPONSE,
                encode_text(self.participant),
                self_mask,
                masking_key,
                self.signature,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskResponse:
        participant, self_mask, masking_key, signature = _open(data, _UNMASK_RESPONSE, 4)
        return cls(
            _participant(participant),
            tuple(RevealedShare.from_bytes(item) for item in decode_fields(self_mask)),
            tuple(RevealedShare.from_bytes(item) for item in decode_fields(masking_key)),
            signature,
        )
