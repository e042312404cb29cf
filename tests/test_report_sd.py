"""Aggregation and report of SD1.5 / SDXL style and object cells on a synthetic mixed sweep.

Known structure (3 references per role x 3 prompts x 2 seeds, as in the study config):
- csd (style) = 0.5 * min(steps, 8) / 8 + reference and prompt effects + noise: knee at 8;
- dino (object) = 0.4 * min(steps, 12) / 12 + effects + noise: knee at 12;
- clip_i = 0.3 * min(steps, 8) / 8 + 0.5 + effects + noise; clip_score = 25 + prompt effect + noise (flat);
- lpips_anchor = distance of the cell's curve to the 50-step one + |noise|, 0 in the 50-step cell.
"""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import pytest
import synthetic_sweep as synth
from PIL import Image

from fewstep.analysis import aggregate, report
from fewstep.analysis.page import WEIGHT_BANNERS
from fewstep.core.config import validate
from fewstep.core.paths import Paths
from fewstep.grid import Cell, Grid, Item, image_keys
from tests.conftest import study_of

SD_STEPS = [1, 2, 4, 8, 12, 16, 25, 30, 50]
REFERENCES = {
    "style": {"ink": 0.03, "oil": -0.02, "pixel": -0.01},
    "object": {"mug": 0.02, "cat": -0.03, "robot": 0.01},
}
PROMPT_EFFECTS = {"p0": 0.01, "p1": -0.01, "p2": 0.0}
PICTURES = {"ink": "astronaut", "oil": "chelsea", "pixel": "coffee", "mug": "coffee", "cat": "chelsea"}
PICTURES["robot"] = "camera"
KNEES = {("sd-style", "csd"): 8, ("sd-object", "dino"): 12}


def curve(metric: str, steps: int) -> float:
    return {
        "csd": 0.5 * min(steps, 8) / 8,
        "dino": 0.4 * min(steps, 12) / 12,
        "clip_i": 0.5 + 0.3 * min(steps, 8) / 8,
        "clip_score": 25.0,
    }[metric]


def sd_config(root, with_flux: bool = True) -> dict:
    """The synthetic FLUX config with SD backbones, adapters, references and cells, validated."""
    raw = synth.raw_config(root)
    if not with_flux:
        raw["cells"] = []
        for key in ("anchor", "comparison", "trajectory"):
            raw.pop(key, None)
    for family in ("sd15", "sdxl"):
        raw["backbones"][family] = {"family": family, "model": family, "steps": SD_STEPS}
    for role in REFERENCES:
        raw["adapters"][f"sd-{role}"] = {"kind": "ip_adapter", "role": role, "file": "plain", "scale": 1.0}
    raw["references"] = [
        {"id": r, "image": f"builtin:{PICTURES[r]}", "role": role}
        for role, refs in REFERENCES.items()
        for r in refs
    ]
    raw["cells"].append({"backbones": ["sd15"], "adapters": ["sd-style", "sd-object"]})
    raw["cells"].append({"backbones": ["sdxl"], "adapters": ["sd-style"]})
    return validate(raw)


def write_sd_scores(config: dict, rng: np.random.Generator) -> None:
    paths = Paths(study_of(config))
    for backbone in ("sd15", "sdxl"):
        for role, refs in REFERENCES.items():
            adapter = f"sd-{role}"
            if backbone == "sdxl" and role == "object":
                continue
            metrics = ["csd" if role == "style" else "dino", "clip_i", "clip_score"]
            for steps in SD_STEPS:
                cell = Cell(backbone, adapter, steps)
                rows = []
                for ref, ref_effect in refs.items():
                    for prompt, prompt_effect in PROMPT_EFFECTS.items():
                        for seed in synth.SEEDS:
                            item = Item(ref, prompt, seed)
                            row = {**image_keys(cell, item), "image": f"images/{item.id}.png"}
                            for metric in metrics:
                                effect = (
                                    prompt_effect if metric == "clip_score" else ref_effect + prompt_effect
                                )
                                row[metric] = curve(metric, steps) + effect + rng.normal(0, 0.01)
                            gap = abs(curve(metrics[0], 50) - curve(metrics[0], steps))
                            row["lpips_anchor"] = 0.0 if steps == 50 else gap + abs(rng.normal(0, 0.01))
                            row["latency_s"] = 0.05 * steps + 0.1
                            row["end_to_end_s"] = row["latency_s"] + 0.05
                            row.update(warmup=False, device_name="synthetic-gpu", weights="tiny")
                            rows.append(row)
                            path = paths.image(cell.id, item.id)
                            path.parent.mkdir(parents=True, exist_ok=True)
                            shade = int(255 * min(steps, 8) / 8)
                            Image.new("RGB", (32, 32), (shade, 90, 255 - shade)).save(path)
                target = paths.scores(cell.id)
                target.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(rows).to_parquet(target, index=False)


