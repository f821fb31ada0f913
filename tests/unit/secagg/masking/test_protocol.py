"""Whole rounds: the unmasked sum equals the plaintext sum over exactly the survivors (U3).

Dropouts at every phase (docs/fault-matrix.md R1-R4), random cohorts, thresholds and vector lengths;
the dequantized weighted mean is within the documented bound.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from secagg_harness import (
    Drop,
    Stage,
    drive,
    expected_survivors,
    make_cohort,
    plain_sum,
    run_round,
)

from secagg import NotEnoughSurvivors, QuantizationSpec, ServerPhase
from secagg.primitives.prg import SEGMENT_BYTES

# AFTER_SHARES twice: it is the case that exercises s_sk reconstruction (R2).
PHASE_DROPS = st.sampled_from([d for d in Drop if d is not Drop.NEVER] + [Drop.AFTER_SHARES])


def _draw_drops(data: st.DataObject, members: tuple[str, ...], t: int) -> dict[str, Drop]:
    # Up to n - t + 1 participants stop, each at a random phase: n - t drops always complete,
    # one more aborts at the phase where the survivors fall below t.
    count = data.draw(st.sampled_from(range(len(members) - t + 2)), label="dropouts")
    dropped = data.draw(st.permutations(members), label="order")[:count]
    return {member: data.draw(PHASE_DROPS, label=member) for member in dropped}


@pytest.mark.parametrize("key_kind", ["ed25519", "ecdsa-p256"])
@pytest.mark.parametrize("bits", [32, 64])
def test_no_dropout(key_kind: str, bits: int) -> None:
    cohort = make_cohort(4, 3, vector_length=33, modulus_bits=bits, key_kind=key_kind)
    inputs = cohort.vectors()
    result = run_round(cohort, inputs)
    assert result.contributors == cohort.config.cohort
    assert np.array_equal(result.total, plain_sum(inputs, cohort.config.cohort))
    assert result.total.dtype == cohort.config.dtype
    assert result.server.phase is ServerPhase.FINISHED


def test_inputs_and_their_sum_stay_masked_until_unmasking() -> None:
    cohort = make_cohort(3, 2, vector_length=64)
    inputs = cohort.vectors()
    driven = drive(cohort, inputs, through=Stage.SHARES)
    masked = {
        member: client.mask_input(driven.server.shares_for(member), inputs[member]).vector
        for member, client in cohort.clients.items()
    }
    for member, vector in masked.items():
        # Uniform masks: a word survives unchanged with probability 2^-32.
        assert np.count_nonzero(vector == inputs[member]) <= 1
    # The pairwise masks cancel in the sum, the self masks PRG(b_u) do not.
    masked_sum = plain_sum(masked, cohort.config.cohort)
    assert np.count_nonzero(masked_sum == plain_sum(inputs, cohort.config.cohort)) <= 1


@pytest.mark.parametrize(
    ("drop", "included"),
    [
        (Drop.AFTER_INPUT, True),  # R1: input sent, gone before UNMASK -> in the sum
        (Drop.DURING_UNMASK, True),  # R3: answers from the others suffice
        (Drop.AFTER_SHARES, False),  # R2: masks cancelled through s_sk shares -> not in the sum
        (Drop.AFTER_KEYS, False),
        (Drop.BEFORE_KEYS, False),
    ],
)
def test_one_dropout_at_each_phase(drop: Drop, included: bool) -> None:
    cohort = make_cohort(5, 3, vector_length=20)
    inputs = cohort.vectors(seed=1)
    result = run_round(cohort, inputs, {"org-02": drop})
    assert ("org-02" in result.contributors) is included
    assert np.array_equal(result.total, plain_sum(inputs, result.contributors))


@pytest.mark.parametrize(
    "drop",
    [Drop.BEFORE_KEYS, Drop.AFTER_KEYS, Drop.AFTER_SHARES, Drop.AFTER_INPUT, Drop.DURING_UNMASK],
)
def test_fewer_than_t_at_any_phase_aborts_and_releases_nothing(drop: Drop) -> None:
    # R4: 5 participants, t = 4, two drop at the same phase.
    cohort = make_cohort(5, 4, vector_length=4)
    with pytest.raises(NotEnoughSurvivors, match="fewer than t=4"):
        run_round(cohort, cohort.vectors(), {"org-00": drop, "org-04": drop})


def test_many_dropouts_at_mixed_phases() -> None:
    cohort = make_cohort(20, 11, vector_length=10, key_kind="ecdsa-p256")
    inputs = cohort.vectors(seed=3)
    drops = {
        "org-00": Drop.BEFORE_KEYS,
        "org-03": Drop.AFTER_KEYS,
        "org-05": Drop.AFTER_SHARES,
        "org-06": Drop.AFTER_SHARES,
        "org-13": Drop.AFTER_SHARES,
        "org-19": Drop.AFTER_SHARES,
        "org-07": Drop.AFTER_INPUT,
        "org-11": Drop.DURING_UNMASK,
        "org-12": Drop.DURING_UNMASK,
    }
    result = run_round(cohort, inputs, drops)
    gone = {m for m, d in drops.items() if d not in (Drop.AFTER_INPUT, Drop.DURING_UNMASK)}
    assert set(result.contributors) == set(cohort.config.cohort) - gone
    assert np.array_equal(result.total, plain_sum(inputs, result.contributors))


def test_multi_segment_vectors_and_threads() -> None:
    cohort = make_cohort(3, 2, vector_length=SEGMENT_BYTES // 4 + 5)
    inputs = cohort.vectors(seed=2)
    result = run_round(cohort, inputs, {"org-01": Drop.AFTER_SHARES}, workers=3)
    assert np.array_equal(result.total, plain_sum(inputs, ["org-00", "org-02"]))


@pytest.mark.slow  # 40 whole protocol runs: about 4 s
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_sum_over_exactly_the_survivors(data: st.DataObject) -> None:
    n = data.draw(st.sampled_from(range(2, 21)), label="n")
    t = data.draw(st.integers(n // 2 + 1, n), label="t")
    cohort = make_cohort(
        n,
        t,
        vector_length=data.draw(st.integers(1, 40), label="length"),
        modulus_bits=data.draw(st.sampled_from([32, 64]), label="k"),
    )
    drops = _draw_drops(data, cohort.config.cohort, t)
    inputs = cohort.vectors(seed=data.draw(st.integers(0, 3), label="seed"))
    phases = expected_survivors(cohort, drops)
    if any(len(members) < t for members in phases):
        event("aborted: fewer than t")
        with pytest.raises(NotEnoughSurvivors):
            run_round(cohort, inputs, drops)
        return
    event(f"completed, {len(phases[1]) - len(phases[2])} dropped after sharing keys")
    result = run_round(cohort, inputs, drops)
    assert list(result.contributors) == phases[2]  # U3: everyone whose masked input arrived
    assert np.array_equal(result.total, plain_sum(inputs, result.contributors))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_dequantized_weighted_mean_within_the_bound(data: st.DataObject) -> None:
    n = data.draw(st.sampled_from(range(2, 9)), label="n")
    t = data.draw(st.integers(n // 2 + 1, n), label="t")
    dim = data.draw(st.integers(1, 12), label="dim")
    spec = QuantizationSpec(
        clip=2.0,
        levels_bits=data.draw(st.integers(4, 16), label="q"),
        modulus_bits=32,
        max_participants=n,
        max_weight=100,
    )
    cohort = make_cohort(n, t, vector_length=spec.encoded_length(dim))
    floats = st.floats(-3.0, 3.0, allow_nan=False, width=32)
    updates = {
        m: np.array(data.draw(st.lists(floats, min_size=dim, max_size=dim)), dtype=np.float32)
        for m in cohort.config.cohort
    }
    weights = {m: data.draw(st.integers(1, 100)) for m in cohort.config.cohort}
    inputs = {m: spec.quantize(updates[m], weights[m]) for m in cohort.config.cohort}
    drops = _draw_drops(data, cohort.config.cohort, t)
    if any(len(members) < t for members in expected_survivors(cohort, drops)):
        event("aborted: fewer than t")
        with pytest.raises(NotEnoughSurvivors):
            run_round(cohort, inputs, drops)
        return
    event("completed")
    result = run_round(cohort, inputs, drops)
    decoded = spec.dequantize(result.total)
    total_weight = sum(weights[m] for m in result.contributors)
    expected = (
        sum(weights[m] * np.clip(updates[m].astype(np.float64), -2, 2) for m in result.contributors)
        / total_weight
    )
    assert decoded.total_weight == total_weight
    assert np.max(np.abs(decoded.mean - expected)) <= spec.mean_error_bound + 1e-12
