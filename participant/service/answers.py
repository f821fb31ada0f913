"""Durable record of what this participant answered, so a restart re-sends identical bytes.

Each answer is two files under ``state_dir/answers`` written with mode 0600 and fsync'd before the
first send: the payload and a small JSON header. A participant never sends two different updates
for one round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsilo.codec import PayloadHeader, TensorSpec
from participant.errors import LocalStateError
from participant.service.private_files import (
    is_safe_name,
    private_directory,
    read_private_json,
    write_private,
)

__all__ = ["AnswerStore", "StoredAnswer"]


@dataclass(frozen=True)
class StoredAnswer:
    header: PayloadHeader
    payload: bytes
    num_examples: int
    train_loss: float


class AnswerStore:
    def __init__(self, state_dir: Path) -> None:
        self._dir = private_directory(state_dir / "answers")

    def _paths(self, round_id: str, phase: str) -> tuple[Path, Path]:
        if not is_safe_name(round_id) or not is_safe_name(phase):
            raise LocalStateError("round id or phase is not a safe file name")
        stem = self._dir / f"{round_id}.{phase}"
        return stem.with_suffix(f".{phase}.bin"), stem.with_suffix(f".{phase}.json")

    def load(self, round_id: str, phase: str) -> StoredAnswer | None:
        """The stored answer, None if there is none; LocalStateError if it is damaged."""
        payload_path, meta_path = self._paths(round_id, phase)
        damaged = LocalStateError(f"the stored answer of round {round_id} is damaged")
        meta = read_private_json(meta_path, _decode_meta, damaged)
        if meta is None:
            return None
        header, num_examples, train_loss = meta
        return StoredAnswer(header, payload_path.read_bytes(), num_examples, train_loss)

    def save(self, round_id: str, phase: str, answer: StoredAnswer) -> None:
        payload_path, meta_path = self._paths(round_id, phase)
        write_private(payload_path, answer.payload)
        meta = {
            "tensors": [[s.dtype, list(s.shape)] for s in answer.header.tensors],
            "total_bytes": answer.header.total_bytes,
            "sha256": answer.header.sha256.hex(),
            "num_examples": answer.num_examples,
            "train_loss": answer.train_loss,
        }
        # The metadata file is written last: its presence means the answer is complete.
        write_private(meta_path, json.dumps(meta).encode())

    def forget(self, round_id: str, phase: str) -> None:
        """Delete a stored answer once its round has ended (nothing if there is none)."""
        payload_path, meta_path = self._paths(round_id, phase)
        # The metadata first: without it the answer counts as absent, whatever remains.
        for path in (meta_path, payload_path):
            path.unlink(missing_ok=True)


def _decode_meta(meta: Any) -> tuple[PayloadHeader, int, float]:
    header = PayloadHeader(
        tuple(TensorSpec(d, tuple(s)) for d, s in meta["tensors"]),
        meta["total_bytes"],
        bytes.fromhex(meta["sha256"]),
    )
    return header, meta["num_examples"], meta["train_loss"]
