"""The report on synthetic sweeps: figures, grids, tables and what the page says."""

from __future__ import annotations

import contextlib
import html
import io
import re

import numpy as np
import pytest
import synthetic_sweep as synth
from PIL import Image

from fewstep.analysis import aggregate, formats, report
from fewstep.analysis.figure_check import layout_problems, place_labels, range_gid
from fewstep.analysis.figures import block_matrix, pyplot, trajectory_figure
from fewstep.analysis.page import WEIGHT_BANNERS, WEIGHT_MARKS
from fewstep.analysis.stats import Bounds
from fewstep.core.config import config_hash, validate
from fewstep.core.paths import Paths
from tests.conftest import REPO, study_of

QUALITY = ("face_detected", "id_sim", "id_sim_zero", "lpips_anchor", "lpips_ref")


def make(root, lpips: bool = True, trajectory: bool = True):
    """The synthetic sweep's report; a figure the layout check objects to fails here."""
    config = validate(synth.raw_config(root))
    synth.write_scores(config, lpips=lpips)
    if trajectory:
        synth.write_trajectory(config, "flux-schnell/infusenet-aes/4")
    summary = aggregate.run(study_of(config))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        page = report.run(study_of(config), summary)
    assert "figure layout" not in printed.getvalue(), printed.getvalue()
    return config, page, page.read_text()


def plain(text: str) -> str:
    """The page's text as a reader sees it: tags dropped, entities resolved."""
    return html.unescape(re.sub(r"<[^>]+>", "", text))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return make(tmp_path_factory.mktemp("full"))


def figures(page, section):
    return sorted(p.name for p in (page.parent / "figures" / section).iterdir())


def test_figures_are_written_as_png_and_svg(full):
    _, page, _ = full
    assert figures(page, "regime") == [f"{m}.{ext}" for m in QUALITY for ext in ("png", "svg")]
    assert figures(page, "cost") == ["latency.png", "latency.svg", "pareto.png", "pareto.svg"]
    assert figures(page, "ablation") == [f"{m}.{ext}" for m in QUALITY for ext in ("png", "svg")]
    assert figures(page, "trajectory") == [
        "blocks__flux-schnell__infusenet-aes__4.png",
        "blocks__flux-schnell__infusenet-aes__4.svg",
        "grid__flux-schnell__infusenet-aes__4.png",
        "norms.png",
        "norms.svg",
        "x0__identity.png",  # the x0 at every step, scored by the identity metric
        "x0__identity.svg",
    ]
    # one identity x steps grid per backbone/adapter for the first prompt
    assert figures(page, "grids") == [
        "flux-dev__infusenet-aes__p0.png",
        "flux-dev__none__p0.png",
        "flux-schnell__infusenet-aes__p0.png",
    ]
    for path in (page.parent / "figures").rglob("*.svg"):
        assert path.read_text().lstrip().startswith("<?xml") and "</svg>" in path.read_text()


def test_every_figure_and_picture_says_its_weights_are_tiny(full):
    """Figures travel without the page (W&B, snakemake --report): each carries the mark itself."""
    _, page, _ = full
    svgs = sorted((page.parent / "figures").rglob("*.svg"))
    assert svgs and all(WEIGHT_MARKS["tiny"] in path.read_text() for path in svgs)
    pictures = [p for p in (page.parent / "figures").rglob("*.png") if not p.with_suffix(".svg").exists()]
    assert len(pictures) == 4  # three identity x steps grids, one x0 grid
    for path in pictures:
        with Image.open(path) as picture:
            band = picture.convert("RGB").crop((0, picture.height - 18, picture.width, picture.height))
            assert (160, 0, 0) in {color for _, color in band.getcolors(1 << 16)}, path


