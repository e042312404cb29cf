"""fewstep.stats on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic_sweep import rng_frame

from fewstep.stats import (
    knee,
    pair,
    paired_difference,
    pareto_mask,
    percentile_interval,
    steps_to_target,
    two_way_bootstrap,
)


# ---------------------------------------------------------------------- knee
def test_knee_of_piecewise_linear_curves():
    x = np.arange(1, 29)
    assert knee(x, np.minimum(x, 8)) == 8  # rising, concave
    assert knee(x, 1 - np.minimum(x, 8) / 8) == 8  # falling, convex (an LPIPS-like curve)
    study_steps = [1, 2, 4, 6, 8, 12, 16, 20, 28]
    assert knee(study_steps, np.minimum(study_steps, 6.0)) == 6  # uneven steps, as in config.yaml
    # order of the points does not matter
    shuffled = np.random.default_rng(0).permutation(len(study_steps))
    assert knee(np.array(study_steps)[shuffled], np.minimum(study_steps, 6.0)[shuffled]) == 6


def test_knee_sensitivity_and_undefined_cases():
    x = np.array([1, 2, 3, 4, 6, 8, 12, 16, 20, 28])
    curve = np.minimum(x, 8.0)
    assert knee(x, curve, sensitivity=1.0) == 8
    assert knee(x, curve, sensitivity=0.1) == 8
    # a large S asks for more flattening than the curve has after its knee: no knee
    assert knee(x, curve, sensitivity=16.0) is None
    assert knee(x, 2.0 * x) is None  # a straight line has no knee
    assert knee(x, np.full(x.shape, 0.5)) is None  # flat
    assert knee([1, 2], [0.1, 0.5]) is None  # too few points
    assert knee([1, 2, 4, 8], [0.1, np.nan, 0.7, 0.72]) == 4  # the NaN point is left out


# ------------------------------------------------------------------ bootstrap
def test_two_way_bootstrap_interval_covers_the_true_mean_at_its_nominal_rate():
    """Crossed identity and prompt effects: the cluster bootstrap keeps close to 95% coverage
    where resampling images as if independent falls far below it."""
    rng = np.random.default_rng(1)
    runs, hits, iid_hits = 200, 0, 0
    for run in range(runs):
        frame = rng_frame(12, 12, 2, rng, mean=5.0)
        low, high = two_way_bootstrap(frame, ["value"], samples=400, seed=run).interval("value", 0.95)
        hits += low <= 5.0 <= high
        values = frame["value"].to_numpy()
        means = values[rng.integers(0, values.size, (400, values.size))].mean(axis=1)
        iid_low, iid_high = percentile_interval(means, 0.95)
        iid_hits += iid_low <= 5.0 <= iid_high
    assert 0.88 <= hits / runs <= 0.99
    assert iid_hits / runs < 0.6


def test_two_way_bootstrap_is_exact_on_sums_and_skips_missing_values():
    frame = pd.DataFrame(
        {
            "identity": ["a", "a", "b", "b"],
            "prompt_id": ["x", "y", "x", "y"],
            "v": [1.0, 2.0, 3.0, np.nan],
            "w": [1.0, 1.0, 1.0, 1.0],
        }
    )
    boot = two_way_bootstrap(frame, ["v", "w"], samples=500, seed=3)
    assert boot.mean("v") == pytest.approx(2.0)
    assert list(boot.n) == [3, 4]
    assert boot.n_clusters == (2, 2)
    # a constant column has a point interval; v's replicates stay within its values
    assert boot.interval("w", 0.95) == (1.0, 1.0)
    assert np.nanmin(boot.replicates[:, 0]) >= 1.0 and np.nanmax(boot.replicates[:, 0]) <= 3.0
    # the same seed gives the same replicates, another seed others
    again = two_way_bootstrap(frame, ["v", "w"], samples=500, seed=3)
    other = two_way_bootstrap(frame, ["v", "w"], samples=500, seed=4)
    np.testing.assert_array_equal(boot.replicates, again.replicates)
    assert not np.array_equal(np.nan_to_num(boot.replicates), np.nan_to_num(other.replicates))


def test_one_identity_and_one_prompt_collapse_the_interval():
    frame = pd.DataFrame({"identity": ["a"] * 4, "prompt_id": ["x"] * 4, "v": [1.0, 2.0, 3.0, 4.0]})
    assert two_way_bootstrap(frame, ["v"], samples=200).interval("v", 0.95) == (2.5, 2.5)


# ------------------------------------------------------------- paired differences
def test_paired_difference_recovers_a_known_shift():
    rng = np.random.default_rng(7)
    base = rng_frame(6, 5, 2, rng).rename(columns={"value": "id_sim"})
    shifted = base.copy()
    shifted["id_sim"] = base["id_sim"] + 0.05 + rng.normal(0, 0.002, len(base))
    shifted = shifted.sample(frac=1, random_state=0)  # row order must not matter: matched on keys
    diff = paired_difference(shifted, base, "id_sim", samples=1000, confidence=0.95)
    assert diff.n_pairs == len(base)
    assert diff.mean == pytest.approx(0.05, abs=0.002)
    assert diff.low <= 0.05 <= diff.high
    assert diff.high - diff.low < 0.01
    # unpaired, the identity and prompt effects swamp the shift: the two intervals overlap widely
    a = two_way_bootstrap(shifted, ["id_sim"], 1000).interval("id_sim", 0.95)
    b = two_way_bootstrap(base, ["id_sim"], 1000).interval("id_sim", 0.95)
    assert a[0] < b[1] and (a[1] - a[0]) > 20 * (diff.high - diff.low)
    # the opposite direction is the negative
    back = paired_difference(base, shifted, "id_sim", samples=1000, confidence=0.95)
    assert back.mean == pytest.approx(-diff.mean)


def test_pairs_are_matched_on_identity_prompt_and_seed_and_missing_values_drop():
    a = pd.DataFrame(
        {
            "identity": ["i", "i", "j"],
            "prompt_id": ["p", "p", "p"],
            "seed": [0, 1, 0],
            "m": [1.0, 2.0, np.nan],
        }
    )
    b = pd.DataFrame(
        {"identity": ["j", "i", "i"], "prompt_id": ["p", "p", "p"], "seed": [0, 1, 0], "m": [5.0, 1.0, 0.5]}
    )
    paired = pair(a, b, ["m"])
    assert sorted(paired["m_diff"].dropna()) == [0.5, 1.0]
    diff = paired_difference(a, b, "m", samples=200, confidence=0.9)
    assert diff.n_pairs == 2 and diff.mean == pytest.approx(0.75)
    assert paired_difference(a, b, "absent", 200, 0.9).n_pairs == 0


# ------------------------------------------------------------ targets, Pareto
def test_steps_to_target_both_directions():
    steps = [1, 2, 4, 8]
    assert steps_to_target(steps, [0.2, 0.5, 0.58, 0.6], 0.6, 0.95, "higher") == 4  # 0.57 needed
    assert steps_to_target(steps, [0.2, 0.5, 0.56, 0.6], 0.6, 0.95, "higher") == 8
    assert steps_to_target(steps, [0.9, 0.5, 0.41, 0.4], 0.4, 0.95, "lower") == 4  # at most 0.42
    assert steps_to_target(steps, [0.2, 0.3, 0.3, 0.3], 0.6, 0.95, "higher") is None
    assert (
        steps_to_target(steps, [0.2, 0.3, 0.3, 0.3], -0.1, 0.95, "higher") is None
    )  # no ratio to a negative


def test_pareto_mask_keeps_undominated_points():
    cost = [1.0, 2.0, 3.0, 2.5, 4.0, np.nan]
    value = [0.5, 0.7, 0.9, 0.6, 0.9, 1.0]
    assert pareto_mask(cost, value).tolist() == [True, True, True, False, False, False]
    # lower-is-better values flip the order
    assert pareto_mask(cost, value, higher_is_better=False).tolist() == [
        True,
        False,
        False,
        False,
        False,
        False,
    ]
