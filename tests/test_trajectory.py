"""Trajectories: x0 decoded and scored after every step, with adapter-strength probes."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from fewstep.core.images import load_rgb
from fewstep.core.paths import Paths
from fewstep.families.flux.cell import per_block
from fewstep.jobs import generate, precompute, trajectory
from tests.conftest import study_of


def test_one_row_per_item_and_step_ending_at_the_generated_image(embedded):
    config = copy.deepcopy(embedded)
    config["trajectory"]["max_items"] = 2
    cell = "flux-schnell/infusenet-aes/4"
    table = pd.read_parquet(trajectory.run(study_of(config), cell, progress=False))
    assert len(table) == 2 * 4
    assert list(table["step"]) == [1, 2, 3, 4] * 2
    assert list(table["sigma"][:4]) == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert table["adapter_active"].all()
    ratio = table["residual_rms_double"] / table["hidden_rms_double"]
    assert np.allclose(table["relative_double"], ratio) and (table["relative_double"] > 0).all()
    assert table["id_sim"].between(-1, 1).all() and table["face_detected"].all()
    # the last x0 estimate is the final sample: its picture is the cell's image
    paths = Paths(study_of(config))
    manifest = pd.read_parquet(generate.run(study_of(config), cell, progress=False))
    last = table[table["step"] == 4].iloc[0]
    final = load_rgb(paths.cell_dir(cell) / manifest.set_index("item_id").loc[last["item_id"], "image"])
    x0 = load_rgb(paths.trajectory(cell).parent / last["image"])
    assert np.abs(final.astype(int) - x0.astype(int)).mean() < 1.0


def test_probes_are_missing_where_the_adapter_is_off(embedded):
    config = copy.deepcopy(embedded)
    config["trajectory"]["max_items"] = 1
    config["adapters"]["infusenet-aes"]["guidance_end"] = 0.5
    config["results_dir"] = str(Paths(study_of(embedded)).root.parent / "window")
    precompute.embed_prompts(study_of(config))
    precompute.embed_identities(study_of(config))
    table = pd.read_parquet(trajectory.run(study_of(config), "flux-dev/infusenet-aes/4", progress=False))
    assert list(table["adapter_active"]) == [True, True, False, False]
    assert table["relative_single"][:2].notna().all() and table["relative_single"][2:].isna().all()
    assert table["hidden_rms_single"].notna().all()


def test_block_probes_hold_one_value_per_backbone_block(embedded):
    config = copy.deepcopy(embedded)
    config["trajectory"]["max_items"] = 1
    table = pd.read_parquet(trajectory.run(study_of(config), "flux-dev/infusenet-aes/2", progress=False))
    for stream in ("double", "single"):
        relative = np.stack(table[f"block_relative_{stream}"].to_numpy())
        hidden = np.stack(table[f"block_hidden_rms_{stream}"].to_numpy())
        assert relative.shape == hidden.shape == (2, 4)  # steps x the tiny backbone's 4 blocks
        assert np.allclose(hidden.mean(axis=1), table[f"hidden_rms_{stream}"])
        residual = relative * hidden  # the tiny InfuseNet's 2 residuals, each added to 2 blocks
        assert np.allclose(residual[:, 0], residual[:, 1]) and np.allclose(residual[:, 2], residual[:, 3])
        assert not np.allclose(residual[:, 1], residual[:, 2])
        assert np.allclose(residual.mean(axis=1), table[f"residual_rms_{stream}"])


def test_block_mapping_is_the_one_diffusers_applies():
    """Which residual the FLUX transformer adds after each double block, read off its own forward."""
    import torch
    from diffusers import FluxTransformer2DModel

    from fewstep.families.flux.tiny import TINY_TRANSFORMER

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**TINY_TRANSFORMER, guidance_embeds=False).eval()
    blocks = model.transformer_blocks
    outputs, inputs = {}, {}
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out[1]))
        block.register_forward_pre_hook(
            lambda m, a, kw, i=i: inputs.__setitem__(i, kw["hidden_states"]), with_kwargs=True
        )
    tokens, width = 16, model.config.in_channels
    samples = [torch.full((1, tokens, model.inner_dim), float(k + 1)) for k in range(3)]
    with torch.no_grad():
        model(
            hidden_states=torch.randn(1, tokens, width),
            encoder_hidden_states=torch.randn(1, 4, model.config.joint_attention_dim),
            pooled_projections=torch.randn(1, model.config.pooled_projection_dim),
            timestep=torch.tensor([0.5]),
            img_ids=torch.zeros(tokens, 3),
            txt_ids=torch.zeros(4, 3),
            controlnet_block_samples=samples,
        )
    added = [float((inputs[i + 1] - outputs[i]).mean()) for i in range(len(blocks) - 1)]
    expected = per_block([1.0, 2.0, 3.0], len(blocks))
    assert added == pytest.approx(expected[:-1], abs=1e-4)
    assert expected == [1.0, 1.0, 2.0, 2.0]


@pytest.fixture(scope="module")
def sd_embedded(embedded):
    """The demo's tiny config with its SD cells' reference embeddings computed too."""
    precompute.embed_references(study_of(embedded))
    return embedded


def test_an_sd_trajectory_scores_every_step_with_its_roles_metrics(sd_embedded):
    """An SD object cell (SDXL, Euler): DINO and CLIP-I of x0 at each step, no identity column, and
    the last x0 is the cell's generated image (Euler's last step lands on its x0)."""
    config = copy.deepcopy(sd_embedded)
    config["trajectory"]["max_items"] = 1
    cell = "sdxl/sd-object/4"
    table = pd.read_parquet(trajectory.run(study_of(config), cell, progress=False))
    assert list(table["step"]) == [1, 2, 3, 4]
    assert table["sigma"].is_monotonic_decreasing and table["adapter_active"].all()
    assert table["dino"].between(-1, 1).all() and table["clip_i"].between(-1, 1).all()
    assert table["dino"].nunique() == 4  # each step's x0 is a different picture
    assert not {"id_sim", "face_detected", "csd", "lpips_ref"} & set(table.columns)
    assert json.loads(table["metric_versions"].iloc[0]).keys() == {"dino", "clip_i"}
    paths = Paths(study_of(config))
    manifest = pd.read_parquet(generate.run(study_of(config), cell, progress=False)).set_index("item_id")
    last = table[table["step"] == 4].iloc[0]
    final = load_rgb(paths.cell_dir(cell) / manifest.loc[last["item_id"], "image"])
    x0 = load_rgb(paths.trajectory(cell).parent / last["image"])
    assert np.abs(final.astype(int) - x0.astype(int)).max() <= 1
    first = load_rgb(paths.trajectory(cell).parent / table.iloc[0]["image"])
    assert np.abs(final.astype(int) - first.astype(int)).mean() > 1.0


def test_a_style_cell_of_sd15_is_scored_with_csd_and_clip_i(sd_embedded):
    """SD1.5's PNDM evaluates the UNet once more than its steps: one row per evaluation."""
    config = copy.deepcopy(sd_embedded)
    config["trajectory"]["max_items"] = 1
    config["trajectory"]["cells"] = ["sd15/sd-style/2"]
    table = pd.read_parquet(trajectory.run(study_of(config), "sd15/sd-style/2", progress=False))
    assert list(table["step"]) == [1, 2, 3]
    assert table[["csd", "clip_i"]].notna().all().all() and "dino" not in table
