"""The workflow as users run it: real Snakemake, real executor, demo config."""

from __future__ import annotations

import pandas as pd
import pytest

from fewstep.core.config import load
from fewstep.grid import Grid
from tests.conftest import REPO, snakemake, study_of

DEMO = REPO / "config" / "demo.yaml"


def test_demo_sweep_produces_every_output(demo_run):
    config = load([DEMO])
    grid = Grid(study_of(config))
    results = demo_run / "results" / "demo"
    images = sorted((results / "cells").rglob("*.png"))
    # 7 FLUX cells, the Kontext and klein cells and 2 SD FaceID cells of 2 identities x 2 identity
    # prompts, 12 base and 2 distilled SD cells of 1 reference x its role's prompt
    assert len(images) == sum(len(grid.items_of(cell)) for cell in grid.cells) == 7 * 4 + 4 * 4 + 14 * 1
    for cell in grid.cells:
        manifest = pd.read_parquet(results / "cells" / cell.id / "manifest.parquet")
        assert len(manifest) == len(grid.items_of(cell)) and manifest["item_id"].is_unique
        scores = pd.read_parquet(results / "scores" / cell.id / "scores.parquet")
        assert list(scores["item_id"]) == list(manifest["item_id"])
    summary = pd.read_csv(results / "aggregate" / "summary.csv")
    assert not summary.duplicated(["cell_id", "metric"]).any()
    metrics = summary.groupby("cell_id")["metric"].apply(set)
    assert set(metrics.index) == {cell.id for cell in grid.cells}
    assert {"csd", "clip_i", "clip_score", "lpips_anchor"} <= metrics["sd15/sd-style/2"]
    assert {"dino", "clip_i", "clip_score", "lpips_anchor"} <= metrics["sdxl/sd-object/1"]
    assert "id_sim" not in metrics["sd15/sd-style/2"] and "csd" not in metrics["flux-dev/infusenet-aes/1"]
    assert {"id_sim", "face_detected", "clip_score"} <= metrics["sdxl/sd-faceid/2"]  # scored as InfuseNet
    assert {"id_sim", "face_detected", "latency_s"} <= set(summary["metric"])
    assert {"lpips_ref", "lpips_anchor", "clip_score"} <= set(summary["metric"])
    anchor = summary[(summary["cell_id"] == config["anchor"]) & (summary["metric"] == "lpips_anchor")]
    assert anchor["mean"].tolist() == [0.0]
    assert set(summary["weights"]) == {"tiny"}
    for cell in grid.trajectory_cells:
        table = pd.read_parquet(results / "trajectories" / cell.id / "trajectory.parquet")
        traced = min(len(grid.items_of(cell)), config["trajectory"]["max_items"])  # the SD cell has 1
        assert len(table) == traced * cell.steps  # items traced x steps
    page = (demo_run / "reports" / "demo" / "index.html").read_text()
    assert "Tiny models with seeded random weights" in page and page.count("<img") >= 2
    # the comparison table: FLUX's pair and the demo's SD pair, each with its role's metrics
    comparison = pd.read_csv(results / "aggregate" / "comparison.csv")
    assert list(dict.fromkeys(comparison["family"])) == ["FLUX", "SD1.5"]
    assert {"csd", "clip_i", "latency_s"} <= set(comparison[comparison["family"] == "SD1.5"]["metric"])
    assert "SD1.5: <code>sd15/sd-style/1</code> against <code>sd15/sd-style/4</code>" in page
    # SDXL without a negative prompt: zero negative embeddings, as its pipeline (Nzeros), for the
    # prompts of every role its cells read (style, object; FaceID's identity prompts)
    sdxl = {p.name for p in (results / "embeddings" / "prompts" / "sdxl").glob("*.safetensors")}
    sdxl_cells = [cell for cell in grid.cells if grid.backbone(cell)["family"] == "sdxl"]
    prompts = {prompt.id for cell in sdxl_cells for prompt in grid.prompts_of(cell)}
    assert sdxl == {f"{prompt}.Nzeros.safetensors" for prompt in prompts} and len(prompts) >= 3


def test_second_invocation_has_nothing_to_do(demo_run):
    result = snakemake(demo_run, "--cores", "2", configfile=DEMO)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_lint_passes():
    result = snakemake(REPO, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.slow
def test_parsing_the_workflow_writes_nothing(tmp_path):
    """--lint and -n build the DAG only: no resolved config, no folder of results."""
    for args in (["--lint"], ["-n", "--config", "seeds=[0,1]"]):
        result = snakemake(tmp_path, *args, configfile=DEMO)
        assert result.returncode == 0, result.stdout + result.stderr
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if ".snakemake" not in p.parts]
    assert written == []


