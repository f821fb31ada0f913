"""Everything derived from the round keys: share-channel keys, pairwise mask seeds, signed payloads.

Every derivation and every signed or authenticated byte string starts with a domain-separation
label and binds the job id, the round id and the round config fingerprint, so nothing can be
replayed into another job, round, phase or purpose (docs/fault-matrix.md S5).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from secagg.masking.config import RoundConfig
from secagg.masking.messages import SignedKeys, UnmaskResponse
from secagg.primitives.agreement import shared_secrets
from secagg.primitives.encoding import encode_fields, encode_text
from secagg.primitives.kdf import derive_key

__all__ = [
    "advertise_keys_payload",
    "consistency_payload",
    "key_list_digest",
    "mask_is_added",
    "pairwise_mask_seeds",
    "share_associated_data",
    "share_channel_keys",
    "unmask_payload",
]

_SALT = b"fedsilo/secagg/v1"
_ADVERTISE_KEYS = b"fedsilo/secagg/v1/advertise-keys"
_CONSISTENCY = b"fedsilo/secagg/v1/consistency"
_UNMASK = b"fedsilo/secagg/v1/unmask"
_SHARE_CHANNEL = b"fedsilo/secagg/v1/share-channel"
_SHARE_AD = b"fedsilo/secagg/v1/share"
_PAIRWISE_MASK = b"fedsilo/secagg/v1/pairwise-mask"


def _round_fields(label: bytes, config: RoundConfig) -> list[bytes]:
    return [label, encode_text(config.job_id), encode_text(config.round_id), config.fingerprint]


def advertise_keys_payload(
    config: RoundConfig, participant: str, encryption_key: bytes, masking_key: bytes
) -> bytes:
    """What a participant signs in round 0 (AdvertiseKeys): (job, round, id, c_pk, s_pk)."""
    fields = _round_fields(_ADVERTISE_KEYS, config)
    fields += [encode_text(participant), encryption_key, masking_key]
    return encode_fields(fields)


def key_list_digest(keys: Iterable[SignedKeys]) -> bytes:
    """SHA-256 of the round-0 key list U1, independent of its order (sorted canonical bytes)."""
    return hashlib.sha256(encode_fields(sorted(entry.to_bytes() for entry in keys))).digest()


def consistency_payload(
    config: RoundConfig, participant: str, survivors: Iterable[str], keys_digest: bytes
) -> bytes:
    """What a participant signs in round 3 (ConsistencyCheck): the sorted survivor set U3 and
    the digest of the key list U1 it accepted in round 1.

    The key list digest makes the signature specific to one run of the round: a coordinator
    that runs the same round id again (new keys, a subset of the cohort) cannot reuse the
    signatures of the first run to convince participants of the second to unmask.
    """
    members = encode_fields(encode_text(member) for member in sorted(survivors))
    fields = [*_round_fields(_CONSISTENCY, config), encode_text(participant), members, keys_digest]
    return encode_fields(fields)


def unmask_payload(
    config: RoundConfig,
    survivors: Iterable[str],
    dropped: Iterable[str],
    keys_digest: bytes,
    response: UnmaskResponse,
) -> bytes:
    """What a participant signs in round 4 (Unmasking): the survivor set U3 and dropped set
    U2 \\ U3 it answers for (both sorted), the digest of the key list U1, its id and both of its
    share lists, everything of its answer but the signature.

    Whoever uses the shares (the server, or a participant replaying the round from its
    transcript) checks this signature first, so the only shares used are those their sender
    revealed for this very run of the round and this survivor set.
    """
    self_mask, masking_key = response.shares_bytes()
    fields = [
        *_round_fields(_UNMASK, config),
        encode_text(response.participant),
        encode_fields(encode_text(member) for member in sorted(survivors)),
        encode_fields(encode_text(member) for member in sorted(dropped)),
        keys_digest,
        self_mask,
        masking_key,
    ]
    return encode_fields(fields)


def share_channel_keys(
    config: RoundConfig, encryption_private: bytes, peer_encryption_keys: Sequence[bytes]
) -> list[bytes]:
    """AES-256-GCM keys for round-1 shares with each peer: HKDF(X25519(c_sk, c_pk_peer))."""
    info = encode_fields(_round_fields(_SHARE_CHANNEL, config))
    return [
        derive_key(secret, salt=_SALT, info=info)
        for secret in shared_secrets(encryption_private, peer_encryption_keys)
    ]


def share_associated_data(config: RoundConfig, sender: str, receiver: str) -> bytes:
    """Associated data of a share ciphertext: (job, round, sender, receiver) binds its direction."""
    fields = _round_fields(_SHARE_AD, config) + [encode_text(sender), encode_text(receiver)]
    return encode_fields(fields)


def pairwise_mask_seeds(
    config: RoundConfig, masking_private: bytes, peer_masking_keys: Sequence[bytes]
) -> list[bytes]:
    """``s_uv = HKDF(X25519(s_sk_u, s_pk_v), round)`` per peer; symmetric in u, v (round 2)."""
    info = encode_fields(_round_fields(_PAIRWISE_MASK, config))
    return [
        derive_key(secret, salt=_SALT, info=info)
        for secret in shared_secrets(masking_private, peer_masking_keys)
    ]


def mask_is_added(owner: str, peer: str) -> bool:
    """True if ``owner`` adds ``PRG(s_uv)`` for ``peer`` (peer > owner); otherwise it subtracts.

    Bonawitz round 2: ``y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)``; the
    two terms of every pair cancel in the sum.
    """
    return peer > owner
