"""R19: organizations whose clocks are minutes off (docs/fault-matrix.md).

Two of the three organizations run on a clock four minutes ahead and four minutes behind,
under libfaketime (every wall-clock read of the process is shifted: Python, gRPC and OpenSSL
alike, as on a host whose clock is off; inside the certificates' five minutes of allowed skew).
Round deadlines live on the coordinator's clock only: the job completes with every
organization, and the doctor reports each organization's skew against the coordinator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from secure_jobs import secure_spec, start_job, wait_for_end

from fedsilo.v1 import fedsilo_pb2 as pb

pytestmark = [pytest.mark.system]

OFFSETS = {"org-1": "+4m", "org-2": "-4m"}


def faketime_library() -> Path:
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))
    assert found, "libfaketime is missing: run scripts/ensure-test-packages.sh"
    return found[0]


def skewed(offset: str) -> dict[str, str]:
    return {
        "LD_PRELOAD": str(faketime_library()),
        "FAKETIME": offset,
        # Durations (the monotonic clock) stay true: only the wall clock is off.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def test_rounds_run_on_the_coordinator_clock_whatever_the_organizations_clocks(
    consortium: Any,
) -> None:
    probe = subprocess.run(  # noqa: S603 - the shift is in force in a child process
        [sys.executable, "-c", "import time; print(time.time())"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **skewed("+4m")},
        check=True,
    )
    assert float(probe.stdout) - time.time() > 200

    consortium.start_coordinator()
    for org in consortium.orgs:
        offset = OFFSETS.get(org)
        consortium.start_participant(org, skewed(offset) if offset else None)
    spec = secure_spec(pb.PROTECTION_SECAGG, phase_timeout=20.0)
    status = wait_for_end(consortium, start_job(consortium, spec))
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    assert sorted(status.rounds[0].contributors) == sorted(consortium.orgs)

    # The doctor of a skewed organization measures its skew against the coordinator.
    for org, offset in OFFSETS.items():
        doctor = subprocess.run(  # noqa: S603
            [
                sys.executable,
                "-m",
                "fedsilo",
                "participant",
                "doctor",
                "--json",
                "--config",
                str(consortium.participant_config(org)),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **skewed(offset)},
            check=False,
        )
        clock = {row["name"]: row for row in json.loads(doctor.stdout)}["clock"]
        assert clock["result"] == "fail", clock  # minutes off: beyond what the doctor allows
        expected = "ahead of" if offset.startswith("+") else "behind"
        assert f"s {expected} the coordinator" in clock["detail"], clock
