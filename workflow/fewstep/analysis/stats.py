"""Statistics of a sweep: crossed random-effects intervals, paired differences, knees, Pareto.

Images of one cell are not independent draws: the same identity (and the same prompt)
appears in many of them. Every value is modelled as crossed random effects,

    y = mu + a_identity + b_prompt + (ab)_identity,prompt + e_seed,

and the variance of a mean over the sweep is estimated by the method of moments
(ANOVA mean squares): Var(mean) = (MS_identity + MS_prompt - MS_interaction) / n, each
main-effect variance component truncated at zero (the term of a factor whose mean square
does not exceed the interaction's is dropped and that part of the variance is the
interaction's). The interval is mean +- t x se, with t on Satterthwaite's degrees of freedom
for that combination of mean squares. With 4 identities an identity effect is estimated from
3 degrees of freedom: a normal quantile, or the two-way cluster bootstrap used before (which
has no small-sample correction), covers far below nominal there (79% at 2 x 8 x 4 in the
issue-15 measurements), while the t quantile keeps the coverage near nominal at the cost of
honest width. `fewstep.analysis.coverage.coverage_table` measures it by simulation at any design
size; the test suite asserts the levels at 2 x 8 x 4, 4 x 8 x 4 and 12 x 12 x 4, and the report prints them.

The mean squares are computed from residual sums per identity, per prompt and per (identity,
prompt), so a missing value (no face found) just leaves the sums: on a balanced design they are
exactly the two-way ANOVA's, on an unbalanced one the two-way cluster-robust (Cameron, Gelbach
& Miller) sums with the same small-sample factors. A factor with one level (one identity) is
held fixed: the interval then speaks for that identity only, and the report says so.

An interval respects the range of its metric (`Bounds`, from the metric registry): the mean and its
standard error are carried by the delta method to a scale where the range holds, the t interval is
taken there and mapped back (`Bounds.limits`): log(mean - low) for a quantity bounded on one side
(times), logit((mean - low) / (high - low)) for one bounded on both (a rate; for a cosine in [-1, 1]
that is Fisher's z). A paired difference of such a metric lies in [-(high - low), high - low] and
is treated the same way. Where the variance cannot be estimated (one value) the interval is NaN and
the report says "too few items to estimate". `fewstep.analysis.coverage` measures the coverage of
these intervals by simulation on each kind of scale.

Differences between cells are paired on (identity, prompt, seed), so effects shared by both
cells cancel; a ratio of means (latency) is linearised on the log scale (delta method), goes
through the same estimator and is exponentiated back, so its interval stays positive (the test
suite measures its coverage at the shipped designs). Knees are Kneedle's (`kneed`), reported
only when the rise up to the knee and the flattening after it both exceed their own intervals;
the knee's interval comes from a two-way cluster bootstrap of the curve (identities and prompts
redrawn, shared across the curve's cells).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

#: (identity, prompt) are the crossed random factors; seed completes an item's key
CLUSTERS = ("identity", "prompt_id")
ITEM_KEYS = ("identity", "prompt_id", "seed")


# ------------------------------------------------------------ ranges
@dataclass(frozen=True)
class Bounds:
    """The values a quantity can take (infinite: unbounded on that side)."""

    low: float = -np.inf
    high: float = np.inf

    def difference(self) -> Bounds:
        """The range of a difference of two such values."""
        width = self.high - self.low
        return Bounds(-width, width)

    def holds(self, value: float) -> bool:
        return bool(self.low <= value <= self.high)

    def on_bounds(self, values: np.ndarray) -> np.ndarray:
        """Per row of `values` (replicates x images, NaN = missing): whether every value sits on a
        finite bound (a 0/1 rate always does; a cosine of 1 everywhere does)."""
        values = np.atleast_2d(np.asarray(values, dtype=float))
        edge = np.isin(values, [b for b in (self.low, self.high) if np.isfinite(b)]) | np.isnan(values)
        return edge.all(axis=1)

    def limits(
        self, mean: np.ndarray, half: np.ndarray, on_bounds: np.ndarray | bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """mean +- half (t x se on the value's own scale) taken on the scale where the range holds
        and mapped back (delta method: the half width there is g'(mean) x half). No spread where
        every value sits on a bound (`on_bounds`: all items 1, or differences of 0/1 values that
        all agree) gives no interval (NaN): the estimator sees no variance where the items are too
        few to show any. A mean on or beyond a bound with a positive half width (values outside
        the declared range) gets the linear interval cut at the range."""
        mean, half = np.broadcast_arrays(np.asarray(mean, dtype=float), np.asarray(half, dtype=float))
        low, high = mean - half, mean + half
        lower, upper = np.isfinite(self.low), np.isfinite(self.high)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if lower and upper:
                width = self.high - self.low
                share = (mean - self.low) / width
                inside = (share > 0) & (share < 1)
                z = np.log(share / (1 - share))
                dz = half / (width * share * (1 - share))
                t_low, t_high = (
                    self.low + width / (1 + np.exp(dz - z)),
                    self.low + width / (1 + np.exp(-z - dz)),
                )
            elif lower or upper:
                gap = mean - self.low if lower else self.high - mean
                inside = gap > 0
                factor = np.exp(half / gap)
                near, far = gap / factor, gap * factor
                t_low, t_high = (
                    (self.low + near, self.low + far) if lower else (self.high - far, self.high - near)
                )
            else:
                return low, high
            transformed = inside & (half > 0)
            unknown = (half == 0) & on_bounds
            low = np.where(transformed, t_low, np.where(unknown, np.nan, np.clip(low, self.low, self.high)))
            high = np.where(
                transformed, t_high, np.where(unknown, np.nan, np.clip(high, self.low, self.high))
            )
        return low, high


UNBOUNDED = Bounds()


# ------------------------------------------------------------ the estimator
@dataclass
class Components:
    """Per replicate (leading axis): mean, variance of the mean, Satterthwaite df, counts, and
    the mean squares of identity, prompt and their interaction (replicates x 3)."""

    mean: np.ndarray
    variance: np.ndarray
    df: np.ndarray
    n: np.ndarray
    n_identities: np.ndarray
    n_prompts: np.ndarray
    mean_squares: np.ndarray

    def half_width(self, confidence: float) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            t = scipy_stats.t.ppf((1 + confidence) / 2, np.where(self.df > 0, self.df, np.nan))
        return np.where(self.variance == 0, 0.0, t * np.sqrt(self.variance))

    def limits(
        self, confidence: float, bounds: Bounds = UNBOUNDED, on_bounds: np.ndarray | bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The interval's (low, high) per replicate, inside `bounds` (NaN: too few items; see
        `Bounds.limits` for `on_bounds`)."""
        return bounds.limits(self.mean, self.half_width(confidence), on_bounds)


def _one_hot(codes: np.ndarray, levels: int) -> np.ndarray:
    out = np.zeros((codes.size, levels))
    out[np.arange(codes.size), codes] = 1.0
    return out


def crossed_components(values: np.ndarray, identity: np.ndarray, prompt: np.ndarray) -> Components:
    """Mean and variance of the mean of `values` (replicates x images, NaN = missing) under the
    crossed model, for images labelled by integer codes `identity` and `prompt` (see the module
    docstring). Vectorised over replicates, so a coverage simulation runs the very same code."""
    y = np.atleast_2d(np.asarray(values, dtype=float))
    identity, prompt = np.asarray(identity), np.asarray(prompt)
    n_i, n_p = int(identity.max()) + 1, int(prompt.max()) + 1
    hot_i, hot_p = _one_hot(identity, n_i), _one_hot(prompt, n_p)
    hot_ip = _one_hot(identity * n_p + prompt, n_i * n_p)
    ok = np.isfinite(y)
    n = ok.sum(axis=1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, y, 0.0).sum(axis=1) / n
        resid = np.where(ok, y - mean[:, None], 0.0)
        levels_i = ((ok.astype(float) @ hot_i) > 0).sum(axis=1).astype(float)
        levels_p = ((ok.astype(float) @ hot_p) > 0).sum(axis=1).astype(float)
        a = ((resid @ hot_i) ** 2).sum(axis=1) / n**2
        b = ((resid @ hot_p) ** 2).sum(axis=1) / n**2
        c = ((resid @ hot_ip) ** 2).sum(axis=1) / n**2
        df_a, df_b = levels_i - 1, levels_p - 1
        df_ab = df_a * df_b
        ms_a = levels_i * n * a / df_a
        ms_b = levels_p * n * b / df_b
        ms_ab = np.maximum((levels_i * levels_p * n * c - levels_i * n * a - levels_p * n * b) / df_ab, 0.0)
        crossed = (df_a > 0) & (df_b > 0)
        keep_a, keep_b = crossed & (ms_a > ms_ab), crossed & (ms_b > ms_ab)
        total = np.where(keep_a, ms_a, ms_ab) + np.where(keep_b, ms_b, ms_ab) - ms_ab
        spread = (
            np.where(keep_a, ms_a**2 / df_a, 0.0)
            + np.where(keep_b, ms_b**2 / df_b, 0.0)
            + np.where(keep_a & keep_b, ms_ab**2 / df_ab, 0.0)
            + np.where(~keep_a & ~keep_b, ms_ab**2 / df_ab, 0.0)
        )
        # a single identity or prompt: that factor is held fixed, the other is the cluster
        only_p, only_i = (df_a == 0) & (df_b > 0), (df_b == 0) & (df_a > 0)
        total = np.where(only_p, ms_b, np.where(only_i, ms_a, total))
        spread = np.where(only_p, ms_b**2 / df_b, np.where(only_i, ms_a**2 / df_a, spread))
        # one identity and one prompt: the seeds are all there is
        single = (df_a == 0) & (df_b == 0)
        ms_e = (resid**2).sum(axis=1) / (n - 1)
        total = np.where(single, ms_e, total)
        spread = np.where(single, ms_e**2 / (n - 1), spread)
        variance = np.where(n > 1, total / n, np.nan)
        df = np.where(total > 0, total**2 / spread, np.inf)
    return Components(mean, variance, df, n, levels_i, levels_p, np.stack([ms_a, ms_b, ms_ab], axis=1))


@dataclass
class Interval:
    """A mean (or paired difference, or ratio) with its interval and what it was made from.

    `n` values went into it out of `n_items` offered (for a paired difference: pairs with a value
    in both cells out of the items both cells hold)."""

    mean: float
    low: float
    high: float
    n: int
    n_items: int
    df: float = float("nan")
    n_identities: int = 0
    n_prompts: int = 0

    @classmethod
    def empty(cls, n_items: int = 0) -> Interval:
        return cls(float("nan"), float("nan"), float("nan"), 0, n_items)


def cluster_codes(frame: pd.DataFrame, clusters: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    return tuple(pd.Categorical(frame[c]).codes.astype(int) for c in clusters)


def interval_of(
    values: np.ndarray,
    frame: pd.DataFrame,
    confidence: float,
    clusters: Sequence[str] = CLUSTERS,
    center: float | None = None,
    bounds: Bounds = UNBOUNDED,
    sources: np.ndarray | None = None,
) -> Interval:
    """Interval of the mean of `values` (one per row of `frame`, NaN = missing), inside `bounds`.
    With `center`, the values are linearised deviations whose mean is 0 and the interval is
    centred there (no bounds). `sources`: the values a difference was taken of, in their own
    range (`Bounds.on_bounds` reads them; default `values` in `bounds`)."""
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).any():
        return Interval.empty(len(values))
    identity, prompt = cluster_codes(frame, clusters)
    parts = crossed_components(values[None, :], identity, prompt)
    if center is not None:
        parts.mean[0] = center
    edge = bounds.on_bounds(values) if sources is None else sources
    low, high = parts.limits(confidence, bounds, edge)
    return Interval(
        float(parts.mean[0]),
        float(low[0]),
        float(high[0]),
        int(parts.n[0]),
        len(values),
        float(parts.df[0]),
        int(parts.n_identities[0]),
        int(parts.n_prompts[0]),
    )


def mean_interval(
    frame: pd.DataFrame,
    column: str,
    confidence: float,
    clusters: Sequence[str] = CLUSTERS,
    bounds: Bounds = UNBOUNDED,
) -> Interval:
    """Mean of `column` over the frame's images (NaNs left out) with its crossed interval, inside
    the column's `bounds`."""
    if column not in frame or frame.empty:
        return Interval.empty(len(frame))
    return interval_of(frame[column].astype(float).to_numpy(), frame, confidence, clusters, bounds=bounds)


def ratio_interval(frame: pd.DataFrame, numerator: str, denominator: str, confidence: float) -> Interval:
    """mean(numerator) / mean(denominator) over rows with both (positive quantities: latencies),
    by the delta method on the log of the ratio: the linearised values
    (x - mean x) / mean x - (y - mean y) / mean y go through the same crossed estimator and the
    interval is exponentiated back. It stays positive and asymmetric as a ratio's should; on the
    ratio's own scale a small sample gave lower bounds below zero."""
    both = frame[[numerator, denominator]].astype(float).notna().all(axis=1)
    rows = frame[both]
    if rows.empty:
        return Interval.empty(len(frame))
    x, y = rows[numerator].astype(float).to_numpy(), rows[denominator].astype(float).to_numpy()
    ratio = float(x.mean() / y.mean())
    linear = (x - x.mean()) / x.mean() - (y - y.mean()) / y.mean()
    result = interval_of(linear, rows, confidence, center=0.0)
    result.mean, result.low, result.high = ratio, ratio * np.exp(result.low), ratio * np.exp(result.high)
    result.n_items = len(frame)
    return result


def pair(
    a: pd.DataFrame, b: pd.DataFrame, columns: Sequence[str], keys: Sequence[str] = ITEM_KEYS
) -> pd.DataFrame:
    """Items of `a` and `b` matched on (identity, prompt, seed).

    Columns `<col>_a`, `<col>_b` and `<col>_diff` = a - b for every column both hold.
    """
    columns = [c for c in columns if c in a and c in b]
    left = a[list(keys) + columns].astype({c: float for c in columns})
    right = b[list(keys) + columns].astype({c: float for c in columns})
    merged = left.merge(right, on=list(keys), suffixes=("_a", "_b"), validate="one_to_one")
    for column in columns:
        merged[f"{column}_diff"] = merged[f"{column}_a"] - merged[f"{column}_b"]
    return merged


def paired_difference(
    a: pd.DataFrame, b: pd.DataFrame, column: str, confidence: float, bounds: Bounds = UNBOUNDED
) -> Interval:
    """Mean of a - b over items both hold with a value in both, with its crossed interval:
    identity and prompt effects shared by a and b cancel, effects specific to one remain in the
    differences and widen the interval. `n` pairs are used of `n_items` matched images. `bounds`
    is the range of the column's values; the interval stays inside the range of a difference."""
    if column not in a or column not in b:
        return Interval.empty()
    return difference_interval(pair(a, b, [column]), column, confidence, bounds)


def difference_interval(
    paired: pd.DataFrame, column: str, confidence: float, bounds: Bounds = UNBOUNDED
) -> Interval:
    """`paired_difference` on a frame `pair` already made (one merge serves every column)."""
    if f"{column}_diff" not in paired or paired.empty:
        return Interval.empty(len(paired))
    sides = paired[[f"{column}_a", f"{column}_b"]].to_numpy(dtype=float).T.reshape(1, -1)
    return interval_of(
        paired[f"{column}_diff"].to_numpy(),
        paired,
        confidence,
        bounds=bounds.difference(),
        sources=bounds.on_bounds(sides),
    )


# ------------------------------------------------------------ bootstrap of a curve
def two_way_bootstrap(
    frame: pd.DataFrame,
    columns: Sequence[str],
    samples: int,
    seed: int = 0,
    clusters: Sequence[str] = CLUSTERS,
) -> np.ndarray:
    """Replicate means (samples x columns) of a two-way cluster bootstrap: each replicate redraws
    identities and, independently, prompts with replacement and takes every image of each drawn
    (identity, prompt) pair; NaNs are left out per column. All columns share the replicates, so
    a curve (a column per step count, items paired) keeps its shape's correlation. Used for the
    spread of a knee's location, not for intervals of means (no small-sample correction)."""
    rows, cols = cluster_codes(frame, clusters)
    n_rows, n_cols = rows.max() + 1, cols.max() + 1
    rng = np.random.default_rng(seed)
    w_rows = rng.multinomial(n_rows, np.full(n_rows, 1 / n_rows), size=samples).astype(float)
    w_cols = rng.multinomial(n_cols, np.full(n_cols, 1 / n_cols), size=samples).astype(float)
    replicates = np.full((samples, len(columns)), np.nan)
    for k, column in enumerate(columns):
        values = frame[column].astype(float).to_numpy()
        ok = ~np.isnan(values)
        sums, hits = np.zeros((n_rows, n_cols)), np.zeros((n_rows, n_cols))
        np.add.at(sums, (rows[ok], cols[ok]), values[ok])
        np.add.at(hits, (rows[ok], cols[ok]), 1.0)
        numerator = np.einsum("bi,ij,bj->b", w_rows, sums, w_cols)
        denominator = np.einsum("bi,ij,bj->b", w_rows, hits, w_cols)
        with np.errstate(invalid="ignore", divide="ignore"):
            replicates[:, k] = np.where(denominator > 0, numerator / denominator, np.nan)
    return replicates


# ------------------------------------------------------------------ knees
def knee(steps: Sequence[float], values: Sequence[float], sensitivity: float = 1.0) -> float | None:
    """The knee of a diminishing-returns curve `values(steps)` by Kneedle (kneed.KneeLocator).

    The curve's shape follows its overall trend: a rising curve is taken as
    concave (gains flatten), a falling one as convex (losses flatten). Kneedle
    normalises both axes to [0, 1], takes the difference curve y - x and calls a
    knee when the difference curve drops below its local maximum minus
    `sensitivity` x the mean x spacing; larger sensitivity asks for a clearer
    flattening (fewer, later knees), smaller reacts earlier. Steps are used on a
    linear axis, values as measured (no smoothing). None when there are fewer
    than three finite points, the curve is flat, or no knee is found. Kneedle alone
    finds a knee in pure noise: `knee_test` decides whether one is real.
    """
    from kneed import KneeLocator

    x = np.asarray(steps, dtype=float)
    y = np.asarray(values, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    order = np.argsort(x)
    x, y = x[order], y[order]
    if x.size < 3 or np.ptp(y) == 0 or np.ptp(x) == 0:
        return None
    rising = y[-1] >= y[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kneed warns when it finds no knee
        locator = KneeLocator(
            x,
            y,
            S=sensitivity,
            curve="concave" if rising else "convex",
            direction="increasing" if rising else "decreasing",
            interp_method="interp1d",
            online=False,
        )
    return None if locator.knee is None else float(locator.knee)


@dataclass
class Knee:
    """A knee tested against the curve's own noise.

    `steps` is Kneedle's knee of the mean curve when both tests pass, else None with `verdict`
    saying why; `candidate` is Kneedle's answer before the tests. `rise` is the paired change from
    the first step count to the last, `flattening` the slope before it minus the slope after
    it (both in the curve's direction, so positive means "rises, then flattens"); `low`/`high` the
    bootstrap interval of the knee's location and `found` the share of replicates with a knee."""

    steps: float | None
    verdict: str
    candidate: float | None
    rise: Interval
    flattening: Interval
    low: float = float("nan")
    high: float = float("nan")
    found: float = float("nan")


def _contrast(
    curve: pd.DataFrame, weights: dict[str, float], confidence: float, bounds: Bounds = UNBOUNDED
) -> Interval:
    """Interval of a weighted sum of a curve's columns; `bounds` is the range of the curve's values
    and the interval stays in that of their differences (meant for weights summing to 0)."""
    values = sum(w * curve[c].astype(float).to_numpy() for c, w in weights.items())
    return interval_of(
        values,
        curve,
        confidence,
        bounds=bounds.difference(),
        sources=bounds.on_bounds(curve[list(weights)].to_numpy(dtype=float).T.reshape(1, -1)),
    )


def knee_test(
    curve: pd.DataFrame,
    steps: Sequence[int],
    columns: Sequence[str],
    confidence: float,
    sensitivity: float = 1.0,
    samples: int = 1000,
    seed: int = 0,
    bounds: Bounds = UNBOUNDED,
) -> Knee:
    """Kneedle's knee of a curve, kept only when it stands out of the noise.

    `curve` holds one row per item (identity, prompt, seed) and one value column per step count
    (`columns`, in the order of `steps`; NaN where an item has no value). The knee candidate is
    kept when (1) the paired change from the first to the last step count has an interval that
    excludes zero (a fixed contrast, not one Kneedle picked, so noise cannot select it), and
    (2) the slope before the candidate exceeds the slope after it beyond its interval. Under a
    flat curve (1) alone passes with probability 1 - confidence (the direction is the data's),
    so a false knee is at most that frequent. The knee's interval: percentile interval over a
    two-way cluster bootstrap of the curve (replicates without a knee left out). The rise is
    given whenever the curve has two step counts (`bounds`: the range of the curve's values)."""
    steps = [int(s) for s in steps]
    means = [float(np.nanmean(curve[c].astype(float))) if curve[c].notna().any() else np.nan for c in columns]
    none = Interval.empty(len(curve))
    first, last = columns[0], columns[-1]
    direction = 1.0 if means[-1] >= means[0] else -1.0
    rise = none
    if len(steps) > 1:
        rise = _contrast(curve, {last: direction, first: -direction}, confidence, bounds)
    candidate = knee(steps, means, sensitivity)
    if candidate is None:
        return Knee(None, "no knee: Kneedle finds none", None, rise, none)
    at = steps.index(int(candidate))
    if at in (0, len(steps) - 1):
        return Knee(None, "no knee: the curve does not flatten inside the steps", candidate, rise, none)
    before, after = steps[at] - steps[0], steps[-1] - steps[at]
    slopes = {first: -direction / before, last: -direction / after}
    slopes[columns[at]] = direction / before + direction / after
    flattening = _contrast(curve, slopes, confidence)
    if not rise.low > 0:
        return Knee(None, "no knee: flat within noise", candidate, rise, flattening)
    if not flattening.low > 0:
        return Knee(None, "no knee: does not flatten beyond noise", candidate, rise, flattening)
    replicates = two_way_bootstrap(curve, columns, samples, seed)
    found = np.array([knee(steps, r, sensitivity) for r in replicates], dtype=float)
    located = found[np.isfinite(found)]
    low, high = (
        (
            float(np.quantile(located, (1 - confidence) / 2, method="lower")),
            float(np.quantile(located, (1 + confidence) / 2, method="higher")),
        )
        if located.size
        else (np.nan, np.nan)
    )
    return Knee(candidate, "knee", candidate, rise, flattening, low, high, located.size / samples)


# ------------------------------------------------------------ effective regime
def fewest_lasting(steps: Sequence[int], passes: Sequence[bool]) -> int | None:
    """The fewest step count from which every larger one passes too (None if the largest fails)."""
    answer = None
    for s, ok in sorted(zip(steps, passes, strict=True), reverse=True):
        if not ok:
            break
        answer = int(s)
    return answer


def pareto_mask(cost: Sequence[float], value: Sequence[float], higher_is_better: bool = True) -> np.ndarray:
    """True for points no other point beats: no lower-or-equal cost with a better value
    (strictly better in at least one of the two). NaN points are never on the front."""
    cost = np.asarray(cost, dtype=float)
    value = np.asarray(value, dtype=float) * (1 if higher_is_better else -1)
    ok = np.isfinite(cost) & np.isfinite(value)
    mask = np.zeros(cost.size, dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok & (cost <= cost[i]) & (value >= value[i]) & ((cost < cost[i]) | (value > value[i]))
        mask[i] = not others.any()
    return mask
