"""Statistics of a sweep: cluster-bootstrap intervals, paired differences, knees, Pareto.

Images of one cell are not independent draws: the same identity (and the same
prompt) appears in many of them, so an interval that resamples images as if
independent is too narrow. Every interval here comes from a **two-way cluster
bootstrap** (Owen's "pigeonhole" bootstrap for crossed random effects): each
replicate draws the identities with replacement and, independently, the prompts
with replacement, and takes *all* images of every drawn (identity, prompt) pair
(every seed), an image counted as often as its identity times its prompt was
drawn. The statistic is the mean over that multiset; the interval is the
percentile interval of the replicates. It is slightly conservative (it counts the
image-level noise once per factor), and with one identity and one prompt it has
nothing to resample: the interval collapses onto the mean. Replicates are seeded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: (identity, prompt) are the resampled clusters; seed completes an item's key
CLUSTERS = ("identity", "prompt_id")
ITEM_KEYS = ("identity", "prompt_id", "seed")


@dataclass
class Bootstrap:
    """Point estimates and replicate means (samples x columns) of some columns."""

    columns: list[str]
    estimate: np.ndarray
    replicates: np.ndarray
    n: np.ndarray  # non-missing values per column
    n_clusters: tuple[int, int]

    def interval(self, column: str, confidence: float) -> tuple[float, float]:
        return percentile_interval(self.replicates[:, self.columns.index(column)], confidence)

    def mean(self, column: str) -> float:
        return float(self.estimate[self.columns.index(column)])


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """Central percentile interval; replicates that drew no usable value are left out."""
    replicates = np.asarray(replicates, dtype=float)
    replicates = replicates[np.isfinite(replicates)]
    if replicates.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    return float(low), float(high)


def two_way_bootstrap(
    frame: pd.DataFrame,
    columns: Sequence[str],
    samples: int,
    seed: int = 0,
    clusters: Sequence[str] = CLUSTERS,
) -> Bootstrap:
    """Two-way cluster bootstrap of the means of `columns` (NaNs left out per column).

    All columns share the same replicates, so a statistic of several of them
    (a ratio of two mean latencies) is bootstrapped consistently. Each replicate
    mean is sum(w_i * w_p * S_ip) / sum(w_i * w_p * C_ip), where S and C are the
    sums and counts of values per (identity, prompt) and w the draw counts.
    """
    columns = list(columns)
    rows = pd.Categorical(frame[clusters[0]])
    cols = pd.Categorical(frame[clusters[1]])
    n_rows, n_cols = len(rows.categories), len(cols.categories)
    rng = np.random.default_rng(seed)
    w_rows = rng.multinomial(n_rows, np.full(n_rows, 1 / n_rows), size=samples).astype(float)
    w_cols = rng.multinomial(n_cols, np.full(n_cols, 1 / n_cols), size=samples).astype(float)
    estimate = np.full(len(columns), np.nan)
    replicates = np.full((samples, len(columns)), np.nan)
    counts = np.zeros(len(columns), dtype=int)
    for k, column in enumerate(columns):
        values = frame[column].astype(float).to_numpy()
        ok = ~np.isnan(values)
        sums = np.zeros((n_rows, n_cols))
        hits = np.zeros((n_rows, n_cols))
        np.add.at(sums, (rows.codes[ok], cols.codes[ok]), values[ok])
        np.add.at(hits, (rows.codes[ok], cols.codes[ok]), 1.0)
        counts[k] = int(ok.sum())
        if counts[k] == 0:
            continue
        estimate[k] = sums.sum() / hits.sum()
        numerator = np.einsum("bi,ij,bj->b", w_rows, sums, w_cols)
        denominator = np.einsum("bi,ij,bj->b", w_rows, hits, w_cols)
        with np.errstate(invalid="ignore", divide="ignore"):
            replicates[:, k] = np.where(denominator > 0, numerator / denominator, np.nan)
    return Bootstrap(columns, estimate, replicates, counts, (n_rows, n_cols))


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


@dataclass
class Difference:
    """Mean paired difference a - b with its interval and the number of usable pairs."""

    mean: float
    low: float
    high: float
    n_pairs: int


def paired_difference(
    a: pd.DataFrame,
    b: pd.DataFrame,
    column: str,
    samples: int,
    confidence: float,
    seed: int = 0,
) -> Difference:
    """Paired bootstrap of mean(a - b) over items present in both with a value in both.

    The per-item differences are resampled with the same two-way cluster
    bootstrap, so identity and prompt effects shared by a and b cancel.
    """
    if column not in a or column not in b:
        return Difference(np.nan, np.nan, np.nan, 0)
    paired = pair(a, b, [column])
    boot = two_way_bootstrap(paired, [f"{column}_diff"], samples, seed)
    low, high = boot.interval(f"{column}_diff", confidence)
    return Difference(boot.mean(f"{column}_diff"), low, high, int(boot.n[0]))


def knee(steps: Sequence[float], values: Sequence[float], sensitivity: float = 1.0) -> float | None:
    """The knee of a diminishing-returns curve `values(steps)` by Kneedle (kneed.KneeLocator).

    The curve's shape follows its overall trend: a rising curve is taken as
    concave (gains flatten), a falling one as convex (losses flatten). Kneedle
    normalises both axes to [0, 1], takes the difference curve y - x and calls a
    knee when the difference curve drops below its local maximum minus
    `sensitivity` x the mean x spacing; larger sensitivity asks for a clearer
    flattening (fewer, later knees), smaller reacts earlier. Steps are used on a
    linear axis, values as measured (no smoothing). None when there are fewer
    than three finite points, the curve is flat, or no knee is found.
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


def reaches(value: float, anchor: float, fraction: float, better: str) -> bool:
    """Whether `value` reaches `fraction` of the anchor's value.

    Higher-is-better: value >= fraction x anchor (needs anchor > 0). Lower-is-
    better: value <= anchor x (2 - fraction), i.e. at most (1 - fraction) worse.
    """
    if not (np.isfinite(value) and np.isfinite(anchor)):
        return False
    if better == "higher":
        return anchor > 0 and value >= fraction * anchor
    if better == "lower":
        return anchor > 0 and value <= (2 - fraction) * anchor
    return False


def steps_to_target(
    steps: Sequence[int], values: Sequence[float], anchor: float, fraction: float, better: str
) -> int | None:
    """Fewest steps whose value reaches `fraction` of the anchor (see `reaches`), or None."""
    for s, v in sorted(zip(steps, values, strict=True)):
        if reaches(float(v), anchor, fraction, better):
            return int(s)
    return None


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
