"""From per-image scores to the sweep's tables: summaries, effective regime, Pareto, the study table.

Every table is a CSV in results/<sweep>/aggregate/ (`Paths.table`), one row per
cell/metric (or per pair of cells) with its interval; all intervals come from the
two-way cluster bootstrap of fewstep.stats (identities x prompts, seeded by
`report.seed`). Metric columns are whatever the scores tables hold (see
fewstep.metric_registry); a metric that is absent simply has no rows, and the
study table marks it "not available".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fewstep.grid import Cell, Grid
from fewstep.io import write_table
from fewstep.metric_registry import metric_columns, of_kind, spec
from fewstep.paths import Paths
from fewstep.provenance import stamp
from fewstep.stats import (
    Bootstrap,
    knee,
    pair,
    paired_difference,
    pareto_mask,
    percentile_interval,
    steps_to_target,
    two_way_bootstrap,
)

TABLES = ("summary", "regime", "marginal", "pareto", "comparison", "ablation", "trajectory")

#: the study's headline numbers (arXiv 2605.09460), FLUX.1-dev 28 steps vs FLUX.1-schnell 4 steps
STUDY = {
    "latency_ratio": 5.9,
    "id_sim": 0.028,
    "lpips_ref": -0.016,
}
#: Pareto frontier axes: cost (lower is better) and value
PARETO = ("latency_s", "id_sim")
#: per-step columns of a trajectory table summarised per (cell, step)
TRAJECTORY_METRICS = (
    "id_sim",
    "face_detected",
    "adapter_active",
    "residual_rms_double",
    "residual_rms_single",
    "velocity_rms",
    "relative_double",
    "relative_single",
)


# Column order of the tables whose rows are built as dicts; an empty table keeps its header.
SUMMARY_COLUMNS = [
    "cell_id",
    "backbone",
    "adapter",
    "steps",
    "metric",
    "label",
    "better",
    "mean",
    "std",
    "n",
    "n_missing",
    "ci_low",
    "ci_high",
    "confidence",
    "n_identities",
    "n_prompts",
    "anchor",
    "diff_vs_anchor",
    "diff_ci_low",
    "diff_ci_high",
    "n_pairs",
    "weights",
]
REGIME_COLUMNS = [
    "backbone",
    "adapter",
    "metric",
    "label",
    "better",
    "steps",
    "means",
    "knee_steps",
    "knee_value",
    "kneedle_sensitivity",
    "anchor",
    "anchor_value",
    "target_fraction",
    "steps_to_target",
]
MARGINAL_COLUMNS = [
    "backbone",
    "adapter",
    "metric",
    "better",
    "from_steps",
    "to_steps",
    "from_mean",
    "to_mean",
    "gain",
    "gain_ci_low",
    "gain_ci_high",
    "gain_per_step",
    "extra_latency_s",
    "gain_per_second",
    "n_pairs",
]


def load_scores(config: dict[str, Any]) -> pd.DataFrame:
    grid, paths = Grid(config), Paths(config)
    return pd.concat([pd.read_parquet(paths.scores(c.id)) for c in grid.cells], ignore_index=True)


def load_trajectories(config: dict[str, Any]) -> pd.DataFrame | None:
    """The configured cells' trajectory tables in one frame (None without any), with cell keys."""
    paths = Paths(config)
    found = [paths.trajectory(c.id) for c in Grid(config).trajectory_cells]
    if not found:
        return None
    frame = pd.concat([pd.read_parquet(p) for p in found], ignore_index=True)
    cells = [Cell.parse(c) for c in frame["cell_id"]]
    frame["backbone"] = [c.backbone for c in cells]
    frame["adapter"] = [c.adapter for c in cells]
    frame["steps"] = [c.steps for c in cells]
    return frame