#: the synthetic SD trajectory: an SD1.5 style cell, x0's CSD rising linearly to 0.5
TRAJECTORY_CELL = "sd15/sd-style/4"


def write_sd_trajectory(config: dict, cell_id: str) -> None:
    """Per-step rows of a style cell as the trajectory job writes them: csd = 0.5 * step / steps
    + the reference's effect, clip_i = 0.5 + 0.1 * step; one x0 PNG per (item, step)."""
    study = study_of(config)
    grid, paths = Grid(study), Paths(study)
    cell = Cell.parse(cell_id)
    folder = paths.trajectory(cell_id).parent
    rows = []
    for item in grid.items_of(cell):
        for step in range(1, cell.steps + 1):
            image = f"x0/{item.id}/step{step:03d}.png"
            (folder / image).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (40 * step, 60, 60)).save(folder / image)
            csd = 0.5 * step / cell.steps + REFERENCES["style"][item.identity]
            rows.append({**image_keys(cell, item), "step": step, "sigma": 1000.0 - 250 * step})
            rows[-1] |= {"adapter_active": True, "csd": csd, "clip_i": 0.5 + 0.1 * step, "image": image}
    pd.DataFrame(rows).to_parquet(paths.trajectory(cell_id), index=False)
    config["trajectory"]["cells"].append(cell_id)  # as if the config had asked for it


def build(root, with_flux: bool = True):
    config = sd_config(root, with_flux)
    if with_flux:
        synth.write_scores(config)
    write_sd_scores(config, np.random.default_rng(1))
    write_sd_trajectory(config, TRAJECTORY_CELL)
    summary = aggregate.run(study_of(config))
    page = report.run(study_of(config), summary)
    tables = {name: pd.read_csv(summary.parent / f"{name}.csv") for name in ("summary", "regime", "marginal")}
    return config, tables, page


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return build(tmp_path_factory.mktemp("mixed"))


def test_each_series_keeps_its_own_metrics(mixed):
    _, tables, _ = mixed
    regime = tables["regime"]
    metrics = lambda b, a: set(regime[(regime.backbone == b) & (regime.adapter == a)]["metric"])  # noqa: E731
    assert metrics("sd15", "sd-style") == {"csd", "clip_i", "clip_score", "lpips_anchor"}
    assert metrics("sd15", "sd-object") == {"dino", "clip_i", "clip_score", "lpips_anchor"}
    assert "csd" not in metrics("flux-dev", "infusenet-aes")
    summary = tables["summary"]
    sd = summary[summary.backbone.str.startswith("sd")]
    assert not set(sd["metric"]) & {"id_sim", "id_sim_zero", "face_detected", "lpips_ref"}
    assert (sd["n_missing"] == 0).all() and (sd["n"] == 18).all()


def test_sd_series_are_paired_with_their_own_highest_step_cell(mixed):
    _, tables, _ = mixed
    summary, regime = tables["summary"], tables["regime"]
    style = summary[(summary.backbone == "sd15") & (summary.adapter == "sd-style")]
    assert set(style["anchor"]) == {"sd15/sd-style/50"}
    top = style[(style.steps == 50) & (style.metric == "lpips_anchor")].iloc[0]
    assert top["mean"] == 0 and top["diff_vs_anchor"] == 0
    # csd 1 step minus 50 steps: 0.0625 - 0.5, paired (reference effects cancel)
    low = style[(style.steps == 1) & (style.metric == "csd")].iloc[0]
    assert low["diff_ci_low"] <= 0.0625 - 0.5 <= low["diff_ci_high"]
    flux = regime[regime.backbone == "flux-dev"]
    assert set(flux["anchor"]) == {"flux-dev/infusenet-aes/16"}
    assert set(regime[regime.backbone == "sdxl"]["anchor"]) == {"sdxl/sd-style/50"}


def test_planted_knees_come_back_within_their_intervals(mixed):
    _, tables, _ = mixed
    regime = tables["regime"]
    for backbone in ("sd15", "sdxl"):
        for (adapter, metric), at in KNEES.items():
            row = regime[
                (regime.backbone == backbone) & (regime.adapter == adapter) & (regime.metric == metric)
            ]
            if row.empty:
                continue
            row = row.iloc[0]
            assert row["knee_verdict"] == "knee" and row["knee_steps"] == at
            assert row["knee_ci_low"] <= at <= row["knee_ci_high"]
    flat = regime[
        (regime.backbone == "sd15") & (regime.adapter == "sd-style") & (regime.metric == "clip_score")
    ]
    assert flat.iloc[0]["knee_verdict"].startswith("no knee")


