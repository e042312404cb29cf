"""The report page: its sections, its figures as they are written, and the HTML around them."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from fewstep.analysis.figure_check import layout_problems
from fewstep.analysis.figures import pyplot
from fewstep.analysis.outputs import TABLES
from fewstep.analysis.pictures import marked, png_bytes
from fewstep.core.io import atomic_write_bytes
from fewstep.core.paths import Paths
from fewstep.core.study import Study
from fewstep.grid import Grid

WEIGHT_BANNERS = {
    "tiny": "Tiny models with seeded random weights: this page tests the workflow; its images are noise "
    "and its numbers mean nothing.",
    "random": "Full-size models with random weights: latency and memory are real, image metrics are not.",
}
#: the line every figure and picture carries when the weights are not real: the files travel
#: alone (W&B's aggregate run, `snakemake --report`), without the page's banner
WEIGHT_MARKS = {
    "tiny": "weights: tiny (seeded random) - not a result",
    "random": "weights: random (full size) - image metrics mean nothing",
}
NA = "not available"
#: packages behind the numbers and figures of the page, listed in its provenance
REPORT_PACKAGES = ("numpy", "pandas", "scipy", "matplotlib", "kneed", "snakemake")


def img_tag(data: bytes, alt: str, mime: str = "image/png") -> str:
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{encoded}">'


# ---------------------------------------------------------------------- page
class Page:
    """Collects sections, writes figures as it goes, then renders index.html."""

    def __init__(self, study: Study, out: Path):
        self.study, self.grid, self.paths = study, Grid.of(study), Paths(study)
        self.out = out
        self.figures = out.parent / "figures"
        self.sections: list[tuple[str, str, str]] = []  # (anchor id, title, body)
        self.problems: list[str] = []  # layout problems of the figures written (figure_check)

    def figure(self, fig, section: str, name: str, alt: str) -> str:
        """Check `fig` (`layout_problems`, kept in `problems`), save it as PNG and SVG under
        figures/<section>/; return the embedded PNG."""
        plt = pyplot()
        self.problems += [f"figures/{section}/{name}: {p}" for p in layout_problems(fig)]
        mark = WEIGHT_MARKS.get(self.study.weights)
        if mark:  # below the axes; the tight box below makes room for it
            fig.text(0.5, 0, mark, ha="center", va="top", fontsize=9, color="#a00000", weight="bold")
        # the tight box once for both files: `bbox_inches="tight"` would lay the figure out again
        # for each (layout_problems has just laid it out; the mark's extent is computed on demand)
        tight = fig.get_tightbbox(fig.canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
        data = {}
        for fmt_ in ("png", "svg"):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt_, bbox_inches=tight, dpi=110)
            data[fmt_] = buffer.getvalue()
            atomic_write_bytes(self.figures / section / f"{name}.{fmt_}", data[fmt_])
        plt.close(fig)
        svg = f"figures/{section}/{name}.svg"
        caption = f'{html.escape(alt)} (<a href="{svg}">SVG</a>)'
        return f"<figure>{img_tag(data['png'], alt)}<figcaption>{caption}</figcaption></figure>"

    def picture(self, image, section: str, name: str, alt: str) -> str:
        mark = WEIGHT_MARKS.get(self.study.weights)
        data = png_bytes(marked(image, mark) if mark else image)
        atomic_write_bytes(self.figures / section / f"{name}.png", data)
        return f"<figure>{img_tag(data, alt)}<figcaption>{html.escape(alt)}</figcaption></figure>"

    def add(self, key: str, title: str, body: str) -> None:
        self.sections.append((key, title, body))

    def append(self, key: str, body: str) -> None:
        """Add `body` at the end of section `key` (a family's addition to a generic section)."""
        self.sections = [(k, t, b + body if k == key else b) for k, t, b in self.sections]


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1250px;margin:auto;padding:1em;color:#222;line-height:1.45}
.banner{background:#fff3cd;border:2px solid #d9a400;padding:.7em 1em;margin:.8em 0;font-weight:bold}
nav a{margin-right:1em} figure{display:inline-block;margin:.5em;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #ddd} figcaption{font-size:12px;color:#555}
table{border-collapse:collapse;font-size:13px;margin:.6em 0} td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3;text-align:left} table.study td{font-size:14px} .note{color:#666;font-style:italic}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:12px}
.scroll{overflow-x:auto;max-width:100%} li{margin:.2em 0}
"""


def render(page: Page, weights: set[str], intro: str) -> str:
    study = page.study
    banners = "".join(
        f'<p class="banner">{html.escape(WEIGHT_BANNERS[w])}</p>'
        for w in sorted(weights)
        if w in WEIGHT_BANNERS
    )
    nav = "".join(
        f'<a href="#{key}">{html.escape(title.split(":")[0])}</a>' for key, title, _ in page.sections
    )
    tables = " ".join(f'<a href="tables/{name}.csv">{name}.csv</a>' for name in TABLES)
    sections = "".join(
        f'<section id="{key}"><h2>{html.escape(title)}</h2>{body}</section>'
        for key, title, body in page.sections
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fewstep: {html.escape(study.sweep)}</title><style>{STYLE}</style></head><body>
<h1>fewstep sweep <code>{html.escape(study.sweep)}</code></h1>
{banners}
{intro}
<p>Tables as CSV: {tables}</p>
<nav>{nav}</nav>
{sections}
</body></html>
"""
