"""The last plain model version downloaded, kept so that one version is fetched once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from fedsilo.codec import tensors_sha256
from participant.service.calls import ModelCalls

__all__ = ["HeldModel", "ModelCache"]

Weights = list[npt.NDArray[Any]]


@dataclass
class HeldModel:
    """One version as the coordinator served it; its arrays are read-only."""

    job_id: str
    version: int
    weights: Weights
    _digest: bytes | None = None

    @property
    def digest(self) -> bytes:
        """SHA-256 of the weights' canonical encoding (the bytes the coordinator serves)."""
        if self._digest is None:
            self._digest = tensors_sha256(self.weights)
        return self._digest


class ModelCache:
    """Downloads model versions, keeping the last one.

    A round downloads the version it starts from, and the organization then evaluates that same
    version (or evaluated it just before): without this each would fetch and decode the whole
    model again. A version is never changed once committed, so the bytes held are the bytes the
    coordinator served for it to this organization; a secure round binds their digest in its
    context like those of a fresh download. The arrays are made read-only, since training and
    evaluation share them: a task must not change its input weights. At most one model is held
    (a second copy of the model in memory between rounds). Only plain model versions go through
    here: a paillier job's versions are rebuilt from their ciphertexts, never cached.
    """

    def __init__(self, calls: ModelCalls) -> None:
        self._calls = calls
        self._held: HeldModel | None = None

    def held(self, job_id: str, version: int) -> HeldModel | None:
        """The held model of that job and version, if it is the one held."""
        held = self._held
        if held is not None and (held.job_id, held.version) == (job_id, version):
            return held
        return None

    def fetch(self, job_id: str, version: int, *, fresh: bool = False) -> HeldModel:
        """The version asked for, from memory or downloaded (``fresh``: always downloaded).

        The coordinator may answer with another version; that one is returned and not kept.
        """
        held = None if fresh else self.held(job_id, version)
        if held is not None:
            return held
        got, weights = self._calls.retrying(lambda: self._calls.download_model(job_id, version))
        model = HeldModel(job_id, got, weights)
        if got == version:
            for array in weights:
                array.flags.writeable = False  # shared by training, evaluation and digests
            self._held = model
        return model

    def digest_of(self, job_id: str, version: int, weights: Weights) -> bytes:
        """The digest of ``weights``: the held one's when they are the held arrays."""
        held = self.held(job_id, version)
        if held is not None and held.weights is weights:
            return held.digest
        return tensors_sha256(weights)
