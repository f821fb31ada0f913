"""The content-addressed blob store: round trips, de-duplication, corruption and bad paths."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.errors import NotFound, StorageUnavailable
from coordinator.persistence.blobs import BlobStore


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_get_round_trip(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = bytes(range(256)) * 1000
    ref = blobs.put(data)
    assert ref == hashlib.sha256(data).hexdigest()
    assert blobs.get(ref) == data
    assert (tmp_path / "blobs" / ref[:2] / ref).read_bytes() == data
    assert blobs.refs() == [ref]


def test_empty_blob_round_trip(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    ref = blobs.put(b"")
    assert blobs.get(ref) == b""


def test_same_bytes_same_ref_and_one_file(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    first = blobs.put(b"weights")
    second = blobs.put(b"weights")
    other = blobs.put(b"weights!")
    assert first == second != other
    assert sorted(blobs.refs()) == sorted([first, other])
    assert len(files_under(tmp_path)) == 2  # no duplicate and no leftover temporary file


def test_blobs_survive_a_new_store_over_the_same_dir(tmp_path: Path) -> None:
    ref = BlobStore(tmp_path).put(b"durable")
    assert BlobStore(tmp_path).get(ref) == b"durable"


def test_corrupted_blob_is_detected(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    ref = blobs.put(b"the real model")
    (tmp_path / ref[:2] / ref).write_bytes(b"the evil model")
    with pytest.raises(StorageUnavailable, match="corrupted"):
        blobs.get(ref)


def test_truncated_blob_is_detected(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    ref = blobs.put(b"0123456789")
    (tmp_path / ref[:2] / ref).write_bytes(b"01234")
    with pytest.raises(StorageUnavailable, match="corrupted"):
        blobs.get(ref)


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "abc",
        "A" * 64,  # upper case is not how refs are written
        "g" * 64,
        "0" * 63,
        "0" * 65,
        "../" + "0" * 61,
        "/etc/passwd",
    ],
)
def test_malformed_ref_is_not_found_and_touches_no_path(tmp_path: Path, ref: str) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    with pytest.raises(NotFound):
        blobs.get(ref)
    with pytest.raises(NotFound):
        blobs.delete(ref)
    assert list((tmp_path / "blobs").iterdir()) == []


def test_missing_blob_is_not_found(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    with pytest.raises(NotFound):
        blobs.get(hashlib.sha256(b"never stored").hexdigest())


def test_delete_removes_and_tolerates_missing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    ref = blobs.put(b"temporary")
    blobs.delete(ref)
    blobs.delete(ref)
    with pytest.raises(NotFound):
        blobs.get(ref)
    assert blobs.refs() == []


def test_root_that_is_a_file_is_unavailable(tmp_path: Path) -> None:
    # Tests run as root, where chmod does not stop writes: block the directory with a file.
    occupied = tmp_path / "occupied"
    occupied.write_bytes(b"not a directory")
    with pytest.raises(StorageUnavailable, match="not usable"):
        BlobStore(occupied)
    with pytest.raises(StorageUnavailable, match="not usable"):
        BlobStore(occupied / "blobs")


def test_unwritable_shard_is_unavailable_and_leaves_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = b"cannot land"
    ref = hashlib.sha256(data).hexdigest()
    (tmp_path / ref[:2]).write_bytes(b"a file where the shard directory belongs")
    with pytest.raises(StorageUnavailable, match="cannot write"):
        blobs.put(data)
    assert blobs.refs() == []
    assert [p.name for p in files_under(tmp_path)] == [ref[:2]]


def test_put_file_moves_a_checked_file_in_and_leaves_no_source(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = bytes(range(256)) * 100
    digest = hashlib.sha256(data).digest()
    source = tmp_path / "upload.part"
    source.write_bytes(data)
    ref = blobs.put_file(source, digest)
    assert ref == digest.hex()
    assert blobs.get(ref) == data
    assert not source.exists()
    # The same content again: the stored blob is kept, the new file removed.
    again = tmp_path / "again.part"
    again.write_bytes(data)
    assert blobs.put_file(again, digest) == ref
    assert not again.exists()
    assert blobs.refs() == [ref]


def test_stream_reads_a_blob_in_chunks_and_finds_corruption_at_the_end(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = bytes(range(256)) * 100
    ref = blobs.put(data)
    size, chunks = blobs.stream(ref, chunk_bytes=1000)
    pieces = list(chunks)
    assert size == len(data) and b"".join(pieces) == data
    assert max(len(piece) for piece in pieces) == 1000
    (tmp_path / "blobs" / ref[:2] / ref).write_bytes(b"x" + data[1:])
    _, corrupted = blobs.stream(ref, chunk_bytes=1000)
    with pytest.raises(StorageUnavailable, match="corrupted"):
        list(corrupted)
    with pytest.raises(NotFound):
        blobs.stream("0" * 64)


# A writer killed between writing its temporary file and renaming it into place.
_KILLED_WRITER = """
import os, sys
from pathlib import Path
from fedsilo import files
files.os.replace = lambda *args: os._exit(9)
files.write_atomic(Path(sys.argv[1]), b"half a blob", sync_directory=True)
"""


def test_a_blob_write_killed_midway_is_cleaned_when_the_store_opens(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    kept = BlobStore(root).put(b"a finished blob")
    target = root / ("ab" * 32)[:2] / ("ab" * 32)
    target.parent.mkdir(exist_ok=True)
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], check=False)
    assert killed.returncode == 9
    (left,) = list(target.parent.glob(".*.tmp"))
    assert left.read_bytes() == b"half a blob"
    reopened = BlobStore(root)
    assert reopened.temporary_files() == []
    assert not left.exists() and not target.exists()
    assert reopened.refs() == [kept]


def test_a_temporary_file_of_a_live_writer_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    (root / "ab").mkdir(parents=True)
    live = root / "ab" / f".{'ab' * 32}.{os.getppid()}-x1y2.tmp"  # another coordinator writing
    old = root / "ab" / f".{'ab' * 32}.k3m4.tmp"  # an older release's name: no pid, long dead
    for path in (live, old):
        path.write_bytes(b"partial")
    assert BlobStore(root).temporary_files() == [live]
