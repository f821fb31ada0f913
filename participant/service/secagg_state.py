"""Durable per-round secure-aggregation state of this participant (docs/secagg.md).

One JSON file per round, ``state_dir/secagg/<round_id>.json``: the directory is mode 0700, the
file 0600, written to a temporary file, fsync'd and renamed over the previous one, so a crash
leaves the old state or the new one, never a mix. Until its round ends, a file holds that round's
secrets (the client's key pairs, its self-mask seed and the shares it keeps for its peers): it is
treated like a private key and never logged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedsilo.protection import SecAggParameters
from participant.errors import LocalStateError, StateUnreadable
from participant.service.private_files import (
    is_safe_name,
    private_directory,
    read_private_json,
    remove_private,
    write_private,
)

__all__ = [
    "SecAggStateStore",
    "SecureRoundState",
    "parameters_from_json",
    "parameters_to_json",
]

_FORMAT = "fedsilo-participant-secagg/1"
_SUFFIX = ".json"


@dataclass(frozen=True)
class SecureRoundState:
    """What this participant keeps for one secure-aggregation round.

    ``client`` is ``SecAggClient.to_dict()`` (round secrets), or None if the participant refused
    the round before it started (``refusal`` says why). ``peer_certificates`` maps each org id to
    the PEM certificate accepted in the SHARES phase: later phases verify signatures with the
    same keys. ``parameters`` are the round's parameters as first received; every later phase
    must carry the same, and the same ``protection`` (``secagg`` or ``paillier``).
    """

    parameters: SecAggParameters
    client: Mapping[str, Any] | None = field(default=None, repr=False)
    peer_certificates: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    refusal: str = ""
    protection: str = "secagg"
    base_sha256: bytes = b""
    """The digest of the base model the round's keys were signed for (its context binds it)."""


class SecAggStateStore:
    """The per-round state files under ``state_dir/secagg``."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = private_directory(state_dir / "secagg")

    def _path(self, round_id: str) -> Path:
        if not is_safe_name(round_id):
            raise LocalStateError("round id is not a safe file name")
        return self._dir / f"{round_id}{_SUFFIX}"

    def round_ids(self) -> list[str]:
        """Every round with a state file, sorted."""
        return sorted(
            path.name.removesuffix(_SUFFIX)
            for path in self._dir.iterdir()
            if path.name.endswith(_SUFFIX) and is_safe_name(path.name.removesuffix(_SUFFIX))
        )

    def load(self, round_id: str) -> SecureRoundState | None:
        """The stored state of a round, None if there is none; StateUnreadable if damaged."""
        damaged = StateUnreadable(f"the stored state of round {round_id} is damaged")
        return read_private_json(self._path(round_id), _decode, damaged)

    def save(self, round_id: str, state: SecureRoundState) -> None:
        """Replace the round's state atomically and durably (before any answer is sent)."""
        write_private(self._path(round_id), json.dumps(_encode(state)).encode())

    def delete(self, round_id: str) -> None:
        """Forget the round: its secrets are gone for good."""
        remove_private(self._path(round_id))


def parameters_to_json(parameters: SecAggParameters) -> dict[str, Any]:
    """The round or job parameters as a JSON object (the form state files keep them in)."""
    encoded = asdict(parameters)
    encoded["cohort"] = list(parameters.cohort)
    return encoded


def parameters_from_json(raw: Any) -> SecAggParameters:
    """Invert :func:`parameters_to_json`; raises KeyError, TypeError or ValueError if damaged."""
    return SecAggParameters(
        threshold=int(raw["threshold"]),
        modulus_bits=int(raw["modulus_bits"]),
        vector_length=int(raw["vector_length"]),
        cohort=tuple(str(member) for member in raw["cohort"]),
        clip=float(raw["clip"]),
        levels_bits=int(raw["levels_bits"]),
        max_participants=int(raw["max_participants"]),
        max_weight=int(raw["max_weight"]),
    )


def _encode(state: SecureRoundState) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "parameters": parameters_to_json(state.parameters),
        "client": dict(state.client) if state.client is not None else None,
        # latin-1 maps every byte to one character, so the exact bytes come back.
        "peer_certificates": {
            org: pem.decode("latin-1") for org, pem in sorted(state.peer_certificates.items())
        },
        "refusal": state.refusal,
        "protection": state.protection,
        "base_sha256": state.base_sha256.hex(),
    }


def _decode(data: Any) -> SecureRoundState:
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError("unknown state format")
    parameters = parameters_from_json(data["parameters"])
    client = data["client"]
    if client is not None and not isinstance(client, dict):
        raise ValueError("client state is not an object")
    certificates = {
        str(org): str(pem).encode("latin-1") for org, pem in data["peer_certificates"].items()
    }
    # Files written before paillier rounds existed are secagg rounds.
    protection = str(data.get("protection", "secagg"))
    base_sha256 = bytes.fromhex(str(data.get("base_sha256", "")))
    return SecureRoundState(
        parameters, client, certificates, str(data["refusal"]), protection, base_sha256
    )
