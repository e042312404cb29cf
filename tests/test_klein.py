"""FLUX.2 [klein] 4B (`fewstep.families.klein`): its tiny stand-in in the published layout, its
random-mode configs, its config checks, and its generation equal to diffusers' Flux2KleinPipeline
called as the model card documents it (raw prompt text, the reference photo as ``image=``, the
same seed and steps), float32, batch 1, bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.core.config import validate
from fewstep.core.errors import ConfigError
from fewstep.core.images import load_rgb
from fewstep.core.study import Study
from fewstep.families import FAMILIES
from fewstep.families.base import ItemInputs
from fewstep.families.klein import models, specs
from fewstep.grid import EAGER_SWITCHES, Grid
from fewstep.registry.catalog import model_folder
from tests.conftest import study_of

CPU = torch.device("cpu")
KLEIN = FAMILIES["klein"]
MODEL = models.KLEIN_4B.name
PROMPT = "A professional studio portrait photo of the person, soft light"


@pytest.fixture(scope="module")
def klein_config(tmp_path_factory) -> Study:
    """The demo study with the tiny klein prepared (text encoder included)."""
    from conftest import demo_yaml

    from fewstep.jobs.prepare import prepare_model

    root = tmp_path_factory.mktemp("klein")
    raw = demo_yaml() | {k: str(root / k) for k in ("results_dir", "models_dir", "reports_dir")}
    config = study_of(validate(raw))
    prepare_model(config, MODEL)
    return config


def backbone(config: Study) -> dict:
    return next(b for b in config["backbones"].values() if b["family"] == "klein")


def ours(config: Study, adapter: dict, identities: list[str], seeds: list[int], steps: int) -> np.ndarray:
    """The workflow's images: the prompt encoder's embedding, the cell pipeline's loop and decode."""
    encoder = KLEIN.prompt_encoder(config, MODEL, CPU, torch.float32)
    embedding = encoder.encode(PROMPT, backbone(config))
    cell = KLEIN.cell_pipeline(config, backbone(config), adapter, dict(EAGER_SWITCHES), CPU, torch.float32)
    conditions = [cell.condition(ItemInputs(embedding, identity))[0] for identity in identities]
    with torch.no_grad():
        return cell.decode(cell.denoise(cell.stack(conditions), seeds, steps).latents).numpy()


