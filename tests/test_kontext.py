"""FLUX.1 Kontext [dev] as a family (`fewstep.families.kontext`), on tiny seeded weights.

The equivalence test holds fewstep's Kontext generation (its precomputed prompt embedding, its
cell pipeline loaded from the prepared tiny folder) to diffusers' FluxKontextPipeline called as
the model card documents (the prompt text, ``image=`` a PIL picture, guidance_scale, a seeded CPU
generator), float32, batch 1: the same pixels, bit for bit, including the pipeline's
``_auto_resize`` of the reference to a preferred Kontext resolution.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.core.errors import ConfigError
from fewstep.families import FAMILIES
from fewstep.families.base import ItemInputs
from fewstep.grid import EAGER_SWITCHES
from fewstep.registry.catalog import model_folder
from tests.conftest import study_of

CPU = torch.device("cpu")
MODEL = "flux-kontext-dev"
TEXT = "The person as an astronaut in a white spacesuit, cinematic"


@pytest.fixture(scope="module")
def kontext_config(tmp_path_factory):
    """The demo's `Study` with the tiny Kontext (text encoders included) and face pack prepared."""
    from conftest import demo_yaml

    from fewstep.core.config import validate
    from fewstep.jobs.prepare import prepare_model

    root = tmp_path_factory.mktemp("kontext")
    raw = demo_yaml() | {k: str(root / k) for k in ("results_dir", "models_dir", "reports_dir")}
    config = study_of(validate(raw))
    for model in FAMILIES["kontext"].identity_models({"kind": "native_reference"}) + [MODEL]:
        prepare_model(config, model)
    return config


def test_specs_are_flux_dev_s_where_the_card_says_they_are():
    """Kontext is FLUX.1 [dev] fine-tuned: same transformer (with guidance embeds), VAE, T5 and
    scheduler; the family writes them out (no family imports another) and this holds them equal."""
    from fewstep.families.flux import specs as flux
    from fewstep.families.kontext import specs as kontext

    assert kontext.KONTEXT_TRANSFORMER == dict(flux.FLUX_TRANSFORMER, guidance_embeds=True)
    assert kontext.KONTEXT_VAE == flux.FLUX_VAE
    assert kontext.T5_XXL == flux.T5_XXL
    assert kontext.KONTEXT_SCHEDULER == flux.DEV_SCHEDULER
    assert kontext.KONTEXT_MODEL_INDEX["_class_name"] == "FluxKontextPipeline"


def test_tiny_folder_has_the_published_layout(kontext_config):
    import json

    folder = model_folder(kontext_config, MODEL)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "FluxKontextPipeline"
    for sub in ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        assert (folder / sub).is_dir(), sub
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    assert list((folder / "transformer").glob("*.safetensors"))


@pytest.mark.parametrize("size", [(48, 40), (40, 96)])
def test_generation_equals_flux_kontext_pipeline_bit_for_bit(kontext_config, tmp_path, size):
    """Two reference shapes: each resized by the pipeline's rule to a different Kontext bucket."""
    from diffusers import FluxKontextPipeline

    from fewstep.families.kontext.cell import edit_prompt
    from fewstep.families.kontext.specs import PHOTO, PROMPT_TEMPLATE

    family, config = FAMILIES["kontext"], kontext_config
    backbone, adapter = config["backbones"]["kontext"], config["adapters"]["kontext-photo"]
    width, height = config.resolution.width, config.resolution.height
    steps, seed = 3, 11
    picture = tmp_path / "face.png"
    pixels = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(picture)

    encoder = family.prompt_encoder(config, MODEL, CPU, torch.float32)
    prompt = encoder.encode(TEXT, backbone)
    cell = family.cell_pipeline(config, backbone, adapter, dict(EAGER_SWITCHES), CPU, torch.float32)
    inputs = ItemInputs(prompt, "face", {PHOTO: torch.from_numpy(pixels)}, {})
    condition, seconds = cell.condition(inputs)
    assert seconds > 0 and condition.reference_latents is not None
    ours = cell.decode(cell.denoise(cell.stack([condition]), [seed], steps).latents)[0].numpy()

    pipe = FluxKontextPipeline.from_pretrained(model_folder(config, MODEL), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        image=Image.open(picture),
        prompt=edit_prompt(TEXT, PROMPT_TEMPLATE),
        guidance_scale=family.guidance(backbone),
        num_inference_steps=steps,
        width=width,
        height=height,
        max_area=width * height,  # the pipeline fits its output to max_area: the config's size
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pil",
    ).images[0]
    assert np.array_equal(ours, np.asarray(theirs))
    # the reference counted: without it the image differs
    bare = family.cell_pipeline(config, backbone, {"kind": "none"}, dict(EAGER_SWITCHES), CPU, torch.float32)
    text_only = bare.decode(bare.denoise(bare.stack([bare.condition(inputs)[0]]), [seed], steps).latents)
    assert not np.array_equal(ours, text_only[0].numpy())


