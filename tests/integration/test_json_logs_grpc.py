"""A real coordinator's JSON log during a short job: every line parses and round lines carry ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest
from inproc_consortium import ORGS, DaemonThread, initial_weights, shift_job_spec, wait_for_job

from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.logs import CONTEXT_FIELDS, configure
from fedsilo.v1 import fedsilo_pb2 as pb

FIELDS = {"ts", "level", "logger", "message", *CONTEXT_FIELDS}


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure("INFO", stream, log_format="json")
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_every_line_of_a_job_is_json_and_round_lines_name_job_and_round(
    json_log: io.StringIO,
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
) -> None:
    for org in ORGS:
        run_daemon(org, target)
    wait_for(lambda: len(admin.list_participants()) == len(ORGS), 20, "registration", interval=0.02)
    job_id = admin.create_job(shift_job_spec(num_rounds=2), initial_weights()).job_id
    admin.start_job(job_id)
    wait_for_job(admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the job", 40)

    entries = [json.loads(line) for line in json_log.getvalue().splitlines()]
    coordinator = [e for e in entries if e["logger"].startswith("coordinator")]
    assert coordinator
    for entry in entries:
        assert FIELDS <= set(entry), entry
    about_rounds = [e for e in coordinator if e["message"].startswith(("round ", "model version"))]
    assert len(about_rounds) >= 4
    for entry in about_rounds:
        assert entry["job"] == job_id, entry
        assert entry["round"] in ("1", "2"), entry
