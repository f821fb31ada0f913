"""Received payloads: the size limit, and tensors decoded and checked with the coordinator's
errors."""

from __future__ import annotations

from typing import Any

import numpy.typing as npt

from coordinator.errors import InvalidRequest
from fedsilo.codec import CodecError, PayloadHeader, check_finite, decode_tensors

__all__ = ["check_finite_or_invalid", "check_payload_size", "decode_payload"]


def check_payload_size(total_bytes: int, limit: int) -> None:
    if total_bytes > limit:
        raise InvalidRequest(f"payload of {total_bytes} bytes exceeds the {limit}-byte limit")


def decode_payload(header: PayloadHeader, payload: bytes, limit: int) -> list[npt.NDArray[Any]]:
    """The tensors of a payload within the size limit; InvalidRequest for anything malformed."""
    check_payload_size(header.total_bytes, limit)
    try:
        return decode_tensors(header, payload)
    except CodecError as exc:
        raise InvalidRequest(str(exc)) from exc


def check_finite_or_invalid(weights: list[npt.NDArray[Any]]) -> None:
    try:
        check_finite(weights)
    except CodecError as exc:
        raise InvalidRequest(str(exc)) from exc
