"""The sweep's report: figures (PNG + SVG), image grids, CSV tables and one HTML page.

`reports/<sweep>/index.html` is self-contained (figures and grids embedded as
PNG data); next to it `figures/<section>/*.{png,svg}` (the Snakemake report
registers the PNGs, one category per section) and `tables/*.csv`. Sections
without data (no trajectories, one adapter, no LPIPS column) say so instead of
showing an empty figure.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fewstep.analysis import identity_encoders
from fewstep.analysis.aggregate import anchors_to_highest_step, load_trajectories, steps_to_share
from fewstep.analysis.metric_registry import margin, spec
from fewstep.analysis.outputs import SECTIONS, TABLES
from fewstep.core import provenance
from fewstep.core.config import config_hash
from fewstep.core.images import identity_images, load_rgb
from fewstep.core.io import atomic_write_bytes, atomic_write_text
from fewstep.core.paths import Paths
from fewstep.grid import Cell, Grid

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


# ---------------------------------------------------------------- formatting
def fmt(value: Any, signed: bool = False) -> str:
    """A number with 4 significant digits; NaN/None as an em dash."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def fmt_ci(mean: float, low: float, high: float, signed: bool = False, suffix: str = "") -> str:
    if not np.isfinite(mean):
        return "—"
    text = f"{fmt(mean, signed)}{suffix}"
    if np.isfinite(low) and np.isfinite(high):
        text += f" [{fmt(low, signed)}{suffix}, {fmt(high, signed)}{suffix}]"
    return text


