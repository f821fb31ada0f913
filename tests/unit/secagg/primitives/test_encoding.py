"""Length-prefixed canonical encodings: round trips, injectivity, strict decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.errors import InvalidInput
from secagg.primitives.encoding import (
    decode_fields,
    decode_text,
    decode_uint,
    encode_fields,
    encode_text,
    encode_uint,
)


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_fields_round_trip(fields: list[bytes]) -> None:
    assert decode_fields(encode_fields(fields)) == fields


@given(st.lists(st.binary(max_size=6), max_size=4), st.lists(st.binary(max_size=6), max_size=4))
def test_distinct_field_lists_encode_differently(a: list[bytes], b: list[bytes]) -> None:
    # The property signatures rely on: ("ab", "c") and ("a", "bc") must not collide.
    assert (encode_fields(a) == encode_fields(b)) == (a == b)


def test_layout_is_four_byte_big_endian_length_then_bytes() -> None:
    assert encode_fields([b"ab", b""]) == b"\x00\x00\x00\x02ab\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x00", "truncated length prefix"),
        (b"\x00\x00\x00\x05abc", "truncated field"),
    ],
)
def test_truncated_input_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_fields(data)


def test_wrong_field_count_and_types_are_refused() -> None:
    with pytest.raises(InvalidInput, match="expected 2 fields, found 1"):
        decode_fields(encode_fields([b"a"]), 2)
    with pytest.raises(InvalidInput, match="must be bytes"):
        decode_fields("text")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="must be bytes"):
        encode_fields(["text"])  # type: ignore[list-item]


def test_text_and_integers() -> None:
    assert decode_text(encode_text("org-ä")) == "org-ä"
    with pytest.raises(InvalidInput, match="UTF-8"):
        decode_text(b"\xff")
    assert encode_uint(258, 2) == b"\x01\x02"
    assert decode_uint(b"\x01\x02", 2) == 258
    with pytest.raises(InvalidInput, match="does not fit"):
        encode_uint(256, 1)
    with pytest.raises(InvalidInput, match="does not fit"):
        encode_uint(-1, 1)
    with pytest.raises(InvalidInput, match="2-byte integer"):
        decode_uint(b"\x01", 2)


def test_oversized_field_is_refused() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return 2**32

    with pytest.raises(InvalidInput, match="too long"):
        encode_fields([Huge(b"")])
