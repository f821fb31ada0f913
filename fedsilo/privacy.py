"""Differential privacy of a job's released model: clipping and distributed Gaussian noise.

Under a job's differential-privacy settings (docs/differential-privacy.md) every organization
clips its round update (trained minus base weights, flattened) to the L2 norm ``clip`` and adds
its share of Gaussian noise, with standard deviation ``noise_multiplier * clip / sqrt(t)``, where
``t`` is the fewest contributors the round can complete with (the secure-aggregation threshold,
or ``min_participants`` without secure aggregation). The sum of at least ``t`` honest shares then
carries noise of at least the target variance ``(noise_multiplier * clip)^2``, whichever
organizations drop out. Every contribution has weight 1, so the sum's sensitivity does not depend
on example counts. The noise is drawn from the operating system's random source (``os.urandom``),
never from a seeded generator.

The accountant (``coordinator/domain/privacy.py``) turns rounds into an epsilon; this module has
no TensorFlow, gRPC, database or accounting code; both daemons import it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg import RandomSource

__all__ = [
    "DifferentialPrivacy",
    "clip_to_norm",
    "gaussian_noise",
    "noise_share_std",
    "privatize_update",
    "privatize_weights",
]

Vector = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DifferentialPrivacy:
    """A job's differential-privacy settings; all zero means the job has none.

    ``clip`` is the L2 bound ``C`` of one organization's update, ``noise_multiplier`` the ratio
    ``z`` of the aggregate noise's standard deviation to ``C``, ``delta`` the delta epsilon is
    reported for, and ``epsilon_budget`` the epsilon a job may spend (0: no budget).
    """

    clip: float = 0.0
    noise_multiplier: float = 0.0
    delta: float = 0.0
    epsilon_budget: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.clip > 0.0

    def problems(self) -> list[str]:
        """What is wrong with the settings, one phrase each (empty when valid)."""
        if self == DifferentialPrivacy():
            return []
        found: list[str] = []
        if not (math.isfinite(self.clip) and self.clip > 0.0):
            found.append("dp.clip must be a positive number when any dp setting is given")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0.0):
            found.append("dp.noise_multiplier must be a positive number")
        if not 0.0 < self.delta < 1.0:
            found.append("dp.delta must be in (0, 1)")
        if not (math.isfinite(self.epsilon_budget) and self.epsilon_budget >= 0.0):
            found.append("dp.epsilon_budget must be 0 (none) or a positive number")
        return found

    def to_json(self) -> dict[str, float]:
        return {
            "clip": self.clip,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
        }

    @classmethod
    def from_json(cls, data: Any) -> DifferentialPrivacy:
        """The settings stored by :meth:`to_json`; jobs stored before them have none."""
        if not isinstance(data, dict):
            return cls()
        return cls(
            clip=float(data.get("clip", 0.0)),
            noise_multiplier=float(data.get("noise_multiplier", 0.0)),
            delta=float(data.get("delta", 0.0)),
            epsilon_budget=float(data.get("epsilon_budget", 0.0)),
        )


def noise_share_std(privacy: DifferentialPrivacy, min_contributors: int) -> float:
    """One organization's noise standard deviation: ``z * C / sqrt(t)``.

    Any ``n >= t`` shares sum to a Gaussian of variance ``n / t * (z * C)^2 >= (z * C)^2``.
    """
    if min_contributors < 1:
        raise ValueError("a round needs at least one contributor")
    return privacy.noise_multiplier * privacy.clip / math.sqrt(min_contributors)


def clip_to_norm(update: Vector, bound: float) -> Vector:
    """``update`` scaled down to L2 norm ``bound`` if it is longer (unchanged otherwise)."""
    norm = float(np.linalg.norm(update))
    if norm <= bound:
        return np.array(update, dtype=np.float64)
    return np.asarray(update, dtype=np.float64) * (bound / norm)


def gaussian_noise(size: int, std: float, random: RandomSource = os.urandom) -> Vector:
    """``size`` independent N(0, std^2) draws from the random source, by Box-Muller.

    Each uniform takes 53 bits of the source (``os.urandom`` in production), so the draws are as
    unpredictable as the operating system's generator; the largest magnitude representable is
    about 8.6 standard deviations (``sqrt(-2 ln 2^-53)``).
    """
    if size < 0 or not (math.isfinite(std) and std >= 0.0):
        raise ValueError("noise needs a non-negative size and standard deviation")
    pairs = (size + 1) // 2
    data = random(16 * pairs)
    if len(data) != 16 * pairs:
        raise ValueError("the random source returned the wrong number of bytes")
    words = np.frombuffer(data, dtype="<u8").reshape(2, pairs) >> np.uint64(11)
    scale = math.ldexp(1.0, -53)
    radius_uniform = (words[0].astype(np.float64) + 1.0) * scale  # (0, 1]: log is finite
    angle_uniform = words[1].astype(np.float64) * scale  # [0, 1)
    radius = np.sqrt(-2.0 * np.log(radius_uniform))
    angle = 2.0 * math.pi * angle_uniform
    normal = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]
    return np.asarray(normal * std, dtype=np.float64)


def privatize_update(
    update: Vector,
    privacy: DifferentialPrivacy,
    min_contributors: int,
    random: RandomSource = os.urandom,
) -> Vector:
    """The update clipped to ``privacy.clip`` plus this organization's noise share."""
    clipped = clip_to_norm(update, privacy.clip)
    std = noise_share_std(privacy, min_contributors)
    return clipped + gaussian_noise(clipped.size, std, random)


def privatize_weights(
    base: Sequence[npt.NDArray[Any]],
    trained: Sequence[npt.NDArray[Any]],
    privacy: DifferentialPrivacy,
    min_contributors: int,
    random: RandomSource = os.urandom,
) -> list[npt.NDArray[np.float32]]:
    """Base weights plus the privatized delta, as float32 tensors: what a plain round sends."""
    base64 = [np.asarray(b, dtype=np.float64) for b in base]
    if len(base64) != len(trained):
        raise ValueError("the trained model has another number of tensors than its base")
    delta = [np.asarray(t, dtype=np.float64) - b for b, t in zip(base64, trained, strict=True)]
    flat = np.concatenate([d.ravel() for d in delta]) if delta else np.zeros(0)
    noisy = privatize_update(flat, privacy, min_contributors, random)
    weights: list[npt.NDArray[np.float32]] = []
    offset = 0
    for b in base64:
        part = noisy[offset : offset + b.size].reshape(b.shape)
        weights.append((b + part).astype(np.float32))
        offset += b.size
    return weights
