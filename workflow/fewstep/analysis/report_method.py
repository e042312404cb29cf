"""The report's tables of every cell, how the numbers are made, and the configuration and provenance."""

from __future__ import annotations

import html
import time

import numpy as np
import pandas as pd
import yaml

from fewstep.analysis.formats import TOO_FEW, Html, fmt, fmt_ci, html_table, missing_text, wide
from fewstep.analysis.metric_registry import spec
from fewstep.analysis.page import REPORT_PACKAGES, Page
from fewstep.core import provenance
from fewstep.core.config import config_hash


def summary_section(page: Page, summary: pd.DataFrame) -> None:
    anchor = page.grid.anchor

    def mean(r) -> Html:
        interval = fmt_ci(r.mean, r.ci_low, r.ci_high, bounds=spec(r.metric).bounds)
        return Html(f"{interval} ({r.n}{missing_text(r.n_missing)})")

    def diff(r) -> Html | str:
        if r.cell_id == r.anchor:
            return "anchor"
        return fmt_ci(
            r.diff_vs_anchor, r.diff_ci_low, r.diff_ci_high, True, bounds=spec(r.metric).bounds.difference()
        )

    means = wide(summary, ["cell_id"], "mean [interval] (n)", mean)
    body = "<h3>Means with intervals</h3>" + html_table(means, "summary")
    if anchor is not None:
        diffs = wide(summary, ["cell_id"], "minus anchor [interval]", diff)
        body += (
            f"<h3>Paired difference to the anchor <code>{html.escape(anchor.id)}</code></h3>"
            "<p>Cell minus anchor on the same identity, prompt and seed.</p>" + html_table(diffs, "summary")
        )
    body += "<p>Standard deviations and every column: <code>summary.csv</code>.</p>"
    page.add("summary", "Per cell and metric", body)


def coverage_rows(coverage: pd.DataFrame) -> pd.DataFrame:
    """Worst simulated coverage over the variance scenarios, per design, value scale and quantity,
    with the share of data sets that get an interval at all; each design says what it is."""
    keys = ["identities", "prompts", "seeds", "design", "scale", "quantity"]
    worst = coverage.groupby(keys, sort=False).agg(
        coverage=("coverage", "min"), estimated=("estimated", "min")
    )
    rows = []
    for (n_i, n_p, n_s, design, scale), group in worst.groupby(level=keys[:-1], sort=False):
        entry = {"design (identities x prompts x seeds)": f"{n_i} x {n_p} x {n_s}: {design}", "values": scale}
        for key, r in group.iterrows():
            entry[f"{key[-1]}: worst coverage"] = f"{r['coverage']:.1%}"
            entry[f"{key[-1]}: share with an interval"] = f"{r['estimated']:.0%}"
        rows.append(entry)
    return pd.DataFrame(rows)


def identity_warning(n_identities: int, coverage: pd.DataFrame) -> str:
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
            "sd identity": fmt(first.sd_identity),
            "sd prompt": fmt(first.sd_prompt),
            "sd image": fmt(first.sd_image),
        }
        entry.update({f"{int(r.identities)} identities": fmt(r.mean_width) for r in group.itertuples()})
        rows.append(entry)
    return (
        f"<p>How wide the {widths['metric'].iloc[0]} intervals would be with more identities, at this "
        f"sweep's own spread (estimated from its {n_identities} identities), prompts and seeds: the mean "
        "full width of the 95% interval, simulated (<code>widths.csv</code>).</p>"
        + html_table(pd.DataFrame(rows), "widths")
    )


def method_section(page: Page, summary: pd.DataFrame, coverage: pd.DataFrame, widths: pd.DataFrame) -> None:
    options = page.study.report
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
        "is held fixed and the interval speaks for it alone. Every interval stays in the range its metric "
        "can take (the metric registry's): it is taken on a scale where that range holds and mapped back, "
        "log for times, logit for rates and Fisher's z for cosines (a difference's range is twice the "
        "metric's width, centred on 0); where the items cannot show any spread (one value, or 0/1 values "
        f"that all agree) the page says <i>{TOO_FEW}</i>. The coverage this achieves, simulated on each "
        "kind of scale (<code>coverage.csv</code>, 2000 data sets per design, scale and variance mix, the "
        "worst mix shown, counted over the data sets that get an interval):"
        + html_table(coverage_rows(coverage), "coverage")
        + _widths_text(widths, n_id),
        "<b>Paired differences</b> (vs the anchor, between consecutive steps, between adapters, the study "
        "table): images matched on identity, prompt and seed, the per-image differences given the same "
        "interval; tables say how many pairs of how many paired images had a value in both.",
        "<b>Identity similarity</b>: <code>id_sim</code> is the mean over images with a detected face "
        "only; <code>id_sim_zero</code> counts an image without a face as 0, so a step count that loses "
        "faces is not flattered by its survivors; <code>face_detected</code> is the detection rate.",
        "<b>Knee</b>: Kneedle (the <code>kneed</code> package) on the mean curve, steps on a linear axis, "
        "no smoothing; a rising curve is taken as concave, a falling one as convex. "
        f"Sensitivity S = {sensitivity:g}. Kneedle rescales any curve to the unit square and so finds "
        "a knee in pure noise; one is reported only when the paired change from the first to the last "
        "step count and the slope before the knee minus the slope after it both have intervals above 0 "
        "(at most 5% false knees on flat curves in the tests). Its interval: a two-way cluster "
        "bootstrap of the curve "
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


def provenance_section(page: Page, per_image: pd.DataFrame) -> None:
    study = page.study
    versions = provenance.versions(provenance.PACKAGES + REPORT_PACKAGES)
    image_commits = sorted(per_image["git_commit"].dropna().unique()) if "git_commit" in per_image else []
    image_hashes = sorted(per_image["config_hash"].dropna().unique()) if "config_hash" in per_image else []
    metric_versions = (
        sorted(per_image["metric_versions"].dropna().unique()) if "metric_versions" in per_image else []
    )
    facts = pd.DataFrame(
        [
            ("config hash", config_hash(study)),
            ("report made at commit", provenance.git_commit()),
            ("report made at", time.strftime("%Y-%m-%d %H:%M:%S %z")),
            ("images made at commit(s)", ", ".join(image_commits) or "—"),
            ("images made with config hash(es)", ", ".join(image_hashes) or "—"),
            ("metric versions", "; ".join(metric_versions) or "—"),
            ("weights", study.weights),
            *((f"version: {k}", v) for k, v in versions.items()),
        ],
        columns=["what", "value"],
    )
    body = (
        html_table(facts, "provenance")
        + "<h3>Configuration (validated; defaults filled where they apply)</h3><pre>"
        + html.escape(yaml.safe_dump(study.to_dict(), sort_keys=False, allow_unicode=True))
        + "</pre>"
    )
    page.add("provenance", "Configuration and provenance", body)
