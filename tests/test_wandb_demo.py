"""The offline demo through Snakemake: every job is an offline W&B run, read back from its files.

Runs `snakemake --cores 2 --configfile config/demo.yaml` in a temporary working
directory with HOME and TMPDIR pointed at an empty folder, without any WANDB_*
variable (conftest's WANDB_MODE=disabled is for unit tests; the demo config's
`wandb.mode: offline` decides here), inside `unshare --net` where available.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from fewstep.core.config import config_hash, validate
from fewstep.core.paths import Paths
from fewstep.grid import Grid
from fewstep.tracking.runs import scored_columns
from fewstep.tracking.wandb_reader import find_run_files, read_run
from tests.conftest import study_of

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CELL_CONFIG = {
    "sweep",
    "job_type",
    "weights",
    "config_hash",
    "git_commit",
    "versions",
    "cell_id",
    "backbone",
    "adapter",
    "steps",
    "cell_hash",
    "cell",
    "items",
}
GENERATE_SUMMARY = {"images", "latency_s", "denoise_s", "decode_s", "step_s_median", "peak_mem_mb"}
SCORE_SUMMARY = {"images", "id_sim", "id_sim_n", "face_detected", "n_faces", "det_score", "latency_s"}


@pytest.fixture(scope="module")
def demo(demo_run) -> dict:
    config = validate(yaml.safe_load((REPO / "config" / "demo.yaml").read_text()))
    paths = Paths(study_of(config))
    runs = [read_run(f) for f in find_run_files(demo_run / paths.wandb_root)]
    return {"work": demo_run, "home": demo_run / "home", "config": config, "paths": paths, "runs": runs}


def test_every_job_is_one_offline_run(demo) -> None:
    grid = Grid(study_of(demo["config"]))
    expected = {(stage, cell.id) for cell in grid.cells for stage in ("generate", "score")}
    expected |= {("trajectory", cell.id) for cell in grid.trajectory_cells}
    expected.add(("aggregate", "demo"))
    found = [(run.job_type, run.name) for run in demo["runs"]]
    assert sorted(found) == sorted(expected)  # each exactly once
    for run in demo["runs"]:
        assert (run.group, run.project, run.entity) == ("demo", "fewstep-demo", "")
        assert run.tags == ["weights-tiny"] and run.exit_code == 0
        assert run.config["config_hash"] == config_hash(demo["config"])


def test_cell_runs_carry_parameters_and_summaries(demo) -> None:
    grid, work, paths = Grid(study_of(demo["config"])), demo["work"], demo["paths"]
    runs = {(run.job_type, run.name): run for run in demo["runs"]}
    for cell in grid.cells:
        generate, score = runs["generate", cell.id], runs["score", cell.id]
        for run in (generate, score):
            assert CELL_CONFIG <= set(run.config)
            assert (run.config["backbone"], run.config["adapter"]) == (cell.backbone, cell.adapter)
            assert run.config["steps"] == cell.steps
            assert run.config["cell_hash"] == grid.cell_hash(cell)
            assert run.config["cell"] == grid.cell_spec(cell)
        assert generate.config["device"] == "cpu"
        assert GENERATE_SUMMARY <= set(generate.summary)
        manifest = pd.read_parquet(work / paths.manifest(cell.id))
        assert generate.summary["images"] == len(grid.items_of(cell)) == len(manifest)
        assert generate.summary["latency_s"] == pytest.approx(manifest["latency_s"].mean())
        sd_summary = {"images", "clip_i", "clip_score", "latency_s"}
        own = sd_summary if grid.reads_references(cell) else SCORE_SUMMARY
        assert own <= set(score.summary)
        scores = pd.read_parquet(work / paths.scores(cell.id))
        for metric in ("id_sim", "csd", "dino", "clip_i"):
            if metric in scores:  # each cell's own metrics (identity for FLUX, its role's for SD)
                assert score.summary[metric] == pytest.approx(scores[metric].mean())
                assert score.summary[f"{metric}_n"] == scores[metric].notna().sum()
        assert score.summary["samples"]["_type"] == "image-file"
        assert score.summary["scores"]["nrows"] == len(grid.items_of(cell))


def test_trajectory_runs_draw_each_step(demo) -> None:
    grid, work, paths = Grid(study_of(demo["config"])), demo["work"], demo["paths"]
    for cell in grid.trajectory_cells:
        run = next(r for r in demo["runs"] if (r.job_type, r.name) == ("trajectory", cell.id))
        table = pd.read_parquet(work / paths.trajectory(cell.id))
        traced = min(len(grid.items_of(cell)), grid.study.trajectory.max_items)  # the SD cell has 1
        assert run.summary["items"] == table["item_id"].nunique() == traced
        last = table[table["step"] == cell.steps]
        scored = scored_columns(grid.trajectory_metrics(cell))
        finals = {c for c in scored if c in last and last[c].notna().any()}
        assert (
            finals
            and {k.removeprefix("final_") for k in run.summary.keys() if k.startswith("final_")} == finals
        )
        for column in finals:  # each score of the last x0 (identity; DINO and CLIP-I of an object cell)
            assert run.summary[f"final_{column}"] == pytest.approx(last[column].mean())
        assert run.summary["trajectory/step"] == cell.steps
        assert run.summary["trajectory"]["nrows"] == len(table) == traced * cell.steps


def test_aggregate_run_logs_tables_figures_charts_and_report(demo) -> None:
    work, paths = demo["work"], demo["paths"]
    run = next(r for r in demo["runs"] if r.job_type == "aggregate")
    # FLUX, Kontext, klein and SD FaceID cells of 4 images (2 identities x 2 prompts), SD
    # reference cells of 1 (one reference x its role's prompt)
    grid = Grid(study_of(demo["config"]))
    cells, images = len(grid.cells), sum(len(grid.items_of(cell)) for cell in grid.cells)
    assert run.config["sweep_config"]["sweep"] == "demo" and len(run.config["cells"]) == cells
    assert run.summary["cells"] == cells and run.summary["images"] == images
    summary = pd.read_csv(work / paths.summary)
    pngs = sorted((work / paths.report_dir).rglob("*.png"))
    assert run.summary["logged_figures"] == len(pngs) > 0
    assert run.summary["tables/summary"]["nrows"] == len(summary)
    for metric in summary["metric"].unique():
        assert f"charts/{metric}_vs_steps_table" in run.summary
    assert run.summary["report"]["_type"] == "html-file"
    record = yaml.safe_load((work / paths.wandb_aggregate_record).read_text())
    assert record["run_id"] == run.run_id and record["mode"] == "offline"


def test_nothing_of_wandb_outside_the_results(demo) -> None:
    work, home = demo["work"], demo["home"]
    assert [p for p in home.rglob("*") if "wandb" in p.name.lower()] == []
    assert {p.name for p in work.iterdir()} <= {"home", "results", "reports", "resources", ".snakemake"}


def _slug(cell_id: str) -> str:
    return cell_id.replace("/", "__")


def test_lineage_links_weights_to_images_to_scores_to_the_report(demo) -> None:
    """Each output artifact is the very version (same digest) its consumer uses."""
    from fewstep.families.flux.models import BACKBONES

    grid = Grid(study_of(demo["config"]))
    runs = {(run.job_type, run.name): run for run in demo["runs"]}
    aggregate = runs["aggregate", "demo"]
    for cell in grid.cells:
        generate, score = runs["generate", cell.id], runs["score", cell.id]
        family, file = grid.backbone(cell)["family"], grid.reference_file(cell)
        variant = grid.prompt_embedding(demo["paths"], cell, "portrait").name.split(".")[1]  # L512, N...
        assert set(generate.used_artifacts) == {
            *(f"weights-tiny-{model}" for model in grid.generation_models(cell)),
            f"embeddings-demo-{family}-{variant}-{'+'.join(grid.cell_roles(cell))}",
            *([f"references-demo-{family}-{file}"] if file else []),
            *(["identities-demo"] if grid.needs_identity_embeddings(cell) else []),  # klein reads the photo
        }
        images = generate.logged_artifacts[f"images-demo-{_slug(cell.id)}"]
        assert score.used_artifacts[f"images-demo-{_slug(cell.id)}"].digest == images.digest
        scores = score.logged_artifacts[f"scores-demo-{_slug(cell.id)}"]
        assert aggregate.used_artifacts[f"scores-demo-{_slug(cell.id)}"].digest == scores.digest
        model = grid.backbone(cell)["model"]  # a distilled backbone's base model
        spec = BACKBONES.get(model) or grid.family(cell).backbones[model]
        assert generate.config["models"][model] == {
            "repo_id": spec.repo_id,
            "revision": spec.revision,
            "commit": None,  # tiny weights come from no hub commit
        }
        assert f"logs/generate/{_slug(cell.job)}.log" in generate.files  # one log per job
    for cell in grid.trajectory_cells:
        trajectory = runs["trajectory", cell.id]
        assert f"trajectory-demo-{_slug(cell.id)}" in trajectory.logged_artifacts
        scoring = {f"weights-tiny-{m}" for m in grid.trajectory_score_models(cell)}  # its role's networks
        assert scoring and scoring <= set(trajectory.used_artifacts)
    report = aggregate.logged_artifacts["report-demo"]
    assert "report/index.html" in {e.path for e in report.entries}
    # a model is one artifact version, whichever job uses it
    digests: dict[str, set[str]] = {}
    for run in demo["runs"]:
        for name, artifact in run.used_artifacts.items():
            digests.setdefault(name, set()).add(artifact.digest)
    assert {name: len(found) for name, found in digests.items()} == dict.fromkeys(digests, 1)


def test_metrics_are_drawn_against_steps(demo) -> None:
    runs = {(run.job_type, run.name): run for run in demo["runs"]}
    for cell in Grid(study_of(demo["config"])).trajectory_cells:
        trajectory = runs["trajectory", cell.id]
        assert trajectory.metrics == {"trajectory/step": "", "trajectory/*": "trajectory/step"}
    aggregate = runs["aggregate", "demo"]
    assert aggregate.metrics == {"sweep/steps": "", "sweep/*": "sweep/steps"}
    curves = [row for row in aggregate.history if "sweep/steps" in row]
    summary = pd.read_csv(demo["work"] / demo["paths"].summary)
    assert [row["sweep/steps"] for row in curves] == sorted(summary["steps"].unique())
    dev = summary[(summary["metric"] == "id_sim") & (summary["backbone"] == "flux-dev")]
    drawn = {row["sweep/steps"]: row.get("sweep/id_sim/flux-dev/infusenet-aes") for row in curves}
    assert {steps: drawn[steps] for steps in dev["steps"]} == pytest.approx(
        dict(zip(dev["steps"], dev["mean"], strict=True))
    )
    assert "steps" not in aggregate.summary  # parameters live in the config, never as metrics
