"""The sweep's report: figures, an identity x steps image grid, one HTML page."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import pandas as pd

from fewstep import provenance
from fewstep.aggregate import METRICS
from fewstep.grid import Grid
from fewstep.io import atomic_write_bytes, atomic_write_text
from fewstep.paths import Paths

WEIGHT_BANNERS = {
    "tiny": "Tiny models with seeded random weights: this page tests the workflow; its numbers mean nothing.",
    "random": "Full-size models with random weights: latency and memory are real, image metrics are not.",
}


def _figure_bytes(fig, fmt: str) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, bbox_inches="tight", dpi=120)
    return buffer.getvalue()


def metric_figure(summary: pd.DataFrame, metric: str, backbone: str):
    """Mean of `metric` vs steps for one backbone, a line per adapter with its interval band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    data = summary[(summary["metric"] == metric) & (summary["backbone"] == backbone)]
    for adapter, frame in data.groupby("adapter", sort=False):
        frame = frame.sort_values("steps")
        ax.plot(frame["steps"], frame["mean"], marker="o", label=adapter)
        ax.fill_between(frame["steps"], frame["ci_low"], frame["ci_high"], alpha=0.2)
    ax.set_xscale("log", base=2)
    steps = sorted(data["steps"].unique())
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.set_xlabel("denoising steps")
    ax.set_ylabel(METRICS[metric])
    ax.set_title(f"{backbone}: {METRICS[metric]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def image_grid(config: dict[str, Any], backbone: str, adapter: str, prompt: str, seed: int, tile: int = 128):
    """Rows = identities (reference first), columns = steps; same prompt and seed throughout."""
    from PIL import Image, ImageDraw

    from fewstep.images import load_rgb

    grid, paths = Grid(config), Paths(config)
    cells = grid.cells_of(backbone, adapter)
    identities = config["identities"][: config["report"]["grid_max_identities"]]
    label_h = 18
    canvas = Image.new("RGB", ((len(cells) + 1) * tile, label_h + len(identities) * tile), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), "reference", fill="black")
    for col, cell in enumerate(cells, start=1):
        draw.text((col * tile + 4, 2), f"{cell.steps} steps", fill="black")
    for row, identity in enumerate(identities):
        y = label_h + row * tile
        canvas.paste(Image.fromarray(load_rgb(identity["image"])).resize((tile, tile)), (0, y))
        for col, cell in enumerate(cells, start=1):
            path = paths.image(cell.id, f"{identity['id']}/{prompt}/s{seed}")
            with Image.open(path) as image:
                canvas.paste(image.convert("RGB").resize((tile, tile)), (col * tile, y))
    return canvas


def _img_tag(data: bytes, mime: str, alt: str) -> str:
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{encoded}">'


def run(config: dict[str, Any], summary_path: Path, out: Path | None = None) -> Path:
    grid, paths = Grid(config), Paths(config)
    out = Path(out or paths.report_index)
    figures_dir = out.parent / "figures"
    summary = pd.read_csv(summary_path)
    sections: list[str] = []

    backbones = list(dict.fromkeys(c.backbone for c in grid.cells))
    for metric in [m for m in METRICS if m in set(summary["metric"])]:
        tags = []
        for backbone in backbones:
            fig = metric_figure(summary, metric, backbone)
            for fmt in ("png", "svg"):
                atomic_write_bytes(figures_dir / f"{metric}__{backbone}.{fmt}", _figure_bytes(fig, fmt))
            tags.append(_img_tag(_figure_bytes(fig, "png"), "image/png", f"{metric} vs steps, {backbone}"))
            import matplotlib.pyplot as plt

            plt.close(fig)
        sections.append(
            f"<h2>{html.escape(METRICS[metric])} vs steps</h2><div class='row'>{''.join(tags)}</div>"
        )

    prompt, seed = config["prompts"][0]["id"], config["seeds"][0]
    grid_tags = []
    for backbone in backbones:
        for adapter in dict.fromkeys(c.adapter for c in grid.cells_of(backbone)):
            canvas = image_grid(config, backbone, adapter, prompt, seed)
            buffer = io.BytesIO()
            canvas.save(buffer, format="PNG")
            atomic_write_bytes(figures_dir / f"grid__{backbone}__{adapter}.png", buffer.getvalue())
            grid_tags.append(
                f"<h3>{html.escape(backbone)} / {html.escape(adapter)}</h3>"
                + _img_tag(buffer.getvalue(), "image/png", f"image grid {backbone} {adapter}")
            )
    sections.append(
        f"<h2>Identity x steps (prompt {html.escape(prompt)}, seed {seed})</h2>" + "".join(grid_tags)
    )

    table = summary.pivot_table(index=["cell_id"], columns="metric", values="mean", sort=False)
    sections.append("<h2>Summary (means)</h2>" + table.to_html(float_format=lambda v: f"{v:.4g}"))

    banner = WEIGHT_BANNERS.get(config["weights"], "")
    prov = provenance.record(config)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fewstep: {html.escape(config["sweep"])}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}}
.banner{{background:#fff3cd;border:1px solid #e0c060;padding:.6em;margin:.5em 0}}
.row img{{max-width:48%;margin:.3em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px}}</style></head><body>
<h1>fewstep sweep <code>{html.escape(config["sweep"])}</code></h1>
{f'<p class="banner">{html.escape(banner)}</p>' if banner else ""}
<p>{len(grid.cells)} cells x {len(grid.items)} images each. Weights: <b>{html.escape(config["weights"])}</b>.
Config hash {prov["config_hash"]}, commit {html.escape(prov["git_commit"])}.</p>
{"".join(sections)}
</body></html>
"""
    atomic_write_text(out, page)
    print(f"report -> {out}")
    return out
