"""The report's sections for SD1.5 / SDXL style and object adapters, set against the study's claim."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from fewstep.analysis.aggregate import steps_to_share
from fewstep.analysis.figures import regime_figure
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
from fewstep.core.images import load_rgb

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


def rows_of(table: pd.DataFrame, backbones: Iterable[str], keep: bool = True) -> pd.DataFrame:
    """Rows of a per-backbone table whose backbone is (keep) or is not among `backbones`."""
    if "backbone" not in table:
        return table
    inside = table["backbone"].isin(list(backbones))
    return table[inside if keep else ~inside]


def _role(config: dict[str, Any], adapter: str) -> str:
    entry = config["adapters"].get(adapter.partition("+")[0], {})
    return entry.get("role") or entry.get("kind", "")


def _after_knee(marginal: pd.DataFrame, row) -> Html | str:
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
    gain = spec(row.metric).bounds.difference()
    interval = fmt_ci(
        best["gain_per_step"], low, high, True, bounds=Bounds(gain.low / width, gain.high / width)
    )
    return Html(f"{interval} per step ({int(best['from_steps'])} → {int(best['to_steps'])})")


def _steps_to_95(row) -> float:
    """Steps to 95% of the change from the first to the last step count, where that change is real
    (its interval excludes 0); NaN otherwise."""
    if not row.rise_ci_low > 0:
        return np.nan
    steps = [int(s) for s in str(row.steps).split()]
    means = [float(m) for m in str(row.means).split()]
    return steps_to_share(steps, means, row.better if isinstance(row.better, str) else "")


def _found_text(row, marginal: pd.DataFrame) -> Html:
    """What the sweep found for one series and metric, in the claim's terms: short sentences."""
    steps = str(row.steps).split()
    verdict = knee_text(row)
    if verdict.startswith("no knee: "):
        verdict = Html(f"no knee ({verdict.removeprefix('no knee: ')})")
    sentences = [f"{html.escape(spec(row.metric).label)}: {verdict}"]
    rise = fmt_ci(
        row.rise, row.rise_ci_low, row.rise_ci_high, True, bounds=spec(row.metric).bounds.difference()
    )
    sentences.append(f"change from {steps[0]} to {steps[-1]} steps in the better direction: {rise}")
    share = _steps_to_95(row)
    if np.isfinite(share):
        sentences.append(f"95% of that change by {steps_label(int(share))}")
    if row.effective_rule != "no anchor":
        sentences.append(f"as good as its {steps[-1]}-step cell from {effective_text(row)}")
    after = _after_knee(marginal, row)
    if after != "—":
        sentences.append(f"largest gain after the knee: {after}")
    return Html(". ".join(s[0].upper() + s[1:] for s in sentences) + ".")


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
    steps = even(sorted(set(chosen["steps"].astype(int))), config["report"]["grid_max_steps"])
    tiles = {}
    for row in chosen.itertuples(index=False):
        if int(row.steps) in steps:
            image = getattr(row, "image", None)
            where = paths.cell_dir(row.cell_id) / image if isinstance(image, str) else None
            tiles[(row.identity, steps_label(int(row.steps)))] = where or paths.image(
                row.cell_id, row.item_id
            )
    canvas = image_grid(references, [steps_label(s) for s in steps], tiles)
    return page.picture(
        canvas,
        "sd",
        f"grid__{backbone}__{adapter}__{prompt}",
        f"{backbone} / {adapter}: reference x steps, prompt {prompt}, seed {seed}",
    )


def sd_sections(
    page: Page, read: dict[str, pd.DataFrame], per_image: pd.DataFrame, backbones: list[str]
) -> None:
    """One section per SD family of the sweep: its metrics vs steps, knees, grids and the claim."""
    config, options = page.config, page.config["report"]
    banner = WEIGHT_BANNERS.get(config["weights"])
    for family in dict.fromkeys(_family(config, b) for b in backbones):
        members = [b for b in backbones if _family(config, b) == family]
        summary, regime = rows_of(read["summary"], members), rows_of(read["regime"], members)
        marginal = rows_of(read["marginal"], members)
        adapters = list(dict.fromkeys(regime["adapter"]))
        roles = list(dict.fromkeys(_role(config, a) for a in adapters))
        name = FAMILY_NAMES.get(family, family)
        title = f"{name} {' and '.join(roles) or 'IP-Adapter'} adapters"
        body = f'<p class="banner">{html.escape(banner)}</p>' if banner else ""
        claims = []
        for row in regime.itertuples(index=False):
            claims.append(
                f"<li><code>{html.escape(row.backbone)} / {html.escape(row.adapter)}</code>: "
                f"{_found_text(row, marginal)}</li>"
            )
        body += (
            f"<p><b>The study's claim:</b> {html.escape(SD_CLAIM)}. <b>What this sweep finds</b>, per "
            "series and metric:</p>"
            + (f"<ul>{''.join(claims)}</ul>" if claims else note_html("No quality metric in these scores."))
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
                "knee (steps) [interval]": [knee_text(r) for r in regime.itertuples(index=False)],
                "effective from (vs highest steps)": [
                    effective_text(r) for r in regime.itertuples(index=False)
                ],
                "steps to 95% of a real change": [
                    fmt(_steps_to_95(r)) for r in regime.itertuples(index=False)
                ],
                "largest gain per step after the knee [interval]": [
                    _after_knee(marginal, r) for r in regime.itertuples(index=False)
                ],
            },
            dtype=object,
        )
        grids = "".join(
            _sd_grids(page, per_image, b, a)
            for b, a in dict.fromkeys(zip(summary["backbone"], summary["adapter"], strict=True))
        )
        body += figures + html_table(table) + "<h3>Image grids: reference x steps</h3>" + grids
        page.add(f"sd-{family}", title, body)
