"""fewstep.analysis.stats on synthetic data with known answers, and its claims checked by simulation
at the design sizes the configs ship with (seeded, vectorised: seconds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic_sweep import curve_frame, rng_frame

from fewstep.analysis.coverage import (
    SHAPES,
    VALUE_SCALES,
    coverage_table,
    design_codes,
    fewest_identities,
    simulate,
    spread,
    width_by_identities,
)
from fewstep.analysis.metric_registry import METRICS
from fewstep.analysis.stats import (
    Bounds,
    crossed_components,
    fewest_lasting,
    knee,
    knee_test,
    mean_interval,
    pair,
    paired_difference,
    pareto_mask,
    ratio_interval,
    two_way_bootstrap,
)

STUDY_STEPS = [1, 2, 4, 6, 8, 12, 16, 20, 28]  # flux-dev in config.yaml


# ------------------------------------------------------------- the estimator
def test_balanced_variance_is_the_two_way_anova_estimate_with_satterthwaite_df():
    """Against the textbook mean squares computed from cell, row and column means."""
    rng = np.random.default_rng(0)
    shape = (5, 6, 3)
    y = simulate(shape, (1.0, 0.7, 0.5, 1.0), 1, rng)[0]
    parts = crossed_components(y, *design_codes(shape))
    cube = y.reshape(shape)
    n_i, n_p, n_s = shape
    m, mi, mp, mip = cube.mean(), cube.mean((1, 2)), cube.mean((0, 2)), cube.mean(2)
    ms_a = n_p * n_s * ((mi - m) ** 2).sum() / (n_i - 1)
    ms_b = n_i * n_s * ((mp - m) ** 2).sum() / (n_p - 1)
    ms_ab = n_s * ((mip - mi[:, None] - mp[None, :] + m) ** 2).sum() / ((n_i - 1) * (n_p - 1))
    assert ms_a > ms_ab and ms_b > ms_ab  # no truncation in this draw
    total = ms_a + ms_b - ms_ab
    df = total**2 / (ms_a**2 / (n_i - 1) + ms_b**2 / (n_p - 1) + ms_ab**2 / ((n_i - 1) * (n_p - 1)))
    assert parts.mean[0] == pytest.approx(m)
    assert parts.variance[0] == pytest.approx(total / y.size)
    assert parts.df[0] == pytest.approx(df)


def test_unbalanced_variance_is_the_two_way_cluster_robust_sum():
    """With missing images: IP/((I-1)(P-1)) x (sum T_i^2 + sum T_p^2 - sum T_ip^2) / n^2, T the
    residual sums per identity, prompt and pair (Cameron-Gelbach-Miller), from pandas groupby."""
    rng = np.random.default_rng(1)
    frame = rng_frame(4, 6, 3, rng)
    frame.loc[rng.random(len(frame)) < 0.2, "value"] = np.nan
    parts = crossed_components(frame["value"].to_numpy(), *design_codes((4, 6, 3)))
    kept = frame.dropna()
    resid = kept["value"] - kept["value"].mean()
    sums = [
        (resid.groupby([kept[k] for k in keys]).sum() ** 2).sum()
        for keys in (["identity"], ["prompt_id"], ["identity", "prompt_id"])
    ]
    expected = 4 * 6 / (3 * 5) * (sums[0] + sums[1] - sums[2]) / len(kept) ** 2
    assert parts.n[0] == len(kept)
    assert parts.variance[0] == pytest.approx(expected)


def test_one_identity_holds_it_fixed_and_constant_values_give_a_point():
    frame = rng_frame(1, 5, 2, np.random.default_rng(2))
    result = mean_interval(frame, "value", 0.95)
    prompt_means = frame.groupby("prompt_id")["value"].mean()
    half = (result.high - result.low) / 2
    from scipy import stats

    expected = stats.t.ppf(0.975, 4) * prompt_means.std(ddof=1) / np.sqrt(5)
    assert half == pytest.approx(expected) and result.df == pytest.approx(4)
    assert (result.n_identities, result.n_prompts) == (1, 5)
    frame["value"] = 2.0
    assert mean_interval(frame, "value", 0.95).low == mean_interval(frame, "value", 0.95).high == 2.0
    seeds_only = pd.DataFrame({"identity": ["a"] * 4, "prompt_id": ["x"] * 4, "v": [1.0, 2.0, 3.0, 4.0]})
    result = mean_interval(seeds_only, "v", 0.95)
    assert result.mean == 2.5 and result.df == 3 and result.low < 1.5
    assert np.isnan(mean_interval(seeds_only.iloc[:1], "v", 0.95).low)


# ---------------------------------------------------------------- coverage
#: the other designs the configs ship: the demo's FLUX 2 x 2 x 1 and SD 1 x 2 x 1, the study's SD 3 x 3 x 2
SHIPPED = ((2, 2, 1), (1, 2, 1), (3, 3, 2))


@pytest.fixture(scope="module")
def coverage():
    return coverage_table(SHAPES + SHIPPED, reps=2000, seed=0)


def test_coverage_at_the_study_sizes(coverage):
    """The claim behind every interval: >= 90% coverage of a 95% interval from 4 identities on,
    for means and paired differences, under every variance mix (an identity-specific effect too)."""
    shapes = list(zip(coverage["identities"], coverage["prompts"], coverage["seeds"], strict=True))
    checked = np.array([shape in SHAPES for shape in shapes])
    coverage = coverage[(coverage["scale"] == "unbounded").to_numpy() & checked]
    worst = coverage.groupby(["identities", "quantity"])["coverage"].min()
    assert (worst.loc[[4, 12]] >= 0.93).all(), worst
    assert (worst.loc[2] >= 0.88).all(), worst  # the shipped 2 x 8 x 4: near, not at, 90%
    assert (coverage["coverage"] <= 0.995).all()  # not vacuous: intervals are not infinite
    assert fewest_identities(coverage[coverage["prompts"] >= 8]) == 4
    # the price of few identities: a cell mean's interval at 2 identities is ~3x that at 4
    widths = coverage[(coverage["scenario"] == "identity + prompt") & (coverage["quantity"] == "mean")]
    widths = widths.set_index("identities")["mean_width"]
    assert widths[2] > 2.5 * widths[4] > 2.5 * widths[12]


def test_bounded_intervals_stay_in_range_and_cover_at_the_shipped_sizes(coverage):
    """What the report prints for a cosine, a 0/1 rate and a time: every interval inside its range
    (a mean's and a paired difference's), and where one is given it covers like the unbounded one;
    a 0/1 rate whose items all sit on a bound gets none ("too few items to estimate")."""
    bounded = coverage[coverage["scale"] != "unbounded"]
    assert set(bounded["scale"]) == {s.name for s in VALUE_SCALES if s.link is not None}
    assert (bounded["in_range"] == 1.0).all()
    worst = bounded.groupby(["scale", "identities", "prompts", "seeds"])["coverage"].min()
    assert (worst.xs(4, level="identities") >= 0.93).all() and (
        worst.xs(12, level="identities") >= 0.93
    ).all()
    assert (worst.xs((2, 8, 4), level=["identities", "prompts", "seeds"]) >= 0.88).all(), worst
    assert (worst.xs((3, 3, 2), level=["identities", "prompts", "seeds"]) >= 0.92).all(), worst
    assert (worst.xs((2, 2, 1), level=["identities", "prompts", "seeds"]) >= 0.95).all(), worst
    # continuous values always get an interval; a 0/1 rate near 1 on 4 items mostly does not
    estimated = bounded.groupby(["scale", "identities", "prompts", "seeds"])["estimated"].min()
    assert (estimated.drop("0/1 rate, mean near 0.9", level="scale") == 1.0).all()
    assert estimated.loc[("0/1 rate, mean near 0.9", 2, 2, 1)] < 0.5
    assert estimated.loc[("0/1 rate, mean near 0.9", 4, 8, 4)] == 1.0


def test_a_mean_near_its_bound_gets_an_asymmetric_interval_inside_the_range():
    """The demo's schnell-1 case: a cosine mean of 0.72 on 2 x 2 x 1 printed [0.302, 1.139]."""
    frame = pd.DataFrame({"identity": [0, 0, 1, 1], "prompt_id": [0, 1, 0, 1], "seed": 0})
    frame["id_sim"] = [0.95, 0.9, 0.5, 0.53]
    linear = mean_interval(frame, "id_sim", 0.95)
    assert linear.high > 1  # what the page printed before
    cosine = mean_interval(frame, "id_sim", 0.95, bounds=METRICS["id_sim"].bounds)
    assert cosine.mean == linear.mean and -1 < cosine.low < cosine.mean < cosine.high < 1
    assert cosine.high - cosine.mean < cosine.mean - cosine.low  # squeezed towards the bound
    # times: on the log scale, positive; a difference of times is unbounded
    frame["end_to_end_s"] = [0.2, 1.4, 0.3, 0.4]
    assert mean_interval(frame, "end_to_end_s", 0.95).low < 0
    seconds = mean_interval(frame, "end_to_end_s", 0.95, bounds=METRICS["end_to_end_s"].bounds)
    assert 0 < seconds.low < seconds.mean < seconds.high
    assert np.isinf(METRICS["end_to_end_s"].bounds.difference().high)
    # a far-from-bound mean is nearly the linear interval
    frame["id_sim"] = [0.02, 0.01, -0.01, 0.0]
    near = mean_interval(frame, "id_sim", 0.95, bounds=Bounds(-1, 1))
    assert near.low == pytest.approx(mean_interval(frame, "id_sim", 0.95).low, rel=0.01)


