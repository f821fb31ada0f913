"""The coordinator configuration every real-process test starts from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsilo.pki import DemoPki


def coordinator_settings(pki: DemoPki, listen: str, data_dir: Path) -> dict[str, Any]:
    """Mutual TLS from the test PKI, a fast tick, organizations approved on first contact."""
    return {
        "listen": listen,
        "data_dir": str(data_dir),
        "tls": {
            "ca_cert": str(pki.ca_cert),
            "cert": str(pki.coordinator_cert),
            "key": str(pki.coordinator_key),
        },
        "tick_seconds": 0.1,
        "auto_approve": True,
        "grace_seconds": 5,
    }
