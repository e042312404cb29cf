"""The sweep's report: figures (PNG + SVG), image grids, CSV tables and one HTML page.

`reports/<sweep>/index.html` is self-contained (figures and grids embedded as
PNG data); next to it `figures/<section>/*.{png,svg}` (the Snakemake report
registers the PNGs, one category per section) and `tables/*.csv`. Sections
without data (no trajectories, one adapter, no LPIPS column) say so instead of
showing an empty figure. Family-specific sections and additions come from each family of the
sweep (`fewstep.analysis.family_sections`); this module names no family.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from fewstep.analysis import identity_encoders, trajectories
from fewstep.analysis.context import anchors_to_highest_step
from fewstep.analysis.family_sections import family_parts, rows_of
from fewstep.analysis.figures import (
    ablation_figure,
    cost_figure,
    pareto_figure,
    regime_figure,
)
from fewstep.analysis.formats import (
    effective_text,
    fmt,
    fmt_ci,
    html_table,
    knee_text,
    note_html,
    pairs,
    steps_label,
    wide,
)
from fewstep.analysis.metric_registry import margin, spec
from fewstep.analysis.outputs import SECTIONS, TABLES
from fewstep.analysis.page import NA, Page, render
from fewstep.analysis.pictures import even, image_grid
from fewstep.analysis.report_method import (
    identity_warning,
    method_section,
    provenance_section,
    summary_section,
)
from fewstep.analysis.scores import load_trajectories
from fewstep.analysis.stats import Bounds
from fewstep.core import provenance
from fewstep.core.config import config_hash
from fewstep.core.images import load_rgb
from fewstep.core.io import atomic_write_bytes, atomic_write_text
from fewstep.core.paths import Paths
from fewstep.core.study import Study
from fewstep.families import FAMILIES
from fewstep.grid import Cell, Grid

#: the range of a ratio of positive means
RATIO = Bounds(0.0, np.inf)


def range_of(row) -> Bounds:
    """The range of a study-table row's estimate: a ratio's, or the difference of its metric's."""
    return RATIO if spec(row.metric).kind == "cost" else spec(row.metric).bounds.difference()


def pairs_of(comparison: pd.DataFrame) -> list[pd.DataFrame]:
    """The comparison table's rows of each (baseline, candidate) pair, pairs in table order."""
    groups = comparison.groupby(["baseline", "candidate"], sort=False)
    return [rows.reset_index(drop=True) for _, rows in groups]


def study_pair(comparison: pd.DataFrame) -> pd.DataFrame:
    """The rows of the first pair the study's figures stand beside (an identity pair), else none."""
    return next((rows for rows in pairs_of(comparison) if rows["study"].notna().any()), comparison.iloc[:0])


def _effective_text(row) -> str:
    """The candidate series' effective regime against the baseline cell, for a quality row."""
    if spec(row.metric).kind == "cost" or not isinstance(row.effective_rule, str) or not row.effective_rule:
        return "—"
    if not np.isfinite(row.effective_steps):
        return f"never ({row.effective_rule})"
    return f"from {int(row.effective_steps)} steps"


def _pair_table(rows: pd.DataFrame, confidence: float) -> str:
    table = []
    for row in rows.itertuples(index=False):
        ratio = spec(row.metric).kind == "cost"
        note = row.note if isinstance(row.note, str) else ""
        if not row.available:
            ours = f"{NA} (the scores have no {row.metric} column)"
            inside = "—"
        elif note.startswith("not comparable"):
            ours, inside = note, "—"
        else:
            ours = fmt_ci(
                row.estimate, row.ci_low, row.ci_high, not ratio, "x" if ratio else "", range_of(row)
            )
            inside = (
                fmt(bool(row.ci_low <= row.study <= row.ci_high))
                if np.isfinite(row.ci_low) and np.isfinite(row.study)
                else "—"
            )
        study = "—" if not np.isfinite(row.study) else (f"{row.study:g}x" if ratio else f"{row.study:+g}")
        table.append(
            {
                "quantity": row.quantity,
                "baseline mean": fmt(row.baseline_mean) if row.available else NA,
                "candidate mean": fmt(row.candidate_mean) if row.available else NA,
                f"this sweep [{confidence:.0%} interval]": ours,
                "candidate's series as good as the baseline": _effective_text(row),
                "study (dev-28 vs schnell-4)": study,
                "study value inside interval": inside,
                "pairs used (of images paired)": pairs(row.n_pairs, row.n_paired_images),
                "note": note,
            }
        )
    return html_table(pd.DataFrame(table, dtype=object), "study")