def test_image_grid_layout_identity_rows_step_columns(full):
    config, page, _ = full
    with Image.open(page.parent / "figures" / "grids" / "flux-dev__infusenet-aes__p0.png") as grid:
        tile, label = 128, 20
        band = 18  # the weights mark below the grid
        assert grid.size == ((5 + 1) * tile, label + 4 * tile + band)  # reference + 5 steps, 4 identities
        # tile (row 0 = astronaut, column 3 = 4 steps) is the generated PNG: shade = 255 * id_sim
        pixel = grid.getpixel((3 * tile + 64, label + 64))
        expected = int(
            255 * (synth.dev_curve(4) + synth.IDENTITY_EFFECTS["astronaut"] + synth.PROMPT_EFFECTS["p0"])
        )
        assert pixel == (expected, 40, 255 - expected)
    with Image.open(
        page.parent / "figures" / "trajectory" / "grid__flux-schnell__infusenet-aes__4.png"
    ) as grid:
        assert grid.size == ((4 + 1) * 128, 20 + 4 * 128 + 18)  # reference + 4 steps, weights mark
        assert grid.getpixel((2 * 128 + 64, 20 + 64)) == (40, 100, 100)  # step 2 tile of the synthetic x0


def test_page_embeds_every_figure_and_links_tables(full):
    config, page, text = full
    pngs = list((page.parent / "figures").rglob("*.png"))
    embedded = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', text)
    assert len(embedded) == len(pngs)
    assert 'src="figures/' not in text and "src='http" not in text  # self-contained
    for name in aggregate.TABLES:
        assert f'href="tables/{name}.csv"' in text
        assert (page.parent / "tables" / f"{name}.csv").read_bytes() == Paths(study_of(config)).table(
            name
        ).read_bytes()
    assert 'href="figures/regime/id_sim.svg"' in text


def test_page_tells_the_reader_what_it_is(full):
    config, _, text = full
    assert 'class="banner"' in text and "Tiny models with seeded random weights" in text
    # the study table, with the study's numbers beside ours
    assert "5.9x" in text and "+0.028" in text and "-0.016" in text
    ratio = re.search(r"<td>end-to-end latency ratio \(baseline / candidate\)</td>(<td>.*?</td>){3}", text)
    # 3.35 s / 0.85 s end to end, with jitter; a ratio's range is (0, inf)
    assert ratio and re.search(
        r'data-range-low="0" data-range-high="inf">[34]\.\d\dx \[3\.\d\dx, 4\.\d\dx\]</span></td>$',
        ratio.group(0),
    )
    assert "<td>20 of 24</td><td>warm-up batch excluded</td>" in text  # the first batch of 4 left out
    assert "identity similarity (no face = 0), candidate - baseline" in text and "(faces only)" in text
    assert "comparison cells are not the study's" in text  # dev-16 is not dev-28
    # the effective regime and findings
    assert "knee at 4 steps [4, 4]; as good as the anchor (margin 0.02) from 4 steps" in plain(text)
    assert "no knee: flat within noise" in text  # schnell's flat curve
    # the coverage table says which design each row is, and no warning: 4 identities is what the
    # intervals need
    assert "<td>4 x 8 x 4: 4 identities</td>" in text
    assert "<td>4 x 3 x 2: this sweep: flux-dev, flux-schnell (identities x prompts x seeds)</td>" in text
    assert text.count("<td>cosine (-1 to 1), mean near 0.8</td>") == 4  # a row per design
    # header: per family, as the scores (one row per manifest row) hold them
    assert "FLUX: 13 cells of 24 images each (4 identities x 3 prompts x 2 seeds)" in text
    assert "its intervals reach 90% coverage" not in text
    # configuration and provenance
    assert "sweep: synth" in text and config_hash(config) in text
    assert "version: kneed" in text and "0.9.0" in text
    assert "Trajectories: the x0 prediction at every step, scored, and probes" in text
    assert "x0 at every step, metric identity: ArcFace identity similarity, no face = 0, " in text


