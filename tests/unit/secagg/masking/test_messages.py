"""Protocol messages: canonical bytes round-trip; malformed or mistyped bytes are refused."""

from __future__ import annotations

from typing import Any

import pytest

from secagg import (
    ConsistencySignature,
    EncryptedShare,
    InvalidInput,
    RevealedShare,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.primitives.encoding import encode_fields
from secagg.primitives.shamir import Share

KEYS = SignedKeys("org-a", b"\x01" * 32, b"\x02" * 32, b"sig")
SHARE = EncryptedShare("org-a", "org-b", b"ciphertext")
SIGNATURE = ConsistencySignature("org-a", b"sig")
REQUEST = UnmaskRequest(("org-a", "org-b"), ("org-c",), (SIGNATURE,))
RESPONSE = UnmaskResponse(
    "org-a",
    (RevealedShare("org-a", Share(1, 5)), RevealedShare("org-b", Share(1, 6))),
    (RevealedShare("org-c", Share(1, 7)),),
    b"sig",
)
MESSAGES = [KEYS, SHARE, SIGNATURE, REQUEST, RESPONSE]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Any) -> None:
    assert type(message).from_bytes(message.to_bytes()) == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_another_type_or_garbage_is_refused(message: Any) -> None:
    other = SHARE if message is not SHARE else KEYS
    with pytest.raises(InvalidInput):
        type(message).from_bytes(other.to_bytes())
    with pytest.raises(InvalidInput):
        type(message).from_bytes(b"\x00\x00\x00\x09garbage")
    with pytest.raises(InvalidInput):
        type(message).from_bytes(message.to_bytes() + b"\x00")


def test_empty_participant_and_bad_shares_are_refused() -> None:
    with pytest.raises(InvalidInput, match="empty participant"):
        SignedKeys.from_bytes(SignedKeys("", b"", b"", b"").to_bytes())
    bad_share = encode_fields([b"org-a", b"\x00" * 3])
    with pytest.raises(InvalidInput, match="malformed revealed share"):
        RevealedShare.from_bytes(bad_share)


def test_secrets_stay_out_of_repr() -> None:
    assert "ciphertext" not in repr(SHARE)
    assert "Share(" not in repr(RESPONSE)
    assert "sig" not in repr(RESPONSE)
