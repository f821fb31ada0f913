"""What both ends of the wire share beyond protobuf: upload and download streams, refusal marks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy.typing as npt

from fedsilo import chunking
from fedsilo.codec import CodecError, decode_tensors, header_from_proto
from fedsilo.paillier_inputs import RoundInputsInfo
from fedsilo.v1 import fedsilo_pb2 as pb

__all__ = [
    "BUSY_TRAILER",
    "GRPC_CONCURRENCY_REFUSAL",
    "header_then_chunks",
    "receive_model",
    "receive_round_inputs",
    "refused_as_busy",
]

M = TypeVar("M")

BUSY_TRAILER = ("fedsilo-refusal", "busy")
"""Trailing metadata of a RESOURCE_EXHAUSTED that frees up as other calls end: the coordinator's
cap on concurrent calls, or its upload spool's disk budget.

gRPC answers a message over the size limit with RESOURCE_EXHAUSTED too; sending that message
again can never succeed, while a call refused for a busy coordinator succeeds later. The trailer
tells the two apart (docs/configuration.md, "Limits")."""


GRPC_CONCURRENCY_REFUSAL = "Concurrent RPC limit exceeded!"
"""The details of gRPC Python's own RESOURCE_EXHAUSTED for a call over the server's
``maximum_concurrent_rpcs`` (``limits.max_concurrent_rpcs``): gRPC refuses it before any fedsilo
code runs, so it can carry no trailer; its fixed text marks it busy instead."""


def refused_as_busy(
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None, details: str = ""
) -> bool:
    """Whether a failed call was refused because the coordinator is busy: its trailing metadata
    carries :data:`BUSY_TRAILER`, or it is gRPC's own concurrency refusal."""
    if details == GRPC_CONCURRENCY_REFUSAL:
        return True
    return any((key, value) == BUSY_TRAILER for key, value in (trailing_metadata or ()))


def header_then_chunks(
    header_message: M, payload: bytes, data_message: Callable[[bytes], M]
) -> Iterator[M]:
    """The request stream of an upload: one header message, then the payload in chunks."""
    yield header_message
    for piece in chunking.split(payload):
        yield data_message(piece)


def receive_model(chunks: Iterable[pb.ModelChunk]) -> tuple[int, list[npt.NDArray[Any]]]:
    """Read a DownloadModel stream: info first, then data; check size and hash; decode."""
    iterator = iter(chunks)
    first = next(iterator, None)
    if first is None or first.WhichOneof("item") != "info":
        raise CodecError("model stream must start with its info message")
    header = header_from_proto(first.info.header)
    payload = chunking.assemble((c.data for c in iterator), header.total_bytes, header.sha256)
    return int(first.info.version), decode_tensors(header, payload)


def receive_round_inputs(
    chunks: Iterable[pb.RoundInputsChunk], announced: RoundInputsInfo
) -> bytes | None:
    """Read a DownloadRoundInputs stream: info first, then data, checked against the size and
    hash the CONSISTENCY step ``announced`` (never more bytes are read). None, without reading
    the data, when the info is another: the round's inputs changed since the step was sent."""
    iterator = iter(chunks)
    first = next(iterator, None)
    if first is None or first.WhichOneof("item") != "info":
        raise CodecError("a round's inputs stream must start with its info message")
    if RoundInputsInfo(first.info.total_bytes, first.info.sha256) != announced:
        return None
    return chunking.assemble((c.data for c in iterator), announced.total_bytes, announced.sha256)