def test_steps_to_95_percent_of_the_rise():
    assert aggregate.steps_to_share(SD_STEPS, [curve("csd", s) for s in SD_STEPS], "higher") == 8
    falling = [abs(curve("dino", 50) - curve("dino", s)) for s in SD_STEPS]
    assert aggregate.steps_to_share(SD_STEPS, falling, "lower") == 12
    assert np.isnan(aggregate.steps_to_share(SD_STEPS, [1.0] * len(SD_STEPS), "higher"))


def test_pareto_front_per_value_metric(mixed):
    config, _, _ = mixed
    pareto = pd.read_csv(Paths(study_of(config)).table("pareto"))
    sd = pareto[pareto.backbone == "sd15"]
    assert set(sd["value_metric"]) == {"csd", "dino", "clip_i", "clip_score", "lpips_anchor"}
    assert set(pareto[pareto.backbone.str.startswith("flux")]["value_metric"]) == {"id_sim_zero"}
    # csd of sd15 saturates at 8 steps: 8 is on the front, 50 (slower, no better) is not
    csd = sd[(sd.value_metric == "csd")].set_index("steps")["on_front"]
    assert not csd[50]


def test_the_page_has_a_section_per_sd_family(mixed):
    _, _, page = mixed
    text = page.read_text()
    assert '<section id="sd-sd15"><h2>SD1.5 style and object adapters</h2>' in text
    assert '<section id="sd-sdxl"><h2>SDXL style adapters</h2>' in text
    sd15 = text[text.index('id="sd-sd15"') : text.index('id="sd-sdxl"')]
    assert "<b>The study's claim:</b>" in sd15
    assert sd15.count("diminishing returns after intermediate steps") == 1  # said once
    text = html.unescape(re.sub(r"<[^>]+>", "", sd15))
    assert re.search(r"CSD style similarity: knee at 8 steps \[\d+, \d+\]\. ", text)
    assert re.search(r"DINO \(image-reference\): knee at 12 steps \[\d+, \d+\]\. ", text)
    assert WEIGHT_BANNERS["tiny"] in sd15
    # every finding is sentences of "what: value", each value a number, an interval or a verdict
    bullets = re.findall(r"<li><code>(sd\w+) / ([\w-]+)</code>: (.*?)</li>", sd15)
    assert len(bullets) == 8  # sd15 style and object, 4 metrics each (sdxl has its own section)
    number = r"[-+]?\d+(\.\d+)?"
    interval = rf"{number}( \[{number}, {number}\]| \(too few items to estimate\))?"
    for _, _, finding in bullets:
        sentences = html.unescape(re.sub(r"<[^>]+>", "", finding)).rstrip(".").split(". ")
        assert re.fullmatch(r"[^:]+: (knee at \d+ steps? \[\d+, \d+\]|no knee \([a-z ]+\))", sentences[0])
        assert re.fullmatch(rf"Change from 1 to 50 steps in the better direction: {interval}", sentences[1])
        for sentence in sentences[2:]:
            assert re.fullmatch(
                rf"(95% of that change by \d+ steps?|As good as its 50-step cell from .+"
                rf"|Largest gain after the knee: {interval} per step \(\d+ → \d+\))",
                sentence,
            ), sentence
    names = sorted(p.name for p in (page.parent / "figures" / "sd").iterdir())
    for metric in ("csd", "clip_i", "clip_score", "lpips_anchor"):
        assert f"sd15__sd-style__{metric}.png" in names and f"sdxl__sd-style__{metric}.svg" in names
    assert "sd15__sd-object__dino.png" in names and "sd15__sd-style__dino.png" not in names
    assert {
        "grid__sd15__sd-style__p0.png",
        "grid__sd15__sd-object__p0.png",
        "grid__sdxl__sd-style__p0.png",
    } <= set(names)
    with Image.open(page.parent / "figures" / "sd" / "grid__sd15__sd-style__p0.png") as grid:
        # a header, 3 reference rows and the weights mark's band
        assert grid.height == 20 + 3 * 128 + 18


