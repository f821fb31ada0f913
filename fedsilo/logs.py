"""Structured logging: every record carries job, round, phase and org (``-`` where none applies).

Never log keys, shares, masks, ciphertexts or tensor bytes: log sizes, hashes' first bytes, ids.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["CONTEXT_FIELDS", "configure", "context"]

CONTEXT_FIELDS = ("job", "round", "phase", "org")
FORMAT = (
    "%(asctime)s %(levelname)s %(name)s "
    "job=%(job)s round=%(round)s phase=%(phase)s org=%(org)s %(message)s"
)


class _ContextDefaults(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, "-")
        return True


def context(
    job: str | None = None,
    round: str | None = None,
    phase: str | None = None,
    org: str | None = None,
) -> dict[str, Any]:
    """The ``extra=`` mapping for a log call: ``log.info("...", extra=context(job=...))``."""
    values = {"job": job, "round": round, "phase": phase, "org": org}
    return {"extra": {k: (v if v is not None else "-") for k, v in values.items()}}


def configure(level: str = "INFO", stream: Any = None) -> None:
    """Install one handler on the root logger with the structured format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_ContextDefaults())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