def _study_section(page: Page, comparison: pd.DataFrame, confidence: float) -> None:
    if comparison.empty:
        page.add(
            "study",
            "The study's comparison",
            note_html(
                "The config names no comparison cells (comparison: baseline, candidate): nothing to compare."
            ),
        )
        return
    body = (
        "<p>Each pair of the config's <code>comparison</code>: differences are candidate minus baseline "
        "on the same picture, prompt and seed (paired), for every metric of the pair's role; latency "
        "ratios are mean baseline over mean candidate time per image on the same items, the warm-up "
        "batch left out where the manifest marks it. The effective regime is the fewest steps of the "
        "candidate's series from which every cell is non-inferior to the baseline cell within the "
        "metric's margin (the regime table's rule, the baseline as anchor).</p>"
    )
    if not study_pair(comparison).empty:
        body += (
            "<p>The study's 5.9x is end to end (prompt and identity encoding, denoising, decoding); it is "
            "set beside our end-to-end row only. The identity rows: the headline, compared with the "
            "study's +0.028, is ArcFace similarity with an image without a detected face counted as 0 "
            "(<code>id_sim_zero</code>: every image counts); the faces-only mean (<code>id_sim</code>, "
            "over the pairs where both images show a face) and the detection rate stand beside it. "
            "The study compares FLUX.1-dev at 28 steps with FLUX.1-schnell at 4 (InfuseNet on both).</p>"
        )
    for rows in pairs_of(comparison):
        first = rows.iloc[0]
        devices = first["baseline_device"] if isinstance(first["baseline_device"], str) else ""
        body += (
            f"<h3>{html.escape(str(first['family']))}: <code>{html.escape(first['candidate'])}</code> "
            f"against <code>{html.escape(first['baseline'])}</code></h3>"
            + (f"<p>Devices: {html.escape(devices)}.</p>" if devices else "")
            + _pair_table(rows, confidence)
        )
    page.add("study", "The study's comparison", body)


def _findings(page: Page, read: dict[str, pd.DataFrame]) -> None:
    """A few sentences a reader can take away, each pointing at its section."""
    items = []
    comparison, regime, pareto = read["comparison"], read["regime"], read["pareto"]
    for row in comparison.itertuples(index=False):
        if not row.available:
            continue
        if isinstance(row.note, str) and row.note.startswith("not comparable"):
            items.append(f"{html.escape(row.quantity)}: {html.escape(row.note)}.")
        elif not np.isfinite(row.estimate):
            continue
        elif spec(row.metric).kind == "cost":
            study = f"; the study: {row.study:g}x" if np.isfinite(row.study) else ""
            items.append(
                f"<code>{html.escape(row.candidate)}</code> is "
                f"{fmt_ci(row.estimate, row.ci_low, row.ci_high, suffix='x', bounds=RATIO)} faster per "
                "image than "
                f"<code>{html.escape(row.baseline)}</code> ({html.escape(spec(row.metric).label)}{study})."
            )
        elif row.metric in ("id_sim_zero", "lpips_ref"):
            items.append(
                f"{html.escape(spec(row.metric).label)}, candidate minus baseline: "
                f"{fmt_ci(row.estimate, row.ci_low, row.ci_high, True, bounds=range_of(row))} "
                f"(the study: {row.study:+g}; "
                f"{pairs(row.n_pairs, row.n_paired_images)} pairs)."
            )
    study = study_pair(comparison)
    if not study.empty:
        first = study.iloc[0]
        if Cell.parse(first["baseline"]).steps != 28 or Cell.parse(first["candidate"]).steps != 4:
            items.append(
                "This sweep's comparison cells are not the study's (dev at 28 steps vs schnell at 4): "
                "compare the direction, not the size, of the numbers."
            )
    metrics = set(regime.get("metric", []))
    headline = next((m for m in ("id_sim_zero", "id_sim") if m in metrics), None)
    primary = regime[regime["metric"] == headline] if headline else regime.head(1)
    for row in primary.itertuples(index=False):
        text = knee_text(row)
        if row.effective_rule != "no anchor":
            text += html.escape(f"; as good as the anchor (margin {row.margin:g}) from {effective_text(row)}")
        items.append(
            f"<code>{html.escape(row.backbone)} / {html.escape(row.adapter)}</code>, "
            f"{html.escape(spec(row.metric).label)}: {text}."
        )
    if not pareto.empty:
        front = ", ".join(f"<code>{html.escape(c)}</code>" for c in pareto[pareto["on_front"]]["cell_id"])
        items.append(f"Pareto frontier of latency vs identity similarity: {front}.")
    if items:
        page.add("findings", "At a glance", "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")


