"""``log_format: json``: one valid JSON object per line with the time, level, logger and context."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from fedsilo.config import ConfigError, CoordinatorConfig, load_config
from fedsilo.logs import configure, context


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_the_fields_and_the_context(restore_root: None) -> None:
    stream = io.StringIO()
    configure("INFO", stream, log_format="json")
    log = logging.getLogger("coordinator")
    log.info("round %d committed", 3, **context(job="j1", round="r3", phase="committed"))
    log.warning('plain "quoted"\nline')
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    for entry in (first, second, third):
        assert set(entry) >= {"ts", "level", "logger", "message", "job", "round", "phase", "org"}
        assert entry["logger"] == "coordinator"
    assert first["message"] == "round 3 committed"
    assert (first["job"], first["round"], first["phase"], first["org"]) == (
        "j1",
        "r3",
        "committed",
        None,
    )
    assert first["level"] == "INFO"
    assert second["message"] == 'plain "quoted"\nline'
    assert second["job"] is None
    assert "ValueError: boom" in third["exception"]


def test_text_stays_the_default(restore_root: None) -> None:
    stream = io.StringIO()
    configure("INFO", stream)
    logging.getLogger("coordinator").info("hello")
    assert "job=- round=- phase=- org=- hello" in stream.getvalue()


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ConfigError, match="log_format"):
        load_config(
            CoordinatorConfig, None, {"FEDSILO_LOG_FORMAT": "xml", "FEDSILO_TLS_INSECURE": "true"}
        )
