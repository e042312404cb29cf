"""FLUX's part of the report: InfuseNet's conditioning scale and adapter window, in the ablation section.

Identity against the scale and the window, and the latency each window saves; drawn with the
report's injected tools (`ReportKit`), pandas imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fewstep.core.io import atomic_write_bytes
from fewstep.families.report_kit import ReportKit, ReportParts

if TYPE_CHECKING:
    import pandas as pd

IDENTITY = "id_sim"


def scale_window_table(kit: ReportKit, summary: pd.DataFrame) -> pd.DataFrame:
    """Identity and latency of every InfuseNet cell next to its operating point's full adapter.

    Cells of one backbone and step count with the same InfuseNet variant and control
    form a family; its reference is the cell at conditioning scale 1 with InfuseNet on
    every step. Each other member varies the scale (every step on) or the window (scale
    1, InfuseNet on fewer steps). `latency_saved_s` is the reference's mean latency
    minus the cell's (denoise + decode per image, as the summary computes it).
    """
    import numpy as np
    import pandas as pd

    from fewstep.families.flux.pipeline import adapter_window

    means = summary.set_index(["cell_id", "metric"])
    rows = []
    for cell in kit.cells:
        adapter = kit.adapter(cell)
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


def scale_window_figure(kit: ReportKit, table: pd.DataFrame):
    """Identity against conditioning scale, identity against window, latency each window saves."""
    import pandas as pd

    plt = kit.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), squeeze=False)
    scale_ax, window_ax, saved_ax = axes[0]
    points = list(dict.fromkeys(zip(table["backbone"], table["steps"], table["family"], strict=True)))
    colors = kit.series_colors(points)
    for point in points:
        backbone, steps, family = point
        data = table[
            (table["backbone"] == backbone) & (table["steps"] == steps) & (table["family"] == family)
        ]
        label = f"{backbone} {kit.steps_label(steps)} ({family})"
        ref = data[data["varies"] == "reference"]
        for ax, kind, x in (
            (scale_ax, "scale", "conditioning_scale"),
            (window_ax, "window", "infusenet_steps"),
        ):
            series = pd.concat([data[data["varies"] == kind], ref]).sort_values(x)
            if len(series) < 2:
                continue
            xs = series[x] / (steps if kind == "window" else 1)
            _, _, bars = ax.errorbar(
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
            bars[0].set_gid(kit.range_gid("y", kit.spec(IDENTITY).bounds))
            if kind == "window":
                saved_ax.plot(
                    xs, 100 * series["latency_saved_fraction"], marker="o", color=colors[point], label=label
                )
    scale_ax.set_xlabel("InfuseNet conditioning scale")
    window_ax.set_xlabel("fraction of steps with InfuseNet (first k of n)")
    saved_ax.set_xlabel("fraction of steps with InfuseNet (first k of n)")
    for ax in (scale_ax, window_ax):
        ax.set_ylabel(kit.wrapped(kit.spec(IDENTITY).axis_label))
    saved_ax.set_ylabel(kit.wrapped("latency saved vs the full adapter (%)"))
    scale_ax.set_title("identity vs conditioning scale")
    window_ax.set_title("identity vs adapter window")
    saved_ax.set_title("latency each window saves")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def scale_window_section(kit: ReportKit) -> str:
    """Identity against InfuseNet's scale and window, and the latency each window saves."""
    import pandas as pd

    summary = kit.tables["summary"]
    table = scale_window_table(kit, summary)
    if table.empty or IDENTITY not in set(summary["metric"]):
        return kit.note_html("No conditioning-scale or adapter-window cells in this sweep.")
    atomic_write_bytes(kit.out.parent / "tables" / "scale_window.csv", table.to_csv(index=False).encode())
    body = (
        "<h3>Conditioning scale and adapter window</h3><p>Each InfuseNet cell next to the full adapter "
        "(scale 1, every step) of its backbone, step count and variant. A window runs InfuseNet on the first "
        "k steps only; the latency it saves is the full adapter's mean denoise + decode time per image "
        "minus its own (<code>tables/scale_window.csv</code>).</p>"
    )
    body += kit.figure(
        scale_window_figure(kit, table), "ablation", "scale_window", "identity vs scale and window"
    )
    shown = table.assign(
        identity=pd.Series(
            [
                kit.fmt_ci(
                    r[IDENTITY],
                    r[f"{IDENTITY}_ci_low"],
                    r[f"{IDENTITY}_ci_high"],
                    bounds=kit.spec(IDENTITY).bounds,
                )
                for _, r in table.iterrows()
            ],
            index=table.index,
            dtype=object,
        ),
        latency=[kit.fmt(v) for v in table["latency_s"]],
        saved=[
            ""
            if r["varies"] == "reference"
            else f"{kit.fmt(r['latency_saved_s'], signed=True)} ({100 * r['latency_saved_fraction']:+.0f}%)"
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
        "identity": f"{kit.spec(IDENTITY).label} [interval]",
        "latency": "latency (s)",
        "saved": "latency saved (s)",
    }
    return body + kit.html_table(shown[list(columns)].rename(columns=columns))


def report_parts(kit: ReportKit) -> ReportParts:
    """The scale and window study, appended to the generic ablation section."""
    return ReportParts(appended={"ablation": scale_window_section(kit)})
