"""R18: a long idle phase under the shipped keepalive settings (docs/fault-matrix.md).

One organization stops for longer than every keepalive interval of both sides (the client's
20 s and the coordinator's 60 s) right after its KEYS message; the others sit in the SHARES
phase, long-polling with the shipped ``poll_seconds`` and call deadlines. Nothing may break the
idle connections: no GOAWAY (``too_many_pings``), no failed call, no reconnection; once the
organization carries on, the round completes with every organization.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from secure_jobs import secure_spec, start_job, wait_for_end

from fedsilo.cli.daemons import wait_for
from fedsilo.config import ParticipantConfig
from fedsilo.faults import PAUSE_ENV_VAR, PAUSE_FILE_ENV_VAR
from fedsilo.v1 import fedsilo_pb2 as pb

pytestmark = [pytest.mark.system, pytest.mark.slow]

IDLE_S = 70.0  # longer than 3 client keepalive intervals and the coordinator's own
SHIPPED = ParticipantConfig()
BROKEN = ("GOAWAY", "too_many_pings", "ENHANCE_YOUR_CALM", "retrying in", "Traceback")


def test_a_long_idle_phase_keeps_every_connection(consortium: Any) -> None:
    consortium.start_coordinator()
    for org in consortium.orgs:
        path = consortium.participant_config(org)
        config = yaml.safe_load(path.read_text())
        # The shipped timing, not the fast one the other system tests use.
        config["poll_seconds"] = SHIPPED.poll_seconds
        config["rpc_timeout_seconds"] = SHIPPED.rpc_timeout_seconds
        config["backoff"] = {
            "initial_seconds": SHIPPED.backoff.initial_seconds,
            "max_seconds": SHIPPED.backoff.max_seconds,
        }
        path.write_text(yaml.safe_dump(config))
    pause_file = consortium.root / "paused"
    slow = consortium.orgs[-1]
    for org in consortium.orgs:
        env = (
            {PAUSE_ENV_VAR: "participant.secagg.after_keys", PAUSE_FILE_ENV_VAR: str(pause_file)}
            if org == slow
            else None
        )
        consortium.start_participant(org, env)
    spec = secure_spec(pb.PROTECTION_SECAGG, phase_timeout=IDLE_S + 60, round_timeout=600)
    job_id = start_job(consortium, spec)
    wait_for(pause_file.exists, 60, f"{slow} to stop after its KEYS message")

    # The idle stretch itself: watch the logs for anything breaking while it lasts.
    idle_until = time.monotonic() + IDLE_S
    while time.monotonic() < idle_until:
        for name in ("coordinator", *consortium.orgs):
            text = consortium.processes[name].log_path.read_text()
            assert not [marker for marker in BROKEN if marker in text], (name, text[-3000:])
        time.sleep(1.0)  # the pace of the watch; the idle time is what is under test
    pause_file.unlink()

    status = wait_for_end(consortium, job_id)
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    assert sorted(status.rounds[0].contributors) == sorted(consortium.orgs)
    for name in ("coordinator", *consortium.orgs):
        text = consortium.processes[name].log_path.read_text()
        assert not [marker for marker in BROKEN if marker in text], (name, text[-3000:])
