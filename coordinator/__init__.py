"""The fedsilo coordinator: orchestrates rounds, persists their state, never sees raw data.

Errors raised by the coordinator's use cases form one tree (see ``coordinator.errors``)::

    CoordinatorError
    ├── InvalidRequest        bad shapes, dtypes, NaN/Inf, sizes, garbage  -> INVALID_ARGUMENT
    ├── NotFound              unknown job, round or model version          -> NOT_FOUND
    ├── WrongRoundPhase       wrong phase, late, not in cohort, old round  -> FAILED_PRECONDITION
    ├── ConflictingSubmission different bytes for an answered phase        -> ALREADY_EXISTS
    ├── NotAuthorized         wrong role or unknown identity               -> PERMISSION_DENIED
    └── StorageUnavailable    database or blob store unavailable           -> UNAVAILABLE
"""

import fedsilo  # noqa: F401 - applies the TLS 1.3-only policy before grpc is imported