def _regime_section(page: Page, summary: pd.DataFrame, regime: pd.DataFrame, study: Study) -> None:
    options = study.report
    metrics = [m for m in dict.fromkeys(regime["metric"])] if not regime.empty else []
    if not metrics:
        page.add("regime", "Effective regime", note_html("No quality metric in the scores."))
        return
    figures = "".join(
        page.figure(
            regime_figure(summary, regime, m, margin(m, options["margins"])),
            "regime",
            m,
            f"{spec(m).label} vs steps per backbone (tested knee starred)",
        )
        for m in metrics
    )
    table = pd.DataFrame(
        {
            "backbone": regime["backbone"],
            "adapter": regime["adapter"],
            "metric": regime["metric"],
            "steps": regime["steps"],
            "knee (steps) [interval]": [knee_text(r) for r in regime.itertuples(index=False)],
            "value at knee": [fmt(v) for v in regime["knee_value"]],
            "rise first → last step [interval]": [
                fmt_ci(r.rise, r.rise_ci_low, r.rise_ci_high, True, bounds=spec(r.metric).bounds.difference())
                for r in regime.itertuples(index=False)
            ],
            "effective from (rule)": [
                effective_text(r) + ("" if r.effective_rule == "no anchor" else f" ({r.effective_rule})")
                for r in regime.itertuples(index=False)
            ],
            "anchor value": [fmt(v) for v in regime["anchor_value"]],
        },
        dtype=object,
    )
    body = (
        "<p>Each quality metric against the number of denoising steps, per backbone: a line per adapter, "
        f"the band its {options['confidence']:.0%} interval, the star a knee (Kneedle, sensitivity "
        f"S = {options['kneedle_sensitivity']:g}) that stands out of the noise, with the bar its "
        "bootstrap interval; the dashed line is the anchor cell's value and the dotted one the "
        "non-inferiority margin. A knee is reported only when the paired change from the first to the "
        "last step count and the drop in slope at the knee both exceed their intervals; otherwise the "
        'table says why not ("flat within noise"). <b>Effective from</b>: the fewest steps from which '
        "every larger step count's paired difference to the anchor has its lower bound (in the better "
        "direction) above minus the margin (<code>report.margins</code>); for LPIPS to the anchor, "
        "which is 0 at the anchor, the fewest steps from which the mean's upper bound stays below the "
        "margin.</p>" + figures + html_table(table)
    )
    page.add("regime", "Effective regime: metric vs steps", body)


def _marginal_section(page: Page, marginal: pd.DataFrame) -> None:
    if marginal.empty:
        page.add(
            "marginal", "Marginal gain of each extra step", note_html("Every series has a single step count.")
        )
        return
    rows = marginal.itertuples(index=False)
    table = pd.DataFrame(
        [
            {
                "backbone / adapter": f"{r.backbone} / {r.adapter}",
                "metric": r.metric,
                "steps": f"{r.from_steps} → {r.to_steps}",
                "gain [interval]": fmt_ci(
                    r.gain, r.gain_ci_low, r.gain_ci_high, True, bounds=spec(r.metric).bounds.difference()
                ),
                "gain per added step": fmt(r.gain_per_step, signed=True),
                "added latency per image (s)": fmt(r.extra_latency_s, signed=True),
            }
            for r in rows
        ],
        dtype=object,
    )
    body = (
        "<p>Paired difference between consecutive step counts of a series (same identity, prompt and seed), "
        "in the metric's own direction (a gain of a lower-is-better metric is negative when it improves); "
        "<code>marginal.csv</code> also divides by the added mean latency (gain per extra second).</p>"
        + html_table(table)
    )
    page.add("marginal", "Marginal gain of each extra step", body)


