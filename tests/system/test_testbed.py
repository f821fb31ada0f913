"""The compose testbed end to end on a real Docker engine (deploy/testbed/run.sh).

It builds the image from this checkout, runs the PKI steps and then the whole consortium
(PostgreSQL, coordinator, three organizations, admin) on one network per organization with every
key and certificate as a compose secret, and checks that an organization reaches only the
coordinator and holds its own key and certificate, that the job reaches the accuracy of `fedsilo
demo` and that nothing is left: no engine process, no mount, no run directory (where the keys
were), no container or volume in the engine's cached data root.

Minutes long, so not part of `make test` (deploy/README.md): it runs when selected with
`-m testbed` or FEDSILO_TESTBED=1, and needs what the scripts need to start an engine (root,
apt-get and dpkg on Debian or Ubuntu).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.testbed, pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
# The bar of `fedsilo demo` for the same job (tests/system/test_demo_tf.py).
DEMO_ACCURACY_BAR = 0.90


def _selected(config: pytest.Config) -> bool:
    expression = str(config.getoption("markexpr") or "")
    chosen = "testbed" in expression and "not testbed" not in expression
    return chosen or os.environ.get("FEDSILO_TESTBED") == "1"


def _why_no_engine() -> str | None:
    if os.geteuid() != 0:
        return "starting a private dockerd needs root"
    for tool in ("apt-get", "dpkg", "tar"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: the testbed unpacks Debian's docker.io with apt and dpkg"
    return None


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended while we looked
        if text in words:
            found.append(f"{cmdline.parent.name}: {words}")
    return found


def test_the_compose_consortium_completes_the_demo_job_and_leaves_nothing_behind(
    request: pytest.FixtureRequest,
) -> None:
    if not _selected(request.config):
        pytest.skip("the compose testbed takes minutes: run `make testbed` or `pytest -m testbed`")
    reason = _why_no_engine()
    if reason is not None:
        pytest.skip(f"no Docker engine can be started here: {reason}")
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        [str(REPO / "deploy" / "testbed" / "run.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=2300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]

    if os.environ.get("FEDSILO_TESTBED_NETWORK", "bridge") == "bridge":
        # Checked from inside org-1 before the job: the coordinator and nothing else.
        assert (
            "network isolation: coordinator:50051 reached, 172.30.10.2:5432 unreachable, "
            "172.30.10.3:50051 unreachable" in output
        ), output[-6000:]
    assert "org-1 secrets: ca.crt tls.crt tls.key (certificate of org-1, key matches)" in output
    accuracy = re.search(r"final accuracy: ([0-9.]+) \(model version 10, job completed\)", output)
    assert accuracy is not None, output[-6000:]
    assert float(accuracy.group(1)) >= DEMO_ACCURACY_BAR

    socket = re.search(
        r"dockerd running \(socket (/tmp/fedsilo-testbed\.\w+)/docker\.sock\)", output
    )
    assert socket is not None, output[-6000:]
    run_dir = socket.group(1)
    assert not Path(run_dir).exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert run_dir not in mounts
    assert "fedsilo-testbed/docker-data" not in mounts
    assert _processes_mentioning(run_dir) == []
    # The data root is kept between runs for its image layers, and only for them.
    cache = Path(
        os.environ.get("FEDSILO_TESTBED_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedsilo-testbed"
    )
    data_root = cache / "docker-data"
    assert list((data_root / "containers").iterdir()) == []
    assert [p.name for p in (data_root / "volumes").iterdir() if p.is_dir()] == []
