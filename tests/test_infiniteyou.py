"""InfiniteYou specifics: control image, local weights, memory switches."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from fewstep.core.config import validate
from fewstep.core.errors import WeightsError
from fewstep.families.flux import control, pipeline
from fewstep.grid import Cell, Grid
from fewstep.jobs import generate, precompute
from fewstep.jobs.prepare import prepare_model
from fewstep.registry import catalog
from tests.conftest import study_of


def test_letterbox_follows_infiniteyou():
    # portrait target: width fills, height follows the aspect ratio, centred vertically
    assert control.letterbox((400, 300), (864, 1152)) == (2.16, 2.16, 0, 252)
    # landscape target: height fills, centred horizontally
    assert control.letterbox((300, 400), (1024, 768)) == (1.92, 1.92, 224, 0)


def test_keypoint_image_draws_each_point_in_its_colour():
    kps = np.array([[100, 100], [200, 100], [150, 150], [110, 200], [190, 200]], dtype=float)
    image = control.keypoint_image(kps, (300, 300), (600, 600))  # scale 2, no padding
    assert image.shape == (600, 600, 3) and image.dtype == np.uint8
    for (x, y), colour in zip(kps * 2, control.KEYPOINT_COLOURS, strict=True):
        assert tuple(image[int(y), int(x)]) == colour
    assert image[10, 10].tolist() == [0, 0, 0]
    # sticks are dimmed to 60% of their keypoint's colour
    mid = ((kps[0] + kps[2]) / 2 * 2).astype(int)
    assert tuple(image[mid[1], mid[0]]) == (153, 0, 0)


def test_keypoint_control_changes_the_image_and_the_cell_hash(embedded, tmp_path):
    keypoints = copy.deepcopy(embedded)
    keypoints["adapters"]["infusenet-aes"]["control"] = "keypoints"
    cell = "flux-schnell/infusenet-aes/2"
    assert Grid(study_of(keypoints)).cell_hash(Cell.parse(cell)) != Grid(study_of(embedded)).cell_hash(
        Cell.parse(cell)
    )
    black = pd.read_parquet(
        generate.run(study_of(embedded), cell, tmp_path / "black.parquet", progress=False)
    )
    keypoints["results_dir"] = str(tmp_path / "kps")
    precompute.embed_identities(study_of(keypoints))
    precompute.embed_prompts(study_of(keypoints))
    drawn = pd.read_parquet(generate.run(study_of(keypoints), cell, tmp_path / "kps.parquet", progress=False))
    assert (black["sha256"] != drawn["sha256"]).all()


def test_local_weights_are_linked_not_downloaded(config, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = copy.deepcopy(config)
    raw.update(weights="real", models_dir=str(tmp_path / "models"))
    raw["local_weights"] = {"flux-schnell": str(catalog.model_folder(study_of(config), "flux-schnell"))}
    real = validate(raw)
    prepare_model(study_of(real), "flux-schnell")
    assert (
        catalog.model_folder(study_of(real), "flux-schnell").resolve()
        == catalog.model_folder(study_of(config), "flux-schnell").resolve()
    )
    parts = pipeline.load_flux(
        study_of(real), "flux-schnell", {"kind": "none"}, torch.device("cpu"), torch.float32
    )
    assert parts.transformer.config.guidance_embeds is False
    raw["local_weights"] = {"flux-schnell": str(tmp_path / "nowhere")}
    with pytest.raises(WeightsError, match=r"local_weights.flux-schnell: .*nowhere is not a folder"):
        prepare_model(study_of(validate(raw)), "flux-schnell")


def test_fp8_weights_store_eight_bits_and_rerun_the_cells(embedded):
    small = copy.deepcopy(embedded)
    small["memory"]["fp8_weights"] = True
    parts = pipeline.load_flux(
        study_of(small), "flux-dev", small["adapters"]["infusenet-aes"], torch.device("cpu"), torch.float32
    )
    weight = parts.transformer.transformer_blocks[0].attn.to_q.weight
    assert (
        weight.dtype == torch.float8_e4m3fn
        and parts.infusenet.transformer_blocks[0].attn.to_q.weight.dtype == weight.dtype
    )
    cell = Cell.parse("flux-dev/infusenet-aes/1")
    assert Grid(study_of(small)).cell_hash(cell) != Grid(study_of(embedded)).cell_hash(cell)


def test_offload_needs_a_gpu(embedded):
    offload = copy.deepcopy(embedded)
    offload["memory"]["offload"] = "group"
    with pytest.raises(WeightsError, match="memory.offload needs a CUDA device"):
        pipeline.load_flux(
            study_of(offload), "flux-dev", {"kind": "none"}, torch.device("cpu"), torch.float32
        )
