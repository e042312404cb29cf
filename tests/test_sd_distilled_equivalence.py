"""Distilled SD backbones under frozen IP-Adapters: fewstep's job path against diffusers' documented usage.

For each family x adapter kind x backbone variant (the base and each distillation form) x negative prompt
set/unset, fewstep's cell pipeline (precomputed prompt and reference embeddings, the distillation loaded
by `load_components`) must give diffusers' own image bit for bit, float32, batch 1. Diffusers is called as
the model cards and the IP-Adapter guide show: raw prompt text and `negative_prompt`, the PIL reference
through `ip_adapter_image`, `set_ip_adapter_scale`, `load_lora_weights` + `fuse_lora`, a Lightning UNet
loaded into the base config, SDXL-Turbo's whole repo, the card's scheduler, guidance and `eta`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.core.config import validate
from fewstep.families.base import ItemInputs
from fewstep.families.sd import specs
from fewstep.families.sd.distillations import DISTILLATIONS, PUBLISHERS
from fewstep.families.sd.family import SD_FAMILIES
from tests.conftest import demo_yaml, study_of

pytest.importorskip("peft", reason="diffusers loads LoRAs through peft")
#: each comparison loads two tiny pipelines and runs both: 3-8 s on 2 shared cores
pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
SIDE, SEED, PROMPT, NEGATIVE = 64, 5, "a cup of coffee on a desk, watercolor", "blurry, lowres"
#: one distillation of each form and scheduler per family (the other step counts differ only in file name)
VARIANTS = {
    "sd15": [None, "lcm-lora", "hyper-2step", "hyper-1step"],
    "sdxl": [
        None,
        "lightning-2step-unet",
        "lightning-2step-lora",
        "hyper-2step",
        "hyper-1step",
        "lcm-lora",
        "turbo",
    ],
}
ADAPTERS = {
    "style": {"kind": "ip_adapter", "role": "style", "file": "plain", "scale": "style"},
    "object": {"kind": "ip_adapter", "role": "object", "file": "plus", "scale": 1.0},
}
#: the card's scheduler call on the pipeline's shipped config
CARD_SCHEDULERS = {
    "euler_trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "ddim_trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
}


def _cases():
    """Base and each distillation x adapter file; negative set and unset where the backbone runs
    classifier-free guidance (every distillation here runs at guidance <= 1, which uses no negative:
    its unset case would repeat the set one, so it runs once, with the negative the study sets)."""
    for family, variants in VARIANTS.items():
        for variant in variants:
            assert variant is None or DISTILLATIONS[family][variant].guidance <= 1, variant
            for adapter in ADAPTERS:
                for negative in (NEGATIVE, None) if variant is None else (NEGATIVE,):
                    label = f"{family}-{variant or 'base'}-{adapter}-{'neg' if negative else 'noneg'}"
                    yield pytest.param(family, variant, adapter, negative, id=label)


@pytest.fixture(scope="module")
def models(tiny_sd, tmp_path_factory):
    """A models_dir whose tiny folder holds the base models, h94's files and the tested distillations."""
    from fewstep.families.sd.tiny import build_tiny_distillation

    root = tmp_path_factory.mktemp("distilled-models")
    (root / "tiny").symlink_to(tiny_sd)
    for family, variants in VARIANTS.items():
        for name in filter(None, variants):
            distillation = DISTILLATIONS[family][name]
            folder = tiny_sd / PUBLISHERS[distillation.publisher].folder
            if not (folder / distillation.files[0]).exists():
                build_tiny_distillation(distillation, folder)
    return root


@pytest.fixture(scope="module")
def config(models):
    return study_of(validate(dict(demo_yaml(), models_dir=str(models))))


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee()).resize((128, 96))


@pytest.fixture(scope="module")
def encoders(config, picture):
    """Precomputed embeddings, as the embed_prompt / embed_reference jobs make them (cached)."""
    cache: dict = {}

    def prompt(family: str, negative: str | None):
        if (family, negative) not in cache:
            encoder = SD_FAMILIES[family].prompt_encoder(config, family, CPU, torch.float32)
            cache[family, negative] = encoder.encode(PROMPT, {"negative_prompt": negative})
        return cache[family, negative]

    def reference(family: str, file: str):
        if (family, file) not in cache:
            encoder = SD_FAMILIES[family].reference_encoder(config, file, CPU, torch.float32)
            cache[family, file] = encoder.encode(picture)
        return cache[family, file]

    return prompt, reference


