"""SD1.5 and SDXL IP-Adapter cells end to end on tiny models: prepare, embed, generate, resume, DAG."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from fewstep.core.paths import Paths
from fewstep.grid import Grid
from tests.conftest import snakemake, study_of

RAW = {
    "sweep": "sd",
    "weights": "tiny",
    "device": "cpu",
    "dtype": "float32",
    "references": [
        {"id": "cat", "image": "builtin:chelsea", "role": "style"},
        {"id": "cup", "image": "builtin:coffee", "role": "object"},
    ],
    "prompts": [{"id": "p", "text": "a cup on a table, watercolor"}],
    "seeds": [3],
    "backbones": {
        "sd15": {
            "family": "sd15",
            "model": "sd15",
            "steps": [1, 2],
            "resolution": 64,
            "negative_prompt": "blurry",
        },
        "sdxl": {"family": "sdxl", "model": "sdxl", "steps": [1, 2], "resolution": 64},
    },
    "adapters": {
        "style": {"kind": "ip_adapter", "role": "style", "scale": "style"},
        "object": {"kind": "ip_adapter", "role": "object", "file": "plus", "scale": 0.8},
    },
    "cells": [
        {"backbones": ["sd15"], "adapters": ["style", "object"]},
        {"backbones": ["sdxl"], "adapters": ["style"]},
    ],
}


def _raw(root) -> dict:
    raw = copy.deepcopy(RAW)
    raw |= {k: str(root / k) for k in ("results_dir", "models_dir", "reports_dir")}
    return raw


@pytest.fixture(scope="module")
def sd_config(tmp_path_factory) -> dict:
    from fewstep.core.config import validate
    from fewstep.jobs import precompute
    from fewstep.jobs.prepare import prepare_model

    config = validate(_raw(tmp_path_factory.mktemp("sdwf")))
    for name in Grid(study_of(config)).models:
        prepare_model(study_of(config), name)
    precompute.embed_prompts(study_of(config))
    precompute.embed_references(study_of(config))
    return config


def test_grid_crosses_references_of_each_role():
    from fewstep.core.config import validate

    grid = Grid(study_of(validate(copy.deepcopy(RAW))))
    assert [c.id for c in grid.cells] == [
        "sd15/style/1", "sd15/style/2", "sd15/object/1", "sd15/object/2", "sdxl/style/1", "sdxl/style/2",
    ]  # fmt: skip
    assert [i.id for i in grid.items_of(grid.cell("sd15/object/1"))] == ["cup/p/s3"]
    assert [i.id for i in grid.items_of(grid.cell("sdxl/style/2"))] == ["cat/p/s3"]
    assert grid.resolution(grid.cell("sdxl/style/1")) == (64, 64)
    assert grid.guidance(grid.cell("sdxl/style/1")) == 5.0
    assert {"ip-adapter", "sd15", "sdxl"} <= set(grid.models)


def test_prepare_writes_only_the_adapter_files_used(sd_config):
    from fewstep.registry.catalog import model_folder

    folder = model_folder(study_of(sd_config), "ip-adapter")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert "models/ip-adapter_sd15.bin" in files and "models/ip-adapter-plus_sd15.bin" in files
    assert "sdxl_models/ip-adapter_sdxl.bin" in files
    assert "sdxl_models/ip-adapter-plus_sdxl_vit-h.bin" not in files
    assert (
        model_folder(study_of(sd_config), "sdxl") / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    ).exists()


def test_run_job_writes_every_cells_images_and_resumes(sd_config):
    from fewstep.jobs.generate import run_job

    grid = Grid(study_of(sd_config))

    paths = Paths(grid.study)
    for job in grid.jobs:
        record = json.loads(run_job(study_of(sd_config), job, progress=False).read_text())
        assert len(record["cells"]) == 2
        for cell in grid.job(job):
            manifest = pd.read_parquet(paths.manifest(cell.id))
            assert list(manifest["item_id"]) == [i.id for i in grid.items_of(cell)]
            assert (manifest["width"] == 64).all()
    cell = grid.cell("sd15/object/2")
    before = paths.journal(cell.id).read_text()
    run_job(study_of(sd_config), cell.job, progress=False)
    assert paths.journal(cell.id).read_text() == before  # nothing regenerated


@pytest.mark.slow
def test_a_sigkilled_sd_job_resumes_and_matches_an_uninterrupted_run(sd_config, tmp_path):
    """As for FLUX: killed twice mid-cell, then finished; kept images are not made again and
    every image equals an uninterrupted run's, byte for byte: its provenance names the cell's own
    models, not whichever others of the sweep happen to be prepared (SDXL is while the run is killed,
    not afterwards)."""
    from fewstep.jobs.generate import run_job
    from fewstep.registry.catalog import marker_path
    from tests.test_reliability import job, kill_when, lines

    def copy_with_seeds(root):
        config = copy.deepcopy(sd_config)
        config |= {"results_dir": str(root / "results"), "seeds": list(range(10))}
        config["generation"] = dict(config["generation"], batch_size=1)
        # the seeds change no embedding: prompts and references are those already made
        shutil.copytree(
            Paths(study_of(sd_config)).root / "embeddings", Paths(study_of(config)).root / "embeddings"
        )
        return config

    config, cell = copy_with_seeds(tmp_path / "killed"), "sd15/style/2"
    path = tmp_path / "killed" / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    journal = Paths(study_of(config)).journal(cell)
    for after in (2, 5):
        process = job("generate", path, "--cell", cell)
        kill_when(process, lambda after=after: lines(journal) >= after)
    done_before = lines(journal)
    assert 5 <= done_before < 10
    other = marker_path(study_of(config), "sdxl")  # a model of the sweep that an sd15 cell does not use
    hidden = other.rename(other.with_name("sdxl.hidden"))
    kept = {json.loads(line)["item_id"]: json.loads(line) for line in journal.read_text().splitlines()}
    try:
        finish = job("generate", path, "--cell", cell)
        assert finish.wait() == 0, finish.stderr.read()
        clean = copy_with_seeds(tmp_path / "clean")
        run_job(study_of(clean), "sd15/style", progress=False)
    finally:
        hidden.rename(other)
    manifest = pd.read_parquet(Paths(study_of(config)).manifest(cell)).set_index("item_id")
    assert list(manifest.index) == [
        i.id for i in Grid(study_of(config)).items_of(Grid(study_of(config)).cell(cell))
    ]
    assert all(manifest.loc[item, "generated_at"] == row["generated_at"] for item, row in kept.items())
    assert lines(journal) == 10 and not list(Paths(study_of(config)).cell_dir(cell).rglob("*.tmp"))
    for item in manifest.index:
        image = Paths(study_of(config)).image(cell, item)
        assert image.read_bytes() == Paths(study_of(clean)).image(cell, item).read_bytes(), item
        with Image.open(image) as png:
            assert set(json.loads(png.text["fewstep"])["models"]) == {"ip-adapter", "sd15"}


def test_precomputed_embeddings_give_diffusers_own_image(sd_config):
    """The job's image equals StableDiffusionPipeline(ip_adapter_image=...) on the same weights."""
    from PIL import Image

    from fewstep.core.images import load_rgb
    from fewstep.families.sd import pipeline, specs
    from fewstep.registry.catalog import model_folder

    grid = Grid(study_of(sd_config))

    paths = Paths(grid.study)
    cell = grid.cell("sd15/object/2")
    (item,) = grid.items_of(cell)
    ours = np.asarray(Image.open(paths.image(cell.id, item.id)).convert("RGB"))
    cpu = torch.device("cpu")
    pipe = pipeline.load_pipeline(
        specs.SD15, model_folder(grid.study, "sd15"), weights="tiny", device=cpu, dtype=torch.float32,
        text_encoders=True,
    )  # fmt: skip
    pipeline.attach_ip_adapter(
        pipe,
        specs.SD15,
        "plus",
        model_folder(grid.study, "ip-adapter"),
        weights="tiny",
        with_encoder=True,
    )
    pipe.set_ip_adapter_scale(0.8)
    theirs = pipe(
        prompt="a cup on a table, watercolor",
        negative_prompt="blurry",
        ip_adapter_image=Image.fromarray(load_rgb("builtin:coffee")),
        num_inference_steps=2,
        guidance_scale=7.5,
        height=64,
        width=64,
        generator=[torch.Generator("cpu").manual_seed(3)],
        output_type="pil",
    ).images[0]
    np.testing.assert_array_equal(ours, np.asarray(theirs))