def test_no_interval_where_every_value_sits_on_a_bound():
    frame = pd.DataFrame({"identity": [0, 0, 1, 1], "prompt_id": [0, 1, 0, 1], "seed": 0})
    frame["face_detected"] = 1.0
    rate = mean_interval(frame, "face_detected", 0.95, bounds=METRICS["face_detected"].bounds)
    assert rate.mean == 1.0 and np.isnan(rate.low) and np.isnan(rate.high)
    other = frame.assign(face_detected=[1.0, 1.0, 0.0, 0.0])
    diff = paired_difference(frame, other, "face_detected", 0.95, METRICS["face_detected"].bounds)
    assert diff.mean == 0.5 and diff.low >= -1 and diff.high <= 1
    same = paired_difference(frame, frame, "face_detected", 0.95, METRICS["face_detected"].bounds)
    assert same.mean == 0.0 and np.isnan(same.low)  # 0/1 values that all agree: no spread to read
    # a continuous metric that does not move has a point interval
    frame["id_sim"] = 0.4
    assert mean_interval(frame, "id_sim", 0.95, bounds=Bounds(-1, 1)).low == 0.4


def test_the_percentile_bootstrap_misses_where_the_crossed_interval_does_not():
    """The estimator this replaced, at the shipped 2 x 8 x 4: well below 90%."""
    rng = np.random.default_rng(5)
    shape, reps = (2, 8, 4), 300
    data = simulate(shape, (1.0, 1.0, 0.0, 1.0), reps, rng)
    identity, prompt = design_codes(shape)
    frame = pd.DataFrame({"identity": identity, "prompt_id": prompt})
    hits = 0
    for k in range(reps):
        frame["v"] = data[k]
        low, high = np.quantile(two_way_bootstrap(frame, ["v"], 400, seed=k)[:, 0], [0.025, 0.975])
        hits += low <= 0 <= high
    assert hits / reps < 0.85


