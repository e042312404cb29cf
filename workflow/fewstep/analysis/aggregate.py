"""From per-image scores to the sweep's tables: summaries, effective regime, Pareto, the study table.

Every table is a CSV in results/<sweep>/aggregate/ (`Paths.table`), one row per
cell/metric (or per pair of cells) with its interval; every interval is the crossed
random-effects interval of fewstep.analysis.stats (identities x prompts, Satterthwaite t), whose
coverage at this sweep's size `coverage.csv` reports. Metric columns are whatever the scores
tables hold (see fewstep.analysis.metric_registry) plus `id_sim_zero` (no face counted as 0); a metric
that is absent simply has no rows, and the study table marks it "not available". Cost columns
leave out the images of a job's first (warm-up) batch where the manifest marks them.

Each table is one function of a shared `Context` (`fewstep.analysis.context`: the scores per
cell, the series, cached intervals); `TABLE_FUNCTIONS` names them. The comparison table of the
config's pairs is `fewstep.analysis.comparison`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fewstep.analysis.comparison import comparison, effective_regime
from fewstep.analysis.context import PARETO_COSTS as PARETO_COSTS
from fewstep.analysis.context import Context, anchors_to_highest_step
from fewstep.analysis.coverage import design_coverage, projected_widths
from fewstep.analysis.metric_registry import margin, metric_columns, of_kind, spec
from fewstep.analysis.outputs import MARGINAL_COLUMNS, REGIME_COLUMNS, SUMMARY_COLUMNS
from fewstep.analysis.outputs import TABLES as TABLES  # the table names, read by the rules
from fewstep.analysis.scores import devices, load_scores, load_trajectories, with_zero_identity
from fewstep.analysis.stats import (
    fewest_lasting,
    knee_test,
    mean_interval,
    pareto_mask,
)
from fewstep.core.io import write_table
from fewstep.core.paths import Paths
from fewstep.core.provenance import stamp
from fewstep.core.study import Study
from fewstep.grid import Cell, Grid

#: Pareto frontier value axis, first present (the cost axis: `PARETO_COSTS`); a series without
#: an identity metric (SD style/object cells) gets a row per cell for each of its quality metrics
PARETO_VALUES = ("id_sim_zero", "id_sim")
#: share of a curve's rise (first to last step count, in the better direction) "steps to 95%" asks for
RISE_SHARE = 0.95
#: kinds of the per-step columns of a trajectory table summarised per (cell, step): the scores of
#: its x0 (whichever metrics scored the cell) and the family's probes
TRAJECTORY_KINDS = ("quality", "probe")


def steps_to_share(steps: list[int], means: list[float], better: str, share: float = RISE_SHARE) -> float:
    """The fewest steps whose mean has made `share` of the curve's change from the first to the
    last step count, in the better direction, and keeps it at every larger step count (NaN: no
    direction, or the curve ends no better than it starts). A point estimate read off the means."""
    sign = {"higher": 1.0, "lower": -1.0}.get(better)
    values = np.asarray(means, dtype=float)
    if sign is None or len(values) < 2 or not np.isfinite(values[[0, -1]]).all():
        return np.nan
    gain = sign * (values - values[0])
    if not gain[-1] > 0:
        return np.nan
    found = fewest_lasting(steps, list(np.nan_to_num(gain, nan=-np.inf) >= share * gain[-1]))
    return np.nan if found is None else found


def summary(ctx: Context) -> pd.DataFrame:
    """Per cell and each metric of its series: mean, std, n, interval and the paired difference
    to its reference (the anchor; for SD its series' highest-step cell)."""
    rows = []
    for cell in ctx.grid.cells:
        frame = ctx.cell_frame(cell)
        anchor = ctx.reference(cell)
        for metric in ctx.series_metrics(cell.backbone, cell.adapter):
            values = frame[metric].astype(float) if metric in frame else pd.Series(dtype=float)
            mean = ctx.mean(cell, metric)
            row = {
                "cell_id": cell.id,
                "backbone": cell.backbone,
                "adapter": cell.adapter,
                "steps": cell.steps,
                "metric": metric,
                "label": spec(metric).label,
                "better": spec(metric).better or "",
                "mean": mean.mean,
                "std": float(values.std(ddof=1)) if values.notna().sum() > 1 else np.nan,
                "n": int(values.notna().sum()),
                "n_missing": int(values.isna().sum()),
                "ci_low": mean.low,
                "ci_high": mean.high,
                "df": mean.df,
                "confidence": ctx.confidence,
                "n_identities": frame["identity"].nunique(),
                "n_prompts": frame["prompt_id"].nunique(),
                "anchor": anchor.id if anchor else "",
                "diff_vs_anchor": np.nan,
                "diff_ci_low": np.nan,
                "diff_ci_high": np.nan,
                "n_pairs": 0,
                "n_paired_images": 0,
                "device_name": devices(frame),
                "weights": ctx.study.weights,
            }
            if anchor is not None:
                d = ctx.diff(cell, anchor, metric)
                row.update(
                    diff_vs_anchor=d.mean,
                    diff_ci_low=d.low,
                    diff_ci_high=d.high,
                    n_pairs=d.n,
                    n_paired_images=d.n_items,
                )
            rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def regime(ctx: Context) -> pd.DataFrame:
    """Per backbone/adapter and quality metric of its own: the tested knee and the effective
    regime (against the anchor; for SD against the series' highest-step cell)."""
    rows = []
    for backbone, adapter, cells in ctx.series():
        steps = [c.steps for c in cells]
        anchor = ctx.reference(cells[0])
        for metric in of_kind(ctx.series_metrics(backbone, adapter), "quality"):
            means = [ctx.mean(c, metric).mean for c in cells]
            result = knee_test(
                ctx.curve(cells, metric),
                steps,
                [f"s{s}" for s in steps],
                ctx.confidence,
                ctx.sensitivity,
                ctx.knee_samples,
                ctx.seed,
                spec(metric).bounds,
            )
            rule, effective = effective_regime(ctx, cells, metric, anchor)
            at = result.steps
            rows.append(
                {
                    "backbone": backbone,
                    "adapter": adapter,
                    "metric": metric,
                    "label": spec(metric).label,
                    "better": spec(metric).better or "",
                    "steps": " ".join(map(str, steps)),
                    "means": " ".join(f"{m:.6g}" for m in means),
                    "knee_steps": np.nan if at is None else int(at),
                    "knee_ci_low": result.low,
                    "knee_ci_high": result.high,
                    "knee_value": np.nan if at is None else means[steps.index(int(at))],
                    "knee_verdict": result.verdict,
                    "knee_candidate": np.nan if result.candidate is None else result.candidate,
                    "rise": result.rise.mean,
                    "rise_ci_low": result.rise.low,
                    "rise_ci_high": result.rise.high,
                    "flattening": result.flattening.mean,
                    "flattening_ci_low": result.flattening.low,
                    "flattening_ci_high": result.flattening.high,
                    "kneedle_sensitivity": ctx.sensitivity,
                    "anchor": anchor.id if anchor else "",
                    "anchor_value": ctx.mean(anchor, metric).mean if anchor else np.nan,
                    "margin": margin(metric, ctx.margins),
                    "effective_rule": rule,
                    "effective_steps": effective,
                }
            )
    return pd.DataFrame(rows, columns=REGIME_COLUMNS)


def marginal(ctx: Context) -> pd.DataFrame:
    """Gain of each extra step: paired difference between consecutive steps of a series."""
    rows = []
    cost = ctx.cost_metric()
    for backbone, adapter, cells in ctx.series():
        metrics = of_kind(ctx.series_metrics(backbone, adapter), "quality")
        for lower, upper in zip(cells, cells[1:], strict=False):
            extra_s = np.nan
            if cost is not None:
                extra_s = ctx.mean(upper, cost).mean - ctx.mean(lower, cost).mean
            for metric in metrics:
                d = ctx.diff(upper, lower, metric)
                extra_steps = upper.steps - lower.steps
                rows.append(
                    {
                        "backbone": backbone,
                        "adapter": adapter,
                        "metric": metric,
                        "better": spec(metric).better or "",
                        "from_steps": lower.steps,
                        "to_steps": upper.steps,
                        "from_mean": ctx.mean(lower, metric).mean,
                        "to_mean": ctx.mean(upper, metric).mean,
                        "gain": d.mean,
                        "gain_ci_low": d.low,
                        "gain_ci_high": d.high,
                        "gain_per_step": d.mean / extra_steps,
                        "extra_latency_s": extra_s,
                        # more steps measured faster is timing noise: no gain per second then
                        "gain_per_second": d.mean / extra_s if extra_s > 0 else np.nan,
                        "n_pairs": d.n,
                        "n_paired_images": d.n_items,
                    }
                )
    return pd.DataFrame(rows, columns=MARGINAL_COLUMNS)


def pareto_values(ctx: Context, backbone: str, adapter: str) -> list[str]:
    """The value axes of a series' Pareto rows: its identity metric (no face = 0 when known),
    else each of its own quality metrics (SD style/object series)."""
    metrics = ctx.series_metrics(backbone, adapter)
    identity = next((c for c in PARETO_VALUES if c in metrics), None)
    return [identity] if identity else of_kind(metrics, "quality")


def pareto(ctx: Context) -> pd.DataFrame:
    """Every cell's mean latency (end to end when measured) and identity similarity (no face
    = 0 when known; a series without one: a row for each of its quality metrics); `on_front`
    marks the Pareto frontier among the cells of the same value metric, `device_name` where
    each ran."""
    cost = ctx.cost_metric()
    base = ["cell_id", "backbone", "adapter", "steps", "cost_metric", "value_metric", "device_name"]
    rows = []
    for cell in ctx.grid.cells if cost is not None else []:
        for value in pareto_values(ctx, cell.backbone, cell.adapter):
            row = {
                "cell_id": cell.id,
                "backbone": cell.backbone,
                "adapter": cell.adapter,
                "steps": cell.steps,
                "cost_metric": cost,
                "value_metric": value,
                "device_name": devices(ctx.cell_frame(cell)),
            }
            for name, metric in (("cost", cost), ("value", value)):
                m = ctx.mean(cell, metric)
                row.update({name: m.mean, f"{name}_ci_low": m.low, f"{name}_ci_high": m.high})
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=[*base, "cost", "value", "on_front"])
    table = pd.DataFrame(rows)
    table["on_front"] = False
    for value, group in table.groupby("value_metric", sort=False):
        front = pareto_mask(group["cost"], group["value"], spec(value).better != "lower")
        table.loc[group.index, "on_front"] = front
    table["on_front"] = table["on_front"].astype(bool)
    return table


