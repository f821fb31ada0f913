"""Worker processes do not outlive the process that started them, even one killed by SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedsilo.cli.daemons import wait_for

pytestmark = pytest.mark.system

# Starts a Paillier worker pool, prints its workers' pids and the fork server's, and kills itself
# the way a crash or the OOM killer would: no executor shutdown, no atexit handlers.
SCRIPT = """
import json, os, signal
from multiprocessing import forkserver
from secagg.paillier import PaillierWorkers
from secagg.paillier.arithmetic import encrypt_classic

if __name__ == "__main__":
    pool = PaillierWorkers(2)
    pool.map(encrypt_classic, [15], [[1] * 8, [2] * 8])
    workers = sorted(pool._executor_started()._processes)
    server = forkserver._forkserver._forkserver_pid
    print(json.dumps({"workers": workers, "server": server}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        state = next(line for line in status.read_text().splitlines() if line.startswith("State"))
    except FileNotFoundError:
        return True
    return "Z" in state.split()[1]  # a zombie has exited; only its exit status is left


def test_paillier_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "pool.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out.json"
    # Output to a file: processes left behind would hold a pipe open and stall the test.
    with out.open("w") as stdout:
        code = subprocess.call([sys.executable, str(script)], stdout=stdout, timeout=120)  # noqa: S603
    assert code == -9
    started = json.loads(out.read_text())
    pids = [*started["workers"], started["server"]]
    assert len(started["workers"]) == 2 and all(isinstance(pid, int) for pid in pids)
    wait_for(lambda: all(_gone(pid) for pid in pids), 30, "the orphaned workers to exit")
