"""Private files: atomic 0600 writes whose temporary files are unique per writer."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from participant.service.private_files import (
    remove_orphaned_writes,
    remove_private,
    write_private,
)


def test_a_write_leaves_only_the_file_with_mode_0600(tmp_path: Path) -> None:
    target = tmp_path / "1.bin"
    write_private(target, b"first")
    write_private(target, b"second")
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.bin"]


def test_concurrent_writers_of_one_file_never_share_a_temporary_file(tmp_path: Path) -> None:
    # Two writers of one model file (the daemon and an export) once wrote through one temporary
    # name: one renamed it away under the other, which then failed with FileNotFoundError.
    target = tmp_path / "1.bin"
    payloads = [bytes([i]) * 65536 for i in range(8)]
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            for _ in range(25):
                write_private(target, data)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(data,)) for data in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_bytes() in payloads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.bin"]


def test_remove_private_deletes_the_file_and_leftover_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "round.json"
    write_private(target, b"{}")
    (tmp_path / ".round.json.abc123.tmp").write_bytes(b"partial")
    (tmp_path / "other.json").write_bytes(b"{}")
    remove_private(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


def test_orphaned_writes_of_dead_writers_are_removed_anywhere_in_the_state_dir(
    tmp_path: Path, dead_pid: int
) -> None:
    # A daemon killed while saving its ledger left a temporary file; its next start removes it.
    (tmp_path / "ledger").mkdir()
    (tmp_path / "secagg").mkdir()
    orphans = [
        tmp_path / "ledger" / f".job.json.{dead_pid}-x1y2.tmp",
        tmp_path / "secagg" / f".round.json.{dead_pid}-a9b8.tmp",
    ]
    live = tmp_path / "ledger" / f".export.bin.{os.getppid()}-k3k3.tmp"  # a live export's
    kept = [tmp_path / "ledger" / "job.json", live]
    for path in [*orphans, *kept]:
        path.write_bytes(b"partial")
    assert remove_orphaned_writes(tmp_path) == 2
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(kept)