def html_table(frame: pd.DataFrame, css: str = "") -> str:
    """A table of preformatted strings (cells escaped)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img_tag(data: bytes, alt: str, mime: str = "image/png") -> str:
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{encoded}">'


# ------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _steps_axis(ax, steps: Iterable[int]) -> None:
    steps = sorted({int(s) for s in steps})
    ax.set_xscale("log", base=2)
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.minorticks_off()
    ax.set_xlabel("denoising steps")
    ax.grid(alpha=0.3)


def _series_colors(keys: Iterable[Any]) -> dict[Any, Any]:
    cmap = _plt().get_cmap("tab10")
    return {key: cmap(i % 10) for i, key in enumerate(dict.fromkeys(keys))}


def regime_figure(summary: pd.DataFrame, regime: pd.DataFrame, metric: str, delta: float):
    """`metric` vs steps, one panel per backbone, a line per adapter with its interval band,
    a tested knee starred with its interval, the anchor's value dashed and the non-inferiority
    margin dotted (anchor - margin when higher is better, + margin when lower is; an
    anchor-relative metric's margin itself)."""
    plt = _plt()
    data = summary[summary["metric"] == metric]
    backbones = list(dict.fromkeys(data["backbone"]))
    colors = _series_colors(data["adapter"])
    fig, axes = plt.subplots(1, len(backbones), figsize=(5 * len(backbones), 3.8), sharey=True, squeeze=False)
    info = spec(metric)
    for ax, backbone in zip(axes[0], backbones, strict=True):
        for adapter, frame in data[data["backbone"] == backbone].groupby("adapter", sort=False):
            frame = frame.sort_values("steps")
            color = colors[adapter]
            ax.plot(frame["steps"], frame["mean"], marker="o", color=color, label=adapter)
            ax.fill_between(frame["steps"], frame["ci_low"], frame["ci_high"], color=color, alpha=0.2)
            row = regime[
                (regime["backbone"] == backbone)
                & (regime["adapter"] == adapter)
                & (regime["metric"] == metric)
            ]
            if len(row) and np.isfinite(row["knee_steps"].iloc[0]):
                at, value = row["knee_steps"].iloc[0], row["knee_value"].iloc[0]
                low, high = row["knee_ci_low"].iloc[0], row["knee_ci_high"].iloc[0]
                ax.plot(
                    [at], [value], marker="*", markersize=16, color=color, markeredgecolor="black", zorder=5
                )
                if np.isfinite(low) and np.isfinite(high):
                    ax.plot([low, high], [value, value], color=color, linewidth=3, alpha=0.6)
                ax.annotate(
                    f"knee {int(at)}", (at, value), textcoords="offset points", xytext=(6, -14), fontsize=8
                )
        anchor_value = regime.loc[regime["metric"] == metric, "anchor_value"]
        if len(anchor_value) and np.isfinite(anchor_value.iloc[0]):
            a = float(anchor_value.iloc[0])
            ax.axhline(a, color="black", linestyle="--", linewidth=1, label="anchor")
            if np.isfinite(delta) and info.better in ("higher", "lower"):
                line, text = (
                    (delta, f"margin {delta:g}")
                    if info.anchor_relative
                    else (
                        a - info.sign * delta,
                        f"anchor {'-' if info.better == 'higher' else '+'} margin {delta:g}",
                    )
                )
                ax.axhline(line, color="grey", linestyle=":", linewidth=1, label=text)
        _steps_axis(ax, data.loc[data["backbone"] == backbone, "steps"])
        ax.set_title(backbone)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(info.axis_label)
    fig.suptitle(f"{info.label} vs steps ({'higher' if info.better == 'higher' else 'lower'} is better)")
    fig.tight_layout()
    return fig


def cost_figure(summary: pd.DataFrame, metrics: list[str]):
    """Cost metrics (latency, memory) vs steps, a line per backbone/adapter with its band."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.8), squeeze=False)
    colors = _series_colors(zip(summary["backbone"], summary["adapter"], strict=True))
    for ax, metric in zip(axes[0], metrics, strict=True):
        data = summary[summary["metric"] == metric]
        for (backbone, adapter), frame in data.groupby(["backbone", "adapter"], sort=False):
            frame = frame.sort_values("steps")
            color = colors[(backbone, adapter)]
            ax.plot(frame["steps"], frame["mean"], marker="o", color=color, label=f"{backbone} / {adapter}")
            ax.fill_between(frame["steps"], frame["ci_low"], frame["ci_high"], color=color, alpha=0.2)
        _steps_axis(ax, data["steps"])
        ax.set_ylabel(spec(metric).axis_label)
        ax.set_title(f"{spec(metric).label} vs steps")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pareto_figure(pareto: pd.DataFrame):
    """Every cell at (mean latency, mean identity similarity) with intervals; the frontier joined."""
    plt = _plt()
    cost, value = pareto["cost_metric"].iloc[0], pareto["value_metric"].iloc[0]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = _series_colors(zip(pareto["backbone"], pareto["adapter"], strict=True))
    for (backbone, adapter), frame in pareto.groupby(["backbone", "adapter"], sort=False):
        ax.errorbar(
            frame["cost"],
            frame["value"],
            xerr=[frame["cost"] - frame["cost_ci_low"], frame["cost_ci_high"] - frame["cost"]],
            yerr=[frame["value"] - frame["value_ci_low"], frame["value_ci_high"] - frame["value"]],
            fmt="o",
            color=colors[(backbone, adapter)],
            label=f"{backbone} / {adapter}",
            capsize=2,
        )
        for row in frame.itertuples():
            ax.annotate(
                str(row.steps), (row.cost, row.value), xytext=(4, 4), textcoords="offset points", fontsize=8
            )
    front = pareto[pareto["on_front"]].sort_values("cost")
    ax.plot(
        front["cost"],
        front["value"],
        color="black",
        linewidth=1.5,
        drawstyle="steps-post",
        label="Pareto frontier",
    )
    ax.set_xlabel(spec(cost).axis_label, fontsize=8)
    ax.set_ylabel(spec(value).axis_label, fontsize=8)
    ax.set_title("Latency vs identity similarity (numbers: steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def ablation_figure(ablation: pd.DataFrame, metric: str):
    """Paired difference adapter - reference adapter vs steps, a panel per backbone."""
    plt = _plt()
    data = ablation[ablation["metric"] == metric]
    backbones = list(dict.fromkeys(data["backbone"]))
    colors = _series_colors(data["adapter"])
    fig, axes = plt.subplots(1, len(backbones), figsize=(5 * len(backbones), 3.8), sharey=True, squeeze=False)
    for ax, backbone in zip(axes[0], backbones, strict=True):
        frame_b = data[data["backbone"] == backbone]
        for adapter, frame in frame_b.groupby("adapter", sort=False):
            frame = frame.sort_values("steps")
            ax.plot(frame["steps"], frame["diff"], marker="o", color=colors[adapter], label=adapter)
            ax.fill_between(
                frame["steps"], frame["diff_ci_low"], frame["diff_ci_high"], color=colors[adapter], alpha=0.2
            )
        ax.axhline(0, color="black", linewidth=1)
        _steps_axis(ax, frame_b["steps"])
        ax.set_title(f"{backbone}: minus {frame_b['reference_adapter'].iloc[0]}")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"difference in {spec(metric).label}")
    fig.tight_layout()
    return fig


IDENTITY = "id_sim"


def scale_window_table(config: dict[str, Any], summary: pd.DataFrame) -> pd.DataFrame:
    """Identity and latency of every InfuseNet cell next to its operating point's full adapter.

    Cells of one backbone and step count with the same InfuseNet variant and control
    form a family; its reference is the cell at conditioning scale 1 with InfuseNet on
    every step. Each other member varies the scale (every step on) or the window (scale
    1, InfuseNet on fewer steps). `latency_saved_s` is the reference's mean latency
    minus the cell's (denoise + decode per image, as the summary computes it).
    """
    from fewstep.families.flux.sampler import adapter_window

    grid = Grid(config)
    means = summary.set_index(["cell_id", "metric"])
    rows = []
    for cell in grid.cells:
        adapter = grid.adapter(cell)
        if adapter["kind"] != "infusenet":
            continue
        window = adapter_window(
            cell.steps, adapter["guidance_start"], adapter["guidance_end"], adapter.get("first_steps")
        )
        rows.append(
            {
                "backbone": cell.backbone,
                "steps": cell.steps,
                "family": f"{adapter['variant']}/{adapter['control']}",
                "adapter": cell.adapter,
                "cell_id": cell.id,
                "conditioning_scale": float(adapter["conditioning_scale"]),
                "infusenet_steps": int(sum(window)) if adapter["conditioning_scale"] else 0,
                **{
                    f"{metric}{suffix}": means[column].get((cell.id, metric), np.nan)
                    for metric in (IDENTITY, "latency_s")
                    for suffix, column in (("", "mean"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high"))
                },
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    on_every_step = table["infusenet_steps"] == table["steps"]
    unit = table["conditioning_scale"] == 1.0
    table["varies"] = np.select(
        [unit & on_every_step, unit, on_every_step | (table["conditioning_scale"] == 0)],
        ["reference", "window", "scale"],
        "other",
    )
    keys = ["backbone", "steps", "family"]
    reference = table[table["varies"] == "reference"].drop_duplicates(keys).set_index(keys)
    table = table.join(reference[["adapter", "latency_s"]].add_prefix("reference_"), on=keys)
    table = table[table["reference_adapter"].notna()]
    table["latency_saved_s"] = table["reference_latency_s"] - table["latency_s"]
    table["latency_saved_fraction"] = table["latency_saved_s"] / table["reference_latency_s"]
    # an operating point shows only when something varies around its reference
    varied = table.groupby(keys)["varies"].transform(lambda v: (v != "reference").any())
    return table[varied].reset_index(drop=True)


def scale_window_figure(table: pd.DataFrame):
    """Identity against conditioning scale, identity against window, latency each window saves."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), squeeze=False)
    scale_ax, window_ax, saved_ax = axes[0]
    points = list(dict.fromkeys(zip(table["backbone"], table["steps"], table["family"], strict=True)))
    colors = _series_colors(points)
    for point in points:
        backbone, steps, family = point
        data = table[
            (table["backbone"] == backbone) & (table["steps"] == steps) & (table["family"] == family)
        ]
        label = f"{backbone} {_steps_label(steps)} ({family})"
        ref = data[data["varies"] == "reference"]
        for ax, kind, x in (
            (scale_ax, "scale", "conditioning_scale"),
            (window_ax, "window", "infusenet_steps"),
        ):
            series = pd.concat([data[data["varies"] == kind], ref]).sort_values(x)
            if len(series) < 2:
                continue
            xs = series[x] / (steps if kind == "window" else 1)
            ax.errorbar(
                xs,
                series[IDENTITY],
                yerr=[
                    series[IDENTITY] - series[f"{IDENTITY}_ci_low"],
                    series[f"{IDENTITY}_ci_high"] - series[IDENTITY],
                ],
                marker="o",
                capsize=3,
                color=colors[point],
                label=label,
            )
            if kind == "window":
                saved_ax.plot(
                    xs, 100 * series["latency_saved_fraction"], marker="o", color=colors[point], label=label
                )
    scale_ax.set_xlabel("InfuseNet conditioning scale")
    window_ax.set_xlabel("fraction of steps with InfuseNet (first k of n)")
    saved_ax.set_xlabel("fraction of steps with InfuseNet (first k of n)")
    for ax in (scale_ax, window_ax):
        ax.set_ylabel(spec(IDENTITY).axis_label)
    saved_ax.set_ylabel("latency saved vs the full adapter (%)")
    scale_ax.set_title("identity vs conditioning scale")
    window_ax.set_title("identity vs adapter window")
    saved_ax.set_title("latency each window saves")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def trajectory_figure(trajectory: pd.DataFrame, metrics: list[str], title: str):
    """Per-step probes of the trajectory runs: mean over items with band, x = step / steps."""
    plt = _plt()
    ncols = min(2, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    colors = _series_colors(trajectory["cell_id"])
    for ax, metric in zip(axes.flat, metrics, strict=False):
        data = trajectory[trajectory["metric"] == metric]
        for cell_id, frame in data.groupby("cell_id", sort=False):
            frame = frame.sort_values("step")
            x = frame["step"] / frame["steps"]
            ax.plot(x, frame["mean"], marker=".", color=colors[cell_id], label=cell_id)
            ax.fill_between(x, frame["ci_low"], frame["ci_high"], color=colors[cell_id], alpha=0.2)
        ax.set_xlabel("fraction of sampling done (step / steps)")
        ax.set_ylabel(TRAJECTORY_LABELS.get(metric, metric))
        ax.set_xlim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def block_matrix(frame: pd.DataFrame, column: str) -> tuple[list[int], np.ndarray] | None:
    """Steps and the step x block matrix of a per-block probe column, averaged over items.

    None when the column holds no finite value (no adapter, or a table without block probes).
    """
    if column not in frame:
        return None
    rows = frame[frame[column].map(lambda value: isinstance(value, list | np.ndarray))]
    if rows.empty:
        return None
    steps = sorted(rows["step"].unique().tolist())
    stacked = [np.stack(rows.loc[rows["step"] == s, column].to_numpy()).astype(float) for s in steps]
    sums = np.array([np.nansum(m, axis=0) for m in stacked])
    counts = np.array([np.isfinite(m).sum(axis=0) for m in stacked])
    matrix = np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)
    return (steps, matrix) if np.isfinite(matrix).any() else None


def block_heatmap(frame: pd.DataFrame, cell_id: str):
    """InfuseNet residual over backbone block-output RMS: a step x block heatmap per stream."""
    plt = _plt()
    panels = {
        stream: found
        for stream in ("double", "single")
        if (found := block_matrix(frame, f"block_relative_{stream}")) is not None
    }
    widths = [max(3.0, 0.16 * m.shape[1] + 1.5) for _, m in panels.values()]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), 3.6), squeeze=False, width_ratios=widths)
    for ax, (stream, (steps, matrix)) in zip(axes[0], panels.items(), strict=True):
        image = ax.imshow(
            np.ma.masked_invalid(matrix), aspect="auto", cmap="viridis", interpolation="nearest"
        )
        rows = _even(list(range(len(steps))), 12)  # at most 12 step labels
        ax.set_yticks(rows, [str(steps[r]) for r in rows])
        ax.set_xlabel(f"{stream}-stream block")
        ax.set_ylabel("step")
        fig.colorbar(image, ax=ax, label="residual / block RMS")
    fig.suptitle(f"{cell_id}: InfuseNet's push per backbone block (blank: adapter off)")
    fig.tight_layout()
    return fig


