"""The per-job Paillier key ceremony: job keys, the dealt public key, sealed keys.

Requirements: docs/requirements.md#packed-paillier.

1. Every participant makes an X25519 *job key* pair and signs ``(job, participant, public)``
   with its organization key: :class:`JobKey`.
2. The dealer (a deterministic choice of the coordinator, checked by no one: every participant
   ends up holding the same secret anyway) generates the Paillier key, signs its public key:
   :class:`DealtKey`, and seals the private key for every other participant: AES-256-GCM under
   ``HKDF(X25519(dealer job key, receiver job key))`` with ``(job, sender, receiver, key
   fingerprint)`` bound in the derivation and as associated data: :class:`SealedKey`. Any
   participant that holds the key can seal it the same way for an organization that joins later.
3. A receiver verifies the sender's job key and the dealer's signature against their
   certificates, opens its sealed key and checks it belongs to the signed public key.

The coordinator stores and forwards these messages; it never sees a private key. Pure: bytes,
dataclasses and injected randomness only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from secagg.errors import DecryptionFailed, InvalidInput
from secagg.paillier.keys import PaillierPrivateKey, PaillierPublicKey
from secagg.primitives import aead
from secagg.primitives.agreement import (
    KEY_BYTES,
    AgreementKeyPair,
    generate_key_pair,
    shared_secret,
)
from secagg.primitives.encoding import decode_fields, encode_fields, encode_text
from secagg.primitives.kdf import derive_key
from secagg.primitives.randomness import RandomSource
from secagg.primitives.signatures import SigningKey, VerifyingKey, sign, verify

__all__ = [
    "DealtKey",
    "JobKey",
    "SealedKey",
    "make_job_key",
    "open_private_key",
    "seal_private_key",
    "sign_public_key",
]

_LABEL = "fedsilo/paillier/v1"
_JOB_KEY = f"{_LABEL}/job-key".encode()
_DEALT = f"{_LABEL}/dealt-key".encode()
_SEALED = f"{_LABEL}/sealed-key".encode()
_SALT = _LABEL.encode()


def _participant(value: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("a participant id is not UTF-8") from None
    if not text:
        raise InvalidInput("a participant id is empty")
    return text


@dataclass(frozen=True)
class JobKey:
    """A participant's X25519 public job key, signed with its organization key."""

    participant: str
    agreement_key: bytes
    signature: bytes = field(repr=False)

    @staticmethod
    def payload(job_id: str, participant: str, agreement_key: bytes) -> bytes:
        return encode_fields(
            [_JOB_KEY, encode_text(job_id), encode_text(participant), agreement_key]
        )

    def verify(self, job_id: str, key: VerifyingKey) -> None:
        """Raise InvalidSignature unless ``key`` signed this job key for ``job_id``."""
        verify(key, self.signature, self.payload(job_id, self.participant, self.agreement_key))

    def to_bytes(self) -> bytes:
        return encode_fields(
            [_JOB_KEY, encode_text(self.participant), self.agreement_key, self.signature]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> JobKey:
        label, participant, public, signature = decode_fields(data, 4)
        if label != _JOB_KEY or len(public) != KEY_BYTES:
            raise InvalidInput("not an encoded job key")
        return cls(_participant(participant), public, signature)


def make_job_key(
    job_id: str, participant: str, signing_key: SigningKey, random: RandomSource
) -> tuple[AgreementKeyPair, JobKey]:
    """A fresh job key pair and its signed public part."""
    pair = generate_key_pair(random)
    signature = sign(signing_key, JobKey.payload(job_id, participant, pair.public_key))
    return pair, JobKey(participant, pair.public_key, signature)


@dataclass(frozen=True)
class DealtKey:
    """The dealer's Paillier public key, signed with the dealer's organization key."""

    dealer: str
    public_key: bytes
    signature: bytes = field(repr=False)

    @staticmethod
    def payload(job_id: str, dealer: str, public_key: bytes) -> bytes:
        return encode_fields([_DEALT, encode_text(job_id), encode_text(dealer), public_key])

    def verify(self, job_id: str, key: VerifyingKey) -> PaillierPublicKey:
        """Check the dealer's signature; return the decoded public key."""
        verify(key, self.signature, self.payload(job_id, self.dealer, self.public_key))
        return PaillierPublicKey.from_bytes(self.public_key)

    def to_bytes(self) -> bytes:
        return encode_fields([_DEALT, encode_text(self.dealer), self.public_key, self.signature])

    @classmethod
    def from_bytes(cls, data: bytes) -> DealtKey:
        label, dealer, public_key, signature = decode_fields(data, 4)
        if label != _DEALT:
            raise InvalidInput("not an encoded dealt key")
        return cls(_participant(dealer), public_key, signature)


def sign_public_key(
    job_id: str, dealer: str, public_key: PaillierPublicKey, signing_key: SigningKey
) -> DealtKey:
    encoded = public_key.to_bytes()
    return DealtKey(dealer, encoded, sign(signing_key, DealtKey.payload(job_id, dealer, encoded)))


@dataclass(frozen=True)
class SealedKey:
    """A Paillier private key encrypted from ``sender`` to ``receiver``."""

    sender: str
    receiver: str
    ciphertext: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        return encode_fields(
            [_SEALED, encode_text(self.sender), encode_text(self.receiver), self.ciphertext]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedKey:
        label, sender, receiver, ciphertext = decode_fields(data, 4)
        if label != _SEALED:
            raise InvalidInput("not an encoded sealed key")
        return cls(_participant(sender), _participant(receiver), ciphertext)


def _channel(
    job_id: str, sender: str, receiver: str, fingerprint: bytes, secret: bytes
) -> tuple[bytes, bytes]:
    context = encode_fields(
        [_SEALED, encode_text(job_id), encode_text(sender), encode_text(receiver), fingerprint]
    )
    return derive_key(secret, salt=_SALT, info=context), context


def seal_private_key(
    job_id: str,
    private_key: PaillierPrivateKey,
    sender: str,
    sender_job_key: AgreementKeyPair,
    receiver: JobKey,
    random: RandomSource,
) -> SealedKey:
    """Encrypt ``private_key`` for ``receiver`` (whose job key the caller has verified)."""
    if receiver.participant == sender:
        raise InvalidInput("a participant does not seal the key for itself")
    fingerprint = private_key.public_key.fingerprint
    secret = shared_secret(sender_job_key.private_key, receiver.agreement_key)
    key, context = _channel(job_id, sender, receiver.participant, fingerprint, secret)
    ciphertext = aead.encrypt(key, private_key.to_bytes(), context, random)
    return SealedKey(sender, receiver.participant, ciphertext)


def open_private_key(
    job_id: str,
    sealed: SealedKey,
    receiver_job_key: AgreementKeyPair,
    sender: JobKey,
    public_key: PaillierPublicKey,
) -> PaillierPrivateKey:
    """Decrypt a sealed key from ``sender`` (verified job key) for the signed ``public_key``.

    Every failure names the sender, so that operators know whom to ask: a key that does not
    open (``DecryptionFailed.sender``) or does not pass :class:`PaillierPrivateKey`'s checks.
    """
    if sealed.sender != sender.participant:
        raise InvalidInput("the sealed key does not come from the given sender")
    secret = shared_secret(receiver_job_key.private_key, sender.agreement_key)
    key, context = _channel(job_id, sealed.sender, sealed.receiver, public_key.fingerprint, secret)
    try:
        plaintext = aead.decrypt(key, sealed.ciphertext, context)
    except DecryptionFailed:
        raise DecryptionFailed(
            f"the Paillier key sealed by {sealed.sender!r} does not open for this participant",
            sender=sealed.sender,
        ) from None
    try:
        return PaillierPrivateKey.from_bytes(plaintext, expected_fingerprint=public_key.fingerprint)
    except InvalidInput as error:
        raise InvalidInput(
            f"the Paillier key sealed by {sealed.sender!r} is refused: {error}"
        ) from None
