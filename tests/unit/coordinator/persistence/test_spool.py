"""The upload spool: chunks go to a file as they arrive, checked; no file outlives a failure."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.errors import SpoolFull
from coordinator.persistence.spool import UploadSpool
from fedsilo.chunking import ChunkError

PAYLOAD = bytes(range(256)) * 40


def chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_a_received_payload_is_in_its_file_until_closed(tmp_path: Path) -> None:
    spool = UploadSpool(tmp_path / "spool")
    with spool.receive(chunks(PAYLOAD), len(PAYLOAD), digest(PAYLOAD)) as upload:
        assert upload.read() == PAYLOAD
        assert upload.sha256 == digest(PAYLOAD)
        assert spool.files() == [upload.path]
    assert spool.files() == []


def test_a_stream_longer_than_announced_stops_at_the_first_chunk_too_many(
    tmp_path: Path,
) -> None:
    spool = UploadSpool(tmp_path / "spool")
    consumed: list[int] = []

    def endless() -> Iterator[bytes]:
        for index in range(10_000):
            consumed.append(index)
            yield b"x" * 1000

    with pytest.raises(ChunkError, match="exceeds the announced 2500 bytes"):
        spool.receive(endless(), 2500, digest(b""))
    assert consumed == [0, 1, 2]
    assert spool.files() == []


@pytest.mark.parametrize(
    ("data", "total", "sha", "message"),
    [
        (PAYLOAD[:-1], len(PAYLOAD), digest(PAYLOAD), "stream ended after"),
        (PAYLOAD, len(PAYLOAD), digest(b"other"), "does not match the announced hash"),
    ],
    ids=["short", "wrong-hash"],
)
def test_a_short_or_altered_stream_is_refused_and_removed(
    tmp_path: Path, data: bytes, total: int, sha: bytes, message: str
) -> None:
    spool = UploadSpool(tmp_path / "spool")
    with pytest.raises(ChunkError, match=message):
        spool.receive(chunks(data), total, sha)
    assert spool.files() == []


def test_a_stream_that_fails_midway_leaves_no_file(tmp_path: Path) -> None:
    """A client that cancels, or an idle watchdog that ends a stalled stream, surfaces as an
    error from the chunk iterator."""
    spool = UploadSpool(tmp_path / "spool")
    seen: list[list[Path]] = []

    def cancelled() -> Iterator[bytes]:
        yield PAYLOAD[:1000]
        seen.append(spool.files())
        raise ConnectionAbortedError("the client cancelled the call")

    with pytest.raises(ConnectionAbortedError):
        spool.receive(cancelled(), len(PAYLOAD), digest(PAYLOAD))
    assert len(seen[0]) == 1  # the file existed while the stream was open
    assert spool.files() == []


def test_files_of_a_dead_process_are_removed_at_start_and_a_live_ones_kept(
    tmp_path: Path, dead_pid: int
) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    dead = root / f"upload-{dead_pid}-abc.part"
    mine = root / f"upload-{os.getpid()}-def.part"  # a crashed earlier run that had our pid
    live = root / f"upload-{os.getppid()}-ghi.part"  # another coordinator still receiving
    unrelated = root / "README"
    for path in (dead, mine, live, unrelated):
        path.write_bytes(b"partial")
    spool = UploadSpool(root)
    assert spool.files() == [live]
    assert unrelated.exists()


def unread(data: bytes) -> Iterator[bytes]:
    """Chunks that fail the test if anyone reads them."""
    raise AssertionError("a refused upload's payload was read")
    yield data


def test_an_owners_budget_refuses_an_upload_before_reading_it_and_frees_on_close(
    tmp_path: Path,
) -> None:
    spool = UploadSpool(tmp_path / "spool", owner_budget_bytes=len(PAYLOAD) + 100)
    first = spool.receive(chunks(PAYLOAD), len(PAYLOAD), digest(PAYLOAD), "org-a")
    assert spool.held_bytes("org-a") == len(PAYLOAD)
    with pytest.raises(SpoolFull, match="spool budget"):
        spool.receive(unread(PAYLOAD), len(PAYLOAD), digest(PAYLOAD), "org-a")
    assert spool.files() == [first.path]
    # Another owner has a budget of its own; a small upload still fits in org-a's.
    spool.receive(chunks(PAYLOAD), len(PAYLOAD), digest(PAYLOAD), "org-b").close()
    spool.receive(chunks(b"x" * 100), 100, digest(b"x" * 100), "org-a").close()
    first.close()
    first.close()  # closing twice frees the reservation once
    assert spool.held_bytes() == 0
    spool.receive(chunks(PAYLOAD), len(PAYLOAD), digest(PAYLOAD), "org-a").close()


def test_the_total_budget_refuses_an_upload_that_would_exceed_it(tmp_path: Path) -> None:
    spool = UploadSpool(
        tmp_path / "spool",
        owner_budget_bytes=len(PAYLOAD),
        total_budget_bytes=2 * len(PAYLOAD),
    )
    held = [
        spool.receive(chunks(PAYLOAD), len(PAYLOAD), digest(PAYLOAD), org)
        for org in ("org-a", "org-b")
    ]
    with pytest.raises(SpoolFull, match="full for now"):
        spool.receive(unread(PAYLOAD), len(PAYLOAD), digest(PAYLOAD), "org-c")
    held[0].close()
    spool.receive(chunks(PAYLOAD), len(PAYLOAD), digest(PAYLOAD), "org-c").close()
    held[1].close()
    assert spool.held_bytes() == 0 and spool.files() == []


def test_a_failed_upload_frees_its_reservation(tmp_path: Path) -> None:
    spool = UploadSpool(tmp_path / "spool", owner_budget_bytes=len(PAYLOAD))
    with pytest.raises(ChunkError):
        spool.receive(chunks(PAYLOAD[:-1]), len(PAYLOAD), digest(PAYLOAD), "org-a")
    assert spool.held_bytes() == 0 and spool.files() == []
    spool.receive(chunks(PAYLOAD), len(PAYLOAD), digest(PAYLOAD), "org-a").close()