TRAJECTORY_LABELS = {
    "id_sim_zero": "identity similarity of decoded x0 (no face = 0)",
    "id_sim": "identity similarity of decoded x0 (faces only)",
    "face_detected": "face detection rate of decoded x0",
    "residual_rms_double": "InfuseNet residual RMS, double blocks",
    "residual_rms_single": "InfuseNet residual RMS, single blocks",
    "relative_double": "InfuseNet residual / backbone block RMS, double stream",
    "relative_single": "InfuseNet residual / backbone block RMS, single stream",
    "velocity_rms": "velocity RMS",
}


# --------------------------------------------------------------- image grids
def _even(values: list[Any], most: int) -> list[Any]:
    """At most `most` values, evenly spaced, first and last kept."""
    if len(values) <= most:
        return values
    picks = np.unique(np.round(np.linspace(0, len(values) - 1, most)).astype(int))
    return [values[i] for i in picks]


def image_grid(
    references: dict[str, np.ndarray],
    columns: list[str],
    tiles: dict[tuple[str, str], Path | None],
    tile: int = 128,
):
    """Rows = identities (reference picture first), one column per label; a missing tile is grey."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    label_h = 20
    canvas = Image.new("RGB", ((len(columns) + 1) * tile, label_h + len(references) * tile), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), "reference", fill="black", font=font)
    for col, label in enumerate(columns, start=1):
        draw.text((col * tile + 4, 3), label, fill="black", font=font)
    for row, (identity, reference) in enumerate(references.items()):
        y = label_h + row * tile
        canvas.paste(Image.fromarray(reference).convert("RGB").resize((tile, tile)), (0, y))
        draw.text((4, y + tile - 16), identity, fill="white", font=font, stroke_width=2, stroke_fill="black")
        for col, label in enumerate(columns, start=1):
            path = tiles.get((identity, label))
            if path is not None and Path(path).exists():
                with Image.open(path) as image:
                    canvas.paste(
                        image.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST), (col * tile, y)
                    )
            else:
                draw.rectangle([col * tile, y, (col + 1) * tile - 1, y + tile - 1], fill="#bbbbbb")
                draw.text((col * tile + 4, y + 4), "missing", fill="black", font=font)
    return canvas


def marked(image, mark: str, band: int = 18):
    """`image` (PIL) with a band below it that carries `mark` in red."""
    from PIL import Image, ImageDraw, ImageFont

    out = Image.new("RGB", (image.width, image.height + band), "white")
    out.paste(image.convert("RGB"), (0, 0))
    font = ImageFont.load_default(size=12)
    ImageDraw.Draw(out).text((4, image.height + 2), mark, fill="#a00000", font=font)
    return out


def _steps_label(steps: int) -> str:
    return f"{steps} step" + ("" if steps == 1 else "s")


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------- page
class Page:
    """Collects sections, writes figures as it goes, then renders index.html."""

    def __init__(self, config: dict[str, Any], out: Path):
        self.config, self.grid, self.paths = config, Grid(config), Paths(config)
        self.out = out
        self.figures = out.parent / "figures"
        self.sections: list[tuple[str, str, str]] = []  # (anchor id, title, body)

    def figure(self, fig, section: str, name: str, alt: str) -> str:
        """Save `fig` as PNG and SVG under figures/<section>/; return the embedded PNG."""
        plt = _plt()
        mark = WEIGHT_MARKS.get(self.config["weights"])
        if mark:  # below the axes; bbox_inches="tight" makes room for it
            fig.text(0.5, 0, mark, ha="center", va="top", fontsize=9, color="#a00000", weight="bold")
        data = {}
        for fmt_ in ("png", "svg"):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt_, bbox_inches="tight", dpi=110)
            data[fmt_] = buffer.getvalue()
            atomic_write_bytes(self.figures / section / f"{name}.{fmt_}", data[fmt_])
        plt.close(fig)
        svg = f"figures/{section}/{name}.svg"
        caption = f'{html.escape(alt)} (<a href="{svg}">SVG</a>)'
        return f"<figure>{_img_tag(data['png'], alt)}<figcaption>{caption}</figcaption></figure>"

    def picture(self, image, section: str, name: str, alt: str) -> str:
        mark = WEIGHT_MARKS.get(self.config["weights"])
        data = _png(marked(image, mark) if mark else image)
        atomic_write_bytes(self.figures / section / f"{name}.png", data)
        return f"<figure>{_img_tag(data, alt)}<figcaption>{html.escape(alt)}</figcaption></figure>"

    def add(self, key: str, title: str, body: str) -> None:
        self.sections.append((key, title, body))


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _pairs(n: int, of: int) -> str:
    return f"{int(n)} of {int(of)}"


def _study_section(page: Page, comparison: pd.DataFrame, confidence: float) -> None:
    if comparison.empty:
        page.add(
            "study",
            "The study's comparison",
            _note(
                "The config names no comparison cells (comparison: baseline, candidate): nothing to compare."
            ),
        )
        return
    rows = []
    for row in comparison.itertuples(index=False):
        ratio = spec(row.metric).kind == "cost"
        note = row.note if isinstance(row.note, str) else ""
        if not row.available:
            ours = f"{NA} (the scores have no {row.metric} column)"
            inside = "—"
        elif note.startswith("not comparable"):
            ours, inside = note, "—"
        else:
            ours = fmt_ci(
                row.estimate, row.ci_low, row.ci_high, signed=not ratio, suffix="x" if ratio else ""
            )
            inside = (
                fmt(bool(row.ci_low <= row.study <= row.ci_high))
                if np.isfinite(row.ci_low) and np.isfinite(row.study)
                else "—"
            )
        study = "—" if not np.isfinite(row.study) else (f"{row.study:g}x" if ratio else f"{row.study:+g}")
        rows.append(
            {
                "quantity": row.quantity,
                "baseline mean": fmt(row.baseline_mean) if row.available else NA,
                "candidate mean": fmt(row.candidate_mean) if row.available else NA,
                f"this sweep [{confidence:.0%} interval]": ours,
                "study (dev-28 vs schnell-4)": study,
                "study value inside interval": inside,
                "pairs used (of images paired)": _pairs(row.n_pairs, row.n_paired_images),
                "note": note,
            }
        )
    first = comparison.iloc[0]
    devices = f"{first['baseline_device']}" if isinstance(first["baseline_device"], str) else ""
    body = (
        f"<p>Baseline <code>{html.escape(first['baseline'])}</code>, candidate "
        f"<code>{html.escape(first['candidate'])}</code>; differences are candidate minus baseline on the "
        "same identity, prompt and seed (paired), latency ratios are mean baseline over mean candidate "
        "time per image on the same items, the warm-up batch left out where the manifest marks it. "
        "The study's 5.9x is end to end (prompt and identity encoding, denoising, decoding); it is set "
        "beside our end-to-end row only. The identity rows: the headline, compared with the study's "
        "+0.028, is ArcFace similarity with an image without a detected face counted as 0 "
        "(<code>id_sim_zero</code>: every image counts); the faces-only mean (<code>id_sim</code>, "
        "over the pairs where both images show a face) and the detection rate stand beside it. "
        "The study compares FLUX.1-dev at 28 steps with FLUX.1-schnell at 4 (InfuseNet on both)."
        + (f" Devices: {html.escape(devices)}." if devices else "")
        + "</p>"
        + html_table(pd.DataFrame(rows), "study")
    )
    page.add("study", "The study's comparison", body)


def _knee_text(row) -> str:
    if not np.isfinite(row.knee_steps):
        return str(row.knee_verdict) if isinstance(row.knee_verdict, str) else "no knee found"
    text = f"knee at {_steps_label(int(row.knee_steps))}"
    if np.isfinite(row.knee_ci_low):
        text += f" [{int(row.knee_ci_low)}, {int(row.knee_ci_high)}]"
    return text


def _effective_text(row) -> str:
    if np.isfinite(row.effective_steps):
        return _steps_label(int(row.effective_steps))
    return "no anchor" if row.effective_rule == "no anchor" else "never (in these steps)"


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
                f"{fmt_ci(row.estimate, row.ci_low, row.ci_high, suffix='x')} faster per image than "
                f"<code>{html.escape(row.baseline)}</code> ({html.escape(spec(row.metric).label)}{study})."
            )
        elif row.metric in ("id_sim_zero", "lpips_ref"):
            items.append(
                f"{html.escape(spec(row.metric).label)}, candidate minus baseline: "
                f"{fmt_ci(row.estimate, row.ci_low, row.ci_high, signed=True)} (the study: {row.study:+g}; "
                f"{_pairs(row.n_pairs, row.n_paired_images)} pairs)."
            )
    if not comparison.empty:
        first = comparison.iloc[0]
        if Cell.parse(first["baseline"]).steps != 28 or Cell.parse(first["candidate"]).steps != 4:
            items.append(
                "This sweep's comparison cells are not the study's (dev at 28 steps vs schnell at 4): "
                "compare the direction, not the size, of the numbers."
            )
    metrics = set(regime.get("metric", []))
    headline = next((m for m in ("id_sim_zero", "id_sim") if m in metrics), None)
    primary = regime[regime["metric"] == headline] if headline else regime.head(1)
    for row in primary.itertuples(index=False):
        text = _knee_text(row)
        if row.effective_rule != "no anchor":
            text += f"; as good as the anchor (margin {row.margin:g}) from {_effective_text(row)}"
        items.append(
            f"<code>{html.escape(row.backbone)} / {html.escape(row.adapter)}</code>, "
            f"{html.escape(spec(row.metric).label)}: {html.escape(text)}."
        )
    if not pareto.empty:
        front = ", ".join(f"<code>{html.escape(c)}</code>" for c in pareto[pareto["on_front"]]["cell_id"])
        items.append(f"Pareto frontier of latency vs identity similarity: {front}.")
    if items:
        page.add("findings", "At a glance", "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")


def _regime_section(page: Page, summary: pd.DataFrame, regime: pd.DataFrame, config: dict[str, Any]) -> None:
    options = config["report"]
    metrics = [m for m in dict.fromkeys(regime["metric"])] if not regime.empty else []
    if not metrics:
        page.add("regime", "Effective regime", _note("No quality metric in the scores."))
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
            "knee (steps) [interval]": [_knee_text(r) for r in regime.itertuples(index=False)],
            "value at knee": [fmt(v) for v in regime["knee_value"]],
            "rise first → last step [interval]": [
                fmt_ci(r.rise, r.rise_ci_low, r.rise_ci_high, signed=True)
                for r in regime.itertuples(index=False)
            ],
            "effective from (rule)": [
                _effective_text(r) + ("" if r.effective_rule == "no anchor" else f" ({r.effective_rule})")
                for r in regime.itertuples(index=False)
            ],
            "anchor value": [fmt(v) for v in regime["anchor_value"]],
        }
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


def wide(frame: pd.DataFrame, index: list[str], value: str, cell) -> pd.DataFrame:
    """One row per `index` key, one column per metric holding `cell(row)` (a formatted string)."""
    rows = []
    for keys, group in frame.groupby(index, sort=False):
        entry = dict(zip(index, keys if isinstance(keys, tuple) else (keys,), strict=True))
        for r in group.itertuples(index=False):
            entry[f"{r.metric} {value}"] = cell(r)
        rows.append(entry)
    return pd.DataFrame(rows).fillna("—")


def _marginal_section(page: Page, marginal: pd.DataFrame) -> None:
    if marginal.empty:
        page.add(
            "marginal", "Marginal gain of each extra step", _note("Every series has a single step count.")
        )
        return
    marginal = marginal.assign(
        steps=[f"{a} → {b}" for a, b in zip(marginal["from_steps"], marginal["to_steps"], strict=True)],
        extra=[fmt(v, signed=True) for v in marginal["extra_latency_s"]],
    )
    table = wide(
        marginal,
        ["backbone", "adapter", "steps", "extra"],
        "gain [interval] (per step)",
        lambda r: (
            f"{fmt_ci(r.gain, r.gain_ci_low, r.gain_ci_high, signed=True)} ({fmt(r.gain_per_step, True)})"
        ),
    ).rename(columns={"extra": "extra latency (s)"})
    body = (
        "<p>Paired difference between consecutive step counts of a series (same identity, prompt and seed), "
        "with the gain per added step in brackets; <code>marginal.csv</code> also divides by the added mean "
        "latency (gain per extra second).</p>" + html_table(table)
    )
    page.add("marginal", "Marginal gain of each extra step", body)


def _cost_section(page: Page, summary: pd.DataFrame, pareto: pd.DataFrame) -> None:
    present = set(summary["metric"])
    costs = [m for m in ("end_to_end_s", "latency_s", "peak_mem_mb") if m in present]
    body = ""
    if costs:
        body += page.figure(cost_figure(summary, costs), "cost", "latency", "latency (and memory) vs steps")
    if pareto.empty:
        body += _note(f"Pareto frontier {NA}: the scores need a latency and an identity similarity column.")
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
            body += _note(
                "The cells ran on different devices (" + ", ".join(sorted(names)) + "): their latencies are "
                "not comparable, and neither is the frontier."
            )
    page.add(
        "cost",
        "Cost: latency vs steps and the Pareto frontier",
        body or _note("No cost metric in the scores."),
    )


def _scale_window_section(page: Page, summary: pd.DataFrame) -> str:
    """Identity against InfuseNet's scale and window, and the latency each window saves."""
    table = scale_window_table(page.config, summary)
    if table.empty or IDENTITY not in set(summary["metric"]):
        return _note("No conditioning-scale or adapter-window cells in this sweep.")
    atomic_write_bytes(page.out.parent / "tables" / "scale_window.csv", table.to_csv(index=False).encode())
    body = (
        "<h3>Conditioning scale and adapter window</h3><p>Each InfuseNet cell next to the full adapter "
        "(scale 1, every step) of its backbone, step count and variant. A window runs InfuseNet on the first "
        "k steps only; the latency it saves is the full adapter's mean denoise + decode time per image "
        "minus its own (<code>tables/scale_window.csv</code>).</p>"
    )
    body += page.figure(
        scale_window_figure(table), "ablation", "scale_window", "identity vs scale and window"
    )
    shown = table.assign(
        identity=[
            fmt_ci(r[IDENTITY], r[f"{IDENTITY}_ci_low"], r[f"{IDENTITY}_ci_high"])
            for _, r in table.iterrows()
        ],
        latency=[fmt(v) for v in table["latency_s"]],
        saved=[
            ""
            if r["varies"] == "reference"
            else f"{fmt(r['latency_saved_s'], signed=True)} ({100 * r['latency_saved_fraction']:+.0f}%)"
            for _, r in table.iterrows()
        ],
    )
    columns = {
        "backbone": "backbone",
        "steps": "steps",
        "adapter": "adapter",
        "varies": "varies",
        "conditioning_scale": "scale",
        "infusenet_steps": "InfuseNet steps",
        "identity": f"{spec(IDENTITY).label} [interval]",
        "latency": "latency (s)",
        "saved": "latency saved (s)",
    }
    return body + html_table(shown[list(columns)].rename(columns=columns))


