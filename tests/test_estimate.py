"""`fewstep estimate`: a sweep's images, GPU time, disk and downloads, checked by hand on a small
sweep timed with figures written here (so a new benchmark file changes no expectation)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from fewstep.analysis import estimate as est
from fewstep.cli import main
from fewstep.core.config import load, validate
from fewstep.core.errors import ConfigError
from fewstep.registry.catalog import marker_path
from tests.conftest import REPO, study_of

LATENCY = [  # per step and decode at 1024², eager, bf16
    ("flux-dev/infusenet-aes/28", 0.2, 0.1),
    ("flux-dev/none/28", 0.15, 0.1),
    ("flux-schnell/infusenet-aes/4", 0.2, 0.1),
    ("flux-schnell/none/4", 0.15, 0.1),
]


def write_figures(folder):
    folder.mkdir()
    with (folder / "latency_x1_2026-01-01.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "cell", "per_step_s", "decode_s"])
        writer.writerows(("base", cell, step, decode) for cell, step, decode in LATENCY)
        writer.writerow(["fp8", "flux-dev/infusenet-aes/28", 9.0, 9.0])  # not the base variant: unused
    # eager: 3 images of 5.7 s, 1 s compiling, 24.1 s in all: 6 s to load
    rows = [
        {"backbone": "flux-dev", "variant": "eager", "per_step_s": 0.2, "per_image_s": 5.7, "images": 3,
         "compile_s": 1.0, "job_s": 24.1},
        {"backbone": "flux-dev", "variant": "compile", "per_step_s": 0.15, "per_image_s": 4.3, "images": 3,
         "compile_s": 20.0, "job_s": 40.0, "switches": {"compile": "regional"}},
    ]  # fmt: skip
    (folder / "acceleration_x1_2026-01-01.json").write_text(json.dumps({"card": "X1", "rows": rows}))
    with (folder / "sd_latency_x1_2026-01-01.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["family", "adapter", "steps", "latency_s"])
        writer.writerows([("sd15", "plain", 4, 0.2), ("sd15", "plain", 30, 0.98)])  # 0.08 s + 0.03 s/step
    (folder / "latency_offload_x2_2026-01-01.csv").write_text("variant,cell\n")  # no card x2 figures
    return folder


def small_config(tmp_path, weights="random"):
    return validate(small_sweep(tmp_path, weights))


def small_sweep(tmp_path, weights="random"):
    return (
        {
            "sweep": "small",
            "weights": weights,
            "device": "cuda",
            "results_dir": str(tmp_path / "results"),
            "models_dir": str(tmp_path / "models"),
            "resolution": {"width": 1024, "height": 1024},
            "identities": [
                {"id": "astronaut", "image": "builtin:astronaut"},
                {"id": "t1", "image": "builtin:insightface/t1"},
            ],
            "references": [{"id": "hubble", "image": "builtin:hubble_deep_field", "role": "style"}],
            "prompts": [{"id": "portrait", "text": "A portrait of the person"}],
            "seeds": [0],
            "backbones": {
                "flux-dev": {"model": "flux-dev", "steps": [2, 4], "guidance": 3.5},
                "sd15": {"family": "sd15", "model": "sd15", "steps": [4, 10]},
            },
            "adapters": {
                "infusenet-aes": {"kind": "infusenet"},
                "style": {"kind": "ip_adapter", "role": "style", "file": "plain", "scale": "style"},
            },
            "accelerations": {"compiled": {"compile": "regional"}},
            "cells": [
                {"backbones": ["flux-dev"], "adapters": ["infusenet-aes"]},
                {
                    "backbones": ["flux-dev"],
                    "adapters": ["infusenet-aes"],
                    "accelerations": ["compiled"],
                    "steps": [4],
                },
                {"backbones": ["sd15"], "adapters": ["style"]},
            ],
            "wandb": {"mode": "disabled"},
        }
    )  # fmt: skip


def seconds(result, rule):
    return {job.name: round(job.seconds, 6) for job in result.jobs if job.rule == rule}


def test_generation_and_score_jobs_add_up_from_the_figures(tmp_path):
    result = est.estimate(study_of(small_config(tmp_path)), "x1", write_figures(tmp_path / "figures"))
    assert result.images == {
        "flux-dev/infusenet-aes/2": 2,
        "flux-dev/infusenet-aes/4": 2,
        "flux-dev/infusenet-aes+compiled/4": 2,
        "sd15/style/4": 1,
        "sd15/style/10": 1,
    }
    # start 10 + load 6 + 2 items x (2 steps x 0.2 + 0.1 decode, then 4 x 0.2 + 0.1)
    # compiled: + 20 s compiling, steps at 0.15/0.2 of eager: 2 x (4 x 0.15 + 0.1)
    # SD: start 10 + load 5 + (0.08 + 4 x 0.03) + (0.08 + 10 x 0.03)
    assert seconds(result, "generate") == {
        "flux-dev/infusenet-aes": 18.8,
        "flux-dev/infusenet-aes+compiled": 37.4,
        "sd15/style": 15.58,
    }
    # start 10 + networks 5 + 0.2 s an image
    assert seconds(result, "score") == {
        "flux-dev/infusenet-aes": 15.8,
        "flux-dev/infusenet-aes+compiled": 15.4,
        "sd15/style": 15.4,
    }
    embed = {(j.rule, j.name): (j.seconds, j.gpu) for j in result.jobs if j.rule.startswith("embed")}
    sd_prompt = next(name for rule, name in embed if name.startswith("sd15/"))
    assert embed == {
        ("embed_prompt", "flux/L512"): (20.0, True),
        ("embed_prompt", sd_prompt): (20.0, True),
        ("embed_reference", "sd15/plain/hubble"): (15.0, True),
        ("embed_identity", "astronaut"): (12.0, False),
        ("embed_identity", "t1"): (12.0, False),
    }
    assert result.gpu_seconds == pytest.approx(18.8 + 37.4 + 15.58 + 15.8 + 15.4 + 15.4 + 20 + 20 + 15)
    # prepare jobs side by side (10 + 5 s), the GPU jobs one after another, aggregate + report + wandb
    assert result.wall_seconds == pytest.approx(15 + result.gpu_seconds + 30 + 40 + 15)
    kinds = result.kind_seconds(gpu=True)
    assert kinds["generate"] == (3, pytest.approx(71.78)) and kinds["prepare"] == (0, 0)
    assert result.figures.sources == [
        str(tmp_path / "figures" / name)
        for name in (
            "latency_x1_2026-01-01.csv",
            "acceleration_x1_2026-01-01.json",
            "sd_latency_x1_2026-01-01.csv",
        )
    ]


def test_disk_counts_raw_pixels_and_float32_embeddings(tmp_path):
    result = est.estimate(study_of(small_config(tmp_path)), "x1", write_figures(tmp_path / "figures"))
    assert result.image_gb * 1e9 == pytest.approx(6 * 1024 * 1024 * 3 + 2 * 512 * 512 * 3)
    # T5 512 x 4096 + pooled 768; SD1.5 prompt and negative 2 x 77 x 768; a plain reference
    # 2 x 1280; two identities 522 each; 4 bytes a value
    floats = (512 * 4096 + 768) + 2 * 77 * 768 + 2 * 1280 + 2 * 522
    assert result.embedding_gb * 1e9 == pytest.approx(4 * floats)


def test_a_smaller_picture_scales_the_steps_and_a_window_runs_the_adapter_first(tmp_path):
    config = small_config(tmp_path)
    config["resolution"] = {"width": 512, "height": 1024}  # half the pixels of the figures
    config["adapters"]["infusenet-aes"]["first_steps"] = 1  # InfuseNet on step 1, then dev alone
    result = est.estimate(study_of(config), "x1", write_figures(tmp_path / "figures"))
    # 10 + 6 + 2 items x 0.5 x ((0.2 + 1 x 0.15 + 0.1) + (0.2 + 3 x 0.15 + 0.1))
    assert seconds(result, "generate")["flux-dev/infusenet-aes"] == pytest.approx(16 + 0.45 + 0.75)


def test_downloads_are_the_published_sizes_of_models_not_yet_prepared(tmp_path):
    config = small_config(tmp_path, weights="real")
    ready = marker_path(study_of(config), "clip-vit-l14")
    ready.parent.mkdir(parents=True)
    ready.write_text("{}")
    result = est.estimate(study_of(config), "x1", write_figures(tmp_path / "figures"))
    downloads = {name: round(gb, 6) for name, gb in result.downloads.items()}
    assert "clip-vit-l14" not in downloads
    # transformer + VAE, and the text encoders: flux-dev embeds this sweep's prompts
    assert downloads["flux-dev"] == round(23.8 + 0.17 + 0.25 + 9.52, 6)
    assert downloads["infiniteyou"] == 6.2  # one InfuseNet variant
    assert downloads["sd15"] == round(1.72 + 0.17 + 0.25, 6)
    assert downloads["ip-adapter"] == round(0.04 + 2.53, 6)  # plain SD1.5 file + ViT-H encoder
    assert downloads["insightface"] == round(0.017 + 0.261, 6)


def test_every_model_the_study_downloads_has_a_published_size(tmp_path):
    """The study's download estimate leaves no fetched model at 0 GB (dlib's files come with a
    PyPI package), Kontext and klein included."""
    from fewstep.grid import Grid

    config = load([REPO / "config.yaml"])
    config.update(weights="real", models_dir=str(tmp_path / "models"))
    study = study_of(config)
    sizes = est.download_gb(study, Grid.of(study))
    assert {name for name, gb in sizes.items() if gb <= 0} == {"dlib-face"}
    assert sizes["flux-kontext-dev"] == pytest.approx(23.8 + 0.17 + 0.25 + 9.52)
    assert sizes["flux2-klein-4b"] == pytest.approx(7.75 + 0.17 + 8.04)


def test_an_unknown_card_is_one_line_naming_the_cards_with_figures(tmp_path):
    figures = write_figures(tmp_path / "figures")
    with pytest.raises(ConfigError, match=r"no timing figures for card 'a100' .*cards with figures: x1 \("):
        est.estimate(study_of(small_config(tmp_path)), "a100", figures)


def test_the_command_prints_the_estimate_of_the_gpu_config_naming_its_figures(capsys):
    assert main(["estimate", "--config", str(REPO / "config" / "gpu.yaml"), "--card", "h200"]) == 0
    out = capsys.readouterr().out
    assert "benchmarks/results/latency_h200_2026-11-26.csv" in out
    assert "images: 40 in 12 cells" in out and "download: none (weights random" in out
    assert main(["estimate", "--config", str(REPO / "config" / "gpu.yaml"), "--card", "v100"]) == 1
    assert "cards with figures: h100, h200" in capsys.readouterr().err
    assert main(["estimate", "--config", str(REPO / "config" / "gpu.yaml"), "--card", "h100"]) == 0
    out = capsys.readouterr().out
    assert "acceleration_h100_2026-12-06_caches.json" in out and "workflow_h100_2026-12-06.json" in out
    assert "note: no latency file for h100" in out and "note: no sd_latency file for h100" in out
    assert "job overheads measured: " in out and "generate/flux " in out
    assert "measured in 2 h100 workflow runs" in out and "workflow_h100_2026-12-07_gpu.json" in out
    assert "workflow_h100_2026-12-06.json not used: measured before GPU jobs imported ahead" in out
    assert "s between them; prepare before" in out  # the card idle the runs measured between GPU jobs


def test_the_committed_gpu_runs_are_each_estimated_within_a_quarter_of_their_measured_wall_time():
    """Every workflow run in benchmarks/results, estimated from the other runs' overheads (out of
    sample) and from all of them: the figures docs/performance.md prints."""
    runs = sorted(est.FIGURES.glob("workflow_h100_*.json"))
    runs = [path for path in runs if est._card_windows(json.loads(path.read_text()))]  # the ones pooled
    assert len(runs) >= 2
    for run_path in runs:
        run = json.loads(run_path.read_text())
        config = load([REPO / run["config"]])
        measured = run["summary"]["wall_s"]
        others = est.measured_figures("h100")
        others.overheads, used, _ = est.pooled_overheads([other for other in runs if other != run_path])
        assert len(used) == len(runs) - 1
        out_of_sample = est.estimate_with(study_of(config), others).wall_seconds / measured
        both = est.estimate(study_of(config), "h100").wall_seconds / measured
        assert 0.74 < out_of_sample < 1.27, (run_path.name, out_of_sample)
        assert 0.85 < both < 1.15, (run_path.name, both)


#: a workflow run of the small sweep on card x1: job walls in s (the rest of its jobs below)
RUN_WALLS = {
    ("generate", "flux-dev/infusenet-aes"): 30.0,  # modelled work 2.8 s (above): overhead 27.2
    ("generate", "flux-dev/infusenet-aes+compiled"): 40.0,  # work 20 + 1.4: overhead 18.6
    ("generate", "sd15/style"): 20.0,  # work 0.58: overhead 19.42
    ("score", "flux-dev/infusenet-aes"): 10.8,  # 4 images x 0.2 s: overhead 10
    ("score", "flux-dev/infusenet-aes+compiled"): 11.4,  # 2 images: 11
    ("score", "sd15/style"): 12.4,  # 2 images: 12
}
OTHER_WALLS = {"prepare_model": 7.0, "embed_prompt": 12.0, "embed_sd_prompt": 9.0, "embed_reference": 8.0,
               "embed_identity": 3.0, "aggregate": 6.0, "report": 16.0, "wandb_aggregate": 1.0}  # fmt: skip


def write_run(tmp_path, folder, card="x1", leave_out=None, date="2026-01-02", slower=0.0, former=False,
              imports=None, wall=None):  # fmt: skip
    """A workflow_gpu.py result for the small sweep, its config written beside it (every job
    `slower` seconds longer: another host; `former`: SD's prompt jobs under their former rule;
    `imports`: GPU jobs imported that long before their card, the walls are their time on it;
    `wall`: the run's own wall time)."""
    config_path = tmp_path / "small.yaml"
    config_path.write_text(yaml.safe_dump(small_sweep(tmp_path)))
    planned = est.estimate_with(study_of(small_config(tmp_path)), est.measured_figures(card, folder)).jobs
    jobs = []
    for j in planned:
        if (j.rule, j.name) == leave_out:
            continue
        rule = {"embed_sd_prompt": "embed_sd_prompt" if former else "embed_prompt_style"}.get(j.key, j.rule)
        seconds = RUN_WALLS.get((j.rule, j.name), OTHER_WALLS.get(j.timing_key or j.rule)) + slower
        job = {"rule": rule, "name": j.name, "failed": False, "gpu_job": j.gpu, "wall_s": seconds}
        if imports is not None and j.gpu:
            job |= {"wall_s": seconds + imports, "on_card_s": seconds}
        jobs.append(job)
    summary = {"jobs": jobs} | ({"wall_s": wall} if wall is not None else {})
    run = {"card": card.upper(), "config": str(config_path), "summary": summary}
    (folder / f"workflow_{card}_{date}.json").write_text(json.dumps(run))


@pytest.mark.parametrize("former", [False, True], ids=["now", "former"])
def test_a_workflow_run_gives_every_rule_its_measured_overhead(tmp_path, former):
    """Also from a run that named SD's prompt jobs by their former rule (the committed runs)."""
    folder = write_figures(tmp_path / "figures")
    write_run(tmp_path, folder, former=former)
    result = est.estimate(study_of(small_config(tmp_path)), "x1", folder)
    overheads = {key: round(value, 6) for key, value in result.figures.overheads.items()}
    assert overheads["generate/flux"] == 22.9 and overheads["generate/sd15"] == 19.42
    assert overheads["generate"] == round((27.2 + 18.6 + 19.42) / 3, 6) and overheads["score"] == 11.0
    assert overheads["prepare_model/random"] == 7.0 and overheads["embed_prompt"] == 12.0
    assert overheads["embed_sd_prompt"] == 9.0  # SD's prompt jobs keep their own overhead
    # overhead of the family's jobs + the modelled work
    assert seconds(result, "generate") == {
        "flux-dev/infusenet-aes": 22.9 + 2.8,
        "flux-dev/infusenet-aes+compiled": 22.9 + 21.4,
        "sd15/style": 20.0,
    }
    assert seconds(result, "score") == {
        "flux-dev/infusenet-aes": 11.8,
        "flux-dev/infusenet-aes+compiled": 11.4,
        "sd15/style": 11.4,
    }
    # in sample: the GPU jobs add up to the run's own; prepare 7, then aggregate, report, W&B
    gpu = sum(RUN_WALLS.values()) + 12 + 9 + 8
    assert result.gpu_seconds == pytest.approx(gpu)
    assert result.wall_seconds == pytest.approx(7 + gpu + 6 + 16 + 1)
    assert result.gpu_overhead_seconds == pytest.approx(gpu - 2.8 - 21.4 - 0.58 - 0.8 - 0.4 - 0.4)
    assert result.figures.sources[-1] == str(folder / "workflow_x1_2026-01-02.json")
    assert any("measured in 1 x1 workflow run" in note for note in result.notes)
    # real weights are downloaded, not built: their preparation keeps the assumed 10 + 5 s
    real = est.estimate(study_of(small_config(tmp_path, weights="real")), "x1", folder)
    assert set(seconds(real, "prepare_model").values()) == {15.0}


def test_overheads_of_several_runs_are_averaged_per_job_kind(tmp_path):
    folder = write_figures(tmp_path / "figures")
    write_run(tmp_path, folder)
    one = est.estimate(study_of(small_config(tmp_path)), "x1", folder).figures.overheads
    write_run(tmp_path, folder, date="2026-01-03", slower=4.0)  # a slower host: every job 4 s longer
    both = est.estimate(study_of(small_config(tmp_path)), "x1", folder)
    assert set(both.figures.overheads) == set(one)
    for key, seconds_one in one.items():
        assert both.figures.overheads[key] == pytest.approx(seconds_one + 2.0), key
    assert both.figures.sources[-2:] == [str(folder / f"workflow_x1_2026-01-0{d}.json") for d in (2, 3)]
    assert any("measured in 2 x1 workflow runs" in note for note in both.notes)


def test_runs_with_card_windows_time_jobs_on_their_card_and_older_runs_are_left_out(tmp_path):
    """Since GPU jobs import before taking a card, a job's overhead is its time on the card; a run
    without card windows counts those imports and is not pooled with one that has them."""
    folder = write_figures(tmp_path / "figures")
    write_run(tmp_path, folder, date="2026-01-02", slower=9.0)  # before: imports in every wall
    write_run(tmp_path, folder, date="2026-01-03", imports=6.0)
    result = est.estimate(study_of(small_config(tmp_path)), "x1", folder)
    assert result.figures.overheads["score"] == pytest.approx(11.0)  # on the card, not 11 + 6 or + 9
    assert result.figures.overheads["generate/sd15"] == pytest.approx(19.42)
    assert result.figures.sources[-1] == str(folder / "workflow_x1_2026-01-03.json")
    left_out = "workflow_x1_2026-01-02.json not used: measured before GPU jobs imported"
    assert any(left_out in note for note in result.notes)
    assert est.CARD_IDLE not in result.figures.overheads  # the run has no wall time of its own


def test_the_wall_time_a_run_leaves_between_its_gpu_jobs_is_spread_over_them(tmp_path):
    folder = write_figures(tmp_path / "figures")
    gpu = sum(RUN_WALLS.values()) + 12 + 9 + 8  # nine GPU jobs on the card, one after another
    write_run(tmp_path, folder, imports=5.0, wall=7 + gpu + 18 + 6 + 16 + 1)  # 18 s of it between them
    result = est.estimate(study_of(small_config(tmp_path)), "x1", folder)
    assert result.figures.overheads[est.CARD_IDLE] == pytest.approx(2.0)
    assert result.card_idle_seconds == pytest.approx(18.0)
    assert result.wall_seconds == pytest.approx(7 + gpu + 18 + 6 + 16 + 1)  # in sample: the run itself
    assert "18 s between them" in est.render(result, "small.yaml")


def test_a_run_whose_config_forms_other_jobs_now_is_left_out_with_a_note(tmp_path):
    folder = write_figures(tmp_path / "figures")
    write_run(tmp_path, folder, leave_out=("score", "sd15/style"))
    result = est.estimate(study_of(small_config(tmp_path)), "x1", folder)
    assert result.figures.overheads == {}
    assert seconds(result, "score")["sd15/style"] == 15.4  # assumed: 10 + 5 + 2 x 0.2
    assert any("now forms jobs the run did not run (score sd15/style)" in note for note in result.notes)


def test_a_card_with_acceleration_figures_alone_borrows_the_rest_and_says_so(tmp_path):
    folder = write_figures(tmp_path / "figures")
    write_run(tmp_path, folder)
    rows = [{"backbone": "flux-dev", "variant": "eager", "per_step_s": 0.3, "per_image_s": 8.5, "images": 3,
             "compile_s": 1.0, "job_s": 30.0}]  # fmt: skip
    (folder / "acceleration_x3_2026-01-03.json").write_text(json.dumps({"card": "X3", "rows": rows}))
    result = est.estimate(study_of(small_config(tmp_path)), "x3", folder)
    # its own eager step with InfuseNet; without it at x1's ratio 0.15 / 0.2; x1's decode
    assert result.figures.step_s[("flux-dev", True)] == 0.3
    assert result.figures.step_s[("flux-dev", False)] == pytest.approx(0.225)
    assert result.figures.decode_s == pytest.approx(0.1) and result.figures.sd[("sd15", "plain")] == (
        pytest.approx(0.08),
        pytest.approx(0.03),
    )
    # x1's measured overhead 22.9 s + 2 items x (2 x 0.3 + 0.1) + 2 x (4 x 0.3 + 0.1)
    assert seconds(result, "generate")["flux-dev/infusenet-aes"] == pytest.approx(22.9 + 1.4 + 2.6)
    notes = "\n".join(result.notes)
    assert "no latency file for x3" in notes and "no sd_latency file for x3" in notes
    assert "measured in 1 x1 workflow run" in notes and "no compile figures for x3" in notes


def write_family_figures(folder, card="x1"):
    """The families' own benchmark summaries beside `write_figures`' (card `card`): Kontext's and
    klein's per step and decode, SD1.5's distilled backbones per image, each with the benchmark's
    own ids and a FLUX row (or a base one) their family does not claim."""
    columns = ["cell", "images", "per_step_s", "decode_s"]
    kontext = folder / f"kontext_latency_{card}_2026-01-01_summary.csv"
    with kontext.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerow(["flux-dev/infusenet-aes/28", 3, 9.0, 9.0])  # FLUX's row: not Kontext's
        writer.writerow(["kontext/kontext-photo/28", 3, 0.075, 0.0125])  # at 512²: 0.3 and 0.05 at 1024²
    (folder / f"kontext_latency_{card}_2026-01-01_meta.json").write_text(json.dumps({"size": 512}))
    with (folder / f"klein_latency_{card}_2026-01-01_summary.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([("flux-schnell/infusenet-aes/4", 3, 9.0, 9.0), ("klein/reference/1", 3, 0.11, 0.03),
                          ("klein/reference/4", 3, 0.09, 0.05), ("klein/none/4", 3, 0.08, 0.04)])  # fmt: skip
    with (folder / f"sd_distilled_latency_{card}_2026-01-01_sd15_summary.csv").open(
        "w", newline=""
    ) as handle:
        writer = csv.writer(handle)
        writer.writerow(["family", "backbone", "adapter", "steps", "size", "latency_s"])
        writer.writerows([("sd15", "base", "plain", 30, 512, 5.0),  # the sd_latency file's fit stays
                          ("sd15", "lcm-lora", "plain", 2, 512, 0.1),
                          ("sd15", "lcm-lora", "plain", 8, 512, 0.4),
                          ("sdxl", "lcm-lora", "plain", 2, 1024, 7.0)])  # fmt: skip
    return [kontext.name, f"klein_latency_{card}_2026-01-01_summary.csv"]


