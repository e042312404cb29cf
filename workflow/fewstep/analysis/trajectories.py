"""The trajectory figures: the x0 prediction at every step, scored, with probes and x0 grids.

One figure per metric that scored the x0 images (its columns as panels, the metric named in the
title and caption), one of the families' adapter-strength probes, per-block probe heatmaps and a
reference x step grid of decoded x0 per cell. The generic trajectory section draws them for the
families without sections of their own; a family with its own section draws its share through
`ReportKit.draw_trajectories`, which is `draw` bound to its rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fewstep.analysis.figures import block_heatmap, block_matrix, trajectory_figure
from fewstep.analysis.metric_registry import METRIC_OF, spec
from fewstep.analysis.page import Page
from fewstep.analysis.pictures import even, image_grid
from fewstep.core.images import load_rgb
from fewstep.core.paths import Paths
from fewstep.grid import Cell


def drawn_columns(trajectory: pd.DataFrame, kind: str) -> list[str]:
    """The trajectory table's columns of `kind` with at least one finite mean, in table order."""
    finite = trajectory[np.isfinite(trajectory["mean"].astype(float))]
    return [m for m in dict.fromkeys(finite["metric"]) if spec(m).kind == kind]


def by_metric(columns: list[str]) -> dict[str, list[str]]:
    """Score columns grouped by the metric that writes them (a column no metric writes: itself)."""
    groups: dict[str, list[str]] = {}
    for column in columns:
        groups.setdefault(METRIC_OF.get(column, column), []).append(column)
    return groups


def draw(
    page: Page, trajectory: pd.DataFrame, frames: pd.DataFrame | None, folder: str, prefix: str = ""
) -> str:
    """HTML of the trajectory figures of the cells in `trajectory` (the aggregate's per-step table)
    and `frames` (their per-item rows), written under figures/`folder`/ with names starting with
    `prefix`; "" when there is no trajectory."""
    if trajectory.empty:
        return ""
    body = ""
    for metric, columns in by_metric(drawn_columns(trajectory, "quality")).items():
        labels = ", ".join(spec(c).label for c in columns)
        body += page.figure(
            trajectory_figure(trajectory, columns, f"The x0 prediction at every step, scored by {metric}"),
            folder,
            f"{prefix}x0__{metric}",
            f"x0 at every step, metric {metric}: {labels}",
        )
    probes = [m for m in drawn_columns(trajectory, "probe") if m != "adapter_active"]
    if probes:
        body += page.figure(
            trajectory_figure(trajectory, probes, "Adapter-strength probes along sampling"),
            folder,
            f"{prefix}norms",
            "adapter-strength (norm) probes along the trajectory: " + ", ".join(probes),
        )
    if frames is None or frames.empty:
        return body
    for cell_id, frame in frames.groupby("cell_id", sort=False):
        if any(block_matrix(frame, f"block_relative_{s}") is not None for s in ("double", "single")):
            body += page.figure(
                block_heatmap(frame, cell_id),
                folder,
                f"{prefix}blocks__" + cell_id.replace("/", "__"),
                f"norm probes per block (step x block), {cell_id}",
            )
    for cell_id, frame in frames.groupby("cell_id", sort=False):
        body += _x0_grid(page, Cell.parse(cell_id), frame, folder, prefix)
    return body


def _x0_grid(page: Page, cell: Cell, frame: pd.DataFrame, folder: str, prefix: str) -> str:
    """The decoded x0 of one cell's first prompt and seed: pictures (identities or references, the
    picture first) in rows, steps in columns."""
    study = page.study
    prompt, seed = frame["prompt_id"].iloc[0], frame["seed"].iloc[0]
    chosen = frame[(frame["prompt_id"] == prompt) & (frame["seed"] == seed)]
    shown = list(dict.fromkeys(chosen["identity"]))[: study.report.grid_max_identities]
    pictures = {ref: load_rgb(page.grid.reference_picture(cell, ref)) for ref in shown}
    steps = even(sorted(chosen["step"].unique().tolist()), study.report.grid_max_steps)
    tiles = {
        (r.identity, f"step {r.step}"): _trajectory_image(page.paths, cell.id, r.image)
        for r in chosen.itertuples()
        if r.step in steps and isinstance(r.image, str)
    }
    grid = image_grid(pictures, [f"step {s}" for s in steps], tiles)
    return page.picture(
        grid,
        folder,
        f"{prefix}grid__" + cell.id.replace("/", "__"),
        f"decoded x0 per step, {cell.id}, prompt {prompt}, seed {seed}",
    )


def _trajectory_image(paths: Paths, cell_id: str, image: str) -> Path | None:
    """A trajectory PNG given relative to the trajectory folder (else the cell or sweep folder)."""
    for base in (paths.trajectory(cell_id).parent, paths.cell_dir(cell_id), paths.root):
        if (base / image).exists():
            return base / image
    return None
