"""The real report of the offline demo: the page in headless Chromium, and `snakemake --report`.

The demo runs once per test session through Snakemake (conftest's `demo_run`,
shared with tests/test_workflow.py). The browser tests skip only where no `chromium` is
installed; CI installs it and sets FEWSTEP_REQUIRE_CHROMIUM=1, which turns the
skip into a failure.
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from chromium import CHROMIUM, broken, image_states, screenshot
from PIL import Image

from fewstep.core.config import config_hash, load

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def demo(demo_run) -> Path:
    """The offline demo run end to end; returns its working directory."""
    return demo_run


@pytest.fixture(scope="module")
def page(demo) -> Path:
    return demo / "reports" / "demo" / "index.html"


def test_demo_report_has_its_figures_tables_and_provenance(demo, page):
    text = page.read_text()
    figures = page.parent / "figures"

    def names(section: str) -> list[str]:  # Snakemake adds a hidden .snakemake_timestamp
        return sorted(p.name for p in (figures / section).iterdir() if not p.name.startswith("."))

    metrics = ["clip_score", "face_detected", "id_sim", "id_sim_zero", "lpips_anchor", "lpips_ref"]
    assert names("regime") == [f"{m}.{ext}" for m in metrics for ext in ("png", "svg")]
    assert names("cost") == [
        "latency.png",
        "latency.svg",
        "pareto.png",
        "pareto.svg",
    ]
    # identity x steps, dev and schnell
    assert names("grids") == [
        "flux-dev__infusenet-aes__portrait.png",
        "flux-schnell__infusenet-aes__portrait.png",
    ]
    assert names("ablation") == []  # the demo has one adapter
    assert names("trajectory") == [
        "blocks__flux-dev__infusenet-aes__8.png",  # per-block InfuseNet norm heatmaps
        "blocks__flux-dev__infusenet-aes__8.svg",
        "blocks__flux-schnell__infusenet-aes__4.png",
        "blocks__flux-schnell__infusenet-aes__4.svg",
        "emergence.png",
        "emergence.svg",
        "grid__flux-dev__infusenet-aes__8.png",
        "grid__flux-schnell__infusenet-aes__4.png",
        "norms.png",
        "norms.svg",
    ]
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


@needs_chromium
def test_page_renders_and_every_image_loads_in_headless_chromium(page, tmp_path):
    states = image_states(page)
    pngs = list((page.parent / "figures").rglob("*.png"))
    # 16 FLUX figures; per SD family x adapter a grid and a curve per metric (5 each): 4 x 6
    assert len(states) == len(pngs) == 16 + 4 * 6
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


def test_snakemake_report_collects_the_registered_figures(demo, tmp_path):
    out = tmp_path / "snakemake-report.html"
    result = snakemake(demo, "--report", str(out))
    assert out.exists() and out.stat().st_size > 100_000
    text = out.read_text()
    for expected in ("Regime", "Cost", "Grids", "Tables", "Report page", "id_sim.png", "pareto.png"):
        assert expected in text, expected
    assert "Tiny models with seeded random weights" in text  # workflow.rst, rendered with the config
    assert "Adding id_sim.png" in result.stdout + result.stderr
