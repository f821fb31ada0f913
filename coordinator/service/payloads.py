"""Received payloads: the size limit, and tensors decoded and checked with the coordinator's
errors, from bytes or from the upload spool."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.errors import InvalidRequest, StorageUnavailable
from coordinator.persistence.spool import SpooledUpload
from fedsilo.codec import CodecError, PayloadHeader, check_finite, decode_tensors

__all__ = [
    "ReceivedPayload",
    "check_finite_or_invalid",
    "check_payload_size",
    "decode_payload",
    "payload_bytes",
]

ReceivedPayload = bytes | SpooledUpload
"""A payload as received: in memory (small ones, tests) or in its spool file (uploads)."""


def check_payload_size(total_bytes: int, limit: int) -> None:
    if total_bytes > limit:
        raise InvalidRequest(f"payload of {total_bytes} bytes exceeds the {limit}-byte limit")


def decode_payload(
    header: PayloadHeader, payload: ReceivedPayload, limit: int
) -> list[npt.NDArray[Any]]:
    """The tensors of a payload within the size limit; InvalidRequest for anything malformed."""
    check_payload_size(header.total_bytes, limit)
    try:
        if isinstance(payload, SpooledUpload):
            return _decode_spooled(header, payload)
        return decode_tensors(header, payload)
    except CodecError as exc:
        raise InvalidRequest(str(exc)) from exc


def payload_bytes(payload: ReceivedPayload) -> bytes:
    """The payload as one bytes object (for inputs that are parsed whole)."""
    return payload.read() if isinstance(payload, SpooledUpload) else payload


def check_finite_or_invalid(weights: list[npt.NDArray[Any]]) -> None:
    try:
        check_finite(weights)
    except CodecError as exc:
        raise InvalidRequest(str(exc)) from exc


def _decode_spooled(header: PayloadHeader, upload: SpooledUpload) -> list[npt.NDArray[Any]]:
    """Read each tensor from the spool file straight into its array: the payload is never held
    twice. Size and SHA-256 were checked as the chunks arrived."""
    if upload.total_bytes != header.total_bytes or upload.sha256 != header.sha256:
        raise CodecError("payload does not match its header")
    expected = sum(spec.nbytes for spec in header.tensors)
    if expected != header.total_bytes:
        raise CodecError(f"tensor shapes need {expected} bytes, header says {header.total_bytes}")
    arrays: list[npt.NDArray[Any]] = []
    with upload.open() as handle:
        for spec in header.tensors:
            flat = np.empty(math.prod(spec.shape), dtype=np.dtype(spec.dtype).newbyteorder("<"))
            if handle.readinto(flat.view(np.uint8).data) != spec.nbytes:
                raise StorageUnavailable("a spooled upload is shorter than received")
            arrays.append(flat.reshape(spec.shape).astype(np.dtype(spec.dtype), copy=False))
    return arrays