def _ablation_section(page: Page, ablation: pd.DataFrame, summary: pd.DataFrame) -> None:
    scale_window = _scale_window_section(page, summary)
    if ablation.empty:
        note = _note("Each backbone runs a single adapter: no ablation.")
        page.add("ablation", "Adapter ablation", note + scale_window)
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
        lambda r: fmt_ci(r.diff, r.diff_ci_low, r.diff_ci_high, signed=True),
    ).rename(columns={"compared": "adapter − reference"})
    page.add("ablation", "Adapter ablation", body + html_table(table) + scale_window)


def _trajectory_section(page: Page, trajectory: pd.DataFrame, frames: pd.DataFrame | None) -> None:
    if trajectory.empty or frames is None:
        page.add(
            "trajectory",
            "Trajectories",
            _note("No trajectory tables in this sweep (results/<sweep>/trajectories/): section skipped."),
        )
        return
    body = ""
    present = set(trajectory["metric"])
    emergence = [m for m in ("id_sim_zero", "id_sim", "face_detected") if m in present]
    norms = [
        m
        for m in (
            "residual_rms_double",
            "residual_rms_single",
            "relative_double",
            "relative_single",
        )
        if m in present
    ]
    if emergence:
        body += page.figure(
            trajectory_figure(trajectory, emergence, "Identity emergence: the x0 prediction at every step"),
            "trajectory",
            "emergence",
            "identity emergence along the trajectory",
        )
    if norms:
        body += page.figure(
            trajectory_figure(trajectory, norms, "Norm probes: InfuseNet's residuals along sampling"),
            "trajectory",
            "norms",
            "attention-stream norm probes along the trajectory",
        )
    for cell_id, frame in frames.groupby("cell_id", sort=False):
        if any(block_matrix(frame, f"block_relative_{s}") is not None for s in ("double", "single")):
            body += page.figure(
                block_heatmap(frame, cell_id),
                "trajectory",
                "blocks__" + cell_id.replace("/", "__"),
                f"norm probes per block (step x block), {cell_id}",
            )
    config = page.config
    seed = frames["seed"].iloc[0]
    references = identity_images(config, config["report"]["grid_max_identities"])
    for cell_id, frame in frames.groupby("cell_id", sort=False):
        prompt = frame["prompt_id"].iloc[0]
        chosen = frame[(frame["prompt_id"] == prompt) & (frame["seed"] == seed)]
        steps = _even(sorted(chosen["step"].unique().tolist()), config["report"]["grid_max_steps"])
        tiles = {
            (r.identity, f"step {r.step}"): _trajectory_image(page.paths, cell_id, r.image)
            for r in chosen.itertuples()
            if r.step in steps and isinstance(r.image, str)
        }
        grid = image_grid(
            {k: v for k, v in references.items() if k in set(chosen["identity"])},
            [f"step {s}" for s in steps],
            tiles,
        )
        body += page.picture(
            grid,
            "trajectory",
            "grid__" + cell_id.replace("/", "__"),
            f"decoded x0 per step, {cell_id}, prompt {prompt}, seed {seed}",
        )
    page.add("trajectory", "Trajectories: identity emergence and norm probes", body)


