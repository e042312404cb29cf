"""The report's matplotlib figures: metric vs steps, cost, Pareto, ablation, trajectories."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from fewstep.analysis.figure_check import place_labels, range_gid
from fewstep.analysis.metric_registry import spec
from fewstep.analysis.pictures import even
from fewstep.analysis.stats import Bounds


# ------------------------------------------------------------------- figures
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def steps_axis(ax, steps: Iterable[int], most: int = 10) -> None:
    """A log2 axis with a tick at every step count, labelled where the labels do not crowd: a label
    keeps at least 1/`most` of the axis' octaves from the last one (the largest count always)."""
    steps = sorted({int(s) for s in steps})
    gap = np.log2(steps[-1] / steps[0]) / most
    labelled: list[int] = []
    for s in steps:
        if labelled and np.log2(s / labelled[-1]) < gap:
            if s != steps[-1]:
                continue
            labelled.pop()
        labelled.append(s)
    ax.set_xscale("log", base=2)
    ax.set_xticks(steps, [str(s) if s in labelled else "" for s in steps])
    ax.minorticks_off()
    ax.set_xlabel("denoising steps")
    ax.grid(alpha=0.3)


def wrapped(text: str, width: int = 38) -> str:
    """`text` broken into lines of at most `width` characters (axis labels that fit their panel)."""
    return "\n".join(textwrap.wrap(text, width))


def band(ax, x, low, high, bounds: Bounds, **style) -> None:
    """An interval band, tagged with the range its values must keep (`layout_problems` checks it)."""
    ax.fill_between(x, low, high, alpha=0.2, **style).set_gid(range_gid("y", bounds))


def keep_in_range(ax, axis: str, bounds: Bounds) -> None:
    """Trim the view of `axis` to the quantity's range (autoscale margins reach past a bound)."""
    get, put = (ax.get_xlim, ax.set_xlim) if axis == "x" else (ax.get_ylim, ax.set_ylim)
    low, high = get()
    put(max(low, bounds.low), min(high, bounds.high))


def anchor_label(regime: pd.DataFrame, backbone: str) -> str:
    """What the dashed line is: the config's anchor cell, or the series' own highest-step cell."""
    anchors = regime.loc[regime["backbone"] == backbone, "anchor"].dropna().astype(str)
    if anchors.empty:
        return "anchor"
    anchor = anchors.iloc[0]
    series = {f"{b}/{a}" for b, a in zip(regime["backbone"], regime["adapter"], strict=True)}
    cell_series, _, steps = anchor.rpartition("/")
    if cell_series in series and anchor.startswith(f"{backbone}/"):
        return f"anchor: this series at {steps} steps"
    return f"anchor: {anchor}"


def series_colors(keys: Iterable[Any]) -> dict[Any, Any]:
    cmap = pyplot().get_cmap("tab10")
    return {key: cmap(i % 10) for i, key in enumerate(dict.fromkeys(keys))}


