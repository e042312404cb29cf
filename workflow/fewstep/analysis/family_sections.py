"""The families' parts of the report: each family of the sweep draws its own with injected tools.

`fewstep.families.report_kit` is the contract: the report hands each family its rows of the
aggregate tables and the page's tools, and places what `Family.report_parts` returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import pandas as pd

from fewstep.analysis import trajectories
from fewstep.analysis.aggregate import steps_to_share
from fewstep.analysis.figure_check import range_gid
from fewstep.analysis.figures import pyplot, regime_figure, series_colors, wrapped
from fewstep.analysis.formats import (
    Html,
    effective_text,
    fmt,
    fmt_ci,
    html_table,
    knee_text,
    note_html,
    steps_label,
)
from fewstep.analysis.metric_registry import margin, spec
from fewstep.analysis.page import WEIGHT_BANNERS, Page
from fewstep.analysis.pictures import even, image_grid
from fewstep.analysis.stats import Bounds
from fewstep.core.study import Study
from fewstep.families import FAMILIES
from fewstep.families.report_kit import ReportKit, ReportParts


def rows_of(table: pd.DataFrame, backbones: Iterable[str], keep: bool = True) -> pd.DataFrame:
    """Rows of a per-backbone table whose backbone is (keep) or is not among `backbones`."""
    if "backbone" not in table:
        return table
    inside = table["backbone"].isin(list(backbones))
    return table[inside if keep else ~inside]


def family_backbones(study: Study, backbones: Iterable[str]) -> dict[str, list[str]]:
    """Family name -> its backbones among `backbones`, both in the order given."""
    members: dict[str, list[str]] = {}
    for backbone in backbones:
        members.setdefault(study.backbones[backbone].family, []).append(backbone)
    return members


def kit(
    page: Page,
    read: dict[str, pd.DataFrame],
    per_image: pd.DataFrame,
    members: list[str],
    frames: pd.DataFrame | None,
) -> ReportKit:
    """The report's tools and the tables' rows of `members` (one family's backbones); `frames`:
    the sweep's per-item trajectory rows (`fewstep.analysis.scores.load_trajectories`)."""
    trajectory = rows_of(read["trajectory"], members)
    own_frames = None if frames is None else rows_of(frames, members)
    return ReportKit(
        config=page.study,
        cells=[c for c in page.grid.cells if c.backbone in members],
        adapter=page.grid.adapter,
        tables={name: rows_of(table, members) for name, table in read.items()},
        per_image=rows_of(per_image, members),
        out=page.out,
        banner=WEIGHT_BANNERS.get(page.study.weights, ""),
        figure=page.figure,
        picture=page.picture,
        html=Html,
        fmt=fmt,
        fmt_ci=fmt_ci,
        html_table=html_table,
        note_html=note_html,
        knee_text=knee_text,
        effective_text=effective_text,
        steps_label=steps_label,
        spec=spec,
        margin=margin,
        bounds=Bounds,
        steps_to_share=steps_to_share,
        regime_figure=regime_figure,
        pyplot=pyplot,
        series_colors=series_colors,
        wrapped=wrapped,
        range_gid=range_gid,
        even=even,
        image_grid=image_grid,
        draw_trajectories=partial(trajectories.draw, page, trajectory, own_frames),
    )


def family_parts(
    page: Page, read: dict[str, pd.DataFrame], per_image: pd.DataFrame, frames: pd.DataFrame | None
) -> tuple[list[ReportParts], list[str]]:
    """Each family's parts, in the order of the grid's cells, and the backbones whose family shows
    them in sections of its own (the generic sections leave those out); `frames`: the sweep's
    per-item trajectory rows (None without any)."""
    backbones = dict.fromkeys(c.backbone for c in page.grid.cells)
    parts, own = [], []
    for name, members in family_backbones(page.study, backbones).items():
        part = FAMILIES[name].report_parts(kit(page, read, per_image, members, frames))
        parts.append(part)
        own += members if part.sections else []
    return parts, own