def test_every_family_has_the_report_side_and_its_folders_are_report_categories():
    from fewstep.analysis.outputs import SECTIONS
    from fewstep.families import FAMILIES

    labels = {name: family.label for name, family in FAMILIES.items()}
    assert labels == {
        "flux": "FLUX",
        "sd15": "SD1.5",
        "sdxl": "SDXL",
        "kontext": "FLUX.1 Kontext",
        "klein": "FLUX.2 [klein]",
    }
    assert all(callable(f.report_parts) for f in FAMILIES.values())
    assert SECTIONS == ("regime", "cost", "ablation", "trajectory", "grids", "sd")
    for folder in SECTIONS:  # `snakemake --report` captions each category with its own text
        assert (REPO / "workflow" / "report" / f"{folder}.rst").exists()


def test_a_family_reaches_the_page_only_through_its_report_parts(full, tmp_path, monkeypatch):
    """A family's own section and its addition to a generic section land on the page from its
    `report_parts`; its kit holds its rows, and the generic sections then leave those rows out
    while the header still counts its cells under its label."""
    from fewstep.families import FAMILIES
    from fewstep.families.report_kit import ReportParts

    config, _, _ = full
    kits = []

    def parts(self, kit):
        kits.append(kit)
        own = kit.html_table(kit.tables["summary"][["cell_id", "metric"]].head(2))
        return ReportParts(sections=[("own", "Own section", own)], appended={"cost": "<p>added to cost</p>"})

    monkeypatch.setattr(type(FAMILIES["flux"]), "report_parts", parts)
    page = report.run(study_of(config), Paths(study_of(config)).summary, tmp_path / "index.html")
    text = page.read_text()
    (kit,) = kits
    assert set(kit.tables["summary"]["backbone"]) == {"flux-dev", "flux-schnell"}
    assert [c.id for c in kit.cells] == [c.id for c in report.Grid(study_of(config)).cells]
    assert kit.banner == WEIGHT_BANNERS["tiny"] and kit.out == page
    order = re.findall(r'<section id="([^"]+)">', text)
    assert order.index("grids") < order.index("own") < order.index("summary")
    assert '<section id="own"><h2>Own section</h2><div class="scroll"><table' in text
    assert "<td>flux-dev/infusenet-aes/1</td><td>id_sim_zero</td>" in text
    assert re.search(r'<section id="cost">(?:(?!</section>).)*<p>added to cost</p></section>', text, re.S)
    assert "No quality metric in the scores." in text  # the regime section has no rows left
    assert figures(page, "regime") == [] and figures(page, "grids") == []
    assert "FLUX: 13 cells of 24 images each (4 identities x 3 prompts x 2 seeds)" in text


@pytest.mark.slow
def test_sections_without_data_say_so(tmp_path):
    config, page, text = make(tmp_path, lpips=False, trajectory=False)
    assert figures(page, "trajectory") == []
    assert "No trajectory tables in this sweep" in text
    assert "not available (the scores have no lpips_ref column)" in text
    assert "lpips_ref.png" not in " ".join(figures(page, "regime"))


@pytest.mark.slow
def test_single_cell_without_anchor_or_comparison(tmp_path):
    """One backbone, adapter and step count, no anchor, no comparison: empty sections say why."""
    raw = synth.raw_config(tmp_path)
    raw["backbones"] = {"flux-dev": {"model": "flux-dev", "steps": [4]}}
    raw["cells"] = [{"backbones": ["flux-dev"], "adapters": ["infusenet-aes"]}]
    del raw["anchor"], raw["comparison"]
    raw["identities"] = raw["identities"][:2]  # fewer than the intervals need: the page warns
    config = validate(raw)
    synth.write_scores(config)
    page = report.run(study_of(config), aggregate.run(study_of(config)))
    text = page.read_text()
    for empty in ("marginal", "ablation", "trajectory", "comparison"):
        assert Paths(study_of(config)).table(empty).read_text().count("\n") == 1  # the header only
    assert "The config names no comparison cells" in text
    assert "This sweep has 2 identities; its intervals reach 90% coverage from 4 identities on" in text
    assert "Every series has a single step count." in text
    assert "Each backbone runs a single adapter: no ablation." in text
    assert "no knee: Kneedle finds none." in text and "as good as the anchor" not in text
    assert ">no anchor<" in text  # the regime table's effective column
    assert [f for f in figures(page, "regime") if f.endswith(".png")] == [f"{m}.png" for m in QUALITY]
    assert figures(page, "grids") == ["flux-dev__infusenet-aes__p0.png"]


