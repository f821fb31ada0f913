"""participant test setup: puts this directory on sys.path for the harness modules; one Paillier
key per session (generating a 2048-bit key takes a while)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from secagg.paillier import PaillierPrivateKey, generate_private_key

# Test modules are imported with --import-mode=importlib, which does not add their directory to
# sys.path; the shared harness lives next to this file.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def paillier_key() -> PaillierPrivateKey:
    """The key every test dealer deals (injected as its key generator)."""
    return generate_private_key(2048, os.urandom)
