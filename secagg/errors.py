"""The secagg error tree: every error secagg raises on purpose derives from SecAggError."""

from __future__ import annotations

__all__ = [
    "BitBudgetExceeded",
    "DecryptionFailed",
    "InvalidInput",
    "InvalidShare",
    "InvalidSignature",
    "NotEnoughSurvivors",
    "ProtocolViolation",
    "SecAggError",
    "WrongPhase",
]


class SecAggError(Exception):
    """Base of every error secagg raises on purpose.

    Messages name participants, phases and sizes only; they never contain keys, seeds, shares,
    masks, ciphertexts or vector contents (docs/fault-matrix.md S20), so they are safe to log.
    """


class InvalidInput(SecAggError):
    """A malformed argument or decoded message: type, length, dtype, NaN/Inf, bad config."""


class BitBudgetExceeded(InvalidInput):
    """The quantized sum over ``n_max`` participants could overflow the modulus ``R = 2^k``."""


class WrongPhase(SecAggError):
    """The call does not fit the current phase (server side), e.g. a late or early submission."""


class InvalidSignature(SecAggError):
    """A signature does not verify against the signer's organization key."""


class DecryptionFailed(SecAggError):
    """AES-GCM authentication failed: wrong key, wrong associated data, or a tampered ciphertext.

    ``sender`` names the peer whose share failed, when one did, so operators can act on it.
    """

    def __init__(self, message: str = "", *, sender: str | None = None) -> None:
        super().__init__(message)
        self.sender = sender


class InvalidShare(SecAggError):
    """A Shamir share is malformed or the shares are inconsistent with each other.

    ``sender`` names the peer whose share is malformed, when the share came from one.
    """

    def __init__(self, message: str = "", *, sender: str | None = None) -> None:
        super().__init__(message)
        self.sender = sender


class ProtocolViolation(SecAggError):
    """The server asked for something an honest server never asks; the participant aborted."""


class NotEnoughSurvivors(SecAggError):
    """Fewer than ``t`` participants remain; the round cannot complete and must abort."""
