"""A real coordinator process keeps stalled and oversized uploads out of memory.

docs/fault-matrix.md R16: the coordinator's peak resident growth stays far below what those
uploads sent, and the spool is empty once they end. The figures for a model of several hundred
MB come from ``tests/bench/bench_upload_memory.py``; the bounds here are generous on purpose (a
buffered upload would exceed them several times over).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_upload_memory  # noqa: E402 - found through the path above

pytestmark = [pytest.mark.system, pytest.mark.slow]

MEGABYTES = 128
STALLED = 2
# Each stalled upload sends most of the model, far more than gRPC's own receive buffering, which
# grows with its flow-control window and was seen at about 33 MiB per stream on a busy machine.
STALLED_FRACTION = 0.9


def test_stalled_and_oversized_uploads_are_not_held_in_the_coordinators_memory(
    tmp_path: Path,
) -> None:
    figures = {
        figure.scenario: figure
        for figure in bench_upload_memory.run_bench(
            tmp_path, MEGABYTES, STALLED, idle_seconds=3.0, stalled_fraction=STALLED_FRACTION
        )
    }
    model = MEGABYTES * bench_upload_memory.MIB
    # Each stalled upload sent most of the model before it went silent; held in memory they
    # would have grown the coordinator by at least that much. (Every scenario also waited for
    # the spool directory to be empty again.)
    sent_by_stalled = int(STALLED * model * STALLED_FRACTION)
    assert figures["stalled"].growth_bytes < 0.5 * sent_by_stalled
    # The over-long upload sent the whole update and more before it was refused.
    assert figures["oversized"].growth_bytes < 0.5 * model
    # Concurrent downloads each read the model from the blob store as they send it.
    assert figures["downloads"].growth_bytes < 0.5 * model
    # The round still commits from the updates that were sent whole.
    assert figures["accepted"].growth_bytes > 0
