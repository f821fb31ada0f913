"""Durable per-job state of this participant's paillier jobs: keys, pending messages, models.

One directory per job, ``state_dir/paillier/<job_id>/`` (mode 0700):

- ``job.json`` (0600): the job's quantization settings and key size as first received, this
  participant's X25519 job key pair and its signed public part, the dealer's signed public key
  (``DealtKey``), the Paillier private key, the keys this participant sealed for others, the
  key-ceremony messages not yet acknowledged (the outbox), and the last refused ceremony step;
  the job's key generation and the keys of earlier generations (read-only, to decrypt the
  versions made under them: docs/paillier.md, "Key rotation").
- ``models/<version>.json`` + ``models/<version>.bin`` (0600): the global model versions this
  participant decrypted (or downloaded: version 0), as tensor-codec header and payload, so each
  version is decrypted once.
- ``optimizer/<version>.bin`` (0600): the job strategy's optimizer state after that version
  (``fedsilo.strategies.encode_optimizer_state``), for strategies with a server step, which
  every organization runs itself under paillier (docs/strategies.md).

Every write is atomic and fsync'd (:mod:`participant.service.private_files`); ``job.json`` is
written before any message it lists is sent, so after a restart the same bytes go out. It holds
secret keys: it is treated like the organization's private key and never logged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy.typing as npt

from fedsilo.codec import CodecError, PayloadHeader, TensorSpec, decode_tensors, encode_tensors
from fedsilo.protection import SecAggParameters
from fedsilo.strategies import (
    OptimizerState,
    StrategyChoice,
    StrategyError,
    decode_optimizer_state,
    encode_optimizer_state,
)
from participant.errors import LocalStateError, PaillierStateUnreadable
from participant.service.private_files import (
    is_safe_name,
    private_directory,
    read_private_json,
    write_private,
)
from participant.service.secagg_state import parameters_from_json, parameters_to_json
from secagg import AgreementKeyPair
from secagg.paillier import DealtKey

__all__ = [
    "OutgoingMessage",
    "PaillierJobState",
    "PaillierStateStore",
    "RetiredKey",
    "SealedFor",
    "known_key_holders",
]

_FORMAT = "fedsilo-participant-paillier/1"
_MODEL_FORMAT = "fedsilo-participant-model/1"
_STATE_FILE = "job.json"
_MODELS = "models"
_OPTIMIZER = "optimizer"


@dataclass(frozen=True)
class OutgoingMessage:
    """A key-ceremony message (``SubmitCeremony`` action and body) waiting to be acknowledged."""

    action: str
    body: bytes = field(repr=False)


@dataclass(frozen=True)
class SealedFor:
    """A private key this participant sealed (``SealedKey`` bytes) for the receiver's job key
    (``JobKey`` bytes): a retry sends the same ciphertext."""

    job_key: bytes = field(repr=False)
    sealed: bytes = field(repr=False)


@dataclass(frozen=True)
class RetiredKey:
    """The key of an earlier generation of the job, left after a rotation: never used to
    encrypt again, kept to decrypt and verify the versions made under it. ``last_round`` is the
    highest round number this participant had started in the job when it left the generation:
    a round it started after is under a later key."""

    generation: int
    dealt_key: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    last_round: int = 0


@dataclass(frozen=True)
class PaillierJobState:
    """What this participant keeps for one paillier job (see the module docstring).

    ``parameters`` are the job's quantization settings with the per-round fields cleared
    (threshold 0, vector length 0, no cohort). ``job_key`` is this participant's signed
    ``JobKey`` for ``job_key_pair``; ``dealt_key`` the dealer's ``DealtKey`` (the public key);
    ``private_key`` the encoded ``PaillierPrivateKey``. ``sealed`` maps receivers to what this
    participant sealed for them. ``refused_step`` is the digest of the last ceremony step this
    participant refused (``refusal`` says why): the same step is never answered. ``strategy``
    is the job's strategy as first received in an assignment: the model chain is rebuilt with
    it, and a round naming another is refused. ``key_holders`` are the organizations this
    participant knows were dealt or sealed the Paillier key (the dealer, the sender of its
    sealed key, those it sealed for, the cohorts of the job's rounds): if one of them is revoked,
    the key is no longer used (docs/threat-model.md, "Revoked organizations").
    ``stopped`` is why this participant stopped
    serving the job for good (a served version failed verification, ``stopped_version``): it
    takes part in none of the job's rounds again and decrypts no version from then on.
    ``generation`` is the key generation the job-key, key and holder fields belong to (0: the
    job's first key); it only goes up, and ``retired`` keeps the keys of the earlier
    generations this participant held (docs/paillier.md, "Key rotation").
    """

    parameters: SecAggParameters | None = None
    key_bits: int = 0
    job_key_pair: AgreementKeyPair | None = field(default=None, repr=False)
    job_key: bytes = field(default=b"", repr=False)
    dealt_key: bytes = field(default=b"", repr=False)
    private_key: bytes = field(default=b"", repr=False)
    sealed: Mapping[str, SealedFor] = field(default_factory=dict, repr=False)
    outbox: tuple[OutgoingMessage, ...] = ()
    refused_step: bytes = b""
    refusal: str = ""
    strategy: StrategyChoice | None = None
    key_holders: frozenset[str] = frozenset()
    stopped: str = ""
    stopped_version: int = 0
    generation: int = 0
    retired: tuple[RetiredKey, ...] = field(default=(), repr=False)


def known_key_holders(state: PaillierJobState) -> frozenset[str]:
    """Everyone this participant knows was dealt or sealed the job's key (itself included)."""
    holders = set(state.key_holders) | set(state.sealed)
    if state.dealt_key:
        holders.add(DealtKey.from_bytes(state.dealt_key).dealer)
    return frozenset(holders)


class PaillierStateStore:
    """The per-job directories under ``state_dir/paillier``."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = private_directory(state_dir / "paillier")

    def _job_dir(self, job_id: str) -> Path:
        if not is_safe_name(job_id):
            raise LocalStateError("job id is not a safe file name")
        return self._dir / job_id

    def job_ids(self) -> list[str]:
        """Every job with a state file, sorted."""
        return sorted(
            path.name
            for path in self._dir.iterdir()
            if is_safe_name(path.name) and (path / _STATE_FILE).exists()
        )

    def load(self, job_id: str) -> PaillierJobState | None:
        """The stored state of a job, None if there is none; PaillierStateUnreadable if damaged."""
        damaged = PaillierStateUnreadable(f"the stored paillier state of job {job_id} is damaged")
        return read_private_json(self._job_dir(job_id) / _STATE_FILE, _decode, damaged)

    def save(self, job_id: str, state: PaillierJobState) -> None:
        """Replace the job's state atomically and durably (before any message is sent)."""
        directory = private_directory(self._job_dir(job_id))
        write_private(directory / _STATE_FILE, json.dumps(_encode(state)).encode())

    # -- the decrypted models -------------------------------------------------------------------

    def _model_paths(self, job_id: str, version: int) -> tuple[Path, Path]:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise LocalStateError("a model version is a non-negative integer")
        directory = self._job_dir(job_id) / _MODELS
        return directory / f"{version}.bin", directory / f"{version}.json"

    def model_versions(self, job_id: str) -> list[int]:
        """The versions kept for the job, ascending."""
        directory = self._job_dir(job_id) / _MODELS
        if not directory.is_dir():
            return []
        return sorted(
            int(path.stem)
            for path in directory.iterdir()
            if path.suffix == ".json" and path.stem.isdigit()
        )

    def load_model(self, job_id: str, version: int) -> list[npt.NDArray[Any]] | None:
        """A kept model version, None if absent or damaged (it is then rebuilt)."""
        payload_path, meta_path = self._model_paths(job_id, version)
        try:
            meta = json.loads(meta_path.read_bytes())
            payload = payload_path.read_bytes()
            if meta["format"] != _MODEL_FORMAT:
                return None
            header = PayloadHeader(
                tuple(TensorSpec(str(d), tuple(int(n) for n in s)) for d, s in meta["tensors"]),
                int(meta["total_bytes"]),
                bytes.fromhex(meta["sha256"]),
            )
            return decode_tensors(header, payload)
        except FileNotFoundError:
            return None
        except (CodecError, ValueError, KeyError, TypeError):
            return None

    def save_model(
        self,
        job_id: str,
        version: int,
        weights: Sequence[npt.NDArray[Any]],
        served_sha256: bytes = b"",
        generation: int = 0,
    ) -> None:
        """Keep a model version (the payload first: the header's presence marks it complete).

        ``served_sha256`` is the digest of the bytes the coordinator served for this version
        (the ciphertexts it was decrypted from, or version 0 itself): what a round trained from
        it binds. ``generation`` is the key generation it was encrypted under.
        """
        payload_path, meta_path = self._model_paths(job_id, version)
        private_directory(payload_path.parent)
        header, payload = encode_tensors(weights)
        write_private(payload_path, payload)
        meta = {
            "format": _MODEL_FORMAT,
            "tensors": [[s.dtype, list(s.shape)] for s in header.tensors],
            "total_bytes": header.total_bytes,
            "sha256": header.sha256.hex(),
            "served_sha256": served_sha256.hex(),
            "generation": generation,
        }
        write_private(meta_path, json.dumps(meta).encode())

    def served_digest(self, job_id: str, version: int) -> bytes | None:
        """The digest of the served bytes a kept version came from; None if not recorded."""
        _, meta_path = self._model_paths(job_id, version)
        try:
            recorded = json.loads(meta_path.read_bytes()).get("served_sha256", "")
            return bytes.fromhex(recorded) or None
        except (OSError, ValueError, AttributeError):
            return None

    def version_generation(self, job_id: str, version: int) -> int:
        """The key generation a kept version was encrypted under (0 when not recorded: kept
        before rotations existed, or version 0)."""
        _, meta_path = self._model_paths(job_id, version)
        try:
            return int(json.loads(meta_path.read_bytes()).get("generation", 0))
        except (OSError, ValueError, AttributeError, TypeError):
            return 0

    # -- the optimizer state of the job's strategy ----------------------------------------------

    def _state_path(self, job_id: str, version: int) -> Path:
        payload_path, _ = self._model_paths(job_id, version)
        return payload_path.parent.parent / _OPTIMIZER / f"{version}.bin"

    def load_optimizer_state(self, job_id: str, version: int) -> OptimizerState | None:
        """The optimizer state kept after ``version``, None if absent or damaged (rebuilt)."""
        try:
            return decode_optimizer_state(self._state_path(job_id, version).read_bytes())
        except (FileNotFoundError, StrategyError):
            return None

    def save_optimizer_state(self, job_id: str, version: int, state: OptimizerState) -> None:
        """Keep the optimizer state after ``version`` (before the model version it goes with)."""
        path = self._state_path(job_id, version)
        private_directory(path.parent)
        write_private(path, encode_optimizer_state(state))


def _encode(state: PaillierJobState) -> dict[str, Any]:
    pair = state.job_key_pair
    return {
        "format": _FORMAT,
        "parameters": None if state.parameters is None else parameters_to_json(state.parameters),
        "key_bits": state.key_bits,
        "job_key_pair": (
            None
            if pair is None
            else {"private": pair.private_key.hex(), "public": pair.public_key.hex()}
        ),
        "job_key": state.job_key.hex(),
        "dealt_key": state.dealt_key.hex(),
        "private_key": state.private_key.hex(),
        "sealed": {
            receiver: {"job_key": item.job_key.hex(), "sealed": item.sealed.hex()}
            for receiver, item in sorted(state.sealed.items())
        },
        "outbox": [{"action": m.action, "body": m.body.hex()} for m in state.outbox],
        "refused_step": state.refused_step.hex(),
        "refusal": state.refusal,
        "strategy": None if state.strategy is None else state.strategy.to_json(),
        "key_holders": sorted(state.key_holders),
        "stopped": state.stopped,
        "stopped_version": state.stopped_version,
        "generation": state.generation,
        "retired": [
            {
                "generation": item.generation,
                "dealt_key": item.dealt_key.hex(),
                "private_key": item.private_key.hex(),
                "last_round": item.last_round,
            }
            for item in state.retired
        ],
    }


def _decode(data: Any) -> PaillierJobState:
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError("unknown state format")
    raw = data["parameters"]
    pair = data["job_key_pair"]
    return PaillierJobState(
        parameters=None if raw is None else parameters_from_json(raw),
        key_bits=int(data["key_bits"]),
        job_key_pair=(
            None
            if pair is None
            else AgreementKeyPair(bytes.fromhex(pair["private"]), bytes.fromhex(pair["public"]))
        ),
        job_key=bytes.fromhex(data["job_key"]),
        dealt_key=bytes.fromhex(data["dealt_key"]),
        private_key=bytes.fromhex(data["private_key"]),
        sealed={
            str(receiver): SealedFor(bytes.fromhex(item["job_key"]), bytes.fromhex(item["sealed"]))
            for receiver, item in data["sealed"].items()
        },
        outbox=tuple(
            OutgoingMessage(str(m["action"]), bytes.fromhex(m["body"])) for m in data["outbox"]
        ),
        refused_step=bytes.fromhex(data["refused_step"]),
        refusal=str(data["refusal"]),
        # Absent in state written before strategies: recorded at the next assignment.
        strategy=(
            None if data.get("strategy") is None else StrategyChoice.from_json(data["strategy"])
        ),
        # Absent in state written before membership lists: filled by the next step or round.
        key_holders=frozenset(str(org) for org in data.get("key_holders", ())),
        # Absent in state written before versions were verified: never stopped.
        stopped=str(data.get("stopped", "")),
        stopped_version=int(data.get("stopped_version", 0)),
        # Absent in state written before rotations: the job's first key, nothing retired.
        generation=int(data.get("generation", 0)),
        retired=tuple(
            RetiredKey(
                int(item["generation"]),
                bytes.fromhex(item["dealt_key"]),
                bytes.fromhex(item["private_key"]),
                int(item.get("last_round", 0)),
            )
            for item in data.get("retired", ())
        ),
    )
