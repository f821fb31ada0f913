"""Structured logging: every record carries job, round, phase and org (``-`` where none applies).

Never log keys, shares, masks, ciphertexts or tensor bytes: log sizes, hashes' first bytes, ids.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["CONTEXT_FIELDS", "LOG_FORMATS", "JsonFormatter", "configure", "context"]

CONTEXT_FIELDS = ("job", "round", "phase", "org")
FORMAT = (
    "%(asctime)s %(levelname)s %(name)s "
    "job=%(job)s round=%(round)s phase=%(phase)s org=%(org)s %(message)s"
)


LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message and the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, "-")
            entry[name] = None if value == "-" else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


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


def configure(level: str = "INFO", stream: Any = None, log_format: str = "text") -> None:
    """Install one handler on the root logger: ``text`` (key=value) or ``json`` (one per line)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(FORMAT)
    handler.setFormatter(formatter)
    handler.addFilter(_ContextDefaults())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
