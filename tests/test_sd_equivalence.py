"""fewstep's SD generation equals diffusers' pipeline called as its documentation shows.

For each family x IP-Adapter file (plain, Plus) x negative prompt set and unset, the generation
job's image (its precomputed prompt and reference embeddings) equals the family's diffusers
pipeline given the raw prompt, `negative_prompt` (or none), a PIL reference through
`ip_adapter_image`, `set_ip_adapter_scale`, the same scheduler and seed: float32, batch 1, bit
for bit. Unset is where SDXL differs from encoding ``""``: its pipeline then uses zero negative
embeddings (`force_zeros_for_empty_prompt`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.core.paths import Paths
from fewstep.grid import Grid
from tests.conftest import study_of

NEGATIVE = "blurry, lowres"
PROMPTS = {"style": "a lighthouse by the sea", "object": "the object on a wooden table"}
BACKBONES = {
    f"{family}{suffix}": {"family": family, "model": family, "steps": [2], "resolution": 64}
    | ({"negative_prompt": NEGATIVE} if suffix == "-neg" else {})
    for family in ("sd15", "sdxl")
    for suffix in ("-neg", "")
}
RAW = {
    "sweep": "sdeq",
    "weights": "tiny",
    "device": "cpu",
    "dtype": "float32",
    "references": [
        {"id": "cat", "image": "builtin:chelsea", "role": "style"},
        {"id": "cup", "image": "builtin:coffee", "role": "object"},
    ],
    "prompts": [{"id": role, "text": text, "role": role} for role, text in PROMPTS.items()],
    "seeds": [5],
    "backbones": BACKBONES,
    "adapters": {
        "style": {"kind": "ip_adapter", "role": "style", "file": "plain", "scale": 0.9},
        "object": {"kind": "ip_adapter", "role": "object", "file": "plus", "scale": 0.7},
    },
    "cells": [{"backbones": list(BACKBONES), "adapters": ["style", "object"]}],
}
CASES = [(backbone, adapter) for backbone in BACKBONES for adapter in ("style", "object")]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> dict:
    from fewstep.core.config import validate
    from fewstep.jobs import precompute
    from fewstep.jobs.generate import run_job
    from fewstep.jobs.prepare import prepare_model

    root = tmp_path_factory.mktemp("sdeq")
    config = study_of(
        validate(RAW | {k: str(root / k) for k in ("results_dir", "models_dir", "reports_dir")})
    )
    grid = Grid(config)
    for name in grid.models:
        prepare_model(config, name)
    precompute.embed_prompts(config)
    precompute.embed_references(config)
    for job in grid.jobs:
        run_job(config, job, progress=False)
    return config


def _diffusers_image(config: dict, backbone: dict, adapter: dict, prompt: str, reference: str):
    from fewstep.core.images import load_rgb
    from fewstep.families.sd import pipeline, specs
    from fewstep.registry.catalog import model_folder

    family = specs.FAMILIES[backbone["family"]]
    cpu = torch.device("cpu")
    pipe = pipeline.load_pipeline(
        family, model_folder(config, family.name), weights="tiny", device=cpu, dtype=torch.float32,
        text_encoders=True,
    )  # fmt: skip
    pipe.load_ip_adapter(
        str(model_folder(config, "ip-adapter")),
        subfolder=family.adapters[adapter["file"]].subfolder,
        weight_name=family.adapters[adapter["file"]].weight_name,
        image_encoder_folder=family.adapters[adapter["file"]].image_encoder_folder,
        local_files_only=True,
    )
    pipe.set_ip_adapter_scale(adapter["scale"])
    negative = {"negative_prompt": backbone["negative_prompt"]} if "negative_prompt" in backbone else {}
    return pipe(
        prompt=prompt,
        **negative,
        ip_adapter_image=Image.fromarray(load_rgb(reference)),
        num_inference_steps=2,
        guidance_scale=family.guidance_scale,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(5),
        output_type="pil",
    ).images[0]


@pytest.mark.parametrize(("backbone", "adapter"), CASES, ids=[f"{b}-{a}" for b, a in CASES])
def test_the_job_image_is_diffusers_own_image(config, backbone, adapter):
    grid, paths = Grid(config), Paths(config)
    cell = grid.cell(f"{backbone}/{adapter}/2")
    (item,) = grid.items_of(cell)
    assert item.prompt == adapter  # each role renders its own prompt only
    ours = np.asarray(Image.open(paths.image(cell.id, item.id)).convert("RGB"))
    reference = grid.reference(item.identity).image
    settings = BACKBONES[backbone], RAW["adapters"][adapter]
    theirs = _diffusers_image(config, *settings, PROMPTS[adapter], reference)
    np.testing.assert_array_equal(ours, np.asarray(theirs))


def test_sdxl_without_a_negative_prompt_is_not_the_encoded_empty_prompt(config):
    """The difference the test above guards: SDXL's zero negatives are not `""` encoded, so an
    image made from `""` differs (SD1.5 encodes `""` itself, so there both are one file)."""
    from safetensors.torch import load_file

    grid, paths = Grid(config), Paths(config)
    cells = {b: grid.cell(f"{b}/style/2") for b in BACKBONES}
    labels = {b: grid.family(cell).prompt_variant(grid.backbone(cell)) for b, cell in cells.items()}
    assert labels["sdxl"] == "Nzeros" and labels["sd15"].startswith("N") and labels["sd15"] != "Nzeros"
    zeros = load_file(paths.prompt_variant_embedding("sdxl", "style", "Nzeros"))
    assert not zeros["negative_prompt_embeds"].any() and not zeros["negative_pooled_prompt_embeds"].any()
    assert zeros["prompt_embeds"].abs().sum() > 0
