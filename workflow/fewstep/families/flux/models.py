"""FLUX's registered models (FLUX.1-dev, FLUX.1-schnell, InfiniteYou) and their recipes.

Each spec carries the recipe of its three sources (`fewstep.registry.spec.Recipe`):

- ``real``: the published weights, fetched by the download rule into
  ``<models_dir>/real/<folder>`` and read with ``from_pretrained``;
- ``tiny``: the same classes from tiny configs with seeded random weights, saved
  in the published layout under ``<models_dir>/tiny/<folder>`` (`fewstep.families.flux.tiny`);
- ``random``: the published architectures with random weights, built directly
  on the device from the saved configs (honest latency, meaningless images).

Importing this module registers the specs (`fewstep.registry.catalog`). Everything
downstream calls the loaders (`fewstep.families.flux.pipeline`) and never knows which source it got.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewstep.families.flux.specs import (
    DEV_SCHEDULER,
    FLUX_MODEL_INDEX,
    FLUX_TRANSFORMER,
    FLUX_VAE,
    INFUSENET,
    SCHNELL_SCHEDULER,
    T5_XXL,
)
from fewstep.families.flux1 import BACKBONE_GB
from fewstep.registry.catalog import register
from fewstep.registry.hub import fetch_snapshot
from fewstep.registry.spec import ModelSpec, Recipe, Usage
from fewstep.registry.text_encoders import CLIP_L_TEXT

INFU_VERSION = "infu_flux_v1.0"
#: config ``adapters.<id>.variant`` values: InfiniteYou's two InfuseNet checkpoints
INFUSENET_VARIANTS = ("aes_stage2", "sim_stage1")

#: what a generation job loads from a FLUX repo (the single-file checkpoints at its root are skipped)
FLUX_PATTERNS = ["model_index.json", "scheduler/*", "transformer/*", "vae/*"]
#: the text encoders, fetched from one backbone only (dev and schnell ship identical ones)
FLUX_TEXT_PATTERNS = ["text_encoder/*", "text_encoder_2/*", "tokenizer/*", "tokenizer_2/*"]
#: files that must exist after a download (relative to the model folder)
FLUX_REQUIRED = ["model_index.json", "transformer/config.json", "vae/config.json"]
FLUX_TEXT_REQUIRED = ["text_encoder/config.json", "text_encoder_2/config.json", "tokenizer_2/tokenizer.json"]


# --------------------------------------------------------------------------- recipes


def _backbone_patterns(config: Mapping[str, Any], spec: ModelSpec, usage: Usage) -> list[str]:
    return FLUX_PATTERNS + (FLUX_TEXT_PATTERNS if usage.embeds_text else [])


def _backbone_required(config: Mapping[str, Any], spec: ModelSpec, usage: Usage) -> list[str]:
    return FLUX_REQUIRED + (FLUX_TEXT_REQUIRED if usage.embeds_text else [])


def _backbone_tiny(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    from fewstep.families.flux import tiny

    extra = spec.extra
    tiny.build_flux_backbone(
        folder, guidance_embeds=extra["guidance_embeds"], scheduler_config=extra["scheduler"]
    )


def _backbone_random(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """Only configs: the loaders build full-size modules on the device."""
    from transformers import CLIPTextConfig, T5Config

    from fewstep.core.io import atomic_write_json as write
    from fewstep.registry.tiny import build_clip_tokenizer, build_t5_tokenizer

    extra = spec.extra
    transformer = {**FLUX_TRANSFORMER, "guidance_embeds": extra["guidance_embeds"]}
    write(folder / "transformer" / "config.json", transformer)
    write(folder / "vae" / "config.json", FLUX_VAE)
    write(folder / "scheduler" / "scheduler_config.json", extra["scheduler"])
    write(folder / "model_index.json", FLUX_MODEL_INDEX)
    CLIPTextConfig(**CLIP_L_TEXT).save_pretrained(folder / "text_encoder")
    T5Config(**T5_XXL).save_pretrained(folder / "text_encoder_2")
    # Tokenizers only turn text into ids; tiny ones keep random mode offline.
    build_clip_tokenizer(folder / "tokenizer")
    build_t5_tokenizer(folder / "tokenizer_2")


def infusenet_variants(adapters: tuple[Mapping[str, Any], ...]) -> list[str]:
    """InfuseNet variants these adapters use (only these are fetched or built)."""
    return sorted({a["variant"] for a in adapters if a["kind"] == "infusenet"})


def _infiniteyou_patterns(config: Mapping[str, Any], spec: ModelSpec, usage: Usage) -> list[str]:
    return [f"{INFU_VERSION}/{variant}/*" for variant in infusenet_variants(usage.adapters)]


def _infiniteyou_required(config: Mapping[str, Any], spec: ModelSpec, usage: Usage) -> list[str]:
    return [
        f"{INFU_VERSION}/{variant}/{file}"
        for variant in infusenet_variants(usage.adapters)
        for file in ("InfuseNetModel/config.json", "image_proj_model.bin")
    ]


def _infiniteyou_tiny(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    from fewstep.families.flux import tiny

    tiny.build_infiniteyou(folder, infusenet_variants(usage.adapters))


def _infiniteyou_random(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    from fewstep.core.io import atomic_write_json

    for variant in infusenet_variants(usage.adapters):
        atomic_write_json(folder / INFU_VERSION / variant / "InfuseNetModel" / "config.json", INFUSENET)


BACKBONE_RECIPE = Recipe(
    fetch=fetch_snapshot,
    tiny=_backbone_tiny,
    required=_backbone_required,
    random=_backbone_random,
    patterns=_backbone_patterns,
)
INFINITEYOU_RECIPE = Recipe(
    fetch=fetch_snapshot,
    tiny=_infiniteyou_tiny,
    required=_infiniteyou_required,
    random=_infiniteyou_random,
    patterns=_infiniteyou_patterns,
)

BACKBONES = {
    "flux-dev": ModelSpec(
        "flux-dev",
        "FLUX.1-dev",
        "black-forest-labs/FLUX.1-dev",
        gated=True,
        extra={
            "guidance_embeds": True,
            "scheduler": DEV_SCHEDULER,
            "max_sequence_length": 512,
            "published_gb": BACKBONE_GB,
        },
        revision="3de623fc3c33e44ffbe2bad470d0f45bccf2eb21",
        recipe=BACKBONE_RECIPE,
    ),
    "flux-schnell": ModelSpec(
        "flux-schnell",
        "FLUX.1-schnell",
        "black-forest-labs/FLUX.1-schnell",
        extra={
            "guidance_embeds": False,
            "scheduler": SCHNELL_SCHEDULER,
            "max_sequence_length": 256,
            "published_gb": BACKBONE_GB,
        },
        revision="741f7c3ce8b383c54771c7003378a50191e9efe9",
        recipe=BACKBONE_RECIPE,
    ),
}
INFINITEYOU = ModelSpec(
    "infiniteyou",
    "InfiniteYou",
    "ByteDance/InfiniteYou",
    extra={"published_gb": {f"{INFU_VERSION}/{variant}/*": 6.2 for variant in INFUSENET_VARIANTS}},
    recipe=INFINITEYOU_RECIPE,
)
register(*BACKBONES.values(), INFINITEYOU)


#: config ``backbones.<id>.max_sequence_length`` unless set: FLUX.1-dev's T5 length
MAX_SEQUENCE_LENGTH = 512


def max_sequence_length(backbone: Mapping[str, Any]) -> int:
    """The T5 tokens of a backbone's prompt embeddings (`MAX_SEQUENCE_LENGTH` unless set)."""
    length = backbone.get("max_sequence_length")
    return MAX_SEQUENCE_LENGTH if length is None else int(length)


def generation_weights(backbone: str, adapter: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Registry model -> the folders inside it that a generation job reads (`pipeline.load_flux`)."""
    folders = {backbone: ("transformer/", "vae/", "scheduler/")}
    if adapter["kind"] == "infusenet":
        folders[INFINITEYOU.name] = (f"{INFU_VERSION}/{adapter['variant']}/",)
    return folders
