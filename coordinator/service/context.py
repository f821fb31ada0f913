"""What every coordinator use case shares: store, blob store, limits, clock, ids, one writer lock.

A single process-wide lock serializes writers, so a round's running sum is read, extended and
written back by one submitter at a time; the change feed wakes long polls when state changed.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.domain.jobs import Job, JobState
from coordinator.errors import NotFound
from coordinator.persistence.blobs import BlobStore
from coordinator.persistence.store import Store, Transaction

__all__ = [
    "ChangeFeed",
    "CoordinatorSettings",
    "PhaseListener",
    "ServiceContext",
    "require_job",
    "sha256",
]

PhaseListener = Callable[[str, str, float], None]
"""Told (protection, phase, seconds) when a round leaves a phase it spent that long in."""


@dataclass(frozen=True)
class CoordinatorSettings:
    """Operational limits of the coordinator (see docs/configuration.md)."""

    liveness_seconds: float = 30.0
    max_payload_bytes: int = 1 << 30
    max_examples: int = 1 << 40
    spool_bytes_per_org: int | None = None
    """Disk the uploads in flight of one organization may hold in the spool; None: no bound."""
    spool_bytes_total: int | None = None
    """Disk the uploads in flight of all organizations may hold in the spool; None: no bound."""


class ChangeFeed:
    """A generation counter: writers bump it, long polls wait for it to move."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._generation = 0

    def notify(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def generation(self) -> int:
        with self._changed:
            return self._generation

    def wait(self, generation: int, timeout: float) -> None:
        """Wait up to ``timeout`` seconds unless the generation moved past ``generation``."""
        with self._changed:
            if self._generation == generation:
                self._changed.wait(timeout=timeout)


@dataclass
class ServiceContext:
    """The state the use cases and round engines share within one coordinator process."""

    store: Store
    blobs: BlobStore
    settings: CoordinatorSettings
    clock: Callable[[], float]
    new_id: Callable[[], str]
    lock: threading.RLock = field(default_factory=threading.RLock)
    changes: ChangeFeed = field(default_factory=ChangeFeed)
    phase_listeners: list[PhaseListener] = field(default_factory=list)
    """Called with (protection, phase, seconds) each time a round leaves a phase (metrics)."""


def require_job(tx: Transaction, job_id: str) -> Job:
    job = tx.get_job(job_id)
    if job is None or job.state is JobState.DELETED:
        raise NotFound("no such job")
    return job


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
