"""The participant's model cache: one version fetched once, held read-only, never another's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest

from fedsilo.codec import tensors_sha256
from participant.service.model_cache import ModelCache

T = TypeVar("T")
Weights = list[npt.NDArray[Any]]


class Served:
    """Serves ``weights`` as whatever version it is asked for, or as ``version`` if set."""

    def __init__(self, weights: Weights, version: int | None = None) -> None:
        self.weights = weights
        self.version = version
        self.downloads: list[tuple[str, int]] = []

    def retrying(self, call: Callable[[], T]) -> T:
        return call()

    def download_model(self, job_id: str, version: int) -> tuple[int, Weights]:
        self.downloads.append((job_id, version))
        served = version if self.version is None else self.version
        return served, [w.copy() for w in self.weights]


def _weights(offset: float = 0.0) -> Weights:
    return [np.arange(6, dtype=np.float32).reshape(2, 3) + np.float32(offset)]


def test_a_version_is_downloaded_once_and_held_read_only() -> None:
    served = Served(_weights())
    cache = ModelCache(served)

    first = cache.fetch("job-1", 3)
    again = cache.fetch("job-1", 3)

    assert served.downloads == [("job-1", 3)]
    assert again is first and first.version == 3
    assert first.digest == tensors_sha256(_weights())
    with pytest.raises(ValueError, match="read-only"):
        first.weights[0][0, 0] = 1.0


def test_another_version_or_job_is_downloaded_and_replaces_the_held_one() -> None:
    served = Served(_weights())
    cache = ModelCache(served)
    cache.fetch("job-1", 3)

    cache.fetch("job-1", 4)
    cache.fetch("job-2", 4)
    cache.fetch("job-1", 3)

    assert served.downloads == [("job-1", 3), ("job-1", 4), ("job-2", 4), ("job-1", 3)]
    assert cache.held("job-2", 4) is None and cache.held("job-1", 3) is not None


def test_a_version_other_than_the_one_asked_for_is_returned_but_not_kept() -> None:
    served = Served(_weights(), version=2)
    cache = ModelCache(served)

    model = cache.fetch("job-1", 3)

    assert model.version == 2
    assert cache.held("job-1", 3) is None and cache.held("job-1", 2) is None
    cache.fetch("job-1", 3)
    assert len(served.downloads) == 2


def test_a_fresh_fetch_downloads_again_and_holds_what_is_served_now() -> None:
    served = Served(_weights())
    cache = ModelCache(served)
    held = cache.fetch("job-1", 3)
    served.weights = _weights(0.5)

    fresh = cache.fetch("job-1", 3, fresh=True)

    assert len(served.downloads) == 2
    assert fresh.digest == tensors_sha256(_weights(0.5)) != held.digest
    assert cache.held("job-1", 3) is fresh


def test_the_digest_of_other_arrays_is_computed_not_taken_from_the_held_model() -> None:
    cache = ModelCache(Served(_weights()))
    held = cache.fetch("job-1", 3)
    other = _weights(1.0)

    assert cache.digest_of("job-1", 3, held.weights) == held.digest
    assert cache.digest_of("job-1", 3, other) == tensors_sha256(other) != held.digest