def test_format_helpers():
    """One digits policy: 3 significant digits alone; an interval's three numbers to the place that
    gives its half width 2 significant digits; no "+0"; a range on every printed interval."""
    assert formats.fmt(float("nan")) == "—"
    assert formats.fmt(0.123456) == "0.123" and formats.fmt(0.03, signed=True) == "+0.0300"
    assert formats.fmt(1.302e-05) == "0.0000130" and formats.fmt(1234.5) == "1234" and formats.fmt(0.0) == "0"
    assert formats.fmt(-0.0, signed=True) == "0" and formats.fmt(3, signed=True) == "+3"
    assert plain(formats.fmt_ci(1.0, 0.5, 1.5, suffix="x")) == "1.00x [0.50x, 1.50x]"
    assert plain(formats.fmt_ci(0.7203, 0.302, 0.98)) == "0.72 [0.30, 0.98]"
    assert plain(formats.fmt_ci(0.0012, -0.0003, 0.0027, signed=True)) == "+0.0012 [-0.0003, +0.0027]"
    assert plain(formats.fmt_ci(0.0, 0.0, 0.0, signed=True)) == "0"  # not "+0 [+0, +0]"
    ratio = formats.fmt_ci(1.91, 0.138, 27.8, suffix="x", bounds=Bounds(0.0, np.inf))
    assert plain(ratio) == "1.9x [0.14x, 28x]"  # not "2x [0x, 28x]"
    assert plain(formats.fmt_ci(0.5738, 0.1, 1.82, bounds=Bounds(0.0, np.inf))) == "0.57 [0.10, 1.82]"
    assert plain(formats.fmt_ci(0.5, float("nan"), float("nan"))) == "0.500 (too few items to estimate)"
    assert formats.fmt_ci(float("nan"), 0, 1) == "—"
    span = formats.fmt_ci(0.6, 0.5, 0.7, bounds=Bounds(-1.0, 1.0))
    assert span.startswith('<span class="ci" data-range-low="-1" data-range-high="1">')


def test_block_heatmap_averages_items_per_step_and_block():
    frame = synth.pd.DataFrame(
        {
            "step": [1, 1, 2, 2],
            "block_relative_double": [
                [1.0, 2.0],
                [3.0, float("nan")],
                [float("nan")] * 2,
                [float("nan")] * 2,
            ],
        }
    )
    steps, matrix = block_matrix(frame, "block_relative_double")
    assert steps == [1, 2]
    assert matrix[0].tolist() == [2.0, 2.0] and synth.np.isnan(matrix[1]).all()  # step 2: adapter off
    assert block_matrix(frame, "block_relative_single") is None
    off = frame.assign(block_relative_double=[[float("nan")] * 2] * 4)
    assert block_matrix(off, "block_relative_double") is None


