"""The injected randomness source: a callable like ``os.urandom`` that returns n fresh bytes."""

from __future__ import annotations

from collections.abc import Callable

from secagg.errors import InvalidInput

__all__ = ["RandomSource", "random_bytes"]

RandomSource = Callable[[int], bytes]
"""Returns ``n`` uniformly random bytes. Production code passes ``os.urandom``; tests pass a
deterministic generator so that every run is reproducible."""


def random_bytes(random: RandomSource, count: int) -> bytes:
    """Draw exactly ``count`` bytes from ``random``; a source that returns fewer is a bug."""
    data = random(count)
    if not isinstance(data, bytes) or len(data) != count:
        raise InvalidInput(f"the random source returned the wrong number of bytes (wanted {count})")
    return data