def _backbone(family: str, variant: str | None, negative: str | None) -> dict:
    backbone = {"family": family, "model": family, "resolution": SIDE, "steps": [2]}
    if variant:
        backbone["distillation"] = variant
    if negative is not None:
        backbone["negative_prompt"] = negative
    return backbone


def fewstep_image(config, encoders, family, variant, adapter_name, negative) -> np.ndarray:
    prompt, reference = encoders
    sd = SD_FAMILIES[family]
    backbone, adapter = _backbone(family, variant, negative), ADAPTERS[adapter_name]
    accelerations = {"compile": "none", "fp8": "none", "cache": "none"}
    cell = sd.cell_pipeline(config, backbone, adapter, accelerations, CPU, torch.float32)
    inputs = ItemInputs(
        prompt=prompt(family, negative),
        reference_id="coffee",
        reference={"image_embeds": reference(family, adapter["file"])},
    )
    condition, _ = cell.condition(inputs)
    denoised = cell.denoise(cell.stack([condition]), [SEED], steps=2)
    return cell.decode(denoised.latents)[0].numpy()


def diffusers_image(models, picture, family, variant, adapter_name, negative) -> np.ndarray:
    """The model card's and IP-Adapter guide's calls, on the same tiny files."""
    import diffusers
    from safetensors.torch import load_file

    spec = specs.FAMILIES[family]
    tiny = models / "tiny"
    distillation = DISTILLATIONS[family][variant] if variant else None
    extras = {"feature_extractor": None}
    if family == "sd15":
        extras |= {"safety_checker": None, "requires_safety_checker": False}
    base = tiny / spec.folder
    options = dict(variant="fp16", dtype=torch.float32, **extras)
    if distillation is not None and distillation.form == "unet_folder":  # SDXL-Turbo: the whole repo
        repo = tiny / PUBLISHERS[distillation.publisher].folder
        pipe = diffusers.AutoPipelineForText2Image.from_pretrained(repo, **options)
    elif distillation is not None and distillation.form == "unet":  # Lightning's UNet checkpoint
        unet = diffusers.UNet2DConditionModel.from_config(
            diffusers.UNet2DConditionModel.load_config(base / "unet")
        )
        file = tiny / PUBLISHERS[distillation.publisher].folder / distillation.file
        unet.load_state_dict(load_file(file))
        pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(base, unet=unet, **options)
    else:
        pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(base, **options)
    pipe.set_progress_bar_config(disable=True)
    file = spec.adapters[ADAPTERS[adapter_name]["file"]]
    pipe.load_ip_adapter(
        str(tiny / "IP-Adapter"),
        subfolder=file.subfolder,
        weight_name=file.weight_name,
        image_encoder_folder=file.image_encoder_folder,
        local_files_only=True,
    )
    if distillation is not None and distillation.form == "lora":
        folder = tiny / PUBLISHERS[distillation.publisher].folder
        pipe.load_lora_weights(str(folder), weight_name=distillation.file, local_files_only=True)
        pipe.fuse_lora()
    if distillation is not None and distillation.scheduler in CARD_SCHEDULERS:
        name, settings = CARD_SCHEDULERS[distillation.scheduler]
        pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **settings)
    pipe.set_ip_adapter_scale(SD_FAMILIES[family].scale("x", ADAPTERS[adapter_name]))
    guidance = spec.guidance_scale if distillation is None else distillation.guidance
    with torch.no_grad():
        image = pipe(
            prompt=PROMPT,
            negative_prompt=negative,
            ip_adapter_image=picture,
            num_inference_steps=2,
            guidance_scale=guidance,
            eta=0.0 if distillation is None else distillation.eta,
            height=SIDE,
            width=SIDE,
            generator=[torch.Generator("cpu").manual_seed(SEED)],
            output_type="pil",
        ).images[0]
    return np.asarray(image)


@pytest.mark.parametrize(("family", "variant", "adapter", "negative"), list(_cases()))
def test_fewstep_equals_diffusers_documented_usage(
    models, config, encoders, picture, family, variant, adapter, negative
):
    ours = fewstep_image(config, encoders, family, variant, adapter, negative)
    theirs = diffusers_image(models, picture, family, variant, adapter, negative)
    assert ours.shape == theirs.shape == (SIDE, SIDE, 3)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("family", list(VARIANTS))
def test_each_distillation_changes_the_image(config, encoders, family):
    """The stand-ins are not no-ops: every distilled variant differs from the base and from the others."""
    images = {v: fewstep_image(config, encoders, family, v, "object", NEGATIVE) for v in VARIANTS[family]}
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(images[a].astype(int) - images[b].astype(int)).mean() > 1.0, (a, b)