def test_the_sd_section_draws_its_trajectory_per_metric_of_its_role(mixed):
    config, _, page = mixed
    table = pd.read_csv(Paths(study_of(config)).table("trajectory"))
    csd = table[(table.metric == "csd")].set_index("step")["mean"]
    # the 3 style references' effects (+0.03, -0.02, -0.01) cancel in the mean over items
    assert csd.to_dict() == pytest.approx({s: 0.125 * s for s in range(1, 5)})
    assert set(table["metric"]) == {"csd", "clip_i", "adapter_active"}
    names = sorted(p.name for p in (page.parent / "figures" / "sd").iterdir())
    prefix = "sd15__trajectory__"
    assert [n for n in names if n.startswith(prefix)] == [
        f"{prefix}grid__sd15__sd-style__4.png",
        f"{prefix}x0__clip_i.png",
        f"{prefix}x0__clip_i.svg",
        f"{prefix}x0__csd.png",
        f"{prefix}x0__csd.svg",
    ]
    assert not list((page.parent / "figures" / "trajectory").iterdir())  # not in the generic section
    text = page.read_text()
    sd15 = html.unescape(text[text.index('id="sd-sd15"') : text.index('id="sd-sdxl"')])
    assert "<h3>Trajectories: the x0 prediction at every step</h3>" in sd15
    assert "x0 at every step, metric csd: CSD style similarity (<a" in sd15  # the caption
    assert "x0 at every step, metric clip_i: CLIP-I (image-reference) (<a" in sd15
    assert "Trajectories" not in text[text.index('id="sd-sdxl"') :].split("</section>")[0]
    with Image.open(page.parent / "figures" / "sd" / f"{prefix}grid__sd15__sd-style__4.png") as grid:
        assert grid.size == ((4 + 1) * 128, 20 + 3 * 128 + 18)  # 3 references x 4 steps, the mark
        assert grid.getpixel((2 * 128 + 64, 20 + 64)) == (80, 60, 60)  # step 2's x0 of the first


@pytest.mark.slow
def test_flux_rows_and_sections_are_those_of_a_flux_only_sweep(mixed, tmp_path):
    config, tables, page = mixed
    only = validate(synth.raw_config(tmp_path))
    synth.write_scores(only)
    summary = aggregate.run(study_of(only))
    flux_page = report.run(study_of(only), summary).read_text()
    for name in ("summary", "regime", "marginal"):
        alone = pd.read_csv(summary.parent / f"{name}.csv")
        part = tables[name][tables[name].backbone.str.startswith("flux")].reset_index(drop=True)
        columns = getattr(aggregate, f"{name.upper()}_COLUMNS")  # not the provenance stamp
        pd.testing.assert_frame_equal(part[columns], alone[columns])
    text = page.read_text()
    strip = lambda html: re.sub(r'src="data:[^"]*"', "", html)  # noqa: E731
    for key in ("regime", "marginal", "findings", "study", "grids"):
        section = re.compile(rf'<section id="{key}">.*?</section>', re.S)
        assert strip(section.search(text).group()) == strip(section.search(flux_page).group()), key


def test_sd_legends_say_what_the_anchor_is(mixed):
    from fewstep.analysis.figures import regime_figure

    _, tables, _ = mixed
    series = lambda t: t[(t.backbone == "sd15") & (t.adapter == "sd-style")]  # noqa: E731
    fig = regime_figure(series(tables["summary"]), series(tables["regime"]), "csd", 0.01)
    assert "anchor: this series at 50 steps" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    flux = lambda t: t[t.backbone.str.startswith("flux")]  # noqa: E731
    fig = regime_figure(flux(tables["summary"]), flux(tables["regime"]), "id_sim", 0.02)
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert "anchor: this series at 16 steps" in legends[0]  # flux-dev holds the anchor
    assert "anchor: flux-dev/infusenet-aes/16" in legends[1]  # schnell compares with it


#: the config's comparison as a list: the FLUX pair first, then SD few-steps against many steps
PAIRS = [
    {"baseline": "flux-dev/infusenet-aes/16", "candidate": "flux-schnell/infusenet-aes/4"},
    {"baseline": "sd15/sd-style/25", "candidate": "sd15/sd-style/4"},
    {"baseline": "sd15/sd-object/50", "candidate": "sd15/sd-object/8"},
]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """The comparison table and the report's comparison section of the mixed sweep with `PAIRS`."""
    from fewstep.analysis.page import Page
    from fewstep.analysis.scores import load_scores

    root = tmp_path_factory.mktemp("pairs")
    config = sd_config(root)
    config["comparison"] = PAIRS
    # margins wide enough for 18 paired images of noise sd 0.01 to show non-inferiority
    config["report"]["margins"] = {"csd": 0.05, "dino": 0.05}
    synth.write_scores(config, images=False)
    write_sd_scores(config, np.random.default_rng(1))
    study = study_of(config)
    table = aggregate.comparison(aggregate.Context(study, load_scores(study)))
    page = Page(study, root / "index.html")
    report._study_section(page, table, 0.95)
    return table, page.sections[0][2]