def ablation(ctx: Context) -> pd.DataFrame:
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
        "n_paired_images",
    ]
    rows = []
    anchor = ctx.grid.anchor
    for backbone in dict.fromkeys(c.backbone for c in ctx.grid.cells):
        adapters = list(dict.fromkeys(c.adapter for c in ctx.grid.cells_of(backbone)))
        if len(adapters) < 2:
            continue
        reference = anchor.adapter if anchor and anchor.adapter in adapters else adapters[0]
        for adapter in adapters:
            if adapter == reference:
                continue
            for cell in ctx.grid.cells_of(backbone, adapter):
                ref = Cell(backbone, reference, cell.steps)
                if ref not in ctx.grid.cells:
                    continue
                shared = set(ctx.series_metrics(backbone, reference))
                for metric in of_kind(ctx.series_metrics(backbone, adapter), "quality"):
                    d = ctx.diff(cell, ref, metric)
                    if metric not in shared or d.n_items == 0:
                        continue  # a metric the reference series lacks, or items it never drew
                    rows.append(
                        {
                            "backbone": backbone,
                            "steps": cell.steps,
                            "adapter": adapter,
                            "reference_adapter": reference,
                            "metric": metric,
                            "better": spec(metric).better or "",
                            "mean": ctx.mean(cell, metric).mean,
                            "reference_mean": ctx.mean(ref, metric).mean,
                            "diff": d.mean,
                            "diff_ci_low": d.low,
                            "diff_ci_high": d.high,
                            "n_pairs": d.n,
                            "n_paired_images": d.n_items,
                        }
                    )
    return pd.DataFrame(rows, columns=columns)


