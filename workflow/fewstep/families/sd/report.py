"""The SD families' report section: style and object adapters set against the study's claim.

Drawn with the report's injected tools (`ReportKit`); pandas and numpy are imported inside the
functions, as on every grid-side path of a family.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fewstep.core.images import load_rgb
from fewstep.core.paths import Paths
from fewstep.families.report_kit import ReportKit, ReportParts

if TYPE_CHECKING:
    import pandas as pd

#: the study's third claim, which every SD section is set against
SD_CLAIM = (
    "style- and object-adapter (IP-Adapter) sweeps on SDXL and SD1.5 show the same diminishing "
    "returns after intermediate steps"
)


def _role(config: Mapping[str, Any], adapter: str) -> str:
    entry = config["adapters"].get(adapter.partition("+")[0], {})
    return entry.get("role") or entry.get("kind", "")


def _after_knee(kit: ReportKit, marginal: pd.DataFrame, row) -> str:
    """The largest gain per step (better direction) over the consecutive segments from the knee on."""
    import numpy as np

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
    sign = kit.spec(row.metric).sign
    best = after.loc[(sign * after["gain_per_step"]).idxmax()]
    width = best["to_steps"] - best["from_steps"]
    low, high = best["gain_ci_low"] / width, best["gain_ci_high"] / width
    gain = kit.spec(row.metric).bounds.difference()
    interval = kit.fmt_ci(
        best["gain_per_step"], low, high, True, bounds=kit.bounds(gain.low / width, gain.high / width)
    )
    return kit.html(f"{interval} per step ({int(best['from_steps'])} → {int(best['to_steps'])})")


def steps_to_95(kit: ReportKit, row) -> float:
    """Steps to 95% of the change from the first to the last step count, where that change is real
    (its interval excludes 0); NaN otherwise."""
    if not row.rise_ci_low > 0:
        return float("nan")
    steps = [int(s) for s in str(row.steps).split()]
    means = [float(m) for m in str(row.means).split()]
    return kit.steps_to_share(steps, means, row.better if isinstance(row.better, str) else "")


def _found_text(kit: ReportKit, row, marginal: pd.DataFrame) -> str:
    """What the sweep found for one series and metric, in the claim's terms: short sentences."""
    import numpy as np

    steps = str(row.steps).split()
    verdict = kit.knee_text(row)
    if verdict.startswith("no knee: "):
        verdict = kit.html(f"no knee ({verdict.removeprefix('no knee: ')})")
    sentences = [f"{html.escape(kit.spec(row.metric).label)}: {verdict}"]
    rise = kit.fmt_ci(
        row.rise, row.rise_ci_low, row.rise_ci_high, True, bounds=kit.spec(row.metric).bounds.difference()
    )
    sentences.append(f"change from {steps[0]} to {steps[-1]} steps in the better direction: {rise}")
    share = steps_to_95(kit, row)
    if np.isfinite(share):
        sentences.append(f"95% of that change by {kit.steps_label(int(share))}")
    if row.effective_rule != "no anchor":
        sentences.append(f"as good as its {steps[-1]}-step cell from {kit.effective_text(row)}")
    after = _after_knee(kit, marginal, row)
    if after != "—":
        sentences.append(f"largest gain after the knee: {after}")
    return kit.html(". ".join(s[0].upper() + s[1:] for s in sentences) + ".")


def figure_name(family: str, adapter: str, metric: str) -> str:
    return f"{family}__{adapter}__{metric}"


def _grid(kit: ReportKit, folder: str, backbone: str, adapter: str) -> str:
    """Reference x steps grid of one SD series (first prompt and seed its images hold)."""
    import numpy as np

    config, paths, per_image = kit.config, Paths(kit.config), kit.per_image
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
    steps = kit.even(sorted(set(chosen["steps"].astype(int))), config["report"]["grid_max_steps"])
    tiles = {}
    for row in chosen.itertuples(index=False):
        if int(row.steps) in steps:
            image = getattr(row, "image", None)
            where = paths.cell_dir(row.cell_id) / image if isinstance(image, str) else None
            tiles[(row.identity, kit.steps_label(int(row.steps)))] = where or paths.image(
                row.cell_id, row.item_id
            )
    canvas = kit.image_grid(references, [kit.steps_label(s) for s in steps], tiles)
    return kit.picture(
        canvas,
        folder,
        f"grid__{backbone}__{adapter}__{prompt}",
        f"{backbone} / {adapter}: reference x steps, prompt {prompt}, seed {seed}",
    )


