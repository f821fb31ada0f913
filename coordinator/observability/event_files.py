"""TensorBoard event files of scalars, written and read with the tensorboard package, never TF.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, an ``Event``
protobuf, masked CRC-32C of the event). tensorboard's own file writer and readers go through
``tensorboard.compat.tf``, which imports TensorFlow whenever it is installed; the coordinator
must never load TensorFlow, so this module frames the records itself with tensorboard's record
writer and pure-Python checksum, and uses only tensorboard's generated protobuf classes.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.summary.writer.record_writer import RecordWriter

__all__ = ["EVENT_FILE_MARKER", "ScalarEvent", "ScalarRun", "read_scalar_events"]

EVENT_FILE_MARKER = "tfevents"
"""TensorBoard takes a file for an event file when its name contains this."""

_FILE_VERSION = "brain.Event:2"
_LENGTH = struct.Struct("<Q")
_CHECKSUM = struct.Struct("<I")
_sequence = itertools.count()


@dataclass(frozen=True)
class ScalarEvent:
    """One step of a run: every tag's value at that step, stamped with ``wall_time``."""

    step: int
    wall_time: float
    values: Mapping[str, float]


class ScalarRun:
    """One TensorBoard run (a directory): appends scalar events to this process's event file.

    Each process writes a file of its own (TensorBoard reads a run's files in name order, and
    the names start with the creation time), opened, appended to and closed per write so that a
    coordinator with many jobs holds no file open between rounds.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._path: Path | None = None

    def last_step(self) -> int | None:
        """The highest step already in this run's event files, from any process; None if none."""
        steps = [event.step for event in read_scalar_events(self.directory)]
        return max(steps) if steps else None

    def append(self, events: list[ScalarEvent]) -> None:
        """Write ``events`` (each one record, so a step is wholly present or absent) and flush."""
        if not events:
            return
        records = [_encode(event) for event in events]
        # Made again if an operator removed it meanwhile.
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._path is None:
            name = (
                f"events.out.{EVENT_FILE_MARKER}.{int(events[0].wall_time):010d}."
                f"{socket.gethostname()}.{os.getpid()}.{next(_sequence)}"
            )
            header = Event(wall_time=events[0].wall_time, file_version=_FILE_VERSION)
            records.insert(0, header.SerializeToString())
            self._path = self.directory / name
        with self._path.open("ab") as file:
            writer = RecordWriter(file)
            for record in records:
                writer.write(record)
            writer.flush()


def _encode(event: ScalarEvent) -> bytes:
    message = Event(wall_time=event.wall_time, step=event.step)
    for tag, value in sorted(event.values.items()):
        message.summary.value.add(tag=tag, simple_value=value)
    data: bytes = message.SerializeToString()
    return data


def read_scalar_events(directory: Path) -> list[ScalarEvent]:
    """The scalar events of the event files directly in ``directory``, in file and record order.

    Reading a file stops at its first incomplete or corrupt record: a coordinator that died
    mid-write leaves at most a torn last record, which TensorBoard skips as well.
    """
    if not directory.is_dir():
        return []
    events = []
    for path in sorted(directory.iterdir()):
        if EVENT_FILE_MARKER not in path.name or not path.is_file():
            continue
        for data in _records(path.read_bytes()):
            message = Event.FromString(data)
            if not message.HasField("summary"):
                continue
            values = {
                v.tag: float(v.simple_value)
                for v in message.summary.value
                if v.WhichOneof("value") == "simple_value"
            }
            events.append(ScalarEvent(int(message.step), float(message.wall_time), values))
    return events


def _records(content: bytes) -> Iterator[bytes]:
    offset = 0
    header_size = _LENGTH.size + _CHECKSUM.size
    while offset + header_size <= len(content):
        header = content[offset : offset + _LENGTH.size]
        (length,) = _LENGTH.unpack(header)
        (header_crc,) = _CHECKSUM.unpack_from(content, offset + _LENGTH.size)
        start = offset + header_size
        end = start + length
        if header_crc != masked_crc32c(header) or end + _CHECKSUM.size > len(content):
            return
        data = content[start:end]
        (data_crc,) = _CHECKSUM.unpack_from(content, end)
        if data_crc != masked_crc32c(data):
            return
        yield data
        offset = end + _CHECKSUM.size
