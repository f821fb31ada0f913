"""HKDF-SHA256: RFC 5869 test case 1 and argument checks."""

from __future__ import annotations

import pytest

from secagg.errors import InvalidInput
from secagg.primitives.kdf import derive_key

# RFC 5869, Appendix A.1 (Test Case 1).
IKM = bytes.fromhex("0b" * 22)
SALT = bytes.fromhex("000102030405060708090a0b0c")
INFO = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
OKM = bytes.fromhex(
    "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
)


def test_rfc5869_test_case_1() -> None:
    assert derive_key(IKM, salt=SALT, info=INFO, length=42) == OKM


def test_default_length_is_32_bytes_and_a_prefix_of_longer_output() -> None:
    assert derive_key(IKM, salt=SALT, info=INFO) == OKM[:32]


def test_salt_and_info_change_the_key() -> None:
    base = derive_key(IKM, salt=SALT, info=INFO)
    assert derive_key(IKM, salt=SALT + b"x", info=INFO) != base
    assert derive_key(IKM, salt=SALT, info=INFO + b"x") != base


@pytest.mark.parametrize("length", [0, 255 * 32 + 1])
def test_rejects_impossible_lengths(length: int) -> None:
    with pytest.raises(InvalidInput, match="output length"):
        derive_key(IKM, salt=SALT, info=INFO, length=length)


def test_rejects_non_bytes() -> None:
    with pytest.raises(InvalidInput, match="must be bytes"):
        derive_key(IKM, salt="salt", info=INFO)  # type: ignore[arg-type]