def regime_figure(summary: pd.DataFrame, regime: pd.DataFrame, metric: str, delta: float):
    """`metric` vs steps, one panel per backbone, a line per adapter with its interval band,
    a tested knee starred with its interval, the anchor's value dashed and the non-inferiority
    margin dotted (anchor - margin when higher is better, + margin when lower is; an
    anchor-relative metric's margin itself)."""
    plt = pyplot()
    data = summary[summary["metric"] == metric]
    backbones = list(dict.fromkeys(data["backbone"]))
    colors = series_colors(data["adapter"])
    fig, axes = plt.subplots(1, len(backbones), figsize=(5 * len(backbones), 3.8), sharey=True, squeeze=False)
    info = spec(metric)
    knees = []  # labelled once the layout is final
    for ax, backbone in zip(axes[0], backbones, strict=True):
        for adapter, frame in data[data["backbone"] == backbone].groupby("adapter", sort=False):
            frame = frame.sort_values("steps")
            color = colors[adapter]
            ax.plot(frame["steps"], frame["mean"], marker="o", color=color, label=adapter)
            band(ax, frame["steps"], frame["ci_low"], frame["ci_high"], info.bounds, color=color)
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
                knees.append((ax, at, value, f"knee {int(at)}"))
        mine = regime[(regime["metric"] == metric) & (regime["backbone"] == backbone)]
        anchor_value = (
            mine["anchor_value"] if len(mine) else regime.loc[regime["metric"] == metric, "anchor_value"]
        )
        if len(anchor_value) and np.isfinite(anchor_value.iloc[0]):
            a = float(anchor_value.iloc[0])
            label = anchor_label(regime, backbone)
            ax.axhline(a, color="black", linestyle="--", linewidth=1, label=label)
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
        steps_axis(ax, data.loc[data["backbone"] == backbone, "steps"])
        keep_in_range(ax, "y", info.bounds)
        ax.set_title(backbone)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(wrapped(info.axis_label))
    title = f"{info.label} vs steps ({'higher' if info.better == 'higher' else 'lower'} is better)"
    fig.suptitle(wrapped(title, 9 * 5 * len(backbones)))  # about 9 characters per inch of width
    fig.tight_layout()
    for ax in axes[0]:
        place_labels(ax, [(x, y, text) for at_ax, x, y, text in knees if at_ax is ax])
    return fig


