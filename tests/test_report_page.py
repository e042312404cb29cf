"""The report page in headless Chromium: the synthetic FLUX + SD sweep's, and the real report of
the offline demo (and `snakemake --report`).

What a reader would see as broken is checked in the browser at 1400 px (`chromium.layout_defects`):
the page wider than the window, a table wider than what shows it without its own scroll box, a
printed interval outside the range its quantity can take or printed without one; the header's
counts per family equal the manifests'; and every figure passed the layout check when it was made
(no empty axes, no text outside its figure or on other text, no interval drawn outside its range).
The demo runs once per test session through Snakemake (conftest's `demo_run`, shared with
tests/test_workflow.py; those tests are marked slow). The browser tests skip only where no
`chromium` is installed; CI installs it and sets FEWSTEP_REQUIRE_CHROMIUM=1, which turns the skip
into a failure.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from chromium import CHROMIUM, broken, image_states, layout, layout_defects, screenshot
from PIL import Image

from fewstep.core.config import config_hash, load
from fewstep.core.paths import Paths
from fewstep.grid import Grid
from tests.conftest import study_of

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "config" / "demo.yaml"
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("FEWSTEP_REQUIRE_CHROMIUM"),
    reason="headless Chromium is not installed (apt-get install -y chromium); CI installs it",
)


def snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work)]
    command += ["--configfile", str(DEMO), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


slow = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(demo_run) -> Path:
    """The offline demo run end to end; returns its working directory."""
    return demo_run


@pytest.fixture(scope="module")
def page(demo) -> Path:
    return demo / "reports" / "demo" / "index.html"


@slow
def test_demo_report_has_its_figures_tables_and_provenance(demo, page):
    text = page.read_text()
    figures = page.parent / "figures"

    def names(section: str) -> list[str]:  # Snakemake adds a hidden .snakemake_timestamp
        return sorted(p.name for p in (figures / section).iterdir() if not p.name.startswith("."))

    # dlib finds no face on the tiny models' noise: its faces-only columns have no curve, its
    # no-face-as-zero twin and detection rate do; the astronaut's mirrored photo is held out
    metrics = ["clip_score", "face_detected", "face_detected_dlib", "id_sim", "id_sim_dlib_zero"]
    metrics += ["id_sim_heldout", "id_sim_zero", "lpips_anchor", "lpips_ref"]
    assert names("regime") == [f"{m}.{ext}" for m in metrics for ext in ("png", "svg")]
    assert names("cost") == [
        "latency.png",
        "latency.svg",
        "pareto.png",
        "pareto.svg",
    ]
    # identity x steps, dev, schnell, klein and Kontext (the photo as reference)
    assert names("grids") == [
        "flux-dev__infusenet-aes__portrait.png",
        "flux-schnell__infusenet-aes__portrait.png",
        "klein__klein-reference__portrait.png",
        "kontext__kontext-photo__portrait.png",
    ]
    assert names("ablation") == []  # the demo has one adapter
    assert names("trajectory") == [
        "blocks__flux-dev__infusenet-aes__8.png",  # per-block InfuseNet norm heatmaps
        "blocks__flux-dev__infusenet-aes__8.svg",
        "blocks__flux-schnell__infusenet-aes__4.png",
        "blocks__flux-schnell__infusenet-aes__4.svg",
        "grid__flux-dev__infusenet-aes__8.png",
        "grid__flux-schnell__infusenet-aes__4.png",
        "norms.png",
        "norms.svg",
        "x0__identity.png",  # x0 at every step by each identity metric (dlib's: no-face-as-zero, rate)
        "x0__identity.svg",
        "x0__identity_dlib.png",
        "x0__identity_dlib.svg",
    ]
    # the SD trajectory cell's figures are in its family's section: one per metric of its role
    grid = Grid(study_of(load([DEMO])))
    sd_cells = [c for c in grid.trajectory_cells if grid.family(c).report_folders == ("sd",)]
    assert sd_cells
    for cell in sd_cells:
        for metric in grid.trajectory_metrics(cell):
            assert f"{cell.backbone}__trajectory__x0__{metric}.png" in names("sd")
    assert "Tiny models with seeded random weights" in text
    # every quantity of the study table was measured, end-to-end latency once the manifest has it
    assert set(re.findall(r"not available \(the scores have no (\w+) column\)", text)) <= {"end_to_end_s"}
    assert text.count("not available") == text.count("not available (the scores have no end_to_end_s")
    assert "flux-schnell/infusenet-aes/4</code> is " in text and "faster per image" in text
    cwd = Path.cwd()
    os.chdir(demo)  # the config's relative paths resolve as in the run
    try:
        config = load([DEMO])
    finally:
        os.chdir(cwd)
    assert config_hash(config) in text and "sweep: demo" in text
    assert (page.parent / "tables" / "comparison.csv").read_text().startswith("quantity,metric,baseline")


@slow
@needs_chromium
def test_page_renders_and_every_image_loads_in_headless_chromium(page, tmp_path):
    states = image_states(page)
    pngs = list((page.parent / "figures").rglob("*.png"))
    # 20 FLUX figures (9 regime curves, 2 cost, 2 grids, 7 trajectory), the Kontext and klein cells'
    # image grids; SD: per family x adapter a grid (3 x 2) and a curve per metric (style and object:
    # 5 each, FaceID: the 9 identity curves), a grid per distilled series (its lines share the
    # curves), and the SDXL trajectory cell's grid and x0 curves (DINO, CLIP-I)
    sd = 2 * 3 + 2 * (5 + 5 + 9) + 2 + 3
    assert len(states) == len(pngs) == 20 + 2 + sd
    assert broken(states) == []
    assert all(s["width"] >= 200 and s["height"] >= 100 for s in states)
    shot = screenshot(page, tmp_path / "page.png", width=1280, height=3000)
    with Image.open(shot) as image:
        assert image.size == (1280, 3000)
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 20  # not a blank page
    assert (pixels < 200).mean() > 0.02  # text, tables and figures cover part of it
    # the banner's colour (#fff3cd) is on screen near the top
    rgb = np.asarray(Image.open(shot).convert("RGB"))[:400]
    assert (np.abs(rgb.astype(int) - (255, 243, 205)).sum(axis=-1) < 12).sum() > 5000


@needs_chromium
def test_image_probe_reports_broken_images(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (7, 5), "red").save(buffer, format="PNG")
    good = base64.b64encode(buffer.getvalue()).decode()
    page = tmp_path / "page.html"
    page.write_text(
        "<!doctype html><html><body>"
        f'<img alt="good" src="data:image/png;base64,{good}">'
        '<img alt="corrupt" src="data:image/png;base64,AAAA">'
        '<img alt="missing" src="figures/none.png">'
        "</body></html>"
    )
    states = image_states(page)
    assert [s["alt"] for s in states] == ["good", "corrupt", "missing"]
    assert (states[0]["width"], states[0]["height"]) == (7, 5)
    assert broken(states) == ["corrupt", "missing"]
    assert not list(tmp_path.glob(".probe-*"))  # the probe copy is cleaned up


@slow
def test_snakemake_report_collects_the_registered_figures(demo, tmp_path):
    out = tmp_path / "snakemake-report.html"
    result = snakemake(demo, "--report", str(out))
    assert out.exists() and out.stat().st_size > 100_000
    text = out.read_text()
    for expected in ("Regime", "Cost", "Grids", "Tables", "Report page", "id_sim.png", "pareto.png"):
        assert expected in text, expected
    assert "Tiny models with seeded random weights" in text  # workflow.rst, rendered with the config
    assert "Adding id_sim.png" in result.stdout + result.stderr


def manifest_counts(config: dict) -> dict[str, tuple[int, int]]:
    """family -> (cells, images) from the cells' manifest.parquet files."""
    grid = Grid(study_of(config))
    paths = Paths(grid.study)
    counts: dict[str, list[int]] = {}
    for cell in grid.cells:
        family = config["backbones"][cell.backbone]["family"]
        found = counts.setdefault(family, [0, 0])
        found[0] += 1
        found[1] += len(pd.read_parquet(paths.manifest(cell.id)))
    return {family: tuple(n) for family, n in counts.items()}