@pytest.mark.parametrize("steps", [1, 4])
def test_generation_equals_the_documented_pipeline_call_bit_for_bit(klein_config, steps):
    """Precomputed Qwen3 embeddings + the cell pipeline == `Flux2KleinPipeline(prompt=..., image=PIL)`."""
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(model_folder(klein_config, MODEL), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    size = klein_config["resolution"]
    photo = Image.fromarray(load_rgb(klein_config["identities"][0]["image"]))
    for adapter, image in (({"kind": "native_reference"}, photo), ({"kind": "none"}, None)):
        theirs = pipe(
            prompt=PROMPT,
            image=image,
            height=size["height"],
            width=size["width"],
            num_inference_steps=steps,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(11),
        ).images[0]
        mine = ours(klein_config, adapter, [klein_config["identities"][0]["id"]], [11], steps)[0]
        assert np.array_equal(mine, np.asarray(theirs)), adapter["kind"]
        assert mine.std() > 5  # an image, not a constant


def test_the_reference_changes_the_image_and_photos_of_two_sizes_share_a_batch(klein_config):
    """Two identities whose photos differ in size (so in reference tokens) in one batch: each row
    is its own image rendered alone, and the reference makes a difference."""
    ids = [i["id"] for i in klein_config["identities"]]
    sizes = {Image.fromarray(load_rgb(i["image"])).size for i in klein_config["identities"]}
    assert len(ids) == 2 and len(sizes) == 2
    adapter = {"kind": "native_reference"}
    batch = ours(klein_config, adapter, ids, [3, 3], 2)
    for row, identity in enumerate(ids):
        alone = ours(klein_config, adapter, [identity], [3], 2)[0]
        assert np.abs(alone.astype(int) - batch[row].astype(int)).max() <= 1
    assert not np.array_equal(batch[0], batch[1])  # same seed, different photos
    bare = ours(klein_config, {"kind": "none"}, ids[:1], [3], 2)[0]
    # the reference tokens join every step's attention; on tiny random weights their effect is small
    assert np.abs(bare.astype(int) - batch[0].astype(int)).mean() > 0.1


def test_tiny_stand_in_is_in_the_published_layout(klein_config):
    folder = model_folder(klein_config, MODEL)
    for file in models.REQUIRED + models.TEXT_REQUIRED + ["tokenizer/chat_template.jinja"]:
        assert (folder / file).is_file(), file
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2KleinPipeline" and index["is_distilled"] is True
    # transformers 5 saves the tokenizer as Qwen2Tokenizer, the class Qwen2TokenizerFast now names
    parts = {
        k: v for k, v in index.items() if not k.startswith("_") and k not in ("is_distilled", "tokenizer")
    }
    assert parts == {k: specs.MODEL_INDEX[k] for k in parts} and len(parts) == 4
    assert index["tokenizer"] in (["transformers", "Qwen2Tokenizer"], specs.MODEL_INDEX["tokenizer"])
    text = json.loads((folder / "text_encoder" / "config.json").read_text())
    assert text["architectures"] == ["Qwen3ForCausalLM"]
    assert text["num_hidden_layers"] > max(specs.TEXT_ENCODER_OUT_LAYERS)  # the stacked layers exist
    transformer = json.loads((folder / "transformer" / "config.json").read_text())
    assert transformer["joint_attention_dim"] == len(specs.TEXT_ENCODER_OUT_LAYERS) * text["hidden_size"]
    assert transformer["guidance_embeds"] is False


def test_random_mode_writes_the_published_full_size_configs(tmp_path):
    """What random mode loads: klein 4B's transformer (5 double, 20 single blocks of 24 x 128) fed
    by three Qwen3-4B layers (3 x 2560), and FLUX.2's VAE; no weights."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config

    models.KLEIN_4B.recipe.random({}, models.KLEIN_4B, tmp_path, None)
    transformer = Flux2Transformer2DModel.load_config(tmp_path / "transformer")
    assert (transformer["num_layers"], transformer["num_single_layers"]) == (5, 20)
    assert transformer["num_attention_heads"] * transformer["attention_head_dim"] == 3072
    qwen = Qwen3Config.from_pretrained(tmp_path / "text_encoder")
    assert (qwen.num_hidden_layers, qwen.hidden_size) == (36, 2560)
    assert transformer["joint_attention_dim"] == 3 * qwen.hidden_size
    vae = AutoencoderKLFlux2.load_config(tmp_path / "vae")
    assert vae["latent_channels"] * 4 == transformer["in_channels"]
    assert not list(tmp_path.rglob("*.safetensors"))
    with torch.device("meta"):  # the shapes only: the published 4B transformer and FLUX.2's 84M VAE
        billions = sum(p.numel() for p in Flux2Transformer2DModel.from_config(transformer).parameters()) / 1e9
        vae_millions = sum(p.numel() for p in AutoencoderKLFlux2.from_config(vae).parameters()) / 1e6
    assert 3.8 < billions < 4.0 and 80 < vae_millions < 90


def test_config_checks_name_the_key(raw_demo):
    for key, value, match in (
        ("guidance", 3.5, "backbones.klein.guidance: it is step- and guidance-distilled"),
        ("scheduler", "ddim", "backbones.klein.scheduler: not a setting of klein backbones"),
        ("max_sequence_length", 256, "backbones.klein.max_sequence_length: not a setting of klein backbones"),
    ):
        raw = dict(
            raw_demo, backbones=dict(raw_demo["backbones"], klein=dict(raw_demo["backbones"]["klein"]))
        )
        raw["backbones"]["klein"][key] = value
        with pytest.raises(ConfigError, match=match):
            Grid(study_of(validate(raw)))
    raw = dict(
        raw_demo, adapters=dict(raw_demo["adapters"], **{"klein-reference": {"kind": "native_reference"}})
    )
    raw["adapters"]["klein-reference"]["scale"] = 0.5
    with pytest.raises(
        ConfigError, match="adapters.klein-reference.scale: not a setting of klein native_ref"
    ):
        Grid(study_of(validate(raw)))


def test_grid_crosses_identities_and_loads_only_klein(raw_demo):
    grid = Grid(study_of(validate(raw_demo)))
    cells = [c for c in grid.cells if grid.backbone(c).family == "klein"]
    assert [c.id for c in cells] == [
        f"klein/klein-reference/{s}" for s in raw_demo["backbones"]["klein"]["steps"]
    ]
    for cell in cells:
        assert grid.generation_models(cell) == [MODEL]
        assert grid.cell_models(cell) == [MODEL]  # no face models: the photo itself conditions
        assert {i.identity for i in grid.items_of(cell)} == {i["id"] for i in raw_demo["identities"]}
        assert not grid.needs_identity_embeddings(cell) and grid.reference_file(cell) is None
    assert "Q512" in grid.prompt_variant_labels


@pytest.mark.slow  # about 2 minutes: the face and LPIPS stand-ins are built too
def test_a_klein_sweep_runs_from_grid_to_report_scored_by_identity(tmp_path):
    """klein cells alone through prepare, embed, generate, trajectory, score, aggregate and report,
    each stage through the entry point its rule calls: the identity metric scores them, LPIPS
    compares them with the klein anchor, the trajectory decodes each step."""
    import pandas as pd
    from conftest import demo_yaml

    from fewstep.analysis import aggregate, report
    from fewstep.core.paths import Paths
    from fewstep.jobs import generate, precompute, score, trajectory
    from fewstep.jobs.prepare import prepare_model

    raw = demo_yaml() | {k: str(tmp_path / k) for k in ("results_dir", "models_dir", "reports_dir")}
    raw.update(
        backbones={"klein": {"family": "klein", "model": MODEL, "steps": [1, 3]}},
        adapters={"photo": {"kind": "native_reference"}},
        cells=[{"backbones": ["klein"], "adapters": ["photo"]}],
        anchor="klein/photo/3",
        trajectory={"cells": ["klein/photo/3"], "max_items": 1},
        scoring={"metrics": ["identity", "lpips"], "batch_size": 4},
        wandb={"mode": "disabled"},
    )
    raw.pop("comparison")
    config = study_of(validate(raw))
    grid, paths = Grid.of(config), Paths(config)
    assert [c.id for c in grid.cells] == ["klein/photo/1", "klein/photo/3"]
    for name in grid.models:
        prepare_model(config, name)
    assert [p.name for p in precompute.embed_prompts(config)] == [
        f"{p['id']}.Q512.safetensors" for p in raw["prompts"] if p.get("role", "identity") == "identity"
    ]  # an identity cell renders the identity prompts only
    generate.run_job(config, "klein/photo", progress=False)
    score.run_job(config, "klein/photo", progress=False)
    steps = pd.read_parquet(trajectory.run(config, "klein/photo/3", progress=False))
    assert sorted(steps["step"].unique()) == [1, 2, 3]
    for cell in grid.cells:
        scores = pd.read_parquet(paths.scores(cell.id))
        assert len(scores) == len(grid.items) and scores["id_sim"].notna().all()
    anchor = pd.read_parquet(paths.scores("klein/photo/3"))["lpips_anchor"]
    assert (anchor == 0).all()  # the anchor against itself
    assert (pd.read_parquet(paths.scores("klein/photo/1"))["lpips_anchor"] > 0).all()
    summary = aggregate.run(config)
    text = open(report.run(config, summary)).read()
    assert 'data-family="klein"' in text and "FLUX.2 [klein]" in text