def test_the_reference_is_resized_as_the_pipeline_does(kontext_config):
    """The picture's size floored to multiples of 16 first (diffusers' `get_default_height_width`):
    48x40 counts as 48x32 (aspect 1.5) and goes to the 1248x832 bucket, 40x96 to 672x1568."""
    from fewstep.families.kontext.pipeline import reference_pixels

    cell = FAMILIES["kontext"].cell_pipeline(
        kontext_config,
        kontext_config["backbones"]["kontext"],
        {"kind": "native_reference"},
        dict(EAGER_SWITCHES),
        CPU,
        torch.float32,
    )
    vae = cell.components["vae"]
    wide = reference_pixels(Image.new("RGB", (48, 40)), vae)
    tall = reference_pixels(Image.new("RGB", (40, 96)), vae)
    assert tuple(wide.shape) == (1, 3, 832, 1248) and tuple(tall.shape) == (1, 3, 1568, 672)
    assert wide.min() == -1 and wide.max() == -1  # black, scaled to [-1, 1]


def test_the_prompt_embedding_is_the_edit_prompt_s(kontext_config):
    """The embedding file holds the template-phrased prompt's embedding, not the raw text's."""
    from diffusers import FluxKontextPipeline

    from fewstep.families.kontext.specs import PROMPT_TEMPLATE

    backbone = kontext_config["backbones"]["kontext"]
    ours = (
        FAMILIES["kontext"].prompt_encoder(kontext_config, MODEL, CPU, torch.float32).encode(TEXT, backbone)
    )
    pipe = FluxKontextPipeline.from_pretrained(model_folder(kontext_config, MODEL), dtype=torch.float32)
    with torch.no_grad():  # as the pipeline's __call__ encodes (autograd picks other kernels)
        edit, _, _ = pipe.encode_prompt(prompt=PROMPT_TEMPLATE.format(prompt=TEXT), prompt_2=None, device=CPU)
        raw, _, _ = pipe.encode_prompt(prompt=TEXT, prompt_2=None, device=CPU)
    assert torch.equal(ours["prompt_embeds"], edit) and not torch.equal(ours["prompt_embeds"], raw)
    assert FAMILIES["kontext"].prompt_metadata(backbone)["prompt_template"] == PROMPT_TEMPLATE


def test_a_batch_of_references_of_two_sizes_is_refused_in_one_line():
    from fewstep.families.kontext.pipeline import Conditioning

    def row(tokens: int) -> Conditioning:
        return Conditioning(torch.zeros(1, 4, 32), torch.zeros(1, 32), torch.zeros(1, tokens, 64), None)

    assert Conditioning.stack([row(6), row(6)]).reference_latents.shape == (2, 6, 64)
    with pytest.raises(ValueError, match="generation.batch_size: 1"):
        Conditioning.stack([row(6), row(8)])


