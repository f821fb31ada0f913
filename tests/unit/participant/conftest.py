"""participant test setup: puts this directory on sys.path for ``secure_round_harness``."""

from __future__ import annotations

import sys
from pathlib import Path

# Test modules are imported with --import-mode=importlib, which does not add their directory to
# sys.path; the shared harness lives next to this file.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