class Aggregator:
    """The sweep's statistics; every method returns one table."""

    def __init__(self, config: dict[str, Any], scores: pd.DataFrame):
        self.config, self.grid = config, Grid(config)
        options = config["report"]
        self.samples, self.confidence = options["bootstrap_samples"], options["confidence"]
        self.seed = options["seed"]
        self.sensitivity, self.fraction = options["kneedle_sensitivity"], options["target_fraction"]
        self.scores = scores
        self.metrics = metric_columns(scores)
        self.by_cell = {cell_id: frame for cell_id, frame in scores.groupby("cell_id", sort=False)}
        self._boot: dict[str, Bootstrap] = {}

    # ----------------------------------------------------------------- helpers
    def cell_frame(self, cell: Cell) -> pd.DataFrame:
        return self.by_cell.get(cell.id, self.scores.iloc[:0])

    def boot(self, cell: Cell) -> Bootstrap:
        if cell.id not in self._boot:
            self._boot[cell.id] = two_way_bootstrap(
                self.cell_frame(cell), self.metrics, self.samples, self.seed
            )
        return self._boot[cell.id]

    def diff(self, a: Cell, b: Cell, metric: str):
        return paired_difference(
            self.cell_frame(a), self.cell_frame(b), metric, self.samples, self.confidence, self.seed
        )

    def series(self) -> list[tuple[str, str, list[Cell]]]:
        """(backbone, adapter, cells by steps) for every line of a metric-vs-steps plot."""
        pairs = dict.fromkeys((c.backbone, c.adapter) for c in self.grid.cells)
        return [(b, a, sorted(self.grid.cells_of(b, a), key=lambda c: c.steps)) for b, a in pairs]

    # ------------------------------------------------------------------ tables
    def summary(self) -> pd.DataFrame:
        """Per cell and metric: mean, std, n, interval and the paired difference to the anchor."""
        anchor = self.grid.anchor
        rows = []
        for cell in self.grid.cells:
            frame, boot = self.cell_frame(cell), self.boot(cell)
            for metric in self.metrics:
                values = frame[metric].astype(float) if metric in frame else pd.Series(dtype=float)
                low, high = boot.interval(metric, self.confidence)
                row = {
                    "cell_id": cell.id,
                    "backbone": cell.backbone,
                    "adapter": cell.adapter,
                    "steps": cell.steps,
                    "metric": metric,
                    "label": spec(metric).label,
                    "better": spec(metric).better or "",
                    "mean": boot.mean(metric),
                    "std": float(values.std(ddof=1)) if values.notna().sum() > 1 else np.nan,
                    "n": int(values.notna().sum()),
                    "n_missing": int(values.isna().sum()),
                    "ci_low": low,
                    "ci_high": high,
                    "confidence": self.confidence,
                    "n_identities": boot.n_clusters[0],
                    "n_prompts": boot.n_clusters[1],
                    "anchor": anchor.id if anchor else "",
                    "diff_vs_anchor": np.nan,
                    "diff_ci_low": np.nan,
                    "diff_ci_high": np.nan,
                    "n_pairs": 0,
                    "weights": self.config["weights"],
                }
                if anchor is not None:
                    d = self.diff(cell, anchor, metric)
                    row.update(
                        diff_vs_anchor=d.mean, diff_ci_low=d.low, diff_ci_high=d.high, n_pairs=d.n_pairs
                    )
                rows.append(row)
        return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)

    def regime(self) -> pd.DataFrame:
        """Per backbone/adapter and quality metric: Kneedle knee and fewest steps reaching the target."""
        anchor = self.grid.anchor
        rows = []
        for backbone, adapter, cells in self.series():
            for metric in of_kind(self.metrics, "quality"):
                steps = [c.steps for c in cells]
                means = [self.boot(c).mean(metric) for c in cells]
                at = knee(steps, means, self.sensitivity)
                anchor_value = self.boot(anchor).mean(metric) if anchor else np.nan
                better = spec(metric).better
                target = (
                    steps_to_target(steps, means, anchor_value, self.fraction, better) if better else None
                )
                rows.append(
                    {
                        "backbone": backbone,
                        "adapter": adapter,
                        "metric": metric,
                        "label": spec(metric).label,
                        "better": better or "",
                        "steps": " ".join(map(str, steps)),
                        "means": " ".join(f"{m:.6g}" for m in means),
                        "knee_steps": np.nan if at is None else int(at),
                        "knee_value": np.nan if at is None else means[steps.index(int(at))],
                        "kneedle_sensitivity": self.sensitivity,
                        "anchor": anchor.id if anchor else "",
                        "anchor_value": anchor_value,
                        "target_fraction": self.fraction,
                        "steps_to_target": np.nan if target is None else target,
                    }
                )
        return pd.DataFrame(rows, columns=REGIME_COLUMNS)

    def marginal(self) -> pd.DataFrame:
        """Gain of each extra step: paired difference between consecutive steps of a series."""
        rows = []
        metrics = of_kind(self.metrics, "quality")
        for backbone, adapter, cells in self.series():
            for lower, upper in zip(cells, cells[1:], strict=False):
                extra_s = np.nan
                if "latency_s" in self.metrics:
                    extra_s = self.boot(upper).mean("latency_s") - self.boot(lower).mean("latency_s")
                for metric in metrics:
                    d = self.diff(upper, lower, metric)
                    extra_steps = upper.steps - lower.steps
                    rows.append(
                        {
                            "backbone": backbone,
                            "adapter": adapter,
                            "metric": metric,
                            "better": spec(metric).better or "",
                            "from_steps": lower.steps,
                            "to_steps": upper.steps,
                            "from_mean": self.boot(lower).mean(metric),
                            "to_mean": self.boot(upper).mean(metric),
                            "gain": d.mean,
                            "gain_ci_low": d.low,
                            "gain_ci_high": d.high,
                            "gain_per_step": d.mean / extra_steps,
                            "extra_latency_s": extra_s,
                            # more steps measured faster is timing noise: no gain per second then
                            "gain_per_second": d.mean / extra_s if extra_s > 0 else np.nan,
                            "n_pairs": d.n_pairs,
                        }
                    )
        return pd.DataFrame(rows, columns=MARGINAL_COLUMNS)

    def pareto(self) -> pd.DataFrame:
        """Every cell's mean latency and identity similarity; `on_front` marks the Pareto frontier."""
        cost, value = PARETO
        if cost not in self.metrics or value not in self.metrics:
            return pd.DataFrame(columns=["cell_id", "backbone", "adapter", "steps", cost, value, "on_front"])
        rows = []
        for cell in self.grid.cells:
            boot = self.boot(cell)
            row = {
                "cell_id": cell.id,
                "backbone": cell.backbone,
                "adapter": cell.adapter,
                "steps": cell.steps,
            }
            for metric in (cost, value):
                low, high = boot.interval(metric, self.confidence)
                row.update({metric: boot.mean(metric), f"{metric}_ci_low": low, f"{metric}_ci_high": high})
            rows.append(row)
        table = pd.DataFrame(rows)
        table["on_front"] = pareto_mask(table[cost], table[value], spec(value).better != "lower")
        return table

    def comparison(self) -> pd.DataFrame:
        """The study's table: latency ratio baseline/candidate and candidate - baseline of
        identity similarity and LPIPS to the reference, paired and with intervals."""
        columns = [
            "quantity",
            "metric",
            "baseline",
            "candidate",
            "baseline_mean",
            "candidate_mean",
            "estimate",
            "ci_low",
            "ci_high",
            "n_pairs",
            "study",
            "available",
        ]
        if self.grid.comparison is None:
            return pd.DataFrame(columns=columns)
        baseline, candidate = self.grid.comparison
        base, cand = self.cell_frame(baseline), self.cell_frame(candidate)
        rows = []
        for quantity, metric in (
            ("latency ratio (baseline / candidate)", "latency_s"),
            ("identity similarity, candidate - baseline", "id_sim"),
            ("LPIPS to reference, candidate - baseline", "lpips_ref"),
        ):
            row = dict.fromkeys(columns, np.nan)
            study_key = "latency_ratio" if metric == "latency_s" else metric
            row.update(
                quantity=quantity,
                metric=metric,
                baseline=baseline.id,
                candidate=candidate.id,
                study=STUDY[study_key],
                available=metric in self.metrics,
                n_pairs=0,
            )
            if metric in self.metrics:
                row.update(baseline_mean=self.boot(baseline).mean(metric))
                row.update(candidate_mean=self.boot(candidate).mean(metric))
                if metric == "latency_s":
                    paired = pair(base, cand, [metric]).dropna()
                    boot = two_way_bootstrap(paired, [f"{metric}_a", f"{metric}_b"], self.samples, self.seed)
                    ratios = boot.replicates[:, 0] / boot.replicates[:, 1]
                    low, high = percentile_interval(ratios, self.confidence)
                    row.update(
                        estimate=boot.estimate[0] / boot.estimate[1],
                        ci_low=low,
                        ci_high=high,
                        n_pairs=len(paired),
                    )
                else:
                    d = self.diff(candidate, baseline, metric)
                    row.update(estimate=d.mean, ci_low=d.low, ci_high=d.high, n_pairs=d.n_pairs)
            rows.append(row)
        return pd.DataFrame(rows, columns=columns)

    def ablation(self) -> pd.DataFrame:
        """Where a backbone runs several adapters: each adapter minus the reference adapter
        (the anchor's, else the first) at the same steps, paired on items."""
        columns = [
            "backbone",
            "steps",
            "adapter",
            "reference_adapter",
            "metric",
            "better",
            "mean",
            "reference_mean",
            "diff",
            "diff_ci_low",
            "diff_ci_high",
            "n_pairs",
        ]
        rows = []
        anchor = self.grid.anchor
        for backbone in dict.fromkeys(c.backbone for c in self.grid.cells):
            adapters = list(dict.fromkeys(c.adapter for c in self.grid.cells_of(backbone)))
            if len(adapters) < 2:
                continue
            reference = anchor.adapter if anchor and anchor.adapter in adapters else adapters[0]
            for adapter in adapters:
                if adapter == reference:
                    continue
                for cell in self.grid.cells_of(backbone, adapter):
                    ref = Cell(backbone, reference, cell.steps)
                    if ref not in self.grid.cells:
                        continue
                    for metric in of_kind(self.metrics, "quality"):
                        d = self.diff(cell, ref, metric)
                        rows.append(
                            {
                                "backbone": backbone,
                                "steps": cell.steps,
                                "adapter": adapter,
                                "reference_adapter": reference,
                                "metric": metric,
                                "better": spec(metric).better or "",
                                "mean": self.boot(cell).mean(metric),
                                "reference_mean": self.boot(ref).mean(metric),
                                "diff": d.mean,
                                "diff_ci_low": d.low,
                                "diff_ci_high": d.high,
                                "n_pairs": d.n_pairs,
                            }
                        )
        return pd.DataFrame(rows, columns=columns)

    def trajectory(self, frame: pd.DataFrame | None) -> pd.DataFrame:
        """Per trajectory cell, step and probe: the mean over items with its interval."""
        columns = [
            "cell_id",
            "backbone",
            "adapter",
            "steps",
            "step",
            "sigma",
            "metric",
            "mean",
            "ci_low",
            "ci_high",
            "n",
        ]
        if frame is None or frame.empty:
            return pd.DataFrame(columns=columns)
        metrics = [m for m in TRAJECTORY_METRICS if m in frame]
        rows = []
        for (cell_id, step), group in frame.groupby(["cell_id", "step"], sort=True):
            boot = two_way_bootstrap(group, metrics, self.samples, self.seed)
            cell = Cell.parse(cell_id)
            for metric in metrics:
                low, high = boot.interval(metric, self.confidence)
                rows.append(
                    {
                        "cell_id": cell_id,
                        "backbone": cell.backbone,
                        "adapter": cell.adapter,
                        "steps": cell.steps,
                        "step": int(step),
                        "sigma": float(group["sigma"].mean()) if "sigma" in group else np.nan,
                        "metric": metric,
                        "mean": boot.mean(metric),
                        "ci_low": low,
                        "ci_high": high,
                        "n": int(boot.n[metrics.index(metric)]),
                    }
                )
        return pd.DataFrame(rows, columns=columns)


def tables(
    config: dict[str, Any], scores: pd.DataFrame, trajectories: pd.DataFrame | None
) -> dict[str, pd.DataFrame]:
    agg = Aggregator(config, scores)
    return {
        "summary": agg.summary(),
        "regime": agg.regime(),
        "marginal": agg.marginal(),
        "pareto": agg.pareto(),
        "comparison": agg.comparison(),
        "ablation": agg.ablation(),
        "trajectory": agg.trajectory(trajectories),
    }


def run(config: dict[str, Any], out: Path | None = None) -> Path:
    """Write every table (summary to `out` if given, the others next to it)."""
    paths = Paths(config)
    out = Path(out or paths.summary)
    scores = load_scores(config)
    results = tables(config, scores, load_trajectories(config))
    write_table(paths.per_image, stamp(scores, config))
    for name, table in results.items():
        write_table(out if name == "summary" else out.parent / f"{name}.csv", stamp(table, config, scores))
    print(
        f"aggregated {len(scores)} images over {len(Grid(config).cells)} cells, "
        f"{len(metric_columns(scores))} metrics -> {out.parent}"
    )
    return out