def trajectory(ctx: Context, frame: pd.DataFrame | None) -> pd.DataFrame:
    """Per trajectory cell, step and score or probe column: the mean over items with its interval."""
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
    frame = with_zero_identity(frame)
    metrics = [m for m in metric_columns(frame) if spec(m).kind in TRAJECTORY_KINDS]
    rows = []
    for (cell_id, step), group in frame.groupby(["cell_id", "step"], sort=True):
        cell = Cell.parse(cell_id)
        for metric in metrics:
            m = mean_interval(group, metric, ctx.confidence, bounds=spec(metric).bounds)
            rows.append(
                {
                    "cell_id": cell_id,
                    "backbone": cell.backbone,
                    "adapter": cell.adapter,
                    "steps": cell.steps,
                    "step": int(step),
                    "sigma": float(group["sigma"].mean()) if "sigma" in group else np.nan,
                    "metric": metric,
                    "mean": m.mean,
                    "ci_low": m.low,
                    "ci_high": m.high,
                    "n": m.n,
                }
            )
    return pd.DataFrame(rows, columns=columns)


def coverage(ctx: Context) -> pd.DataFrame:
    """Simulated coverage of the intervals at the checked sizes and at each design this sweep's
    series have, labelled with the backbones of each (`fewstep.analysis.coverage.design_coverage`)."""
    designs: dict[tuple[int, int, int], list[str]] = {}
    for backbone, _, cells in ctx.series():
        frame = pd.concat([ctx.cell_frame(c) for c in cells])
        if not frame.empty:
            shape = tuple(int(frame[k].nunique()) for k in ("identity", "prompt_id", "seed"))
            designs.setdefault(shape, [])
            designs[shape] += [] if backbone in designs[shape] else [backbone]
    named = {
        shape: (
            "this sweep: "
            + ", ".join(backbones)
            + (
                " (references x prompts x seeds)"
                if all(anchors_to_highest_step(ctx.study, b) for b in backbones)
                else " (identities x prompts x seeds)"
            )
        )
        for shape, backbones in designs.items()
    }
    return design_coverage(named, ctx.confidence, ctx.seed)