def check_page(page: Path, expected: dict[str, tuple[int, int]]) -> dict:
    """The page's layout at 1400 px without defects, its header counts the `expected` ones."""
    state = layout(page, width=1400)
    assert layout_defects(state) == []
    assert len(state["intervals"]) > 20  # the check read the printed intervals
    assert {c["family"]: (c["cells"], c["images"]) for c in state["counts"]} == expected
    for count in state["counts"]:  # the text says the same as the attributes
        cells = f"{count['cells']} cell{'s' if count['cells'] != 1 else ''} of "
        assert cells in count["text"], count
    assert state["total"]["images"] == sum(images for _, images in expected.values())
    return state


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The synthetic FLUX + SD1.5 + SDXL sweep of tests/test_report_sd.py."""
    from test_report_sd import build

    config, _, page = build(tmp_path_factory.mktemp("synthetic"))
    return config, page


@needs_chromium
def test_synthetic_page_has_no_layout_defects_in_headless_chromium(synthetic):
    config, page = synthetic
    grid = Grid(study_of(config))
    expected = {}
    for cell in grid.cells:  # what the scores hold, one row per manifest row
        family = config["backbones"][cell.backbone]["family"]
        rows = len(pd.read_parquet(Paths(study_of(config)).scores(cell.id)))
        cells, images = expected.get(family, (0, 0))
        expected[family] = (cells + 1, images + rows)
    assert expected == {"flux": (13, 312), "sd15": (18, 324), "sdxl": (9, 162)}
    state = check_page(page, expected)
    # the wide tables of every cell are in their own scroll box
    assert all(table["shown"] is not None for table in state["tables"])


@needs_chromium
def test_the_layout_probe_finds_each_defect(tmp_path):
    """A page made with each defect: the probe names every one (a check that cannot fail is none)."""
    cells = "".join(f"<td>column {k} with some text</td>" for k in range(40))
    page = tmp_path / "page.html"
    page.write_text(
        "<!doctype html><html><body>"
        f"<table><tr><th>wide</th>{cells}</tr></table>"
        f'<div style="overflow-x:auto"><table><tr><th>boxed</th>{cells}</tr></table></div>'
        '<p><span class="ci" data-range-low="-1" data-range-high="1">0.72 [0.30, 1.14]</span></p>'
        '<p><span class="ci" data-range-low="0" data-range-high="inf">0.57 [0.10, 1.82]</span></p>'
        "<p>end to end 0.57 [-0.67, 1.82] s</p>"
        "</body></html>"
    )
    defects = layout_defects(layout(page, width=1400))
    assert defects[0].startswith("the page is ") and "1400 px window" in defects[0]
    assert defects[1].startswith("table 'wide' reaches ")
    assert "interval '0.72 [0.30, 1.14]' outside its range [-1, 1]" in defects
    assert "an interval printed without its range: 'end to end 0.57 [-0.67, 1.82] s'" in defects
    assert len(defects) == 4  # the boxed table and the positive time interval are fine


@slow
@needs_chromium
def test_demo_page_has_no_layout_defects_and_counts_its_manifests(demo, page, tmp_path):
    from fewstep.analysis import report

    printed = io.StringIO()
    cwd = Path.cwd()
    os.chdir(demo)  # the config's relative paths resolve as in the run
    try:
        config = load([DEMO])
        expected = manifest_counts(config)
        grid = Grid(study_of(config))
        items = {
            family: sum(len(grid.items_of(c)) for c in grid.cells if grid.backbone(c).family == family)
            for family in expected
        }
        with contextlib.redirect_stdout(printed):  # the report again: what its figure check prints
            report.run(study_of(config), Paths(study_of(config)).summary, tmp_path / "index.html")
    finally:
        os.chdir(cwd)
    assert "figure layout" not in printed.getvalue(), printed.getvalue()
    assert expected["flux"] == (7, 28) and {f: n[1] for f, n in expected.items()} == items  # every item
    check_page(page, expected)