def family_sweep(tmp_path):
    raw = small_sweep(tmp_path)
    raw["backbones"] |= {
        "kontext": {"family": "kontext", "model": "flux-kontext-dev", "steps": [2, 4]},
        "klein": {"family": "klein", "model": "flux2-klein-4b", "steps": [4]},
        "sd15-lcm": {"family": "sd15", "model": "sd15", "distillation": "lcm-lora", "steps": [2, 4]},
        "sd15-hyper": {"family": "sd15", "model": "sd15", "distillation": "hyper-2step", "steps": [2]},
    }
    raw["adapters"] |= {"photo": {"kind": "native_reference"}, "none": {"kind": "none"}}
    raw["cells"] += [
        {"backbones": ["kontext"], "adapters": ["photo"]},
        {"backbones": ["klein"], "adapters": ["photo", "none"]},
        {"backbones": ["sd15-lcm", "sd15-hyper"], "adapters": ["style"]},
    ]
    return validate(raw)


def test_kontext_klein_and_distilled_sd_jobs_are_timed_by_their_familys_files(tmp_path):
    folder = write_figures(tmp_path / "figures")
    names = write_family_figures(folder)
    result = est.estimate(study_of(family_sweep(tmp_path)), "x1", folder)
    generate = seconds(result, "generate")
    # start 10 + load 6 + 2 identities x ((2 + 4) steps x 0.3 + 2 x 0.05 decode): the 512² figures at 1024²
    assert generate["kontext/photo"] == pytest.approx(16 + 2 * (6 * 0.3 + 2 * 0.05))
    # with the reference: the mean of its rows, 0.1 s a step and 0.04 decode; bare 0.08 and 0.04
    assert generate["klein/photo"] == pytest.approx(16 + 2 * (4 * 0.1 + 0.04))
    assert generate["klein/none"] == pytest.approx(16 + 2 * (4 * 0.08 + 0.04))
    # SD1.5 + LCM-LoRA, plain file: 0.05 s a step through the origin (2 -> 0.1, 8 -> 0.4), at its 512 px
    assert generate["sd15-lcm/style"] == pytest.approx(15 + 2 * 0.05 + 4 * 0.05)
    # hyper-2step has no figures: its base's (0.08 + 0.03 s a step), said in a note
    assert generate["sd15-hyper/style"] == pytest.approx(15 + 0.08 + 2 * 0.03)
    assert "no sd15/hyper-2step figures for x1: timed as its base, sd15" in result.notes
    # the FLUX rows in Kontext's and klein's files and the base's row in SD's change nothing
    assert generate["flux-dev/infusenet-aes"] == 18.8 and generate["sd15/style"] == 15.58
    assert result.figures.sd[("sd15", "plain")] == (pytest.approx(0.08), pytest.approx(0.03))
    sources = result.figures.sources
    assert [folder / name for name in names] == [p for p in map(Path, sources) if p.name.startswith("k")]
    assert str(folder / "sd_distilled_latency_x1_2026-01-01_sd15_summary.csv") in sources
    assert not any("counts its start only" in note for note in result.notes)
    # a trajectory decodes x0 at the backbone's own decode
    assert result.figures.decode("flux-kontext-dev") == pytest.approx(0.05)
    assert result.figures.decode("flux-dev") == pytest.approx(0.1)


