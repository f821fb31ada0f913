"""The tensor wire codec: raw little-endian bytes, explicit specs, checked size and hash."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from fedsilo import codec
from fedsilo.codec import (
    CodecError,
    PayloadHeader,
    TensorSpec,
    check_finite,
    decode_tensors,
    encode_tensors,
    header_from_proto,
    header_to_proto,
    specs_of,
)
from fedsilo.v1 import fedsilo_pb2 as pb

WIRE_DTYPES = ["float32", "float64", "int32", "int64", "uint32", "uint64", "uint8"]


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> npt.NDArray[Any]:
    rng = np.random.default_rng(seed)
    if dtype.startswith("float"):
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def assert_same(decoded: list[npt.NDArray[Any]], original: list[npt.NDArray[Any]]) -> None:
    assert len(decoded) == len(original)
    for got, want in zip(decoded, original, strict=True):
        assert got.dtype == np.dtype(want.dtype.name)  # native byte order on the way out
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


# -- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_round_trip_every_wire_dtype(dtype: str) -> None:
    arrays = [sample(dtype, (3, 4)), sample(dtype, (5,), seed=1)]
    header, payload = encode_tensors(arrays)
    assert header.tensors == (TensorSpec(dtype, (3, 4)), TensorSpec(dtype, (5,)))
    assert header.total_bytes == len(payload) == 17 * np.dtype(dtype).itemsize
    assert header.sha256 == hashlib.sha256(payload).digest()
    assert_same(decode_tensors(header, payload), arrays)


def test_extreme_values_survive() -> None:
    arrays = [
        np.array([np.iinfo(np.uint64).max, 0], np.uint64),
        np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max], np.int64),
        np.array([np.finfo(np.float32).tiny, -0.0, np.finfo(np.float32).max], np.float32),
    ]
    header, payload = encode_tensors(arrays)
    decoded = decode_tensors(header, payload)
    assert_same(decoded, arrays)
    assert np.signbit(decoded[2][1])  # -0.0 keeps its sign bit


def test_payload_is_little_endian_c_order_bytes() -> None:
    header, payload = encode_tensors(
        [np.array([[1, 2], [3, 4]], np.int32), np.array(1.0, np.float64)]
    )
    assert payload == (
        b"\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04\x00\x00\x00"
        + b"\x00\x00\x00\x00\x00\x00\xf0\x3f"
    )
    assert header.total_bytes == 24


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_big_endian_input_encodes_like_little_endian(dtype: str) -> None:
    native = sample(dtype, (2, 3))
    big = native.astype(np.dtype(dtype).newbyteorder(">"))
    little_header, little_payload = encode_tensors([native])
    big_header, big_payload = encode_tensors([big])
    assert big_payload == little_payload
    assert big_header == little_header
    assert big_header.tensors[0].dtype == dtype
    decoded = decode_tensors(big_header, big_payload)[0]
    assert decoded.dtype.byteorder in ("=", "<", "|")
    np.testing.assert_array_equal(decoded, native)


@pytest.mark.parametrize(
    "arrays",
    [
        [np.array(2.5, np.float32)],
        [np.zeros((0,), np.float32)],
        [np.zeros((2, 0, 3), np.float64), np.array(7, np.int64)],
        [np.ones(3, np.float32), np.zeros((0,), np.int64), np.array(-1, np.int32)],
        [],
    ],
    ids=["0-d", "empty", "empty-3d-then-0-d", "mixed-with-empty-middle", "no-tensors"],
)
def test_round_trip_zero_dimensional_and_empty(arrays: list[npt.NDArray[Any]]) -> None:
    header, payload = encode_tensors(arrays)
    assert header.tensors == specs_of(arrays)
    assert_same(decode_tensors(header, payload), arrays)


def test_non_contiguous_input_is_encoded_in_c_order() -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    views = [base.T, base[:, ::2], np.asfortranarray(base)]
    header, payload = encode_tensors(views)
    decoded = decode_tensors(header, payload)
    for got, want in zip(decoded, views, strict=True):
        np.testing.assert_array_equal(got, want)
    assert payload[: 3 * 4] == np.array([0, 4, 8], "<f4").tobytes()  # base.T row by row


def test_decoded_arrays_are_writable_copies() -> None:
    header, payload = encode_tensors([np.zeros(4, np.float32)])
    decoded = decode_tensors(header, payload)[0]
    decoded[0] = 1.0  # would raise on a read-only view of the payload
    assert decode_tensors(header, payload)[0][0] == 0.0


@pytest.mark.parametrize(
    "array",
    [
        np.zeros(2, np.float16),
        np.zeros(2, np.int8),
        np.zeros(2, np.bool_),
        np.zeros(2, np.complex64),
        np.array([{"a": 1}], dtype=object),
        np.zeros(2, "U3"),
    ],
    ids=lambda a: a.dtype.name,
)
def test_dtypes_that_cannot_travel_are_refused(array: npt.NDArray[Any]) -> None:
    with pytest.raises(CodecError, match="cannot travel"):
        encode_tensors([np.zeros(1, np.float32), array])


# -- decode checks ---------------------------------------------------------------------------------


def test_payload_with_wrong_hash_is_refused() -> None:
    header, payload = encode_tensors([np.arange(4, dtype=np.float32)])
    flipped = payload[:-1] + bytes([payload[-1] ^ 0x01])
    with pytest.raises(CodecError, match="SHA-256"):
        decode_tensors(header, flipped)


@pytest.mark.parametrize("delta", [-1, 1, -16])
def test_payload_of_wrong_size_is_refused(delta: int) -> None:
    header, payload = encode_tensors([np.arange(4, dtype=np.float32)])
    resized = payload[:delta] if delta < 0 else payload + b"\x00" * delta
    with pytest.raises(CodecError, match="bytes"):
        decode_tensors(header, resized)


@pytest.mark.parametrize(
    "specs",
    [
        (TensorSpec("float32", (3,)),),  # 12 bytes for a 16-byte payload
        (TensorSpec("float32", (5,)),),  # 20 bytes
        (TensorSpec("float64", (4,)),),  # 32 bytes
        (TensorSpec("float32", (2,)), TensorSpec("int32", (1,))),
    ],
)
def test_header_whose_shapes_do_not_fill_the_payload_is_refused(
    specs: tuple[TensorSpec, ...],
) -> None:
    header, payload = encode_tensors([np.arange(4, dtype=np.float32)])
    lying = PayloadHeader(specs, header.total_bytes, header.sha256)
    with pytest.raises(CodecError, match="tensor shapes need"):
        decode_tensors(lying, payload)


def test_same_bytes_reinterpreted_by_an_equal_size_layout_decode() -> None:
    # Size and hash cover the bytes, not their meaning: a layout of equal size still decodes, so
    # receivers must compare the specs with what they expect (the coordinator's _check_layout).
    header, payload = encode_tensors([np.arange(4, dtype=np.float32)])
    other = PayloadHeader((TensorSpec("int32", (2, 2)),), header.total_bytes, header.sha256)
    assert decode_tensors(other, payload)[0].shape == (2, 2)


def test_zero_size_shape_with_huge_dimensions_is_a_codec_error() -> None:
    message = pb.PayloadHeader(
        tensors=[pb.TensorSpec(dtype=pb.D_TYPE_FLOAT32, shape=[0, 1 << 62, 1 << 62])],
        total_bytes=0,
        sha256=hashlib.sha256(b"").digest(),
    )
    try:
        header = header_from_proto(message)
    except CodecError:
        return  # refusing the header up front is a fine fix too
    with pytest.raises(CodecError):
        decode_tensors(header, b"")


# -- check_finite ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_finite_values_are_refused(bad: float, dtype: str) -> None:
    poisoned = np.zeros((2, 2), dtype)
    poisoned[1, 0] = bad
    with pytest.raises(CodecError, match="tensor 1 "):
        check_finite([np.zeros(3, np.float32), poisoned])


def test_finite_and_integer_tensors_pass() -> None:
    check_finite(
        [
            np.array([np.finfo(np.float64).max, -1e300], np.float64),
            np.array([np.iinfo(np.int64).max], np.int64),
            np.zeros((0,), np.float32),
            np.array(1.0, np.float32),
        ]
    )


# -- protobuf headers ------------------------------------------------------------------------------


def proto_header(**overrides: Any) -> pb.PayloadHeader:
    fields: dict[str, Any] = {
        "tensors": [pb.TensorSpec(dtype=pb.D_TYPE_FLOAT32, shape=[2, 3])],
        "total_bytes": 24,
        "sha256": b"\x01" * 32,
    }
    fields.update(overrides)
    return pb.PayloadHeader(**fields)


def test_header_proto_round_trip() -> None:
    arrays = [sample(d, (2, 1), seed=i) for i, d in enumerate(WIRE_DTYPES)] + [
        np.array(1.0, np.float32),
        np.zeros((0, 4), np.int32),
    ]
    header, payload = encode_tensors(arrays)
    wire = header_to_proto(header).SerializeToString()
    parsed = header_from_proto(pb.PayloadHeader.FromString(wire))
    assert parsed == header
    assert_same(decode_tensors(parsed, payload), arrays)


def test_header_proto_uses_the_wire_enum() -> None:
    header, _ = encode_tensors([np.zeros(1, np.uint64), np.zeros(1, np.float64)])
    message = header_to_proto(header)
    assert [t.dtype for t in message.tensors] == [pb.D_TYPE_UINT64, pb.D_TYPE_FLOAT64]


@pytest.mark.parametrize("dtype", [pb.D_TYPE_UNSPECIFIED, 99])
def test_unknown_dtype_is_refused(dtype: int) -> None:
    message = proto_header(
        tensors=[
            pb.TensorSpec(dtype=pb.D_TYPE_FLOAT32, shape=[1]),
            pb.TensorSpec(dtype=dtype, shape=[2]),
        ]
    )
    with pytest.raises(CodecError, match="tensor 1 has an unknown dtype"):
        header_from_proto(message)


@pytest.mark.parametrize("shape", [[-1], [2, -3], [1] * (codec.MAX_RANK + 1)])
def test_invalid_shape_is_refused(shape: list[int]) -> None:
    message = proto_header(tensors=[pb.TensorSpec(dtype=pb.D_TYPE_FLOAT32, shape=shape)])
    with pytest.raises(CodecError, match="tensor 0 has an invalid shape"):
        header_from_proto(message)


def test_maximum_rank_is_accepted() -> None:
    shape = [1] * codec.MAX_RANK
    parsed = header_from_proto(
        proto_header(tensors=[pb.TensorSpec(dtype=pb.D_TYPE_INT64, shape=shape)])
    )
    assert parsed.tensors[0].shape == tuple(shape)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_hash_of_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(CodecError, match="32-byte"):
        header_from_proto(proto_header(sha256=b"\x02" * length))


def test_negative_total_bytes_is_refused() -> None:
    with pytest.raises(CodecError, match="negative"):
        header_from_proto(proto_header(total_bytes=-1))


def test_too_many_tensors_are_refused() -> None:
    spec = pb.TensorSpec(dtype=pb.D_TYPE_FLOAT32, shape=[1])
    at_limit = proto_header(tensors=[spec] * codec.MAX_TENSORS, total_bytes=4 * codec.MAX_TENSORS)
    assert len(header_from_proto(at_limit).tensors) == codec.MAX_TENSORS
    over = proto_header(tensors=[spec] * (codec.MAX_TENSORS + 1))
    with pytest.raises(CodecError, match="too many tensors"):
        header_from_proto(over)


def test_codec_error_is_a_value_error() -> None:
    # Callers that only know ValueError (argument parsing, config) still catch codec failures.
    assert issubclass(CodecError, ValueError)
    assert set(codec.__all__) >= {"CodecError", "decode_tensors", "encode_tensors"}