def test_every_pair_gets_its_roles_metrics_latency_and_regime(compared):
    table, _ = compared
    rows = {(r.candidate, r.metric): r for r in table.itertuples(index=False)}
    assert list(dict.fromkeys(table["candidate"])) == [p["candidate"] for p in PAIRS]
    style = table[table.candidate == "sd15/sd-style/4"]
    assert list(style["metric"][:2]) == ["end_to_end_s", "latency_s"]  # then the style role's metrics
    assert set(style["metric"][2:]) == {"clip_score", "clip_i", "csd", "lpips_anchor"}
    assert set(table[table.candidate == "sd15/sd-object/8"]["metric"]) >= {"dino", "clip_i", "clip_score"}
    assert set(style["family"]) == {"SD1.5"} and style["study"].isna().all()
    # latency 0.05 x steps + 0.1 (+ 0.05 encoders), no noise: exact ratios
    assert rows["sd15/sd-style/4", "end_to_end_s"].estimate == pytest.approx(1.4 / 0.35)
    assert rows["sd15/sd-style/4", "latency_s"].estimate == pytest.approx(1.35 / 0.3)
    # csd = 0.5 min(steps, 8) / 8: 4 steps minus 25 steps is -0.25 (reference and prompt effects cancel)
    csd = rows["sd15/sd-style/4", "csd"]
    assert csd.ci_low <= -0.25 <= csd.ci_high and csd.ci_high < -0.2 and csd.n_pairs == 18
    # the style series reaches the 25-step value at 8: not in the regime at 4, in it from 8 on
    assert csd.effective_rule == "non-inferior to the anchor within 0.05" and csd.effective_steps == 8
    dino = rows["sd15/sd-object/8", "dino"]  # 0.4 min(steps, 12) / 12: 8 minus 50 steps
    assert dino.ci_low <= 0.4 * 8 / 12 - 0.4 <= dino.ci_high and dino.effective_steps == 12
    # the FLUX pair keeps the study's identity rows and figures
    flux = table[table.candidate == "flux-schnell/infusenet-aes/4"].set_index("metric")
    assert flux.loc["id_sim_zero", "study"] == 0.028 and flux.loc["end_to_end_s", "study"] == 5.9
    assert flux.loc["id_sim_zero", "ci_low"] <= synth.SHIFT <= flux.loc["id_sim_zero", "ci_high"]
    assert not (set(flux.index) & {"csd", "dino"}) and not (set(style["metric"]) & {"id_sim", "lpips_ref"})


def test_the_report_shows_a_table_per_pair(compared):
    table, body = compared
    headings = re.findall(r"<h3>(.*?)</h3>", body)
    assert [re.sub(r"<.*?>", "", h) for h in headings] == [
        "FLUX: flux-schnell/infusenet-aes/4 against flux-dev/infusenet-aes/16",
        "SD1.5: sd15/sd-style/4 against sd15/sd-style/25",
        "SD1.5: sd15/sd-object/8 against sd15/sd-object/50",
    ]
    steps = int(
        table[(table.candidate == "sd15/sd-style/4") & (table.metric == "csd")]["effective_steps"].iloc[0]
    )
    assert f"from {steps} steps" in body and body.count('<table class="study"') == 3
    style = body[body.index("SD1.5: <code>sd15/sd-style/4") : body.index("SD1.5: <code>sd15/sd-object/8")]
    assert "4.00x" in style and "4.50x" in style  # its latency ratios, end to end and denoise + decode


def test_a_pair_of_different_roles_is_refused_with_one_line(tmp_path):
    raw = dict(sd_config(tmp_path))  # validated already: validating it again changes nothing
    raw["comparison"] = [{"baseline": "sd15/sd-style/50", "candidate": "sd15/sd-object/4"}]
    from fewstep.core.errors import ConfigError
    from fewstep.grid import Grid

    with pytest.raises(ConfigError) as error:
        Grid(study_of(validate(raw)))
    assert str(error.value) == (
        "config comparison[0]: sd15/sd-style/50 and sd15/sd-object/4 cross different pictures "
        "(style vs object), so no image pairs; pair cells of one role"
    )
    raw["comparison"] = [{"baseline": "sd15/sd-style/50", "candidate": "sd15/sd-style/3"}]
    with pytest.raises(
        ConfigError, match=r"^config comparison\[0\]\.candidate: cell 'sd15/sd-style/3' is not in"
    ):
        Grid(study_of(validate(raw)))