def _cost_section(page: Page, summary: pd.DataFrame, pareto: pd.DataFrame) -> None:
    present = set(summary["metric"])
    costs = [m for m in ("end_to_end_s", "latency_s", "peak_mem_mb") if m in present]
    body = ""
    if costs:
        body += page.figure(cost_figure(summary, costs), "cost", "latency", "latency (and memory) vs steps")
    if pareto.empty:
        body += note_html(
            f"Pareto frontier {NA}: the scores need a latency and an identity similarity column."
        )
    else:
        body += page.figure(
            pareto_figure(pareto), "cost", "pareto", "latency vs identity similarity, all cells"
        )
        front = pareto[pareto["on_front"]].sort_values("cost")
        body += (
            "<p>On the frontier (no other cell is both faster and more similar): "
            + ", ".join(f"<code>{html.escape(c)}</code>" for c in front["cell_id"])
            + f". Latency: {html.escape(spec(pareto['cost_metric'].iloc[0]).label)}, warm-up batch left "
            "out where the manifest marks it.</p>"
        )
        names = {n for n in pareto["device_name"].fillna("").astype(str) if n}
        if len(names) > 1:
            body += note_html(
                "The cells ran on different devices (" + ", ".join(sorted(names)) + "): their latencies are "
                "not comparable, and neither is the frontier."
            )
    page.add(
        "cost",
        "Cost: latency vs steps and the Pareto frontier",
        body or note_html("No cost metric in the scores."),
    )


def _ablation_section(page: Page, ablation: pd.DataFrame) -> None:
    if ablation.empty:
        note = note_html("Each backbone runs a single adapter: no ablation.")
        page.add("ablation", "Adapter ablation", note)
        return
    body = (
        "<p>Each adapter minus the reference adapter on the same backbone, steps, identity, prompt, seed.</p>"
    )
    for metric in dict.fromkeys(ablation["metric"]):
        body += page.figure(
            ablation_figure(ablation, metric), "ablation", metric, f"adapter ablation: {spec(metric).label}"
        )
    ablation = ablation.assign(
        compared=[
            f"{a} − {r}" for a, r in zip(ablation["adapter"], ablation["reference_adapter"], strict=True)
        ]
    )
    table = wide(
        ablation,
        ["backbone", "steps", "compared"],
        "difference [interval]",
        lambda r: fmt_ci(
            r.diff, r.diff_ci_low, r.diff_ci_high, True, bounds=spec(r.metric).bounds.difference()
        ),
    ).rename(columns={"compared": "adapter − reference"})
    page.add("ablation", "Adapter ablation", body + html_table(table))


def _trajectory_section(page: Page, trajectory: pd.DataFrame, frames: pd.DataFrame | None) -> None:
    """The trajectories of the families without sections of their own (the others draw theirs)."""
    body = trajectories.draw(page, trajectory, frames, "trajectory")
    if not body:
        body = note_html(
            "No trajectory tables in this sweep's families without sections of their own "
            "(results/<sweep>/trajectories/): section skipped."
        )
    page.add("trajectory", "Trajectories: the x0 prediction at every step, scored, and probes", body)


def _grids_section(page: Page, skip: frozenset[str] = frozenset()) -> None:
    """Identity x steps grids of every backbone/adapter but the backbones in `skip` (shown in their
    family's own section)."""
    study, grid, paths = page.study, page.grid, page.paths
    identities = study.identities[: study.report.grid_max_identities]
    references = {identity.id: load_rgb(identity.image) for identity in identities}
    seed = study.seeds[0]
    body = (
        "<p>Rows: identities (the reference picture first); columns: steps. Every image of a grid has the "
        f"same prompt and seed ({seed}), so a row shows the identity forming step by step.</p>"
    )
    for prompt in list(dict.fromkeys(item.prompt for item in grid.items))[: study.report.grid_prompts]:
        for backbone, adapter in dict.fromkeys((c.backbone, c.adapter) for c in grid.cells):
            if backbone in skip:
                continue
            cells = even(
                sorted(grid.cells_of(backbone, adapter), key=lambda c: c.steps),
                study.report.grid_max_steps,
            )
            tiles = {
                (identity, steps_label(cell.steps)): paths.image(cell.id, f"{identity}/{prompt}/s{seed}")
                for identity in references
                for cell in cells
            }
            canvas = image_grid(references, [steps_label(c.steps) for c in cells], tiles)
            body += page.picture(
                canvas,
                "grids",
                f"{backbone}__{adapter}__{prompt}",
                f"{backbone} / {adapter}: identity x steps, prompt {prompt}, seed {seed}",
            )
    page.add("grids", "Image grids: identity x steps", body)