def _planned(work, raw) -> list[tuple[str, str]]:
    import re

    configfile = work / "c.yaml"
    configfile.write_text(yaml.safe_dump(raw))
    result = snakemake(work, "-n", "--rerun-triggers", "params", "input", "mtime", configfile=configfile)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", result.stdout):
        match = re.match(r"(?:local)?rule (\w+):\n", block)
        if match and match.group(1) in {"embed_prompt", "embed_reference", "generate", "prepare_model"}:
            found = re.search(r"^\s+wildcards: (.*)$", block, re.MULTILINE)
            jobs.append((match.group(1), found.group(1) if found else ""))
    return sorted(jobs)


def test_the_dag_lists_the_sd_jobs(tmp_path):
    jobs = _planned(tmp_path, _raw(tmp_path))
    rules = [rule for rule, _ in jobs]
    assert rules.count("generate") == 3
    assert rules.count("embed_prompt") == 2  # one per family (each with its own negative)
    assert rules.count("embed_reference") == 3  # sd15 plain/cat, sd15 plus/cup, sdxl plain/cat
    prepared = {w for rule, w in jobs if rule == "prepare_model"}
    assert {"model=sd15", "model=sdxl", "model=ip-adapter"} <= prepared


def test_embed_references_refuses_an_adapter_file_no_cell_reads(raw_demo):
    """The CLI names no family's adapter files: the job says which files the sweep's cells read."""
    from fewstep.core.config import validate
    from fewstep.core.errors import ConfigError
    from fewstep.jobs import precompute

    with pytest.raises(ConfigError, match=r"^embed-references --file bogus: .* reads it; use plain or plus$"):
        precompute.embed_references(study_of(validate(raw_demo)), "sd15", "bogus")
