"""A secure round with differential privacy: every organization clips its delta, adds its noise
share and contributes with weight 1; the unmasked mean is the clipped mean plus noise of the
job's variance (docs/differential-privacy.md). Driven in-process against a real SecAggServer."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from secure_round_harness import (
    ORGS,
    PHASES,
    Coordinator,
    base_weights,
    local_data,
    make_participant,
    parameters,
)

from examples.synthetic.task import task
from fedsilo.pki import DemoPki, make_demo_pki
from fedsilo.privacy import DifferentialPrivacy, clip_to_norm
from fedsilo.protection import flatten

PRIVACY = DifferentialPrivacy(clip=0.05, noise_multiplier=1.0, delta=1e-5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), ORGS)


@pytest.mark.parametrize("contributors", [3, 2], ids=["everyone", "one-dropped-out"])
def test_the_released_mean_is_the_clipped_mean_plus_the_jobs_noise(
    pki: DemoPki, tmp_path: Path, contributors: int
) -> None:
    # Fixed-seed random sources: the round (keys, masks, noise) is the same on every run.
    participants = [
        make_participant(org, tmp_path / org, pki, random=np.random.default_rng(i).bytes)
        for i, org in enumerate(ORGS)
    ]
    coordinator = Coordinator(pki, privacy=PRIVACY)
    for phase in PHASES[:2]:
        coordinator.run_phase(phase, participants)
    # A dropout after SHARES leaves t = 2 inputs: still the job's full noise in the sum.
    survivors = participants[:contributors]
    for phase in PHASES[2:]:
        coordinator.run_phase(phase, survivors)
    spec = coordinator.params.quantization()
    result = spec.dequantize(coordinator.server.finish())

    # Weight 1 each: the mean does not depend on (or reveal) example counts.
    assert result.total_weight == contributors
    settings = coordinator.keys_task().round_settings()
    base = flatten(base_weights())
    deltas = [
        flatten(task.train(base_weights(), local_data(org), settings).weights) - base
        for org in ORGS[:contributors]
    ]
    assert min(np.linalg.norm(d) for d in deltas) > 2 * PRIVACY.clip  # clipping is active
    clipped_mean = np.mean([clip_to_norm(d, PRIVACY.clip) for d in deltas], axis=0)
    noise = result.mean - clipped_mean
    # n shares of variance (z C)^2 / t with t = 2, divided by n in the mean: the sum's noise
    # has variance n / t * (z C)^2, never below (z C)^2.
    t, n = coordinator.params.threshold, contributors
    assert t == 2
    expected = (PRIVACY.noise_multiplier * PRIVACY.clip) ** 2 * (n / t) / n**2
    # 650 coordinates: the variance ratio's standard error is about 0.055.
    assert 0.8 < np.var(noise) / expected < 1.25
    assert abs(np.mean(noise)) < 6 * np.sqrt(expected / noise.size)


def test_noise_outside_the_quantization_box_is_reported(
    pki: DemoPki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    participants = [make_participant(org, tmp_path / org, pki) for org in ORGS]
    # A box narrower than the noise: many coordinates are clipped, and each organization says so.
    loud = DifferentialPrivacy(clip=0.05, noise_multiplier=100.0, delta=1e-5)
    coordinator = Coordinator(pki, parameters(clip=0.5), privacy=loud)
    with caplog.at_level(logging.WARNING, logger="participant"):
        for phase in PHASES[:3]:
            coordinator.run_phase(phase, participants)
    warnings = [
        r.getMessage() for r in caplog.records if "outside the quantization clip" in r.message
    ]
    assert len(warnings) == len(ORGS)