def test_spread_recovers_the_components_and_projects_the_width():
    rng = np.random.default_rng(8)
    shape = (60, 40, 2)
    identity, prompt = design_codes(shape)
    frame = pd.DataFrame({"identity": identity, "prompt_id": prompt})
    values = simulate(shape, (0.5, 0.3, 0.0, 1.0), 1, rng)[0]
    s_i, s_p, _, s_e = spread(values, frame)
    assert (
        s_i == pytest.approx(0.5, rel=0.2)
        and s_p == pytest.approx(0.3, rel=0.25)
        and s_e == pytest.approx(1.0, rel=0.05)
    )
    # projected to the data's own size, the simulated width is the width its own interval has
    small = (4, 8, 4)
    frame = pd.DataFrame(dict(zip(("identity", "prompt_id"), design_codes(small), strict=True)))
    data = simulate(small, (0.5, 0.3, 0.0, 1.0), 300, rng)
    own = [mean_interval(frame.assign(v=row), "v", 0.95) for row in data[:300]]
    own_width = np.mean([r.high - r.low for r in own])
    projected = width_by_identities((4,), 8, 4, (0.5, 0.3, 0.0, 1.0), reps=1000)["mean_width"].iloc[0]
    assert projected == pytest.approx(own_width, rel=0.1)


def test_width_falls_with_identities():
    table = width_by_identities((2, 4, 8, 16), reps=400).set_index("identities")["mean_width"]
    assert table.is_monotonic_decreasing and table[16] < 0.25 * table[2]


