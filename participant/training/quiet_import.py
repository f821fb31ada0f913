"""Import Keras (and TensorFlow under it) without TensorFlow's C++ start-up chatter on stderr."""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile
import threading
from types import ModuleType

__all__ = ["import_keras", "without_chatter"]

# The native runtime logs at load time, before any Python setting can reach it (e.g. "oneDNN
# custom operations are on" and the absl notice about InitializeLog). Info and warning lines in
# absl's format are dropped; everything else written meanwhile (errors, Python warnings, other
# threads' log lines) is written out afterwards.
_LOG_LINE = re.compile(rb"^[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\] ")
# TensorFlow's CPU-feature notice spans two lines; its second starts like this.
_CONTINUATION = b"To enable the following instructions"
_NOTICE = b"WARNING: All log messages before absl::InitializeLog()"
_lock = threading.Lock()


def import_keras() -> ModuleType:
    """``import keras``, the first time with file descriptor 2 captured and filtered."""
    if "keras" in sys.modules:
        return importlib.import_module("keras")
    with _lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):
            return importlib.import_module("keras")  # no usable stderr to tidy
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                return importlib.import_module("keras")
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                _replay(sink.read())


def _replay(captured: bytes) -> None:
    kept = without_chatter(captured)
    if kept:
        sys.stderr.flush()
        os.write(2, kept)


def without_chatter(captured: bytes) -> bytes:
    """``captured`` without the runtime's info and warning lines (and their continuations)."""
    kept: list[bytes] = []
    dropping = False
    for line in captured.splitlines(keepends=True):
        if line.startswith(_NOTICE):
            continue
        if _LOG_LINE.match(line):
            dropping = line[:1] in (b"I", b"W")  # error and fatal lines stay
        elif not (dropping and line.startswith(_CONTINUATION)):
            dropping = False
        if not dropping:
            kept.append(line)
    return b"".join(kept)