def _trajectory_image(paths: Paths, cell_id: str, image: str) -> Path | None:
    """A trajectory PNG given relative to the trajectory folder (else the cell or sweep folder)."""
    for base in (paths.trajectory(cell_id).parent, paths.cell_dir(cell_id), paths.root):
        if (base / image).exists():
            return base / image
    return None


def _grids_section(page: Page, skip: frozenset[str] = frozenset()) -> None:
    """Identity x steps grids of every backbone/adapter but the backbones in `skip` (SD's own section)."""
    config, grid, paths = page.config, page.grid, page.paths
    references = identity_images(config, config["report"]["grid_max_identities"])
    seed = config["seeds"][0]
    body = (
        "<p>Rows: identities (the reference picture first); columns: steps. Every image of a grid has the "
        f"same prompt and seed ({seed}), so a row shows the identity forming step by step.</p>"
    )
    for prompt in [p["id"] for p in config["prompts"][: config["report"]["grid_prompts"]]]:
        for backbone, adapter in dict.fromkeys((c.backbone, c.adapter) for c in grid.cells):
            if backbone in skip:
                continue
            cells = _even(
                sorted(grid.cells_of(backbone, adapter), key=lambda c: c.steps),
                config["report"]["grid_max_steps"],
            )
            tiles = {
                (identity, _steps_label(cell.steps)): paths.image(cell.id, f"{identity}/{prompt}/s{seed}")
                for identity in references
                for cell in cells
            }
            canvas = image_grid(references, [_steps_label(c.steps) for c in cells], tiles)
            body += page.picture(
                canvas,
                "grids",
                f"{backbone}__{adapter}__{prompt}",
                f"{backbone} / {adapter}: identity x steps, prompt {prompt}, seed {seed}",
            )
    page.add("grids", "Image grids: identity x steps", body)


