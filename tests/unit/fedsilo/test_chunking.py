"""Chunked streaming: split under the message cap, assemble with size and hash checks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from fedsilo.chunking import CHUNK_BYTES, MAX_MESSAGE_BYTES, ChunkError, assemble, split


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@pytest.mark.parametrize(
    ("size", "chunk", "expected_sizes"),
    [
        (10, 4, [4, 4, 2]),
        (12, 4, [4, 4, 4]),
        (3, 4, [3]),
        (1, 1, [1]),
        (0, 4, [0]),  # one empty chunk, so an empty payload is still a stream
    ],
)
def test_split_sizes(size: int, chunk: int, expected_sizes: list[int]) -> None:
    payload = bytes(i % 251 for i in range(size))
    chunks = list(split(payload, chunk))
    assert [len(c) for c in chunks] == expected_sizes
    assert all(type(c) is bytes for c in chunks)
    assert b"".join(chunks) == payload


def test_default_chunks_stay_below_the_message_cap() -> None:
    payload = b"\xab" * (2 * CHUNK_BYTES + 5)
    chunks = list(split(payload))
    assert [len(c) for c in chunks] == [CHUNK_BYTES, CHUNK_BYTES, 5]
    assert CHUNK_BYTES < MAX_MESSAGE_BYTES


@pytest.mark.parametrize("chunk", [0, -1])
def test_split_refuses_non_positive_chunk_size(chunk: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        list(split(b"abc", chunk))


@pytest.mark.parametrize("size", [0, 1, 1000, 4096, 4097])
def test_assemble_inverts_split(size: int) -> None:
    payload = bytes(i % 256 for i in range(size))
    assert assemble(split(payload, 1024), size, sha(payload)) == payload


def test_assemble_accepts_empty_chunks_anywhere() -> None:
    assert assemble([b"", b"ab", b"", b"c", b""], 3, sha(b"abc")) == b"abc"


def test_over_long_stream_fails_as_soon_as_it_exceeds_the_announcement() -> None:
    consumed: list[int] = []

    def endless() -> Iterator[bytes]:
        index = 0
        while True:
            consumed.append(index)
            yield b"x" * 10
            index += 1

    with pytest.raises(ChunkError, match="exceeds the announced 25 bytes"):
        assemble(endless(), 25, sha(b"x" * 25))
    assert consumed == [0, 1, 2]  # stopped at the chunk that overflowed, read no further


def test_one_extra_byte_is_refused() -> None:
    with pytest.raises(ChunkError, match="exceeds"):
        assemble([b"abc", b"d"], 3, sha(b"abc"))


@pytest.mark.parametrize("chunks", [[], [b""], [b"ab"]])
def test_short_stream_is_refused(chunks: list[bytes]) -> None:
    with pytest.raises(ChunkError, match="stream ended after"):
        assemble(chunks, 3, sha(b"abc"))


def test_wrong_hash_is_refused() -> None:
    with pytest.raises(ChunkError, match="SHA-256"):
        assemble([b"abd"], 3, sha(b"abc"))
    with pytest.raises(ChunkError, match="SHA-256"):
        assemble([b"abc"], 3, b"\x00" * 32)


def test_reordered_chunks_fail_the_hash() -> None:
    payload = b"0123456789"
    chunks = list(split(payload, 3))
    with pytest.raises(ChunkError, match="SHA-256"):
        assemble([chunks[1], chunks[0], *chunks[2:]], len(payload), sha(payload))


def test_chunk_error_is_a_value_error() -> None:
    assert issubclass(ChunkError, ValueError)
