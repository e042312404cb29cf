"""Coverage of the sweep's intervals, by simulation, on every kind of value scale the metrics have.

The intervals of fewstep.analysis.stats are checked the way they are printed: crossed random-effects
data sets of a design size (identities x prompts x seeds, `simulate`) are put on a value scale
(`ValueScale`: unbounded; a cosine in [-1, 1] near its upper bound; a 0/1 rate near 1; a positive
time), each gets the interval the report prints for a metric of that range, and `coverage_table`
counts how often it holds the true mean (or paired difference) and whether it stays in the range.
The test suite asserts the levels at the configs' sizes; the report prints them at its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fewstep.analysis.stats import CLUSTERS, UNBOUNDED, Bounds, cluster_codes, crossed_components

#: variance components (sd of identity, prompt, identity x prompt, seed) the coverage is checked under
SCENARIOS = {
    "identity + prompt": (1.0, 1.0, 0.0, 1.0),
    "identity only (an identity-specific effect)": (1.0, 0.0, 0.0, 1.0),
    "prompt only": (0.0, 1.0, 0.0, 1.0),
    "all four": (0.5, 0.5, 0.5, 1.0),
    "seed noise only": (0.0, 0.0, 0.0, 1.0),
}
#: the design sizes of the coverage test (identities, prompts, seeds); the study config ships 2 x 8 x 4
SHAPES = ((2, 8, 4), (4, 8, 4), (12, 12, 4))


def simulate(
    shape: tuple[int, int, int],
    sds: tuple[float, float, float, float],
    reps: int,
    rng: np.random.Generator,
    paired: bool = False,
) -> np.ndarray:
    """`reps` crossed-effects data sets (reps x images, true mean 0, images in identity-major
    order) with sds (identity, prompt, identity x prompt, seed). `paired`: the per-item
    differences of two cells, where every effect both cells share has cancelled, so what is left
    is the second cell's own effects (`sds`) minus the first cell's own seed noise (sd 1)."""
    n_i, n_p, n_s = shape

    def draw(sd):
        s_i, s_p, s_ip, s_e = sd
        return (
            s_i * rng.normal(size=(reps, n_i, 1, 1))
            + s_p * rng.normal(size=(reps, 1, n_p, 1))
            + s_ip * rng.normal(size=(reps, n_i, n_p, 1))
            + s_e * rng.normal(size=(reps, n_i, n_p, n_s))
        )

    data = draw(sds) - draw((0.0, 0.0, 0.0, 1.0)) if paired else draw(sds)
    return data.reshape(reps, -1)


def design_codes(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    n_i, n_p, n_s = shape
    i, p, _ = np.meshgrid(range(n_i), range(n_p), range(n_s), indexing="ij")
    return i.ravel(), p.ravel()


@dataclass(frozen=True)
class ValueScale:
    """Simulated values: link(centre + spread x latent), the latent a crossed-effects draw of
    `simulate`; `binary` draws 0/1 with that probability instead (a detection rate)."""

    name: str
    bounds: Bounds = UNBOUNDED
    link: Callable[[np.ndarray], np.ndarray] | None = None
    centre: float = 0.0
    spread: float = 1.0
    binary: bool = False

    def values(self, latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.link is None:
            return latent
        values = self.link(self.centre + self.spread * latent)
        return (rng.random(values.shape) < values).astype(float) if self.binary else values

    def mean(self, latent_sd: float) -> float:
        """The population mean of the values when the latent is N(0, latent_sd^2) (Gauss-Hermite)."""
        if self.link is None:
            return 0.0
        nodes, weights = np.polynomial.hermite_e.hermegauss(120)
        return float(weights @ self.link(self.centre + self.spread * latent_sd * nodes) / weights.sum())


def _expit(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


#: the value scales the coverage is checked on: every bounds a registered metric has
VALUE_SCALES = (
    ValueScale("unbounded"),
    ValueScale("cosine (-1 to 1), mean near 0.8", Bounds(-1.0, 1.0), np.tanh, 1.1, 0.25),
    ValueScale("0/1 rate, mean near 0.9", Bounds(0.0, 1.0), _expit, 2.5, 0.5, binary=True),
    ValueScale("positive time (log-normal)", Bounds(0.0, np.inf), np.exp, 0.0, 0.3),
)


def scaled_data(
    shape: tuple[int, int, int],
    sds: tuple[float, float, float, float],
    reps: int,
    rng: np.random.Generator,
    scale: ValueScale,
    paired: bool,
) -> tuple[np.ndarray, float, np.ndarray]:
    """`reps` data sets on `scale`, their true mean, and per data set whether every value it was
    made of sits on a bound (`Bounds.on_bounds`). Paired: the per-item differences of two
    cells that share identity and prompt effects (sd 1 each), the second with the scenario's own
    effects, the first with its own seed noise; on the unbounded scale the shared part cancels
    exactly and `simulate(paired=True)` draws the differences directly."""
    total = float(np.sqrt(np.sum(np.square(sds))))
    if not paired:
        values = scale.values(simulate(shape, sds, reps, rng), rng)
        return values, scale.mean(total), scale.bounds.on_bounds(values)
    if scale.link is None:
        return simulate(shape, sds, reps, rng, paired=True), 0.0, np.zeros(reps, dtype=bool)
    shared = simulate(shape, (1.0, 1.0, 0.0, 0.0), reps, rng)
    second = scale.values(shared + simulate(shape, sds, reps, rng), rng)
    first = scale.values(shared + simulate(shape, (0.0, 0.0, 0.0, 1.0), reps, rng), rng)
    truth = scale.mean(float(np.sqrt(2 + total**2))) - scale.mean(float(np.sqrt(3)))
    return second - first, truth, scale.bounds.on_bounds(np.concatenate([second, first], axis=1))


def coverage_table(
    shapes: Sequence[tuple[int, int, int]] = SHAPES,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    scales: Sequence[ValueScale] = VALUE_SCALES,
) -> pd.DataFrame:
    """Coverage of the crossed interval of a mean and of a paired difference, by simulation.

    For each value scale, design shape and scenario (`SCENARIOS`): the fraction of `reps` seeded
    data sets whose interval (inside the scale's range, as printed) holds the true value, among
    the data sets that get one (`estimated`: the share that do; the others print "too few items
    to estimate"), the share of intervals inside the range, and the mean full width (unbounded
    scale: in units of the seed sd). Paired differences (see `scaled_data`): the scenario's
    effects are the second cell's own, e.g. an identity-specific effect in 'identity only'. The
    unbounded scale draws from `seed` itself, so its numbers do not depend on the other scales."""
    rows = []
    for index, scale in enumerate(scales):
        rng = np.random.default_rng(seed if scale.link is None else [seed, index])
        for shape in shapes:
            identity, prompt = design_codes(shape)
            for quantity in ("mean", "paired difference"):
                bounds = scale.bounds if quantity == "mean" else scale.bounds.difference()
                for name, sds in SCENARIOS.items():
                    data, truth, edge = scaled_data(shape, sds, reps, rng, scale, quantity != "mean")
                    low, high = crossed_components(data, identity, prompt).limits(confidence, bounds, edge)
                    made = np.isfinite(low) & np.isfinite(high)
                    rows.append(
                        {
                            "scale": scale.name,
                            "identities": shape[0],
                            "prompts": shape[1],
                            "seeds": shape[2],
                            "quantity": quantity,
                            "scenario": name,
                            "coverage": float(np.mean((low[made] <= truth) & (truth <= high[made]))),
                            "estimated": float(np.mean(made)),
                            "in_range": float(
                                np.mean((low[made] >= bounds.low) & (high[made] <= bounds.high))
                            ),
                            "mean_width": float(np.mean(high[made] - low[made])),
                            "reps": reps,
                        }
                    )
    return pd.DataFrame(rows)


def spread(values: np.ndarray, frame: pd.DataFrame, clusters: Sequence[str] = CLUSTERS) -> tuple[float, ...]:
    """Method-of-moments sds (identity, prompt, 0, image) of `values` (one per row of `frame`):
    `simulate` with them reproduces the data's expected mean squares at its own prompts and
    seeds (the interaction is folded into the image term, which is all a width at fixed prompts
    and seeds depends on). NaNs where a factor has a single level."""
    parts = crossed_components(np.asarray(values, dtype=float)[None, :], *cluster_codes(frame, clusters))
    ms_a, ms_b, ms_ab = parts.mean_squares[0]
    n, n_i, n_p = parts.n[0], parts.n_identities[0], parts.n_prompts[0]
    identity = np.sqrt(max(ms_a - ms_ab, 0.0) * n_i / n)
    prompt = np.sqrt(max(ms_b - ms_ab, 0.0) * n_p / n)
    return float(identity), float(prompt), 0.0, float(np.sqrt(ms_ab))


def width_by_identities(
    identities: Sequence[int] = (2, 4, 8, 12, 16, 24, 32),
    prompts: int = 8,
    seeds: int = 4,
    sds: tuple[float, float, float, float] = (1.0, 1.0, 0.0, 1.0),
    reps: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean full interval width of a cell mean against the number of identities (simulated,
    in units of the sds given: by default identity, prompt and seed sd all 1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for n_i in identities:
        shape = (n_i, prompts, seeds)
        parts = crossed_components(simulate(shape, sds, reps, rng), *design_codes(shape))
        rows.append({"identities": n_i, "mean_width": float(np.mean(2 * parts.half_width(confidence)))})
    return pd.DataFrame(rows)


def fewest_identities(table: pd.DataFrame, level: float = 0.90) -> int | None:
    """The fewest identities at which every simulated scenario of `coverage_table` reaches `level`."""
    worst = table.groupby("identities")["coverage"].min()
    good = worst[worst >= level]
    return int(good.index.min()) if len(good) else None


#: replicates of a report's coverage simulation (per shape, scale and scenario)
COVERAGE_REPS = 2000
#: identity counts the widths table projects to
PROJECTED_IDENTITIES = (2, 4, 8, 12, 16, 24, 32)
#: how the checked sizes read in the coverage table
SHAPE_NAMES = {(2, 8, 4): "the shipped study config", (4, 8, 4): "4 identities", (12, 12, 4): "12 identities"}


def design_coverage(
    designs: dict[tuple[int, int, int], str], confidence: float, seed: int, reps: int = COVERAGE_REPS
) -> pd.DataFrame:
    """`coverage_table` at the checked sizes and at `designs` (shape -> what it is: "this sweep:
    flux-dev, ..."), each row labelled (`design`), with the fewest identities reaching 90%
    everywhere (at 8 or more prompts)."""
    shapes = list(dict.fromkeys([*SHAPES, *designs]))
    table = coverage_table(shapes, reps, confidence, seed)
    keys = list(zip(table["identities"], table["prompts"], table["seeds"], strict=True))
    table["this_sweep"] = [key in designs for key in keys]
    table["design"] = [designs.get(key) or SHAPE_NAMES.get(key, "") for key in keys]
    table["fewest_identities_for_90"] = fewest_identities(table[table["prompts"] >= 8])
    return table


def projected_widths(
    metric: str | None,
    sources: list[tuple[str, str, np.ndarray, pd.DataFrame]],
    shape: tuple[int, int],
    confidence: float,
    seed: int,
) -> pd.DataFrame:
    """Mean interval width of each source (quantity, what, values, their frame) at 2 ... 32
    identities, simulated at its own method-of-moments spread and `shape` (prompts, seeds)."""
    columns = ["quantity", "metric", "source", "identities", "prompts", "seeds", "mean_width"]
    columns += ["sd_identity", "sd_prompt", "sd_image"]
    prompts, seeds = shape
    rows = []
    for quantity, source, values, frame in sources:
        if frame.empty or not np.isfinite(values.astype(float)).any():
            continue
        sds = spread(values, frame)
        if not all(np.isfinite(sds)):
            continue
        table = width_by_identities(PROJECTED_IDENTITIES, prompts, seeds, sds, 1000, confidence, seed)
        for r in table.itertuples(index=False):
            row = (
                quantity,
                metric,
                source,
                r.identities,
                prompts,
                seeds,
                r.mean_width,
                sds[0],
                sds[1],
                sds[3],
            )
            rows.append(dict(zip(columns, row, strict=True)))
    return pd.DataFrame(rows, columns=columns)
