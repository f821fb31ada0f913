"""How the admin CLI shows jobs and organizations: JSON for scripts, rows for people.

JSON keeps numbers as numbers (protobuf's own JSON writes 64-bit integers as strings), enums as
their lowercase names (``running``, not ``JOB_STATE_RUNNING``) and leaves a value that is not
known as ``null`` (a round's ``train_loss`` under secure aggregation), never as a made-up 0.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from fedsilo.v1 import fedsilo_pb2 as pb

__all__ = [
    "PHASE_NAMES",
    "STATE_NAMES",
    "age_text",
    "iso_time",
    "job_json",
    "message_json",
    "participant_json",
    "round_metrics",
]

PHASE_NAMES = {v: k.removeprefix("ROUND_PHASE_").lower() for k, v in pb.RoundPhase.items()}
STATE_NAMES = {v: k.removeprefix("JOB_STATE_").lower() for k, v in pb.JobState.items()}


def _enum_prefix(enum_name: str) -> str:
    # RoundPhase -> ROUND_PHASE_, DType -> D_TYPE_ (the prefix every value of the enum carries).
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


def _value_json(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        name = enum.values_by_number[value].name
        return name.removeprefix(_enum_prefix(enum.name)).lower()
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.hex()
    return value


def message_json(message: Message) -> dict[str, Any]:
    """Every field of ``message`` by its proto name; an unset ``optional`` scalar is None."""
    result: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            result[field.name] = [_value_json(field, item) for item in value]
        elif (
            field.has_presence
            and field.type != FieldDescriptor.TYPE_MESSAGE
            and not message.HasField(field.name)
        ):
            result[field.name] = None
        else:
            result[field.name] = _value_json(field, value)
    return result


def round_metrics(status: pb.JobStatus, round_: pb.RoundStatus) -> pb.VersionMetrics | None:
    """The evaluation of the model version a committed round produced, once any is reported."""
    if round_.phase != pb.ROUND_PHASE_COMMITTED:
        return None
    produced = round_.base_version + 1
    return next((m for m in status.metrics if m.version == produced), None)


def job_json(status: pb.JobStatus) -> dict[str, Any]:
    """A job for ``--json``: its status, each round with the metrics of the version it made."""
    result = message_json(status)
    for row, round_ in zip(result["rounds"], status.rounds, strict=True):
        metrics = round_metrics(status, round_)
        row["metrics"] = None if metrics is None else message_json(metrics)
    return result


def iso_time(seconds: float) -> str:
    """A Unix time as ISO-8601 in UTC, to the second; "" for 0 (never)."""
    if not seconds:
        return ""
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def age_text(seconds: float) -> str:
    """How long ago, for people: ``42s``, ``5m12s``, ``3h04m``, ``2d05h``."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def participant_json(info: pb.ParticipantInfo, now: float) -> dict[str, Any]:
    """An organization with ISO-8601 times and the age of its last call in seconds."""
    return {
        "org_id": info.org_id,
        "status": info.status,
        "first_seen": iso_time(info.first_seen),
        "last_seen": iso_time(info.last_seen),
        "last_seen_age_seconds": round(max(0.0, now - info.last_seen), 1),
        "certificate_sha256": info.certificate_sha256,
    }