# ------------------------------------------------------- SD style and object adapters
#: how a family's section is titled
FAMILY_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}
#: the study's third claim, which every SD section is set against
SD_CLAIM = (
    "style- and object-adapter (IP-Adapter) sweeps on SDXL and SD1.5 show the same diminishing "
    "returns after intermediate steps"
)


def _family(config: dict[str, Any], backbone: str) -> str:
    return config["backbones"][backbone].get("family", "flux")


def _rows_of(table: pd.DataFrame, backbones: Iterable[str], keep: bool = True) -> pd.DataFrame:
    """Rows of a per-backbone table whose backbone is (keep) or is not among `backbones`."""
    if "backbone" not in table:
        return table
    inside = table["backbone"].isin(list(backbones))
    return table[inside if keep else ~inside]


def _role(config: dict[str, Any], adapter: str) -> str:
    entry = config["adapters"].get(adapter.partition("+")[0], {})
    return entry.get("role") or entry.get("kind", "")


def _after_knee(marginal: pd.DataFrame, row) -> str:
    """The largest gain per step (better direction) over the consecutive segments from the knee on."""
    if not np.isfinite(row.knee_steps):
        return "—"
    after = marginal[
        (marginal["backbone"] == row.backbone)
        & (marginal["adapter"] == row.adapter)
        & (marginal["metric"] == row.metric)
        & (marginal["from_steps"] >= row.knee_steps)
    ]
    if after.empty:
        return "—"
    sign = spec(row.metric).sign
    best = after.loc[(sign * after["gain_per_step"]).idxmax()]
    width = best["to_steps"] - best["from_steps"]
    low, high = best["gain_ci_low"] / width, best["gain_ci_high"] / width
    return (
        f"{fmt_ci(best['gain_per_step'], low, high, signed=True)} per step "
        f"({int(best['from_steps'])} → {int(best['to_steps'])})"
    )


def _steps_to_95(row) -> float:
    steps = [int(s) for s in str(row.steps).split()]
    means = [float(m) for m in str(row.means).split()]
    return steps_to_share(steps, means, row.better if isinstance(row.better, str) else "")


def _found_text(row, marginal: pd.DataFrame) -> str:
    """What the sweep found for one series and metric, in the claim's terms."""
    label = spec(row.metric).label
    share = _steps_to_95(row)
    text = f"{_knee_text(row)} for {label}"
    text += f" (rise first → last {fmt_ci(row.rise, row.rise_ci_low, row.rise_ci_high, signed=True)})"
    if np.isfinite(share):
        text += f", 95% of the rise by {_steps_label(int(share))}"
    if row.effective_rule != "no anchor":
        text += (
            f", as good as its {_steps_label(int(row.steps.split()[-1]))} cell from {_effective_text(row)}"
        )
    after = _after_knee(marginal, row)
    if after != "—":
        text += f", largest gain after the knee {after}"
    return text


def sd_figure_name(family: str, adapter: str, metric: str) -> str:
    return f"{family}__{adapter}__{metric}"


def _sd_grids(page: Page, per_image: pd.DataFrame, backbone: str, adapter: str) -> str:
    """Reference x steps grid of one SD series (first prompt and seed its images hold)."""
    config, paths = page.config, page.paths
    frame = per_image[(per_image["backbone"] == backbone) & (per_image["adapter"] == adapter)]
    if frame.empty:
        return ""
    pictures = {r["id"]: r["image"] for r in [*config.get("references", []), *config["identities"]]}
    prompt, seed = frame["prompt_id"].iloc[0], frame["seed"].iloc[0]
    chosen = frame[(frame["prompt_id"] == prompt) & (frame["seed"] == seed)]
    ids = list(dict.fromkeys(chosen["identity"]))[: config["report"]["grid_max_identities"]]
    references = {
        r: load_rgb(pictures[r]) if r in pictures else np.full((32, 32, 3), 187, np.uint8) for r in ids
    }
    steps = _even(sorted(set(chosen["steps"].astype(int))), config["report"]["grid_max_steps"])
    tiles = {}
    for row in chosen.itertuples(index=False):
        if int(row.steps) in steps:
            image = getattr(row, "image", None)
            where = paths.cell_dir(row.cell_id) / image if isinstance(image, str) else None
            tiles[(row.identity, _steps_label(int(row.steps)))] = where or paths.image(
                row.cell_id, row.item_id
            )
    canvas = image_grid(references, [_steps_label(s) for s in steps], tiles)
    return page.picture(
        canvas,
        "sd",
        f"grid__{backbone}__{adapter}__{prompt}",
        f"{backbone} / {adapter}: reference x steps, prompt {prompt}, seed {seed}",
    )


