"""The participant's per-round secure-aggregation state files."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsilo.protection import SecAggParameters
from participant.errors import StateUnreadable
from participant.service import private_files
from participant.service.secagg_state import SecAggStateStore, SecureRoundState

ROUND = "6f1c1f9e-8d0a-4c55-9f57-2a1c3b6f0e11"
PARAMETERS = SecAggParameters(
    threshold=2,
    modulus_bits=32,
    vector_length=651,
    cohort=("org-a", "org-b", "org-c"),
    clip=0.1,
    levels_bits=16,
    max_participants=8,
    max_weight=1000,
)
STATE = SecureRoundState(
    PARAMETERS,
    client={"format": "x", "state": {"phase": "shares_sent", "self_mask_seed": "ab" * 32}},
    # Any byte survives the round trip, not only the ASCII of a well-formed PEM.
    peer_certificates={"org-a": b"-----BEGIN CERTIFICATE-----\n\xff\x00\n", "org-b": b"pem"},
)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_saved_state_loads_back_equal(tmp_path: Path) -> None:
    store = SecAggStateStore(tmp_path)
    store.save(ROUND, STATE)
    assert SecAggStateStore(tmp_path).load(ROUND) == STATE


def test_a_refusal_without_a_client_round_trips(tmp_path: Path) -> None:
    store = SecAggStateStore(tmp_path)
    refused = SecureRoundState(PARAMETERS, None, {}, refusal="bit budget exceeded")
    store.save(ROUND, refused)
    assert store.load(ROUND) == refused


def test_an_unknown_round_has_no_state(tmp_path: Path) -> None:
    assert SecAggStateStore(tmp_path).load(ROUND) is None


def test_files_are_private_even_with_a_permissive_umask(
    tmp_path: Path, permissive_umask: None
) -> None:
    (tmp_path / "secagg").mkdir(mode=0o777)
    store = SecAggStateStore(tmp_path)
    store.save(ROUND, STATE)
    assert _mode(tmp_path / "secagg") == 0o700
    assert _mode(tmp_path / "secagg" / f"{ROUND}.json") == 0o600


def test_a_failed_write_keeps_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SecAggStateStore(tmp_path)
    store.save(ROUND, STATE)

    def crash(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(private_files.os, "replace", crash)
    newer = SecureRoundState(PARAMETERS, {"format": "y"}, {})
    with pytest.raises(OSError, match="disk full"):
        store.save(ROUND, newer)
    monkeypatch.undo()

    assert store.load(ROUND) == STATE
    assert store.round_ids() == [ROUND]  # the leftover temporary file is not a round
    store.save(ROUND, newer)
    assert store.load(ROUND) == newer


def test_round_ids_lists_saved_rounds_and_delete_forgets_them(tmp_path: Path) -> None:
    store = SecAggStateStore(tmp_path)
    other = "0a0b0c0d-0000-4000-8000-000000000000"
    store.save(ROUND, STATE)
    store.save(other, STATE)
    (tmp_path / "secagg" / "notes.txt").write_text("not a round")
    assert store.round_ids() == sorted([ROUND, other])

    store.delete(ROUND)
    store.delete(ROUND)  # deleting twice is fine
    assert store.round_ids() == [other]
    assert store.load(ROUND) is None


@pytest.mark.parametrize("round_id", ["", "../escape", "a/b", "x.json", "a" * 65, "round\n"])
def test_unsafe_round_ids_never_become_paths(tmp_path: Path, round_id: str) -> None:
    store = SecAggStateStore(tmp_path)
    with pytest.raises(ValueError, match="safe file name"):
        store.save(round_id, STATE)
    with pytest.raises(ValueError, match="safe file name"):
        store.load(round_id)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": "other"}', '{"format": 1}'])
def test_a_damaged_file_is_reported_without_its_content(tmp_path: Path, content: str) -> None:
    store = SecAggStateStore(tmp_path)
    (tmp_path / "secagg" / f"{ROUND}.json").write_text(content)
    with pytest.raises(StateUnreadable) as error:
        store.load(ROUND)
    assert content not in str(error.value)


def test_a_damaged_secret_is_not_echoed(tmp_path: Path) -> None:
    store = SecAggStateStore(tmp_path)
    store.save(ROUND, STATE)
    path = tmp_path / "secagg" / f"{ROUND}.json"
    path.write_text(path.read_text().replace('"threshold": 2', '"threshold": "' + "ab" * 32 + '"'))
    with pytest.raises(StateUnreadable) as error:
        store.load(ROUND)
    assert "ab" * 32 not in str(error.value)