# ------------------------------------------------------- paired, ratios
def test_paired_difference_recovers_a_known_shift_and_counts_its_pairs():
    rng = np.random.default_rng(7)
    base = rng_frame(6, 5, 2, rng).rename(columns={"value": "id_sim"})
    shifted = base.copy()
    shifted["id_sim"] = base["id_sim"] + 0.05 + rng.normal(0, 0.002, len(base))
    shifted.loc[shifted.index[:3], "id_sim"] = np.nan  # no face in three images
    shifted = shifted.sample(frac=1, random_state=0)  # row order must not matter: matched on keys
    diff = paired_difference(shifted, base, "id_sim", confidence=0.95)
    assert (diff.n, diff.n_items) == (len(base) - 3, len(base))
    assert diff.mean == pytest.approx(0.05, abs=0.002)
    assert diff.low <= 0.05 <= diff.high and diff.high - diff.low < 0.01
    # unpaired, the identity and prompt effects swamp the shift
    a, b = mean_interval(shifted, "id_sim", 0.95), mean_interval(base, "id_sim", 0.95)
    assert a.low < b.high and (a.high - a.low) > 20 * (diff.high - diff.low)
    back = paired_difference(base, shifted, "id_sim", confidence=0.95)
    assert back.mean == pytest.approx(-diff.mean)
    assert paired_difference(base, shifted, "absent", 0.95).n == 0


def test_pairs_are_matched_on_identity_prompt_and_seed():
    a = pd.DataFrame(
        {"identity": ["i", "i", "j"], "prompt_id": ["p"] * 3, "seed": [0, 1, 0], "m": [1.0, 2.0, np.nan]}
    )
    b = pd.DataFrame(
        {"identity": ["j", "i", "i"], "prompt_id": ["p"] * 3, "seed": [0, 1, 0], "m": [5.0, 1.0, 0.5]}
    )
    assert sorted(pair(a, b, ["m"])["m_diff"].dropna()) == [0.5, 1.0]
    diff = paired_difference(a, b, "m", confidence=0.9)
    assert (diff.n, diff.n_items) == (2, 3) and diff.mean == pytest.approx(0.75)


def test_ratio_interval_delta_method():
    rng = np.random.default_rng(3)
    frame = rng_frame(4, 8, 4, rng)
    frame["slow"] = 3.3 + 0.0 * frame["value"]
    frame["fast"] = 0.8
    exact = ratio_interval(frame, "slow", "fast", 0.95)
    assert exact.mean == pytest.approx(3.3 / 0.8) and exact.low == pytest.approx(exact.high)
    frame["slow"] = 3.3 * np.exp(rng.normal(0, 0.05, len(frame)))
    frame["fast"] = 0.8 * np.exp(rng.normal(0, 0.05, len(frame)))
    noisy = ratio_interval(frame, "slow", "fast", 0.95)
    assert noisy.low < 3.3 / 0.8 < noisy.high and noisy.high - noisy.low < 0.4 and noisy.n == 128


def simulated_ratios(shape: tuple[int, int, int], reps: int, rng: np.random.Generator) -> list:
    """Latency ratio intervals of seeded sweeps: each image's time in both cells shares its
    identity's and prompt's effect (log-normal, sd 0.1) and has its own noise; true ratio 3.3/0.8."""
    n_identities, n_prompts, n_seeds = shape
    i, p, s = np.meshgrid(range(n_identities), range(n_prompts), range(n_seeds), indexing="ij")
    frame = pd.DataFrame({"identity": i.ravel(), "prompt_id": p.ravel(), "seed": s.ravel()})
    intervals = []
    for _ in range(reps):
        shared = rng.normal(0, 0.1, n_identities)[i.ravel()] + rng.normal(0, 0.1, n_prompts)[p.ravel()]
        frame["slow"] = 3.3 * np.exp(shared + rng.normal(0, 0.1, len(frame)))
        frame["fast"] = 0.8 * np.exp(shared + rng.normal(0, 0.1, len(frame)))
        intervals.append(ratio_interval(frame, "slow", "fast", 0.95))
    return intervals


@pytest.mark.parametrize("shape", [(2, 8, 4), (3, 3, 2)])  # the study's FLUX and SD designs
def test_ratio_intervals_cover_at_the_shipped_sizes(shape):
    intervals = simulated_ratios(shape, 400, np.random.default_rng(11))
    coverage = np.mean([r.low <= 3.3 / 0.8 <= r.high for r in intervals])
    assert coverage >= 0.93, coverage