def test_without_the_familys_files_its_jobs_count_their_start_only(tmp_path):
    result = est.estimate(study_of(family_sweep(tmp_path)), "x1", write_figures(tmp_path / "figures"))
    assert seconds(result, "generate")["kontext/photo"] == 10.0
    assert "no kontext figures for x1: kontext/photo counts its start only" in result.notes
    # without its own figures a distilled backbone is timed as its base
    assert seconds(result, "generate")["sd15-lcm/style"] == pytest.approx(15 + 0.16 + 6 * 0.03)


def test_a_card_without_a_familys_files_borrows_another_cards_and_says_so(tmp_path):
    folder = write_figures(tmp_path / "figures")
    write_family_figures(folder, card="x2")
    result = est.estimate(study_of(family_sweep(tmp_path)), "x1", folder)
    assert seconds(result, "generate")["kontext/photo"] == pytest.approx(16 + 2 * (6 * 0.3 + 2 * 0.05))
    assert any(note.startswith("no kontext_latency file for x1: ") for note in result.notes)


def test_the_committed_family_files_time_the_studys_kontext_klein_and_distilled_jobs():
    """Config.yaml on the H100: each job is what its family's committed summary says a step and a
    decode take, times its steps and images, scaled to its pixels; the file is a named source."""
    from fewstep.core.study import load_study
    from fewstep.grid import Grid

    study = load_study([REPO / "config.yaml"])
    grid, result = Grid.of(study), est.estimate(study, "h100")
    work = {job.name: job.work for job in result.jobs if job.rule == "generate"}

    def summary(kind, part=""):
        name = f"{kind}_h100_2026-12-07{part}_summary.csv"
        assert f"benchmarks/results/{name}" in result.figures.sources
        with (est.FIGURES / name).open(newline="") as handle:
            return list(csv.DictReader(handle))

    def per_step(job, step, decode):
        cells = grid.jobs[job]
        width, height = grid.resolution(cells[0])
        scale = width * height / 1024**2
        return sum(len(grid.items_of(c)) * (c.steps * step + decode) * scale for c in cells)

    (kontext,) = [r for r in summary("kontext_latency") if r["cell"].startswith("kontext/")]
    expected = per_step("kontext/kontext-photo", float(kontext["per_step_s"]), float(kontext["decode_s"]))
    assert work["kontext/kontext-photo"] == pytest.approx(expected)
    (bare,) = [r for r in summary("klein_latency") if r["cell"].startswith("klein/none/")]
    assert work["klein/none"] == pytest.approx(
        per_step("klein/none", float(bare["per_step_s"]), float(bare["decode_s"]))
    )
    turbo = {int(r["steps"]): float(r["latency_s"]) for r in summary("sd_distilled_latency", "_sdxl") if
             (r["family"], r["backbone"], r["adapter"]) == ("sdxl", "turbo", "plus")}  # fmt: skip
    slope = (turbo[4] - turbo[1]) / 3
    cells = grid.jobs["sdxl-turbo/object-plus"]
    assert grid.resolution(cells[0]) == (512, 512)  # as measured: no scaling
    expected = sum(len(grid.items_of(c)) * (turbo[1] + slope * (c.steps - 1)) for c in cells)
    assert work["sdxl-turbo/object-plus"] == pytest.approx(expected)
    assert not any("counts its start only" in note for note in result.notes)