def _sd_sections(
    page: Page, read: dict[str, pd.DataFrame], per_image: pd.DataFrame, backbones: list[str]
) -> None:
    """One section per SD family of the sweep: its metrics vs steps, knees, grids and the claim."""
    config, options = page.config, page.config["report"]
    banner = WEIGHT_BANNERS.get(config["weights"])
    for family in dict.fromkeys(_family(config, b) for b in backbones):
        members = [b for b in backbones if _family(config, b) == family]
        summary, regime = _rows_of(read["summary"], members), _rows_of(read["regime"], members)
        marginal = _rows_of(read["marginal"], members)
        adapters = list(dict.fromkeys(regime["adapter"]))
        roles = list(dict.fromkeys(_role(config, a) for a in adapters))
        name = FAMILY_NAMES.get(family, family)
        title = f"{name} {' and '.join(roles) or 'IP-Adapter'} adapters"
        body = f'<p class="banner">{html.escape(banner)}</p>' if banner else ""
        claims = []
        for row in regime.itertuples(index=False):
            claims.append(
                f"<li><code>{html.escape(row.backbone)} / {html.escape(row.adapter)}</code>: "
                f"found: {html.escape(_found_text(row, marginal))}.</li>"
            )
        body += (
            f"<p><b>claim:</b> {html.escape(SD_CLAIM)} (diminishing returns after intermediate steps).</p>"
            + (f"<ul>{''.join(claims)}</ul>" if claims else _note("No quality metric in these scores."))
            + "<p>Every SD series is its own reference: paired differences, the effective regime and "
            "<code>lpips_anchor</code> (0 there) compare with the series' highest-step cell, not the "
            "config's anchor. Intervals cluster on the reference (the <code>identity</code> column) and "
            "the prompt.</p>"
        )
        figures = ""
        for adapter in adapters:
            for metric in dict.fromkeys(regime.loc[regime["adapter"] == adapter, "metric"]):
                figures += page.figure(
                    regime_figure(
                        summary[summary["adapter"] == adapter],
                        regime[regime["adapter"] == adapter],
                        metric,
                        margin(metric, options["margins"]),
                    ),
                    "sd",
                    sd_figure_name(family, adapter, metric),
                    f"{name} / {adapter}: {spec(metric).label} vs steps (tested knee starred)",
                )
        table = pd.DataFrame(
            {
                "backbone": regime["backbone"],
                "adapter": regime["adapter"],
                "role": [_role(config, a) for a in regime["adapter"]],
                "metric": regime["metric"],
                "knee (steps) [interval]": [_knee_text(r) for r in regime.itertuples(index=False)],
                "effective from (vs highest steps)": [
                    _effective_text(r) for r in regime.itertuples(index=False)
                ],
                "steps to 95% of the rise": [fmt(_steps_to_95(r)) for r in regime.itertuples(index=False)],
                "largest gain per step after the knee [interval]": [
                    _after_knee(marginal, r) for r in regime.itertuples(index=False)
                ],
            }
        )
        grids = "".join(
            _sd_grids(page, per_image, b, a)
            for b, a in dict.fromkeys(zip(summary["backbone"], summary["adapter"], strict=True))
        )
        body += figures + html_table(table) + "<h3>Image grids: reference x steps</h3>" + grids
        page.add(f"sd-{family}", title, body)


def _missing(count: int) -> str:
    return f", {count} missing" if count else ""


def _summary_section(page: Page, summary: pd.DataFrame) -> None:
    anchor = page.grid.anchor
    means = wide(
        summary,
        ["cell_id"],
        "mean [interval] (n)",
        lambda r: f"{fmt_ci(r.mean, r.ci_low, r.ci_high)} ({r.n}{_missing(r.n_missing)})",
    )
    body = "<h3>Means with intervals</h3>" + html_table(means, "summary")
    if anchor is not None:
        diffs = wide(
            summary,
            ["cell_id"],
            "minus anchor [interval]",
            lambda r: fmt_ci(r.diff_vs_anchor, r.diff_ci_low, r.diff_ci_high, signed=True),
        )
        body += (
            f"<h3>Paired difference to the anchor <code>{html.escape(anchor.id)}</code></h3>"
            "<p>Cell minus anchor on the same identity, prompt and seed.</p>" + html_table(diffs, "summary")
        )
    body += "<p>Standard deviations and every column: <code>summary.csv</code>.</p>"
    page.add("summary", "Per cell and metric", body)


def _coverage_table(coverage: pd.DataFrame) -> pd.DataFrame:
    """Worst simulated coverage over the variance scenarios, per design size and quantity."""
    worst = coverage.groupby(["identities", "prompts", "seeds", "quantity"], sort=False).agg(
        coverage=("coverage", "min"), width=("mean_width", "mean"), own=("this_sweep", "any")
    )
    rows = []
    for (n_i, n_p, n_s), group in worst.groupby(level=[0, 1, 2], sort=False):
        entry = {
            "identities x prompts x seeds": f"{n_i} x {n_p} x {n_s}"
            + (" (this sweep)" if group["own"].any() else "")
        }
        for (_, _, _, quantity), r in group.iterrows():
            entry[f"{quantity}: worst coverage"] = f"{r['coverage']:.1%}"
        rows.append(entry)
    return pd.DataFrame(rows)


def _identity_warning(n_identities: int, coverage: pd.DataFrame) -> str:
    """A banner when the sweep has fewer identities than the intervals need for 90% coverage."""
    needed = coverage["fewest_identities_for_90"].iloc[0] if len(coverage) else np.nan
    if not (np.isfinite(needed) and n_identities < needed):
        return ""
    return (
        f'<p class="banner">This sweep has {n_identities} identities; its intervals reach 90% coverage '
        f"from {int(needed)} identities on (see How the numbers are made). With fewer, an identity effect "
        "is estimated from too few degrees of freedom: intervals are very wide and may cover less often "
        "than stated. Add identities (<code>identities:</code>) before reading differences between cells."
        "</p>"
    )


def _widths_text(widths: pd.DataFrame, n_identities: int) -> str:
    """The widths table as one row per quantity, one column per identity count."""
    if widths.empty:
        return ""
    rows = []
    for (quantity, metric, source), group in widths.groupby(["quantity", "metric", "source"], sort=False):
        first = group.iloc[0]
        entry = {
            "interval of": f"{quantity} of {metric} ({source})",
            "sd identity / prompt / image": " / ".join(
                f"{v:.3g}" for v in (first.sd_identity, first.sd_prompt, first.sd_image)
            ),
        }
        entry.update({f"{int(r.identities)} identities": f"{r.mean_width:.3g}" for r in group.itertuples()})
        rows.append(entry)
    return (
        f"<p>How wide the {widths['metric'].iloc[0]} intervals would be with more identities, at this "
        f"sweep's own spread (estimated from its {n_identities} identities), prompts and seeds: the mean "
        "full width of the 95% interval, simulated (<code>widths.csv</code>).</p>"
        + html_table(pd.DataFrame(rows), "widths")
    )