def test_ratio_intervals_stay_positive_on_the_demos_two_by_two_design():
    """On the ratio's own scale the delta method gave lower bounds below zero at 2 x 2 x 1."""
    intervals = simulated_ratios((2, 2, 1), 200, np.random.default_rng(12))
    assert all(0 < r.low <= r.mean <= r.high for r in intervals)


# ------------------------------------------------------------------ knees
def test_kneedle_on_piecewise_linear_curves():
    x = np.arange(1, 29)
    assert knee(x, np.minimum(x, 8)) == 8  # rising, concave
    assert knee(x, 1 - np.minimum(x, 8) / 8) == 8  # falling, convex (an LPIPS-like curve)
    assert knee(STUDY_STEPS, np.minimum(STUDY_STEPS, 6.0)) == 6
    shuffled = np.random.default_rng(0).permutation(len(STUDY_STEPS))
    assert knee(np.array(STUDY_STEPS)[shuffled], np.minimum(STUDY_STEPS, 6.0)[shuffled]) == 6
    uneven = np.array([1, 2, 3, 4, 6, 8, 12, 16, 20, 28])
    assert knee(uneven, np.minimum(uneven, 8.0), sensitivity=0.1) == 8
    assert knee(uneven, np.minimum(uneven, 8.0), sensitivity=16.0) is None  # asks for more flattening
    assert knee(x, 2.0 * x) is None and knee(x, np.full(x.shape, 0.5)) is None
    assert knee([1, 2], [0.1, 0.5]) is None
    assert knee([1, 2, 4, 8], [0.1, np.nan, 0.7, 0.72]) == 4


def _knees(shape, curve, draws, seed, samples=200):
    rng = np.random.default_rng(seed)
    columns = [f"s{s}" for s in STUDY_STEPS]
    return [
        knee_test(
            curve_frame(STUDY_STEPS, curve, shape, rng), STUDY_STEPS, columns, 0.95, samples=samples, seed=k
        )
        for k in range(draws)
    ]


@pytest.mark.parametrize("shape", [(2, 8, 4), (4, 8, 4)])
def test_flat_noisy_curves_rarely_show_a_knee(shape):
    """Kneedle alone calls a knee on nearly every flat noisy curve; the tested knee on <= 5%."""
    results = _knees(shape, lambda s: 0.6, 200, seed=11)
    assert sum(r.candidate is not None for r in results) > 150
    false_knees = sum(r.steps is not None for r in results)
    assert false_knees <= 10, false_knees
    assert {r.verdict for r in results if r.steps is None} <= {
        "no knee: flat within noise",
        "no knee: does not flatten beyond noise",
        "no knee: Kneedle finds none",
        "no knee: the curve does not flatten inside the steps",
    }


@pytest.mark.parametrize("shape", [(2, 8, 4), (4, 8, 4)])
def test_noisy_saturating_curves_show_their_knee(shape):
    results = _knees(shape, lambda s: 0.6 * min(s, 6) / 6, 40, seed=12)
    right = [r for r in results if r.steps == 6]
    assert len(right) >= 36, [r.steps for r in results]
    assert all(r.low <= 6 <= r.high for r in right)
    assert all(r.rise.low > 0 and r.flattening.low > 0 for r in right)


def test_a_straight_noisy_line_does_not_flatten():
    results = _knees((4, 8, 4), lambda s: 0.02 * s, 40, seed=13)
    assert sum(r.steps is not None for r in results) <= 2


def test_knee_of_a_falling_curve():
    result = _knees((4, 8, 4), lambda s: 0.5 - 0.3 * min(s, 8) / 8, 1, seed=14)[0]
    assert result.steps == 8 and result.rise.low > 0  # the rise is measured in the curve's direction


# ------------------------------------------------------- regime, Pareto
def test_fewest_lasting():
    steps = [1, 2, 4, 8, 16]
    assert fewest_lasting(steps, [False, True, True, True, True]) == 2
    assert fewest_lasting(steps, [True, False, True, True, True]) == 4  # must hold for every larger count
    assert fewest_lasting(steps, [True, True, True, True, False]) is None
    assert fewest_lasting(list(reversed(steps)), [True, True, True, False, False]) == 4


def test_pareto_mask_keeps_undominated_points():
    cost = [1.0, 2.0, 3.0, 2.5, 4.0, np.nan]
    value = [0.5, 0.7, 0.9, 0.6, 0.9, 1.0]
    assert pareto_mask(cost, value).tolist() == [True, True, True, False, False, False]
    assert pareto_mask(cost, value, higher_is_better=False).tolist() == [True] + [False] * 5
