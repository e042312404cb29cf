"""`fewstep estimate`: a sweep's images, GPU time, disk and downloads, checked by hand on a small
sweep timed with figures written here (so a new benchmark file changes no expectation)."""

from __future__ import annotations

import csv
import json

import pytest

from fewstep.analysis import estimate as est
from fewstep.cli import main
from fewstep.core.config import validate
from fewstep.core.errors import ConfigError
from fewstep.registry.catalog import marker_path
from tests.conftest import REPO

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
         "compile_s": 20.0, "job_s": 40.0},
    ]  # fmt: skip
    (folder / "acceleration_x1_2026-01-01.json").write_text(json.dumps({"card": "X1", "rows": rows}))
    with (folder / "sd_latency_x1_2026-01-01.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["family", "adapter", "steps", "latency_s"])
        writer.writerows([("sd15", "plain", 4, 0.2), ("sd15", "plain", 30, 0.98)])  # 0.08 s + 0.03 s/step
    (folder / "latency_offload_x2_2026-01-01.csv").write_text("variant,cell\n")  # no card x2 figures
    return folder


def small_config(tmp_path, weights="random"):
    return validate(
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
    result = est.estimate(small_config(tmp_path), "x1", write_figures(tmp_path / "figures"))
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
    sd_prompt = next(name for rule, name in embed if rule == "embed_sd_prompt")
    assert embed == {
        ("embed_prompt", "flux/L512"): (20.0, True),
        ("embed_sd_prompt", sd_prompt): (20.0, True),
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
    result = est.estimate(small_config(tmp_path), "x1", write_figures(tmp_path / "figures"))
    assert result.image_gb * 1e9 == pytest.approx(6 * 1024 * 1024 * 3 + 2 * 512 * 512 * 3)
    # T5 512 x 4096 + pooled 768; SD1.5 prompt and negative 2 x 77 x 768; a plain reference
    # 2 x 1280; two identities 522 each; 4 bytes a value
    floats = (512 * 4096 + 768) + 2 * 77 * 768 + 2 * 1280 + 2 * 522
    assert result.embedding_gb * 1e9 == pytest.approx(4 * floats)


def test_a_smaller_picture_scales_the_steps_and_a_window_runs_the_adapter_first(tmp_path):
    config = small_config(tmp_path)
    config["resolution"] = {"width": 512, "height": 1024}  # half the pixels of the figures
    config["adapters"]["infusenet-aes"]["first_steps"] = 1  # InfuseNet on step 1, then dev alone
    result = est.estimate(config, "x1", write_figures(tmp_path / "figures"))
    # 10 + 6 + 2 items x 0.5 x ((0.2 + 1 x 0.15 + 0.1) + (0.2 + 3 x 0.15 + 0.1))
    assert seconds(result, "generate")["flux-dev/infusenet-aes"] == pytest.approx(16 + 0.45 + 0.75)


def test_downloads_are_the_published_sizes_of_models_not_yet_prepared(tmp_path):
    config = small_config(tmp_path, weights="real")
    ready = marker_path(config, "clip-vit-l14")
    ready.parent.mkdir(parents=True)
    ready.write_text("{}")
    result = est.estimate(config, "x1", write_figures(tmp_path / "figures"))
    downloads = {name: round(gb, 6) for name, gb in result.downloads.items()}
    assert "clip-vit-l14" not in downloads
    # transformer + VAE, and the text encoders: flux-dev embeds this sweep's prompts
    assert downloads["flux-dev"] == round(23.8 + 0.17 + 0.25 + 9.52, 6)
    assert downloads["infiniteyou"] == 6.2  # one InfuseNet variant
    assert downloads["sd15"] == round(1.72 + 0.17 + 0.25, 6)
    assert downloads["ip-adapter"] == round(0.04 + 2.53, 6)  # plain SD1.5 file + ViT-H encoder
    assert downloads["insightface"] == round(0.017 + 0.261, 6)


def test_an_unknown_card_is_one_line_naming_the_cards_with_figures(tmp_path):
    figures = write_figures(tmp_path / "figures")
    with pytest.raises(ConfigError, match=r"no timing figures for card 'a100' .*cards with figures: x1 \("):
        est.estimate(small_config(tmp_path), "a100", figures)


def test_the_command_prints_the_estimate_of_the_gpu_config_naming_its_figures(capsys):
    assert main(["estimate", "--config", str(REPO / "config" / "gpu.yaml"), "--card", "h200"]) == 0
    out = capsys.readouterr().out
    assert "benchmarks/results/latency_h200_2026-11-26.csv" in out
    assert "images: 40 in 12 cells" in out and "download: none (weights random" in out
    assert main(["estimate", "--config", str(REPO / "config" / "gpu.yaml"), "--card", "v100"]) == 1
    assert "cards with figures: h200" in capsys.readouterr().err
