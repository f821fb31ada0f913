"""The injected random source is checked for returning exactly what was asked."""

from __future__ import annotations

import pytest

from secagg.errors import InvalidInput
from secagg.primitives.randomness import random_bytes


def test_returns_the_source_bytes() -> None:
    assert random_bytes(lambda n: b"\x01" * n, 3) == b"\x01\x01\x01"


@pytest.mark.parametrize("source", [lambda n: b"\x00" * (n - 1), lambda n: bytearray(n)])
def test_short_or_wrongly_typed_output_is_refused(source: object) -> None:
    with pytest.raises(InvalidInput, match="wrong number of bytes"):
        random_bytes(source, 4)  # type: ignore[arg-type]
