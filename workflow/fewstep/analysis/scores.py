"""The sweep's per-image scores and trajectory tables as the aggregate reads them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fewstep.analysis.metric_registry import metric_columns, of_kind
from fewstep.core.paths import Paths
from fewstep.core.study import Study
from fewstep.grid import KEYS, Cell, Grid


def load_scores(study: Study) -> pd.DataFrame:
    grid, paths = Grid.of(study), Paths(study)
    return pd.concat([pd.read_parquet(paths.scores(c.id)) for c in grid.cells], ignore_index=True)


def load_trajectories(study: Study) -> pd.DataFrame | None:
    """The configured cells' trajectory tables in one frame (None without any), with cell keys."""
    paths = Paths(study)
    found = [paths.trajectory(c.id) for c in Grid.of(study).trajectory_cells]
    if not found:
        return None
    frame = pd.concat([pd.read_parquet(p) for p in found], ignore_index=True)
    cells = [Cell.parse(c) for c in frame["cell_id"]]
    frame["backbone"] = [c.backbone for c in cells]
    frame["adapter"] = [c.adapter for c in cells]
    frame["steps"] = [c.steps for c in cells]
    return frame


def with_zero_identity(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with `id_sim_zero` and every other encoder's `id_sim_<encoder>_zero`: no face counted as 0,
    so its mean is over every image, not only the ones that happen to show a face."""
    frame = frame.copy()
    for suffix in ("", *(c.removeprefix("face_detected") for c in frame if c.startswith("face_detected_"))):
        if f"id_sim{suffix}" in frame and f"face_detected{suffix}" in frame:
            detected = frame[f"face_detected{suffix}"].astype(bool)
            frame[f"id_sim{suffix}_zero"] = frame[f"id_sim{suffix}"].astype(float).where(detected, 0.0)
    return frame


def prepare(scores: pd.DataFrame) -> pd.DataFrame:
    """The scores as the tables read them: with `id_sim_zero`, and cost columns left out (NaN)
    on warm-up images, unless a cell has nothing else. A flag column that concatenation with
    cells lacking it (SD cells have no `face_detected`) turned into objects is read as 0/1 with NaN."""
    scores = scores.copy()
    for column in scores.columns.difference(list(KEYS)):
        values = scores[column]
        if values.dtype == object and values.notna().any():
            if values.dropna().map(lambda v: isinstance(v, (bool, np.bool_))).all():
                scores[column] = values.astype(float)
    scores = with_zero_identity(scores)
    if "warmup" in scores:
        warm = scores["warmup"].fillna(False).astype(bool)
        timed = warm & ~warm.groupby(scores["cell_id"]).transform("all")
        for column in of_kind(metric_columns(scores), "cost"):
            scores[column] = scores[column].astype(float).mask(timed)
    return scores


def devices(frame: pd.DataFrame) -> str:
    """The device name(s) a frame's images ran on ("" when the scores do not say)."""
    if "device_name" not in frame:
        return ""
    return ", ".join(sorted(frame["device_name"].dropna().astype(str).unique()))
