"""The comparison table: each config ``comparison`` pair, candidate (e.g. few steps or a distilled
backbone) against baseline (e.g. the base model at its usual steps), for every family.

Rows per pair: the latency ratios baseline / candidate (end to end, denoise + decode), then the
paired difference candidate - baseline of every quality metric of the pair's role (identity
pairs list the study's identity rows, scored or not, as the study table always did), each with the
crossed random-effects interval of `fewstep.analysis.stats` (the one `analysis/coverage.py`
checks), and the candidate series' effective regime against the baseline cell (`effective_regime`,
the regime table's non-inferiority rule with the baseline as anchor).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fewstep.analysis.context import Context
from fewstep.analysis.metric_registry import margin, of_kind, spec
from fewstep.analysis.outputs import COMPARISON_COLUMNS
from fewstep.analysis.scores import devices
from fewstep.analysis.stats import fewest_lasting, ratio_interval
from fewstep.families import FAMILIES
from fewstep.grid import Cell

#: the study's headline numbers (arXiv 2605.09460), FLUX.1-dev 28 steps vs FLUX.1-schnell 4 steps
STUDY = {
    "end_to_end_s": 5.9,  # the paper's speed-up is end to end
    "id_sim_zero": 0.028,
    "lpips_ref": -0.016,
}
#: the latency rows of every pair and the identity rows of identity pairs: (quantity, metric);
#: latency rows are ratios baseline / candidate
COMPARISON_ROWS = (
    ("end-to-end latency ratio (baseline / candidate)", "end_to_end_s"),
    ("denoise + decode latency ratio (baseline / candidate)", "latency_s"),
    ("identity similarity (no face = 0), candidate - baseline", "id_sim_zero"),
    ("identity similarity (faces only), candidate - baseline", "id_sim"),
    ("face detection rate, candidate - baseline", "face_detected"),
    ("identity similarity to held-out photos (faces only), candidate - baseline", "id_sim_heldout"),
    ("dlib identity similarity (no face = 0), candidate - baseline", "id_sim_dlib_zero"),
    ("dlib identity similarity to held-out photos, candidate - baseline", "id_sim_heldout_dlib"),
    ("LPIPS to reference, candidate - baseline", "lpips_ref"),
)


def effective_regime(ctx: Context, cells: list[Cell], metric: str, anchor: Cell | None) -> tuple[str, float]:
    """(rule, fewest steps) of the effective regime of one series (NaN: never, or no anchor).

    Non-inferiority: the fewest steps from which, for every larger step count too, the
    lower bound of (cell - anchor) in the better direction is >= -margin. An anchor-relative
    metric (0 at the anchor): the fewest steps from which the upper bound of its mean is
    <= margin; the anchor cell passes by definition."""
    info = spec(metric)
    delta = margin(metric, ctx.margins)
    if anchor is None:
        return "no anchor", np.nan
    if info.better not in ("higher", "lower") or not np.isfinite(delta):
        return "no direction or margin", np.nan
    if info.anchor_relative:
        passes = [c == anchor or not ctx.mean(c, metric).high > delta for c in cells]
        rule = f"upper bound <= {delta:g}"
    else:
        passes = []
        for cell in cells:
            d = ctx.diff(cell, anchor, metric)
            worst = d.low if info.better == "higher" else -d.high
            passes.append(cell == anchor or worst >= -delta)
        rule = f"non-inferior to the anchor within {delta:g}"
    found = fewest_lasting([c.steps for c in cells], passes)
    return rule, np.nan if found is None else found


def pair_rows(ctx: Context, baseline: Cell, candidate: Cell) -> list[tuple[str, str]]:
    """(quantity, metric) rows of one pair: the latency ratios; an identity pair's identity rows
    (each, scored or not); then every other quality metric both cells' series were scored with."""
    theirs = ctx.series_metrics(baseline.backbone, baseline.adapter)
    shared = [m for m in ctx.series_metrics(candidate.backbone, candidate.adapter) if m in theirs]
    identity = not ctx.grid.reads_references(candidate)
    listed = [(q, m) for q, m in COMPARISON_ROWS if spec(m).kind == "cost" or identity or m in shared]
    named = {m for _, m in listed}
    extra = [
        (f"{spec(m).label}, candidate - baseline", m) for m in of_kind(shared, "quality") if m not in named
    ]
    return listed + extra


def comparison(ctx: Context) -> pd.DataFrame:
    """Every pair's rows (`pair_rows`), pairs in config order: latency ratios ("not comparable"
    across device names), paired differences with intervals on the images both cells hold, and
    the candidate series' effective regime against the baseline; the study's figures beside an
    identity pair's rows."""
    frames = [_pair(ctx, baseline, candidate) for baseline, candidate in ctx.grid.comparisons]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COMPARISON_COLUMNS)


def _pair(ctx: Context, baseline: Cell, candidate: Cell) -> pd.DataFrame:
    base_device = devices(ctx.cell_frame(baseline))
    cand_device = devices(ctx.cell_frame(candidate))
    identity = not ctx.grid.reads_references(candidate)
    series = sorted(ctx.grid.cells_of(candidate.backbone, candidate.adapter), key=lambda c: c.steps)
    rows = []
    for quantity, metric in pair_rows(ctx, baseline, candidate):
        row = dict.fromkeys(COMPARISON_COLUMNS, np.nan)
        row.update(
            quantity=quantity,
            metric=metric,
            family=FAMILIES[ctx.grid.backbone(candidate).family].label,
            baseline=baseline.id,
            candidate=candidate.id,
            study=STUDY.get(metric, np.nan) if identity else np.nan,
            available=metric in ctx.metrics,
            n_pairs=0,
            n_paired_images=0,
            baseline_device=base_device,
            candidate_device=cand_device,
            effective_rule="",
            note="",
        )
        if metric in ctx.metrics:
            row.update(baseline_mean=ctx.mean(baseline, metric).mean)
            row.update(candidate_mean=ctx.mean(candidate, metric).mean)
            if spec(metric).kind == "cost":
                r = ratio_interval(
                    ctx.paired(baseline, candidate), f"{metric}_a", f"{metric}_b", ctx.confidence
                )
                if base_device != cand_device or "," in base_device:
                    where = f"baseline on {base_device or '?'}, candidate on {cand_device or '?'}"
                    row.update(note=f"not comparable: {where}")
                else:
                    row.update(estimate=r.mean, ci_low=r.low, ci_high=r.high)
                    if "warmup" in ctx.scores:
                        row.update(note="warm-up batch excluded")
            else:
                r = ctx.diff(candidate, baseline, metric)
                row.update(estimate=r.mean, ci_low=r.low, ci_high=r.high)
                rule, steps = effective_regime(ctx, series, metric, baseline)
                row.update(effective_rule=rule, effective_steps=steps)
            row.update(n_pairs=r.n, n_paired_images=r.n_items)
        rows.append(row)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