def widths(ctx: Context) -> pd.DataFrame:
    """How wide the headline identity metric's intervals would be with more identities, at this
    sweep's own spread: a cell mean (the anchor's) and the study's paired difference."""
    metric = next((m for m in PARETO_VALUES if m in ctx.metrics), None)
    sources = []
    if metric and ctx.grid.anchor is not None:
        frame = ctx.cell_frame(ctx.grid.anchor)
        sources.append(("cell mean", ctx.grid.anchor.id, frame[metric].to_numpy(), frame))
    if metric and ctx.grid.comparison is not None:
        baseline, candidate = ctx.grid.comparison
        paired = ctx.paired(candidate, baseline)
        source = f"{candidate.id} - {baseline.id}"
        sources.append(("paired difference", source, paired[f"{metric}_diff"].to_numpy(), paired))
    shape = (len({item.prompt for item in ctx.grid.items}), len(ctx.study.seeds))  # identity prompts
    return projected_widths(metric, sources, shape, ctx.confidence, ctx.seed)


#: the table functions of the aggregate (the trajectory table also reads the trajectory frames)
TABLE_FUNCTIONS = {
    "summary": summary,
    "regime": regime,
    "marginal": marginal,
    "pareto": pareto,
    "comparison": comparison,
    "ablation": ablation,
    "coverage": coverage,
    "widths": widths,
}


def tables(study: Study, scores: pd.DataFrame, trajectories: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """Every table of `TABLES`, each from one function of the shared `Context`."""
    ctx = Context(study, scores)
    return {
        name: trajectory(ctx, trajectories) if name == "trajectory" else TABLE_FUNCTIONS[name](ctx)
        for name in TABLES
    }


def run(study: Study, out: Path | None = None) -> Path:
    """Write every table (summary to `out` if given, the others next to it)."""
    grid, paths = Grid.of(study), Paths(study)
    out = Path(out or paths.summary)
    scores = load_scores(study)
    results = tables(study, scores, load_trajectories(study))
    write_table(paths.per_image, stamp(scores, study, grid.models))
    for name, table in results.items():
        write_table(
            out if name == "summary" else out.parent / f"{name}.csv",
            stamp(table, study, grid.models, scores),
        )
    print(
        f"aggregated {len(scores)} images over {len(grid.cells)} cells, "
        f"{len(metric_columns(scores))} metrics -> {out.parent}"
    )
    return out