def run(study: Study, summary_path: Path, out: Path | None = None) -> Path:
    """Write reports/<sweep>/index.html, figures/<section>/ and tables/ from the aggregate tables."""
    grid, paths = Grid.of(study), Paths(study)
    out = Path(out or paths.report_index)
    summary_path = Path(summary_path)
    sources = {
        name: summary_path if name == "summary" else summary_path.parent / f"{name}.csv" for name in TABLES
    }
    read = {name: pd.read_csv(path) for name, path in sources.items()}
    per_image = pd.read_parquet(summary_path.parent / paths.per_image.name)
    for section in SECTIONS:  # every section folder exists, empty when it has nothing to show
        (out.parent / "figures" / section).mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        atomic_write_bytes(out.parent / "tables" / f"{name}.csv", source.read_bytes())

    page = Page(study, out)
    frames = load_trajectories(study)
    parts, own = family_parts(page, read, per_image, frames)
    every_summary = read["summary"]  # the identity encoders compare every identity cell (SD FaceID's too)
    read = {name: rows_of(table, own, keep=False) for name, table in read.items()}  # the generic sections'
    summary = read["summary"]
    _findings(page, read)
    _study_section(page, read["comparison"], study.report.confidence)
    _regime_section(page, summary, read["regime"], study)
    page.add(*identity_encoders.section(study, every_summary, study_pair(read["comparison"])))
    _marginal_section(page, read["marginal"])
    _cost_section(page, summary, read["pareto"])
    _ablation_section(page, read["ablation"])
    _trajectory_section(
        page, read["trajectory"], None if frames is None else rows_of(frames, own, keep=False)
    )
    _grids_section(page, frozenset(own))
    for part in parts:
        page.sections += part.sections
    summary_section(page, summary)
    method_section(page, summary, read["coverage"], read["widths"])
    provenance_section(page, per_image)
    for part in parts:
        for key, extra in part.appended.items():
            page.append(key, extra)

    weights = {study.weights, *per_image.get("weights", pd.Series(dtype=str)).dropna().unique()}
    anchor = grid.anchor
    n_id = len(study.identities)
    intro = header_counts(study, per_image) + (
        f"<p>Weights: <b>{html.escape(', '.join(sorted(weights)))}</b>. "
        f"Anchor: <code>{html.escape(anchor.id if anchor else 'none')}</code>. "
    )
    compared = [" vs ".join(f"<code>{html.escape(c.id)}</code>" for c in pair) for pair in grid.comparisons]
    intro += f"Comparison: {'; '.join(compared)}. " if compared else ""
    intro += f"Config hash {config_hash(study)}, commit {html.escape(provenance.git_commit())}.</p>"
    intro += identity_warning(n_id, read["coverage"])
    atomic_write_text(out, render(page, weights, intro))
    for problem in page.problems:
        print(f"report: figure layout: {problem}")
    print(f"report -> {out}")
    return out


def counted(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def header_counts(study: Study, per_image: pd.DataFrame) -> str:
    """Cells and images per model family as the scored images (one row per manifest row) hold
    them: each family's own images per cell and their identities (references) x prompts x seeds."""
    family = per_image["backbone"].map(lambda b: study.backbones[b].family)
    parts = []
    for name, frame in per_image.groupby(family, sort=False):
        per_cell = frame.groupby("cell_id", sort=False)
        sizes = sorted(set(per_cell.size()))
        dimensions = per_cell.agg({"identity": "nunique", "prompt_id": "nunique", "seed": "nunique"})
        shapes = sorted(set(dimensions.itertuples(index=False, name=None)))
        who = (
            ("reference", "references")
            if anchors_to_highest_step(study, frame["backbone"].iloc[0])
            else ("identity", "identities")
        )
        each = (
            counted(sizes[0], "image", "images") + " each"
            if len(sizes) == 1
            else f"{sizes[0]} to {sizes[-1]} images"
        )
        designs = "; ".join(
            f"{counted(i, *who)} x {counted(p, 'prompt', 'prompts')} x {counted(k, 'seed', 'seeds')}"
            for i, p, k in shapes
        )
        cells = counted(per_cell.ngroups, "cell", "cells")
        text = f"{FAMILIES[name].label}: {cells} of {each} ({designs})"
        attributes = (
            f'data-family="{html.escape(name)}" data-cells="{per_cell.ngroups}" data-images="{len(frame)}"'
        )
        parts.append(f"<li {attributes}>{html.escape(text)}</li>")
    cells, images = per_image["cell_id"].nunique(), len(per_image)
    total = f"{counted(cells, 'cell', 'cells')} (backbone x adapter x steps), "
    total += counted(images, "image", "images")
    head = f'<p class="counts" data-cells="{cells}" data-images="{images}">{total} in all:</p>'
    return head + f'<ul class="counts">{"".join(parts)}</ul>'