def section(kit: ReportKit, family: str, label: str, folder: str) -> ReportParts:
    """The family's section (figures under `folder`): its metrics vs steps, knees, grids and the claim."""
    import pandas as pd

    config, options = kit.config, kit.config["report"]
    summary, regime, marginal = kit.tables["summary"], kit.tables["regime"], kit.tables["marginal"]
    adapters = list(dict.fromkeys(regime["adapter"]))
    roles = list(dict.fromkeys(_role(config, a) for a in adapters))
    title = f"{label} {' and '.join(roles) or 'IP-Adapter'} adapters"
    body = f'<p class="banner">{html.escape(kit.banner)}</p>' if kit.banner else ""
    claims = []
    for row in regime.itertuples(index=False):
        claims.append(
            f"<li><code>{html.escape(row.backbone)} / {html.escape(row.adapter)}</code>: "
            f"{_found_text(kit, row, marginal)}</li>"
        )
    body += (
        f"<p><b>The study's claim:</b> {html.escape(SD_CLAIM)}. <b>What this sweep finds</b>, per "
        "series and metric:</p>"
        + (f"<ul>{''.join(claims)}</ul>" if claims else kit.note_html("No quality metric in these scores."))
        + "<p>Every SD series is its own reference: paired differences, the effective regime and "
        "<code>lpips_anchor</code> (0 there) compare with the series' highest-step cell, not the "
        "config's anchor. Intervals cluster on the reference (the <code>identity</code> column) and "
        "the prompt.</p>"
    )
    figures = ""
    for adapter in adapters:
        for metric in dict.fromkeys(regime.loc[regime["adapter"] == adapter, "metric"]):
            figures += kit.figure(
                kit.regime_figure(
                    summary[summary["adapter"] == adapter],
                    regime[regime["adapter"] == adapter],
                    metric,
                    kit.margin(metric, options["margins"]),
                ),
                folder,
                figure_name(family, adapter, metric),
                f"{label} / {adapter}: {kit.spec(metric).label} vs steps (tested knee starred)",
            )
    rows = list(regime.itertuples(index=False))
    table = pd.DataFrame(
        {
            "backbone": regime["backbone"],
            "adapter": regime["adapter"],
            "role": [_role(config, a) for a in regime["adapter"]],
            "metric": regime["metric"],
            "knee (steps) [interval]": [kit.knee_text(r) for r in rows],
            "effective from (vs highest steps)": [kit.effective_text(r) for r in rows],
            "steps to 95% of a real change": [kit.fmt(steps_to_95(kit, r)) for r in rows],
            "largest gain per step after the knee [interval]": [_after_knee(kit, marginal, r) for r in rows],
        },
        dtype=object,
    )
    series = dict.fromkeys(zip(summary["backbone"], summary["adapter"], strict=True))
    grids = "".join(_grid(kit, folder, b, a) for b, a in series)
    body += figures + kit.html_table(table) + "<h3>Image grids: reference x steps</h3>" + grids
    body += trajectories(kit, family, folder)
    return ReportParts(sections=[(f"sd-{family}", title, body)])


def trajectories(kit: ReportKit, family: str, folder: str) -> str:
    """The family's trajectory cells: x0 at every step scored by each metric of their roles."""
    drawn = kit.draw_trajectories(folder, f"{family}__trajectory__")
    if not drawn:
        return ""
    return (
        "<h3>Trajectories: the x0 prediction at every step</h3><p>The predicted clean image after "
        "every step (the scheduler's own estimate where it reports one), decoded and scored with the "
        "cell's metrics that compare with its reference: CSD and CLIP-I for style, DINO and CLIP-I "
        "for object. Each figure names its metric; x is the fraction of the cell's steps done.</p>" + drawn
    )
