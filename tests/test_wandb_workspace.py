"""The sweep's W&B workspace, built offline: its panels draw exactly the keys the jobs log."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from wandb_harness import run_cli

from fewstep.core.config import validate
from fewstep.grid import Grid
from fewstep.tracking import runs, workspace
from tests.conftest import study_of

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo() -> dict:
    return validate(yaml.safe_load((REPO / "config" / "demo.yaml").read_text()))


def _panels(spec: dict) -> dict[str, list[dict]]:
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    return {s["name"]: [p["config"] | {"type": p["viewType"]} for p in s["panels"]] for s in sections}


def test_workspace_panels_draw_the_logged_keys(demo) -> None:
    spec = workspace.spec(study_of(demo), "someone")
    assert (spec["entity"], spec["project"], spec["displayName"]) == (
        "someone",
        "fewstep-demo",
        "fewstep demo",
    )
    panels = _panels(spec)
    assert list(panels) == [
        "identity vs steps",
        "style and object vs steps",
        "latency vs identity",
        "trajectories",
        "grids",
    ]
    assert all("(tiny weights)" in p["chartTitle"] for section in panels.values() for p in section)
    # identity vs steps: one line plot per backbone over the aggregate run's curves
    grid = Grid(study_of(demo))
    summary = pd.DataFrame(
        [
            {"metric": "id_sim", "backbone": c.backbone, "adapter": c.adapter, "steps": c.steps, "mean": 0.5}
            for c in grid.cells
            if not grid.reads_references(c)  # identity cells: the identity metrics
        ]
    )
    logged = set().union(*runs.sweep_history(summary)) - {"sweep/steps"}
    lines = [p for p in panels["identity vs steps"] if p["type"] == "Run History Line Plot"]
    assert [p["xAxis"] for p in lines] == ["sweep/steps"] * 6
    assert {m for p in lines for m in p["metrics"]} == logged
    # every backbone with identity cells: FLUX, Kontext, klein, SD with FaceID
    assert [p["metrics"] for p in lines] == [
        ["sweep/id_sim/flux-dev/infusenet-aes"],
        ["sweep/id_sim/flux-schnell/infusenet-aes"],
        ["sweep/id_sim/kontext/kontext-photo"],
        ["sweep/id_sim/klein/klein-reference"],
        ["sweep/id_sim/sd15/sd-faceid"],
        ["sweep/id_sim/sdxl/sd-faceid"],
    ]
    scatter = [p for p in panels["identity vs steps"] if p["type"] == "Scatter Plot"]
    assert [(p["xAxis"], p["yAxis"]) for p in scatter] == [("config:steps.value", "summary:id_sim")]
    (latency,) = panels["latency vs identity"]
    assert (latency["xAxis"], latency["yAxis"]) == ("summary:latency_s", "summary:id_sim")
    curves = {m.removeprefix("trajectory/") for p in panels["trajectories"] for m in p["metrics"]}
    assert curves <= set(runs.TRAJECTORY_CURVES)
    assert {p["xAxis"] for p in panels["trajectories"]} == {runs.STEP_METRICS["trajectory"]}
    assert panels["grids"][0]["type"] == "Media Browser"


def test_sd_panels_draw_each_backbones_reference_curves(demo) -> None:
    """One line plot per SD backbone and metric, over the adapters whose cells log it."""
    grid = Grid(study_of(demo))
    rows = []
    for cell in grid.cells:
        if grid.reads_references(cell):
            role = grid.adapter(cell)["role"]
            columns = ["csd" if role == "style" else "dino", "clip_i", "clip_score", "lpips_anchor"]
            keys = {"backbone": cell.backbone, "adapter": cell.adapter, "steps": cell.steps}
            rows += [{"metric": m, **keys, "mean": 0.5} for m in columns]
    logged = set().union(*runs.sweep_history(pd.DataFrame(rows))) - {"sweep/steps"}
    lines = _panels(workspace.spec(study_of(demo), "someone"))["style and object vs steps"]
    assert all(p["type"] == "Run History Line Plot" and p["xAxis"] == "sweep/steps" for p in lines)
    assert {m for p in lines for m in p["metrics"]} == logged
    by_title = {p["chartTitle"]: p["metrics"] for p in lines}
    assert by_title["csd vs steps: sd15 (tiny weights)"] == ["sweep/csd/sd15/sd-style"]
    assert by_title["dino vs steps: sdxl (tiny weights)"] == ["sweep/dino/sdxl/sd-object"]
    assert by_title["clip_i vs steps: sdxl (tiny weights)"] == [
        "sweep/clip_i/sdxl/sd-style",
        "sweep/clip_i/sdxl/sd-object",
    ]
    # per base backbone: CSD, DINO, CLIP-I, CLIPScore, LPIPS to the anchor; per distilled backbone
    # (style cells only) all but DINO
    assert len(lines) == 2 * 5 + 2 * 4


@pytest.mark.slow
def test_workspace_command_writes_the_spec_offline_and_needs_a_key_to_save(demo, tmp_path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(demo))
    out = tmp_path / "workspace.json"
    written = run_cli(["wandb-workspace", "--config", str(config_file), "--out", str(out)], tmp_path)
    assert written.returncode == 0, written.stderr
    spec = json.loads(out.read_text())
    assert spec["entity"] == "your-entity" and list(_panels(spec))[0] == "identity vs steps"
    saved = run_cli(["wandb-workspace", "--config", str(config_file)], tmp_path)
    assert saved.returncode == 1
    assert saved.stderr.strip().splitlines() == [
        "fewstep wandb-workspace: error: no W&B API key: set WANDB_API_KEY or run `wandb login`, then "
        f"rerun `fewstep wandb-workspace --config {config_file}` "
        "(or pass --out FILE to write the spec offline)"
    ]