def cost_figure(summary: pd.DataFrame, metrics: list[str]):
    """Cost metrics (latency, memory) vs steps, a line per backbone/adapter with its band."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    colors = series_colors(zip(summary["backbone"], summary["adapter"], strict=True))
    for ax, metric in zip(axes[0], metrics, strict=True):
        data = summary[summary["metric"] == metric]
        info = spec(metric)
        for (backbone, adapter), frame in data.groupby(["backbone", "adapter"], sort=False):
            frame = frame.sort_values("steps")
            color = colors[(backbone, adapter)]
            ax.plot(frame["steps"], frame["mean"], marker="o", color=color, label=f"{backbone} / {adapter}")
            band(ax, frame["steps"], frame["ci_low"], frame["ci_high"], info.bounds, color=color)
        steps_axis(ax, data["steps"])
        keep_in_range(ax, "y", info.bounds)
        ax.set_ylabel({"s": "seconds per image"}.get(info.unit, info.unit or metric))
        ax.set_title(wrapped(info.label, 45), fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def pareto_figure(pareto: pd.DataFrame):
    """Every cell at (mean latency, mean identity similarity) with intervals; the frontier joined."""
    plt = pyplot()
    cost, value = pareto["cost_metric"].iloc[0], pareto["value_metric"].iloc[0]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = series_colors(zip(pareto["backbone"], pareto["adapter"], strict=True))
    labels = []
    for (backbone, adapter), frame in pareto.groupby(["backbone", "adapter"], sort=False):
        _, caps, bars = ax.errorbar(
            frame["cost"],
            frame["value"],
            xerr=[frame["cost"] - frame["cost_ci_low"], frame["cost_ci_high"] - frame["cost"]],
            yerr=[frame["value"] - frame["value_ci_low"], frame["value_ci_high"] - frame["value"]],
            fmt="o",
            color=colors[(backbone, adapter)],
            label=f"{backbone} / {adapter}",
            capsize=2,
        )
        bars[0].set_gid(range_gid("x", spec(cost).bounds))
        bars[1].set_gid(range_gid("y", spec(value).bounds))
        labels += [(r.cost, r.value, str(r.steps)) for r in frame.itertuples()]
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
    ax.set_ylabel(wrapped(spec(value).axis_label), fontsize=8)
    ax.set_title("Latency vs identity similarity (numbers: steps)")
    ax.grid(alpha=0.3)
    keep_in_range(ax, "x", spec(cost).bounds)
    keep_in_range(ax, "y", spec(value).bounds)
    # an interval of a few noisy timings can span decades: the axis follows the cells' means, and
    # a longer error bar runs off it rather than squeezing every point into one corner
    low, high = ax.get_xlim()
    ax.set_xlim(low, min(high, 2.5 * float(pareto["cost"].max())))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.tight_layout()
    place_labels(ax, labels)
    return fig


def ablation_figure(ablation: pd.DataFrame, metric: str):
    """Paired difference adapter - reference adapter vs steps, a panel per backbone."""
    plt = pyplot()
    data = ablation[ablation["metric"] == metric]
    backbones = list(dict.fromkeys(data["backbone"]))
    colors = series_colors(data["adapter"])
    fig, axes = plt.subplots(1, len(backbones), figsize=(5 * len(backbones), 3.8), sharey=True, squeeze=False)
    for ax, backbone in zip(axes[0], backbones, strict=True):
        frame_b = data[data["backbone"] == backbone]
        for adapter, frame in frame_b.groupby("adapter", sort=False):
            frame = frame.sort_values("steps")
            ax.plot(frame["steps"], frame["diff"], marker="o", color=colors[adapter], label=adapter)
            bounds = spec(metric).bounds.difference()
            band(
                ax, frame["steps"], frame["diff_ci_low"], frame["diff_ci_high"], bounds, color=colors[adapter]
            )
        ax.axhline(0, color="black", linewidth=1)
        steps_axis(ax, frame_b["steps"])
        ax.set_title(f"{backbone}: minus {frame_b['reference_adapter'].iloc[0]}")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(wrapped(f"difference in {spec(metric).label}"))
    fig.tight_layout()
    return fig


def trajectory_figure(trajectory: pd.DataFrame, metrics: list[str], title: str):
    """Per-step scores or probes of the trajectory runs: mean over items with band, x = step / the
    cell's last step (PNDM evaluates once more than its steps); a panel per column (titled with
    it), up to three in a row, no empty panel."""
    plt = pyplot()
    ncols = len(metrics) if len(metrics) <= 3 else 2
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows + 0.4), squeeze=False)
    colors = series_colors(trajectory["cell_id"])
    for ax in axes.flat[len(metrics) :]:
        fig.delaxes(ax)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        data = trajectory[trajectory["metric"] == metric]
        for cell_id, frame in data.groupby("cell_id", sort=False):
            frame = frame.sort_values("step")
            x = frame["step"] / frame["step"].max()
            ax.plot(x, frame["mean"], marker=".", color=colors[cell_id], label=cell_id)
            band(ax, x, frame["ci_low"], frame["ci_high"], spec(metric).bounds, color=colors[cell_id])
        ax.set_xlabel("fraction of sampling done (step / last step)", fontsize=9)
        ax.set_ylabel(spec(metric).unit or "mean over items", fontsize=9)
        ax.set_title(wrapped(TRAJECTORY_LABELS.get(metric, spec(metric).label), 44), fontsize=9)
        ax.set_xlim(0, 1.02)
        keep_in_range(ax, "y", spec(metric).bounds)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(wrapped(title, int(9 * 4.6 * ncols)))  # about 9 characters per inch of width
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
    plt = pyplot()
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
        rows = even(list(range(len(steps))), 12)  # at most 12 step labels
        ax.set_yticks(rows, [str(steps[r]) for r in rows])
        ax.set_xlabel(f"{stream}-stream block")
        ax.set_ylabel("step")
        fig.colorbar(image, ax=ax, label="residual / block RMS")
    title = f"{cell_id}: InfuseNet's push per backbone block (blank: adapter off)"
    fig.suptitle(wrapped(title, int(9 * sum(widths))), fontsize=10)
    fig.tight_layout()
    return fig


#: panel titles of the x0 probes (the other probes use their registry label)
TRAJECTORY_LABELS = {
    "id_sim_zero": "identity similarity of decoded x0 (no face = 0)",
    "id_sim": "identity similarity of decoded x0 (faces only)",
    "face_detected": "face detection rate of decoded x0",
}
