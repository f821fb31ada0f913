"""Tensor wire codec: raw little-endian bytes with explicit dtype and shape, never pickles.

A payload is the concatenation of each tensor's C-ordered little-endian bytes. Its
``PayloadHeader`` lists the dtype and shape of every tensor, the total byte count and the SHA-256
of the payload, so a receiver can check size and integrity before it decodes anything.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsilo.errors import FedsiloError
from fedsilo.v1 import fedsilo_pb2 as pb

__all__ = [
    "tensors_sha256",
    "CodecError",
    "PayloadHeader",
    "TensorSpec",
    "check_finite",
    "decode_tensors",
    "encode_tensors",
    "header_from_proto",
    "header_to_proto",
    "specs_of",
]

_DTYPES: dict[str, pb.DType.ValueType] = {
    "float32": pb.D_TYPE_FLOAT32,
    "float64": pb.D_TYPE_FLOAT64,
    "int32": pb.D_TYPE_INT32,
    "int64": pb.D_TYPE_INT64,
    "uint32": pb.D_TYPE_UINT32,
    "uint64": pb.D_TYPE_UINT64,
    "uint8": pb.D_TYPE_UINT8,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
MAX_TENSORS = 10_000
MAX_RANK = 8
MAX_ELEMENTS = 1 << 40


class CodecError(FedsiloError, ValueError):
    """A payload or header does not describe valid tensors."""


@dataclass(frozen=True)
class TensorSpec:
    """The dtype name (float32, float64, int32, int64, uint32, uint64 or uint8) and shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class PayloadHeader:
    """What a payload holds: tensor specs, total size and SHA-256 of the bytes."""

    tensors: tuple[TensorSpec, ...]
    total_bytes: int
    sha256: bytes


def specs_of(arrays: Sequence[npt.NDArray[Any]]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(np.dtype(a.dtype).name, tuple(int(d) for d in a.shape)) for a in arrays)


def encode_tensors(arrays: Sequence[npt.NDArray[Any]]) -> tuple[PayloadHeader, bytes]:
    """Serialize arrays to one payload of raw little-endian bytes and its header."""
    parts: list[bytes] = []
    for array in arrays:
        name = np.dtype(array.dtype).name
        if name not in _DTYPES:
            raise CodecError(f"dtype {name} cannot travel on the wire")
        parts.append(np.ascontiguousarray(array, dtype=np.dtype(name).newbyteorder("<")).tobytes())
    payload = b"".join(parts)
    header = PayloadHeader(specs_of(arrays), len(payload), hashlib.sha256(payload).digest())
    return header, payload


def tensors_sha256(arrays: Sequence[npt.NDArray[Any]]) -> bytes:
    """SHA-256 of the arrays' payload: for tensors that came off the wire, of the exact bytes
    that were sent (the encoding is canonical)."""
    return encode_tensors(arrays)[0].sha256


def decode_tensors(header: PayloadHeader, payload: bytes) -> list[npt.NDArray[Any]]:
    """Check size and hash, then view the payload as the tensors the header describes."""
    if len(payload) != header.total_bytes:
        raise CodecError(f"payload has {len(payload)} bytes, header says {header.total_bytes}")
    expected = sum(spec.nbytes for spec in header.tensors)
    if expected != header.total_bytes:
        raise CodecError(f"tensor shapes need {expected} bytes, header says {header.total_bytes}")
    if hashlib.sha256(payload).digest() != header.sha256:
        raise CodecError("payload SHA-256 does not match its header")
    arrays: list[npt.NDArray[Any]] = []
    offset = 0
    for spec in header.tensors:
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        count = math.prod(spec.shape)
        try:
            flat = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
            arrays.append(flat.reshape(spec.shape).astype(np.dtype(spec.dtype), copy=True))
        except ValueError as exc:
            raise CodecError(f"tensor shape {list(spec.shape)} cannot be decoded: {exc}") from None
        offset += spec.nbytes
    return arrays


def check_finite(arrays: Sequence[npt.NDArray[Any]]) -> None:
    """Reject NaN and infinities: one poisoned coordinate would spoil the global model."""
    for index, array in enumerate(arrays):
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise CodecError(f"tensor {index} contains NaN or infinite values")


def header_to_proto(header: PayloadHeader) -> pb.PayloadHeader:
    return pb.PayloadHeader(
        tensors=[
            pb.TensorSpec(dtype=_DTYPES[s.dtype], shape=list(s.shape)) for s in header.tensors
        ],
        total_bytes=header.total_bytes,
        sha256=header.sha256,
    )


def header_from_proto(message: pb.PayloadHeader) -> PayloadHeader:
    """Validate a received header: known dtypes, sane ranks and sizes, a 32-byte hash."""
    if len(message.tensors) > MAX_TENSORS:
        raise CodecError(f"too many tensors ({len(message.tensors)} > {MAX_TENSORS})")
    specs: list[TensorSpec] = []
    for index, spec in enumerate(message.tensors):
        if spec.dtype not in _DTYPE_NAMES:
            raise CodecError(f"tensor {index} has an unknown dtype")
        if len(spec.shape) > MAX_RANK or any(d < 0 for d in spec.shape):
            raise CodecError(f"tensor {index} has an invalid shape {list(spec.shape)}")
        # numpy refuses shapes whose non-zero dimensions multiply past its index range, even
        # for an empty tensor; refuse them here with a clear error instead.
        if math.prod(max(int(d), 1) for d in spec.shape) > MAX_ELEMENTS:
            raise CodecError(f"tensor {index} has too many elements {list(spec.shape)}")
        specs.append(TensorSpec(_DTYPE_NAMES[spec.dtype], tuple(int(d) for d in spec.shape)))
    if len(message.sha256) != hashlib.sha256().digest_size:
        raise CodecError("payload hash must be a 32-byte SHA-256 digest")
    if message.total_bytes < 0:
        raise CodecError("payload size must not be negative")
    return PayloadHeader(tuple(specs), int(message.total_bytes), bytes(message.sha256))
