"""The fedsilo coordinator: orchestrates rounds, persists their state, never sees raw data.

Errors raised by the coordinator's use cases form one tree (see ``coordinator.errors``)::

    CoordinatorError
    ├── InvalidRequest        bad shapes, dtypes, NaN/Inf, sizes, garbage  -> INVALID_ARGUMENT
    ├── NotFound              unknown job, round or model version          -> NOT_FOUND
    ├── WrongRoundPhase       wrong phase, late, not in cohort, old round  -> FAILED_PRECONDITION
    ├── ConflictingSubmission different bytes for an answered phase        -> ALREADY_EXISTS
    ├── NotAuthorized         wrong role or unknown identity               -> PERMISSION_DENIED
    ├── StaleMembershipList   a membership list not newer than the last    -> FAILED_PRECONDITION
    ├── StorageUnavailable    database or blob store unavailable           -> UNAVAILABLE
    ├── ConcurrentUpdate      a compare-and-set lost after every retry     -> UNAVAILABLE
    └── SpoolFull             upload spool disk budget taken, for now      -> RESOURCE_EXHAUSTED
                              (with the busy trailer of fedsilo/wire.py: retried later)
"""

import fedsilo  # noqa: F401 - applies the TLS 1.3-only policy before grpc is imported