@pytest.mark.parametrize(
    "switches, variant",
    [
        ({}, None),
        ({"compile": "regional"}, "compile"),
        ({"compile": "regional", "fp8": "dynamic"}, "fast"),
        ({"compile": "regional", "fp8": "dynamic", "cache": "taylorseer"}, "fast-taylorseer"),
        ({"compile": "regional", "fp8": "dynamic", "cache": "first_block"}, "fast-cache"),
        ({"cache": "mag"}, "mag"),
        ({"compile": "full"}, "compile-full"),
        ({"compile": "full", "cache": "taylorseer"}, "full-taylorseer"),
        ({"fp8": "dynamic"}, "fp8"),
    ],
)
def test_switches_name_the_benchmark_variant_that_timed_them(switches, variant):
    assert est._variant({"compile": "none", "fp8": "none", "cache": "none", **switches}) == variant


def test_an_sd_acceleration_scales_the_steps_of_the_per_image_fit(tmp_path):
    """SD's per-image fit (0.08 s + 0.03 s a step) with `compile: full` measured at 0.4 of eager per
    step and 60 s compiling, each against the eager job of its own file (another file's eager
    differs)."""
    figures = write_figures(tmp_path / "figures")
    full = {"compile": "full", "fp8": "none", "cache": "none"}
    rows = [
        {"backbone": "sd15", "variant": "eager", "per_step_s": 0.05, "per_image_s": 1.3, "images": 4,
         "compile_s": 0.5, "job_s": 10.0, "switches": {}},
        {"backbone": "sd15", "variant": "compile-full", "per_step_s": 0.02, "per_image_s": 0.6, "images": 4,
         "compile_s": 60.0, "job_s": 70.0, "switches": full},
    ]  # fmt: skip
    (figures / "acceleration_x1_2026-01-02.json").write_text(json.dumps({"card": "X1", "rows": rows}))
    sweep = small_sweep(tmp_path)
    sweep["accelerations"]["full"] = {"compile": "full"}
    sweep["cells"].append({"backbones": ["sd15"], "adapters": ["style"], "accelerations": ["full"]})
    result = est.estimate(study_of(validate(sweep)), "x1", figures)
    generate = seconds(result, "generate")
    # start 10 + load 5 + compile 60 + (0.08 + 4 x 0.03 x 0.4) + (0.08 + 10 x 0.03 x 0.4)
    assert generate["sd15/style+full"] == pytest.approx(10 + 5 + 60 + 0.08 + 0.048 + 0.08 + 0.12)
    assert generate["sd15/style"] == pytest.approx(15.58)  # eager untouched
    assert not [note for note in result.notes if "sd15/style+full" in note]