def _method_section(page: Page, summary: pd.DataFrame, coverage: pd.DataFrame, widths: pd.DataFrame) -> None:
    options = page.config["report"]
    n_id = int(summary["n_identities"].max()) if len(summary) else 0
    n_pr = int(summary["n_prompts"].max()) if len(summary) else 0
    sensitivity = options["kneedle_sensitivity"]
    items = [
        f"<b>Intervals</b>: {options['confidence']:.0%} intervals from a crossed random-effects model "
        "(value = mean + identity effect + prompt effect + identity x prompt effect + seed noise): the "
        "variance of a mean is (MS<sub>identity</sub> + MS<sub>prompt</sub> - MS<sub>interaction</sub>) / n "
        "from the ANOVA mean squares, main-effect components truncated at zero, and the interval is "
        "mean &plusmn; t x se with Satterthwaite's degrees of freedom (the <code>df</code> column of "
        "<code>summary.csv</code>). Images sharing an identity or a prompt are not independent; with few "
        "identities a normal quantile or a bootstrap would be far too narrow, the t quantile is not. "
        f"This sweep has {n_id} identities and {n_pr} prompts; with one identity (or prompt) that factor "
        "is held fixed and the interval speaks for it alone. The coverage this achieves, simulated "
        "(<code>coverage.csv</code>, 2000 data sets per size and variance mix, the worst mix shown):"
        + html_table(_coverage_table(coverage), "coverage")
        + _widths_text(widths, n_id),
        "<b>Paired differences</b> (vs the anchor, between consecutive steps, between adapters, the study "
        "table): images matched on identity, prompt and seed, the per-image differences given the same "
        "interval; tables say how many pairs of how many paired images had a value in both.",
        "<b>Identity similarity</b>: <code>id_sim</code> is the mean over images with a detected face "
        "only; <code>id_sim_zero</code> counts an image without a face as 0, so a step count that loses "
        "faces is not flattered by its survivors; <code>face_detected</code> is the detection rate.",
        "<b>Knee</b>: Kneedle (the <code>kneed</code> package) on the mean curve, steps on a linear axis, no "
        "smoothing; a rising curve is taken as concave, a falling one as convex. "
        f"Sensitivity S = {sensitivity:g}. Kneedle rescales any curve to [0, 1] and so finds a knee in pure "
        "noise; one is reported only when the paired change from the first to the last step count and "
        "the slope before the knee minus the slope after it both have intervals above 0 (at most 5% false "
        "knees on flat curves in the tests). Its interval: a two-way cluster bootstrap of the curve "
        f"(identities and prompts redrawn, seed {options['seed']}).",
        "<b>Effective regime</b>: non-inferiority to the anchor, per metric margin (config "
        "<code>report.margins</code>, defaults in the metric registry).",
        "<b>Latency</b>: end to end per image (prompt and identity encoding, denoising, decoding) where "
        "measured, beside denoise + decode; the warm-up batch of each job is left out; cells measured on "
        "different devices are marked not comparable instead of divided.",
        "<b>Pareto frontier</b>: cells no other cell beats on both mean latency (lower) and mean identity "
        "similarity (higher).",
    ]
    body = "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"
    page.add("method", "How the numbers are made", body)


def _provenance_section(page: Page, per_image: pd.DataFrame) -> None:
    config = page.config
    versions = provenance.versions(provenance.PACKAGES + REPORT_PACKAGES)
    image_commits = sorted(per_image["git_commit"].dropna().unique()) if "git_commit" in per_image else []
    image_hashes = sorted(per_image["config_hash"].dropna().unique()) if "config_hash" in per_image else []
    metric_versions = (
        sorted(per_image["metric_versions"].dropna().unique()) if "metric_versions" in per_image else []
    )
    facts = pd.DataFrame(
        [
            ("config hash", config_hash(config)),
            ("report made at commit", provenance.git_commit()),
            ("report made at", time.strftime("%Y-%m-%d %H:%M:%S %z")),
            ("images made at commit(s)", ", ".join(image_commits) or "—"),
            ("images made with config hash(es)", ", ".join(image_hashes) or "—"),
            ("metric versions", "; ".join(metric_versions) or "—"),
            ("weights", config["weights"]),
            *((f"version: {k}", v) for k, v in versions.items()),
        ],
        columns=["what", "value"],
    )
    body = (
        html_table(facts, "provenance")
        + "<h3>Configuration (validated, defaults filled)</h3><pre>"
        + html.escape(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        + "</pre>"
    )
    page.add("provenance", "Configuration and provenance", body)


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1250px;margin:auto;padding:1em;color:#222;line-height:1.45}
.banner{background:#fff3cd;border:2px solid #d9a400;padding:.7em 1em;margin:.8em 0;font-weight:bold}
nav a{margin-right:1em} figure{display:inline-block;margin:.5em;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #ddd} figcaption{font-size:12px;color:#555}
table{border-collapse:collapse;font-size:13px;margin:.6em 0} td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3;text-align:left} table.study td{font-size:14px} .note{color:#666;font-style:italic}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:12px}
"""


def render(page: Page, weights: set[str], intro: str) -> str:
    config = page.config
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
<title>fewstep: {html.escape(config["sweep"])}</title><style>{STYLE}</style></head><body>
<h1>fewstep sweep <code>{html.escape(config["sweep"])}</code></h1>
{banners}
{intro}
<p>Tables as CSV: {tables}</p>
<nav>{nav}</nav>
{sections}
</body></html>
"""


def run(config: dict[str, Any], summary_path: Path, out: Path | None = None) -> Path:
    """Write reports/<sweep>/index.html, figures/<section>/ and tables/ from the aggregate tables."""
    grid, paths = Grid(config), Paths(config)
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

    page = Page(config, out)
    sd = [b for b in dict.fromkeys(c.backbone for c in grid.cells) if anchors_to_highest_step(config, b)]
    sd_read = read
    read = {name: _rows_of(table, sd, keep=False) for name, table in read.items()}  # the FLUX sections'
    summary = read["summary"]
    _findings(page, read)
    _study_section(page, read["comparison"], config["report"]["confidence"])
    _regime_section(page, summary, read["regime"], config)
    page.add(*identity_encoders.section(config, summary, read["comparison"]))
    _marginal_section(page, read["marginal"])
    _cost_section(page, summary, read["pareto"])
    _ablation_section(page, read["ablation"], summary)
    _trajectory_section(page, read["trajectory"], load_trajectories(config))
    _grids_section(page, frozenset(sd))
    _sd_sections(page, sd_read, per_image, sd)
    _summary_section(page, summary)
    _method_section(page, summary, read["coverage"], read["widths"])
    _provenance_section(page, per_image)

    weights = {config["weights"], *per_image.get("weights", pd.Series(dtype=str)).dropna().unique()}
    anchor, comparison = grid.anchor, grid.comparison
    n_id, n_pr, n_seed = len(config["identities"]), len(config["prompts"]), len(config["seeds"])
    intro = (
        f"<p>{len(grid.cells)} cells (backbone x adapter x steps), {len(grid.items)} images each "
        f"({n_id} identities x {n_pr} prompts x {n_seed} seeds). "
        f"Weights: <b>{html.escape(', '.join(sorted(weights)))}</b>. "
        f"Anchor: <code>{html.escape(anchor.id if anchor else 'none')}</code>. "
    )
    if comparison:
        intro += f"Comparison: <code>{html.escape(comparison[0].id)}</code> vs "
        intro += f"<code>{html.escape(comparison[1].id)}</code>. "
    intro += f"Config hash {config_hash(config)}, commit {html.escape(provenance.git_commit())}.</p>"
    intro += _identity_warning(n_id, read["coverage"])
    atomic_write_text(out, render(page, weights, intro))
    print(f"report -> {out}")
    return out