def test_full_study_dag_builds_without_weights(tmp_path):
    result = snakemake(tmp_path, "-n", "--quiet", "rules", configfile=REPO / "config.yaml")
    assert result.returncode == 0, result.stderr
    counts = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    grid = Grid(study_of(load([REPO / "config.yaml"])))
    cells, jobs = len(grid.cells), len(grid.jobs)
    # (dev steps + schnell steps) x (aes, sim, none), the ablations at dev-28 (4 scales, 5 windows)
    # and schnell-4 (4 scales, 3 windows), 4 accelerations (compiled, cached, 2 cache schedules) at
    # dev-28 and schnell-4, and SD1.5 / SDXL x (style, style-layout, object-plus, object-plain,
    # none, FaceID) x 9 step counts, 3 accelerations of one SD adapter at 2 step counts per SD
    # family, the 8 distilled SD backbones x (style, object-plus, FaceID, none) x their cards' steps (20 in
    # all), Kontext with the identity photo x 5 step counts and klein with and without its
    # reference x 6 step counts
    assert cells == (9 + 6) * 3 + 9 + 7 + 8 + 2 * 6 * 9 + 2 * 3 * 2 + 4 * 20 + 5 + 2 * 6
    # one generate and one score job per backbone x adapter x acceleration (all its step counts)
    assert counts["generate"] == jobs == counts["score"] < cells
    # FLUX.1-dev, FLUX.1-schnell, InfiniteYou, insightface, IR-SE50; LPIPS AlexNet, CLIP-L (scoring);
    # SD1.5, SDXL, h94/IP-Adapter; CSD and DINOv2 (the SD cells' scores); dlib's face models (the
    # second identity encoder); the distillations' publishers: SDXL-Lightning, Hyper-SD, both
    # LCM-LoRAs, SDXL-Turbo; FLUX.1-Kontext-dev; FLUX.2 [klein]; h94/IP-Adapter-FaceID and
    # buffalo_l's ArcFace (the SD FaceID cells)
    assert counts["prepare_model"] == 13 + 5 + 1 + 1 + 2
    trajectories = len(grid.trajectory_cells)  # the base and few-step points of each family
    assert counts["trajectory"] == trajectories == 14 and counts["wandb_aggregate"] == 1
    # one prompt embedding job per prompt variant and role its cells render: FLUX's T5 sequence
    # lengths (2), Kontext's, klein's and each SD family's FaceID cells' (2) x identity, each SD
    # family's negative prompt (2) x style and object; one per identity (2); per SD family one per
    # reference and adapter file (6 plain, 3 plus)
    assert counts["embed_prompt_identity"] == 2 + 1 + 1 + 2 and counts["embed_prompt_style"] == 2
    assert counts["embed_prompt_object"] == 2 and counts["embed_identity"] == 2
    assert counts["embed_reference"] == 2 * (6 + 3)
    assert counts["total"] == jobs + jobs + 22 + 10 + 2 + 18 + 3 + trajectories + 1
    assert not (tmp_path / "resources").exists()


def test_bad_config_stops_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO.read_text().replace("steps: [1, 2, 4, 8]", "steps: [0, 2]"))
    result = snakemake(tmp_path, "-n", configfile=bad)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("fewstep:")]
    assert lines == ["fewstep: config backbones.flux-dev.steps[0]: 0 is less than the minimum of 1"]


def test_scoring_a_cell_waits_for_the_anchor_cell(tmp_path):
    """LPIPS to the anchor: the score job of another job's cells needs the anchor's images first."""
    target = "results/demo/scores/flux-schnell/infusenet-aes/scoring.json"
    result = snakemake(tmp_path, "-n", target, configfile=DEMO)
    assert result.returncode == 0, result.stderr
    planned = [
        line.split("wildcards: ")[1] for line in result.stdout.splitlines() if "wildcards: backbone" in line
    ]
    assert sorted(planned) == [
        "backbone=flux-dev, adapter=infusenet-aes",  # the anchor's generate job (all dev steps)
        "backbone=flux-schnell, adapter=infusenet-aes",  # generate (all schnell steps)
        "backbone=flux-schnell, adapter=infusenet-aes",  # score (all schnell steps)
    ]
    models = [line.split("model=")[1] for line in result.stdout.splitlines() if "wildcards: model=" in line]
    assert {"lpips-alex", "clip-vit-l14", "insightface"} <= set(models)
