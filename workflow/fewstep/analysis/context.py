"""What every aggregate table reads: the sweep's scores per cell, its series, and intervals cached.

`Context` is built once per aggregation; each table of `fewstep.analysis.aggregate` is a function of it.
"""

from __future__ import annotations

import pandas as pd

from fewstep.analysis.metric_registry import metric_columns, spec
from fewstep.analysis.scores import prepare
from fewstep.analysis.stats import ITEM_KEYS, Interval, difference_interval, mean_interval, pair
from fewstep.core.study import Study
from fewstep.families import FAMILIES
from fewstep.grid import Cell, Grid

#: Pareto frontier and cost views: the per-image latency, first present (lower is better)
PARETO_COSTS = ("end_to_end_s", "latency_s")
#: replicates of a knee's bootstrap at most
KNEE_SAMPLES = 1000


def anchors_to_highest_step(study: Study, backbone: str) -> bool:
    """Whether `backbone`'s series take their own highest-step cell as the reference of paired
    differences and of `lpips_anchor` (SD), rather than the config's ``anchor`` (FLUX)."""
    return FAMILIES[study.backbones[backbone].family].anchors_to_highest_step


class Context:
    """The sweep's scores with the grid and report options: what every table reads."""

    def __init__(self, study: Study, scores: pd.DataFrame):
        self.study, self.grid = study, Grid.of(study)
        options = study.report
        self.confidence, self.seed = options["confidence"], options["seed"]
        self.sensitivity, self.margins = options["kneedle_sensitivity"], options["margins"]
        self.knee_samples = min(options["bootstrap_samples"], KNEE_SAMPLES)
        self.scores = prepare(scores)
        self.metrics = metric_columns(self.scores)
        self.by_cell = {cell_id: frame for cell_id, frame in self.scores.groupby("cell_id", sort=False)}
        self._means: dict[tuple[str, str], Interval] = {}
        self._pairs: dict[tuple[str, str], pd.DataFrame] = {}
        self._series_metrics: dict[tuple[str, str], list[str]] = {}

    def cell_frame(self, cell: Cell) -> pd.DataFrame:
        return self.by_cell.get(cell.id, self.scores.iloc[:0])

    def mean(self, cell: Cell, metric: str) -> Interval:
        key = (cell.id, metric)
        if key not in self._means:
            frame = self.cell_frame(cell)
            self._means[key] = mean_interval(frame, metric, self.confidence, bounds=spec(metric).bounds)
        return self._means[key]

    def paired(self, a: Cell, b: Cell) -> pd.DataFrame:
        """Items of cells a and b matched on (identity, prompt, seed), every metric (cached)."""
        if (a.id, b.id) not in self._pairs:
            self._pairs[(a.id, b.id)] = pair(self.cell_frame(a), self.cell_frame(b), self.metrics)
        return self._pairs[(a.id, b.id)]

    def diff(self, a: Cell, b: Cell, metric: str) -> Interval:
        return difference_interval(self.paired(a, b), metric, self.confidence, spec(metric).bounds)

    def series(self) -> list[tuple[str, str, list[Cell]]]:
        """(backbone, adapter, cells by steps) for every line of a metric-vs-steps plot."""
        pairs = dict.fromkeys((c.backbone, c.adapter) for c in self.grid.cells)
        return [(b, a, sorted(self.grid.cells_of(b, a), key=lambda c: c.steps)) for b, a in pairs]

    def reference(self, cell: Cell) -> Cell | None:
        """The cell `cell`'s paired differences compare with: its own series' highest-step cell
        for self-anchored families (SD, where `lpips_anchor` is 0 there), else the config's anchor."""
        if anchors_to_highest_step(self.study, cell.backbone):
            return max(self.grid.cells_of(cell.backbone, cell.adapter), key=lambda c: c.steps)
        return self.grid.anchor

    def series_metrics(self, backbone: str, adapter: str) -> list[str]:
        """The metrics a series was scored with: those with a value in any of its cells (a style
        cell has no dino, a FLUX cell no csd; concatenated tables hold NaN there)."""
        key = (backbone, adapter)
        if key not in self._series_metrics:
            frames = [self.cell_frame(c) for c in self.grid.cells_of(backbone, adapter)]
            self._series_metrics[key] = [m for m in self.metrics if any(f[m].notna().any() for f in frames)]
        return self._series_metrics[key]

    def curve(self, cells: list[Cell], metric: str) -> pd.DataFrame:
        """One row per item, one column `s<steps>` per cell of a series (items paired)."""
        curve = None
        for cell in cells:
            frame = self.cell_frame(cell)
            part = frame[list(ITEM_KEYS) + [metric]].rename(columns={metric: f"s{cell.steps}"})
            part = part.astype({f"s{cell.steps}": float})
            curve = part if curve is None else curve.merge(part, on=list(ITEM_KEYS), how="outer")
        return curve

    def cost_metric(self) -> str | None:
        """The per-image latency the cost views use: end to end when measured, else denoise + decode."""
        return next((c for c in PARETO_COSTS if c in self.metrics), None)
