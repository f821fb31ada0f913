"""Clipping and distributed Gaussian noise (fedsilo.privacy): the noise scale, statistically.

The seeded checks draw their bytes from a fixed-seed generator, so they are deterministic; the
checks on the real ``os.urandom`` source use tolerances of many standard errors of the estimate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from fedsilo.privacy import (
    DifferentialPrivacy,
    clip_to_norm,
    gaussian_noise,
    noise_share_std,
    privatize_update,
    privatize_weights,
)

DP = DifferentialPrivacy(clip=0.5, noise_multiplier=1.2, delta=1e-5, epsilon_budget=10.0)


def seeded(seed: int) -> Callable[[int], bytes]:
    return np.random.default_rng(seed).bytes


def test_gaussian_noise_passes_a_chi_square_test_against_the_normal() -> None:
    draws = gaussian_noise(200_000, 1.0, seeded(1))
    # 20 bins of equal probability under N(0, 1).
    edges = stats.norm.ppf(np.linspace(0.0, 1.0, 21))
    observed, _ = np.histogram(draws, bins=edges)
    chi2 = stats.chisquare(observed)
    assert chi2.pvalue > 1e-3, chi2
    # And a badly scaled generator fails the same test: the check has power.
    wrong, _ = np.histogram(draws * 1.05, bins=edges)
    assert stats.chisquare(wrong).pvalue < 1e-6


def test_gaussian_noise_has_the_requested_variance_and_zero_mean() -> None:
    draws = gaussian_noise(400_000, 0.3, seeded(2))
    assert draws.shape == (400_000,) and draws.dtype == np.float64
    # Standard error of the variance ratio: sqrt(2/n) ~ 0.0022; of the mean: 0.3/sqrt(n).
    assert abs(np.var(draws) / 0.3**2 - 1.0) < 0.015
    assert abs(np.mean(draws)) < 6 * 0.3 / math.sqrt(400_000)


def test_noise_from_the_operating_system_has_the_requested_variance() -> None:
    draws = gaussian_noise(100_001, 2.0)  # os.urandom; odd size uses half a pair
    assert draws.shape == (100_001,)
    # sqrt(2/n) ~ 0.0045: 0.05 is eleven standard errors, never crossed by chance.
    assert abs(np.var(draws) / 4.0 - 1.0) < 0.05
    assert not np.array_equal(draws, gaussian_noise(100_001, 2.0))


def test_the_sum_of_threshold_many_shares_carries_the_target_variance() -> None:
    threshold, count = 4, 50_000
    target = DP.noise_multiplier * DP.clip
    assert noise_share_std(DP, threshold) == pytest.approx(target / 2.0)
    zero = np.zeros(count)
    shares = [privatize_update(zero, DP, threshold, seeded(10 + org)) for org in range(threshold)]
    total = np.sum(shares, axis=0)
    assert abs(np.var(total) / target**2 - 1.0) < 0.04  # sqrt(2/n) ~ 0.0063
    # With dropouts down to fewer than t shares the sum would carry less: 3 of 4 give 3/4.
    partial = np.sum(shares[:3], axis=0)
    assert abs(np.var(partial) / target**2 - 0.75) < 0.04
    # More than t shares (nobody dropped) carry more noise, never less.
    extra = privatize_update(zero, DP, threshold, seeded(99))
    assert np.var(total + extra) > np.var(total)


def test_clipping_scales_long_updates_to_the_bound_and_keeps_short_ones() -> None:
    long = np.array([3.0, 4.0])
    clipped = clip_to_norm(long, 0.5)
    assert np.linalg.norm(clipped) == pytest.approx(0.5)
    assert clipped == pytest.approx([0.3, 0.4])  # the direction is kept
    short = np.array([0.1, -0.2])
    assert np.array_equal(clip_to_norm(short, 0.5), short)


def test_privatize_clips_before_the_noise_is_added() -> None:
    update = np.full(40_000, 1.0)  # norm 200, far above the clip
    noisy = privatize_update(update, DP, 1, seeded(3))
    expected = clip_to_norm(update, DP.clip)
    residual = noisy - expected
    std = noise_share_std(DP, 1)
    assert abs(np.var(residual) / std**2 - 1.0) < 0.05
    assert abs(np.mean(residual)) < 6 * std / math.sqrt(residual.size)


def test_privatize_weights_adds_the_noisy_delta_to_the_base_as_float32() -> None:
    base = [np.ones((2, 3), np.float32), np.zeros(4, np.float32)]
    trained = [b + np.float32(10.0) for b in base]
    sent = privatize_weights(base, trained, DP, 2, seeded(4))
    assert [(w.shape, w.dtype) for w in sent] == [((2, 3), np.float32), ((4,), np.float32)]
    delta = np.concatenate([(s - b).ravel() for s, b in zip(sent, base, strict=True)])
    again = privatize_update(np.full(10, 10.0), DP, 2, seeded(4))
    assert delta == pytest.approx(again, abs=1e-6)


def test_settings_problems_and_json() -> None:
    assert DifferentialPrivacy().problems() == [] and not DifferentialPrivacy().enabled
    assert DP.problems() == [] and DP.enabled
    assert DifferentialPrivacy.from_json(DP.to_json()) == DP
    assert DifferentialPrivacy.from_json(None) == DifferentialPrivacy()
    bad = DifferentialPrivacy(clip=-1.0, noise_multiplier=0.0, delta=1.0, epsilon_budget=-2.0)
    assert len(bad.problems()) == 4
    assert DifferentialPrivacy(clip=1.0, noise_multiplier=1.0).problems() == [
        "dp.delta must be in (0, 1)"
    ]


def test_a_short_random_source_is_refused() -> None:
    with pytest.raises(ValueError, match="wrong number of bytes"):
        gaussian_noise(4, 1.0, lambda n: os.urandom(n - 1))
