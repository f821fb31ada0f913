"""Canonical byte encodings: length-prefixed fields, so that no two field lists encode alike."""

from __future__ import annotations

from collections.abc import Iterable

from secagg.errors import InvalidInput

__all__ = [
    "LENGTH_PREFIX_BYTES",
    "decode_fields",
    "decode_text",
    "decode_uint",
    "encode_fields",
    "encode_text",
    "encode_uint",
]

LENGTH_PREFIX_BYTES = 4
_MAX_FIELD = 2 ** (8 * LENGTH_PREFIX_BYTES) - 1


def encode_fields(fields: Iterable[bytes]) -> bytes:
    """Concatenate ``len(field)`` as 4-byte big-endian followed by the field, for every field."""
    parts: list[bytes] = []
    for field in fields:
        if not isinstance(field, bytes):
            raise InvalidInput("every encoded field must be bytes")
        if len(field) > _MAX_FIELD:
            raise InvalidInput(f"a field of {len(field)} bytes is too long to encode")
        parts.append(len(field).to_bytes(LENGTH_PREFIX_BYTES, "big"))
        parts.append(field)
    return b"".join(parts)


def decode_fields(data: bytes, count: int | None = None) -> list[bytes]:
    """Invert :func:`encode_fields`; trailing or truncated bytes and a wrong count are errors."""
    if not isinstance(data, bytes):
        raise InvalidInput("encoded data must be bytes")
    fields: list[bytes] = []
    view = memoryview(data)
    position = 0
    while position < len(data):
        if position + LENGTH_PREFIX_BYTES > len(data):
            raise InvalidInput("truncated length prefix")
        length = int.from_bytes(view[position : position + LENGTH_PREFIX_BYTES], "big")
        position += LENGTH_PREFIX_BYTES
        if position + length > len(data):
            raise InvalidInput("truncated field")
        fields.append(bytes(view[position : position + length]))
        position += length
    if count is not None and len(fields) != count:
        raise InvalidInput(f"expected {count} fields, found {len(fields)}")
    return fields


def encode_text(text: str) -> bytes:
    """UTF-8, the one text encoding used in signed and authenticated data."""
    return text.encode("utf-8")


def decode_text(data: bytes) -> str:
    """Invert :func:`encode_text`; invalid UTF-8 is an error."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("a text field is not valid UTF-8") from None


def encode_uint(value: int, size: int) -> bytes:
    """Fixed-width big-endian unsigned integer."""
    if value < 0 or value >= 1 << (8 * size):
        raise InvalidInput(f"integer does not fit in {size} unsigned bytes")
    return value.to_bytes(size, "big")


def decode_uint(data: bytes, size: int) -> int:
    """Invert :func:`encode_uint`; the field must be exactly ``size`` bytes."""
    if len(data) != size:
        raise InvalidInput(f"expected a {size}-byte integer, found {len(data)} bytes")
    return int.from_bytes(data, "big")
