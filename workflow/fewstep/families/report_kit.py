"""What a family draws its report sections with, and what it hands back (`Family.report_parts`).

The report (`fewstep.analysis.report`, a higher layer) builds one `ReportKit` per family of the
sweep: the family's rows of the aggregate tables and the page's tools (figures, tables, number
formats, metric specs), injected so that a family never imports the analysis layer. The family
returns `ReportParts`: sections of its own, and HTML appended to the generic sections.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class ReportKit:
    """One family's share of the report and the tools to draw it (`fewstep.analysis` provides
    each: `figure`/`picture` are `Page`'s, the formats `fewstep.analysis.formats`')."""

    config: Mapping[str, Any]
    #: the family's cells of the grid, in grid order (`.backbone`, `.adapter`, `.steps`, `.id`)
    cells: Sequence[Any]
    #: a cell's ``adapters.<id>`` settings
    adapter: Callable[[Any], Mapping[str, Any]]
    #: the aggregate tables (`fewstep.analysis.outputs.TABLES`), the family's backbones' rows only
    tables: Mapping[str, pd.DataFrame]
    #: the scored images of the family's cells (one row per image)
    per_image: pd.DataFrame
    #: the page being written (reports/<sweep>/index.html): extra tables go to its ``tables/``
    out: Path
    #: the weights banner of the page ("" with real weights)
    banner: str
    #: (matplotlib figure, folder, name, alt) -> embedded PNG; written as PNG and SVG under figures/
    figure: Callable[..., str]
    #: (PIL image, folder, name, alt) -> embedded PNG; written under figures/
    picture: Callable[..., str]
    # --- number and table formats ---------------------------------------------
    html: type  # markup already escaped
    fmt: Callable[..., str]
    fmt_ci: Callable[..., str]
    html_table: Callable[..., str]
    note_html: Callable[[str], str]
    knee_text: Callable[[Any], str]
    effective_text: Callable[[Any], str]
    steps_label: Callable[[int], str]
    # --- metrics and statistics -----------------------------------------------
    spec: Callable[[str], Any]  # a metric's label, direction, bounds
    margin: Callable[[str, Mapping[str, float]], float]
    bounds: type  # the range a quantity can take (low, high)
    steps_to_share: Callable[..., float]
    # --- figures and pictures -------------------------------------------------
    regime_figure: Callable[..., Any]
    pyplot: Callable[[], Any]
    series_colors: Callable[[Sequence[Any]], Mapping[Any, Any]]
    wrapped: Callable[[str], str]
    range_gid: Callable[..., str]
    even: Callable[[list[int], int], list[int]]
    image_grid: Callable[..., Any]
    #: (folder, name prefix) -> HTML of the family's trajectory cells ("" without any): a figure
    #: per metric that scored their x0 at every step (named in title and caption), the probes,
    #: and a picture x step grid of decoded x0 per cell, written under figures/<folder>/
    draw_trajectories: Callable[[str, str], str]


@dataclass
class ReportParts:
    """What a family adds to the report. A family with sections of its own shows its series
    there; the generic sections (regime, cost, grids, summary ...) then leave its rows out."""

    #: (anchor id, title, body HTML), placed after the generic image grids
    sections: list[tuple[str, str, str]] = field(default_factory=list)
    #: generic section key (e.g. ``"ablation"``) -> HTML appended to that section's body
    appended: dict[str, str] = field(default_factory=dict)