def test_config_defaults_and_checks_name_the_key(raw_demo):
    """The family's own defaults (the card's guidance 2.5, T5 length 512) where the config leaves
    them unset; keys it does not read are refused in one line naming the key."""
    from fewstep.core.config import validate
    from fewstep.grid import Grid

    def grid_of(raw: dict) -> Grid:
        return Grid(study_of(validate(raw)))

    family = FAMILIES["kontext"]
    grid = grid_of(raw_demo)
    assert any(c.id == "kontext/kontext-photo/2" for c in grid.cells)
    backbone = grid.study.backbones["kontext"]
    assert backbone.get("guidance") is None and "max_sequence_length" not in backbone
    assert family.guidance(backbone) == 2.5 and family.settings(backbone)["max_sequence_length"] == 512
    set_ = dict(raw_demo["backbones"]["kontext"], guidance=3.0, max_sequence_length=256)
    assert family.guidance(set_) == 3.0 and family.prompt_variant(set_) == "L256"
    scheduled = raw_demo | {
        "backbones": {
            **raw_demo["backbones"],
            "kontext": dict(raw_demo["backbones"]["kontext"], scheduler="ddim"),
        }
    }
    with pytest.raises(ConfigError, match=r"backbones.kontext.scheduler: not a setting of kontext backbones"):
        grid_of(scheduled)
    scaled = raw_demo | {
        "adapters": {**raw_demo["adapters"], "kontext-photo": {"kind": "native_reference", "scale": 1.0}}
    }
    with pytest.raises(
        ConfigError, match=r"adapters.kontext-photo.scale: not a setting of kontext native_reference adapters"
    ):
        grid_of(scaled)


def test_the_identity_file_holds_the_photo_once_a_face_is_found(kontext_config, tmp_path):
    """Kontext's identity encoder keeps the photo's pixels as they are (the cell resizes them) and
    refuses a picture without a face (None: the embed_identity job stops in one line)."""
    from fewstep.core.images import load_rgb
    from fewstep.families.kontext.cell import photo_of
    from fewstep.families.kontext.specs import PHOTO
    from fewstep.jobs.precompute import load_tensors, save_tensors

    adapters = [kontext_config.adapters["kontext-photo"]]
    encoder = FAMILIES["kontext"].identity_encoder(kontext_config, adapters, CPU)
    photo = load_rgb(kontext_config.identities[0].image)
    embedding = encoder.encode(photo)
    assert embedding is not None and int(embedding.metadata["kontext_faces"]) >= 1
    assert embedding.tensors[PHOTO].dtype == torch.uint8 and np.array_equal(embedding.tensors[PHOTO], photo)
    assert encoder.encode(np.full((96, 96, 3), 127, np.uint8)) is None
    file = tmp_path / "astronaut.safetensors"  # as the embed_identity job writes it, read back
    save_tensors(file, embedding.tensors, {})
    assert np.array_equal(np.asarray(photo_of(load_tensors(file)[0])), photo)


def test_memory_options_reach_the_transformer(kontext_config):
    """Config ``memory`` as for FLUX: fp8 weight storage, and offloading refused off CUDA in one line."""
    from fewstep.core.errors import WeightsError
    from fewstep.families.kontext.pipeline import load_kontext

    def with_memory(**memory):
        config = kontext_config.to_dict()
        return study_of(dict(config, memory=dict(config["memory"], **memory)))

    transformer = load_kontext(with_memory(fp8_weights=True), MODEL, CPU, torch.float32)["transformer"]
    block = transformer.transformer_blocks[0]  # attention and feed-forward (diffusers skips norms)
    assert block.attn.to_q.weight.dtype == block.ff.net[2].weight.dtype == torch.float8_e4m3fn
    with pytest.raises(WeightsError, match="memory.offload needs a CUDA device"):
        load_kontext(with_memory(offload="group"), MODEL, CPU, torch.float32)


def test_random_mode_writes_the_published_architecture(tmp_path):
    """Random weights (latency runs): the published configs, which build a 12B transformer
    (counted on the meta device here, nothing allocated) with guidance embeds."""
    from conftest import demo_yaml
    from diffusers import FluxTransformer2DModel

    from fewstep.core.config import validate
    from fewstep.families.kontext.specs import KONTEXT_TRANSFORMER
    from fewstep.jobs.prepare import prepare_model

    raw = demo_yaml() | {k: str(tmp_path / k) for k in ("results_dir", "models_dir", "reports_dir")}
    config = study_of(validate(raw | {"weights": "random"}))
    prepare_model(config, MODEL)
    folder = model_folder(config, MODEL)
    saved = FluxTransformer2DModel.load_config(folder / "transformer")
    assert {k: saved[k] for k in KONTEXT_TRANSFORMER} == KONTEXT_TRANSFORMER
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(saved)
    assert 11.8e9 < sum(p.numel() for p in transformer.parameters()) < 12.0e9
    assert (folder / "text_encoder_2" / "config.json").is_file() and not list(folder.rglob("*.safetensors"))