@pytest.mark.slow
def test_ablation_section_shows_identity_against_scale_and_window_and_the_latency_saved(tmp_path):
    """Scale and window cells with known identity and latency: the section's table gives them back."""
    import pandas as pd

    raw = synth.raw_config(tmp_path)
    for scale in (0, 0.5):
        raw["adapters"][f"scale{scale}"] = {"kind": "infusenet", "conditioning_scale": scale}
    for k in (1, 2):
        raw["adapters"][f"first{k}"] = {"kind": "infusenet", "first_steps": k}
    raw["cells"].append(
        {"backbones": ["flux-dev"], "adapters": ["scale0", "scale0.5", "first1", "first2"], "steps": [4]}
    )
    config = validate(raw)
    synth.write_scores(config, images=False, noise=False)
    paths = Paths(study_of(config))
    full = synth.dev_curve(4)
    known = {  # adapter -> (mean id_sim, latency per image): identity grows with scale and window
        "scale0": (0.1, 0.9),
        "scale0.5": (0.5 * full, 0.9),
        "first1": (0.25 * full, 0.9 - 0.06),
        "first2": (0.5 * full, 0.9 - 0.04),
    }
    for adapter, (mean, seconds) in known.items():
        path = paths.scores(f"flux-dev/{adapter}/4")
        frame = pd.read_parquet(path)
        frame["id_sim"] = frame["id_sim"] - full + mean  # the same item effects around the new mean
        frame["latency_s"] = seconds
        frame.to_parquet(path, index=False)
    page = report.run(study_of(config), aggregate.run(study_of(config)))
    table = pd.read_csv(page.parent / "tables" / "scale_window.csv").set_index("adapter")
    assert list(table.index) == ["infusenet-aes", "scale0", "scale0.5", "first1", "first2"]
    assert list(table["varies"]) == ["reference", "scale", "scale", "window", "window"]
    assert list(table["infusenet_steps"]) == [4, 0, 4, 1, 2]
    for adapter, (mean, seconds) in known.items():
        assert table.loc[adapter, "id_sim"] == pytest.approx(mean)
        assert table.loc[adapter, "latency_saved_s"] == pytest.approx(0.9 - seconds)
    assert table.loc["first1", "latency_saved_fraction"] == pytest.approx(0.06 / 0.9)
    assert (table["id_sim_ci_low"] <= table["id_sim"]).all() and (
        table["id_sim"] <= table["id_sim_ci_high"]
    ).all()
    assert "scale_window.png" in figures(page, "ablation")
    text = page.read_text()
    assert "latency each window saves" in text or "latency it saves" in text
    assert "+0.0600 (+7%)" in text  # first1 saves 0.06 s of the full adapter's 0.9 s


def test_the_layout_check_finds_what_a_reader_would_see_as_broken():
    """Each defect of the demo page's figures, made on purpose: the check names it."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(5, 4))  # three panels used: the fourth stays empty
    for ax in axes.flat[:3]:
        ax.plot([1, 2], [0.5, 0.6])
    axes[0][0].set_ylabel("a y label far too long for its small panel, so it runs into the title above")
    fig.suptitle("a title")
    fig.tight_layout()
    axes[0][1].fill_between([1, 2], [0.3, 0.9], [0.7, 1.139]).set_gid(range_gid("y", Bounds(-1.0, 1.0)))
    for x in (1.0, 1.01):  # two point labels on top of each other
        axes[1][0].annotate("28", (x, 0.55))
    problems = layout_problems(fig)
    assert "empty axes ''" in problems
    assert any("overlaps 'a title'" in p or "reaches outside the figure" in p for p in problems), problems
    assert "text '28' overlaps '28'" in problems
    assert any(p.startswith("an interval drawn at 1.139 outside its range [-1.0, 1.0]") for p in problems)
    plt.close(fig)


def test_point_labels_are_placed_where_they_collide_with_nothing():
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    x = np.array([1.0, 1.02, 1.04, 2.0, 2.01])
    y = np.array([0.5, 0.51, 0.49, 0.8, 0.8])
    ax.plot(x, y, "o")
    place_labels(ax, [(a, b, str(k)) for k, (a, b) in enumerate(zip(x, y, strict=True))])
    assert len(ax.texts) == 5 and layout_problems(fig) == []
    plt.close(fig)


def test_trajectory_figures_have_no_empty_panel(full):
    config, page, _ = full
    trajectory = synth.pd.read_csv(Paths(study_of(config)).table("trajectory"))
    fig = trajectory_figure(trajectory, ["id_sim_zero", "id_sim", "face_detected"], "emergence")
    assert len(fig.axes) == 3 and layout_problems(fig) == []
    fig = trajectory_figure(trajectory, ["residual_rms_double", "relative_double", "velocity_rms"], "x")
    assert layout_problems(fig) == []
