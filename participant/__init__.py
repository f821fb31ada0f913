"""The fedsilo participant daemon: trains next to an organization's data, answers once per phase.

Entry points are in :mod:`participant.main` (``run``, ``export``, ``build_daemon``). Layers:
``domain/`` (what the coordinator asks, as plain data), ``service/`` (the daemon's loop, secure
rounds, the paillier key ceremony and model chain, durable local state), ``training/`` (the only
code that imports TensorFlow) and ``transport/`` (the gRPC client: the only code that imports
gRPC or protobuf).

Errors the participant raises on purpose form one tree (see ``participant.errors``)::

    ParticipantError
    ├── CallFailed                a call to the coordinator failed; .status is a CallStatus
    │   ├── CoordinatorUnavailable    UNAVAILABLE or DEADLINE_EXCEEDED (retried with backoff)
    │   │   └── CoordinatorBusy           RESOURCE_EXHAUSTED marked busy: call cap, spool (retried)
    │   └── RequestRefused            any other status: the coordinator will not accept it
    ├── UntrustedMessage          the coordinator sent what this participant will not act on
    ├── NotSupported              work this participant is not set up for (e.g. paillier)
    │   └── SecAggUnavailable         no usable organization key and certificate
    ├── MembershipUnavailable     no CA-signed membership list yet, and one is required
    │   └── MembershipStale           the newest list held is older than max_membership_age
    ├── ModelUnavailable          a global model version cannot be obtained or rebuilt
    ├── TaskFailed                the organization's task rejected its settings, data or weights
    └── LocalStateError           an id that is no safe file name, a damaged state file
        ├── StateUnreadable           a secure round's state
        └── PaillierStateUnreadable   a paillier job's state

All but ``CallFailed`` also derive from ``ValueError``. The daemon logs any of them and moves on
to the next work item; anything else is a defect and surfaces. A request an honest coordinator
never makes is refused with secagg's ``ProtocolViolation`` and recorded, so it is never answered.
``Stopped`` (not an error) unwinds the work in hand when the daemon is asked to stop.
"""

import fedsilo  # noqa: F401 - applies the TLS 1.3-only policy before grpc is imported
from participant.errors import (
    CallFailed,
    CallStatus,
    CoordinatorBusy,
    CoordinatorUnavailable,
    LocalStateError,
    ModelUnavailable,
    NotSupported,
    PaillierStateUnreadable,
    ParticipantError,
    RequestRefused,
    SecAggUnavailable,
    StateUnreadable,
    Stopped,
    TaskFailed,
    UntrustedMessage,
)

__all__ = [
    "CallFailed",
    "CallStatus",
    "CoordinatorBusy",
    "CoordinatorUnavailable",
    "LocalStateError",
    "ModelUnavailable",
    "NotSupported",
    "PaillierStateUnreadable",
    "ParticipantError",
    "RequestRefused",
    "SecAggUnavailable",
    "StateUnreadable",
    "Stopped",
    "TaskFailed",
    "UntrustedMessage",
]
